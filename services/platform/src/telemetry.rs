//! Tracing and OpenTelemetry: the process-wide subscriber (pretty or JSON logs), OTLP
//! span export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, W3C trace-context
//! propagation in (server layer) and out (client interceptor), so one request is one
//! trace across services and asynchronous consumers (`current_traceparent`), and a
//! client span per database statement ([`observe_statement`]). The meter provider
//! feeds OTLP and the Prometheus endpoint ([`crate::metrics`]).

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering},
    task::{Context as TaskContext, Poll},
    time::{Instant, SystemTime},
};

use opentelemetry::{
    KeyValue, global,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, metrics::SdkMeterProvider, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use serde::Deserialize;
use tracing::{Instrument, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, for local use.
    #[default]
    Pretty,
    /// One JSON object per line, with the current span's fields (incl. `trace_id`).
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `EnvFilter` directives, e.g. `info,sqlx=warn`; `RUST_LOG` overrides it.
    pub level: String,
}

/// Flushes and shuts the tracer provider down when dropped.
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("telemetry: span export shutdown failed: {err}");
        }
        if let Some(meters) = self.meters.take()
            && let Err(err) = meters.shutdown()
        {
            eprintln!("telemetry: metric export shutdown failed: {err}");
        }
    }
}

static METRICS_EXPORTED: AtomicBool = AtomicBool::new(false);
static TRACES_EXPORTED: AtomicBool = AtomicBool::new(false);

/// Are metrics exported (OTLP or the Prometheus endpoint)? Services skip computing
/// expensive gauges nobody reads.
pub fn metrics_exported() -> bool {
    METRICS_EXPORTED.load(Ordering::Relaxed)
}

fn env_set(vars: &[&str]) -> bool {
    vars.iter().any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// Installs the global subscriber. Spans always get OpenTelemetry ids (so logs carry
/// a trace id and context propagates); they are exported only when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set.
/// Metrics are kept when that is set (pushed over OTLP) or when `metrics.listen`
/// names a scrape endpoint. A second call (tests) keeps the first subscriber and
/// returns an inert guard.
pub fn init(service_name: &str, log: &LogConfig, metrics: &crate::metrics::MetricsConfig) -> anyhow::Result<TelemetryGuard> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives),
        _ => EnvFilter::try_new(&log.level),
    }
    .map_err(|e| anyhow::anyhow!("configuration key `log.level`: {e}"))?;

    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name.to_owned());
    }
    let resource = resource.build();
    let mut provider = SdkTracerProvider::builder().with_resource(resource.clone());
    let export = env_set(&["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]);
    if export {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| anyhow::anyhow!("OTLP exporter (OTEL_EXPORTER_OTLP_ENDPOINT): {e}"))?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("crm"));

    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let installed = match log.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer().with_target(false)).try_init(),
    };
    if installed.is_err() {
        // Already initialised in this process: keep the first one.
        let _ = provider.shutdown();
        return Ok(TelemetryGuard {
            provider: None,
            meters: None,
        });
    }
    global::set_tracer_provider(provider.clone());
    TRACES_EXPORTED.store(export, Ordering::Relaxed);
    // Metrics (per-RPC and per-statement instruments, per-service gauges such as the
    // data-quality KPIs) go out over OTLP every OTEL_METRIC_EXPORT_INTERVAL (default
    // 60 s) when an endpoint is set, and are rendered on each scrape of the endpoint.
    let push = env_set(&["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"]);
    let scrape = metrics.address()?.is_some();
    let meters = if push || scrape {
        let mut builder = SdkMeterProvider::builder().with_resource(resource);
        if push {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| anyhow::anyhow!("OTLP metric exporter (OTEL_EXPORTER_OTLP_ENDPOINT): {e}"))?;
            builder = builder.with_periodic_exporter(exporter);
        }
        if scrape {
            builder = builder.with_reader(crate::metrics::scrape_reader());
        }
        let meters = builder.build();
        global::set_meter_provider(meters.clone());
        METRICS_EXPORTED.store(true, Ordering::Relaxed);
        Some(meters)
    } else {
        None
    };
    Ok(TelemetryGuard {
        provider: Some(provider),
        meters,
    })
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Server layer: one span per call, child of the caller's trace.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContextLayer;

impl<S> tower::Layer<S> for TraceContextLayer {
    type Service = TraceContextService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceContextService { inner }
    }
}

#[derive(Clone, Debug)]
pub struct TraceContextService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for TraceContextService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path.as_str(), ""));
        let (service, method) = (service.to_owned(), method.to_owned());
        // Probes and reflection are frequent and uninteresting: keep them out of INFO.
        let probe = path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.");
        let span = if probe {
            tracing::debug_span!("grpc.server", otel.name = %path, otel.kind = "server", rpc.system = "grpc", rpc.service = %service, rpc.method = %method, rpc.grpc.status_code = Empty, trace_id = Empty)
        } else {
            tracing::info_span!("grpc.server", otel.name = %path, otel.kind = "server", rpc.system = "grpc", rpc.service = %service, rpc.method = %method, rpc.grpc.status_code = Empty, trace_id = Empty)
        };
        let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
        let _ = span.set_parent(parent);
        let trace_id = span.context().span().span_context().trace_id();
        if trace_id != opentelemetry::trace::TraceId::INVALID {
            span.record("trace_id", tracing::field::display(trace_id));
        }
        let started = Instant::now();
        let call = self.inner.call(req);
        let record_on = span.clone();
        Box::pin(
            async move {
                let result = call.await;
                if let Ok(response) = &result {
                    // Errors of unary calls come "trailers-only", i.e. in the headers; a
                    // success carries its status in the trailers, which is 0.
                    let code = response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .unwrap_or(0);
                    record_on.record("rpc.grpc.status_code", code);
                    let elapsed = started.elapsed();
                    if !probe {
                        crate::metrics::record_rpc(&service, &method, code, elapsed);
                    }
                    let latency_ms = elapsed.as_secs_f64() * 1000.0;
                    // Server-side failures (UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE,
                    // DATA_LOSS) are warnings; client errors are the caller's business.
                    if matches!(code, 2 | 4 | 13 | 14 | 15) {
                        tracing::warn!(code, latency_ms, "call failed");
                    } else {
                        tracing::debug!(code, latency_ms, "call finished");
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}

/// Client interceptor: puts the current span's context into the outgoing metadata.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        inject_context(req.metadata_mut());
        Ok(req)
    }
}

/// Puts the current span's context into outgoing call metadata.
pub fn inject_context(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MetadataInjector(metadata)));
}

/// The current span's W3C `traceparent`, if it belongs to a trace.
pub fn current_traceparent() -> Option<String> {
    let cx = Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The statement's verb, for span names and metric labels (bounded cardinality).
fn operation_of(sql: &str) -> &'static str {
    let verb = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    const KNOWN: [&str; 12] = [
        "SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "BEGIN", "COMMIT", "ROLLBACK", "CREATE", "ALTER", "DROP", "SET",
    ];
    KNOWN.into_iter().find(|k| k.eq_ignore_ascii_case(verb)).unwrap_or("OTHER")
}

/// Longest statement text put on a span; multi-row inserts can be kilobytes.
const MAX_STATEMENT_TEXT: usize = 2048;

/// Called by the database pool after each statement (`set_metric_callback`, see
/// [`crate::db::connect`]): times it, and when spans are exported adds a client span
/// for it under the current span, with the statement text (placeholders only, never
/// the bound values).
pub(crate) fn observe_statement(system: &'static str, info: &sea_orm::metric::Info<'_>) {
    let operation = operation_of(&info.statement.sql);
    crate::metrics::record_db(system, operation, info.failed, info.elapsed);
    if !TRACES_EXPORTED.load(Ordering::Relaxed) {
        return;
    }
    let parent = Span::current().context();
    if !parent.span().span_context().is_valid() {
        return;
    }
    let mut text = info.statement.sql.as_str();
    if text.len() > MAX_STATEMENT_TEXT {
        let mut cut = MAX_STATEMENT_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text = &text[..cut];
    }
    let end = SystemTime::now();
    let start = end.checked_sub(info.elapsed).unwrap_or(end);
    let tracer = global::tracer("crm.db");
    let mut span = tracer
        .span_builder(format!("{operation} {system}"))
        .with_kind(SpanKind::Client)
        .with_start_time(start)
        .with_attributes([
            KeyValue::new("db.system.name", system),
            KeyValue::new("db.operation.name", operation),
            KeyValue::new("db.query.text", text.to_owned()),
        ])
        .start_with_context(&tracer, &parent);
    if info.failed {
        span.set_status(opentelemetry::trace::Status::error("statement failed"));
    }
    span.end_with_timestamp(end);
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn extracts_and_injects_traceparent() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_static(PARENT));
        let propagator = TraceContextPropagator::new();
        let cx = propagator.extract(&HeaderExtractor(&headers));
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut metadata = tonic::metadata::MetadataMap::new();
        propagator.inject_context(&cx, &mut MetadataInjector(&mut metadata));
        assert_eq!(metadata.get("traceparent").and_then(|v| v.to_str().ok()), Some(PARENT));
    }

    #[test]
    fn statement_verbs_are_a_closed_set() {
        assert_eq!(operation_of("  select * from t"), "SELECT");
        assert_eq!(operation_of("INSERT INTO t VALUES ($1)"), "INSERT");
        assert_eq!(operation_of("WITH x AS (SELECT 1) SELECT * FROM x"), "WITH");
        assert_eq!(operation_of("VACUUM"), "OTHER");
        assert_eq!(operation_of(""), "OTHER");
    }

    #[test]
    fn no_traceparent_outside_a_trace() {
        assert_eq!(current_traceparent(), None);
    }

    #[test]
    fn init_twice_does_not_panic() {
        let cfg = LogConfig {
            format: LogFormat::Pretty,
            level: "warn".into(),
        };
        let metrics = crate::metrics::MetricsConfig::default();
        let first = init("test", &cfg, &metrics).unwrap();
        let second = init("test", &cfg, &metrics).unwrap();
        drop(second);
        drop(first);
        let bad = LogConfig {
            format: LogFormat::Json,
            level: "not==a filter[".into(),
        };
        assert!(init("test", &bad, &metrics).is_err());
    }
}
