//! The production topology: `permissions` and `customer-profile` as separate
//! processes, customer-profile asking permissions over gRPC with its own service
//! token. A principal without clearance sees masked fields; customer-profile's
//! audit trail reaches the permissions service's log; with permissions down,
//! undecided calls fail closed.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use crm_e2e::{GRPC_LISTENING, METRICS_LISTENING, Running, binary};
use crm_proto::crm::{
    customer::v1::{self as pb, customer_profile_service_client::CustomerProfileServiceClient},
    permissions::v1::{self as perm, permissions_service_client::PermissionsServiceClient},
};
use tonic::{Code, Request, transport::Channel};

pub(crate) const SECRET: &str = "e2e-secret-e2e-secret-e2e-secret-0123";
pub(crate) const KEY: &str = "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";

/// Starts service binary `bin` with `config` (TOML, written under `dir`) and extra
/// environment variables, on its embedded SQLite file.
pub(crate) fn start(bin: &str, config: &str, dir: &std::path::Path, env: &[(&str, &str)]) -> Running {
    let path = dir.join(format!("{bin}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(binary(bin));
    cmd.args(["--config", path.to_str().unwrap()])
        // JSON logs: the addresses bound are read from them (`Running::bound`).
        .env("CRM__LOG__FORMAT", "json")
        // Info lines carry the addresses: no inherited filter may hide them.
        .env_remove("RUST_LOG")
        .env_remove("CRM__DATABASE__URL")
        .env_remove("CRM__REDIS__URL")
        .envs(env.iter().copied());
    Running::start(cmd)
}

/// Connects once the server answers health checks.
pub(crate) async fn connect(addr: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = Channel::from_shared(addr.to_owned()).unwrap().connect().await {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            if health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .is_ok_and(|r| r.into_inner().status == 1)
            {
                return channel;
            }
        }
        assert!(Instant::now() < deadline, "{addr} never became healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn token(user: &str) -> String {
    mint(&["--user", user])
}

/// A self-service token of customer `customer` (its id).
pub(crate) fn customer_token(customer: &str) -> String {
    mint(&["--user", "portal", "--customer", customer])
}

/// `crm token` with `args`, signed with the test secret.
fn mint(args: &[&str]) -> String {
    mint_signed(SECRET, args)
}

/// `crm token` with `args`, signed with `secret`.
pub(crate) fn mint_signed(secret: &str, args: &[&str]) -> String {
    let out = Command::new(binary("crm"))
        .arg("token")
        .args(args)
        .env("CRM__AUTH__JWT_SECRET", secret)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned()
}

/// Creates user `user` bound to role `role` over every customer, as `admin`.
pub(crate) async fn add_user(perms: &mut PermissionsServiceClient<Channel>, admin: &str, user: &str, role: &str) {
    perms
        .create_user(as_user(
            perm::CreateUserRequest {
                user: Some(perm::User {
                    name: format!("users/{user}"),
                    ..Default::default()
                }),
            },
            admin,
        ))
        .await
        .unwrap();
    perms
        .create_role_binding(as_user(
            perm::CreateRoleBindingRequest {
                role_binding: Some(perm::RoleBinding {
                    user: format!("users/{user}"),
                    role: format!("roles/{role}"),
                    scope: perm::Scope::All as i32,
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            admin,
        ))
        .await
        .unwrap();
}

/// Exports customer `name`'s data as `token`'s user; returns the finished job and the
/// document.
pub(crate) async fn exported(
    customers: &mut CustomerProfileServiceClient<Channel>,
    name: &str,
    token: &str,
) -> (pb::ExportJob, String) {
    let job = customers
        .export_customer_data(as_user(
            pb::ExportCustomerDataRequest {
                name: name.to_owned(),
                request_id: String::new(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(20);
    let done = loop {
        let j = customers
            .get_export_job(as_user(pb::GetExportJobRequest { name: job.name.clone() }, token))
            .await
            .unwrap()
            .into_inner();
        if j.state != pb::ExportState::Running as i32 {
            break j;
        }
        assert!(Instant::now() < deadline, "the export never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done.state, pb::ExportState::Succeeded as i32, "{done:?}");
    let mut download = customers
        .download_export(as_user(pb::DownloadExportRequest { name: job.name }, token))
        .await
        .unwrap()
        .into_inner();
    let mut document = Vec::new();
    while let Some(chunk) = download.message().await.unwrap() {
        document.extend(chunk.data);
    }
    (done, String::from_utf8(document).unwrap())
}

pub(crate) fn as_user<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// `permissions` and `customer-profile` as separate processes on ports of their choosing, each
/// with its Prometheus endpoint, on SQLite files under `dir` or on the test PostgreSQL
/// and Redis.
pub(crate) struct Pair {
    pub permissions: Running,
    pub customers: Running,
    pub permissions_addr: String,
    pub customers_addr: String,
    pub permissions_metrics: u16,
    pub customers_metrics: u16,
}

/// `[database]` and `[redis]` of one service: its SQLite file under `dir`, or, when
/// the tests run against PostgreSQL and Redis (`CRM_TEST_DATABASE_URL`,
/// `CRM_TEST_REDIS_URL`), a schema and key prefix of its own there.
pub(crate) fn storage(dir: &std::path::Path, service: &str) -> String {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = format!(
        "e2e_{}_{}_{}",
        std::process::id(),
        RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        service.replace('-', "_")
    );
    let mut toml = match std::env::var("CRM_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => format!("[database]\nurl = \"{url}\"\nschema = \"{run}\"\n"),
        _ => format!("[database]\ndata_dir = \"{}\"\n", dir.display()),
    };
    if let Ok(url) = std::env::var("CRM_TEST_REDIS_URL")
        && !url.is_empty()
    {
        toml.push_str(&format!("[redis]\nurl = \"{url}\"\nkey_prefix = \"{run}:\"\n"));
    }
    toml
}

pub(crate) fn start_pair(dir: &std::path::Path, env: &[(&str, &str)]) -> Pair {
    let (p_storage, c_storage) = (storage(dir, "permissions"), storage(dir, "customer-profile"));
    let permissions = start(
        "permissions",
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[metrics]
listen = "127.0.0.1:0"
[auth]
jwt_secret = "{SECRET}"
{p_storage}
[feed]
poll_interval_ms = 100
[permissions_service]
bootstrap_admins = ["root"]
service_accounts = ["customer-profile"]
"#
        ),
        dir,
        env,
    );
    let [p_addr, p_metrics] = permissions.bound([GRPC_LISTENING, METRICS_LISTENING]);
    let customers = start(
        "customer-profile",
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[metrics]
listen = "127.0.0.1:0"
[auth]
jwt_secret = "{SECRET}"
{c_storage}
[encryption]
active_key = "k1"
blind_index_key = "{KEY}"
[encryption.keys]
k1 = "{KEY}"
[permissions]
url = "http://{p_addr}"
"#
        ),
        dir,
        env,
    );
    let [c_addr, c_metrics] = customers.bound([GRPC_LISTENING, METRICS_LISTENING]);
    Pair {
        permissions,
        customers,
        permissions_addr: format!("http://{p_addr}"),
        customers_addr: format!("http://{c_addr}"),
        permissions_metrics: port(&p_metrics),
        customers_metrics: port(&c_metrics),
    }
}

/// The port of `host:port`.
fn port(addr: &str) -> u16 {
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("host:port")
}

#[tokio::test]
async fn separate_services_enforce_mask_audit_and_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    let Pair {
        permissions,
        customers,
        permissions_addr,
        customers_addr,
        ..
    } = start_pair(dir.path(), &[]);
    let mut perms = PermissionsServiceClient::new(connect(&permissions_addr).await);
    let mut client = CustomerProfileServiceClient::new(connect(&customers_addr).await);
    let root = token("root");
    let agent = token("agent");

    add_user(&mut perms, &root, "agent", "service_agent").await;

    let create = |given: &str| pb::CreateCustomerRequest {
        customer: Some(pb::Customer {
            person_name: Some(pb::PersonName {
                given_name: given.into(),
                family_name: "Zhang".into(),
                ..Default::default()
            }),
            phone_numbers: vec![pb::PhoneNumber {
                number: "+86 138 0013 5678".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let created = client
        .create_customer(as_user(create("Wei"), &root))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.phone_numbers[0].number, "+8613800135678");
    let seen = client
        .get_customer(as_user(
            pb::GetCustomerRequest {
                name: created.name.clone(),
            },
            &agent,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.phone_numbers[0].number, "+86138****5678");
    assert_eq!(seen.redacted_fields, vec!["phone_numbers"]);

    // customer-profile's changes arrive in the permissions service's log.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let entries = perms
            .list_audit_entries(as_user(
                perm::ListAuditEntriesRequest {
                    resource: created.name.clone(),
                    ..Default::default()
                },
                &root,
            ))
            .await
            .unwrap()
            .into_inner()
            .audit_entries;
        if entries
            .iter()
            .any(|e| e.action == "crm.customer.v1.CustomerCreated" && e.source == "customer-profile" && e.actor == "root")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the creation never reached the audit log");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let other = client
        .create_customer(as_user(create("Li"), &root))
        .await
        .unwrap()
        .into_inner();
    assert!(permissions.terminate().success());
    let err = client
        .get_customer(as_user(pb::GetCustomerRequest { name: other.name }, &agent))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(customers.terminate().success());
}
