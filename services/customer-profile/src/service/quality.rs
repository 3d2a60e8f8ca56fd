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
    /// Target share of profile updates made by the customers themselves (at least).
    pub self_service_target: f64,
    /// A customer not written or confirmed for longer is stale.
    pub freshness_days: u32,
    /// The entry error rate counts writes of this many days.
    pub entry_window_days: u32,
    /// How often stale customers are looked for (and reminded once each).
    pub stale_check_interval_secs: u64,
    /// How often this replica writes its entry counts to the database.
    pub stats_flush_secs: u64,
    /// How often the KPIs are measured for the exported gauges (only while metrics
    /// are exported over OTLP: a measurement reads every customer).
    pub metrics_interval_secs: u64,
    /// `GetDataQualityReport` answers with a measurement at most this old; 0 measures
    /// every time. Either way one measurement runs at a time.
    pub report_cache_secs: u64,
}

impl QualityConfig {
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        for (key, v) in [
            ("completeness_target", self.completeness_target),
            ("duplicate_rate_target", self.duplicate_rate_target),
            ("entry_error_rate_target", self.entry_error_rate_target),
            ("freshness_target", self.freshness_target),
            ("self_service_target", self.self_service_target),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err((key.into(), "between 0 and 1".into()));
            }
        }
        if self.freshness_days == 0
            || self.entry_window_days == 0
            || self.stale_check_interval_secs == 0
            || self.stats_flush_secs == 0
            || self.metrics_interval_secs == 0
        {
            return Err((
                "freshness_days".into(),
                "freshness_days, entry_window_days, stale_check_interval_secs, stats_flush_secs and metrics_interval_secs must be at least 1"
                    .into(),
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
    pub self_service_rate: Kpi,
    /// (field, filled share, applicable customers)
    pub fields: Vec<(String, f64, i64)>,
    pub customers: i64,
    pub compute_time: DateTime<Utc>,
}

const SCAN_BATCH: u64 = 1000;

impl QualityReport {
    /// The KPIs by their metric label.
    pub fn kpis(&self) -> [(&'static str, &Kpi); 5] {
        [
            ("completeness", &self.completeness),
            ("duplicate_rate", &self.duplicate_rate),
            ("entry_error_rate", &self.entry_error_rate),
            ("freshness", &self.freshness),
            ("self_service_rate", &self.self_service_rate),
        ]
    }
}

/// Observable gauges over the latest measurement: `crm.data_quality.kpi` (label `kpi`,
/// value 0 to 1), `crm.data_quality.alert` (1 when the KPI misses its target) and
/// `crm.customers.active`. Kept alive while registered.
struct Gauges {
    _kpi: opentelemetry::metrics::ObservableGauge<f64>,
    _alert: opentelemetry::metrics::ObservableGauge<u64>,
    _customers: opentelemetry::metrics::ObservableGauge<u64>,
}

type Latest = std::sync::Arc<std::sync::RwLock<Option<QualityReport>>>;

fn register_gauges(latest: &Latest) -> Gauges {
    use opentelemetry::KeyValue;
    let meter = opentelemetry::global::meter("customer-profile");
    let l = latest.clone();
    let kpi = meter
        .f64_observable_gauge("crm.data_quality.kpi")
        .with_description("Data-quality KPI of the customer base, 0 to 1")
        .with_callback(move |o| {
            if let Ok(guard) = l.read()
                && let Some(r) = guard.as_ref()
            {
                for (name, k) in r.kpis() {
                    o.observe(k.value, &[KeyValue::new("kpi", name)]);
                }
            }
        })
        .build();
    let l = latest.clone();
    let alert = meter
        .u64_observable_gauge("crm.data_quality.alert")
        .with_description("1 when the KPI misses its configured target")
        .with_callback(move |o| {
            if let Ok(guard) = l.read()
                && let Some(r) = guard.as_ref()
            {
                for (name, k) in r.kpis() {
                    o.observe(u64::from(!k.ok), &[KeyValue::new("kpi", name)]);
                }
            }
        })
        .build();
    let l = latest.clone();
    let customers = meter
        .u64_observable_gauge("crm.customers.active")
        .with_description("Customers neither deleted nor merged")
        .with_callback(move |o| {
            if let Ok(guard) = l.read()
                && let Some(r) = guard.as_ref()
            {
                o.observe(u64::try_from(r.customers).unwrap_or(0), &[]);
            }
        })
        .build();
    Gauges {
        _kpi: kpi,
        _alert: alert,
        _customers: customers,
    }
}

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

    /// The report for callers: a measurement at most `report_cache_secs` old. One
    /// measurement runs at a time; callers arriving meanwhile wait for it and share it.
    pub async fn cached_quality_report(&self) -> Result<QualityReport> {
        let mut last = self.last_report.lock().await;
        let max_age = std::time::Duration::from_secs(self.settings.quality.report_cache_secs);
        if let Some((at, report)) = last.as_ref()
            && at.elapsed() < max_age
        {
            return Ok(report.clone());
        }
        let report = self.quality_report().await?;
        *last = Some((std::time::Instant::now(), report.clone()));
        Ok(report)
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
        let updates_since = now - Duration::days(i64::from(q.entry_window_days));
        let (self_service, updates) = records::update_counts(&self.db, updates_since).await?;
        Ok(QualityReport {
            completeness: Kpi::at_least(completeness, customers, q.completeness_target),
            duplicate_rate: Kpi::at_most(open, customers, q.duplicate_rate_target),
            entry_error_rate: Kpi::at_most(rejected, accepted + rejected, q.entry_error_rate_target),
            freshness: Kpi::at_least(fresh as f64, customers, q.freshness_target),
            self_service_rate: Kpi::at_least(self_service as f64, updates, q.self_service_target),
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
        let confirm: Vec<String> = self
            .definitions()
            .await?
            .iter()
            .filter(|d| d.self_editable)
            .map(|d| d.path.clone())
            .collect();
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
                feed::append(&txn, events::stale(s.id, &s.owner_user_id, &s.team_id, days, confirm.clone())).await?;
                records::set_reminded(&txn, s.id, now).await?;
            }
            txn.commit().await?;
            self.feed.committed();
            sent += due.len();
        }
    }

    /// Re-wraps up to `limit` data keys wrapped with a retired keyring key, and re-seals
    /// up to `limit` customers not yet sealed under their data key (written before data
    /// keys, or asked to re-seal after a definition change); returns how many it moved.
    /// Data and revisions are unchanged.
    pub async fn reencrypt(&self, limit: u64) -> Result<usize> {
        let defs = self.definitions().await?;
        let mut moved = self.keys.rewrap_retired(limit).await?;
        let ids = records::sealed_with_other_key(&self.db, crm_platform::crypto::DATA_KEY_ID, limit).await?;
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
        let mut measure = tokio::time::interval(std::time::Duration::from_secs(q.metrics_interval_secs));
        let exported = crm_platform::telemetry::metrics_exported();
        let latest: Latest = Latest::default();
        let _gauges = exported.then(|| register_gauges(&latest));
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
                                _ = measure.tick(), if exported => match self.quality_report().await {
                    Ok(report) => {
                        if let Ok(mut guard) = latest.write() {
                            *guard = Some(report);
                        }
                    }
                    Err(err) => tracing::warn!(%err, "data-quality measurement for the metrics failed; retrying later"),
                },
                _ = rekey.tick() => {
                    if let Err(err) = self.finish_erasures().await {
                        tracing::warn!(%err, "finishing erasures from key-store tombstones failed; retrying later");
                    }
                    loop {
                        match self.reencrypt(200).await {
                            Ok(0) => break,
                            Ok(n) => tracing::info!(moved = n, "customers re-encrypted under the active key"),
                            Err(err) => {
                                tracing::warn!(%err, "re-encryption failed; retrying later");
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kpis_compare_with_their_targets() {
        let at_least = Kpi::at_least(19.0, 20, 0.95);
        assert!(at_least.ok && (at_least.value - 0.95).abs() < 1e-9);
        assert!(!Kpi::at_least(18.0, 20, 0.95).ok);
        let at_most = Kpi::at_most(1, 20, 0.03);
        assert!(!at_most.ok, "5 % duplicates misses a 3 % target");
        assert!(
            Kpi::at_most(0, 0, 0.03).ok && Kpi::at_least(0.0, 0, 0.95).ok,
            "nothing measured is no alert"
        );
    }
}
