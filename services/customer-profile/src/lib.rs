//! customer-profile: one record per customer, validated and normalised on entry,
//! with an idempotent, optimistic-concurrency API and a change feed.

pub mod api;
pub mod domain;
pub mod enrichment;
pub mod events;
pub mod sections;
pub mod service;
pub mod store;

use crm_platform::{
    Platform,
    auth::Authenticator,
    config::{ConfigError, PLATFORM_DEFAULTS, PlatformConfig, section},
    crypto::Keyring,
    feed::Feed,
};
use crm_proto::crm::customer::v1::customer_profile_service_server::CustomerProfileServiceServer;
use serde::Deserialize;
use tonic::service::interceptor::InterceptedService;

use crate::{
    api::Api,
    domain::{combine::SourcePriority, customer::Rules},
    service::{Customers, Settings},
};

/// Name of the service: binary, database file, schema, event source.
pub const SERVICE: &str = "customer-profile";

/// Defaults of this service's own section.
pub const DEFAULTS: &str = r#"
[customer_profile]
default_region = "CN"
definitions_refresh_ms = 2000
reencrypt_interval_secs = 60
key_store_url = ""

[customer_profile.quality]
completeness_target = 0.95
duplicate_rate_target = 0.03
entry_error_rate_target = 0.02
freshness_target = 0.90
self_service_target = 0.85
freshness_days = 365
entry_window_days = 30
stale_check_interval_secs = 3600
stats_flush_secs = 10
metrics_interval_secs = 900
report_cache_secs = 60

[customer_profile.activity]
unknown_customer = "reject"

[customer_profile.retention]
interactions_days = 730
closed_leads_days = 730
erased_tombstones_days = 1825
interval_secs = 3600

[customer_profile.sections]
ticketing_url = ""
ticketing_ca_path = ""
segmentation_url = ""
segmentation_ca_path = ""
analytics_url = ""
analytics_ca_path = ""
deadline_ms = 300
behaviour_window_days = 90

[customer_profile.enrichment]
url = ""
bearer_token = ""
timeout_ms = 2000
interval_secs = 10
batch = 50
max_attempts = 8
retry_base_ms = 30000
retry_max_ms = 21600000
industry_attribute = "industry"
employee_count_attribute = "employee_count"

[customer_profile.ingest]
source_priority = ["api", "erp", "store", "service_desk", "ecommerce", "app", "web", "wechat", "phone", "email", "import"]

[customer_profile.matching]
review_threshold = 0.80
auto_merge_threshold = 0.98
prior = 0.001
max_candidates_per_key = 10
unmerge_window_days = 30
given_name = { m = [0.88, 0.08, 0.04], u = [0.02, 0.05, 0.93] }
family_name = { m = [0.88, 0.08, 0.04], u = [0.01, 0.04, 0.95] }
organization_name = { m = [0.90, 0.07, 0.03], u = [0.005, 0.02, 0.975] }
phone = { m = [0.85, 0.05, 0.10], u = [0.0001, 0.001, 0.9989] }
email = { m = [0.80, 0.05, 0.15], u = [0.0001, 0.001, 0.9989] }
national_id = { m = [0.90, 0.06, 0.04], u = [0.0001, 0.0005, 0.9994] }
birth_date = { m = [0.85, 0.10, 0.05], u = [0.0003, 0.01, 0.9897] }
address = { m = [0.80, 0.12, 0.08], u = [0.001, 0.01, 0.989] }
postal_code = { m = [0.88, 0.06, 0.06], u = [0.01, 0.05, 0.94] }
locality = { m = [0.88, 0.07, 0.05], u = [0.02, 0.05, 0.93] }
"#;

/// `[customer_profile.ingest]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct IngestConfig {
    /// Channels from most to least trusted when sources disagree; unlisted channels
    /// rank last.
    pub source_priority: Vec<domain::customer::Channel>,
}

/// `[customer_profile.sections]`: the 360 view's sections owned by other services.
#[derive(Debug, Clone, Deserialize)]
pub struct SectionsConfig {
    /// The ticketing service, for open tickets; empty: that part is unavailable
    /// (`crm serve` points it at itself).
    pub ticketing_url: String,
    /// PEM CA of an `https://` ticketing URL.
    pub ticketing_ca_path: String,
    /// marketing-segmentation, for RFM scores and segments in the analysis section;
    /// empty: that part is unavailable (`crm serve` points it at itself).
    pub segmentation_url: String,
    /// PEM CA of an `https://` segmentation URL.
    pub segmentation_ca_path: String,
    /// analytics, for churn risk and lifetime value in the analysis section; empty:
    /// that part is unavailable (`crm serve` points it at itself).
    pub analytics_url: String,
    /// PEM CA of an `https://` analytics URL.
    pub analytics_ca_path: String,
    /// How long the 360 call waits for another service.
    pub deadline_ms: u64,
    /// The behaviour summary's window.
    pub behaviour_window_days: i32,
}

/// `[customer_profile.activity]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct ActivityConfig {
    /// `reject` or `create_lead`: an order or interaction whose customer external id
    /// is unknown.
    pub unknown_customer: service::activity::UnknownCustomer,
}

/// `[customer_profile]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceConfig {
    /// Region (ISO 3166 alpha-2) for phone numbers written without a country code.
    pub default_region: String,
    /// How long a replica uses its copy of the field definitions before reloading.
    pub definitions_refresh_ms: u64,
    /// How often rows sealed with a retired key are looked for and re-sealed.
    pub reencrypt_interval_secs: u64,
    /// Where the customers' data keys live, apart from the data and its backups:
    /// empty puts them beside the service's database (`customer-profile-keys.db`, or
    /// the schema `<schema>_keys`); else a database URL of its own.
    pub key_store_url: String,
    pub ingest: IngestConfig,
    pub activity: ActivityConfig,
    pub sections: SectionsConfig,
    /// Retention periods per data class and the purge job.
    pub retention: service::retention::RetentionConfig,
    /// Duplicate detection: thresholds and the Fellegi-Sunter m/u tables.
    pub matching: domain::matching::MatchConfig,
    /// Data-quality targets and the stale-profile job.
    pub quality: service::quality::QualityConfig,
    /// Firmographic enrichment of organisations by an HTTP endpoint.
    pub enrichment: service::enrichment::EnrichmentConfig,
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
        if let Err((key, message)) = self.matching.validate() {
            return Err(ConfigError::invalid(format!("customer_profile.matching.{key}"), message));
        }
        for (key, url) in [
            ("ticketing_url", &self.sections.ticketing_url),
            ("segmentation_url", &self.sections.segmentation_url),
            ("analytics_url", &self.sections.analytics_url),
        ] {
            crm_platform::config::check_service_url(&format!("customer_profile.sections.{key}"), url)?;
        }
        if self.retention.interval_secs == 0 {
            return Err(ConfigError::invalid("customer_profile.retention.interval_secs", "at least 1"));
        }
        if !(1..=60_000).contains(&self.sections.deadline_ms) {
            return Err(ConfigError::invalid("customer_profile.sections.deadline_ms", "1 to 60000"));
        }
        if !(1..=3650).contains(&self.sections.behaviour_window_days) {
            return Err(ConfigError::invalid(
                "customer_profile.sections.behaviour_window_days",
                "1 to 3650",
            ));
        }
        if let Err((key, message)) = self.quality.validate() {
            return Err(ConfigError::invalid(format!("customer_profile.quality.{key}"), message));
        }
        if let Err((key, message)) = self.enrichment.validate() {
            return Err(ConfigError::invalid(format!("customer_profile.enrichment.{key}"), message));
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

/// Methods exempt from the server's request timeout: they last as long as the
/// client's stream.
pub const LONG_RUNNING: &[&str] = &[
    "/crm.customer.v1.CustomerProfileService/ImportCustomers",
    "/crm.customer.v1.CustomerProfileService/RecordInteractions",
    "/crm.customer.v1.CustomerProfileService/DownloadExport",
];

/// The gRPC service as served, behind the authenticating interceptor.
pub type Service = InterceptedService<CustomerProfileServiceServer<Api>, Authenticator>;

/// Opens the database (migrating it if configured), builds the service and starts
/// its background jobs (feed retention, enrichment when configured), which stop with
/// the platform's shutdown.
pub async fn build(platform: &Platform, cfg: &ServiceConfig) -> anyhow::Result<Service> {
    let keyring = std::sync::Arc::new(Keyring::from_config(&platform.config.encryption)?);
    let db = platform.database(SERVICE, store::MIGRATIONS).await?;
    let key_db = platform
        .open(SERVICE, key_store_target(platform, cfg), store::keys::KEY_MIGRATIONS)
        .await?;
    let feed = Feed::new(db.clone(), SERVICE, platform.config.feed.clone(), platform.shutdown.clone())
        .with_keyring(keyring.clone())
        .with_audit_hold();
    tokio::spawn(feed.clone().run_retention());
    let authz = platform.authz(SERVICE, &db, &feed, events::audited_fields)?;
    let keys = store::DataKeys::new(key_db, keyring.clone());
    let customers = Customers::new(db, platform.cache.clone(), feed, keyring, keys, settings(cfg));
    // Erasures the data does not show yet (a crash mid-erasure, or a backup restored
    // from before them) are finished before anything is served.
    customers.finish_erasures().await?;
    tokio::spawn(customers.clone().run_jobs(platform.shutdown.clone()));
    customers.prepare_partitions().await?;
    tokio::spawn(customers.clone().run_partition_upkeep(platform.shutdown.clone()));
    tokio::spawn(customers.clone().run_retention(platform.shutdown.clone()));
    if cfg.enrichment.enabled() {
        let endpoint = enrichment::Endpoint::new(
            &cfg.enrichment.url,
            std::time::Duration::from_millis(cfg.enrichment.timeout_ms),
            &cfg.enrichment.bearer_token,
        )
        .map_err(|why| anyhow::anyhow!("customer_profile.enrichment.url: {why}"))?;
        tokio::spawn(customers.clone().run_enrichment(endpoint, platform.shutdown.clone()));
    }
    let sections = sections::Sections::connect(platform, &cfg.sections)?;
    // Exports a restart interrupted are assembled again.
    for job in customers.unfinished_exports().await? {
        tokio::spawn(sections::run_export(customers.clone(), sections.clone(), authz.clone(), job));
    }
    let api = Api::new(
        customers,
        authz,
        platform.page_tokens.clone(),
        sections,
        cfg.sections.behaviour_window_days,
    );
    let server = CustomerProfileServiceServer::new(api).max_decoding_message_size(platform.config.server.max_message_bytes);
    Ok(InterceptedService::new(server, platform.authenticator.clone()))
}

/// The use cases' settings from the service configuration.
pub fn settings(cfg: &ServiceConfig) -> Settings {
    Settings {
        rules: Rules {
            default_region: cfg.default_region.clone(),
        },
        matching: cfg.matching.clone(),
        priority: SourcePriority(cfg.ingest.source_priority.clone()),
        definitions_refresh: std::time::Duration::from_millis(cfg.definitions_refresh_ms),
        quality: cfg.quality.clone(),
        reencrypt_interval: std::time::Duration::from_secs(cfg.reencrypt_interval_secs.max(1)),
        unknown_customer: cfg.activity.unknown_customer,
        retention: cfg.retention,
        enrichment: cfg.enrichment.clone(),
    }
}

/// Where the data keys live (`customer_profile.key_store_url`).
pub fn key_store_target(platform: &Platform, cfg: &ServiceConfig) -> crm_platform::db::Target {
    if cfg.key_store_url.is_empty() {
        return platform.database_target(SERVICE).companion("keys");
    }
    let own = crm_platform::config::DatabaseConfig {
        url: cfg.key_store_url.clone(),
        schema: String::new(),
        ..platform.config.database.clone()
    };
    crm_platform::db::Target::resolve(&own, "customer-profile-keys")
}

/// Applies pending migrations of the database and of the key store, and reports
/// the database's.
pub async fn migrate(platform: &Platform, cfg: &ServiceConfig) -> anyhow::Result<Vec<i64>> {
    platform
        .migrate_target(&key_store_target(platform, cfg), store::keys::KEY_MIGRATIONS)
        .await?;
    platform
        .migrate_target(&platform.database_target(SERVICE), store::MIGRATIONS)
        .await
}

/// Runs the service alone until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    crm_platform::context::serve_alone(cfg.platform, async |platform, server| {
        server
            .add_service(build(platform, &cfg.customer_profile).await?)
            .await
            .allow_long_running(LONG_RUNNING);
        Ok(())
    })
    .await
}
