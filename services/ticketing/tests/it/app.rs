//! `TestApp`: the ticketing service and the permissions service started in-process
//! on one server (as `crm serve` hosts them), with the seeds' configuration.

use crm_platform::{
    Platform,
    config::{PLATFORM_DEFAULTS, section},
    server::{GrpcServer, Shutdown, shutdown_channel},
    testing::{self, TestDatabase},
};
use crm_proto::crm::{
    permissions::v1::{Scope, permissions_service_client::PermissionsServiceClient},
    ticketing::v1::{
        self as pb, knowledge_base_service_client::KnowledgeBaseServiceClient, ticketing_service_client::TicketingServiceClient,
    },
};
use tonic::{Request, transport::Channel};

use crate::setup;

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

pub struct TestApp {
    pub tickets: TicketingServiceClient<Channel>,
    pub kb: KnowledgeBaseServiceClient<Channel>,
    pub permissions: PermissionsServiceClient<Channel>,
    shutdown: Shutdown,
    pub db: TestDatabase,
    _permissions_db: TestDatabase,
}

impl TestApp {
    /// The service with the seeds' configuration (written through the use cases).
    pub async fn spawn() -> Self {
        let db = TestDatabase::new("ticketing").unwrap();
        let value =
            crm_platform::config::load(&[PLATFORM_DEFAULTS, crm_ticketing::DEFAULTS, crm_permissions::DEFAULTS], None).unwrap();
        let mut permissions: crm_permissions::ServiceConfig = section(&value, Some("permissions_service")).unwrap();
        permissions.bootstrap_admins = vec!["admin-1".into()];
        permissions.version_poll_ms = 100;
        let mut platform_cfg: crm_platform::config::PlatformConfig = section(&value, None).unwrap();
        let mut ticketing: crm_ticketing::ServiceConfig = section(&value, Some("ticketing")).unwrap();
        ticketing.scheduler_interval_ms = 50;
        db.configure(&mut platform_cfg.database);
        testing::configure_platform(&mut platform_cfg, SECRET).await;
        let (shutdown, signal) = shutdown_channel();
        let permissions_db = TestDatabase::new("permissions").unwrap();
        let mut permissions_platform = platform_cfg.clone();
        permissions_db.configure(&mut permissions_platform.database);
        let permissions_platform = Platform::new(permissions_platform, signal.clone()).unwrap();
        let platform = Platform::new(platform_cfg, signal.clone()).unwrap();
        let (perms, decisions) = crm_permissions::build(&permissions_platform, &permissions)
            .await
            .expect("permissions must start (is the test database reachable?)");
        let platform = platform.with_policy(crm_permissions::decision_point(&decisions));
        // The seeds, written as an administrator would, before the API opens.
        let seeding = crm_ticketing::open(&platform, ticketing.settings())
            .await
            .expect("service must open (is the test database reachable?)");
        setup::seed(&seeding).await;
        let (tickets, kb) = crm_ticketing::build(&platform, &ticketing).await.unwrap();
        let mut server = GrpcServer::new(platform.config.server.clone());
        server.add_service(perms).await;
        server
            .add_service(tickets)
            .await
            .allow_long_running(crm_ticketing::LONG_RUNNING);
        server.add_service(kb).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(server.serve(listener, signal));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            tickets: TicketingServiceClient::new(channel.clone()),
            kb: KnowledgeBaseServiceClient::new(channel.clone()),
            permissions: PermissionsServiceClient::new(channel),
            shutdown,
            db,
            _permissions_db: permissions_db,
        }
    }

    pub fn token(user: &str) -> String {
        testing::mint(SECRET, user, None)
    }

    /// A self-service token of customer `id`.
    pub fn customer_token(id: &str) -> String {
        testing::mint(SECRET, &format!("customer:{id}"), Some(id))
    }

    pub fn admin<T>(msg: T) -> Request<T> {
        Self::as_user(msg, &Self::token("admin-1"))
    }

    pub fn as_user<T>(msg: T, token: &str) -> Request<T> {
        testing::with_bearer(msg, token)
    }

    pub async fn team(&self, id: &str) {
        testing::policy::team(&self.permissions, &Self::token("admin-1"), id, "")
            .await
            .unwrap();
    }

    /// Creates user `id` in `teams` with `role` at `scope`; returns its token.
    pub async fn user(&self, id: &str, teams: &[&str], role: &str, scope: Scope) -> String {
        testing::policy::user(&self.permissions, &Self::token("admin-1"), id, teams, role, scope)
            .await
            .unwrap();
        Self::token(id)
    }

    /// Creates a ticket as `token`'s holder.
    pub async fn create_as(&self, token: &str, ticket: pb::Ticket, request_id: &str) -> Result<pb::Ticket, tonic::Status> {
        self.tickets
            .clone()
            .create_ticket(Self::as_user(
                pb::CreateTicketRequest {
                    ticket: Some(ticket),
                    request_id: request_id.into(),
                },
                token,
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn create(&self, ticket: pb::Ticket) -> pb::Ticket {
        self.create_as(&Self::token("admin-1"), ticket, "").await.unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Field paths of the BadRequest violations in `status`.
pub fn violations(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}
