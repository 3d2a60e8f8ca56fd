//! A ticket's SLA clocks as stored beside it (JSON: small, readable in the database,
//! free to grow fields).

use chrono::{DateTime, Duration, Utc};
use crm_platform::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::domain::sla::{Clock, Metric, Sla, Target};

#[derive(Serialize, Deserialize)]
struct StoredTarget {
    metric: String,
    within_secs: i64,
    business_hours: bool,
}

#[derive(Serialize, Deserialize)]
struct StoredClock {
    metric: String,
    target_secs: i64,
    business_hours: bool,
    started_at: DateTime<Utc>,
    banked_ms: i64,
    running_since: Option<DateTime<Utc>>,
    achieved_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, Deserialize)]
struct StoredSla {
    targets: Vec<StoredTarget>,
    clocks: Vec<StoredClock>,
    waiting_on_customer: bool,
}

fn metric(name: &str) -> Result<Metric> {
    Metric::ALL
        .into_iter()
        .find(|m| m.as_str() == name)
        .ok_or_else(|| Error::internal(anyhow::anyhow!("stored SLA names an unknown metric `{name}`")))
}

pub fn encode(sla: &Sla) -> Result<String> {
    let stored = StoredSla {
        targets: sla
            .targets()
            .iter()
            .map(|t| StoredTarget {
                metric: t.metric.as_str().to_owned(),
                within_secs: t.within.num_seconds(),
                business_hours: t.business_hours,
            })
            .collect(),
        clocks: sla
            .clocks
            .iter()
            .map(|c| StoredClock {
                metric: c.metric.as_str().to_owned(),
                target_secs: c.target.num_seconds(),
                business_hours: c.business_hours,
                started_at: c.started_at,
                banked_ms: c.banked.num_milliseconds(),
                running_since: c.running_since,
                achieved_at: c.achieved_at,
            })
            .collect(),
        waiting_on_customer: sla.waiting_on_customer(),
    };
    serde_json::to_string(&stored).map_err(Error::internal)
}

pub fn decode(text: &str) -> Result<Sla> {
    let stored: StoredSla = serde_json::from_str(text).map_err(Error::internal)?;
    let targets = stored
        .targets
        .iter()
        .map(|t| {
            Ok(Target {
                metric: metric(&t.metric)?,
                within: Duration::seconds(t.within_secs),
                business_hours: t.business_hours,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let clocks = stored
        .clocks
        .iter()
        .map(|c| {
            Ok(Clock {
                metric: metric(&c.metric)?,
                target: Duration::seconds(c.target_secs),
                business_hours: c.business_hours,
                started_at: c.started_at,
                banked: Duration::milliseconds(c.banked_ms),
                running_since: c.running_since,
                achieved_at: c.achieved_at,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Sla::restore(targets, clocks, stored.waiting_on_customer))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::{calendar::Calendar, sla::Calendars, sla::Event};

    #[test]
    fn round_trips() {
        let always = Calendar::always();
        let cals = Calendars {
            business: &always,
            elapsed: &always,
        };
        let mut sla = Sla::new(vec![Target {
            metric: Metric::Resolution,
            within: Duration::hours(8),
            business_hours: true,
        }]);
        let t0 = DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        sla.on(Event::Created, t0, &cals);
        sla.on(
            Event::StatusChanged {
                from: crate::domain::ticket::Status::New,
                to: crate::domain::ticket::Status::PendingCustomer,
            },
            t0 + Duration::minutes(90),
            &cals,
        );
        let back = decode(&encode(&sla).unwrap()).unwrap();
        assert_eq!(back, sla);
        assert!(decode("{\"targets\":[{\"metric\":\"speed\",\"within_secs\":1,\"business_hours\":false}],\"clocks\":[],\"waiting_on_customer\":false}").is_err());
    }
}
