//! Journeys through the real API: the seeds' flow "product view → SMS coupon → no
//! order within 24 hours → app push", with time moved on by hand.

use crm_proto::crm::{customer::v1 as cpb, segmentation::v1 as pb};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::{
    app::{TestApp, eventually, reference},
    campaigns::{consent, contactable},
};

fn step(id: &str, action: pb::journey_step::Action) -> pb::JourneyStep {
    pb::JourneyStep {
        id: id.into(),
        action: Some(action),
    }
}

/// The seeds' flow.
fn viewed_did_not_buy() -> pb::Journey {
    use pb::journey_step::Action as A;
    pb::Journey {
        display_name: "Viewed shoes, did not buy".into(),
        trigger: Some(pb::JourneyTrigger {
            trigger: Some(pb::journey_trigger::Trigger::Event(pb::JourneyEvent {
                event: Some(pb::journey_event::Event::Interaction(
                    cpb::InteractionKind::ProductView as i32,
                )),
                category: "shoes".into(),
            })),
        }),
        steps: vec![
            step(
                "coupon",
                A::Send(pb::SendStep {
                    channel: cpb::ContactChannel::Sms as i32,
                    message: Some(pb::MessageTemplate {
                        body: "{{given_name}}, 10% off shoes today: {{link_url}}".into(),
                        link: "https://shop.example/shoes".into(),
                        ..Default::default()
                    }),
                    next: "wait-order".into(),
                }),
            ),
            step(
                "wait-order",
                A::Wait(pb::WaitStep {
                    duration: Some(prost_types::Duration {
                        seconds: 24 * 3600,
                        nanos: 0,
                    }),
                    until: Some(pb::JourneyEvent {
                        event: Some(pb::journey_event::Event::OrderPlaced(true)),
                        category: String::new(),
                    }),
                    next: "bought".into(),
                    timeout_next: "push".into(),
                }),
            ),
            step(
                "push",
                A::Send(pb::SendStep {
                    channel: cpb::ContactChannel::AppPush as i32,
                    message: Some(pb::MessageTemplate {
                        subject: "Still thinking it over?".into(),
                        body: "The shoes you looked at are waiting".into(),
                        ..Default::default()
                    }),
                    next: String::new(),
                }),
            ),
            step(
                "bought",
                A::Tag(pb::TagStep {
                    tag: "tags/converted-by-journey".into(),
                    remove: false,
                    next: String::new(),
                }),
            ),
        ],
        ..Default::default()
    }
}

pub async fn view(app: &TestApp, customer: &str, category: &str, id: &str) {
    let _: Vec<_> = app
        .customers
        .clone()
        .record_interactions(TestApp::admin(tokio_stream::iter(vec![cpb::RecordInteractionsRequest {
            batch_id: id.into(),
            interactions: vec![cpb::InteractionInput {
                customer: reference(customer),
                interaction: Some(cpb::Interaction {
                    kind: cpb::InteractionKind::ProductView as i32,
                    channel: crm_proto::crm::common::v1::Channel::App as i32,
                    occur_time: Some(prost_types::Timestamp {
                        seconds: chrono::Utc::now().timestamp(),
                        nanos: 0,
                    }),
                    source: "app".into(),
                    external_id: id.into(),
                    properties: [("category".to_owned(), category.to_owned())].into(),
                    ..Default::default()
                }),
            }],
        }])))
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
}

async fn stats(app: &TestApp, id: &str) -> pb::JourneyStats {
    app.journeys
        .clone()
        .get_journey_stats(TestApp::admin(pb::GetJourneyStatsRequest {
            journey: format!("journeys/{id}"),
        }))
        .await
        .unwrap()
        .into_inner()
}

async fn until(app: &TestApp, id: &str, what: &str, done: impl Fn(&pb::JourneyStats) -> bool) -> pb::JourneyStats {
    eventually(what, 30, async || {
        let s = stats(app, id).await;
        if done(&s) { Ok(s) } else { Err(format!("{s:?}")) }
    })
    .await
}

fn on(s: &pb::JourneyStats, step: &str) -> (i64, i64) {
    s.steps
        .iter()
        .find(|x| x.step == step)
        .map_or((0, 0), |x| (x.entered, x.active))
}

fn sent(s: &pb::JourneyStats, step: &str) -> i64 {
    s.steps
        .iter()
        .find(|x| x.step == step)
        .and_then(|x| x.delivery.as_ref())
        .map_or(0, |d| d.sent)
}

#[tokio::test]
async fn the_seeds_flow_sends_a_coupon_then_a_push_to_who_did_not_buy() {
    let app = TestApp::spawn().await;
    app.tag("converted-by-journey", "", "Converted by a journey").await.unwrap();
    let ann = contactable(&app, "Ann").await;
    let bo = contactable(&app, "Bo").await;
    for c in [&ann, &bo] {
        consent(&app, c, cpb::ContactChannel::Sms, cpb::ConsentStatus::Granted).await;
        consent(&app, c, cpb::ContactChannel::AppPush, cpb::ConsentStatus::Granted).await;
    }
    let created = app
        .journeys
        .clone()
        .create_journey(TestApp::admin(pb::CreateJourneyRequest {
            journey: Some(viewed_did_not_buy()),
            journey_id: "viewed".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.state, pb::JourneyState::Draft as i32);
    // Nothing happens before activation.
    view(&app, &ann, "shoes", "before").await;
    let active = app
        .journeys
        .clone()
        .activate_journey(TestApp::admin(pb::ActivateJourneyRequest {
            name: "journeys/viewed".into(),
            etag: created.etag,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.state, pb::JourneyState::Active as i32);
    // A view of another category enrols nobody; shoes do.
    view(&app, &ann, "hats", "hats-1").await;
    view(&app, &ann, "shoes", "shoes-1").await;
    view(&app, &bo, "shoes", "shoes-2").await;
    let s = until(&app, "viewed", "both get the coupon", |s| sent(s, "coupon") == 2).await;
    assert_eq!(s.enrolled, 2, "{s:?}");
    assert_eq!(on(&s, "wait-order"), (2, 2));
    // Viewing again does not enrol again (re-entry NEVER).
    view(&app, &ann, "shoes", "shoes-3").await;
    // Bo buys within the day: he leaves the wait for the `bought` step.
    app.order(&bo, "bo-1", 0, 80_000_000).await;
    let s = until(&app, "viewed", "Bo's order ends his wait", |s| on(s, "bought").0 == 1).await;
    assert_eq!(s.enrolled, 2);
    assert_eq!(on(&s, "wait-order"), (2, 1), "{s:?}");
    assert_eq!(on(&s, "push").0, 0);
    // A day passes for Ann (moved on by hand): the wait times out, the push goes out.
    let db = crm_platform::db::connect(&app.db.target, 1).await.unwrap();
    crm_platform::db::exec(&db, "UPDATE journey_positions SET due_us = 0 WHERE state = 2", vec![])
        .await
        .unwrap();
    let s = until(&app, "viewed", "Ann gets the push", |s| sent(s, "push") == 1).await;
    assert_eq!((s.enrolled, s.active, s.exited), (2, 0, 2), "{s:?}");
    let posted = app.provider.posted();
    let pushes: Vec<_> = posted.iter().filter(|p| p.path == "/push").collect();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].body["to"], "push-ann");
    assert_eq!(pushes[0].body["title"], "Still thinking it over?");
    let coupons = posted.iter().filter(|p| p.path == "/sms").count();
    assert_eq!(coupons, 2, "one coupon each, however often they looked");
    // Bo was tagged by the journey.
    let tags = app
        .segmentation
        .clone()
        .list_customer_tags(TestApp::admin(pb::ListCustomerTagsRequest { customer: bo.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert!(tags.tags.iter().any(|t| t.tag == "tags/converted-by-journey"), "{tags:?}");
    // An active journey's steps are fixed; a paused one's can change.
    let err = app
        .journeys
        .clone()
        .update_journey(TestApp::admin(pb::UpdateJourneyRequest {
            journey: Some(pb::Journey {
                name: "journeys/viewed".into(),
                steps: viewed_did_not_buy().steps,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["steps".into()],
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    app.journeys
        .clone()
        .pause_journey(TestApp::admin(pb::PauseJourneyRequest {
            name: "journeys/viewed".into(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    let listed = app
        .journeys
        .clone()
        .list_journeys(TestApp::admin(pb::ListJourneysRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.journeys.len(), 1);
    assert_eq!(listed.journeys[0].state, pb::JourneyState::Paused as i32);
    // Journey steps are not listed as campaigns.
    let campaigns = app
        .campaigns
        .clone()
        .list_campaigns(TestApp::admin(pb::ListCampaignsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(campaigns.campaigns.is_empty(), "{campaigns:?}");
    // A bad journey names its fields.
    let mut bad = viewed_did_not_buy();
    bad.steps[1].action = Some(pb::journey_step::Action::Wait(pb::WaitStep {
        next: "nowhere".into(),
        ..Default::default()
    }));
    let err = app
        .journeys
        .clone()
        .create_journey(TestApp::admin(pb::CreateJourneyRequest {
            journey: Some(bad),
            journey_id: "bad".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    use tonic_types::StatusExt;
    let fields: Vec<String> = err
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert!(fields.contains(&"journey.steps[1].wait.duration".to_owned()), "{fields:?}");
    assert!(fields.contains(&"journey.steps[1].wait.next".to_owned()), "{fields:?}");
}

#[tokio::test]
async fn a_segment_entry_branches_calls_a_webhook_once_and_leaves() {
    use pb::journey_step::Action as A;
    let app = TestApp::spawn().await;
    app.segmentation
        .clone()
        .create_segment(TestApp::admin(pb::CreateSegmentRequest {
            segment: Some(pb::Segment {
                display_name: "Buyers".into(),
                filter: "orders(30d) >= 1".into(),
                ..Default::default()
            }),
            segment_id: "buyers".into(),
        }))
        .await
        .unwrap();
    let hook = format!("{}/hook", app.provider_url());
    let journey = pb::Journey {
        display_name: "Welcome big spenders".into(),
        trigger: Some(pb::JourneyTrigger {
            trigger: Some(pb::journey_trigger::Trigger::SegmentEntered("segments/buyers".into())),
        }),
        steps: vec![
            step(
                "big",
                A::Branch(pb::BranchStep {
                    condition: "order_total(30d) >= 500".into(),
                    if_true: "notify".into(),
                    if_false: "bye".into(),
                }),
            ),
            step(
                "notify",
                A::Webhook(pb::WebhookStep {
                    url: hook,
                    next: "bye".into(),
                }),
            ),
            step("bye", A::Exit(pb::ExitStep {})),
        ],
        ..Default::default()
    };
    app.journeys
        .clone()
        .create_journey(TestApp::admin(pb::CreateJourneyRequest {
            journey: Some(journey),
            journey_id: "welcome".into(),
        }))
        .await
        .unwrap();
    app.journeys
        .clone()
        .activate_journey(TestApp::admin(pb::ActivateJourneyRequest {
            name: "journeys/welcome".into(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    // Entering the segment after activation enrols; the first hook answer is a 503.
    app.provider.script.lock().unwrap().push_back(503);
    let big = app.customer("Big").await;
    let small = app.customer("Small").await;
    app.order(&big, "b-1", 60, 900_000_000).await;
    app.order(&small, "s-1", 60, 20_000_000).await;
    let s = until(&app, "welcome", "both leave", |s| s.enrolled == 2 && s.exited == 2).await;
    assert_eq!(on(&s, "notify").0, 1, "only the big spender is notified: {s:?}");
    assert_eq!(on(&s, "bye").0, 2);
    let hooks: Vec<_> = app.provider.posted().into_iter().filter(|p| p.path == "/hook").collect();
    assert_eq!(hooks.len(), 2, "one 503, then the retry: {hooks:?}");
    assert_eq!(hooks[0].idempotency_key, hooks[1].idempotency_key);
    assert_eq!(hooks[1].body["customer"], big.as_str());
    assert_eq!(hooks[1].body["journey"], "journeys/welcome");
}
