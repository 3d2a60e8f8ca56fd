//! `TestApp`: the service started in-process with its own database.

use crm_customer_profile::{Config, DEFAULTS};
use crm_platform::{
    Platform,
    config::{PLATFORM_DEFAULTS, section},
    server::{GrpcServer, Shutdown, shutdown_channel},
    testing::{self, TestDatabase},
};
use crm_proto::crm::{
    customer::v1::{self as pb, customer_profile_service_client::CustomerProfileServiceClient},
    permissions::v1::permissions_service_client::PermissionsServiceClient,
};
use tonic::{Request, transport::Channel};

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub client: CustomerProfileServiceClient<Channel>,
    /// The permissions service, hosted in the same server (as `crm serve` does).
    pub permissions: PermissionsServiceClient<Channel>,
    shutdown: Shutdown,
    pub db: TestDatabase,
    /// The Redis cache the service uses, when the tests run against Redis.
    pub redis: Option<crm_platform::config::RedisConfig>,
    _permissions_db: TestDatabase,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A server whose configuration `adjust` changes after the test defaults.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let db = TestDatabase::new("customer-profile").unwrap();
        let value = crm_platform::config::load(&[PLATFORM_DEFAULTS, DEFAULTS, crm_permissions::DEFAULTS], None).unwrap();
        let mut permissions: crm_permissions::ServiceConfig = section(&value, Some("permissions_service")).unwrap();
        permissions.bootstrap_admins = vec!["admin-1".into()];
        permissions.version_poll_ms = 100;
        permissions.expiry_interval_secs = 1;
        let mut cfg = Config {
            platform: section(&value, None).unwrap(),
            customer_profile: section(&value, Some("customer_profile")).unwrap(),
        };
        db.configure(&mut cfg.platform.database);
        testing::configure_platform(&mut cfg.platform, SECRET).await;
        cfg.platform.encryption = testing::encryption();
        cfg.customer_profile.quality.stale_check_interval_secs = 1;
        cfg.customer_profile.quality.stats_flush_secs = 1;
        // Tests read the report right after writing.
        cfg.customer_profile.quality.report_cache_secs = 0;
        cfg.customer_profile.reencrypt_interval_secs = 1;
        adjust(&mut cfg);
        let redis = testing::redis_url().map(|_| cfg.platform.redis.clone());
        let (shutdown, signal) = shutdown_channel();
        let permissions_db = TestDatabase::new("permissions").unwrap();
        let mut permissions_platform = cfg.platform.clone();
        permissions_db.configure(&mut permissions_platform.database);
        let permissions_platform = Platform::new(permissions_platform, signal.clone()).unwrap();
        let platform = Platform::new(cfg.platform, signal.clone()).unwrap();
        let (perms, decisions) = crm_permissions::build(&permissions_platform, &permissions)
            .await
            .expect("permissions must start (is the test database reachable?)");
        let platform = platform.with_policy(crm_permissions::decision_point(&decisions));
        let service = crm_customer_profile::build(&platform, &cfg.customer_profile)
            .await
            .expect("service must start (is the test database reachable?)");
        let mut server = GrpcServer::new(platform.config.server.clone());
        server.add_service(perms).await;
        server
            .add_service(service)
            .await
            .allow_long_running(crm_customer_profile::LONG_RUNNING);
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
            permissions: PermissionsServiceClient::new(channel.clone()),
            client: CustomerProfileServiceClient::new(channel),
            shutdown,
            db,
            redis,
            _permissions_db: permissions_db,
        }
    }

    /// A token for `user`; what it may do is the permissions service's business.
    pub fn token(user: &str) -> String {
        testing::mint(SECRET, user, None)
    }

    /// A self-service token of the customer `name` (`customers/{id}`).
    pub fn customer_token(name: &str) -> String {
        let id = name.trim_start_matches("customers/");
        testing::mint(SECRET, &format!("customer:{id}"), Some(id))
    }

    /// A request carrying an admin token.
    pub fn admin<T>(msg: T) -> Request<T> {
        Self::as_user(msg, &Self::token("admin-1"))
    }

    pub fn as_user<T>(msg: T, token: &str) -> Request<T> {
        testing::with_bearer(msg, token)
    }

    /// Creates `customer` as an admin, without a request_id.
    pub async fn try_create(&self, customer: pb::Customer) -> Result<pb::Customer, tonic::Status> {
        self.client
            .clone()
            .create_customer(Self::admin(pb::CreateCustomerRequest {
                customer: Some(customer),
                request_id: String::new(),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn create(&self, customer: pb::Customer) -> pb::Customer {
        self.try_create(customer).await.unwrap()
    }

    /// Gets a customer as an admin.
    pub async fn get(&self, name: &str) -> pb::Customer {
        self.client
            .clone()
            .get_customer(Self::admin(pb::GetCustomerRequest { name: name.into() }))
            .await
            .unwrap()
            .into_inner()
    }

    /// The first page of customers in the default order, as an admin.
    pub async fn list_first_page(&self) -> Vec<pb::Customer> {
        self.client
            .clone()
            .list_customers(Self::admin(pb::ListCustomersRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .customers
    }

    /// Ingests `customer` from `system` (on `channel`) as an admin.
    pub async fn try_ingest(
        &self,
        system: &str,
        channel: crm_proto::crm::common::v1::Channel,
        external_id: &str,
        customer: pb::Customer,
        source_update_secs: Option<i64>,
    ) -> Result<pb::IngestCustomerResponse, tonic::Status> {
        self.client
            .clone()
            .ingest_customer(Self::admin(pb::IngestCustomerRequest {
                source: Some(pb::Source {
                    system: system.into(),
                    channel: channel as i32,
                }),
                external_id: external_id.into(),
                customer: Some(customer),
                source_update_time: source_update_secs.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Defines (or redefines) the custom attribute `key`.
    pub async fn define(&self, key: &str, def: pb::FieldDefinition) -> Result<pb::FieldDefinition, tonic::Status> {
        self.client
            .clone()
            .update_field_definition(Self::admin(pb::UpdateFieldDefinitionRequest {
                field_definition: Some(pb::FieldDefinition {
                    name: format!("fieldDefinitions/custom_attributes.{key}"),
                    ..def
                }),
                update_mask: None,
                allow_missing: true,
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Defines a free-text custom attribute.
    pub async fn define_text(&self, key: &str) {
        self.define(
            key,
            pb::FieldDefinition {
                display_name: key.into(),
                r#type: pb::FieldType::String as i32,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub fn person(given: &str, family: &str) -> pb::Customer {
    pb::Customer {
        person_name: Some(pb::PersonName {
            given_name: given.into(),
            family_name: family.into(),
            ..Default::default()
        }),
        ..Default::default()
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

/// Policy set-up through the permissions API, as an administrator would.
impl TestApp {
    pub async fn team(&self, id: &str, parent: &str) {
        testing::policy::team(&self.permissions, &Self::token("admin-1"), id, parent)
            .await
            .unwrap();
    }

    /// Creates user `id` in `teams`, binds `role` with `scope`, returns a token.
    pub async fn user(&self, id: &str, teams: &[&str], role: &str, scope: crm_proto::crm::permissions::v1::Scope) -> String {
        testing::policy::user(&self.permissions, &Self::token("admin-1"), id, teams, role, scope)
            .await
            .unwrap();
        Self::token(id)
    }
}
