//! gRPC server bootstrap shared by every binary: health (`grpc.health.v1`, one status
//! per service), reflection v1 and v1alpha, the tower stack, and graceful shutdown.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch};
use tonic::Status;
use tonic::{
    body::Body,
    server::NamedService,
    service::RoutesBuilder,
    transport::{Certificate, Identity, ServerTlsConfig},
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::{Service, ServiceBuilder};

use crate::{
    config::{ServerConfig, TlsConfig},
    telemetry::TraceContextLayer,
};

/// Triggers shutdown of everything holding a [`ShutdownSignal`].
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Sender<bool>);

/// Resolves once shutdown has been triggered. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownSignal(watch::Receiver<bool>);

pub fn shutdown_channel() -> (Shutdown, ShutdownSignal) {
    let (tx, rx) = watch::channel(false);
    (Shutdown(tx), ShutdownSignal(rx))
}

impl Shutdown {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal(self.0.subscribe())
    }
}

impl ShutdownSignal {
    pub async fn wait(&mut self) {
        // An error means the sender is gone, which also means shutdown.
        let _ = self.0.wait_for(|down| *down).await;
    }
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}

/// Waits for SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn os_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Collects the gRPC services of one process and serves them.
pub struct GrpcServer {
    cfg: ServerConfig,
    routes: RoutesBuilder,
    health: HealthReporter,
    services: Vec<&'static str>,
    long_running: Vec<&'static str>,
    metrics: Option<SocketAddr>,
}

impl GrpcServer {
    pub fn new(cfg: ServerConfig) -> Self {
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        Self {
            cfg,
            routes,
            health,
            services: Vec::new(),
            long_running: Vec::new(),
            metrics: None,
        }
    }

    /// Also serves the Prometheus scrape endpoint (`metrics.listen`), from `serve`
    /// until shutdown. Start telemetry with the same configuration
    /// ([`crate::telemetry::init`]) so the endpoint has instruments to show.
    pub fn metrics_endpoint(&mut self, cfg: &crate::metrics::MetricsConfig) -> anyhow::Result<&mut Self> {
        self.metrics = cfg.address()?;
        Ok(self)
    }

    /// Exempts methods (full paths, `/package.Service/Method`) from
    /// `server.request_timeout_secs`: client-streaming calls such as a bulk import
    /// last as long as their stream. The caller's own `grpc-timeout` still applies.
    pub fn allow_long_running(&mut self, paths: &[&'static str]) -> &mut Self {
        self.long_running.extend_from_slice(paths);
        self
    }

    /// Adds a service, reported SERVING under its full name in `grpc.health.v1`.
    pub async fn add_service<S, R>(&mut self, service: S) -> &mut Self
    where
        S: Service<http::Request<Body>, Response = http::Response<R>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        R: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.routes.add_service(service);
        self.health.set_service_status(S::NAME, ServingStatus::Serving).await;
        self.services.push(S::NAME);
        self
    }

    /// On SIGTERM or Ctrl-C: reports NOT_SERVING at once, keeps serving for
    /// `server.shutdown_delay_secs` (until load balancers have seen it), then
    /// triggers `shutdown`. Call after the last `add_service`.
    pub fn stop_on_os_signal(&self, shutdown: Shutdown) {
        let health = self.health.clone();
        let services = self.services.clone();
        let delay = Duration::from_secs(self.cfg.shutdown_delay_secs);
        tokio::spawn(async move {
            os_signal().await;
            if !delay.is_zero() {
                tracing::info!(
                    delay_secs = delay.as_secs(),
                    "stopping: NOT_SERVING, still serving until the delay is over"
                );
                for name in services.into_iter().chain([""]) {
                    health.set_service_status(name, ServingStatus::NotServing).await;
                }
                tokio::time::sleep(delay).await;
            }
            shutdown.trigger();
        });
    }

    /// Serves on `listener` until `shutdown` fires, then reports NOT_SERVING, stops
    /// accepting, and lets in-flight calls finish within the grace period.
    pub async fn serve(self, listener: TcpListener, shutdown: ShutdownSignal) -> anyhow::Result<()> {
        // Reflection lists the services this server serves, not every contract in
        // the descriptor set (a contract may not be served yet, or by this process).
        let reflection = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crm_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("grpc.health.v1.Health")
                .with_service_name("grpc.reflection.v1alpha.ServerReflection");
            for name in &self.services {
                builder = builder.with_service_name(*name);
            }
            builder
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let mut routes = self.routes;
        routes.add_service(reflection_v1).add_service(reflection_v1alpha);
        if let Some(addr) = self.metrics {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (metrics.listen): {e}"))?;
            tokio::spawn(crate::metrics::serve(listener, shutdown.clone()));
        }

        let in_flight = Arc::new(AtomicUsize::new(0));
        let layers = ServiceBuilder::new()
            // Shed load first: a call over the limit is refused with UNAVAILABLE before
            // it costs anything (no span, no auth, no database). Health checks are
            // exempt: a busy pod is not an unready or dead one.
            .layer(ShedLayer(Arc::new(tokio::sync::Semaphore::new(self.cfg.concurrency_limit))))
            // Count what is being served, so shutdown knows when the last call is done.
            .layer(InFlightLayer(in_flight.clone()))
            // Then trace: every call that is served is one span, continuing the caller's trace.
            .layer(TraceContextLayer)
            .layer(DeadlineLayer {
                server: Duration::from_secs(self.cfg.request_timeout_secs),
                long_running: Arc::from(self.long_running.clone()),
            });

        let grace = Duration::from_secs(self.cfg.shutdown_grace_secs);
        let health = self.health.clone();
        let services = self.services.clone();
        let mut stop = shutdown.clone();
        let graceful = async move {
            stop.wait().await;
            tracing::info!("shutting down: no new calls, finishing in-flight ones");
            for name in services.into_iter().chain([""]) {
                health.set_service_status(name, ServingStatus::NotServing).await;
            }
        };
        let addr = listener.local_addr()?;
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls_config(&self.cfg.tls)? {
            builder = builder.tls_config(tls)?;
        }
        tracing::info!(%addr, tls = self.cfg.tls.enabled(), mtls = !self.cfg.tls.client_ca_path.is_empty(), "gRPC server listening");
        if self.cfg.max_connection_age_secs > 0 {
            builder = builder.max_connection_age(Duration::from_secs(self.cfg.max_connection_age_secs));
        }
        let server = builder
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(layers)
            .add_routes(routes.routes())
            // `tcp_nodelay` above applies only to listeners tonic binds itself; ours
            // must set it per accepted socket, or small responses wait ~40 ms for
            // the peer's delayed ACK (Nagle).
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                graceful,
            );
        // hyper's graceful shutdown also waits for idle client connections to close
        // (hyperium/hyper#4170), which well-behaved gRPC clients keep open: finish as soon
        // as the calls in flight are done, or when the grace period is over.
        let mut draining = shutdown;
        tokio::select! {
            served = server => served?,
            drained = async { draining.wait().await; drain(&in_flight, grace).await } => {
                if drained {
                    tracing::info!("in-flight calls finished; closing remaining connections");
                } else {
                    tracing::warn!(grace_secs = grace.as_secs(), calls = in_flight.load(Ordering::SeqCst), "grace period over; exiting with calls still in flight");
                }
            }
        }
        tracing::info!("gRPC server stopped");
        Ok(())
    }
}

/// The server's TLS settings from PEM files; `None` for plaintext.
fn tls_config(cfg: &TlsConfig) -> anyhow::Result<Option<ServerTlsConfig>> {
    if !cfg.enabled() {
        return Ok(None);
    }
    let read = |key: &str, path: &str| {
        std::fs::read(path).map_err(|e| anyhow::anyhow!("configuration key `server.tls.{key}`: cannot read {path}: {e}"))
    };
    let identity = Identity::from_pem(read("cert_path", &cfg.cert_path)?, read("key_path", &cfg.key_path)?);
    let mut tls = ServerTlsConfig::new().identity(identity);
    if !cfg.client_ca_path.is_empty() {
        tls = tls.client_ca_root(Certificate::from_pem(read("client_ca_path", &cfg.client_ca_path)?));
    }
    Ok(Some(tls))
}

/// Waits until no call is in flight (true) or `grace` has passed (false).
async fn drain(in_flight: &AtomicUsize, grace: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if in_flight.load(Ordering::SeqCst) == 0 {
            // Let the last responses leave the socket buffers.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if in_flight.load(Ordering::SeqCst) == 0 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Refuses calls beyond the concurrency limit with UNAVAILABLE (retryable), except
/// health checks, which never wait for or take a permit.
#[derive(Clone, Debug)]
struct ShedLayer(Arc<tokio::sync::Semaphore>);

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            permits: self.0.clone(),
        }
    }
}

#[derive(Clone, Debug)]
struct Shed<S> {
    inner: S,
    permits: Arc<tokio::sync::Semaphore>,
}

impl<S, B> Service<http::Request<B>> for Shed<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let permit = if req.uri().path().starts_with("/grpc.health.v1.Health/") {
            None
        } else {
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let refused = Status::unavailable("server overloaded: too many calls in progress; retry with backoff");
                    return Box::pin(std::future::ready(Ok(refused.into_http())));
                }
            }
        };
        let call = self.inner.call(req);
        Box::pin(async move {
            let result = call.await;
            drop(permit);
            result
        })
    }
}

/// Counts calls whose response has not been produced yet.
#[derive(Clone, Debug)]
struct InFlightLayer(Arc<AtomicUsize>);

impl<S> tower::Layer<S> for InFlightLayer {
    type Service = InFlight<S>;
    fn layer(&self, inner: S) -> Self::Service {
        InFlight {
            inner,
            count: self.0.clone(),
        }
    }
}

#[derive(Clone, Debug)]
struct InFlight<S> {
    inner: S,
    count: Arc<AtomicUsize>,
}

/// Decrements the count when the call's future completes or is dropped.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<S, R> Service<R> for InFlight<S>
where
    S: Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.count.fetch_add(1, Ordering::SeqCst);
        let guard = Counted(self.count.clone());
        let call = self.inner.call(req);
        Box::pin(async move {
            let result = call.await;
            drop(guard);
            result
        })
    }
}

/// Ends a call with DEADLINE_EXCEEDED after the server's request timeout or the
/// caller's `grpc-timeout`, whichever is shorter; long-running methods only honour
/// the caller's.
#[derive(Clone)]
struct DeadlineLayer {
    server: Duration,
    long_running: Arc<[&'static str]>,
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
struct Deadline<S> {
    inner: S,
    layer: DeadlineLayer,
}

/// Parses a `grpc-timeout` header value (`100m`, `5S`, ...).
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok().filter(|_| digits.len() <= 8)?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl<S, B, R> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let client = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout);
        let long_running = self.layer.long_running.contains(&req.uri().path());
        let limit = match (client, long_running) {
            (Some(c), true) => Some(c),
            (None, true) => None,
            (Some(c), false) => Some(c.min(self.layer.server)),
            (None, false) => Some(self.layer.server),
        };
        let call = self.inner.call(req);
        Box::pin(async move {
            match limit {
                None => call.await,
                Some(limit) => match tokio::time::timeout(limit, call).await {
                    Ok(result) => result,
                    Err(_) => Ok(Status::deadline_exceeded(format!("the call took longer than {limit:?}")).into_http()),
                },
            }
        })
    }
}

#[cfg(test)]
mod deadline_tests {
    use super::*;

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        for bad in ["", "S", "10x", "123456789S", "-1S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
    }
}

/// Binds the listen address, with the address in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (server.listen): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_calls_in_flight() {
        let count = Arc::new(AtomicUsize::new(1));
        assert!(!drain(&count, Duration::from_millis(150)).await, "a call is still running");
        let later = count.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            later.fetch_sub(1, Ordering::SeqCst);
        });
        assert!(drain(&count, Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn shutdown_signal_reaches_every_clone() {
        let (shutdown, signal) = shutdown_channel();
        let mut a = signal.clone();
        let mut b = shutdown.signal();
        assert!(!a.is_triggered());
        shutdown.trigger();
        a.wait().await;
        b.wait().await;
        assert!(signal.is_triggered());
    }
}
