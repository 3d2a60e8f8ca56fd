//! A small HTTP/1.1 server for the endpoints served beside gRPC (metrics, campaign
//! tracking): one task per connection, a header deadline, stops on shutdown.

use std::{convert::Infallible, future::Future, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
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
