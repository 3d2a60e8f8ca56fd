use crm_proto::crm::customer::v1 as pb;
use tonic::{Code, Request};

use crate::app::{TestApp, person, reason};

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let err = client
        .get_customer(Request::new(pb::GetCustomerRequest {
            name: "customers/x".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(reason(&err), "TOKEN_MISSING");
    let forged = TestApp::as_user(
        pb::GetCustomerRequest {
            name: "customers/x".into(),
        },
        "eyJhbGciOiJIUzI1NiJ9.e30.c2ln",
    );
    let err = client.get_customer(forged).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(reason(&err), "TOKEN_INVALID");
}

#[tokio::test]
async fn roles_decide_what_a_caller_may_do() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let created = app.create(person("Ada", "Lovelace")).await;
    let agent = app
        .user("agent-7", &[], "service_agent", crm_proto::crm::permissions::v1::Scope::All)
        .await;
    let got = client
        .get_customer(TestApp::as_user(
            pb::GetCustomerRequest {
                name: created.name.clone(),
            },
            &agent,
        ))
        .await;
    assert_eq!(got.unwrap().into_inner().person_name.unwrap().family_name, "Lovelace");
    let err = client
        .create_customer(TestApp::as_user(
            pb::CreateCustomerRequest {
                customer: Some(person("A", "B")),
                request_id: String::new(),
            },
            &agent,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = client
        .delete_customer(TestApp::as_user(
            pb::DeleteCustomerRequest {
                name: created.name.clone(),
                etag: String::new(),
            },
            &agent,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let nobody = TestApp::token("nobody");
    let err = client
        .get_customer(TestApp::as_user(pb::GetCustomerRequest { name: created.name }, &nobody))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn health_needs_no_token_and_reports_the_service() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let app = TestApp::spawn().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "crm.customer.v1.CustomerProfileService"] {
        let status = health
            .check(HealthCheckRequest { service: service.into() })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
}
