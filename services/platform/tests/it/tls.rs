//! The server bootstrap with TLS and mTLS, from the PEM files in tests/certs.

use std::time::Duration;

use crm_platform::{
    config::{ServerConfig, TlsConfig},
    server::{GrpcServer, Shutdown, shutdown_channel},
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn cert(name: &str) -> String {
    format!("{}/tests/certs/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(cert(name)).unwrap()
}

async fn start(client_ca: bool) -> (std::net::SocketAddr, Shutdown) {
    let cfg = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        request_timeout_secs: 5,
        concurrency_limit: 16,
        shutdown_grace_secs: 1,
        shutdown_delay_secs: 0,
        max_connection_age_secs: 300,
        max_message_bytes: 1 << 20,
        allow_plaintext: false,
        tls: TlsConfig {
            cert_path: cert("server.pem"),
            key_path: cert("server.key"),
            client_ca_path: if client_ca { cert("ca.pem") } else { String::new() },
        },
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, signal) = shutdown_channel();
    tokio::spawn(GrpcServer::new(cfg).serve(listener, signal));
    (addr, shutdown)
}

async fn check(addr: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://localhost:{}", addr.port()))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map(|_| ())
        .map_err(|e| format!("call: {e}"))
}

fn trusting_ca() -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem("ca.pem")))
        .domain_name("localhost")
}

#[tokio::test]
async fn tls_server_accepts_tls_and_refuses_plaintext() {
    let (addr, _shutdown) = start(false).await;
    check(addr, Some(trusting_ca())).await.unwrap();
    assert!(check(addr, None).await.is_err(), "plaintext must not be served");
}

#[tokio::test]
async fn mtls_server_requires_a_client_certificate() {
    let (addr, _shutdown) = start(true).await;
    assert!(check(addr, Some(trusting_ca())).await.is_err(), "no client certificate");
    let with_identity = trusting_ca().identity(Identity::from_pem(pem("client.pem"), pem("client.key")));
    check(addr, Some(with_identity)).await.unwrap();
}
