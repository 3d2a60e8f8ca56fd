//! The enrichment hook against a local stub endpoint: organisations get
//! firmographics as the least trusted source, with provenance and a feed event;
//! writes never wait for the endpoint; failures are retried.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use crm_proto::crm::{
    common::v1 as common,
    customer::v1 as pb,
    events::v1::{StreamEventsRequest, stream_events_response::Kind},
};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use prost::Message;
use prost_types::FieldMask;
use tokio_stream::StreamExt;

use crate::app::{TestApp, person};

/// How the stub answers.
#[derive(Clone)]
enum Mode {
    /// Status and JSON body per organisation name (`*` for any other).
    Answer(HashMap<String, (u16, String)>),
    /// Never answers (the client's timeout fires).
    Hang,
}

/// A local HTTP endpoint that records the JSON bodies it was sent.
struct Stub {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    calls: Arc<Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn firmographics(industry: &str, employees: u64, locality: &str) -> String {
    serde_json::json!({
        "industry": industry,
        "employee_count": employees,
        "address": {
            "region_code": "DE",
            "postal_code": "10115",
            "locality": locality,
            "address_lines": ["Invalidenstraße 117"],
        },
        "confidence": 0.93,
    })
    .to_string()
}

fn answers(entries: &[(&str, u16, String)]) -> Mode {
    Mode::Answer(
        entries
            .iter()
            .map(|(name, status, body)| ((*name).to_owned(), (*status, body.clone())))
            .collect(),
    )
}

impl Stub {
    async fn start(mode: Mode) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), mode).await
    }

    async fn start_on(addr: SocketAddr, mode: Mode) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (m, c) = (mode.clone(), calls.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (m, c) = (m.clone(), c.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (m, c) = (m.clone(), c.clone());
                        async move {
                            assert_eq!(req.method(), hyper::Method::POST);
                            assert_eq!(req.uri().path(), "/v1/lookup");
                            let auth = req.headers().get("authorization").cloned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                            let name = json["organization_name"].as_str().unwrap_or_default().to_owned();
                            c.lock().unwrap().push(json);
                            assert_eq!(auth.unwrap(), "Bearer stub-token");
                            let mode = m.lock().unwrap().clone();
                            let (status, body) = match mode {
                                Mode::Hang => {
                                    tokio::time::sleep(Duration::from_secs(60)).await;
                                    (500, String::new())
                                }
                                Mode::Answer(map) => map
                                    .get(&name)
                                    .or_else(|| map.get("*"))
                                    .cloned()
                                    .unwrap_or((404, String::new())),
                            };
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, mode, calls, task }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// The organisation names looked up so far, in order.
    fn names(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c["organization_name"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// A service whose enrichment endpoint is `addr`, with short timings, and the
/// attributes enrichment writes defined.
async fn app_with_endpoint(addr: SocketAddr) -> TestApp {
    let app = TestApp::spawn_with(|cfg| {
        let e = &mut cfg.customer_profile.enrichment;
        e.url = format!("http://{addr}/v1/lookup");
        e.bearer_token = "stub-token".into();
        e.timeout_ms = 300;
        e.interval_secs = 1;
        e.retry_base_ms = 100;
        e.retry_max_ms = 400;
        e.max_attempts = 50;
    })
    .await;
    app.define_text("industry").await;
    app.define(
        "employee_count",
        pb::FieldDefinition {
            display_name: "Employees".into(),
            r#type: pb::FieldType::Number as i32,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    app
}

fn organisation(name: &str, email: &str) -> pb::Customer {
    pb::Customer {
        r#type: pb::CustomerType::Organization as i32,
        organization_name: name.into(),
        email_addresses: vec![pb::EmailAddress {
            address: email.into(),
            ..Default::default()
        }],
        phone_numbers: vec![pb::PhoneNumber {
            number: "+86 138 0013 8000".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Reads `name` until `done` holds for it (15 s at most).
async fn eventually(app: &TestApp, name: &str, what: &str, done: impl Fn(&pb::Customer) -> bool) -> pb::Customer {
    for _ in 0..150 {
        let c = app.get(name).await;
        if done(&c) {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name}: {what} did not happen in time: {:?}", app.get(name).await);
}

fn attribute<'a>(c: &'a pb::Customer, key: &str) -> Option<&'a str> {
    c.custom_attributes.get(key).map(String::as_str)
}

fn provenance<'a>(c: &'a pb::Customer, field: &str) -> &'a pb::FieldProvenance {
    c.provenance
        .iter()
        .find(|p| p.field == field)
        .unwrap_or_else(|| panic!("no provenance for {field}"))
}

async fn wait_for_calls(stub: &Stub, n: usize) {
    for _ in 0..150 {
        if stub.names().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the stub got {:?}, expected {n} calls", stub.names());
}

#[tokio::test]
async fn a_new_organisation_gets_firmographics_with_provenance_and_an_event() {
    let stub = Stub::start(answers(&[("*", 200, firmographics("Software", 250, "Berlin"))])).await;
    let app = app_with_endpoint(stub.addr).await;
    let created = app.create(organisation("ACME Robotics", "info@ACME-robotics.example")).await;
    assert!(
        attribute(&created, "industry").is_none() && created.addresses.is_empty(),
        "the write does not wait for the endpoint"
    );

    let c = eventually(&app, &created.name, "enrichment", |c| attribute(c, "industry").is_some()).await;
    assert_eq!(attribute(&c, "industry"), Some("Software"));
    assert_eq!(attribute(&c, "employee_count"), Some("250"));
    assert_eq!(c.addresses.len(), 1);
    let postal = c.addresses[0].postal_address.as_ref().unwrap();
    assert_eq!((postal.region_code.as_str(), postal.locality.as_str()), ("DE", "Berlin"));
    for field in ["custom_attributes.industry", "custom_attributes.employee_count", "addresses"] {
        let p = provenance(&c, field);
        assert_eq!(p.source, "enrichment", "{field}");
        assert_eq!(p.channel, common::Channel::Unspecified as i32, "{field}");
    }
    assert_eq!(provenance(&c, "organization_name").source, "api", "other fields keep theirs");
    assert_ne!(c.etag, created.etag);

    // The endpoint learnt the name, the e-mail domain and nothing personal.
    let calls = stub.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![serde_json::json!({"organization_name": "ACME Robotics", "email_domains": ["acme-robotics.example"]})]
    );

    // One ordinary CustomerUpdated event, by the service itself.
    let mut stream = app
        .client
        .clone()
        .stream_events(TestApp::admin(StreamEventsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let update = loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        if let Some(Kind::Event(e)) = msg.kind
            && e.subject == created.name
            && e.r#type == "crm.customer.v1.CustomerUpdated"
        {
            break e;
        }
    };
    assert_eq!(update.actor, "customer-profile/enrichment");
    let updated = pb::CustomerUpdated::decode(update.data.as_ref().unwrap().value.as_slice()).unwrap();
    assert_eq!(updated.changed_paths, vec!["addresses", "custom_attributes"]);
}

#[tokio::test]
async fn values_from_more_trusted_sources_are_kept() {
    let stub = Stub::start(answers(&[("*", 200, firmographics("Software", 250, "Berlin"))])).await;
    let app = app_with_endpoint(stub.addr).await;
    // Entered through the API: industry and a billing address.
    let mut entered = organisation("Globex", "sales@globex.example");
    entered.custom_attributes.insert("industry".into(), "Manufacturing".into());
    entered.addresses = vec![pb::Address {
        r#type: pb::AddressType::Billing as i32,
        postal_address: Some(common::PostalAddress {
            region_code: "CN".into(),
            locality: "Shanghai".into(),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let api = app.create(entered).await;
    // From the ERP, through ingestion.
    let erp = app
        .try_ingest(
            "sap",
            common::Channel::Erp,
            "K-1",
            pb::Customer {
                custom_attributes: [("employee_count".to_owned(), "1200".to_owned())].into_iter().collect(),
                ..organisation("Initech", "it@initech.example")
            },
            None,
        )
        .await
        .unwrap()
        .customer
        .unwrap();

    let api = eventually(&app, &api.name, "employee count", |c| {
        attribute(c, "employee_count").is_some()
    })
    .await;
    assert_eq!(attribute(&api, "industry"), Some("Manufacturing"), "the API value stays");
    assert_eq!(provenance(&api, "custom_attributes.industry").source, "api");
    assert_eq!(attribute(&api, "employee_count"), Some("250"), "an empty field is filled");
    assert_eq!(api.addresses.len(), 1, "no enriched address beside the entered one");
    assert_eq!(api.addresses[0].postal_address.as_ref().unwrap().locality, "Shanghai");

    let erp = eventually(&app, &erp.name, "industry", |c| attribute(c, "industry").is_some()).await;
    assert_eq!(attribute(&erp, "employee_count"), Some("1200"), "the ERP value stays");
    assert_eq!(provenance(&erp, "custom_attributes.employee_count").source, "sap");
    assert_eq!(attribute(&erp, "industry"), Some("Software"));

    // A later ERP record replaces an enriched value: enrichment ranks last.
    let later = app
        .try_ingest(
            "sap",
            common::Channel::Erp,
            "K-1",
            pb::Customer {
                custom_attributes: [("industry".to_owned(), "Consulting".to_owned())].into_iter().collect(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap()
        .customer
        .unwrap();
    assert_eq!(attribute(&later, "industry"), Some("Consulting"));
    assert_eq!(provenance(&later, "custom_attributes.industry").source, "sap");
}

#[tokio::test]
async fn a_slow_endpoint_never_blocks_the_write_and_is_retried() {
    let stub = Stub::start(Mode::Hang).await;
    let app = app_with_endpoint(stub.addr).await;
    let created = app.create(organisation("Umbrella", "hq@umbrella.example")).await;
    assert!(attribute(&created, "industry").is_none(), "created while the endpoint hangs");

    // Two attempts ran into the timeout; nothing was applied.
    wait_for_calls(&stub, 2).await;
    let meanwhile = app.get(&created.name).await;
    assert!(attribute(&meanwhile, "industry").is_none());
    assert_eq!(meanwhile.etag, created.etag);

    stub.set(answers(&[("*", 200, firmographics("Pharmaceuticals", 5000, "Raccoon City"))]));
    let c = eventually(&app, &created.name, "enrichment after recovery", |c| {
        attribute(c, "industry").is_some()
    })
    .await;
    assert_eq!(attribute(&c, "industry"), Some("Pharmaceuticals"));
}

#[tokio::test]
async fn an_endpoint_that_is_down_is_retried_once_it_is_up() {
    // A port nothing listens on.
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let app = app_with_endpoint(addr).await;
    let created = app.create(organisation("Hooli", "gavin@hooli.example")).await;
    // Attempts fail with connection refused meanwhile (the job runs every second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(attribute(&app.get(&created.name).await, "industry").is_none());

    let stub = Stub::start_on(addr, answers(&[("*", 200, firmographics("Internet", 900, "Palo Alto"))])).await;
    let c = eventually(&app, &created.name, "enrichment once up", |c| {
        attribute(c, "industry").is_some()
    })
    .await;
    assert_eq!(attribute(&c, "industry"), Some("Internet"));
    assert_eq!(stub.names(), ["Hooli"]);
}

#[tokio::test]
async fn people_and_unrelated_changes_are_not_looked_up_but_renames_are() {
    let stub = Stub::start(answers(&[
        ("Acme", 200, firmographics("Software", 10, "Berlin")),
        ("Acme Holding", 200, firmographics("Finance", 40, "Frankfurt")),
        ("*", 200, firmographics("Retail", 99, "Munich")),
    ]))
    .await;
    let app = app_with_endpoint(stub.addr).await;
    let mut someone = person("Li", "Wei");
    someone.organization_name = "Acme".into();
    someone.email_addresses = vec![pb::EmailAddress {
        address: "li@acme.example".into(),
        ..Default::default()
    }];
    let someone = app.create(someone).await;
    let acme = app.create(organisation("Acme", "info@acme.example")).await;
    let acme = eventually(&app, &acme.name, "enrichment", |c| attribute(c, "industry").is_some()).await;
    assert_eq!(stub.names(), ["Acme"], "the person was not looked up");
    assert!(app.get(&someone.name).await.addresses.is_empty());

    // An unrelated change, and another address at the same domain: no lookup.
    let mut client = app.client.clone();
    client
        .update_customer(TestApp::admin(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                name: acme.name.clone(),
                team_id: "emea".into(),
                email_addresses: vec![pb::EmailAddress {
                    address: "sales@acme.example".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["team_id".into(), "email_addresses".into()],
            }),
        }))
        .await
        .unwrap();
    // A later organisation's lookup shows the queue was worked past that change.
    let other = app.create(organisation("Stark", "tony@stark.example")).await;
    eventually(&app, &other.name, "enrichment", |c| attribute(c, "industry").is_some()).await;
    assert_eq!(stub.names(), ["Acme", "Stark"]);

    // A rename is looked up again, and the new answer replaces the enriched values.
    let renamed = client
        .update_customer(TestApp::admin(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                name: acme.name.clone(),
                organization_name: "Acme Holding".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["organization_name".into()],
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    let c = eventually(&app, &renamed.name, "re-enrichment", |c| {
        attribute(c, "industry") == Some("Finance")
    })
    .await;
    assert_eq!(attribute(&c, "employee_count"), Some("40"));
    assert_eq!(c.addresses[0].postal_address.as_ref().unwrap().locality, "Frankfurt");
    assert_eq!(stub.names(), ["Acme", "Stark", "Acme Holding"]);
}

#[tokio::test]
async fn unknown_and_refused_lookups_are_not_retried() {
    let stub = Stub::start(answers(&[
        ("Nobody Inc", 404, String::new()),
        ("Forbidden Ltd", 403, r#"{"error":"plan does not cover this"}"#.into()),
        ("*", 200, firmographics("Software", 3, "Berlin")),
    ]))
    .await;
    let app = app_with_endpoint(stub.addr).await;
    let nobody = app.create(organisation("Nobody Inc", "x@nobody.example")).await;
    let forbidden = app.create(organisation("Forbidden Ltd", "x@forbidden.example")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Later lookups show the job went on (retries would come within 400 ms).
    let later = app.create(organisation("Later GmbH", "x@later.example")).await;
    eventually(&app, &later.name, "enrichment", |c| attribute(c, "industry").is_some()).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut names = stub.names();
    names.sort();
    assert_eq!(names, ["Forbidden Ltd", "Later GmbH", "Nobody Inc"], "each looked up once");
    for name in [&nobody.name, &forbidden.name] {
        let c = app.get(name).await;
        assert!(
            c.custom_attributes.is_empty() && c.addresses.is_empty(),
            "nothing applied to {name}"
        );
    }
}

#[tokio::test]
async fn invalid_endpoint_configuration_names_the_key() {
    let doc = crm_platform::config::load(
        &[crm_platform::config::PLATFORM_DEFAULTS, crm_customer_profile::DEFAULTS],
        None,
    )
    .unwrap();
    let mut cfg: crm_customer_profile::ServiceConfig = crm_platform::config::section(&doc, Some("customer_profile")).unwrap();
    assert!(cfg.validate().is_ok(), "the defaults (enrichment off) are valid");
    cfg.enrichment.url = "https://enrich.example.com/v1".into();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("customer_profile.enrichment.url"), "{err}");
    cfg.enrichment.url = "http://enrich.internal/v1".into();
    cfg.enrichment.max_attempts = 0;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("customer_profile.enrichment.max_attempts"), "{err}");
}
