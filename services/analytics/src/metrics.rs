//! Business figures exported as metrics (for the dashboards), read from the database
//! every minute so every replica reports the same values:
//!
//! - `crm.analytics.at_risk_customers`: customers at or above the churn threshold;
//! - `crm.analytics.lifetime_value`: the summed predicted lifetime value (label
//!   `currency`);
//! - `crm.analytics.model_version` and `crm.analytics.model_age` (seconds since the
//!   fit), label `model`;
//! - `crm.analytics.projection_lag` (seconds), label `source`: how stale the
//!   projection of each followed feed may be.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use crm_platform::{Result, consumer, db::query};
use opentelemetry::{KeyValue, metrics::ObservableGauge};
use sea_orm::DatabaseConnection;

use crate::{models, projection, store};

/// The figures last read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub at_risk: u64,
    pub lifetime_value: f64,
    /// (model, version, fit time µs).
    pub models: Vec<(String, i64, i64)>,
    /// (source, lag seconds).
    pub lags: Vec<(String, f64)>,
}

/// Reads the figures.
pub async fn read(db: &DatabaseConnection) -> Result<Figures> {
    let rows = query(
        db,
        "SELECT COUNT(CASE WHEN at_risk = 1 THEN 1 END) AS at_risk, SUM(clv) AS clv FROM scores",
        vec![],
    )
    .await?;
    let (at_risk, lifetime_value) = match rows.first() {
        Some(r) => (
            r.try_get::<Option<i64>>("", "at_risk")?.unwrap_or(0),
            r.try_get::<Option<f64>>("", "clv")?.unwrap_or(0.0),
        ),
        None => (0, 0.0),
    };
    let mut figures = Figures {
        at_risk: u64::try_from(at_risk).unwrap_or(0),
        lifetime_value,
        ..Figures::default()
    };
    for model in [models::CLV, models::RULES] {
        if let Some(m) = store::model(db, model, None).await? {
            figures.models.push((model.to_owned(), m.version, m.fit_us));
        }
    }
    let now = chrono::Utc::now().timestamp_micros();
    for source in [projection::CUSTOMER_PROFILE, projection::TICKETING, projection::SEGMENTATION] {
        if let Some(s) = consumer::status(db, source.source).await? {
            figures.lags.push((source.source.to_owned(), s.lag_us(now) as f64 / 1e6));
        }
    }
    Ok(figures)
}

/// The registered gauges; kept alive while registered.
pub struct Gauges {
    _gauges: Vec<ObservableGauge<f64>>,
}

/// Observes one value with its labels.
type Observe<'a> = &'a dyn Fn(f64, &[KeyValue]);

/// Registers the gauges over `latest`.
fn register(latest: &Arc<RwLock<Figures>>, currency: &str) -> Gauges {
    let meter = opentelemetry::global::meter("analytics");
    let read = |f: fn(&Figures, Observe<'_>)| {
        let l = latest.clone();
        move |o: &dyn opentelemetry::metrics::AsyncInstrument<f64>| {
            if let Ok(figures) = l.read() {
                f(&figures, &|v, labels| o.observe(v, labels));
            }
        }
    };
    let currency = currency.to_owned();
    let l = latest.clone();
    Gauges {
        _gauges: vec![
            meter
                .f64_observable_gauge("crm.analytics.at_risk_customers")
                .with_description("Customers whose churn risk reaches the threshold")
                .with_callback(read(|f, o| o(f.at_risk as f64, &[])))
                .build(),
            meter
                .f64_observable_gauge("crm.analytics.lifetime_value")
                .with_description("Summed predicted customer lifetime value")
                .with_callback(move |o| {
                    if let Ok(f) = l.read() {
                        o.observe(f.lifetime_value, &[KeyValue::new("currency", currency.clone())]);
                    }
                })
                .build(),
            meter
                .f64_observable_gauge("crm.analytics.model_version")
                .with_description("Version of the latest fit of each model")
                .with_callback(read(|f, o| {
                    for (model, version, _) in &f.models {
                        o(*version as f64, &[KeyValue::new("model", model.clone())]);
                    }
                }))
                .build(),
            meter
                .f64_observable_gauge("crm.analytics.model_age")
                .with_unit("s")
                .with_description("Time since the latest fit of each model")
                .with_callback(read(|f, o| {
                    let now = chrono::Utc::now().timestamp_micros();
                    for (model, _, fit_us) in &f.models {
                        o((now - fit_us) as f64 / 1e6, &[KeyValue::new("model", model.clone())]);
                    }
                }))
                .build(),
            meter
                .f64_observable_gauge("crm.analytics.projection_lag")
                .with_unit("s")
                .with_description("How stale the projection of each followed feed may be")
                .with_callback(read(|f, o| {
                    for (source, lag) in &f.lags {
                        o(*lag, &[KeyValue::new("source", source.clone())]);
                    }
                }))
                .build(),
        ],
    }
}

/// Keeps the figures fresh (every `every`) while the gauges are registered, until
/// shutdown.
pub async fn run(db: DatabaseConnection, currency: String, every: Duration, mut shutdown: crm_platform::server::ShutdownSignal) {
    let latest = Arc::new(RwLock::new(Figures::default()));
    let _gauges = register(&latest, &currency);
    loop {
        match read(&db).await {
            Ok(figures) => {
                if let Ok(mut l) = latest.write() {
                    *l = figures;
                }
            }
            Err(err) => tracing::warn!(%err, "reading the analytics figures failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
