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
