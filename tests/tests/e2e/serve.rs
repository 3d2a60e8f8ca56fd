use std::{process::Command, time::Duration};

use crm_e2e::{Running, binary, serving_addr};
use crm_proto::crm::{
    customer::v1::{self as pb, customer_profile_service_client::CustomerProfileServiceClient},
    events::v1::{StreamEventsRequest, stream_events_response::Kind},
};
use tokio_stream::StreamExt;
use tonic::{Code, Request, transport::Channel};

fn crm(args: &[&str], data_dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(binary("crm"));
    cmd.args(args)
        .env("CRM__DATABASE__DATA_DIR", data_dir)
        .env("CRM__LOG__FORMAT", "json")
        // Many suites run side by side: the tracking endpoint on a port of its choosing.
        .env("CRM__SEGMENTATION__TRACKING__LISTEN", "127.0.0.1:0")
        .env_remove("CRM__DATABASE__URL")
        .env_remove("CRM__REDIS__URL");
    cmd
}

fn authorized<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// `crm serve` on SQLite: health without a token, a token from `crm token`, the
/// customer lifecycle, the change feed, and a clean exit on SIGTERM. Then a restart
/// on the same data directory still has the data.
#[tokio::test]
async fn crm_serve_end_to_end() {
    let data = tempfile::tempdir().unwrap();
    let server = Running::start(crm(&["serve", "--listen", "127.0.0.1:0"], data.path()));
    let listen = serving_addr(&server);
    assert!(listen.starts_with("127.0.0.1:") && !listen.ends_with(":0"), "{listen}");
    let dev_token_line = server.wait_for_line("development admin token", Duration::from_secs(5));
    assert!(dev_token_line.rsplit(' ').next().is_some_and(|t| t.split('.').count() == 3));

    // The printed token is for `dev`, whom `crm serve` binds to the admin role.
    let token = dev_token_line.rsplit(' ').next().unwrap().trim().to_owned();

    let channel = Channel::from_shared(format!("http://{listen}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "crm.customer.v1.CustomerProfileService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    let mut client = CustomerProfileServiceClient::new(channel.clone());
    let err = client
        .list_customers(Request::new(pb::ListCustomersRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let created = client
        .create_customer(authorized(
            pb::CreateCustomerRequest {
                customer: Some(pb::Customer {
                    organization_name: "ACME Trading Co.".into(),
                    phone_numbers: vec![pb::PhoneNumber {
                        number: "010 6552 9988".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                request_id: "e2e-1".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.r#type, pb::CustomerType::Organization as i32);
    assert_eq!(created.phone_numbers[0].number, "+861065529988");

    let mut stream = client
        .stream_events(authorized(StreamEventsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(Kind::Event(event)) = msg.kind else {
        panic!("expected the create event")
    };
    assert_eq!(event.subject, created.name);
    // Close our connections first: hyper's graceful shutdown waits for connected
    // clients (hyperium/hyper#4170), bounded by server.shutdown_grace_secs.
    drop((stream, client, health, channel));
    let status = server.terminate();
    assert!(status.success(), "crm serve exited with {status}");

    // Same data directory, new process: the customer is still there.
    let server = Running::start(crm(&["serve", "--listen", "127.0.0.1:0"], data.path()));
    let listen = serving_addr(&server);
    let channel = Channel::from_shared(format!("http://{listen}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let got = CustomerProfileServiceClient::new(channel)
        .get_customer(authorized(
            pb::GetCustomerRequest {
                name: created.name.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);
}

#[test]
fn a_bad_configuration_value_stops_start_up_naming_the_key() {
    let data = tempfile::tempdir().unwrap();
    let out = crm(&["serve"], data.path())
        .env("CRM__SERVER__CONCURRENCY_LIMIT", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.concurrency_limit"), "{stderr}");
}

#[test]
fn the_public_dev_secret_is_refused_off_loopback() {
    let data = tempfile::tempdir().unwrap();
    let listen = "0.0.0.0:0";
    let out = crm(&["serve", "--listen", listen], data.path())
        .env("CRM__SERVER__ALLOW_PLAINTEXT", "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("auth.jwt_secret"), "{stderr}");
}
