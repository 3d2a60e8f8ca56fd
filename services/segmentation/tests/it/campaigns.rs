//! Campaigns through the real API: audience from a segment, checks per recipient at
//! send time, delivery through the SMTP sink and the HTTP provider stub, tracking
//! over HTTP, conversions from orders, unsubscribes back in customer-profile.

use std::time::Duration;

use crm_proto::crm::{customer::v1 as cpb, segmentation::v1 as pb};
use tonic::Code;

use crate::{
    app::{TestApp, eventually},
    stubs::fetch,
};

/// Creates a customer with an e-mail address and a mobile number, through the app
/// (ingested with source `app`, the app's push token as its external id).
pub async fn contactable(app: &TestApp, given: &str) -> String {
    let n = given.bytes().fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b))) % 1_000_000;
    app.customers
        .clone()
        .ingest_customer(TestApp::admin(cpb::IngestCustomerRequest {
            source: Some(cpb::Source {
                system: "app".into(),
                channel: crm_proto::crm::common::v1::Channel::App as i32,
            }),
            external_id: format!("push-{}", given.to_lowercase()),
            customer: Some(cpb::Customer {
                person_name: Some(cpb::PersonName {
                    given_name: given.into(),
                    family_name: "Wang".into(),
                    ..Default::default()
                }),
                email_addresses: vec![cpb::EmailAddress {
                    address: format!("{}@example.com", given.to_lowercase()),
                    primary: true,
                    ..Default::default()
                }],
                phone_numbers: vec![cpb::PhoneNumber {
                    number: format!("+8613800{n:06}"),
                    r#type: cpb::PhoneType::Mobile as i32,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            source_update_time: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap()
        .name
}

pub async fn consent(app: &TestApp, customer: &str, channel: cpb::ContactChannel, status: cpb::ConsentStatus) {
    app.customers
        .clone()
        .update_consent(TestApp::admin(cpb::UpdateConsentRequest {
            name: format!("{customer}/consent"),
            changes: vec![cpb::ConsentRecord {
                purpose: cpb::ConsentPurpose::Marketing as i32,
                channel: channel as i32,
                status: status as i32,
                legal_basis: cpb::LegalBasis::Consent as i32,
                source: "web-signup".into(),
                ..Default::default()
            }],
            ..Default::default()
        }))
        .await
        .unwrap();
}

async fn segment(app: &TestApp, id: &str, filter: &str, members: i64) {
    app.segmentation
        .clone()
        .create_segment(TestApp::admin(pb::CreateSegmentRequest {
            segment: Some(pb::Segment {
                display_name: id.into(),
                filter: filter.into(),
                ..Default::default()
            }),
            segment_id: id.into(),
        }))
        .await
        .unwrap();
    eventually(&format!("segment {id}"), 20, async || {
        let s = app
            .segmentation
            .clone()
            .get_segment(TestApp::admin(pb::GetSegmentRequest {
                name: format!("segments/{id}"),
            }))
            .await
            .unwrap()
            .into_inner();
        if s.state == pb::SegmentState::Active as i32 && s.member_count == members {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await
}

fn email_campaign(segment: &str) -> pb::Campaign {
    pb::Campaign {
        display_name: "Spring sale".into(),
        channel: cpb::ContactChannel::Email as i32,
        audience: Some(pb::Audience {
            segments: vec![format!("segments/{segment}")],
            suppression_tags: vec!["tags/do-not-mail".into()],
            ..Default::default()
        }),
        message: Some(pb::MessageTemplate {
            subject: "Hi {{ given_name | there }}".into(),
            body: "Spring deals for you: {{ link_url }}".into(),
            html_body: "<html><body><p>Hi {{given_name}}, <a href=\"{{link_url}}\">see the deals</a></p></body></html>".into(),
            link: "https://shop.example/spring".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn create(app: &TestApp, id: &str, c: pb::Campaign) -> Result<pb::Campaign, tonic::Status> {
    app.campaigns
        .clone()
        .create_campaign(TestApp::admin(pb::CreateCampaignRequest {
            campaign: Some(c),
            campaign_id: id.into(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

async fn schedule(app: &TestApp, id: &str) -> Result<pb::Campaign, tonic::Status> {
    app.campaigns
        .clone()
        .schedule_campaign(TestApp::admin(pb::ScheduleCampaignRequest {
            name: format!("campaigns/{id}"),
            etag: String::new(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

async fn stats(app: &TestApp, id: &str) -> pb::CampaignStats {
    app.campaigns
        .clone()
        .get_campaign_stats(TestApp::admin(pb::GetCampaignStatsRequest {
            campaign: format!("campaigns/{id}"),
        }))
        .await
        .unwrap()
        .into_inner()
}

async fn until_stats(app: &TestApp, id: &str, what: &str, done: impl Fn(&pb::CampaignStats) -> bool) -> pb::CampaignStats {
    eventually(what, 30, async || {
        let s = stats(app, id).await;
        if done(&s) { Ok(s) } else { Err(format!("{s:?}")) }
    })
    .await
}

fn skipped(s: &pb::CampaignStats, reason: pb::SkipReason) -> i64 {
    s.skipped.iter().find(|k| k.reason == reason as i32).map_or(0, |k| k.count)
}

fn violations(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The URL after `prefix` in `text` (up to a quote, space or line end).
fn url_in(text: &str, prefix: &str) -> String {
    let start = text.find(prefix).unwrap_or_else(|| panic!("no {prefix} in {text}"));
    text[start..]
        .chars()
        .take_while(|c| !matches!(c, '"' | ' ' | '\n' | '\r' | '>' | '<'))
        .collect()
}

#[tokio::test]
async fn a_campaign_reaches_only_consenting_members_and_tracks_them_to_an_order() {
    let app = TestApp::spawn().await;
    let ann = contactable(&app, "Ann").await;
    let bob = contactable(&app, "Bob").await;
    let cai = contactable(&app, "Cai").await;
    let dan = contactable(&app, "Dan").await;
    consent(&app, &ann, cpb::ContactChannel::Email, cpb::ConsentStatus::Granted).await;
    consent(&app, &bob, cpb::ContactChannel::Email, cpb::ConsentStatus::Denied).await;
    // Cai never said anything: contact is opt-in.
    consent(&app, &dan, cpb::ContactChannel::Email, cpb::ConsentStatus::Granted).await;
    for (i, c) in [&ann, &bob, &cai, &dan].into_iter().enumerate() {
        app.order(c, &format!("o-{i}"), 3600, 100_000_000).await;
    }
    segment(&app, "buyers", "orders(30d) >= 1", 4).await;
    app.tag("do-not-mail", "", "Do not mail").await.unwrap();
    app.segmentation
        .clone()
        .tag_customers(TestApp::admin(pb::TagCustomersRequest {
            tag: "tags/do-not-mail".into(),
            customers: vec![dan.clone()],
            ..Default::default()
        }))
        .await
        .unwrap();

    let created = create(&app, "spring", email_campaign("buyers")).await.unwrap();
    assert_eq!(created.state, pb::CampaignState::Draft as i32);
    // The message as Ann will get it.
    let preview = app
        .campaigns
        .clone()
        .render_campaign_message(TestApp::admin(pb::RenderCampaignMessageRequest {
            campaign: "campaigns/spring".into(),
            customer: ann.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.subject, "Hi Ann");
    assert_eq!(preview.variables.get("given_name").map(String::as_str), Some("Ann"));
    let scheduled = schedule(&app, "spring").await.unwrap();
    assert_eq!(scheduled.state, pb::CampaignState::Scheduled as i32);

    let s = until_stats(&app, "spring", "every delivery decided", |s| s.audience == 4 && s.queued == 0).await;
    assert_eq!(s.sent, 1, "{s:?}");
    assert_eq!(
        skipped(&s, pb::SkipReason::NoConsent),
        2,
        "Bob said no, Cai said nothing: {s:?}"
    );
    assert_eq!(
        skipped(&s, pb::SkipReason::Suppressed),
        1,
        "Dan carries the suppression tag: {s:?}"
    );
    let mails = app.smtp.mails();
    assert_eq!(mails.len(), 1, "only Ann is contacted");
    assert_eq!(mails[0].to, vec!["ann@example.com".to_owned()]);
    let mail = mails[0].data.replace("=\n", "");
    assert!(mail.contains("Subject: Hi Ann"), "{mail}");
    assert!(mail.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"), "{mail}");
    let completed = eventually("the campaign completes", 20, async || {
        let c = app
            .campaigns
            .clone()
            .get_campaign(TestApp::admin(pb::GetCampaignRequest {
                name: "campaigns/spring".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        if c.state == pb::CampaignState::Completed as i32 {
            Ok(c)
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await;
    assert_eq!(completed.runs, 1);

    // Open, click, convert.
    let pixel = url_in(&mail, &format!("{}/o/", app.tracking));
    let (status, _, _) = fetch("GET", &pixel).await;
    assert_eq!(status, 200);
    let click = url_in(&mail, &format!("{}/c/", app.tracking));
    let (status, location, _) = fetch("GET", &click).await;
    assert_eq!((status, location.as_str()), (302, "https://shop.example/spring"));
    let (status, _, _) = fetch("GET", &format!("{}/c/forged.token", app.tracking)).await;
    assert_eq!(status, 404);
    // Placed now (to the microsecond: the delivery was sent within this second).
    let now = chrono::Utc::now();
    app.customers
        .clone()
        .upsert_order(TestApp::admin(cpb::UpsertOrderRequest {
            customer: crate::app::reference(&ann),
            order: Some(cpb::Order {
                source: "shop".into(),
                external_id: "after-mail".into(),
                status: cpb::OrderStatus::Paid as i32,
                currency: "CNY".into(),
                total_micros: 250_000_000,
                place_time: Some(prost_types::Timestamp {
                    seconds: now.timestamp(),
                    nanos: i32::try_from(now.timestamp_subsec_nanos()).unwrap(),
                }),
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
    let s = until_stats(&app, "spring", "the order converts", |s| s.converted == 1).await;
    assert_eq!((s.opened, s.clicked), (1, 1), "{s:?}");
    assert_eq!(s.revenue_micros, 250_000_000);
    assert!((s.conversion_rate - 1.0).abs() < 1e-9);
    // An earlier order of Bob (not sent to) converts nothing.
    let deliveries = app
        .campaigns
        .clone()
        .list_campaign_deliveries(TestApp::admin(pb::ListCampaignDeliveriesRequest {
            campaign: "campaigns/spring".into(),
            state: pb::DeliveryState::Sent as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].customer, ann);
    assert!(
        deliveries[0].conversion_order.starts_with(&format!("{ann}/orders/")),
        "{:?}",
        deliveries[0]
    );
    assert!(deliveries[0].click_time.is_some() && deliveries[0].open_time.is_some());

    // Attribution: the order after the mail is credited to e-mail; the orders placed
    // before any touch are conversions nobody gets credit for.
    let report = |model: pb::AttributionModel, group_by: pb::AttributionGrouping| {
        let mut campaigns = app.campaigns.clone();
        async move {
            campaigns
                .get_attribution_report(TestApp::admin(pb::GetAttributionReportRequest {
                    start_time: Some(prost_types::Timestamp {
                        seconds: chrono::Utc::now().timestamp() - 86_400,
                        nanos: 0,
                    }),
                    end_time: Some(prost_types::Timestamp {
                        seconds: chrono::Utc::now().timestamp() + 3600,
                        nanos: 0,
                    }),
                    model: model as i32,
                    group_by: group_by as i32,
                    ..Default::default()
                }))
                .await
        }
    };
    let last = report(pb::AttributionModel::LastTouch, pb::AttributionGrouping::Channel)
        .await
        .unwrap()
        .into_inner();
    assert_eq!((last.conversions, last.attributed_conversions), (5, 1), "{last:?}");
    assert_eq!(last.rows.len(), 1);
    assert_eq!((last.rows[0].key.as_str(), last.rows[0].conversions), ("email", 1.0));
    assert_eq!(last.rows[0].revenue_micros, 250_000_000);
    let markov = report(pb::AttributionModel::DataDriven, pb::AttributionGrouping::Campaign)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(markov.rows[0].key, "campaigns/spring");
    assert!((markov.rows[0].share - 1.0).abs() < 1e-9 && (markov.rows[0].removal_effect - 1.0).abs() < 1e-9);
    let err = report(pb::AttributionModel::Unspecified, pb::AttributionGrouping::Channel)
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["model".to_owned()]);

    // Unsubscribe: the page asks first, the POST does it.
    let unsubscribe = url_in(&mail, &format!("{}/u/", app.tracking));
    let (status, _, page) = fetch("GET", &unsubscribe).await;
    assert_eq!(status, 200);
    assert!(page.contains("method=post"), "{page}");
    assert_eq!(stats(&app, "spring").await.unsubscribed, 0, "a GET changes nothing");
    let (status, _, _) = fetch("POST", &unsubscribe).await;
    assert_eq!(status, 200);
    assert_eq!(stats(&app, "spring").await.unsubscribed, 1);

    // Touches and the withdrawal reach customer-profile.
    eventually("the unsubscribe reaches customer-profile", 20, async || {
        let c = app
            .customers
            .clone()
            .get_consent(TestApp::admin(cpb::GetConsentRequest {
                name: format!("{ann}/consent"),
            }))
            .await
            .unwrap()
            .into_inner();
        let withdrawn = c
            .records
            .iter()
            .any(|r| r.channel == cpb::ContactChannel::Email as i32 && r.status == cpb::ConsentStatus::Withdrawn as i32);
        if withdrawn { Ok(()) } else { Err(format!("{c:?}")) }
    })
    .await;
    let interactions = app
        .customers
        .clone()
        .list_interactions(TestApp::admin(cpb::ListInteractionsRequest {
            parent: ann.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .interactions;
    let kinds: Vec<i32> = interactions
        .iter()
        .filter(|i| i.campaign == "campaigns/spring")
        .map(|i| i.kind)
        .collect();
    for kind in [
        cpb::InteractionKind::CampaignDelivered,
        cpb::InteractionKind::CampaignOpened,
        cpb::InteractionKind::CampaignClicked,
    ] {
        assert!(kinds.contains(&(kind as i32)), "{kind:?} missing from {kinds:?}");
    }

    // A second campaign to the same audience does not reach Ann again: unsubscribed.
    create(&app, "summer", email_campaign("buyers")).await.unwrap();
    schedule(&app, "summer").await.unwrap();
    let s = until_stats(&app, "summer", "decided", |s| s.audience == 4 && s.queued == 0).await;
    assert_eq!((s.sent, skipped(&s, pb::SkipReason::Suppressed)), (0, 2), "{s:?}");
    assert_eq!(app.smtp.mails().len(), 1);
}

#[tokio::test]
async fn sms_sends_retry_transient_failures_with_one_idempotency_key_and_fail_refusals() {
    let app = TestApp::spawn().await;
    let ann = contactable(&app, "Ann").await;
    let bo = contactable(&app, "Bo").await;
    for c in [&ann, &bo] {
        consent(&app, c, cpb::ContactChannel::Sms, cpb::ConsentStatus::Granted).await;
        app.order(c, &format!("o-{c}"), 60, 1_000_000).await;
    }
    segment(&app, "buyers", "orders(30d) >= 1", 2).await;
    // The first answer is 503, the second 400 (refused), then 200 for the retry.
    app.provider.script.lock().unwrap().extend([503, 400]);
    let mut c = email_campaign("buyers");
    c.channel = cpb::ContactChannel::Sms as i32;
    c.audience.as_mut().unwrap().suppression_tags.clear();
    c.message = Some(pb::MessageTemplate {
        body: "{{given_name}}, 20% off this week: {{link_url}}".into(),
        link: "https://shop.example/sms".into(),
        ..Default::default()
    });
    create(&app, "sms", c).await.unwrap();
    schedule(&app, "sms").await.unwrap();
    let s = until_stats(&app, "sms", "both decided", |s| s.queued == 0 && s.audience == 2).await;
    assert_eq!((s.sent, s.failed), (1, 1), "{s:?}");
    let posted = app.provider.posted();
    assert_eq!(posted.len(), 3, "{posted:?}");
    assert!(posted.iter().all(|p| p.path == "/sms"));
    // The retried one kept its key.
    let sent = posted.iter().find(|p| p.status == 200).unwrap();
    let tries = posted.iter().filter(|p| p.idempotency_key == sent.idempotency_key).count();
    assert_eq!(tries, 2, "{posted:?}");
    assert!(sent.body["body"].as_str().unwrap().contains("20% off"), "{:?}", sent.body);
    assert!(sent.body["to"].as_str().unwrap().starts_with("+8613800"));
    let failed = app
        .campaigns
        .clone()
        .list_campaign_deliveries(TestApp::admin(pb::ListCampaignDeliveriesRequest {
            campaign: "campaigns/sms".into(),
            state: pb::DeliveryState::Failed as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(failed.len(), 1);
    assert!(failed[0].error.contains("400"), "{:?}", failed[0]);
}

#[tokio::test]
async fn campaigns_are_validated_and_move_through_their_states() {
    let app = TestApp::spawn().await;
    // Every problem at once, with its field.
    let mut bad = email_campaign("buyers");
    bad.display_name.clear();
    bad.control_share = 0.8;
    bad.message.as_mut().unwrap().body = "Hello {{ nickname }}".into();
    bad.quiet_hours = Some(pb::QuietHours {
        start: "25:00".into(),
        end: "08:00".into(),
    });
    let err = create(&app, "Bad Id", bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields = violations(&err);
    for f in [
        "campaign_id",
        "campaign.display_name",
        "campaign.control_share",
        "campaign.message.body",
        "campaign.quiet_hours",
    ] {
        assert!(fields.contains(&f.to_owned()), "{f} not in {fields:?}");
    }
    // A segment that does not exist, a channel without a provider.
    create(&app, "nowhere", email_campaign("missing")).await.unwrap();
    let err = schedule(&app, "nowhere").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("segments/missing"), "{}", err.message());
    let mut wechat = email_campaign("missing");
    wechat.channel = cpb::ContactChannel::Wechat as i32;
    let m = wechat.message.as_mut().unwrap();
    m.html_body.clear();
    m.wechat_template_id = "tpl-spring".into();
    create(&app, "wechat", wechat).await.unwrap();
    let err = schedule(&app, "wechat").await.unwrap_err();
    assert!(
        err.message().contains("segmentation.channels.wechat.url"),
        "{}",
        err.message()
    );

    // States: a campaign scheduled for later can be paused, edited, resumed, cancelled.
    let ann = contactable(&app, "Ann").await;
    app.order(&ann, "o-1", 60, 1_000_000).await;
    segment(&app, "buyers", "orders(30d) >= 1", 1).await;
    let mut later = email_campaign("buyers");
    later.schedule = Some(pb::Schedule {
        start_time: Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp() + 86_400,
            nanos: 0,
        }),
        ..Default::default()
    });
    create(&app, "later", later).await.unwrap();
    let scheduled = schedule(&app, "later").await.unwrap();
    assert!(scheduled.next_run_time.is_some());
    let update = |etag: String, body: &str| pb::UpdateCampaignRequest {
        campaign: Some(pb::Campaign {
            name: "campaigns/later".into(),
            etag,
            message: Some(pb::MessageTemplate {
                subject: "New subject".into(),
                body: body.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["message".into()],
        }),
    };
    let err = app
        .campaigns
        .clone()
        .update_campaign(TestApp::admin(update(String::new(), "changed")))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "a scheduled campaign's message is fixed"
    );
    let paused = app
        .campaigns
        .clone()
        .pause_campaign(TestApp::admin(pb::PauseCampaignRequest {
            name: "campaigns/later".into(),
            etag: scheduled.etag.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paused.state, pb::CampaignState::Paused as i32);
    let err = app
        .campaigns
        .clone()
        .update_campaign(TestApp::admin(update(scheduled.etag.clone(), "changed")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "a stale etag: {err:?}");
    let edited = app
        .campaigns
        .clone()
        .update_campaign(TestApp::admin(update(paused.etag.clone(), "changed")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(edited.message.unwrap().body, "changed");
    let resumed = app
        .campaigns
        .clone()
        .resume_campaign(TestApp::admin(pb::ResumeCampaignRequest {
            name: "campaigns/later".into(),
            etag: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.state, pb::CampaignState::Scheduled as i32);
    let err = app
        .campaigns
        .clone()
        .delete_campaign(TestApp::admin(pb::DeleteCampaignRequest {
            name: "campaigns/later".into(),
            etag: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let cancelled = app
        .campaigns
        .clone()
        .cancel_campaign(TestApp::admin(pb::CancelCampaignRequest {
            name: "campaigns/later".into(),
            etag: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state, pb::CampaignState::Cancelled as i32);
    assert!(cancelled.next_run_time.is_none());
    assert_eq!(stats(&app, "later").await.audience, 0, "nothing was queued");
    app.campaigns
        .clone()
        .delete_campaign(TestApp::admin(pb::DeleteCampaignRequest {
            name: "campaigns/later".into(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    // Listing and permissions.
    let listed = app
        .campaigns
        .clone()
        .list_campaigns(TestApp::admin(pb::ListCampaignsRequest {
            page_size: 1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.campaigns.len(), 1);
    assert!(!listed.next_page_token.is_empty());
    let stranger = TestApp::token("nobody");
    let err = app
        .campaigns
        .clone()
        .list_campaigns(TestApp::as_user(pb::ListCampaignsRequest::default(), &stranger))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn optimised_send_times_follow_each_customers_habits_and_the_population_for_newcomers() {
    let app = TestApp::spawn().await;
    let ann = contactable(&app, "Ann").await;
    let bo = contactable(&app, "Bo").await;
    for c in [&ann, &bo] {
        consent(&app, c, cpb::ContactChannel::Email, cpb::ConsentStatus::Granted).await;
        app.order(c, &format!("o-{c}"), 60, 1_000_000).await;
    }
    segment(&app, "buyers", "orders(30d) >= 1", 2).await;
    // History: Ann opened five messages in the hour 5 h from now (a week ago and
    // before); forty other customers opened theirs 10 to 13 h from now, ten in
    // each hour.
    let hour = 3_600_000_000i64;
    let week = 168 * hour;
    let now = chrono::Utc::now().timestamp_micros();
    let top = |us: i64| us - us.rem_euclid(hour);
    let (ann_hour, crowd_hour) = (top(now + 5 * hour), top(now + 10 * hour));
    let db = crm_platform::db::connect(&app.db.target, 1).await.unwrap();
    let mut history = vec![(ann.trim_start_matches("customers/").to_owned(), ann_hour)];
    for i in 0..40 {
        history.push((format!("someone-{i}"), crowd_hour + (i % 4) * hour));
    }
    for (i, (person, at)) in history.iter().enumerate() {
        let opens = if i == 0 { 5 } else { 1 };
        for w in 1..=opens {
            crm_platform::db::exec(
                &db,
                "INSERT INTO deliveries (person_id, campaign_id, run, channel, state, skip_reason, due_us, attempts, \
                 lease_us, send_us, provider_id, error, open_us, conversion_order, revenue_micros, currency) \
                 VALUES (?, 'past', ?, 2, 4, 0, 0, 1, 0, ?, '', '', ?, '', 0, '')",
                vec![
                    person.clone().into(),
                    w.into(),
                    (at - w * week).into(),
                    (at - w * week + 60_000_000).into(),
                ],
            )
            .await
            .unwrap();
        }
    }
    let mut c = email_campaign("buyers");
    c.schedule = Some(pb::Schedule {
        optimize_send_time: true,
        default_time_zone: "UTC".into(),
        ..Default::default()
    });
    c.audience.as_mut().unwrap().suppression_tags.clear();
    create(&app, "timed", c).await.unwrap();
    schedule(&app, "timed").await.unwrap();
    until_stats(&app, "timed", "queued", |s| s.audience == 2).await;
    let deliveries = app
        .campaigns
        .clone()
        .list_campaign_deliveries(TestApp::admin(pb::ListCampaignDeliveriesRequest {
            campaign: "campaigns/timed".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    let due = |who: &str| {
        let d = deliveries.iter().find(|d| d.customer == who).unwrap();
        let t = d.due_time.as_ref().unwrap();
        t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
    };
    assert_eq!(due(&ann), ann_hour, "Ann's own habit");
    assert_eq!(
        due(&bo),
        crowd_hour,
        "Bo has no history: the population's best hour (the first of equals)"
    );
    assert!(app.smtp.mails().is_empty(), "nothing is due yet");
    // Both ways of timing at once are refused.
    let mut both = email_campaign("buyers");
    both.schedule = Some(pb::Schedule {
        optimize_send_time: true,
        local_time: "09:00".into(),
        ..Default::default()
    });
    let err = create(&app, "both", both).await.unwrap_err();
    assert_eq!(violations(&err), vec!["campaign.schedule.optimize_send_time".to_owned()]);
}

#[tokio::test]
async fn deliveries_abandoned_mid_send_are_retried_only_where_the_provider_deduplicates() {
    let app = TestApp::spawn().await;
    let ann = contactable(&app, "Ann").await;
    for ch in [cpb::ContactChannel::Sms, cpb::ContactChannel::Email] {
        consent(&app, &ann, ch, cpb::ConsentStatus::Granted).await;
    }
    app.order(&ann, "o-1", 60, 1_000_000).await;
    segment(&app, "buyers", "orders(30d) >= 1", 1).await;
    // Two campaigns for later, then made to look as if a sender had crashed while
    // sending their one delivery each: SENDING, the lease long gone.
    let later = Some(pb::Schedule {
        start_time: Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp() + 86_400,
            nanos: 0,
        }),
        ..Default::default()
    });
    let mut sms = email_campaign("buyers");
    sms.channel = cpb::ContactChannel::Sms as i32;
    sms.message.as_mut().unwrap().html_body.clear();
    sms.schedule = later.clone();
    create(&app, "crash-sms", sms).await.unwrap();
    let mut mail = email_campaign("buyers");
    mail.schedule = later;
    create(&app, "crash-mail", mail).await.unwrap();
    let db = crm_platform::db::connect(&app.db.target, 1).await.unwrap();
    let person = ann.trim_start_matches("customers/").to_owned();
    for (campaign, channel) in [("crash-sms", 1), ("crash-mail", 2)] {
        crm_platform::db::exec(
            &db,
            "INSERT INTO deliveries (person_id, campaign_id, run, channel, state, skip_reason, due_us, attempts, \
             lease_us, provider_id, error, conversion_order, revenue_micros, currency) \
             VALUES (?, ?, 1, ?, 100, 0, 0, 1, 0, '', '', '', 0, '')",
            vec![person.clone().into(), campaign.into(), channel.into()],
        )
        .await
        .unwrap();
        crm_platform::db::exec(
            &db,
            "UPDATE campaigns SET state = 3, runs = 1, enqueue_done = 1 WHERE id = ?",
            vec![campaign.into()],
        )
        .await
        .unwrap();
    }
    // The SMS provider deduplicates by idempotency key: sent again.
    let s = until_stats(&app, "crash-sms", "the SMS is retried", |s| s.sent == 1).await;
    assert_eq!(s.failed, 0);
    let posted = app.provider.posted();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].idempotency_key, format!("crash-sms:1:{person}"));
    // SMTP does not: the mail may have gone out, so it is not sent again.
    let s = until_stats(&app, "crash-mail", "the mail fails", |s| s.failed == 1).await;
    assert_eq!(s.sent, 0);
    assert!(app.smtp.mails().is_empty());
    let failed = app
        .campaigns
        .clone()
        .list_campaign_deliveries(TestApp::admin(pb::ListCampaignDeliveriesRequest {
            campaign: "campaigns/crash-mail".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert!(failed[0].error.contains("outcome unknown"), "{:?}", failed[0]);
    // Its unsubscribe link still works, though the message was never recorded as sent.
    let links = crm_segmentation::campaigns::tracking::Links::new(crate::app::LINK_SECRET.as_bytes(), &app.tracking, 90).unwrap();
    let key = crm_segmentation::campaigns::store::Key {
        person_id: person.clone(),
        campaign_id: "crash-mail".into(),
        run: 1,
    };
    let url = links.url(
        crm_segmentation::campaigns::tracking::Purpose::Unsubscribe,
        &key,
        chrono::Utc::now().timestamp(),
    );
    let (status, _, _) = fetch("POST", &url).await;
    assert_eq!(status, 200);
    let suppressed = crm_platform::db::query(
        &db,
        "SELECT channel FROM suppressions WHERE person_id = ?",
        vec![person.into()],
    )
    .await
    .unwrap();
    let channels: Vec<i32> = suppressed.iter().map(|r| r.try_get("", "channel").unwrap()).collect();
    assert_eq!(channels, vec![cpb::ContactChannel::Email as i32]);
}

async fn deliveries(app: &TestApp, id: &str) -> Vec<pb::Delivery> {
    app.campaigns
        .clone()
        .list_campaign_deliveries(TestApp::admin(pb::ListCampaignDeliveriesRequest {
            campaign: format!("campaigns/{id}"),
            page_size: 1000,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .deliveries
}

#[tokio::test]
async fn frequency_caps_control_groups_and_quiet_hours_hold_messages_back() {
    let app = TestApp::spawn().await;
    let mut people = Vec::new();
    for i in 0..20 {
        let c = contactable(&app, &format!("P{i:02}")).await;
        consent(&app, &c, cpb::ContactChannel::Email, cpb::ConsentStatus::Granted).await;
        app.order(&c, &format!("o-{i}"), 3600, 1_000_000).await;
        people.push(c);
    }
    segment(&app, "buyers", "orders(30d) >= 1", 20).await;
    let capped = |mut c: pb::Campaign| {
        c.audience.as_mut().unwrap().suppression_tags.clear();
        c.frequency_cap = Some(pb::FrequencyCap {
            max_messages: 1,
            window: Some(prost_types::Duration {
                seconds: 86_400,
                nanos: 0,
            }),
        });
        c
    };
    // The first capped campaign reaches everyone; the second, nobody.
    create(&app, "first", capped(email_campaign("buyers"))).await.unwrap();
    schedule(&app, "first").await.unwrap();
    let s = until_stats(&app, "first", "sent", |s| s.sent == 20).await;
    assert!(s.skipped.is_empty(), "{s:?}");
    create(&app, "second", capped(email_campaign("buyers"))).await.unwrap();
    schedule(&app, "second").await.unwrap();
    let s = until_stats(&app, "second", "capped", |s| s.audience == 20 && s.queued == 0).await;
    assert_eq!((s.sent, skipped(&s, pb::SkipReason::FrequencyCap)), (0, 20), "{s:?}");
    assert_eq!(app.smtp.mails().len(), 20);

    // Half held back as a control group: never contacted, measured for lift.
    let mut held = email_campaign("buyers");
    held.audience.as_mut().unwrap().suppression_tags.clear();
    held.control_share = 0.5;
    create(&app, "held", held).await.unwrap();
    schedule(&app, "held").await.unwrap();
    let s = until_stats(&app, "held", "decided", |s| s.audience == 20 && s.queued == 0).await;
    assert!(s.control > 0 && s.sent > 0 && s.control + s.sent == 20, "{s:?}");
    let list = deliveries(&app, "held").await;
    let control: Vec<&str> = list
        .iter()
        .filter(|d| d.state == pb::DeliveryState::Control as i32)
        .map(|d| d.customer.as_str())
        .collect();
    let mailed_now: Vec<String> = app.smtp.mails()[20..].iter().flat_map(|m| m.to.clone()).collect();
    assert_eq!(mailed_now.len() as i64, s.sent);
    for c in &control {
        let n = people.iter().position(|p| p == c).unwrap();
        assert!(
            !mailed_now.contains(&format!("p{n:02}@example.com")),
            "control {c} was mailed"
        );
    }
    // A control member who orders counts for the control group (the order's time
    // has whole seconds: a second after the run started).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.order(control[0], "control-order", 0, 5_000_000).await;
    let s = until_stats(&app, "held", "control conversion", |s| s.control_converted == 1).await;
    assert!((s.control_conversion_rate - 1.0 / s.control as f64).abs() < 1e-9, "{s:?}");

    // Quiet hours around now (UTC): the message waits for their end.
    let now = chrono::Utc::now();
    let hhmm = |t: chrono::DateTime<chrono::Utc>| t.format("%H:%M").to_string();
    let mut quiet = email_campaign("buyers");
    quiet.audience.as_mut().unwrap().suppression_tags.clear();
    quiet.schedule = Some(pb::Schedule {
        default_time_zone: "UTC".into(),
        ..Default::default()
    });
    quiet.quiet_hours = Some(pb::QuietHours {
        start: hhmm(now - chrono::Duration::hours(1)),
        end: hhmm(now + chrono::Duration::hours(2)),
    });
    create(&app, "quiet", quiet).await.unwrap();
    schedule(&app, "quiet").await.unwrap();
    let list = eventually("every message deferred to the end of the quiet hours", 20, async || {
        let list = deliveries(&app, "quiet").await;
        let deferred = list
            .iter()
            .filter(|d| d.due_time.as_ref().is_some_and(|t| t.seconds > now.timestamp() + 3600))
            .count();
        if deferred == 20 { Ok(list) } else { Err(format!("{list:?}")) }
    })
    .await;
    assert!(
        list.iter()
            .all(|d| d.state == pb::DeliveryState::Queued as i32 && d.attempts == 0)
    );
    assert_eq!(app.smtp.mails().len() as i64, 20 + stats(&app, "held").await.sent);
}
