//! marketing-segmentation: segments, tags and RFM over this service's own projection
//! of the customer data, fed by customer-profile's change feed.

pub mod api;
pub mod campaigns;
pub mod journeys;
pub mod projection;
pub mod rfm;
pub mod rule;
pub mod segments;
pub mod store;
pub mod tags;
pub mod traits;

use crm_platform::{
    Platform,
    auth::Authenticator,
    authz::ServiceCredentials,
    config::{ConfigError, PLATFORM_DEFAULTS, PlatformConfig, section},
    consumer,
    feed::Feed,
};
use crm_proto::crm::segmentation::v1::{
    campaign_service_server::CampaignServiceServer, journey_service_server::JourneyServiceServer,
    segmentation_service_server::SegmentationServiceServer,
};
use serde::Deserialize;
use tonic::service::interceptor::InterceptedService;

/// Name of the service: binary, database file, schema, event source.
pub const SERVICE: &str = "marketing-segmentation";

/// Defaults of this service's own section.
pub const DEFAULTS: &str = r#"
[segmentation]
customer_profile_url = ""
customer_profile_ca_path = ""
analytics_url = ""
analytics_ca_path = ""
tag_expiry_interval_secs = 60
traits = ["orders.count_90d", "orders.total_365d", "last_order_at", "favourite_category", "preferred_channel", "events.product_view.count_7d"]
traits_refresh_interval_secs = 3600

[segmentation.segments]
refresh_interval_secs = 900
poll_interval_ms = 1000

[segmentation.campaigns]
poll_interval_ms = 500
batch_size = 500
send_concurrency = 64
max_attempts = 5
retry_base_secs = 30
lease_secs = 300
enqueue_chunk = 10000
default_time_zone = "Asia/Shanghai"
quiet_hours = ""
frequency_max_messages = 0
frequency_window_hours = 24
wechat_id_source = "wechat"
push_token_source = "app"
interaction_source = "marketing-segmentation"
send_time_prior_weight = 10.0

[segmentation.tracking]
listen = "0.0.0.0:8090"
public_url = ""
secret = ""
link_ttl_days = 90

[segmentation.channels.email]
url = ""
from = ""
bearer_token = ""
rate_per_sec = 100.0
timeout_ms = 10000

[segmentation.channels.sms]
url = ""
from = ""
bearer_token = ""
rate_per_sec = 100.0
timeout_ms = 5000

[segmentation.channels.wechat]
url = ""
from = ""
bearer_token = ""
rate_per_sec = 100.0
timeout_ms = 5000

[segmentation.channels.push]
url = ""
from = ""
bearer_token = ""
rate_per_sec = 500.0
timeout_ms = 5000

[segmentation.rfm]
window_days = 365
currency = "CNY"
recompute_interval_secs = 3600
drift_check_secs = 60
"#;

/// `[segmentation]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceConfig {
    /// customer-profile's gRPC address, whose change feed the projection follows
    /// (`crm serve` points it at itself). Required to start.
    pub customer_profile_url: String,
    /// PEM CA of an `https://` customer-profile URL.
    pub customer_profile_ca_path: String,
    /// The analytics service's gRPC address, whose `ChurnRiskRaised` events trigger
    /// win-back journeys; empty: not followed.
    pub analytics_url: String,
    /// PEM CA of an `https://` analytics URL.
    pub analytics_ca_path: String,
    /// How often tags past their expiry are taken off.
    pub tag_expiry_interval_secs: u64,
    /// RFM: the window, the currency of monetary values, the full computation's period.
    pub rfm: rfm::RfmConfig,
    /// The computed traits kept per person (see `traits::parse`).
    pub traits: Vec<String>,
    /// How often every person's traits are computed anew (time windows move).
    pub traits_refresh_interval_secs: u64,
    /// Segment evaluation.
    pub segments: segments::SegmentsConfig,
    /// Campaign scheduling and delivery.
    pub campaigns: campaigns::CampaignsConfig,
    /// The tracking endpoint and its links.
    pub tracking: campaigns::tracking::TrackingConfig,
    /// The channels' providers.
    pub channels: campaigns::channels::ChannelsConfig,
}

impl ServiceConfig {
    /// The traits in force, parsed (validated on load).
    pub fn traits(&self) -> traits::Traits {
        traits::Traits::new(&self.traits, &self.rfm.currency).unwrap_or_else(|_| traits::Traits {
            traits: Vec::new(),
            currency: self.rfm.currency.clone(),
        })
    }
}

impl ServiceConfig {
    /// The `[segmentation]` section of a loaded document, validated.
    pub fn from_document(doc: &serde_json::Value) -> Result<Self, ConfigError> {
        let cfg: Self = section(doc, Some("segmentation"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [
            ("customer_profile_url", &self.customer_profile_url),
            ("analytics_url", &self.analytics_url),
        ] {
            crm_platform::config::check_service_url(&format!("segmentation.{key}"), url)?;
        }
        if self.tag_expiry_interval_secs == 0 {
            return Err(ConfigError::invalid("segmentation.tag_expiry_interval_secs", "at least 1"));
        }
        if !(1..=3650).contains(&self.rfm.window_days) {
            return Err(ConfigError::invalid("segmentation.rfm.window_days", "1 to 3650"));
        }
        let c = &self.rfm.currency;
        if c.len() != 3 || !c.chars().all(|ch| ch.is_ascii_uppercase()) {
            return Err(ConfigError::invalid(
                "segmentation.rfm.currency",
                "an ISO 4217 code such as CNY",
            ));
        }
        if self.rfm.recompute_interval_secs == 0 {
            return Err(ConfigError::invalid("segmentation.rfm.recompute_interval_secs", "at least 1"));
        }
        if let Err((i, message)) = traits::Traits::new(&self.traits, &self.rfm.currency) {
            return Err(ConfigError::invalid(format!("segmentation.traits[{i}]"), message));
        }
        if self.traits_refresh_interval_secs == 0 {
            return Err(ConfigError::invalid(
                "segmentation.traits_refresh_interval_secs",
                "at least 1",
            ));
        }
        if self.segments.refresh_interval_secs == 0 {
            return Err(ConfigError::invalid(
                "segmentation.segments.refresh_interval_secs",
                "at least 1",
            ));
        }
        if self.segments.poll_interval_ms == 0 {
            return Err(ConfigError::invalid("segmentation.segments.poll_interval_ms", "at least 1"));
        }
        if self.rfm.drift_check_secs == 0 {
            return Err(ConfigError::invalid("segmentation.rfm.drift_check_secs", "at least 1"));
        }
        self.campaigns.validate()?;
        self.tracking.validate()?;
        self.channels.validate()?;
        Ok(())
    }
}

/// Configuration of the standalone `segmentation` binary.
#[derive(Debug, Clone)]
pub struct Config {
    pub platform: PlatformConfig,
    pub segmentation: ServiceConfig,
}

impl Config {
    /// Loads and validates: defaults, then `file`, then `CRM__*` variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let doc = crm_platform::config::load(&[PLATFORM_DEFAULTS, DEFAULTS], file)?;
        Ok(Self {
            platform: PlatformConfig::from_document(&doc)?,
            segmentation: ServiceConfig::from_document(&doc)?,
        })
    }
}

/// Methods exempt from the server's request timeout: they last as long as the
/// client's stream.
pub const LONG_RUNNING: &[&str] = &["/crm.segmentation.v1.SegmentationService/StreamEvents"];

/// The gRPC service as served, behind the authenticating interceptor.
pub type Service = InterceptedService<SegmentationServiceServer<api::Api>, Authenticator>;

/// The campaign service as served.
pub type CampaignService = InterceptedService<CampaignServiceServer<campaigns::api::Api>, Authenticator>;

/// The journey service as served.
pub type JourneyService = InterceptedService<JourneyServiceServer<journeys::api::Api>, Authenticator>;

/// What [`build`] starts: the two gRPC services and the tracking endpoint's address.
pub struct Built {
    pub segmentation: Service,
    pub campaigns: CampaignService,
    pub journeys: JourneyService,
    /// Where the tracking endpoint listens (when this process serves it).
    pub tracking: Option<std::net::SocketAddr>,
}

/// The secret of the tracking links: configured, or derived from the JWT secret.
fn link_secret(platform: &Platform, cfg: &campaigns::tracking::TrackingConfig) -> anyhow::Result<Vec<u8>> {
    if !cfg.secret.is_empty() {
        return Ok(cfg.secret.as_bytes().to_vec());
    }
    anyhow::ensure!(
        !platform.config.auth.jwt_secret.is_empty(),
        "configuration key `segmentation.tracking.secret`: required when tokens are not HS256 (the same on every replica)"
    );
    use sha2::Digest;
    Ok(sha2::Sha256::new()
        .chain_update(b"crm tracking links\0")
        .chain_update(platform.config.auth.jwt_secret.as_bytes())
        .finalize()
        .to_vec())
}

/// Opens (and migrates, if configured) the database, starts following
/// customer-profile's feed into the projection, the background jobs and the
/// tracking endpoint (until the platform's shutdown), and builds the services.
pub async fn build(platform: &Platform, cfg: &ServiceConfig) -> anyhow::Result<Built> {
    anyhow::ensure!(
        !cfg.customer_profile_url.is_empty(),
        "configuration key `segmentation.customer_profile_url`: required: customer-profile's address (the projection follows its feed)"
    );
    let db = platform.database(SERVICE, store::MIGRATIONS).await?;
    let feed = Feed::new(db.clone(), SERVICE, platform.config.feed.clone(), platform.shutdown.clone());
    tokio::spawn(feed.clone().run_retention());
    let authz = platform.authz(SERVICE, &db, &feed, |_| Vec::new())?;
    let traits = traits::Registry::new(cfg.traits());
    traits.reload(&db).await?;
    let evaluator = segments::Evaluator {
        currency: cfg.rfm.currency.clone(),
    };
    let keyring = std::sync::Arc::new(crm_platform::crypto::Keyring::from_config(&platform.config.encryption)?);
    let contacts = campaigns::contacts::Contacts::new(keyring, &cfg.campaigns.wechat_id_source, &cfg.campaigns.push_token_source);
    let engine = journeys::engine::Engine::new(db.clone(), feed.clone(), cfg.campaigns.clone(), evaluator.clone());
    let hooks = campaigns::ProjectionHooks {
        contacts: contacts.clone(),
        source: cfg.campaigns.interaction_source.clone(),
        journeys: Some(engine.clone()),
    };
    let channel = consumer::stream_channel(&cfg.customer_profile_url, &cfg.customer_profile_ca_path)?;
    tokio::spawn(consumer::follow(
        db.clone(),
        channel,
        ServiceCredentials::from_config(&platform.config, SERVICE)?,
        consumer::Subscription {
            source: projection::SOURCE,
            method: projection::METHOD,
            event_types: projection::EVENT_TYPES.iter().map(|t| (*t).to_owned()).collect(),
        },
        std::sync::Arc::new(
            projection::Projection::new(cfg.rfm.clone(), traits.clone(), evaluator.clone()).with_campaigns(hooks),
        ),
        platform.shutdown.clone(),
    ));
    let feed_for_rfm = feed.clone();
    let segments = segments::Segments::new(
        db.clone(),
        feed.clone(),
        traits.clone(),
        evaluator.clone(),
        cfg.segments.clone(),
    );
    tokio::spawn(segments.clone().run(platform.shutdown.clone()));
    let tags = tags::Tags::new(db.clone(), feed.clone(), evaluator);
    tokio::spawn(tags.clone().run_expiry(
        std::time::Duration::from_secs(cfg.tag_expiry_interval_secs),
        platform.shutdown.clone(),
    ));
    tokio::spawn(run_rfm(db.clone(), feed_for_rfm, cfg.rfm.clone(), platform.shutdown.clone()));
    tokio::spawn(run_traits(
        db.clone(),
        traits.clone(),
        std::time::Duration::from_secs(cfg.traits_refresh_interval_secs),
        platform.shutdown.clone(),
    ));
    // Campaigns: the tracking endpoint, the scheduler, the dispatcher, the forwarder.
    let listener = if cfg.tracking.listen.is_empty() {
        None
    } else {
        Some(tokio::net::TcpListener::bind(&cfg.tracking.listen).await.map_err(|e| {
            anyhow::anyhow!(
                "configuration key `segmentation.tracking.listen`: cannot listen on {}: {e}",
                cfg.tracking.listen
            )
        })?)
    };
    let tracking_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
    let public_url = match (&cfg.tracking.public_url, tracking_addr) {
        (url, _) if !url.is_empty() => url.clone(),
        (_, Some(addr)) => {
            // Links name a reachable address: loopback when listening on all.
            let host = if addr.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                addr.ip()
            };
            tracing::warn!(
                "segmentation.tracking.public_url is not set: links in messages point at http://{host}:{}, reachable from this machine only",
                addr.port()
            );
            format!("http://{}", std::net::SocketAddr::new(host, addr.port()))
        }
        _ => anyhow::bail!(
            "configuration key `segmentation.tracking.public_url`: required when this process does not serve the tracking endpoint"
        ),
    };
    let links = campaigns::tracking::Links::new(
        &link_secret(platform, &cfg.tracking)?,
        &public_url,
        cfg.tracking.link_ttl_days,
    )?;
    let providers = campaigns::channels::Providers::from_config(&cfg.channels)?;
    let tracker = campaigns::tracking::Tracker::new(db.clone(), feed.clone(), links.clone(), &cfg.campaigns.interaction_source);
    if let Some(listener) = listener {
        tracing::info!(addr = ?tracking_addr, public_url, "campaign tracking endpoint");
        let tracker = tracker.clone();
        tokio::spawn(crm_platform::http::serve(
            listener,
            platform.shutdown.clone(),
            "tracking",
            move |req| {
                let tracker = tracker.clone();
                async move { tracker.handle(req).await }
            },
        ));
    }
    let runner = campaigns::runs::Runner::new(db.clone(), feed.clone(), cfg.campaigns.clone());
    tokio::spawn(runner.run(platform.shutdown.clone()));
    let dispatcher = campaigns::dispatch::Dispatcher::new(
        db.clone(),
        feed.clone(),
        cfg.campaigns.clone(),
        providers.clone(),
        contacts,
        links,
    );
    tokio::spawn(dispatcher.clone().run(platform.shutdown.clone()));
    let forwarder = campaigns::forward::Forwarder::new(
        db.clone(),
        crm_platform::authz::client_channel(
            &cfg.customer_profile_url,
            &cfg.customer_profile_ca_path,
            std::time::Duration::from_secs(30),
        )?,
        ServiceCredentials::from_config(&platform.config, SERVICE)?,
    );
    tokio::spawn(forwarder.run(
        std::time::Duration::from_millis(cfg.campaigns.poll_interval_ms),
        platform.shutdown.clone(),
    ));
    let campaign_uses = campaigns::manage::Campaigns::new(
        db.clone(),
        feed.clone(),
        cfg.campaigns.clone(),
        traits.clone(),
        providers,
        &cfg.rfm.currency,
    );
    if !cfg.analytics_url.is_empty() {
        tokio::spawn(consumer::follow(
            db.clone(),
            consumer::stream_channel(&cfg.analytics_url, &cfg.analytics_ca_path)?,
            ServiceCredentials::from_config(&platform.config, SERVICE)?,
            consumer::Subscription {
                source: journeys::churn::SOURCE,
                method: journeys::churn::METHOD,
                event_types: journeys::churn::EVENT_TYPES.iter().map(|t| (*t).to_owned()).collect(),
            },
            std::sync::Arc::new(journeys::churn::ChurnRisks { engine: engine.clone() }),
            platform.shutdown.clone(),
        ));
    }
    tokio::spawn(engine.run_loop(platform.shutdown.clone()));
    let journey_uses = journeys::manage::Journeys::new(
        db.clone(),
        feed.clone(),
        cfg.campaigns.clone(),
        traits.clone(),
        campaign_uses.clone(),
    );
    let journey_api = journeys::api::Api::new(journey_uses, authz.clone(), platform.page_tokens.clone());
    let campaign_api = campaigns::api::Api::new(campaign_uses, authz.clone(), platform.page_tokens.clone(), dispatcher);
    let api = api::Api::new(
        db,
        authz,
        tags,
        segments,
        traits,
        platform.page_tokens.clone(),
        cfg.rfm.clone(),
    );
    let limit = platform.config.server.max_message_bytes;
    let server = SegmentationServiceServer::new(api).max_decoding_message_size(limit);
    let campaign_server = CampaignServiceServer::new(campaign_api).max_decoding_message_size(limit);
    let journey_server = JourneyServiceServer::new(journey_api).max_decoding_message_size(limit);
    Ok(Built {
        segmentation: InterceptedService::new(server, platform.authenticator.clone()),
        campaigns: InterceptedService::new(campaign_server, platform.authenticator.clone()),
        journeys: InterceptedService::new(journey_server, platform.authenticator.clone()),
        tracking: tracking_addr,
    })
}

/// The full RFM computation at start, every `recompute_interval_secs`, and sooner
/// when the population drifts (checked every `drift_check_secs`).
async fn run_rfm(
    db: sea_orm::DatabaseConnection,
    feed: Feed,
    cfg: rfm::RfmConfig,
    mut shutdown: crm_platform::server::ShutdownSignal,
) {
    let period = std::time::Duration::from_secs(cfg.recompute_interval_secs.max(1));
    let check = std::time::Duration::from_secs(cfg.drift_check_secs.max(1)).min(period);
    let mut last: Option<std::time::Instant> = None;
    loop {
        let due = match last {
            None => true,
            Some(at) if at.elapsed() >= period => true,
            Some(_) => match rfm_drifted(&db, &cfg).await {
                Ok(drifted) => drifted,
                Err(err) => {
                    tracing::warn!(%err, "RFM drift check failed");
                    false
                }
            },
        };
        if due {
            match rfm::recompute(&db, &cfg, chrono::Utc::now()).await {
                Ok(population) if population >= 0 => {
                    feed.committed();
                    last = Some(std::time::Instant::now());
                    tracing::info!(population, "RFM recomputed");
                }
                Ok(_) => tracing::debug!("RFM recomputation running on another replica"),
                Err(err) => tracing::warn!(%err, "RFM recomputation failed; retrying"),
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(check) => {}
        }
    }
}

/// Every person's traits computed anew every `every` (the windows move), set-based,
/// in one transaction.
async fn run_traits(
    db: sea_orm::DatabaseConnection,
    traits: traits::Registry,
    every: std::time::Duration,
    mut shutdown: crm_platform::server::ShutdownSignal,
) {
    let mut next = tokio::time::Instant::now() + every;
    loop {
        // Traits declared before a restart may still wait for their first computation.
        if let Err(err) = traits.backfill(&db).await {
            tracing::warn!(%err, "computing declared traits failed; retrying");
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = traits.declared_one() => continue,
            _ = tokio::time::sleep_until(next) => {}
        }
        next = tokio::time::Instant::now() + every;
        let run = async {
            let txn = crm_platform::db::begin_write(&db).await?;
            traits.current().refresh_all(&txn, chrono::Utc::now()).await?;
            // Segments reading traits follow the new values.
            store::segments::mark_stale(&txn, rule::deps::TRAITS).await?;
            txn.commit().await?;
            Ok::<_, crm_platform::Error>(())
        };
        if let Err(err) = run.await {
            tracing::warn!(%err, "computed traits refresh failed; retrying at the next interval");
        }
    }
}

async fn rfm_drifted(db: &sea_orm::DatabaseConnection, cfg: &rfm::RfmConfig) -> crm_platform::Result<bool> {
    let now = chrono::Utc::now().timestamp_micros();
    let since = now - i64::from(cfg.window_days) * 86_400_000_000;
    let bounds = store::rfm::boundaries(db).await?;
    let active = store::rfm::active(db, since, now).await?;
    Ok(rfm::drifted(bounds.as_ref(), active))
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
        let built = build(platform, &cfg.segmentation).await?;
        server.add_service(built.segmentation).await.allow_long_running(LONG_RUNNING);
        server.add_service(built.campaigns).await;
        server.add_service(built.journeys).await;
        Ok(())
    })
    .await
}
