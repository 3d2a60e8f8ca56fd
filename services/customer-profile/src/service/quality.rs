//! Data-quality KPIs, entry statistics, stale-profile reminders and the
//! re-encryption job.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Duration, Utc};
use crm_platform::{Result, db::begin_write, feed, server::ShutdownSignal};
use serde::Deserialize;

use super::Customers;
use crate::{
    domain::{CustomerId, definitions::Definitions},
    events,
    store::{self, records},
};

/// `[customer_profile.quality]`.
#[derive(Debug, Clone, Deserialize)]
pub struct QualityConfig {
    /// Target weighted completeness (at least).
    pub completeness_target: f64,
    /// Target duplicate rate (at most).
    pub duplicate_rate_target: f64,
    /// Target entry error rate (at most).
    pub entry_error_rate_target: f64,
    /// Target share of customers confirmed within `freshness_days` (at least).
    pub freshness_target: f64,
    /// A customer not written or confirmed for longer is stale.
    pub freshness_days: u32,
    /// The entry error rate counts writes of this many days.
    pub entry_window_days: u32,
    /// How often stale customers are looked for (and reminded once each).
    pub stale_check_interval_secs: u64,
    /// How often this replica writes its entry counts to the database.
    pub stats_flush_secs: u64,
}

impl QualityConfig {
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        for (key, v) in [
            ("completeness_target", self.completeness_target),
            ("duplicate_rate_target", self.duplicate_rate_target),
            ("entry_error_rate_target", self.entry_error_rate_target),
            ("freshness_target", self.freshness_target),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err((key.into(), "between 0 and 1".into()));
            }
        }
        if self.freshness_days == 0
            || self.entry_window_days == 0
            || self.stale_check_interval_secs == 0
            || self.stats_flush_secs == 0
        {
            return Err((
                "freshness_days".into(),
                "freshness_days, entry_window_days, stale_check_interval_secs and stats_flush_secs must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Writes accepted and refused by validation since the last flush (this replica).
#[derive(Debug, Default)]
pub struct EntryCounters {
    accepted: AtomicI64,
    rejected: AtomicI64,
}

impl EntryCounters {
    pub fn count(&self, accepted: bool) {
        let c = if accepted { &self.accepted } else { &self.rejected };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Kpi {
    pub value: f64,
    pub target: f64,
    pub ok: bool,
    pub numerator: i64,
    pub denominator: i64,
}

impl Kpi {
    fn at_least(numerator: f64, denominator: i64, target: f64) -> Self {
        let value = if denominator == 0 {
            1.0
        } else {
            numerator / denominator as f64
        };
        Self {
            value,
            target,
            ok: denominator == 0 || value >= target,
            numerator: numerator.round() as i64,
            denominator,
        }
    }

    fn at_most(numerator: i64, denominator: i64, target: f64) -> Self {
        let value = if denominator == 0 {
            0.0
        } else {
            numerator as f64 / denominator as f64
        };
        Self {
            value,
            target,
            ok: denominator == 0 || value <= target,
            numerator,
            denominator,
        }
    }
}

#[derive(Debug, Clone)]
pub struct QualityReport {
    pub completeness: Kpi,
    pub duplicate_rate: Kpi,
    pub entry_error_rate: Kpi,
    pub freshness: Kpi,
    /// (field, filled share, applicable customers)
    pub fields: Vec<(String, f64, i64)>,
    pub customers: i64,
    pub compute_time: DateTime<Utc>,
}

const SCAN_BATCH: u64 = 1000;

impl Customers {
    pub(super) fn count_entry<T>(&self, result: &Result<T>) {
        match result {
            Ok(_) => self.entry.count(true),
            Err(crm_platform::Error::InvalidArgument(_)) => self.entry.count(false),
            Err(_) => {}
        }
    }

    /// Adds this replica's counts to the day's row; on failure they are kept.
    pub async fn flush_entry_stats(&self) -> Result<()> {
        let accepted = self.entry.accepted.swap(0, Ordering::Relaxed);
        let rejected = self.entry.rejected.swap(0, Ordering::Relaxed);
        if accepted == 0 && rejected == 0 {
            return Ok(());
        }
        let day = Utc::now().format("%Y-%m-%d").to_string();
        let result = async {
            let txn = begin_write(&self.db).await?;
            records::add_entry_stats(&txn, &day, accepted, rejected).await?;
            txn.commit().await?;
            Ok(())
        }
        .await;
        if result.is_err() {
            self.entry.accepted.fetch_add(accepted, Ordering::Relaxed);
            self.entry.rejected.fetch_add(rejected, Ordering::Relaxed);
        }
        result
    }

    /// Scans every active customer once (decrypting it) and measures the KPIs.
    pub async fn quality_report(&self) -> Result<QualityReport> {
        if let Err(err) = self.flush_entry_stats().await {
            tracing::warn!(%err, "entry statistics not flushed; the report misses this replica's latest counts");
        }
        let q = &self.settings.quality;
        let defs: std::sync::Arc<Definitions> = self.definitions().await?;
        let weighted: Vec<_> = defs.iter().filter(|d| d.completeness_weight > 0.0).cloned().collect();
        let mut filled = vec![(0i64, 0i64); weighted.len()];
        let now = Utc::now();
        let fresh_since = now - Duration::days(i64::from(q.freshness_days));
        let (mut customers, mut fresh, mut completeness) = (0i64, 0i64, 0.0f64);
        let mut after: Option<CustomerId> = None;
        loop {
            let batch = store::scan_active(&self.db, self.sealer(&defs), after, SCAN_BATCH).await?;
            let Some(last) = batch.last() else { break };
            after = Some(last.id);
            for c in &batch {
                customers += 1;
                completeness += defs.completeness(&c.profile);
                if c.confirm_time >= fresh_since {
                    fresh += 1;
                }
                for (def, slot) in weighted.iter().zip(filled.iter_mut()) {
                    if def.applies(c.profile.kind) {
                        slot.1 += 1;
                        if Definitions::is_filled(def, &c.profile) {
                            slot.0 += 1;
                        }
                    }
                }
            }
        }
        let open = records::count_open_candidates(&self.db, self.settings.matching.review_threshold).await?;
        let since = (now - Duration::days(i64::from(q.entry_window_days) - 1))
            .format("%Y-%m-%d")
            .to_string();
        let (accepted, rejected) = records::entry_stats(&self.db, &since).await?;
        Ok(QualityReport {
            completeness: Kpi::at_least(completeness, customers, q.completeness_target),
            duplicate_rate: Kpi::at_most(open, customers, q.duplicate_rate_target),
            entry_error_rate: Kpi::at_most(rejected, accepted + rejected, q.entry_error_rate_target),
            freshness: Kpi::at_least(fresh as f64, customers, q.freshness_target),
            fields: weighted
                .iter()
                .zip(filled)
                .map(|(d, (n, of))| (d.path.clone(), if of == 0 { 1.0 } else { n as f64 / of as f64 }, of))
                .collect(),
            customers,
            compute_time: now,
        })
    }

    /// Emits one `CustomerStale` reminder per stale customer (claimed once across
    /// replicas). Returns how many were sent.
    pub async fn remind_stale(&self) -> Result<usize> {
        let q = &self.settings.quality;
        let mut sent = 0;
        loop {
            let now = super::now();
            let before = now - Duration::days(i64::from(q.freshness_days));
            let txn = begin_write(&self.db).await?;
            let due = records::claim_stale(&txn, before, 500).await?;
            if due.is_empty() {
                txn.rollback().await?;
                return Ok(sent);
            }
            for s in &due {
                let days = (now - s.confirm_time).num_days();
                feed::append(&txn, events::stale(s.id, &s.owner_user_id, &s.team_id, days)).await?;
                records::set_reminded(&txn, s.id, now).await?;
            }
            txn.commit().await?;
            self.feed.committed();
            sent += due.len();
        }
    }

    /// Re-seals up to `limit` customers still sealed with a retired key; returns how
    /// many it moved. Data and revisions are unchanged.
    pub async fn reencrypt(&self, limit: u64) -> Result<usize> {
        let defs = self.definitions().await?;
        let ids = records::sealed_with_other_key(&self.db, self.keyring.active_key(), limit).await?;
        let mut moved = 0;
        for id in ids {
            let txn = begin_write(&self.db).await?;
            if let Some(c) = store::find_for_update(&txn, self.sealer(&defs), id).await?
                && store::update(&txn, self.sealer(&defs), &c, c.revision).await?
            {
                moved += 1;
            }
            txn.commit().await?;
        }
        Ok(moved)
    }

    /// Background work of this service, until shutdown: entry-count flushes, stale
    /// reminders, re-encryption after a key rotation.
    pub async fn run_jobs(self, mut shutdown: ShutdownSignal) {
        let q = self.settings.quality.clone();
        let mut flush = tokio::time::interval(std::time::Duration::from_secs(q.stats_flush_secs));
        let mut stale = tokio::time::interval(std::time::Duration::from_secs(q.stale_check_interval_secs));
        let mut rekey = tokio::time::interval(self.settings.reencrypt_interval);
        loop {
            tokio::select! {
                _ = shutdown.wait() => {
                    if let Err(err) = self.flush_entry_stats().await {
                        tracing::warn!(%err, "entry statistics lost at shutdown");
                    }
                    return;
                }
                _ = flush.tick() => {
                    if let Err(err) = self.flush_entry_stats().await {
                        tracing::warn!(%err, "entry statistics not flushed; retrying later");
                    }
                }
                _ = stale.tick() => match self.remind_stale().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(reminded = n, "stale-profile reminders sent"),
                    Err(err) => tracing::warn!(%err, "stale-profile reminders failed; retrying later"),
                },
                _ = rekey.tick() => loop {
                    match self.reencrypt(200).await {
                        Ok(0) => break,
                        Ok(n) => tracing::info!(moved = n, "customers re-encrypted under the active key"),
                        Err(err) => {
                            tracing::warn!(%err, "re-encryption failed; retrying later");
                            break;
                        }
                    }
                },
            }
        }
    }
}
