//! Retention: interactions past their period go (whole monthly partitions on
//! PostgreSQL), a dry run only counts, each purge is an event.

use std::time::Duration;

use crm_platform::db::connect;
use crm_proto::crm::{
    common::v1::Channel,
    customer::v1::{self as pb, customer_reference::Reference},
    events::v1::{StreamEventsRequest, stream_events_response::Kind},
};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::app::{TestApp, person};

async fn purge(app: &TestApp, dry_run: bool) -> pb::RetentionReport {
    app.client
        .clone()
        .purge_expired_data(TestApp::admin(pb::PurgeExpiredDataRequest { dry_run }))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn interactions_past_their_period_are_purged() {
    let app = TestApp::spawn_with(|cfg| cfg.customer_profile.retention.interactions_days = 365).await;
    let c = app.create(person("Wei", "Zhang")).await;
    let now = chrono::Utc::now();
    let old = now - chrono::Duration::days(500);
    if app.db.is_postgres() {
        // The month of the old interaction has a partition of its own, as it would
        // have had when it was recorded.
        let db = connect(&app.db.target, 1).await.unwrap();
        let made = crm_customer_profile::store::activity::ensure_partitions(&db, old, 0)
            .await
            .unwrap();
        assert_eq!(made.len(), 1);
    }
    let ages = [
        (old, "old-1"),
        (old, "old-2"),
        (now - chrono::Duration::days(1000), "older"),
        (now - chrono::Duration::days(10), "recent"),
    ];
    let interactions = ages
        .iter()
        .map(|(at, id)| pb::InteractionInput {
            customer: Some(pb::CustomerReference {
                reference: Some(Reference::Customer(c.name.clone())),
            }),
            interaction: Some(pb::Interaction {
                kind: pb::InteractionKind::PageView as i32,
                channel: Channel::Web as i32,
                occur_time: Some(prost_types::Timestamp {
                    seconds: at.timestamp(),
                    nanos: 0,
                }),
                source: "web".into(),
                external_id: (*id).into(),
                ..Default::default()
            }),
        })
        .collect();
    let _: Vec<_> = app
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

    let dry = purge(&app, true).await;
    assert!(dry.ran && dry.dry_run);
    assert_eq!(dry.classes[0].rows, 3);
    let done = purge(&app, false).await;
    assert_eq!(done.classes[0].rows, 3);
    assert_eq!(done.classes[0].partitions.len(), usize::from(app.db.is_postgres()));
    let left: Vec<String> = app
        .client
        .clone()
        .list_interactions(TestApp::admin(pb::ListInteractionsRequest {
            parent: c.name.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .interactions
        .into_iter()
        .map(|i| i.external_id)
        .collect();
    assert_eq!(left, vec!["recent"]);
    assert_eq!(purge(&app, false).await.classes[0].rows, 0);

    // The purge is on the feed (and so in the audit trail).
    let mut stream = app
        .client
        .clone()
        .stream_events(TestApp::admin(StreamEventsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        if let Some(Kind::Event(e)) = msg.kind
            && e.r#type == "crm.customer.v1.DataPurged"
        {
            break;
        }
    }
    let err = app
        .client
        .clone()
        .purge_expired_data(TestApp::as_user(
            pb::PurgeExpiredDataRequest { dry_run: true },
            &TestApp::token("nobody"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

/// Leads closed (deleted) past their period and never converted are erased; a lead
/// with an order, or still open, stays. Erasure tombstones and records past theirs go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_leads_are_erased_and_old_tombstones_dropped() {
    let app = TestApp::spawn().await;
    let closed = app.create(person("Closed", "Lead")).await;
    let open = app.create(person("Open", "Lead")).await;
    let bought = app.create(person("Bought", "Once")).await;
    app.client
        .clone()
        .upsert_order(TestApp::admin(pb::UpsertOrderRequest {
            customer: Some(pb::CustomerReference {
                reference: Some(Reference::Customer(bought.name.clone())),
            }),
            order: Some(pb::Order {
                source: "erp".into(),
                external_id: "SO-1".into(),
                status: pb::OrderStatus::Completed as i32,
                currency: "CNY".into(),
                total_micros: 1_000_000,
                place_time: Some(prost_types::Timestamp {
                    seconds: chrono::Utc::now().timestamp() - 60,
                    nanos: 0,
                }),
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
    for c in [&closed, &bought] {
        app.client
            .clone()
            .delete_customer(TestApp::admin(pb::DeleteCustomerRequest {
                name: c.name.clone(),
                etag: String::new(),
            }))
            .await
            .unwrap();
    }
    let db = connect(&app.db.target, 1).await.unwrap();
    let long_ago = chrono::Utc::now() - chrono::Duration::days(800);
    crm_platform::db::exec(
        &db,
        "UPDATE customers SET delete_time = ? WHERE delete_time IS NOT NULL",
        vec![long_ago.into()],
    )
    .await
    .unwrap();
    let class = |r: &pb::RetentionReport, name: &str| r.classes.iter().find(|c| c.data_class == name).unwrap().rows;
    let dry = purge(&app, true).await;
    assert_eq!(class(&dry, "closed_leads"), 1, "only the closed lead without orders");
    let done = purge(&app, false).await;
    assert_eq!(class(&done, "closed_leads"), 1);
    let erasure = |name: &str| {
        let mut client = app.client.clone();
        let name = name.replace("customers/", "erasures/");
        async move { client.get_erasure(TestApp::admin(pb::GetErasureRequest { name })).await }
    };
    let record = erasure(&closed.name).await.unwrap().into_inner();
    assert_eq!(record.actor, "retention");
    assert_eq!(erasure(&bought.name).await.unwrap_err().code(), Code::NotFound);
    app.get(&open.name).await;
    assert_eq!(class(&purge(&app, false).await, "closed_leads"), 0, "nothing left to erase");

    // Five years on, the tombstone and the record go too.
    let id = closed.name.trim_start_matches("customers/").to_owned();
    let keys = connect(&app.db.target.companion("keys"), 1).await.unwrap();
    let ancient = (chrono::Utc::now() - chrono::Duration::days(2000)).timestamp_micros();
    crm_platform::db::exec(
        &keys,
        "UPDATE data_keys SET erase_us = ? WHERE customer_id = ?",
        vec![ancient.into(), id.clone().into()],
    )
    .await
    .unwrap();
    crm_platform::db::exec(
        &db,
        "UPDATE erasures SET erase_us = ? WHERE customer_id = ?",
        vec![ancient.into(), id.into()],
    )
    .await
    .unwrap();
    assert_eq!(class(&purge(&app, true).await, "erased_tombstones"), 1);
    assert_eq!(class(&purge(&app, false).await, "erased_tombstones"), 1);
    assert_eq!(erasure(&closed.name).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(class(&purge(&app, false).await, "erased_tombstones"), 0);
}
