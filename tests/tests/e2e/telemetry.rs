//! Traces and metrics across real service binaries: `customer-profile` and
//! `permissions` export spans over OTLP to a receiver in this test. One call carrying
//! our `traceparent` must come back as one trace: our span → customer-profile's server
//! span → permissions' server span, with database statements as child spans in both
//! processes. The same call shows up on both Prometheus endpoints.

use std::{
    collections::HashMap,
    io::{Read, Write},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crm_proto::crm::customer::v1::{self as pb, customer_profile_service_client::CustomerProfileServiceClient};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use tonic::{Code, Request, Response, Status};

use crate::services::{Pair, as_user, connect, start_pair, token};

/// A span as received, with the `service.name` of the process that sent it.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    span: Span,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            })
    }
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>, Arc<Mutex<Vec<String>>>);

/// OTLP metrics: the names of the metrics pushed.
#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut names = self.1.lock().unwrap();
        for resource in request.into_inner().resource_metrics {
            for scope in resource.scope_metrics {
                names.extend(scope.metrics.into_iter().map(|m| m.name));
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(&self, request: Request<ExportTraceServiceRequest>) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// `GET /metrics` over a plain socket.
fn scrape(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// The value of the sample `name{labels}` (labels as rendered, sorted by name).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";
const CALLER_SPAN: &str = "eee19b7ec3c1b174";

// Multi-threaded: the receiver must keep answering while the test blocks on the
// processes' exit (their final export at shutdown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_is_one_trace_across_processes_and_is_counted() {
    let receiver = Receiver::default();
    let otlp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp_addr = format!("http://{}", otlp.local_addr().unwrap());
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .add_service(MetricsServiceServer::new(receiver.clone()))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(otlp));
    tokio::spawn(server);

    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_addr.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
    ];
    let Pair {
        permissions,
        customers,
        customers_addr,
        permissions_metrics,
        customers_metrics,
        ..
    } = start_pair(dir.path(), &env);
    let mut client = CustomerProfileServiceClient::new(connect(&customers_addr).await);

    // One call, inside a trace the caller started.
    let mut request = as_user(
        pb::CreateCustomerRequest {
            customer: Some(pb::Customer {
                person_name: Some(pb::PersonName {
                    given_name: "Wei".into(),
                    family_name: "Zhang".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            request_id: String::new(),
        },
        &token("root"),
    );
    request
        .metadata_mut()
        .insert("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01").parse().unwrap());
    client.create_customer(request).await.unwrap();
    // And one that fails validation, for the error count.
    let err = client
        .get_customer(as_user(
            pb::GetCustomerRequest {
                name: "not-a-customer-name".into(),
            },
            &token("root"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // The spans of our trace, once both processes have exported theirs.
    let create_path = "/crm.customer.v1.CustomerProfileService/CreateCustomer";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut previous = None;
    let trace: Vec<Received> = loop {
        let trace: Vec<Received> = receiver
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|r| hex(&r.span.trace_id) == TRACE_ID)
            .cloned()
            .collect();
        let from_permissions = trace
            .iter()
            .any(|r| r.service == "permissions" && r.attribute("rpc.system").is_some());
        let db_in_both = ["customer-profile", "permissions"].iter().all(|service| {
            trace
                .iter()
                .any(|r| r.service == *service && r.attribute("db.system.name").is_some_and(|system| system != "redis"))
        });
        // Batches from the two processes arrive in any order: wait until every span's
        // parent has arrived too (or is ours), and nothing new came in one more poll.
        let ids: std::collections::HashSet<String> = trace.iter().map(|r| hex(&r.span.span_id)).collect();
        let closed = trace
            .iter()
            .all(|r| ids.contains(&hex(&r.span.parent_span_id)) || hex(&r.span.parent_span_id) == CALLER_SPAN);
        let complete = from_permissions && db_in_both && closed && trace.iter().any(|r| r.span.name == create_path);
        if complete && previous == Some(trace.len()) {
            break trace;
        }
        previous = complete.then_some(trace.len());
        assert!(
            Instant::now() < deadline,
            "incomplete trace after 30 s: {:#?}",
            trace.iter().map(|r| (&r.service, &r.span.name)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let by_id: HashMap<String, &Received> = trace.iter().map(|r| (hex(&r.span.span_id), r)).collect();
    let parent_of = |r: &Received| by_id.get(&hex(&r.span.parent_span_id)).copied();

    // customer-profile's server span continues our span.
    let entry = trace.iter().find(|r| r.span.name == create_path).unwrap();
    assert_eq!(entry.service, "customer-profile");
    assert_eq!(hex(&entry.span.parent_span_id), CALLER_SPAN);
    assert_eq!(entry.span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(entry.attribute("rpc.grpc.status_code").as_deref(), Some("IntValue(0)"));

    // Every other span of the trace descends from it, across the process boundary.
    let descends = |r: &Received| {
        let mut at = r;
        for _ in 0..64 {
            if std::ptr::eq(at, entry) {
                return true;
            }
            match parent_of(at) {
                Some(parent) => at = parent,
                None => return false,
            }
        }
        false
    };
    for r in &trace {
        if !std::ptr::eq(r, entry) {
            assert!(
                descends(r),
                "{} span {:?} is not under the call's span",
                r.service,
                r.span.name
            );
        }
    }
    let remote = trace
        .iter()
        .filter(|r| r.service == "permissions" && r.span.kind == 2)
        .collect::<Vec<_>>();
    assert!(!remote.is_empty());
    for r in &remote {
        let parent = parent_of(r).unwrap();
        assert_eq!(
            parent.service, "customer-profile",
            "permissions was called by customer-profile"
        );
        assert!(
            r.span.name.starts_with("/crm.permissions.v1.PermissionsService/"),
            "{}",
            r.span.name
        );
    }
    // Database statements are client spans of the process that ran them, with the
    // statement text but never a bound value.
    let on_postgres = std::env::var("CRM_TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty());
    let database = if on_postgres { "postgresql" } else { "sqlite" };
    for r in trace
        .iter()
        .filter(|r| r.attribute("db.system.name").is_some_and(|system| system != "redis"))
    {
        assert_eq!(r.span.kind, 3, "SPAN_KIND_CLIENT");
        assert_eq!(parent_of(r).unwrap().service, r.service);
        assert_eq!(r.attribute("db.system.name").as_deref(), Some(database));
        let text = r.attribute("db.query.text").unwrap_or_default();
        assert!(!text.contains("Zhang") && !text.contains("Wei"), "{text}");
    }

    // With Redis as the shared cache, its commands are client spans too.
    if std::env::var("CRM_TEST_REDIS_URL").is_ok_and(|u| !u.is_empty()) {
        let redis = trace
            .iter()
            .filter(|r| r.attribute("db.system.name").as_deref() == Some("redis"))
            .collect::<Vec<_>>();
        assert!(!redis.is_empty(), "no Redis span in the trace");
        for r in redis {
            assert_eq!(r.span.kind, 3, "SPAN_KIND_CLIENT");
            assert_eq!(parent_of(r).unwrap().service, r.service);
        }
    }

    // Prometheus: the calls are counted and timed, by method and status code.
    let metrics = scrape(customers_metrics);
    let series = |method: &str, code: i32| {
        format!(
            "{{rpc_grpc_status_code=\"{code}\",rpc_method=\"{method}\",rpc_service=\"crm.customer.v1.CustomerProfileService\"}}"
        )
    };
    assert_eq!(
        sample(&metrics, &format!("rpc_server_calls_total{}", series("CreateCustomer", 0))),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, &format!("rpc_server_calls_total{}", series("GetCustomer", 3))),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("rpc_server_call_duration_seconds_count{}", series("CreateCustomer", 0))
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE rpc_server_call_duration_seconds histogram"));
    let series = series("CreateCustomer", 0);
    let all = format!(
        "rpc_server_call_duration_seconds_bucket{},le=\"+Inf\"}}",
        series.trim_end_matches('}')
    );
    assert_eq!(sample(&metrics, &all), Some(1.0), "{metrics}");
    assert!(metrics.contains("db_client_operation_duration_seconds_count{"), "{metrics}");
    let remote_metrics = scrape(permissions_metrics);
    assert!(
        remote_metrics.contains("rpc_service=\"crm.permissions.v1.PermissionsService\""),
        "{remote_metrics}"
    );

    // The same instruments are pushed over OTLP.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !receiver.1.lock().unwrap().iter().any(|n| n == "rpc.server.call.duration") {
        assert!(Instant::now() < deadline, "no rpc metrics pushed over OTLP");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert!(customers.terminate().success());
    assert!(permissions.terminate().success());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
