use std::time::Duration;

use crm_proto::crm::{
    customer::v1 as pb,
    events::v1::{Event, StreamEventsRequest, stream_events_response::Kind},
};
use prost::Message;
use prost_types::FieldMask;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::app::{TestApp, person, violations};

async fn events(app: &TestApp, after: &str, count: usize) -> Vec<Event> {
    let mut stream = app
        .client
        .clone()
        .stream_events(TestApp::admin(StreamEventsRequest {
            after_cursor: after.into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while out.len() < count {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        if let Some(Kind::Event(e)) = msg.kind {
            out.push(e);
        }
    }
    out
}

#[tokio::test]
async fn every_change_is_an_event_in_order() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let created = app.create(person("Ada", "Lovelace")).await;
    let req = pb::UpdateCustomerRequest {
        customer: Some(pb::Customer {
            name: created.name.clone(),
            team_id: "emea".into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["team_id".into()],
        }),
    };
    client.update_customer(TestApp::admin(req)).await.unwrap();
    client
        .delete_customer(TestApp::admin(pb::DeleteCustomerRequest {
            name: created.name.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap();

    let got = events(&app, "", 3).await;
    let types: Vec<_> = got.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(
        types,
        [
            "crm.customer.v1.CustomerCreated",
            "crm.customer.v1.CustomerUpdated",
            "crm.customer.v1.CustomerDeleted"
        ]
    );
    assert!(
        got.iter()
            .all(|e| e.subject == created.name && e.source == "customer-profile" && e.actor == "admin-1")
    );
    let updated = pb::CustomerUpdated::decode(got[1].data.as_ref().unwrap().value.as_slice()).unwrap();
    assert_eq!(updated.changed_paths, vec!["team_id"]);
    assert_eq!(updated.customer.unwrap().team_id, "emea");

    // Resuming after the first event replays the rest only.
    let rest = events(&app, &got[0].cursor, 2).await;
    assert_eq!(
        rest.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        vec![got[1].id.clone(), got[2].id.clone()]
    );
}

#[tokio::test]
async fn a_stream_tails_new_changes() {
    let app = TestApp::spawn().await;
    let mut stream = app
        .client
        .clone()
        .stream_events(TestApp::admin(StreamEventsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(first.kind, Some(Kind::Heartbeat(_))),
        "an empty feed answers with a heartbeat"
    );
    let created = app.create(person("Tail", "Me")).await;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(Kind::Event(e)) = msg.kind {
            assert_eq!(e.subject, created.name);
            break;
        }
    }
}

#[tokio::test]
async fn a_malformed_cursor_is_invalid() {
    let app = TestApp::spawn().await;
    let err = app
        .client
        .clone()
        .stream_events(TestApp::admin(StreamEventsRequest {
            after_cursor: "yesterday".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err), vec!["after_cursor"]);
}
