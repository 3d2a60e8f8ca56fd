//! `GetCustomer360`: the layers summarised from orders and interactions; sections
//! whose owners are missing or down are marked unavailable, the call still answers.

use crm_proto::crm::{
    common::v1::Channel,
    customer::v1::{self as pb, customer_reference::Reference},
};
use prost_types::FieldMask;
use tokio_stream::StreamExt;

use crate::app::{TestApp, person, violations};

fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

async fn view(app: &TestApp, name: &str, paths: &[&str]) -> Result<pb::Customer360, tonic::Status> {
    app.client
        .clone()
        .get_customer360(TestApp::admin(pb::GetCustomer360Request {
            name: name.into(),
            read_mask: Some(FieldMask {
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            }),
        }))
        .await
        .map(tonic::Response::into_inner)
}

fn state(s: &Option<pb::SectionStatus>) -> pb::SectionState {
    pb::SectionState::try_from(s.as_ref().unwrap().state).unwrap()
}

#[tokio::test]
async fn the_four_layers_in_one_call() {
    // A ticketing service that does not answer: its part is unavailable, in time.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let app = TestApp::spawn_with(move |cfg| {
        cfg.customer_profile.sections.ticketing_url.clone_from(&dead_url);
        cfg.customer_profile.sections.analytics_url = dead_url;
        cfg.customer_profile.sections.deadline_ms = 300;
    })
    .await;
    let c = app.create(person("Wei", "Zhang")).await;
    let reference = Some(pb::CustomerReference {
        reference: Some(Reference::Customer(c.name.clone())),
    });
    let now = chrono::Utc::now().timestamp();
    let orders = [
        (
            "SO-1",
            pb::OrderStatus::Completed,
            "CNY",
            now - 90 * 86_400,
            vec![("phones", 1, 3_000_000_000)],
        ),
        (
            "SO-2",
            pb::OrderStatus::Completed,
            "CNY",
            now - 30 * 86_400,
            vec![("accessories", 3, 50_000_000)],
        ),
        (
            "SO-3",
            pb::OrderStatus::Refunded,
            "CNY",
            now - 20 * 86_400,
            vec![("phones", 1, 3_000_000_000)],
        ),
        (
            "SO-4",
            pb::OrderStatus::Paid,
            "USD",
            now - 86_400,
            vec![("accessories", 1, 20_000_000)],
        ),
    ];
    for (id, status, currency, placed, lines) in orders {
        app.client
            .clone()
            .upsert_order(TestApp::admin(pb::UpsertOrderRequest {
                customer: reference.clone(),
                order: Some(pb::Order {
                    source: "erp".into(),
                    external_id: id.into(),
                    status: status as i32,
                    currency: currency.into(),
                    lines: lines
                        .into_iter()
                        .map(|(category, quantity, price)| pb::OrderLine {
                            sku: format!("{category}-sku"),
                            category: category.into(),
                            quantity,
                            unit_price_micros: price,
                            ..Default::default()
                        })
                        .collect(),
                    place_time: ts(placed),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap();
    }
    let interactions: Vec<pb::InteractionInput> = [
        (Channel::App, now - 3600),
        (Channel::App, now - 7200),
        (Channel::Web, now - 86_400),
        (Channel::Wechat, now - 200 * 86_400),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (channel, at))| pb::InteractionInput {
        customer: reference.clone(),
        interaction: Some(pb::Interaction {
            kind: pb::InteractionKind::PageView as i32,
            channel: channel as i32,
            occur_time: ts(at),
            source: "tracker".into(),
            external_id: format!("e{i}"),
            ..Default::default()
        }),
    })
    .collect();
    let acks: Vec<_> = app
        .client
        .clone()
        .record_interactions(TestApp::admin(tokio_stream::iter(vec![pb::RecordInteractionsRequest {
            batch_id: "b".into(),
            interactions,
        }])))
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(acks[0].as_ref().unwrap().recorded, 4);

    let started = std::time::Instant::now();
    let v = view(&app, &c.name, &[]).await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(state(&v.basic_status), pb::SectionState::Available);
    assert_eq!(v.basic.unwrap().name, c.name);
    let b = v.business.unwrap();
    assert_eq!(b.order_count, 3, "the refunded order does not count");
    let cny = b.totals.iter().find(|t| t.currency == "CNY").unwrap();
    assert_eq!(
        (cny.order_count, cny.total_micros, cny.average_micros),
        (2, 3_150_000_000, 1_575_000_000)
    );
    assert_eq!(b.top_categories[0].category, "accessories");
    assert_eq!(b.top_categories[0].quantity, 4);
    assert_eq!(b.first_order_time.unwrap().seconds, now - 90 * 86_400);
    assert_eq!(state(&b.tickets), pb::SectionState::Unavailable);
    assert_eq!(state(&v.business_status), pb::SectionState::Available);
    let h = v.behaviour.unwrap();
    assert_eq!(h.preferred_channel, Channel::App as i32);
    assert_eq!(h.channels.len(), 2, "the WeChat visit is outside the 90-day window");
    assert_eq!(h.last_seen_time.unwrap().seconds, now - 3600);
    // No segmentation configured, analytics down: the analysis section says so, per part.
    assert_eq!(state(&v.analysis_status), pb::SectionState::Unavailable);
    let a = v.analysis.unwrap();
    assert_eq!(state(&a.segmentation_status), pb::SectionState::Unavailable);
    assert!(
        a.segmentation_status
            .as_ref()
            .unwrap()
            .reason
            .contains("customer_profile.sections.segmentation_url"),
        "{a:?}"
    );
    assert_eq!(state(&a.analytics_status), pb::SectionState::Unavailable);
    assert!(a.analytics_status.as_ref().unwrap().reason.starts_with("analytics"), "{a:?}");
    assert!(v.analysis_status.unwrap().reason.contains("; "), "both reasons");

    // The read mask picks sections; a bad one names itself.
    let only = view(&app, &c.name, &["behaviour"]).await.unwrap();
    assert!(only.basic.is_none() && only.business.is_none() && only.behaviour.is_some());
    assert_eq!(state(&only.business_status), pb::SectionState::NotRequested);
    let err = view(&app, &c.name, &["everything"]).await.unwrap_err();
    assert_eq!(violations(&err), vec!["read_mask.paths[0]"]);
}

#[tokio::test]
async fn the_timeline_merges_every_source_newest_first() {
    let app = TestApp::spawn().await;
    let c = app.create(person("Wei", "Zhang")).await;
    let reference = Some(pb::CustomerReference {
        reference: Some(Reference::Customer(c.name.clone())),
    });
    let now = chrono::Utc::now().timestamp();
    app.client
        .clone()
        .upsert_order(TestApp::admin(pb::UpsertOrderRequest {
            customer: reference.clone(),
            order: Some(pb::Order {
                source: "erp".into(),
                external_id: "SO-1".into(),
                status: pb::OrderStatus::Completed as i32,
                currency: "CNY".into(),
                total_micros: 199_000_000,
                place_time: ts(now - 300),
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
    let _: Vec<_> = app
        .client
        .clone()
        .record_interactions(TestApp::admin(tokio_stream::iter(vec![pb::RecordInteractionsRequest {
            batch_id: "b".into(),
            interactions: vec![pb::InteractionInput {
                customer: reference.clone(),
                interaction: Some(pb::Interaction {
                    kind: pb::InteractionKind::ProductView as i32,
                    channel: Channel::App as i32,
                    occur_time: ts(now - 600),
                    source: "app".into(),
                    external_id: "v1".into(),
                    ..Default::default()
                }),
            }],
        }])))
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    app.client
        .clone()
        .update_consent(TestApp::admin(pb::UpdateConsentRequest {
            name: format!("{}/consent", c.name),
            changes: vec![pb::ConsentRecord {
                purpose: pb::ConsentPurpose::Marketing as i32,
                status: pb::ConsentStatus::Granted as i32,
                legal_basis: pb::LegalBasis::Consent as i32,
                source: "web-signup".into(),
                effective_time: ts(now - 900),
                ..Default::default()
            }],
            ..Default::default()
        }))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    let mut times = Vec::new();
    let mut token = String::new();
    let mut tickets = Vec::new();
    loop {
        let page = app
            .client
            .clone()
            .list_timeline(TestApp::admin(pb::ListTimelineRequest {
                parent: c.name.clone(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        tickets.push(page.tickets.clone());
        for e in page.entries {
            kinds.push(pb::TimelineKind::try_from(e.kind).unwrap());
            times.push(e.time.unwrap().seconds);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // Created just now, then the order, the product view and the consent.
    assert_eq!(
        kinds,
        vec![
            pb::TimelineKind::ProfileChange,
            pb::TimelineKind::Order,
            pb::TimelineKind::Interaction,
            pb::TimelineKind::Consent
        ]
    );
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    assert!(tickets.iter().all(|t| state(t) == pb::SectionState::Unavailable));
    let only_orders = app
        .client
        .clone()
        .list_timeline(TestApp::admin(pb::ListTimelineRequest {
            parent: c.name.clone(),
            kinds: vec![pb::TimelineKind::Order as i32],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only_orders.entries.len(), 1);
    assert!(
        only_orders.entries[0].summary.contains("199.00 CNY"),
        "{}",
        only_orders.entries[0].summary
    );
    assert_eq!(state(&only_orders.tickets), pb::SectionState::NotRequested);
}
