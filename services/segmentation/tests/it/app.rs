//! `TestApp`: permissions, customer-profile and marketing-segmentation on one server,
//! segmentation following customer-profile's feed through the server's own address.

use crm_platform::{
    Platform,
    config::{PLATFORM_DEFAULTS, section},
    server::{GrpcServer, Shutdown, shutdown_channel},
    testing::{self, TestDatabase},
};
use crm_proto::crm::{
    customer::v1::{self as cpb, customer_profile_service_client::CustomerProfileServiceClient},
    permissions::v1::permissions_service_client::PermissionsServiceClient,
    segmentation::v1::{
        self as pb, campaign_service_client::CampaignServiceClient, journey_service_client::JourneyServiceClient,
        segmentation_service_client::SegmentationServiceClient,
    },
};
use tonic::{Request, transport::Channel};

pub const SECRET: &str = "segmentation-test-secret-0123456789abcdef";

/// The tracking links' HMAC key.
pub const LINK_SECRET: &str = "segmentation-test-link-secret";

pub struct TestApp {
    pub permissions: PermissionsServiceClient<Channel>,
    pub customers: CustomerProfileServiceClient<Channel>,
    pub segmentation: SegmentationServiceClient<Channel>,
    pub campaigns: CampaignServiceClient<Channel>,
    pub journeys: JourneyServiceClient<Channel>,
    /// The tracking endpoint, `http://host:port`.
    pub tracking: String,
    pub smtp: crate::stubs::SmtpSink,
    /// The SMS and push provider (paths `/sms`, `/push`); WeChat is not configured.
    pub provider: crate::stubs::HttpStub,
    provider_port: u16,
    shutdown: Shutdown,
    pub db: TestDatabase,
    _customers_db: TestDatabase,
    _permissions_db: TestDatabase,
}

impl TestApp {
    pub async fn spawn() -> Self {
        let value = crm_platform::config::load(
            &[
                PLATFORM_DEFAULTS,
                crm_permissions::DEFAULTS,
                crm_customer_profile::DEFAULTS,
                crm_segmentation::DEFAULTS,
            ],
            None,
        )
        .unwrap();
        let mut platform_cfg: crm_platform::config::PlatformConfig = section(&value, None).unwrap();
        testing::configure_platform(&mut platform_cfg, SECRET).await;
        platform_cfg.encryption = testing::encryption();
        let mut permissions: crm_permissions::ServiceConfig = section(&value, Some("permissions_service")).unwrap();
        permissions.bootstrap_admins = vec!["admin-1".into()];
        permissions.service_accounts = vec![crm_segmentation::SERVICE.into()];
        permissions.campaign_senders = vec![crm_segmentation::SERVICE.into()];
        permissions.version_poll_ms = 100;
        let customers_cfg: crm_customer_profile::ServiceConfig = section(&value, Some("customer_profile")).unwrap();
        let mut segmentation: crm_segmentation::ServiceConfig = section(&value, Some("segmentation")).unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        segmentation.customer_profile_url = format!("http://{addr}");
        segmentation.tag_expiry_interval_secs = 1;
        segmentation.rfm.recompute_interval_secs = 3600;
        segmentation.rfm.drift_check_secs = 1;
        segmentation.segments.poll_interval_ms = 100;
        segmentation.campaigns.poll_interval_ms = 50;
        segmentation.campaigns.retry_base_secs = 1;
        segmentation.tracking.listen = "127.0.0.1:0".into();
        segmentation.tracking.secret = LINK_SECRET.into();
        let (smtp, smtp_port) = crate::stubs::SmtpSink::start().await;
        let (provider, provider_port) = crate::stubs::HttpStub::start().await;
        segmentation.channels.email.url = format!("smtp://127.0.0.1:{smtp_port}");
        segmentation.channels.email.from = "Shop <news@shop.example>".into();
        segmentation.channels.sms.url = format!("http://127.0.0.1:{provider_port}/sms");
        segmentation.channels.push.url = format!("http://127.0.0.1:{provider_port}/push");

        let (shutdown, signal) = shutdown_channel();
        let open = |service: &str| {
            let db = TestDatabase::new(service).unwrap();
            let mut cfg = platform_cfg.clone();
            db.configure(&mut cfg.database);
            (db, Platform::new(cfg, signal.clone()).unwrap())
        };
        let (permissions_db, permissions_platform) = open("permissions");
        let (customers_db, customers_platform) = open("customer-profile");
        let (db, platform) = open("marketing-segmentation");
        let (perms, decisions) = crm_permissions::build(&permissions_platform, &permissions)
            .await
            .expect("permissions must start (is the test database reachable?)");
        let policy = crm_permissions::decision_point(&decisions);
        let customer_service = crm_customer_profile::build(&customers_platform.with_policy(policy.clone()), &customers_cfg)
            .await
            .expect("customer-profile must start");
        let built = crm_segmentation::build(&platform.with_policy(policy), &segmentation)
            .await
            .expect("segmentation must start");
        let tracking = format!("http://{}", built.tracking.expect("the tracking endpoint listens"));
        let mut server = GrpcServer::new(permissions_platform.config.server.clone());
        server.add_service(perms).await;
        server
            .add_service(customer_service)
            .await
            .allow_long_running(crm_customer_profile::LONG_RUNNING);
        server
            .add_service(built.segmentation)
            .await
            .allow_long_running(crm_segmentation::LONG_RUNNING);
        server.add_service(built.campaigns).await;
        server.add_service(built.journeys).await;
        tokio::spawn(server.serve(listener, signal));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            permissions: PermissionsServiceClient::new(channel.clone()),
            customers: CustomerProfileServiceClient::new(channel.clone()),
            segmentation: SegmentationServiceClient::new(channel.clone()),
            campaigns: CampaignServiceClient::new(channel.clone()),
            journeys: JourneyServiceClient::new(channel),
            tracking,
            smtp,
            provider,
            provider_port,
            shutdown,
            db,
            _customers_db: customers_db,
            _permissions_db: permissions_db,
        }
    }

    /// The HTTP provider stub's address, `http://127.0.0.1:port`.
    pub fn provider_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.provider_port)
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

    pub async fn status(&self) -> pb::ProjectionStatus {
        self.segmentation
            .clone()
            .get_projection_status(Self::admin(pb::GetProjectionStatusRequest {}))
            .await
            .unwrap()
            .into_inner()
    }
}

pub use crm_platform::testing::eventually;

/// A reference to a customer by name.
pub fn reference(name: &str) -> Option<cpb::CustomerReference> {
    Some(cpb::CustomerReference {
        reference: Some(cpb::customer_reference::Reference::Customer(name.into())),
    })
}

impl TestApp {
    /// Creates a person customer in customer-profile; returns its name.
    pub async fn customer(&self, given: &str) -> String {
        self.customers
            .clone()
            .create_customer(Self::admin(cpb::CreateCustomerRequest {
                customer: Some(cpb::Customer {
                    person_name: Some(cpb::PersonName {
                        given_name: given.into(),
                        family_name: "Li".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                request_id: String::new(),
            }))
            .await
            .unwrap()
            .into_inner()
            .name
    }

    /// Creates a tag (under `parent`, `tags/{id}`, when not empty).
    pub async fn tag(&self, id: &str, parent: &str, display: &str) -> Result<pb::Tag, tonic::Status> {
        self.segmentation
            .clone()
            .create_tag(Self::admin(pb::CreateTagRequest {
                tag: Some(pb::Tag {
                    parent: parent.into(),
                    display_name: display.into(),
                    ..Default::default()
                }),
                tag_id: id.into(),
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    /// A completed order in CNY, placed `seconds_ago`.
    pub async fn order(&self, customer: &str, id: &str, seconds_ago: i64, total_micros: i64) {
        self.customers
            .clone()
            .upsert_order(Self::admin(cpb::UpsertOrderRequest {
                customer: reference(customer),
                order: Some(cpb::Order {
                    source: "shop".into(),
                    external_id: id.into(),
                    status: cpb::OrderStatus::Completed as i32,
                    currency: "CNY".into(),
                    total_micros,
                    place_time: Some(prost_types::Timestamp {
                        seconds: chrono::Utc::now().timestamp() - seconds_ago,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}
