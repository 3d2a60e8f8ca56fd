//! The projection follows customer-profile's feed: customers (masked to the service
//! account's clearance), orders, interactions, consent; merges move rows to the
//! survivor; an erasure removes the customer. Replaying the feed from its start into
//! an empty database gives the same projection, and replaying it again changes nothing.

use std::time::Duration;

use crm_platform::{consumer::Apply, db::begin_write, testing::TestDatabase};
use crm_proto::crm::{
    common::v1::Channel as SourceChannel,
    customer::v1::{self as pb, ConsentPurpose, ConsentStatus, ContactChannel},
    events::v1::{Event, StreamEventsRequest},
    segmentation::v1 as spb,
};
use crm_segmentation::projection::{EVENT_TYPES, Projection};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use tokio_stream::StreamExt;

use crate::app::{TestApp, reference};

fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

async fn create(app: &TestApp, given: &str, family: &str, phone: &str) -> pb::Customer {
    app.customers
        .clone()
        .create_customer(TestApp::admin(pb::CreateCustomerRequest {
            customer: Some(pb::Customer {
                person_name: Some(pb::PersonName {
                    given_name: given.into(),
                    family_name: family.into(),
                    ..Default::default()
                }),
                phone_numbers: vec![pb::PhoneNumber {
                    number: phone.into(),
                    ..Default::default()
                }],
                tags: vec!["newsletter".into()],
                ..Default::default()
            }),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
}

async fn order(app: &TestApp, customer: &str, id: &str, category: &str, total: i64) {
    app.customers
        .clone()
        .upsert_order(TestApp::admin(pb::UpsertOrderRequest {
            customer: reference(customer),
            order: Some(pb::Order {
                source: "erp".into(),
                external_id: id.into(),
                status: pb::OrderStatus::Completed as i32,
                currency: "CNY".into(),
                total_micros: total,
                lines: vec![pb::OrderLine {
                    sku: format!("{category}-1"),
                    product_name: category.into(),
                    category: category.into(),
                    quantity: 1,
                    unit_price_micros: total,
                }],
                place_time: ts(chrono::Utc::now().timestamp() - 3600),
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
}

/// The projection's four tables as sorted text lines.
async fn dump(db: &DatabaseConnection) -> Vec<String> {
    let selects = [
        "SELECT 'customer|' || id || '|' || person_id || '|' || COALESCE(merged_into, '-') || '|' || kind || '|' || \
         lifecycle_stage || '|' || source_channel || '|' || owner_user_id || '|' || team_id || '|' || region || '|' || \
         locality || '|' || tags || '|' || attributes || '|' || create_us || '|' || update_us || '|' || deleted AS line \
         FROM customers",
        "SELECT 'order|' || id || '|' || customer_id || '|' || person_id || '|' || status || '|' || currency || '|' || \
         total_micros || '|' || place_us || '|' || categories AS line FROM orders",
        "SELECT 'interaction|' || id || '|' || customer_id || '|' || person_id || '|' || kind || '|' || channel || '|' || \
         occur_us || '|' || category || '|' || campaign AS line FROM interactions",
        "SELECT 'consent|' || customer_id || '|' || person_id || '|' || purpose || '|' || channel || '|' || status || '|' || \
         effective_us || '|' || COALESCE(expire_us, -1) AS line FROM consents",
    ];
    let mut lines = Vec::new();
    for sql in selects {
        for r in db
            .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .unwrap()
        {
            lines.push(r.try_get::<String>("", "line").unwrap());
        }
    }
    lines.sort();
    lines
}

/// customer-profile's feed from its start, as the segmentation account reads it.
async fn feed(app: &TestApp) -> Vec<Event> {
    let stream = app
        .customers
        .clone()
        .stream_events(TestApp::as_user(
            StreamEventsRequest {
                after_cursor: String::new(),
                event_types: EVENT_TYPES.iter().map(|t| (*t).to_owned()).collect(),
            },
            &TestApp::token(crm_segmentation::SERVICE),
        ))
        .await
        .unwrap()
        .into_inner();
    crm_platform::testing::replay(stream).await.unwrap()
}

async fn until(app: &TestApp, what: &str, done: impl Fn(&spb::ProjectionStatus) -> bool) -> spb::ProjectionStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = app.status().await;
        if done(&s) {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: projection at {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projection_follows_the_feed_and_a_replay_rebuilds_it() {
    let app = TestApp::spawn().await;
    let wei = create(&app, "Wei", "Zhang", "13800138000").await;
    let lin = create(&app, "Lin", "Wang", "13900139000").await;
    let gone = create(&app, "Gone", "Soon", "13700137000").await;
    order(&app, &wei.name, "SO-1", "phones", 3_000_000_000).await;
    order(&app, &lin.name, "SO-2", "cases", 99_000_000).await;
    let _: Vec<_> = app
        .customers
        .clone()
        .record_interactions(TestApp::admin(tokio_stream::iter(vec![pb::RecordInteractionsRequest {
            batch_id: "b".into(),
            interactions: vec![pb::InteractionInput {
                customer: reference(&lin.name),
                interaction: Some(pb::Interaction {
                    kind: pb::InteractionKind::ProductView as i32,
                    channel: SourceChannel::App as i32,
                    occur_time: ts(chrono::Utc::now().timestamp() - 60),
                    properties: [("category".to_owned(), "phones".to_owned())].into(),
                    source: "app".into(),
                    external_id: "ev-1".into(),
                    ..Default::default()
                }),
            }],
        }])))
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    app.customers
        .clone()
        .update_consent(TestApp::admin(pb::UpdateConsentRequest {
            name: format!("{}/consent", wei.name),
            changes: vec![pb::ConsentRecord {
                purpose: ConsentPurpose::Marketing as i32,
                channel: ContactChannel::Email as i32,
                status: ConsentStatus::Granted as i32,
                legal_basis: pb::LegalBasis::Consent as i32,
                source: "web-form".into(),
                effective_time: ts(chrono::Utc::now().timestamp() - 30),
                ..Default::default()
            }],
            ..Default::default()
        }))
        .await
        .unwrap();
    app.customers
        .clone()
        .merge_customers(TestApp::admin(pb::MergeCustomersRequest {
            survivor: wei.name.clone(),
            survivor_etag: String::new(),
            merged: vec![lin.name.clone()],
        }))
        .await
        .unwrap();
    app.customers
        .clone()
        .erase_customer(TestApp::admin(pb::EraseCustomerRequest {
            name: gone.name.clone(),
            reason: "DSR-9".into(),
            etag: String::new(),
        }))
        .await
        .unwrap();

    let status = until(&app, "everything applied", |s| {
        s.customers == 2 && s.orders == 2 && s.interactions == 1 && s.consents == 1
    })
    .await;
    assert_eq!(status.source, "customer-profile");
    assert!(!status.cursor.is_empty() && status.events_applied >= 8, "{status:?}");
    assert!(status.last_event_time.is_some());
    let caught_up = until(&app, "caught up", |s| s.caught_up_time.is_some()).await;
    assert!(caught_up.lag.unwrap().seconds < 10, "{caught_up:?}");

    let live = crm_platform::db::connect(&app.db.target, 1).await.unwrap();
    let rows = dump(&live).await;
    let wei_id = wei.name.trim_start_matches("customers/");
    let lin_id = lin.name.trim_start_matches("customers/");
    assert!(
        rows.iter()
            .filter(|l| l.starts_with("order|") || l.starts_with("interaction|"))
            .all(|l| l.split('|').nth(3) == Some(wei_id)),
        "the merged customer's rows count for the survivor: {rows:#?}"
    );
    assert!(
        rows.iter()
            .any(|l| l.starts_with(&format!("customer|{lin_id}|{wei_id}|{wei_id}|")))
    );
    let text = rows.join("\n");
    assert!(
        !text.contains("13800138000") && !text.contains("Gone"),
        "no contacts, nothing of the erased: {text}"
    );

    // A replay from the feed's start into an empty database gives the same projection,
    // and a second replay over it changes nothing.
    let fresh = TestDatabase::new("rebuild").unwrap();
    let rebuilt = crm_platform::db::connect(&fresh.target, 1).await.unwrap();
    crm_platform::migrate::run(&rebuilt, crm_segmentation::store::MIGRATIONS)
        .await
        .unwrap();
    let events = feed(&app).await;
    let projection = Projection::new(
        crm_segmentation::rfm::RfmConfig {
            window_days: 365,
            currency: "CNY".into(),
            recompute_interval_secs: 3600,
            drift_check_secs: 60,
        },
        crm_segmentation::traits::Registry::new(crm_segmentation::traits::Traits::new(&[], "CNY").unwrap()),
        crm_segmentation::segments::Evaluator { currency: "CNY".into() },
    );
    for _ in 0..2 {
        for e in &events {
            let txn = begin_write(&rebuilt).await.unwrap();
            projection.apply(&txn, e).await.unwrap();
            txn.commit().await.unwrap();
        }
        assert_eq!(dump(&rebuilt).await, rows, "a replay rebuilds the same projection");
    }
}
