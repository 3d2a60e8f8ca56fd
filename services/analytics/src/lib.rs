//! analytics: reports, lifetime-value and churn models, and cross-sell rules over
//! this service's own projection of the other services' change feeds
//! (customer-profile, ticketing, marketing-segmentation).

pub mod api;
pub mod clv;
pub mod metrics;
pub mod models;
pub mod projection;
pub mod quality;
pub mod recommend;
pub mod reports;
pub mod rules;
pub mod store;

use std::{sync::Arc, time::Duration};

use crm_platform::{
    Platform,
    auth::Authenticator,
    authz::ServiceCredentials,
    config::{ConfigError, PLATFORM_DEFAULTS, PlatformConfig, section},
    consumer,
    feed::Feed,
};
use crm_proto::crm::analytics::v1::analytics_service_server::AnalyticsServiceServer;
use serde::Deserialize;
use tonic::service::interceptor::InterceptedService;

/// Name of the service: binary, database file, schema, event source.
pub const SERVICE: &str = "analytics";

/// Defaults of this service's own section.
pub const DEFAULTS: &str = r#"
[analytics]
customer_profile_url = ""
customer_profile_ca_path = ""
ticketing_url = ""
ticketing_ca_path = ""
segmentation_url = ""
segmentation_ca_path = ""
schedule_check_secs = 60

[analytics.clv]
currency = "CNY"
refit_interval_hours = 24
horizon_days = 90
clv_periods = 12
period_days = 30.0
discount_rate = 0.01
recent_days = 90
baseline_days = 360
min_baseline_orders = 2
risk_threshold = 0.5

[analytics.rules]
refit_interval_hours = 24
window_days = 365
min_support = 0.01
min_confidence = 0.3
min_lift = 1.0
max_len = 3
max_rules = 10000
"#;

/// `[analytics]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceConfig {
    /// customer-profile's gRPC address (customers, orders; the data-quality report).
    /// Required.
    pub customer_profile_url: String,
    pub customer_profile_ca_path: String,
    /// ticketing's address (tickets, SLA outcomes, ratings); empty: not followed.
    pub ticketing_url: String,
    pub ticketing_ca_path: String,
    /// marketing-segmentation's address (campaign touches); empty: not followed.
    pub segmentation_url: String,
    pub segmentation_ca_path: String,
    /// How often scheduled work (fits, the daily snapshot) is checked for being due.
    pub schedule_check_secs: u64,
    pub clv: models::ClvConfig,
    pub rules: models::RulesConfig,
}

impl ServiceConfig {
    /// The `[analytics]` section of a loaded document, validated.
    pub fn from_document(doc: &serde_json::Value) -> Result<Self, ConfigError> {
        let cfg: Self = section(doc, Some("analytics"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [
            ("customer_profile_url", &self.customer_profile_url),
            ("ticketing_url", &self.ticketing_url),
            ("segmentation_url", &self.segmentation_url),
        ] {
            crm_platform::config::check_service_url(&format!("analytics.{key}"), url)?;
        }
        if self.schedule_check_secs == 0 {
            return Err(ConfigError::invalid("analytics.schedule_check_secs", "at least 1"));
        }
        let c = &self.clv;
        if c.currency.len() != 3 || !c.currency.chars().all(|ch| ch.is_ascii_uppercase()) {
            return Err(ConfigError::invalid("analytics.clv.currency", "an ISO 4217 code such as CNY"));
        }
        for (key, v) in [
            ("clv.refit_interval_hours", c.refit_interval_hours),
            ("rules.refit_interval_hours", self.rules.refit_interval_hours),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(format!("analytics.{key}"), "at least 1"));
            }
        }
        for (key, v) in [
            ("clv.horizon_days", c.horizon_days),
            ("clv.clv_periods", c.clv_periods),
            ("clv.recent_days", c.recent_days),
            ("clv.baseline_days", c.baseline_days),
            ("rules.window_days", self.rules.window_days),
        ] {
            if !(1..=3650).contains(&v) {
                return Err(ConfigError::invalid(format!("analytics.{key}"), "1 to 3650"));
            }
        }
        if !(c.period_days > 0.0 && c.period_days <= 366.0) {
            return Err(ConfigError::invalid("analytics.clv.period_days", "more than 0, at most 366"));
        }
        if !(0.0..1.0).contains(&c.discount_rate) {
            return Err(ConfigError::invalid("analytics.clv.discount_rate", "0 or more, below 1"));
        }
        if !(c.risk_threshold > 0.0 && c.risk_threshold <= 1.0) {
            return Err(ConfigError::invalid("analytics.clv.risk_threshold", "more than 0, at most 1"));
        }
        let r = &self.rules;
        if !(r.min_support > 0.0 && r.min_support <= 1.0) {
            return Err(ConfigError::invalid("analytics.rules.min_support", "more than 0, at most 1"));
        }
        if !(0.0..=1.0).contains(&r.min_confidence) {
            return Err(ConfigError::invalid("analytics.rules.min_confidence", "0 to 1"));
        }
        if !(r.min_lift >= 0.0 && r.min_lift.is_finite()) {
            return Err(ConfigError::invalid("analytics.rules.min_lift", "0 or more"));
        }
        if !(2..=8).contains(&r.max_len) {
            return Err(ConfigError::invalid("analytics.rules.max_len", "2 to 8"));
        }
        if !(1..=crate::models::MAX_RULES).contains(&(r.max_rules as u64)) {
            return Err(ConfigError::invalid("analytics.rules.max_rules", "1 to 1000000"));
        }
        Ok(())
    }
}

/// Configuration of the standalone `analytics` binary.
#[derive(Debug, Clone)]
pub struct Config {
    pub platform: PlatformConfig,
    pub analytics: ServiceConfig,
}

impl Config {
    /// Loads and validates: defaults, then `file`, then `CRM__*` variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let doc = crm_platform::config::load(&[PLATFORM_DEFAULTS, DEFAULTS], file)?;
        Ok(Self {
            platform: PlatformConfig::from_document(&doc)?,
            analytics: ServiceConfig::from_document(&doc)?,
        })
    }
}

/// Methods exempt from the server's request timeout: they last as long as the
/// client's stream; refits may take longer than a request.
pub const LONG_RUNNING: &[&str] = &[
    "/crm.analytics.v1.AnalyticsService/StreamEvents",
    "/crm.analytics.v1.AnalyticsService/RefitModel",
];

/// The gRPC service as served, behind the authenticating interceptor.
pub type Service = InterceptedService<AnalyticsServiceServer<api::Api>, Authenticator>;

/// What [`build`] starts: the service, and the handle tests use to take a snapshot.
pub struct Built {
    pub service: Service,
    pub api: api::Api,
}

/// Opens (and migrates, if configured) the database, starts following the feeds
/// into the projection and the scheduled work (fits, the daily snapshot) until the
/// platform's shutdown, and builds the service.
pub async fn build(platform: &Platform, cfg: &ServiceConfig) -> anyhow::Result<Built> {
    anyhow::ensure!(
        !cfg.customer_profile_url.is_empty(),
        "configuration key `analytics.customer_profile_url`: required: customer-profile's address (the projection follows its feed)"
    );
    let db = platform.database(SERVICE, store::MIGRATIONS).await?;
    let feed = Feed::new(db.clone(), SERVICE, platform.config.feed.clone(), platform.shutdown.clone());
    tokio::spawn(feed.clone().run_retention());
    let authz = platform.authz(SERVICE, &db, &feed, |_| Vec::new())?;
    let credentials = ServiceCredentials::from_config(&platform.config, SERVICE)?;
    let followed: [(&projection::Source, &str, &str, Arc<dyn consumer::Apply>); 3] = [
        (
            &projection::CUSTOMER_PROFILE,
            &cfg.customer_profile_url,
            &cfg.customer_profile_ca_path,
            Arc::new(projection::Customers),
        ),
        (
            &projection::TICKETING,
            &cfg.ticketing_url,
            &cfg.ticketing_ca_path,
            Arc::new(projection::Tickets),
        ),
        (
            &projection::SEGMENTATION,
            &cfg.segmentation_url,
            &cfg.segmentation_ca_path,
            Arc::new(projection::Touches),
        ),
    ];
    for (source, url, ca, apply) in followed {
        if url.is_empty() {
            tracing::warn!(source = source.source, "not followed: no address configured");
            continue;
        }
        tokio::spawn(consumer::follow(
            db.clone(),
            consumer::stream_channel(url, ca)?,
            credentials.clone(),
            consumer::Subscription {
                source: source.source,
                method: source.method,
                event_types: source.event_types.iter().map(|t| (*t).to_owned()).collect(),
            },
            apply,
            platform.shutdown.clone(),
        ));
    }
    let check = Duration::from_secs(cfg.schedule_check_secs);
    let models = models::Models::new(db.clone(), feed.clone(), cfg.clv.clone(), cfg.rules.clone());
    tokio::spawn(models.clone().run(check, platform.shutdown.clone()));
    let snapshots = quality::Snapshots::new(
        db.clone(),
        feed.clone(),
        crm_platform::authz::client_channel(
            &cfg.customer_profile_url,
            &cfg.customer_profile_ca_path,
            Duration::from_secs(60),
        )?,
        credentials,
    );
    tokio::spawn(snapshots.clone().run(check, platform.shutdown.clone()));
    tokio::spawn(metrics::run(
        db.clone(),
        cfg.clv.currency.clone(),
        Duration::from_secs(60),
        platform.shutdown.clone(),
    ));
    let api = api::Api::new(db, authz, feed, models, Some(snapshots), platform.page_tokens.clone());
    let limit = platform.config.server.max_message_bytes;
    let server = AnalyticsServiceServer::new(api.clone()).max_decoding_message_size(limit);
    Ok(Built {
        service: InterceptedService::new(server, platform.authenticator.clone()),
        api,
    })
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
        let built = build(platform, &cfg.analytics).await?;
        server.add_service(built.service).await.allow_long_running(LONG_RUNNING);
        Ok(())
    })
    .await
}
