//! The permissions use cases. Decisions read a cached directory (teams, roles)
//! and cached subjects (a user's bindings and grants); every policy write is one
//! transaction holding the change, its feed event, its audit entry and a bump of
//! the policy version, after which every cache here and in the services (through
//! the feed) is dropped.

mod admin;
pub mod audit;
mod decide;
mod grants;
mod review;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, SubsecRound, Utc};
use crm_platform::{
    Error, Result,
    auth::Principal,
    db::begin_write,
    feed::{self, Feed, NewEvent},
    server::ShutdownSignal,
};
use crm_proto::crm::permissions::v1::{self as pb, audit_entry::Outcome};
use prost::Message;
use sea_orm::{DatabaseConnection, DatabaseTransaction};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::{
    domain::policy::{Directory, Level, SelfService, Subject},
    store,
};

pub use admin::Page;
pub use decide::Caller;

/// Settings of the use cases.
#[derive(Debug, Clone)]
pub struct Settings {
    pub self_service: SelfService,
    pub review_interval: chrono::Duration,
    pub unused_after: chrono::Duration,
    pub max_grant_secs: i64,
    /// How long services may cache a decision that rests on no grant.
    pub decision_ttl: chrono::Duration,
    /// Upper bound on how long this replica serves a subject it loaded.
    pub subject_cache: Duration,
    pub version_poll: Duration,
    pub expiry_interval: Duration,
    /// Audit entries older than this many days are purged; 0 keeps them.
    pub audit_retention_days: u32,
    pub audit_retention_interval: Duration,
    pub usage_flush: Duration,
}

#[derive(Clone, Debug)]
pub struct Permissions {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: DatabaseConnection,
    feed: Feed,
    settings: Settings,
    directory: RwLock<Option<Arc<Directory>>>,
    subjects: moka::future::Cache<String, Arc<Subject>>,
    /// Policy version the caches were filled at.
    version: AtomicI64,
    epoch: watch::Sender<String>,
    /// Binding or grant name -> last use (Unix µs), flushed periodically.
    usage: Mutex<HashMap<String, i64>>,
}

/// Timestamps at the precision both databases keep.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub(crate) fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    feed::timestamp(t)
}

pub(crate) use feed::datetime as from_timestamp;

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// One policy change: its event and its audit entry.
pub(crate) struct Change {
    pub event_type: &'static str,
    pub subject: String,
    pub data: Vec<u8>,
    pub action: &'static str,
    pub fields: Vec<String>,
    pub before: Option<Vec<u8>>,
    pub after: Option<Vec<u8>>,
}

impl Permissions {
    pub fn new(db: DatabaseConnection, feed: Feed, settings: Settings) -> Self {
        let subjects = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(settings.subject_cache.max(Duration::from_millis(1)))
            .build();
        Self {
            inner: Arc::new(Inner {
                db,
                feed,
                settings,
                directory: RwLock::new(None),
                subjects,
                version: AtomicI64::new(0),
                epoch: watch::channel(String::new()).0,
                usage: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn feed(&self) -> &Feed {
        &self.inner.feed
    }

    fn db(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Drops every cached directory and subject when the policy version moved.
    fn observe_version(&self, version: i64) {
        if self.inner.version.swap(version, Ordering::SeqCst) != version {
            if let Ok(mut d) = self.inner.directory.write() {
                *d = None;
            }
            self.inner.subjects.invalidate_all();
            self.inner.epoch.send_replace(format!("v{version}"));
        }
    }

    /// Commits `changes` with their events, audit entries and a version bump.
    pub(crate) async fn commit(&self, txn: DatabaseTransaction, actor: &Principal, changes: Vec<Change>) -> Result<()> {
        let mut events = Vec::with_capacity(changes.len());
        let mut entries = Vec::with_capacity(changes.len());
        for c in changes {
            entries.push(pb::AuditEntry {
                id: uuid::Uuid::now_v7().to_string(),
                time: Some(timestamp(now())),
                source: crate::SERVICE.into(),
                actor: actor.user_id.clone(),
                action: c.action.into(),
                resource: c.subject.clone(),
                fields: c.fields,
                before_digest: c.before.as_deref().map(digest).unwrap_or_default(),
                after_digest: c.after.as_deref().map(digest).unwrap_or_default(),
                trace_id: trace_id(),
                outcome: Outcome::Success as i32,
                submitter: crate::SERVICE.into(),
                ..pb::AuditEntry::default()
            });
            events.push(NewEvent {
                event_type: c.event_type,
                subject: c.subject,
                actor: actor.user_id.clone(),
                data: c.data,
            });
        }
        feed::append_many(&txn, events).await?;
        let version = store::bump_version(&txn).await?;
        store::lock_chain(&txn).await?;
        store::audit::append(&txn, entries).await?;
        txn.commit().await?;
        self.observe_version(version);
        self.inner.feed.committed();
        Ok(())
    }

    /// Audits a refused call to this service (its own transaction).
    pub(crate) async fn audit_denial(&self, actor: &Principal, permission: &str, resource: &str, reason: &str) -> Result<()> {
        let entry = pb::AuditEntry {
            id: uuid::Uuid::now_v7().to_string(),
            time: Some(timestamp(now())),
            source: crate::SERVICE.into(),
            actor: actor.user_id.clone(),
            action: permission.into(),
            resource: resource.into(),
            trace_id: trace_id(),
            outcome: Outcome::Denied as i32,
            reason: reason.into(),
            ..pb::AuditEntry::default()
        };
        self.append_audit(vec![entry], None).await.map(|_| ())
    }

    /// Creates the default roles on first start, and binds the configured
    /// administrators and service accounts (idempotent).
    pub async fn bootstrap(
        &self,
        defaults: &[pb::Role],
        admins: &[String],
        services: &[String],
        senders: &[String],
        exporters: &[String],
    ) -> Result<()> {
        admin::bootstrap(self, defaults, admins, services, senders, exporters).await
    }

    /// Background work until shutdown: noticing other replicas' policy changes,
    /// expiring grants, recording usage, audit retention.
    pub async fn run_jobs(self, mut shutdown: ShutdownSignal) {
        let s = self.settings().clone();
        let mut poll = tokio::time::interval(s.version_poll);
        let mut expiry = tokio::time::interval(s.expiry_interval);
        let mut usage = tokio::time::interval(s.usage_flush);
        let mut retention = tokio::time::interval(s.audit_retention_interval);
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    match store::version(self.db()).await {
                        Ok(v) => self.observe_version(v),
                        Err(err) => tracing::warn!(%err, "cannot read the policy version"),
                    }
                }
                _ = expiry.tick() => {
                    if let Err(err) = self.expire_grants().await {
                        tracing::warn!(%err, "grant expiry failed; retrying");
                    }
                }
                _ = retention.tick() => {
                    match self.purge_audit(s.audit_retention_days, chrono::Utc::now(), false).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(entries = n, "audit entries past their retention purged"),
                        Err(err) => tracing::warn!(%err, "audit retention failed; retrying at the next interval"),
                    }
                }
                _ = usage.tick() => {
                    if let Err(err) = self.flush_usage().await {
                        tracing::warn!(%err, "usage not recorded; retrying");
                    }
                }
                _ = shutdown.wait() => {
                    let _ = self.flush_usage().await;
                    return;
                }
            }
        }
    }

    async fn flush_usage(&self) -> Result<()> {
        let used: Vec<(String, i64)> = match self.inner.usage.lock() {
            Ok(mut u) => u.drain().collect(),
            Err(_) => return Ok(()),
        };
        if used.is_empty() {
            return Ok(());
        }
        let (bindings, grants): (Vec<_>, Vec<_>) = used.into_iter().partition(|(n, _)| n.starts_with("roleBindings/"));
        let strip = |v: Vec<(String, i64)>| -> Vec<(String, i64)> {
            v.into_iter()
                .filter_map(|(n, t)| n.split_once('/').map(|(_, id)| (id.to_owned(), t)))
                .collect()
        };
        let txn = begin_write(self.db()).await?;
        store::set_last_used(&txn, store::Kind::Binding, &strip(bindings)).await?;
        store::set_last_used(&txn, store::Kind::Grant, &strip(grants)).await?;
        txn.commit().await?;
        Ok(())
    }

    fn record_use(&self, granted_by: &str) {
        if granted_by.is_empty() {
            return;
        }
        if let Ok(mut u) = self.inner.usage.lock() {
            u.insert(granted_by.to_owned(), micros(Utc::now()));
        }
    }
}

fn trace_id() -> String {
    crm_platform::telemetry::current_traceparent()
        .and_then(|tp| tp.split('-').nth(1).map(str::to_owned))
        .unwrap_or_default()
}

fn encode<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(Error::internal)
}

fn etag(revision: i64) -> String {
    format!("\"{revision}\"")
}

/// The stored revision an etag names; an empty etag matches any.
fn expect_revision(etag_in: &str, stored: i64, name: &str) -> Result<i64> {
    if etag_in.is_empty() || etag_in == etag(stored) {
        Ok(stored)
    } else {
        Err(Error::EtagMismatch { name: name.to_owned() })
    }
}

fn level_or(v: i32, default: Level) -> Level {
    Level::from_i32(v).unwrap_or(default)
}

impl Permissions {
    /// Moves whenever this replica sees the policy version change.
    pub fn subscribe_epoch(&self) -> watch::Receiver<String> {
        self.inner.epoch.subscribe()
    }
}
