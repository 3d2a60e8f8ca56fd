use std::collections::HashSet;

use crm_proto::crm::customer::v1 as pb;
use tonic::Code;

use crate::app::{TestApp, person, violations};

#[tokio::test]
async fn a_retried_create_returns_the_first_customer() {
    let app = TestApp::spawn().await;
    let req = || pb::CreateCustomerRequest {
        customer: Some(person("Ada", "Lovelace")),
        request_id: "req-1".into(),
    };
    let first = app
        .client
        .clone()
        .create_customer(TestApp::admin(req()))
        .await
        .unwrap()
        .into_inner();
    let again = app
        .client
        .clone()
        .create_customer(TestApp::admin(req()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.name, again.name);

    let other = pb::CreateCustomerRequest {
        customer: Some(person("Grace", "Hopper")),
        request_id: "req-1".into(),
    };
    let err = app.client.clone().create_customer(TestApp::admin(other)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err), vec!["request_id"]);

    assert_eq!(app.list_first_page().await.len(), 1);
}

#[tokio::test]
async fn concurrent_retries_create_one_customer() {
    let app = TestApp::spawn().await;
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut client = app.client.clone();
        calls.push(tokio::spawn(async move {
            let req = pb::CreateCustomerRequest {
                customer: Some(person("Ada", "Lovelace")),
                request_id: "same-key".into(),
            };
            client.create_customer(TestApp::admin(req)).await.unwrap().into_inner().name
        }));
    }
    let mut names = HashSet::new();
    for c in calls {
        names.insert(c.await.unwrap());
    }
    assert_eq!(names.len(), 1, "{names:?}");
}
