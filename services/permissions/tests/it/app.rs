//! `TestApp`: the permissions service started in-process with its own database.

use crm_permissions::{Config, DEFAULTS};
use crm_platform::{
    Platform,
    config::{PLATFORM_DEFAULTS, section},
    server::{GrpcServer, Shutdown, shutdown_channel},
    testing::{self, TestDatabase},
};
use crm_proto::crm::permissions::v1::{self as pb, permissions_service_client::PermissionsServiceClient};
use tonic::{Request, transport::Channel};

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub client: PermissionsServiceClient<Channel>,
    pub config: Config,
    shutdown: Shutdown,
    pub db: TestDatabase,
    /// The use cases, for jobs the API does not trigger.
    pub service: crm_permissions::service::Permissions,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A server whose configuration `adjust` changes after the test defaults.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let db = TestDatabase::new("permissions").unwrap();
        let value = crm_platform::config::load(&[PLATFORM_DEFAULTS, DEFAULTS], None).unwrap();
        let mut cfg = Config {
            platform: section(&value, None).unwrap(),
            permissions_service: section(&value, Some("permissions_service")).unwrap(),
        };
        db.configure(&mut cfg.platform.database);
        testing::configure_platform(&mut cfg.platform, SECRET).await;
        let s = &mut cfg.permissions_service;
        s.bootstrap_admins = vec!["root".into()];
        s.service_accounts = vec!["svc".into()];
        s.version_poll_ms = 100;
        s.expiry_interval_secs = 1;
        s.usage_flush_secs = 1;
        adjust(&mut cfg);
        let (shutdown, signal) = shutdown_channel();
        let platform = Platform::new(cfg.platform.clone(), signal.clone()).unwrap();
        let (service, permissions) = crm_permissions::build(&platform, &cfg.permissions_service)
            .await
            .expect("service must start (is the test database reachable?)");
        let mut server = GrpcServer::new(platform.config.server.clone());
        server.add_service(service).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(server.serve(listener, signal));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            addr,
            client: PermissionsServiceClient::new(channel),
            config: cfg,
            shutdown,
            db,
            service: permissions,
        }
    }

    pub fn stop(&self) {
        self.shutdown.trigger();
    }

    pub fn token(user: &str) -> String {
        testing::mint(SECRET, user, None)
    }

    pub fn as_user<T>(msg: T, user: &str) -> Request<T> {
        testing::with_bearer(msg, &Self::token(user))
    }

    pub fn root<T>(msg: T) -> Request<T> {
        Self::as_user(msg, "root")
    }

    pub async fn team(&self, id: &str, parent: &str) -> pb::Team {
        testing::policy::team(&self.client, &Self::token("root"), id, parent)
            .await
            .unwrap()
    }

    /// Creates user `id` in `teams` with `role` bound at `scope`; returns the binding.
    pub async fn user(&self, id: &str, teams: &[&str], role: &str, scope: pb::Scope) -> pb::RoleBinding {
        testing::policy::user(&self.client, &Self::token("root"), id, teams, role, scope)
            .await
            .unwrap()
    }

    /// May `user` do `permission` on the record? Asked by the service account.
    pub async fn check(&self, user: &str, permission: &str, name: &str, owner: &str, team: &str) -> pb::CheckResponse {
        self.client
            .clone()
            .check(Self::as_user(
                pb::CheckRequest {
                    principal: Some(pb::Principal {
                        user_id: user.into(),
                        customer_id: String::new(),
                    }),
                    permission: permission.into(),
                    resource: Some(pb::ResourceRef {
                        name: name.into(),
                        owner_user_id: owner.into(),
                        team_id: team.into(),
                    }),
                },
                "svc",
            ))
            .await
            .unwrap()
            .into_inner()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// The `google.rpc.ErrorInfo` reason of an error.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}

/// The field paths of a `google.rpc.BadRequest`.
pub fn violations(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}
