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
    events_as(app, &TestApp::token("admin-1"), after, count).await
}

async fn events_as(app: &TestApp, token: &str, after: &str, count: usize) -> Vec<Event> {
    let mut stream = app
        .client
        .clone()
        .stream_events(TestApp::as_user(
            StreamEventsRequest {
                after_cursor: after.into(),
                ..Default::default()
            },
            token,
        ))
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

/// A caller not cleared for every field (a service account at internal clearance) gets
/// the feed with each record masked as a read would show it; the admin gets it clear.
#[tokio::test]
async fn the_feed_is_masked_to_the_callers_clearance() {
    let app = TestApp::spawn().await;
    let mut c = person("Wei", "Zhang");
    c.phone_numbers = vec![pb::PhoneNumber {
        number: "13812345678".into(),
        ..Default::default()
    }];
    c.national_id = "11010519491231002X".into();
    let created = app.create(c).await;
    let svc = app
        .user("segmentation-1", &[], "service", crm_proto::crm::permissions::v1::Scope::All)
        .await;
    let decode = |e: &Event| {
        pb::CustomerCreated::decode(e.data.as_ref().unwrap().value.as_slice())
            .unwrap()
            .customer
            .unwrap()
    };
    let masked = decode(&events_as(&app, &svc, "", 1).await[0]);
    assert!(masked.national_id.is_empty(), "hidden: {}", masked.national_id);
    assert!(
        masked.phone_numbers.iter().all(|p| !p.number.contains("12345678")),
        "{:?}",
        masked.phone_numbers
    );
    assert!(masked.redacted_fields.iter().any(|f| f == "national_id"));
    assert_eq!(masked.name, created.name);
    assert_eq!(masked.create_time, created.create_time, "what is not classified above stays");
    assert_eq!(
        masked.display_name, created.display_name,
        "internal fields are within the account's clearance"
    );
    let clear = decode(&events(&app, "", 1).await[0]);
    assert_eq!(clear.national_id, "11010519491231002X");
}
