//! Retention: data past its period is purged on schedule, one run at a time across
//! replicas (PostgreSQL: a transaction-scoped advisory lock; SQLite: its single
//! writer). Interactions go by whole monthly partitions on PostgreSQL (and by rows
//! from the default partition), by rows on SQLite. A run that deletes anything is a
//! `DataPurged` event, which the audit forwarder records.

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

/// `[customer_profile.retention]`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct RetentionConfig {
    /// Interactions older than this many days are purged; 0 keeps them forever.
    pub interactions_days: u32,
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
        let report = pb::RetentionReport {
            dry_run,
            classes: vec![class],
            run_time: Some(feed::timestamp(now)),
            ran: true,
        };
        let purged = report.classes.iter().any(|c| c.rows > 0 || !c.partitions.is_empty());
        if dry_run || !purged {
            txn.rollback().await?;
            return Ok(report);
        }
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
        Ok(report)
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
