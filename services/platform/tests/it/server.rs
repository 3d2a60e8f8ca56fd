//! The server bootstrap under load and at shutdown: health checks bypass the
//! concurrency limit, and SIGTERM reports NOT_SERVING while calls are still served
//! for `shutdown_delay_secs`.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use crm_platform::{
    config::{ServerConfig, TlsConfig},
    server::{GrpcServer, shutdown_channel},
};
use tonic::{Code, body::Body, server::NamedService, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A gRPC service whose every method answers OK after `delay`, with no message.
#[derive(Clone)]
struct Slow {
    delay: Duration,
}

impl NamedService for Slow {
    const NAME: &'static str = "test.Slow";
}

impl tower::Service<http::Request<Body>> for Slow {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<Body>) -> Self::Future {
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(tonic::Status::ok("").into_http())
        })
    }
}

fn config(concurrency_limit: usize, shutdown_delay_secs: u64) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        request_timeout_secs: 30,
        concurrency_limit,
        shutdown_grace_secs: 5,
        shutdown_delay_secs,
        max_connection_age_secs: 300,
        max_message_bytes: 1 << 20,
        allow_plaintext: false,
        tls: TlsConfig {
            cert_path: String::new(),
            key_path: String::new(),
            client_ca_path: String::new(),
        },
    }
}

/// Calls `/test.Slow/Wait` as a server-streaming method (an empty stream).
async fn wait(channel: Channel) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let mut stream = grpc
        .server_streaming(tonic::Request::new(()), "/test.Slow/Wait".parse().unwrap(), codec)
        .await?
        .into_inner();
    while stream.message().await?.is_some() {}
    Ok(())
}

async fn health(channel: Channel) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map(|r| r.into_inner().status)
}

#[tokio::test]
async fn health_checks_pass_while_calls_are_shed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_shutdown, signal) = shutdown_channel();
    let mut server = GrpcServer::new(config(1, 0));
    server
        .add_service(Slow {
            delay: Duration::from_secs(2),
        })
        .await;
    tokio::spawn(server.serve(listener, signal));
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();

    let busy = tokio::spawn(wait(channel.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The only permit is taken: another call is refused, a health check is not.
    let shed = wait(channel.clone()).await.unwrap_err();
    assert_eq!(shed.code(), Code::Unavailable, "{shed:?}");
    assert_eq!(health(channel.clone()).await.unwrap(), 1, "SERVING");
    busy.await.unwrap().unwrap();
    wait(channel).await.unwrap();
}

#[tokio::test]
async fn sigterm_reports_not_serving_and_serves_until_the_delay_is_over() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, signal) = shutdown_channel();
    let mut server = GrpcServer::new(config(16, 2));
    server.add_service(Slow { delay: Duration::ZERO }).await;
    server.stop_on_os_signal(shutdown);
    let serving = tokio::spawn(server.serve(listener, signal));
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    assert_eq!(health(channel.clone()).await.unwrap(), 1);

    // nextest runs each test in its own process; tokio's handler catches the signal.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(health(channel.clone()).await.unwrap(), 2, "NOT_SERVING");
    let fresh = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    wait(fresh)
        .await
        .expect("new connections and calls are still served during the delay");

    serving.await.unwrap().unwrap();
    let stopped = sent.elapsed();
    assert!(stopped >= Duration::from_secs(2), "stopped after {stopped:?}");
    assert!(stopped < Duration::from_secs(5), "stopped after {stopped:?}");
}
