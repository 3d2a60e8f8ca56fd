//! Data-quality KPIs as daily snapshots. customer-profile owns the measurement
//! (completeness, duplicate candidates, refused writes, freshness, self-service
//! updates); once a day (exactly once across replicas) this service takes its report,
//! stores each KPI's value with the target in force, so trends survive later data
//! changes, and sends `DataQualityAlertChanged` when a KPI starts or stops missing
//! its target.

use std::time::Duration;

use crm_platform::{Result, authz::ServiceCredentials, feed, schedule};
use crm_proto::crm::{
    analytics::v1 as pb,
    customer::v1::{self as cpb, customer_profile_service_client::CustomerProfileServiceClient},
};
use prost::Message;
use sea_orm::DatabaseConnection;
use tonic::transport::Channel;

use crate::store::{self, QualityPoint};

const DAY_US: i64 = 86_400_000_000;

/// The daily snapshot job.
#[derive(Clone)]
pub struct Snapshots {
    db: DatabaseConnection,
    feed: feed::Feed,
    client: CustomerProfileServiceClient<Channel>,
    credentials: ServiceCredentials,
    owner: String,
}

/// The KPI points of one report, each with its target and alert state for `day_us`.
pub fn points(report: &cpb::DataQualityReport, day_us: i64, compute_us: i64) -> Vec<QualityPoint> {
    [
        ("completeness", &report.completeness, true),
        ("duplicate_rate", &report.duplicate_rate, false),
        ("entry_error_rate", &report.entry_error_rate, false),
        ("freshness", &report.freshness, true),
        ("self_service_rate", &report.self_service_rate, true),
    ]
    .into_iter()
    .filter_map(|(kpi, k, minimum)| {
        let k = k.as_ref()?;
        // Nothing measured is no alert (customer-profile reports OK then too).
        let alert = k.denominator > 0 && if minimum { k.value < k.target } else { k.value > k.target };
        Some(QualityPoint {
            day_us,
            kpi: kpi.into(),
            value: k.value,
            target: k.target,
            minimum,
            alert,
            numerator: k.numerator,
            denominator: k.denominator,
            compute_us,
        })
    })
    .collect()
}

impl Snapshots {
    pub fn new(db: DatabaseConnection, feed: feed::Feed, channel: Channel, credentials: ServiceCredentials) -> Self {
        Self {
            db,
            feed,
            client: CustomerProfileServiceClient::new(channel),
            credentials,
            owner: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// Takes today's snapshot when due (or now, with `force`: today's is replaced).
    /// Returns the points stored, or `None` when not due or taken elsewhere.
    pub async fn take(&self, force: bool) -> Result<Option<Vec<QualityPoint>>> {
        let now_us = chrono::Utc::now().timestamp_micros();
        let Some(lease) = schedule::claim(
            &self.db,
            "quality-snapshot",
            // Unique per attempt: two snapshots in one process never share a lease.
            &format!("{}/{}", self.owner, uuid::Uuid::new_v4()),
            now_us,
            Duration::from_secs(300),
            force,
        )
        .await?
        else {
            return Ok(None);
        };
        match self.snapshot(&lease, now_us).await {
            Ok(points) => Ok(points),
            Err(err) => {
                schedule::release(&self.db, &lease).await?;
                Err(err)
            }
        }
    }

    async fn snapshot(&self, lease: &schedule::Lease, now_us: i64) -> Result<Option<Vec<QualityPoint>>> {
        let request = self.credentials.request(cpb::GetDataQualityReportRequest::default())?;
        let report = self
            .client
            .clone()
            .get_data_quality_report(request)
            .await
            .map_err(|s| crm_platform::Error::Unavailable(format!("customer-profile's data-quality report: {}", s.message())))?
            .into_inner();
        let day_us = now_us.div_euclid(DAY_US) * DAY_US;
        let points = points(&report, day_us, now_us);
        // Next: the start of tomorrow (UTC).
        let Some(txn) = schedule::completing(&self.db, lease, day_us + DAY_US, now_us).await? else {
            return Ok(None);
        };
        let mut events = Vec::new();
        for p in &points {
            let before = store::last_alert(&txn, &p.kpi, p.day_us).await?.unwrap_or(false);
            if before != p.alert {
                events.push(feed::NewEvent {
                    event_type: "crm.analytics.v1.DataQualityAlertChanged",
                    subject: format!("dataQuality/{}", p.kpi),
                    actor: crate::SERVICE.into(),
                    data: pb::DataQualityAlertChanged {
                        kpi: p.kpi.clone(),
                        value: p.value,
                        target: p.target,
                        target_is_minimum: p.minimum,
                        alert: p.alert,
                        day: Some(feed::from_micros(p.day_us)),
                    }
                    .encode_to_vec(),
                });
            }
            store::upsert_quality(&txn, p).await?;
        }
        feed::append_many(&txn, events).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(Some(points))
    }

    /// Takes the snapshot whenever due, until shutdown (checked every `check`).
    pub async fn run(self, check: Duration, mut shutdown: crm_platform::server::ShutdownSignal) {
        loop {
            if let Err(err) = self.take(false).await {
                tracing::warn!(%err, "data-quality snapshot failed; retrying at the next check");
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(check) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kpi(value: f64, target: f64, denominator: i64) -> Option<cpb::Kpi> {
        Some(cpb::Kpi {
            value,
            target,
            denominator,
            ..Default::default()
        })
    }

    #[test]
    fn a_kpi_alerts_on_the_side_its_target_guards() {
        let report = cpb::DataQualityReport {
            completeness: kpi(0.93, 0.95, 100),
            duplicate_rate: kpi(0.02, 0.03, 100),
            entry_error_rate: kpi(0.05, 0.02, 100),
            freshness: kpi(0.0, 0.98, 0),
            self_service_rate: None,
            ..Default::default()
        };
        let p = points(&report, 0, 0);
        assert_eq!(
            p.iter().map(|p| (p.kpi.as_str(), p.alert)).collect::<Vec<_>>(),
            vec![
                ("completeness", true),
                ("duplicate_rate", false),
                ("entry_error_rate", true),
                ("freshness", false),
            ]
        );
    }
}
