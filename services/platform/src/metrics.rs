//! Metrics: one set of OpenTelemetry instruments, read two ways. OTLP pushes them
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set ([`crate::telemetry::init`]), and a
//! Prometheus scrape endpoint (`GET /metrics` on `metrics.listen`) renders them in
//! the text exposition format. Every served call is counted and timed
//! ([`record_rpc`]); database statements are timed by [`record_db`]; services add
//! their own gauges on `opentelemetry::global::meter`.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, OnceLock, Weak},
    time::Duration,
};

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram},
};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    metrics::{
        InstrumentKind, ManualReader, Pipeline, Temporality,
        data::{AggregatedMetrics, HistogramDataPoint, Metric, MetricData, ResourceMetrics},
        reader::MetricReader,
    },
};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::server::ShutdownSignal;

#[derive(Debug, Clone, Deserialize, Default)]
pub struct MetricsConfig {
    /// Address of the Prometheus scrape endpoint (`GET /metrics`, plain HTTP), e.g.
    /// `0.0.0.0:9464`; empty turns it off.
    pub listen: String,
}

impl MetricsConfig {
    /// The endpoint's address, if one is configured.
    pub fn address(&self) -> Result<Option<SocketAddr>, crate::config::ConfigError> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|_| {
            crate::config::ConfigError::invalid("metrics.listen", "must be an address such as 0.0.0.0:9464, or empty")
        })
    }
}

/// The reader behind the scrape endpoint: the meter provider owns one handle, the
/// endpoint collects through the other.
#[derive(Debug, Clone)]
pub(crate) struct ScrapeReader(Arc<ManualReader>);

static SCRAPE: OnceLock<ScrapeReader> = OnceLock::new();

/// The process-wide scrape reader, created on first use.
pub(crate) fn scrape_reader() -> ScrapeReader {
    SCRAPE
        .get_or_init(|| ScrapeReader(Arc::new(ManualReader::builder().build())))
        .clone()
}

impl MetricReader for ScrapeReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// Upper bounds (seconds) of the latency histograms: 0.5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

struct Instruments {
    rpc_calls: Counter<u64>,
    rpc_duration: Histogram<f64>,
    db_duration: Histogram<f64>,
}

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

/// Built on first use, from the global meter provider; [`crate::telemetry::init`]
/// installs that provider before any call is served. Without it (in-process tests)
/// the instruments are no-ops.
fn instruments() -> &'static Instruments {
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("crm");
        Instruments {
            rpc_calls: meter
                .u64_counter("rpc.server.calls")
                .with_description("gRPC calls served, by service, method and status code")
                .build(),
            rpc_duration: meter
                .f64_histogram("rpc.server.call.duration")
                .with_unit("s")
                .with_description("Time to serve a gRPC call (to the response headers for streams)")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            db_duration: meter
                .f64_histogram("db.client.operation.duration")
                .with_unit("s")
                .with_description("Time of one database statement, by operation and outcome")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
        }
    })
}

/// The methods of the suite's contracts (`package.Service` → methods): labels come
/// only from these, so a client sending made-up paths cannot grow the label set.
fn known_methods() -> &'static std::collections::HashMap<String, std::collections::HashSet<String>> {
    static KNOWN: OnceLock<std::collections::HashMap<String, std::collections::HashSet<String>>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        use prost::Message as _;
        let mut known = std::collections::HashMap::new();
        if let Ok(set) = prost_types::FileDescriptorSet::decode(crm_proto::FILE_DESCRIPTOR_SET) {
            for file in set.file {
                for service in &file.service {
                    let name = format!("{}.{}", file.package(), service.name());
                    let methods: std::collections::HashSet<String> = service.method.iter().map(|m| m.name().to_owned()).collect();
                    known.insert(name, methods);
                }
            }
        }
        known
    })
}

/// Counts and times one served call. Paths outside the contracts count as
/// `unknown` (they fail with UNIMPLEMENTED).
pub fn record_rpc(service: &str, method: &str, code: i32, elapsed: Duration) {
    // Static strings from the contract set: no allocation per call.
    let (service, method): (&'static str, &'static str) = known_methods()
        .get_key_value(service)
        .and_then(|(s, methods)| Some((s.as_str(), methods.get(method)?.as_str())))
        .unwrap_or(("unknown", "unknown"));
    let attributes = [
        KeyValue::new("rpc.service", service),
        KeyValue::new("rpc.method", method),
        KeyValue::new("rpc.grpc.status_code", i64::from(code)),
    ];
    let m = instruments();
    m.rpc_calls.add(1, &attributes);
    m.rpc_duration.record(elapsed.as_secs_f64(), &attributes);
}

/// Times one database statement.
pub fn record_db(system: &'static str, operation: &'static str, failed: bool, elapsed: Duration) {
    let attributes = [
        KeyValue::new("db.system.name", system),
        KeyValue::new("db.operation.name", operation),
        KeyValue::new("error", failed),
    ];
    instruments().db_duration.record(elapsed.as_secs_f64(), &attributes);
}

/// Everything the meter provider holds now, in the Prometheus text format (0.0.4).
pub fn render() -> Result<String, String> {
    let mut collected = ResourceMetrics::default();
    scrape_reader().collect(&mut collected).map_err(|e| e.to_string())?;
    let mut out = String::new();
    let mut described = BTreeSet::new();
    for scope in collected.scope_metrics() {
        for metric in scope.metrics() {
            encode(&mut out, &mut described, metric);
        }
    }
    Ok(out)
}

/// `rpc.server.call.duration` with unit `s` becomes `rpc_server_call_duration_seconds`.
fn prometheus_name(name: &str, unit: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    let suffix = match unit {
        "s" => "seconds",
        "ms" => "milliseconds",
        "By" => "bytes",
        _ => "",
    };
    if !suffix.is_empty() && !out.ends_with(suffix) {
        out.push('_');
        out.push_str(suffix);
    }
    out
}

fn label_name(key: &str) -> String {
    let mut out: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn escape_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `{a="x",b="y"}` from the attributes plus an optional extra pair (`le`).
fn labels<'a>(attributes: impl Iterator<Item = &'a KeyValue>, extra: Option<(&str, &str)>) -> String {
    let mut pairs: Vec<(String, String)> = attributes
        .map(|kv| (label_name(kv.key.as_str()), kv.value.as_str().into_owned()))
        .collect();
    pairs.sort();
    if let Some((k, v)) = extra {
        pairs.push((k.to_owned(), v.to_owned()));
    }
    if pairs.is_empty() {
        return String::new();
    }
    let mut out = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_value(v, &mut out);
        out.push('"');
    }
    out.push('}');
    out
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

fn header(out: &mut String, described: &mut BTreeSet<String>, name: &str, kind: &str, help: &str) {
    if described.insert(name.to_owned()) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    }
}

trait AsF64: Copy {
    fn as_f64(self) -> f64;
}
impl AsF64 for f64 {
    fn as_f64(self) -> f64 {
        self
    }
}
impl AsF64 for u64 {
    #[allow(clippy::cast_precision_loss)]
    fn as_f64(self) -> f64 {
        self as f64
    }
}
impl AsF64 for i64 {
    #[allow(clippy::cast_precision_loss)]
    fn as_f64(self) -> f64 {
        self as f64
    }
}

fn encode(out: &mut String, described: &mut BTreeSet<String>, metric: &Metric) {
    match metric.data() {
        AggregatedMetrics::F64(data) => encode_data(out, described, metric, data),
        AggregatedMetrics::U64(data) => encode_data(out, described, metric, data),
        AggregatedMetrics::I64(data) => encode_data(out, described, metric, data),
    }
}

fn encode_data<T: AsF64>(out: &mut String, described: &mut BTreeSet<String>, metric: &Metric, data: &MetricData<T>) {
    let base = prometheus_name(metric.name(), metric.unit());
    let help = metric.description();
    match data {
        MetricData::Gauge(gauge) => {
            header(out, described, &base, "gauge", help);
            for point in gauge.data_points() {
                let _ = writeln!(
                    out,
                    "{base}{} {}",
                    labels(point.attributes(), None),
                    number(point.value().as_f64())
                );
            }
        }
        MetricData::Sum(sum) => {
            let (name, kind) = if sum.is_monotonic() {
                (format!("{base}_total"), "counter")
            } else {
                (base.clone(), "gauge")
            };
            header(out, described, &name, kind, help);
            for point in sum.data_points() {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    labels(point.attributes(), None),
                    number(point.value().as_f64())
                );
            }
        }
        MetricData::Histogram(histogram) => {
            header(out, described, &base, "histogram", help);
            for point in histogram.data_points() {
                encode_histogram(out, &base, point);
            }
        }
        // No instrument of the suite is an exponential histogram.
        MetricData::ExponentialHistogram(_) => {}
    }
}

fn encode_histogram<T: AsF64>(out: &mut String, base: &str, point: &HistogramDataPoint<T>) {
    let mut cumulative = 0u64;
    let mut counts = point.bucket_counts();
    for bound in point.bounds() {
        cumulative += counts.next().unwrap_or(0);
        let le = number(bound);
        let _ = writeln!(
            out,
            "{base}_bucket{} {cumulative}",
            labels(point.attributes(), Some(("le", &le)))
        );
    }
    cumulative += counts.sum::<u64>();
    let _ = writeln!(
        out,
        "{base}_bucket{} {cumulative}",
        labels(point.attributes(), Some(("le", "+Inf")))
    );
    let plain = labels(point.attributes(), None);
    let _ = writeln!(out, "{base}_sum{plain} {}", number(point.sum().as_f64()));
    let _ = writeln!(out, "{base}_count{plain} {}", point.count());
}

use crate::http::{Response, respond};

async fn handle(req: http::Request<hyper::body::Incoming>) -> Response {
    const TEXT: &str = "text/plain; charset=utf-8";
    match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/metrics") => match render() {
            Ok(body) => respond(http::StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", body),
            Err(err) => respond(
                http::StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("metrics unavailable: {err}\n"),
            ),
        },
        (_, "/metrics") => respond(http::StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n"),
        _ => respond(http::StatusCode::NOT_FOUND, TEXT, "see /metrics\n"),
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, shutdown: ShutdownSignal) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "Prometheus metrics at /metrics");
    }
    crate::http::serve(listener, shutdown, "metrics", handle).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    #[test]
    fn names_follow_prometheus_conventions() {
        assert_eq!(
            prometheus_name("rpc.server.call.duration", "s"),
            "rpc_server_call_duration_seconds"
        );
        assert_eq!(prometheus_name("crm.data_quality.kpi", ""), "crm_data_quality_kpi");
        assert_eq!(prometheus_name("9lives-x", "By"), "_9lives_x_bytes");
        assert_eq!(label_name("rpc.grpc.status_code"), "rpc_grpc_status_code");
        let mut escaped = String::new();
        escape_value("a\"b\\c\nd", &mut escaped);
        assert_eq!(escaped, "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn renders_counters_gauges_and_cumulative_histograms() {
        let reader = ScrapeReader(Arc::new(ManualReader::builder().build()));
        let provider = SdkMeterProvider::builder().with_reader(reader.clone()).build();
        let meter = provider.meter("test");
        let calls = meter.u64_counter("calls").with_description("Calls").build();
        calls.add(2, &[KeyValue::new("method", "Get")]);
        calls.add(1, &[KeyValue::new("method", "Get")]);
        let latency = meter
            .f64_histogram("latency")
            .with_unit("s")
            .with_boundaries(vec![0.1, 1.0])
            .build();
        for v in [0.0625, 0.5, 0.75, 3.0] {
            latency.record(v, &[]);
        }
        let _gauge = meter
            .i64_observable_gauge("queue.depth")
            .with_callback(|o| o.observe(-4, &[KeyValue::new("queue", "a\"b")]))
            .build();

        let mut collected = ResourceMetrics::default();
        reader.collect(&mut collected).unwrap();
        let mut out = String::new();
        let mut described = BTreeSet::new();
        for scope in collected.scope_metrics() {
            for metric in scope.metrics() {
                encode(&mut out, &mut described, metric);
            }
        }
        assert!(out.contains("# TYPE calls_total counter\n"), "{out}");
        assert!(out.contains("calls_total{method=\"Get\"} 3\n"), "{out}");
        assert!(out.contains("# TYPE latency_seconds histogram\n"), "{out}");
        assert!(out.contains("latency_seconds_bucket{le=\"0.1\"} 1\n"), "{out}");
        assert!(out.contains("latency_seconds_bucket{le=\"1\"} 3\n"), "{out}");
        assert!(out.contains("latency_seconds_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("latency_seconds_sum 4.3125\n"), "{out}");
        assert!(out.contains("latency_seconds_count 4\n"), "{out}");
        assert!(out.contains("queue_depth{queue=\"a\\\"b\"} -4\n"), "{out}");
        provider.shutdown().unwrap();
    }

    #[test]
    fn only_contract_methods_become_labels() {
        let known = known_methods();
        assert!(known["crm.customer.v1.CustomerProfileService"].contains("GetCustomer"));
        assert!(known["crm.permissions.v1.PermissionsService"].contains("Check"));
        assert!(!known.contains_key("made.up.Service"));
    }

    #[test]
    fn listen_address_is_validated() {
        assert_eq!(MetricsConfig::default().address().unwrap(), None);
        let cfg = MetricsConfig {
            listen: "0.0.0.0:9464".into(),
        };
        assert_eq!(cfg.address().unwrap().map(|a| a.port()), Some(9464));
        let bad = MetricsConfig { listen: "nine".into() };
        assert!(bad.address().unwrap_err().to_string().contains("metrics.listen"));
    }
}
