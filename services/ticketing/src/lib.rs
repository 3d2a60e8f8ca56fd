//! crm-ticketing: tickets from every channel, routed by rules to a queue and assigned to
//! a fitting agent, with SLA clocks on business-hours calendars that escalate on
//! warning and breach; a knowledge base; satisfaction surveys and service reports.
//!
//! `domain` decides and is pure (table-tested): calendar arithmetic, SLA clocks,
//! routing, assignment, escalation and search terms. `service` runs the use cases in
//! transactions; `store` persists; `api` translates gRPC and authorizes.

pub mod api;
pub mod customers;
pub mod domain;
pub mod service;
pub mod store;

use crm_platform::{
    Platform,
    auth::Authenticator,
    authz::ServiceCredentials,
    config::{ConfigError, PLATFORM_DEFAULTS, PlatformConfig, section},
    consumer,
    feed::Feed,
};
use crm_proto::crm::ticketing::v1::{
    self as pb, knowledge_base_service_server::KnowledgeBaseServiceServer, ticketing_service_server::TicketingServiceServer,
};
use prost::Message;
use serde::Deserialize;
use tonic::service::interceptor::InterceptedService;

pub use service::{Settings, Ticketing};

/// Name of the service: binary, database file, schema, event source.
pub const SERVICE: &str = "ticketing";

/// Defaults of this service's own section.
pub const DEFAULTS: &str = r#"
[ticketing]
default_queue = "queues/general"
scheduler_interval_ms = 500
scheduler_batch = 200
scheduler_workers = 4
customer_profile_url = ""
customer_profile_ca_path = ""
tier_attribute = "loyalty_tier"
tier_timeout_ms = 500
"#;

/// `[ticketing]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceConfig {
    /// Where tickets go when no routing rule matches; created on start if missing.
    pub default_queue: String,
    /// How often each scheduler worker looks for due SLA points.
    pub scheduler_interval_ms: u64,
    /// Tickets a worker takes per round.
    pub scheduler_batch: u64,
    /// Scheduler workers per replica on PostgreSQL (SQLite runs one).
    pub scheduler_workers: usize,
    /// customer-profile's gRPC address, for customer tiers and its erasures (whose
    /// tickets are scrubbed); empty: tiers only as callers give them, and no erasure
    /// reaches tickets (`crm serve` points it at itself).
    pub customer_profile_url: String,
    /// PEM CA of an `https://` customer-profile URL.
    pub customer_profile_ca_path: String,
    /// The customer's custom attribute holding the tier.
    pub tier_attribute: String,
    /// A slower tier lookup is given up (the ticket is created without a tier).
    pub tier_timeout_ms: u64,
}

impl ServiceConfig {
    /// The `[ticketing]` section of a loaded document, validated.
    pub fn from_document(doc: &serde_json::Value) -> Result<Self, ConfigError> {
        let cfg: Self = section(doc, Some("ticketing"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let id = self.default_queue.strip_prefix("queues/").unwrap_or("");
        if id.is_empty() || id.contains('/') {
            return Err(ConfigError::invalid("ticketing.default_queue", "must be queues/{queue}"));
        }
        if !(10..=60_000).contains(&self.scheduler_interval_ms) {
            return Err(ConfigError::invalid(
                "ticketing.scheduler_interval_ms",
                "10 to 60000 milliseconds",
            ));
        }
        if !(1..=10_000).contains(&self.scheduler_batch) {
            return Err(ConfigError::invalid("ticketing.scheduler_batch", "1 to 10000"));
        }
        if !(1..=64).contains(&self.scheduler_workers) {
            return Err(ConfigError::invalid("ticketing.scheduler_workers", "1 to 64"));
        }
        crm_platform::config::check_service_url("ticketing.customer_profile_url", &self.customer_profile_url)?;
        let attr = &self.tier_attribute;
        let attr_ok = !attr.is_empty()
            && attr.len() <= 63
            && attr.starts_with(|c: char| c.is_ascii_lowercase())
            && attr.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !attr_ok {
            return Err(ConfigError::invalid(
                "ticketing.tier_attribute",
                "a custom attribute key: [a-z][a-z0-9_]{0,62}",
            ));
        }
        if !(1..=30_000).contains(&self.tier_timeout_ms) {
            return Err(ConfigError::invalid("ticketing.tier_timeout_ms", "1 to 30000 milliseconds"));
        }
        Ok(())
    }

    pub fn settings(&self) -> Settings {
        Settings {
            default_queue: self.default_queue.clone(),
            scheduler_interval: std::time::Duration::from_millis(self.scheduler_interval_ms),
            scheduler_batch: self.scheduler_batch,
            scheduler_workers: self.scheduler_workers,
        }
    }
}

/// Configuration of the standalone `ticketing` binary.
#[derive(Debug, Clone)]
pub struct Config {
    pub platform: PlatformConfig,
    pub ticketing: ServiceConfig,
}

impl Config {
    /// Loads and validates: defaults, then `file`, then `CRM__*` variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let doc = crm_platform::config::load(&[PLATFORM_DEFAULTS, DEFAULTS], file)?;
        Ok(Self {
            platform: PlatformConfig::from_document(&doc)?,
            ticketing: ServiceConfig::from_document(&doc)?,
        })
    }
}

/// Methods exempt from the server's request timeout: they last as long as the
/// client's stream.
pub const LONG_RUNNING: &[&str] = &["/crm.ticketing.v1.TicketingService/StreamEvents"];

/// The gRPC services as served, behind the authenticating interceptor.
pub type Services = (
    InterceptedService<TicketingServiceServer<api::Api>, Authenticator>,
    InterceptedService<KnowledgeBaseServiceServer<api::KnowledgeBase>, Authenticator>,
);

/// Changed fields of a feed event, for the audit trail.
pub fn audited_fields(event: &crm_proto::crm::events::v1::Event) -> Vec<String> {
    match (event.r#type.as_str(), &event.data) {
        ("crm.ticketing.v1.TicketChanged", Some(data)) => pb::TicketChanged::decode(data.value.as_slice())
            .map(|c| c.changed_fields)
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Opens (and migrates, if configured) the database and returns the use cases.
pub async fn open(platform: &Platform, settings: Settings) -> anyhow::Result<Ticketing> {
    let db = platform.database(SERVICE, store::MIGRATIONS).await?;
    let feed = Feed::new(db.clone(), SERVICE, platform.config.feed.clone(), platform.shutdown.clone());
    Ok(Ticketing::new(db, feed, settings))
}

/// Opens the database, makes sure the default queue exists, starts the background
/// jobs (SLA scheduler, feed retention; they stop with the platform's shutdown) and
/// builds the two gRPC services.
pub async fn build(platform: &Platform, cfg: &ServiceConfig) -> anyhow::Result<Services> {
    let ticketing = open(platform, cfg.settings()).await?;
    ticketing.ensure_default_queue(chrono::Utc::now()).await?;
    tokio::spawn(ticketing.feed().clone().run_retention());
    tokio::spawn(ticketing.clone().run_scheduler(platform.shutdown.clone()));
    let authz = platform.authz(SERVICE, ticketing.db(), ticketing.feed(), audited_fields)?;
    let tiers = if cfg.customer_profile_url.is_empty() {
        None
    } else {
        Some(customers::CustomerTiers::connect(
            platform,
            &cfg.customer_profile_url,
            &cfg.customer_profile_ca_path,
            &cfg.tier_attribute,
            std::time::Duration::from_millis(cfg.tier_timeout_ms),
        )?)
    };
    if !cfg.customer_profile_url.is_empty() {
        // Erased customers' tickets are scrubbed as customer-profile announces them.
        let channel = consumer::stream_channel(&cfg.customer_profile_url, &cfg.customer_profile_ca_path)?;
        tokio::spawn(consumer::follow(
            ticketing.db().clone(),
            channel,
            ServiceCredentials::from_config(&platform.config, SERVICE)?,
            consumer::Subscription {
                source: "customer-profile",
                method: "/crm.customer.v1.CustomerProfileService/StreamEvents",
                event_types: vec![service::erasure::CUSTOMER_ERASED.into()],
            },
            std::sync::Arc::new(service::erasure::Erasures),
            platform.shutdown.clone(),
        ));
    }
    let api = api::Api::new(ticketing, authz, platform.page_tokens.clone(), tiers);
    let limit = platform.config.server.max_message_bytes;
    let tickets = TicketingServiceServer::new(api.clone()).max_decoding_message_size(limit);
    let kb = KnowledgeBaseServiceServer::new(api::KnowledgeBase(api)).max_decoding_message_size(limit);
    Ok((
        InterceptedService::new(tickets, platform.authenticator.clone()),
        InterceptedService::new(kb, platform.authenticator.clone()),
    ))
}

/// Applies pending migrations and reports what it did.
pub async fn migrate(platform: &Platform) -> anyhow::Result<Vec<i64>> {
    platform
        .migrate_target(&platform.database_target(SERVICE), store::MIGRATIONS)
        .await
}

/// Runs the service alone until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    crm_platform::context::serve_alone(cfg.platform, async |platform, server| {
        let (tickets, kb) = build(platform, &cfg.ticketing).await?;
        server.add_service(tickets).await.allow_long_running(LONG_RUNNING);
        server.add_service(kb).await;
        Ok(())
    })
    .await
}
