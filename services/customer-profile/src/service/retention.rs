//! Retention: data past its period is purged on schedule, one run at a time across
//! replicas (PostgreSQL: a transaction-scoped advisory lock; SQLite: its single
//! writer). Per data class:
//! - interactions: whole monthly partitions on PostgreSQL (and rows of the default
//!   partition), rows on SQLite;
//! - closed leads (leads and prospects never converted, closed, i.e. deleted, longer
//!   than the period): erased like a data-subject erasure (crypto-shredded), a
//!   bounded number per run; an erasure is idempotent, so a replica racing past the
//!   lock is harmless;
//! - erasure tombstones: the key store's tombstones and the erasure records. Keep them
//!   longer than any data backup: a backup older than its tombstones restores
//!   customers whose sealed data no key opens, and whose plain columns are not
//!   scrubbed again.
//!
//! A run that removes anything is a `DataPurged` event, which the audit forwarder
//! records (with each erasure's own `CustomerErased`).

use chrono::{DateTime, Duration, Utc};
use crm_platform::{
    Result,
    db::begin_write,
    feed::{self, NewEvent},
};
use crm_proto::crm::customer::v1 as pb;
use prost::Message;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde::Deserialize;

use super::Customers;
use crate::store::activity as store;

/// Rows deleted per statement.
const DELETE_BATCH: u64 = 10_000;

/// Closed leads erased per run (the next run takes the rest).
const LEADS_PER_RUN: u64 = 500;

/// `[customer_profile.retention]`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct RetentionConfig {
    /// Interactions older than this many days are purged; 0 keeps them forever.
    pub interactions_days: u32,
    /// Leads and prospects never converted and closed (deleted) this many days ago
    /// are erased; 0 keeps them.
    pub closed_leads_days: u32,
    /// Erasure tombstones (key store) and records are dropped after this many days;
    /// 0 keeps them. Longer than any data backup is kept.
    pub erased_tombstones_days: u32,
    /// How often the scheduled run looks for expired data.
    pub interval_secs: u64,
}

impl Customers {
    /// Purges what is past its retention period at `now` (or, with `dry_run`, only
    /// counts it). `ran` is false when another replica's run holds the lock.
    pub async fn purge_expired(&self, actor: &str, dry_run: bool, now: DateTime<Utc>) -> Result<pb::RetentionReport> {
        let cfg = self.settings.retention;
        let txn = begin_write(&self.db).await?;
        let postgres = txn.get_database_backend() == DbBackend::Postgres;
        if postgres {
            let row = txn
                .query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || ':retention')) AS locked",
                ))
                .await?;
            let locked: bool = match row {
                Some(r) => r.try_get("", "locked")?,
                None => false,
            };
            if !locked {
                txn.rollback().await?;
                return Ok(pb::RetentionReport {
                    dry_run,
                    classes: Vec::new(),
                    run_time: Some(feed::timestamp(now)),
                    ran: false,
                });
            }
        }
        let mut class = pb::RetentionClassReport {
            data_class: "interactions".into(),
            retention_days: i32::try_from(cfg.interactions_days).unwrap_or(i32::MAX),
            ..Default::default()
        };
        if cfg.interactions_days > 0 {
            let cutoff = now - Duration::days(i64::from(cfg.interactions_days));
            let cutoff_us = cutoff.timestamp_micros();
            class.cutoff_time = Some(feed::timestamp(cutoff));
            if postgres {
                for partition in store::partitions_before(&txn, cutoff).await? {
                    class.rows += store::count_interactions(&txn, &partition, None).await?;
                    if !dry_run {
                        store::drop_partition(&txn, &partition).await?;
                    }
                    class.partitions.push(partition);
                }
                class.rows += if dry_run {
                    store::count_interactions(&txn, "interactions_default", Some(cutoff_us)).await?
                } else {
                    let n = store::delete_interactions_before(&txn, "interactions_default", cutoff_us, DELETE_BATCH).await?;
                    i64::try_from(n).unwrap_or(i64::MAX)
                };
            } else {
                class.rows += if dry_run {
                    store::count_interactions(&txn, "interactions", Some(cutoff_us)).await?
                } else {
                    let n = store::delete_interactions_before(&txn, "interactions", cutoff_us, DELETE_BATCH).await?;
                    i64::try_from(n).unwrap_or(i64::MAX)
                };
            }
        }
        let tombstones = self.expired_tombstones(&txn, dry_run, now).await?;
        let leads = self.closed_leads(&txn, now).await?;
        let mut report = pb::RetentionReport {
            dry_run,
            classes: vec![class, tombstones],
            run_time: Some(feed::timestamp(now)),
            ran: true,
        };
        let purged = report.classes.iter().any(|c| c.rows > 0 || !c.partitions.is_empty());
        if purged && !dry_run {
            feed::append(
                &txn,
                NewEvent {
                    event_type: "crm.customer.v1.DataPurged",
                    subject: "customers".into(),
                    actor: actor.to_owned(),
                    data: pb::DataPurged {
                        report: Some(report.clone()),
                    }
                    .encode_to_vec(),
                },
            )
            .await?;
            txn.commit().await?;
            self.feed.committed();
        } else {
            txn.rollback().await?;
        }
        // Closed leads: each an erasure, in transactions of its own with its own
        // `CustomerErased` event (and so its own audit entry).
        let days = cfg.closed_leads_days;
        let mut leads_class = pb::RetentionClassReport {
            data_class: "closed_leads".into(),
            retention_days: i32::try_from(days).unwrap_or(i32::MAX),
            cutoff_time: (days > 0).then(|| feed::timestamp(now - Duration::days(i64::from(days)))),
            rows: i64::try_from(leads.len()).unwrap_or(i64::MAX),
            ..Default::default()
        };
        if !dry_run {
            leads_class.rows = self.erase_leads(&leads, days).await;
        }
        report.classes.push(leads_class);
        Ok(report)
    }

    /// The erasure tombstones and records past their period: counted, or deleted.
    async fn expired_tombstones(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        dry_run: bool,
        now: DateTime<Utc>,
    ) -> Result<pb::RetentionClassReport> {
        let days = self.settings.retention.erased_tombstones_days;
        let mut class = pb::RetentionClassReport {
            data_class: "erased_tombstones".into(),
            retention_days: i32::try_from(days).unwrap_or(i32::MAX),
            ..Default::default()
        };
        if days == 0 {
            return Ok(class);
        }
        let cutoff = now - Duration::days(i64::from(days));
        class.cutoff_time = Some(feed::timestamp(cutoff));
        // Tombstones first: a record without its tombstone is harmless, a tombstone
        // without its record would be erased again.
        class.rows = crate::store::keys::purge_tombstones(self.keys.db(), cutoff, dry_run).await?;
        crate::store::erasure::purge_records(txn, cutoff.timestamp_micros(), dry_run).await?;
        Ok(class)
    }

    async fn closed_leads(&self, txn: &sea_orm::DatabaseTransaction, now: DateTime<Utc>) -> Result<Vec<String>> {
        let days = self.settings.retention.closed_leads_days;
        if days == 0 {
            return Ok(Vec::new());
        }
        let cutoff = now - Duration::days(i64::from(days));
        crate::store::erasure::closed_leads(txn, cutoff, LEADS_PER_RUN).await
    }

    /// Erases `ids` (closed leads); returns how many were erased. One that fails is
    /// logged and left to the next run.
    async fn erase_leads(&self, ids: &[String], days: u32) -> i64 {
        let reason = format!("retention: a lead never converted, closed over {days} days ago");
        let mut erased = 0;
        for id in ids {
            let Ok(uuid) = uuid::Uuid::parse_str(id) else { continue };
            match self
                .erase("retention", crate::domain::CustomerId::from_uuid(uuid), &reason, "")
                .await
            {
                Ok(_) => erased += 1,
                Err(err) => tracing::warn!(customer = %id, %err, "closed lead not erased; the next run retries"),
            }
        }
        erased
    }

    /// The scheduled run, every `interval_secs`.
    pub async fn run_retention(self, mut shutdown: crm_platform::server::ShutdownSignal) {
        let every = std::time::Duration::from_secs(self.settings.retention.interval_secs.max(1));
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.purge_expired("system", false, Utc::now()).await {
                Ok(report) => {
                    for c in report.classes.iter().filter(|c| c.rows > 0) {
                        tracing::info!(class = %c.data_class, rows = c.rows, partitions = ?c.partitions, "retention purge");
                    }
                }
                Err(err) => tracing::warn!(%err, "retention run failed; retrying at the next interval"),
            }
        }
    }
}
