//! HTTP/1.1 beside gRPC: a small server for the endpoints served next to it
//! (metrics, campaign tracking), and a client with pooled connections for the
//! endpoints services call (enrichment, message providers, webhooks).

use std::{convert::Infallible, future::Future, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::net::TcpListener;

use crate::server::ShutdownSignal;

/// A response with a body in memory.
pub type Response = http::Response<Full<Bytes>>;

/// A response with `status`, `content_type` and `body`.
pub fn respond(status: http::StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response {
    let mut response = http::Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

/// Serves `handler` on `listener` until `shutdown` fires; `name` is for the logs.
pub async fn serve<H, F>(listener: TcpListener, mut shutdown: ShutdownSignal, name: &'static str, handler: H)
where
    H: Fn(http::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::debug!(%err, endpoint = name, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, service);
            if let Err(err) = conn.await {
                tracing::debug!(%err, endpoint = name, "connection ended with an error");
            }
        });
    }
}

/// Why a call failed; `permanent` ones are not tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub permanent: bool,
    pub message: String,
}

impl Failure {
    /// Worth trying again.
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            permanent: false,
            message: message.into(),
        }
    }

    /// Will not get better by trying again.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            permanent: true,
            message: message.into(),
        }
    }
}

/// Checks an endpoint URL: `http://host[:port][/path]`. Plain HTTP only: an endpoint
/// outside the cluster is reached through an egress proxy or sidecar that speaks TLS.
pub fn check_url(url: &str) -> std::result::Result<http::Uri, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "https:// is not supported: point it at an egress proxy or sidecar that speaks TLS to the provider".into(),
            );
        }
        _ => return Err(format!("`{url}` must start with http://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    Ok(uri)
}

/// An HTTP/1.1 client keeping connections alive per host.
#[derive(Clone)]
pub struct HttpClient(Client<HttpConnector, Full<Bytes>>);

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient(..)")
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Self(
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(256)
                .build(connector),
        )
    }

    /// POSTs `body` as JSON with `headers`, within `timeout` for the whole exchange;
    /// the status and (at most `limit` bytes of) the answer. Transport failures and
    /// the deadline are worth retrying.
    pub async fn post_json(
        &self,
        uri: &http::Uri,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        timeout: Duration,
        limit: usize,
    ) -> std::result::Result<(u16, Bytes), Failure> {
        let mut request = http::Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure::permanent(format!("request not buildable: {e}")))?;
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let exchange = async {
            let response = self
                .0
                .request(request)
                .await
                .map_err(|e| Failure::retry(format!("request to {authority} failed: {e}")))?;
            let status = response.status().as_u16();
            let bytes = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| Failure::retry(format!("reading the answer (at most {limit} bytes): {e}")))?
                .to_bytes();
            Ok((status, bytes))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(Failure::retry(format!("no answer within {} ms", timeout.as_millis()))),
        }
    }
}
