//! permissions: who may see and change what. Roles by job duty bound to users
//! with a scope (own records, team, team subtree, all), a team hierarchy,
//! classification clearance for field masking, temporary grants with approval and
//! expiry, access reviews, and the tamper-evident audit log every service writes to.

pub mod api;
pub mod domain;
pub mod service;
pub mod store;

use std::sync::Arc;

use async_trait::async_trait;
use crm_platform::{
    Platform,
    authz::PolicyDecisionPoint,
    config::{ConfigError, PLATFORM_DEFAULTS, PlatformConfig, section},
    feed::Feed,
};
use crm_proto::crm::permissions::v1::{self as pb, permissions_service_server::PermissionsServiceServer};
use serde::Deserialize;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;

use crate::{
    api::Api,
    domain::policy::{Level, SelfService, valid_permission},
    service::{Permissions, Settings},
};

/// Name of the service: binary, database file, schema, event source.
pub const SERVICE: &str = "permissions";

/// Defaults of this service's own section.
pub const DEFAULTS: &str = r#"
[permissions_service]
bootstrap_admins = []
service_accounts = []
campaign_senders = []
data_exporters = []
review_interval_days = 90
unused_after_days = 90
max_grant_hours = 720
decision_ttl_secs = 60
subject_cache_secs = 30
version_poll_ms = 500
expiry_interval_secs = 10
audit_retention_days = 2555
audit_retention_interval_secs = 3600
usage_flush_secs = 30
self_service_permissions = ["customer.read", "customer.update", "customer.export", "ticket.read", "ticket.create", "ticket.comment", "ticket.rate"]

[[permissions_service.default_roles]]
name = "admin"
display_name = "Administrator"
permissions = ["*"]
clearance = "confidential"

[[permissions_service.default_roles]]
name = "service"
display_name = "Service account (CRM services)"
permissions = ["permissions.check", "permissions.events", "audit.write", "audit.read", "customer.read", "customer.events", "ticket.read", "ticket.events", "segment.events", "analytics.events"]
clearance = "internal"

[[permissions_service.default_roles]]
name = "campaign_sender"
display_name = "Campaign sender (the marketing service: contacts to send to, touches and unsubscribes recorded back)"
permissions = ["customer.read", "customer.events", "customer.ingest", "customer.update"]
clearance = "sensitive"

[[permissions_service.default_roles]]
name = "data_exporter"
display_name = "Data exporter (customer-profile: what the other services hold about a customer, for a data-subject export)"
permissions = ["segment.read", "analytics.customers"]
clearance = "internal"

[[permissions_service.default_roles]]
name = "sales_rep"
display_name = "Sales representative"
permissions = ["customer.read", "customer.create", "customer.update"]
clearance = "sensitive"

[[permissions_service.default_roles]]
name = "sales_manager"
display_name = "Sales manager"
permissions = ["customer.read", "customer.create", "customer.update", "customer.assign", "customer.merge", "permissions.approve", "analytics.read", "analytics.customers"]
clearance = "sensitive"

[[permissions_service.default_roles]]
name = "service_agent"
display_name = "Customer-service agent"
permissions = ["customer.read", "ticket.read", "ticket.create", "ticket.update", "ticket.assign"]
clearance = "internal"

[[permissions_service.default_roles]]
name = "service_manager"
display_name = "Customer-service manager"
permissions = ["customer.read", "ticket.*", "permissions.approve", "analytics.read"]
clearance = "internal"

[[permissions_service.default_roles]]
name = "marketer"
display_name = "Marketer"
permissions = ["customer.read", "segment.read", "segment.manage", "campaign.read", "campaign.manage", "analytics.read", "analytics.customers"]
clearance = "internal"

[[permissions_service.default_roles]]
name = "integrator"
display_name = "Integration (ERP, e-commerce)"
permissions = ["customer.read", "customer.create", "customer.update", "customer.ingest", "customer.import", "customer.events", "segment.events"]
clearance = "confidential"

[[permissions_service.default_roles]]
name = "privacy_officer"
display_name = "Data-protection officer (data-subject requests, retention)"
permissions = ["customer.read", "customer.export", "customer.erase", "customer.retention", "audit.read"]
clearance = "confidential"

[[permissions_service.default_roles]]
name = "auditor"
display_name = "Auditor"
permissions = ["audit.read", "permissions.read", "permissions.review"]
clearance = "internal"
"#;

/// A role seeded on first start.
#[derive(Debug, Clone, Deserialize)]
pub struct DefaultRole {
    pub name: String,
    pub display_name: String,
    pub permissions: Vec<String>,
    /// public, internal, sensitive or confidential.
    pub clearance: String,
}

/// `[permissions_service]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceConfig {
    /// Users bound to role `admin` with scope ALL at start (created if missing).
    pub bootstrap_admins: Vec<String>,
    /// Service accounts bound to role `service` at start.
    pub service_accounts: Vec<String>,
    /// Service accounts also bound to role `campaign_sender` at start: the
    /// marketing service, which reads contacts to send campaigns and records
    /// touches and unsubscribes in customer-profile.
    pub campaign_senders: Vec<String>,
    /// Service accounts also bound to role `data_exporter` at start: customer-profile,
    /// which gathers what the other services hold about a customer for a data export.
    pub data_exporters: Vec<String>,
    pub review_interval_days: u32,
    pub unused_after_days: u32,
    pub max_grant_hours: u32,
    /// How long services may cache a decision (a grant's expiry shortens it).
    pub decision_ttl_secs: u64,
    /// Upper bound on how long a replica serves a user's loaded bindings when it
    /// misses another replica's change (the version poll normally catches it).
    pub subject_cache_secs: u64,
    pub version_poll_ms: u64,
    pub expiry_interval_secs: u64,
    /// Audit entries older than this many days are purged (the chain continues from
    /// the last purged entry's hash); 0 keeps them forever.
    pub audit_retention_days: u32,
    /// How often the audit retention runs.
    pub audit_retention_interval_secs: u64,
    pub usage_flush_secs: u64,
    /// What a customer self-service token may do with its own record.
    pub self_service_permissions: Vec<String>,
    /// Roles created on the first start (admins may change them afterwards).
    pub default_roles: Vec<DefaultRole>,
}

fn level(name: &str) -> Option<Level> {
    match name {
        "public" => Some(Level::Public),
        "internal" => Some(Level::Internal),
        "sensitive" => Some(Level::Sensitive),
        "confidential" => Some(Level::Confidential),
        _ => None,
    }
}

impl ServiceConfig {
    pub fn from_document(doc: &serde_json::Value) -> Result<Self, ConfigError> {
        let cfg: Self = section(doc, Some("permissions_service"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, v) in [
            ("review_interval_days", u64::from(self.review_interval_days)),
            ("max_grant_hours", u64::from(self.max_grant_hours)),
            ("decision_ttl_secs", self.decision_ttl_secs),
            ("version_poll_ms", self.version_poll_ms),
            ("expiry_interval_secs", self.expiry_interval_secs),
            ("audit_retention_interval_secs", self.audit_retention_interval_secs),
            ("usage_flush_secs", self.usage_flush_secs),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(
                    format!("permissions_service.{key}"),
                    "must be at least 1",
                ));
            }
        }
        for p in &self.self_service_permissions {
            if !valid_permission(p, false) {
                return Err(ConfigError::invalid(
                    "permissions_service.self_service_permissions",
                    format!("`{p}` is not a permission such as `customer.read`"),
                ));
            }
        }
        for (i, r) in self.default_roles.iter().enumerate() {
            let role = self.role(r).ok_or_else(|| {
                ConfigError::invalid(
                    format!("permissions_service.default_roles[{i}]"),
                    "clearance must be public, internal, sensitive or confidential",
                )
            })?;
            domain::resources::validate_role(&role, "role")
                .map_err(|e| ConfigError::invalid(format!("permissions_service.default_roles[{i}]"), e.to_string()))?;
        }
        Ok(())
    }

    pub fn role(&self, r: &DefaultRole) -> Option<pb::Role> {
        Some(pb::Role {
            name: format!("roles/{}", r.name),
            display_name: r.display_name.clone(),
            permissions: r.permissions.clone(),
            clearance: level(&r.clearance)? as i32,
            ..pb::Role::default()
        })
    }

    pub fn settings(&self) -> Settings {
        let days = |d: u32| chrono::Duration::days(i64::from(d));
        Settings {
            self_service: SelfService {
                permissions: self.self_service_permissions.clone(),
                clearance: Level::Confidential,
            },
            review_interval: days(self.review_interval_days),
            unused_after: days(self.unused_after_days),
            max_grant_secs: i64::from(self.max_grant_hours) * 3600,
            decision_ttl: chrono::Duration::seconds(self.decision_ttl_secs as i64),
            subject_cache: std::time::Duration::from_secs(self.subject_cache_secs),
            version_poll: std::time::Duration::from_millis(self.version_poll_ms),
            expiry_interval: std::time::Duration::from_secs(self.expiry_interval_secs),
            audit_retention_days: self.audit_retention_days,
            audit_retention_interval: std::time::Duration::from_secs(self.audit_retention_interval_secs),
            usage_flush: std::time::Duration::from_secs(self.usage_flush_secs),
        }
    }
}

/// Configuration of the standalone `permissions` binary.
#[derive(Debug, Clone)]
pub struct Config {
    pub platform: PlatformConfig,
    pub permissions_service: ServiceConfig,
}

impl Config {
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let doc = crm_platform::config::load(&[PLATFORM_DEFAULTS, DEFAULTS], file)?;
        Ok(Self {
            platform: PlatformConfig::from_document(&doc)?,
            permissions_service: ServiceConfig::from_document(&doc)?,
        })
    }
}

/// The gRPC service as served, behind the authenticating interceptor.
pub type Service = InterceptedService<PermissionsServiceServer<Api>, crm_platform::auth::Authenticator>;

/// Opens the database, seeds the default roles and bootstrap bindings, starts the
/// background jobs, and returns the service with its in-process decision point
/// (which `crm serve` hands to the other services).
pub async fn build(platform: &Platform, cfg: &ServiceConfig) -> anyhow::Result<(Service, Permissions)> {
    let db = platform.database(SERVICE, store::MIGRATIONS).await?;
    let feed = Feed::new(db.clone(), SERVICE, platform.config.feed.clone(), platform.shutdown.clone());
    tokio::spawn(feed.clone().run_retention());
    let permissions = Permissions::new(db, feed, cfg.settings());
    let roles: Vec<pb::Role> = cfg.default_roles.iter().filter_map(|r| cfg.role(r)).collect();
    permissions
        .bootstrap(
            &roles,
            &cfg.bootstrap_admins,
            &cfg.service_accounts,
            &cfg.campaign_senders,
            &cfg.data_exporters,
        )
        .await?;
    tokio::spawn(permissions.clone().run_jobs(platform.shutdown.clone()));
    let api = Api::new(permissions.clone(), platform.page_tokens.clone());
    let server = PermissionsServiceServer::new(api).max_decoding_message_size(platform.config.server.max_message_bytes);
    Ok((InterceptedService::new(server, platform.authenticator.clone()), permissions))
}

/// In-process decisions for services hosted in the same process.
#[async_trait]
impl PolicyDecisionPoint for Permissions {
    async fn batch_check(&self, checks: Vec<pb::CheckRequest>) -> crm_platform::Result<Vec<pb::CheckResponse>> {
        Permissions::batch_check(self, checks).await
    }

    async fn read_scope(&self, req: pb::GetReadScopeRequest) -> crm_platform::Result<pb::ReadScope> {
        let principal = req.principal.unwrap_or_default();
        Permissions::read_scope(self, &principal, &req.permission).await
    }

    async fn field_policy(&self, req: pb::GetFieldPolicyRequest) -> crm_platform::Result<pb::FieldPolicy> {
        let principal = req.principal.unwrap_or_default();
        Permissions::field_policy(self, &principal, &req.permission, &req.fields, req.resource.as_ref()).await
    }

    async fn write_audit(&self, entries: Vec<pb::AuditEntry>) -> crm_platform::Result<()> {
        for chunk in entries.chunks(service::audit::MAX_BATCH) {
            self.append_audit(chunk.to_vec(), None).await?;
        }
        Ok(())
    }

    async fn audit_trail(&self, resource: &str, limit: u32) -> crm_platform::Result<Vec<pb::AuditEntry>> {
        Permissions::audit_trail(self, resource, limit).await
    }

    fn epoch(&self) -> watch::Receiver<String> {
        self.subscribe_epoch()
    }
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
        let (service, _) = build(platform, &cfg.permissions_service).await?;
        server.add_service(service).await;
        Ok(())
    })
    .await
}

/// Keeps `Arc` in scope for trait objects built from [`Permissions`].
pub fn decision_point(p: &Permissions) -> Arc<dyn PolicyDecisionPoint> {
    Arc::new(p.clone())
}
