//! What a service needs from the platform, built once per process from configuration
//! and shared by every service in it (`crm serve` runs them all in one process).

use std::sync::Arc;

use sea_orm::DatabaseConnection;

use crate::{
    audit::AuditSpool,
    auth::{Authenticator, TokenVerifier},
    authz::{Authz, PolicyDecisionPoint, RemotePdp},
    cache::{self, Cache},
    config::{ConfigError, PlatformConfig},
    db::{self, Target},
    migrate::{self, Migration},
    paging::PageTokens,
    server::{GrpcServer, ShutdownSignal, bind, shutdown_channel},
};

#[derive(Clone, Debug)]
pub struct Platform {
    pub config: PlatformConfig,
    pub cache: Arc<dyn Cache>,
    /// The permissions service when it runs in this process (`crm serve`); other
    /// processes reach it at `permissions.url`.
    pub policy: Option<Arc<dyn PolicyDecisionPoint>>,
    /// Several services share this process and its database configuration.
    pub hosts_several: bool,
    pub authenticator: Authenticator,
    pub page_tokens: PageTokens,
    pub shutdown: ShutdownSignal,
}

impl Platform {
    pub fn new(config: PlatformConfig, shutdown: ShutdownSignal) -> Result<Self, ConfigError> {
        config.validate()?;
        let verifier = TokenVerifier::from_config(&config.auth)?;
        let page_secret = if !config.paging.token_secret.is_empty() {
            config.paging.token_secret.clone()
        } else if !config.auth.jwt_secret.is_empty() {
            config.auth.jwt_secret.clone()
        } else {
            return Err(ConfigError::invalid(
                "paging.token_secret",
                "required when tokens are verified with a public key (it must be secret and the same on every replica)",
            ));
        };
        let shared_database = config.database.url.starts_with("postgres");
        let cache = cache::from_config(&config.redis, &config.cache, shared_database)
            .map_err(|e| ConfigError::invalid("redis.url", e.to_string()))?;
        Ok(Self {
            cache,
            policy: None,
            hosts_several: false,
            authenticator: Authenticator::new(verifier),
            page_tokens: PageTokens::new(page_secret.as_bytes()),
            shutdown,
            config,
        })
    }

    /// Marks this process as hosting several services (`crm serve`): each gets
    /// its own schema or SQLite file even when one is configured explicitly.
    pub fn hosting_several(mut self) -> Self {
        self.hosts_several = true;
        self
    }

    /// Uses an in-process permissions service instead of `permissions.url`.
    pub fn with_policy(mut self, policy: Arc<dyn PolicyDecisionPoint>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The permissions service: in-process, or over gRPC at `permissions.url`.
    pub fn policy_for(&self, service: &str) -> anyhow::Result<Arc<dyn PolicyDecisionPoint>> {
        if let Some(p) = &self.policy {
            return Ok(p.clone());
        }
        anyhow::ensure!(
            !self.config.permissions.url.is_empty(),
            "configuration key `permissions.url`: required: {service} asks the permissions service for every decision"
        );
        Ok(Arc::new(RemotePdp::connect(&self.config, service, self.shutdown.clone())?))
    }

    /// The authorization client of `service`, whose audit spool lives in `db`;
    /// starts the forwarder that ships its audit trail (its feed's changes and the
    /// spooled reads and denials) to the permissions service.
    pub fn authz(
        &self,
        service: &'static str,
        db: &DatabaseConnection,
        feed: &crate::feed::Feed,
        fields: fn(&crm_proto::crm::events::v1::Event) -> Vec<String>,
    ) -> anyhow::Result<Authz> {
        let policy = self.policy_for(service)?;
        let spool = AuditSpool::new(db.clone(), service);
        tokio::spawn(
            spool
                .clone()
                .run_forwarder(policy.clone(), feed.clone(), fields, self.shutdown.clone()),
        );
        Ok(Authz::new(policy, &self.config, spool)?)
    }

    /// Where `service` keeps its data.
    pub fn database_target(&self, service: &str) -> Target {
        Target::resolve_hosted(&self.config.database, service, self.hosts_several)
    }

    /// Opens `service`'s database and, when `database.migrate_on_start` is set,
    /// applies its pending migrations.
    pub async fn database(&self, service: &str, migrations: &[Migration]) -> anyhow::Result<DatabaseConnection> {
        self.open(service, self.database_target(service), migrations).await
    }

    /// Opens `target` (e.g. a [`Target::companion`] store of `service`) as
    /// [`Platform::database`] does.
    pub async fn open(&self, service: &str, target: Target, migrations: &[Migration]) -> anyhow::Result<DatabaseConnection> {
        let conn = db::connect(&target, self.config.database.max_connections)
            .await
            .map_err(|e| anyhow::anyhow!("{service}: cannot open database {}: {e}", target.redacted()))?;
        if self.config.database.migrate_on_start {
            migrate::run(&conn, migrations).await?;
        } else {
            let applied = migrate::applied_versions(&conn).await.unwrap_or_default();
            let pending: Vec<i64> = migrations
                .iter()
                .map(|m| m.version)
                .filter(|v| !applied.contains(v))
                .collect();
            anyhow::ensure!(
                pending.is_empty(),
                "{service}: database {} lacks migrations {pending:?}: run `{service} migrate` (or set database.migrate_on_start)",
                target.redacted()
            );
        }
        tracing::info!(service, database = %target.redacted(), "database ready");
        Ok(conn)
    }
}

impl Platform {
    /// Applies the pending migrations of `target` (a service's database, or a
    /// companion store of it) and reports them: `<binary> migrate`.
    pub async fn migrate_target(&self, target: &Target, migrations: &[Migration]) -> anyhow::Result<Vec<i64>> {
        let db = db::connect(target, 2).await?;
        Ok(migrate::run(&db, migrations).await?)
    }
}

/// Runs one service alone until SIGTERM/SIGINT (`<binary> serve`): the platform, a
/// server with the metrics endpoint, the services `add` puts on it, listening on
/// `server.listen`.
pub async fn serve_alone(
    config: PlatformConfig,
    add: impl AsyncFnOnce(&Platform, &mut GrpcServer) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (shutdown, signal) = shutdown_channel();
    let platform = Platform::new(config, signal.clone())?;
    let mut server = GrpcServer::new(platform.config.server.clone());
    server.metrics_endpoint(&platform.config.metrics)?;
    add(&platform, &mut server).await?;
    let listener = bind(platform.config.server.listen).await?;
    server.stop_on_os_signal(shutdown);
    server.serve(listener, signal).await
}
