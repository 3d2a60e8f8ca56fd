//! customer-profile: one record per customer, validated and normalised on entry,
//! with an idempotent, optimistic-concurrency API and a change feed.

pub mod api;
pub mod domain;
pub mod events;
pub mod service;
pub mod store;

use crm_platform::{
    Platform,
    auth::Authenticator,
    config::{ConfigError, PLATFORM_DEFAULTS, PlatformConfig, section},
    feed::Feed,
    migrate,
    server::{GrpcServer, Shutdown, bind, os_signal, shutdown_channel},
};
use crm_proto::crm::customer::v1::customer_profile_service_server::CustomerProfileServiceServer;
use serde::Deserialize;
use tonic::service::interceptor::InterceptedService;

use crate::{api::Api, domain::customer::Rules, service::Customers};

/// Name of the service: binary, database file, schema, event source.
pub const SERVICE: &str = "customer-profile";

/// Defaults of this service's own section.
pub const DEFAULTS: &str = r#"
[customer_profile]
default_region = "CN"
"#;

/// `[customer_profile]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceConfig {
    /// Region (ISO 3166 alpha-2) for phone numbers written without a country code.
    pub default_region: String,
}

impl ServiceConfig {
    /// The `[customer_profile]` section of a loaded document, validated.
    pub fn from_document(doc: &serde_json::Value) -> Result<Self, ConfigError> {
        let cfg: Self = section(doc, Some("customer_profile"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let region = &self.default_region;
        if region.len() != 2 || region.parse::<phonenumber::country::Id>().is_err() {
            return Err(ConfigError::invalid(
                "customer_profile.default_region",
                format!("`{region}` is not an ISO 3166 alpha-2 region with a telephone numbering plan"),
            ));
        }
        Ok(())
    }
}

/// Configuration of the standalone `customer-profile` binary.
#[derive(Debug, Clone)]
pub struct Config {
    pub platform: PlatformConfig,
    pub customer_profile: ServiceConfig,
}

impl Config {
    /// Loads and validates: defaults, then `file`, then `CRM__*` variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let doc = crm_platform::config::load(&[PLATFORM_DEFAULTS, DEFAULTS], file)?;
        Ok(Self {
            platform: PlatformConfig::from_document(&doc)?,
            customer_profile: ServiceConfig::from_document(&doc)?,
        })
    }
}

/// The gRPC service as served, behind the authenticating interceptor.
pub type Service = InterceptedService<CustomerProfileServiceServer<Api>, Authenticator>;

/// Opens the database (migrating it if configured), builds the service and starts
/// its background jobs (feed retention), which stop with the platform's shutdown.
pub async fn build(platform: &Platform, cfg: &ServiceConfig) -> anyhow::Result<Service> {
    let db = platform.database(SERVICE, store::MIGRATIONS).await?;
    let feed = Feed::new(db.clone(), SERVICE, platform.config.feed.clone(), platform.shutdown.clone());
    tokio::spawn(feed.clone().run_retention());
    let customers = Customers::new(
        db,
        platform.cache.clone(),
        feed,
        Rules {
            default_region: cfg.default_region.clone(),
        },
    );
    let api = Api::new(customers, platform.authorizer.clone(), platform.page_tokens.clone());
    let server = CustomerProfileServiceServer::new(api).max_decoding_message_size(platform.config.server.max_message_bytes);
    Ok(InterceptedService::new(server, platform.authenticator.clone()))
}

/// Applies pending migrations and reports what it did.
pub async fn migrate(platform: &Platform) -> anyhow::Result<Vec<i64>> {
    let target = platform.database_target(SERVICE);
    let db = crm_platform::db::connect(&target, 2).await?;
    let applied = migrate::run(&db, store::MIGRATIONS).await?;
    Ok(applied)
}

/// Runs the service alone until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let (shutdown, signal) = shutdown_channel();
    let platform = Platform::new(cfg.platform, signal.clone())?;
    let mut server = GrpcServer::new(platform.config.server.clone());
    server.add_service(build(&platform, &cfg.customer_profile).await?).await;
    let listener = bind(platform.config.server.listen).await?;
    tokio::spawn(trigger_on_signal(shutdown));
    server.serve(listener, signal).await
}

async fn trigger_on_signal(shutdown: Shutdown) {
    os_signal().await;
    shutdown.trigger();
}
