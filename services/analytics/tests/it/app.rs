//! `TestApp`: permissions, customer-profile, ticketing and analytics on one server.

use crm_platform::{
    Platform,
    config::{PLATFORM_DEFAULTS, section},
    server::{GrpcServer, Shutdown, shutdown_channel},
    testing::{self, TestDatabase},
};
use crm_proto::crm::{
    analytics::v1::{self as pb, analytics_service_client::AnalyticsServiceClient},
    customer::v1::{self as cpb, customer_profile_service_client::CustomerProfileServiceClient},
    permissions::v1::permissions_service_client::PermissionsServiceClient,
    ticketing::v1::ticketing_service_client::TicketingServiceClient,
};
use tonic::{Request, transport::Channel};

pub const SECRET: &str = "analytics-test-secret-0123456789abcdef";

pub struct TestApp {
    pub permissions: PermissionsServiceClient<Channel>,
    pub customers: CustomerProfileServiceClient<Channel>,
    pub tickets: TicketingServiceClient<Channel>,
    pub analytics: AnalyticsServiceClient<Channel>,
    /// The service's handle (a data-quality snapshot on demand).
    pub api: crm_analytics::api::Api,
    shutdown: Shutdown,
    pub db: TestDatabase,
    _others: Vec<TestDatabase>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        let value = crm_platform::config::load(
            &[
                PLATFORM_DEFAULTS,
                crm_permissions::DEFAULTS,
                crm_customer_profile::DEFAULTS,
                crm_ticketing::DEFAULTS,
                crm_analytics::DEFAULTS,
            ],
            None,
        )
        .unwrap();
        let mut platform_cfg: crm_platform::config::PlatformConfig = section(&value, None).unwrap();
        testing::configure_platform(&mut platform_cfg, SECRET).await;
        platform_cfg.encryption = testing::encryption();
        // Four services per test and several tests at once: small pools keep within
        // PostgreSQL's connection limit.
        platform_cfg.database.max_connections = 4;
        let mut permissions: crm_permissions::ServiceConfig = section(&value, Some("permissions_service")).unwrap();
        permissions.bootstrap_admins = vec!["admin-1".into()];
        permissions.service_accounts = vec![crm_analytics::SERVICE.into(), "ticketing".into()];
        permissions.version_poll_ms = 100;
        let customers_cfg: crm_customer_profile::ServiceConfig = section(&value, Some("customer_profile")).unwrap();
        let mut ticketing: crm_ticketing::ServiceConfig = section(&value, Some("ticketing")).unwrap();
        let mut analytics: crm_analytics::ServiceConfig = section(&value, Some("analytics")).unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let own = format!("http://{addr}");
        ticketing.customer_profile_url.clone_from(&own);
        analytics.customer_profile_url.clone_from(&own);
        analytics.ticketing_url = own;
        // Fits and snapshots run when the tests ask (the schedule's first run at start
        // finds nothing to fit).
        analytics.schedule_check_secs = 3600;
        analytics.rules.min_support = 0.15;
        analytics.rules.min_confidence = 0.5;

        let (shutdown, signal) = shutdown_channel();
        let open = |service: &str| {
            let db = TestDatabase::new(service).unwrap();
            let mut cfg = platform_cfg.clone();
            db.configure(&mut cfg.database);
            (db, Platform::new(cfg, signal.clone()).unwrap())
        };
        let (permissions_db, permissions_platform) = open("permissions");
        let (customers_db, customers_platform) = open("customer-profile");
        let (ticketing_db, ticketing_platform) = open("ticketing");
        let (db, platform) = open("analytics");
        let (perms, decisions) = crm_permissions::build(&permissions_platform, &permissions)
            .await
            .expect("permissions must start (is the test database reachable?)");
        let policy = crm_permissions::decision_point(&decisions);
        let customer_service = crm_customer_profile::build(&customers_platform.with_policy(policy.clone()), &customers_cfg)
            .await
            .expect("customer-profile must start");
        let (tickets, kb) = crm_ticketing::build(&ticketing_platform.with_policy(policy.clone()), &ticketing)
            .await
            .expect("ticketing must start");
        let built = crm_analytics::build(&platform.with_policy(policy), &analytics)
            .await
            .expect("analytics must start");
        let mut server = GrpcServer::new(permissions_platform.config.server.clone());
        server.add_service(perms).await;
        server
            .add_service(customer_service)
            .await
            .allow_long_running(crm_customer_profile::LONG_RUNNING);
        server
            .add_service(tickets)
            .await
            .allow_long_running(crm_ticketing::LONG_RUNNING);
        server.add_service(kb).await;
        server
            .add_service(built.service)
            .await
            .allow_long_running(crm_analytics::LONG_RUNNING);
        tokio::spawn(server.serve(listener, signal));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            permissions: PermissionsServiceClient::new(channel.clone()),
            customers: CustomerProfileServiceClient::new(channel.clone()),
            tickets: TicketingServiceClient::new(channel.clone()),
            analytics: AnalyticsServiceClient::new(channel),
            api: built.api,
            shutdown,
            db,
            _others: vec![customers_db, permissions_db, ticketing_db],
        }
    }

    pub fn token(user: &str) -> String {
        testing::mint(SECRET, user, None)
    }

    pub fn admin<T>(msg: T) -> Request<T> {
        Self::as_user(msg, &Self::token("admin-1"))
    }

    pub fn as_user<T>(msg: T, token: &str) -> Request<T> {
        testing::with_bearer(msg, token)
    }

    /// Creates a person customer at `stage`; returns its name.
    pub async fn customer(&self, given: &str, stage: cpb::LifecycleStage, channel: i32) -> String {
        self.customer_of_team(given, stage, channel, "").await
    }

    /// [`TestApp::customer`], owned by team `team` (empty: none).
    pub async fn customer_of_team(&self, given: &str, stage: cpb::LifecycleStage, channel: i32, team: &str) -> String {
        self.customers
            .clone()
            .create_customer(Self::admin(cpb::CreateCustomerRequest {
                customer: Some(cpb::Customer {
                    person_name: Some(cpb::PersonName {
                        given_name: given.into(),
                        family_name: "Wang".into(),
                        ..Default::default()
                    }),
                    lifecycle_stage: stage as i32,
                    source_channel: channel,
                    team_id: team.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            }))
            .await
            .unwrap()
            .into_inner()
            .name
    }

    /// A completed order in CNY placed `days_ago`, with lines `(sku, category)`.
    pub async fn order(&self, customer: &str, id: &str, days_ago: i64, total_micros: i64, lines: &[(&str, &str)]) {
        self.customers
            .clone()
            .upsert_order(Self::admin(cpb::UpsertOrderRequest {
                customer: Some(cpb::CustomerReference {
                    reference: Some(cpb::customer_reference::Reference::Customer(customer.into())),
                }),
                order: Some(cpb::Order {
                    source: "shop".into(),
                    external_id: id.into(),
                    status: cpb::OrderStatus::Completed as i32,
                    currency: "CNY".into(),
                    total_micros,
                    lines: lines
                        .iter()
                        .map(|(sku, category)| cpb::OrderLine {
                            sku: (*sku).into(),
                            product_name: (*sku).into(),
                            category: (*category).into(),
                            quantity: 1,
                            unit_price_micros: total_micros / lines.len().max(1) as i64,
                        })
                        .collect(),
                    place_time: Some(prost_types::Timestamp {
                        seconds: chrono::Utc::now().timestamp() - days_ago * 86_400,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap();
    }

    /// Waits until the projection has applied at least `events` from `source`.
    pub async fn caught_up(&self, source: &str, events: i64) {
        eventually(&format!("{source}: {events} events applied"), 30, async || {
            let status = self
                .analytics
                .clone()
                .get_projection_status(Self::admin(pb::GetProjectionStatusRequest {}))
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            let s = status
                .sources
                .iter()
                .find(|s| s.source == source)
                .cloned()
                .unwrap_or_default();
            if s.applied >= events { Ok(()) } else { Err(format!("{s:?}")) }
        })
        .await;
    }
}

pub use crm_platform::testing::eventually;

/// A timestamp `days` from now (negative: ago).
pub fn days_from_now(days: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + days * 86_400,
        nanos: 0,
    })
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}
