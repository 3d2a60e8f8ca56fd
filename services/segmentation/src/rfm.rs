//! RFM: recency, frequency and monetary value of each customer's orders over a
//! window, scored 1 to 5 against the quintile boundaries of the active population
//! (customers with an order in the window), and the standard named groups.
//!
//! Ties are deterministic: a score depends on the value alone (how many of the four
//! boundaries it reaches), so equal values always score alike. Boundaries move only
//! with a full computation (scheduled); an order between two scores its customer
//! against the current boundaries.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use crm_platform::{
    Result,
    db::begin_write,
    feed::{self, NewEvent},
};
use crm_proto::crm::segmentation::v1 as pb;
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::{Deserialize, Serialize};

use crate::store::rfm::{self as store, Raw, Scored};

/// `[segmentation.rfm]`.
#[derive(Debug, Clone, Deserialize)]
pub struct RfmConfig {
    /// Orders placed within this many days count.
    pub window_days: u32,
    /// Monetary values are summed in this currency (orders in others count for
    /// recency and frequency only).
    pub currency: String,
    /// How often the full computation (new boundaries, every customer) runs.
    pub recompute_interval_secs: u64,
    /// How often the population is compared with the one the boundaries were computed
    /// on: a first order, or a population grown or shrunk by a tenth, computes anew
    /// without waiting for the period.
    pub drift_check_secs: u64,
}

/// Whether the boundaries are out of date for a population of `active` people.
pub fn drifted(bounds: Option<&Boundaries>, active: i64) -> bool {
    match bounds {
        None => active > 0,
        Some(b) => (active - b.population).abs() * 10 > b.population.max(1),
    }
}

/// The four boundaries between the fifths of each measure, ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boundaries {
    pub recency: [i64; 4],
    pub frequency: [i64; 4],
    pub monetary: [i64; 4],
    pub population: i64,
    pub compute_us: i64,
}

/// The values at the 20th, 40th, 60th and 80th percentile positions.
fn quintiles(mut values: Vec<i64>) -> [i64; 4] {
    values.sort_unstable();
    let n = values.len();
    if n == 0 {
        return [0; 4];
    }
    std::array::from_fn(|k| values[(k + 1) * n / 5])
}

impl Boundaries {
    pub fn of(raws: &[Raw], compute_us: i64) -> Self {
        Self {
            recency: quintiles(raws.iter().map(|r| r.recency_days).collect()),
            frequency: quintiles(raws.iter().map(|r| r.frequency).collect()),
            monetary: quintiles(raws.iter().map(|r| r.monetary_micros).collect()),
            population: i64::try_from(raws.len()).unwrap_or(i64::MAX),
            compute_us,
        }
    }

    /// Scores one customer: higher is better; for recency, fewer days is better.
    pub fn score(&self, r: &Raw) -> Scored {
        let reached = |v: i64, b: &[i64; 4]| b.iter().filter(|t| v >= **t).count() as i32;
        let recency_score = 5 - reached(r.recency_days, &self.recency).min(4);
        let frequency_score = 1 + reached(r.frequency, &self.frequency);
        let monetary_score = 1 + reached(r.monetary_micros, &self.monetary);
        Scored {
            raw: r.clone(),
            recency_score,
            frequency_score,
            monetary_score,
            group: group(recency_score, frequency_score),
        }
    }
}

/// The named group of a recency and a frequency score (1 to 5 each).
pub fn group(r: i32, f: i32) -> pb::RfmGroup {
    use pb::RfmGroup as G;
    match (r, f) {
        (5, 4..=5) => G::Champions,
        (3..=4, 4..=5) => G::Loyal,
        (4..=5, 2..=3) => G::PotentialLoyalist,
        (5, 1) => G::New,
        (4, 1) => G::Promising,
        (3, 3) => G::NeedAttention,
        (3, 1..=2) => G::AboutToSleep,
        (1..=2, 5) => G::CannotLose,
        (1..=2, 3..=4) => G::AtRisk,
        (1, 1) => G::Lost,
        (1..=2, 1..=2) => G::Hibernating,
        _ => G::Unspecified,
    }
}

fn changed(person: &str, previous: pb::RfmGroup, now: pb::RfmGroup) -> NewEvent {
    NewEvent {
        event_type: "crm.segmentation.v1.RfmGroupChanged",
        subject: format!("customers/{person}"),
        actor: crate::SERVICE.into(),
        data: pb::RfmGroupChanged {
            customer: format!("customers/{person}"),
            previous: previous as i32,
            group: now as i32,
        }
        .encode_to_vec(),
    }
}

/// Rescores `people` against the current boundaries (in the caller's transaction:
/// an order, a merge or an erasure applied from the feed); a group that changes is an
/// event. Nothing before the first full computation.
pub async fn refresh<C: ConnectionTrait>(conn: &C, cfg: &RfmConfig, people: &[String], now: DateTime<Utc>) -> Result<()> {
    let Some(bounds) = store::boundaries(conn).await? else {
        return Ok(());
    };
    let since = now.timestamp_micros() - i64::from(cfg.window_days) * 86_400_000_000;
    for person in people {
        let previous = store::group_of(conn, person).await?;
        let current = match store::raw_of(conn, person, &cfg.currency, since, now.timestamp_micros()).await? {
            Some(raw) => {
                let scored = bounds.score(&raw);
                store::upsert(conn, std::slice::from_ref(&scored), now.timestamp_micros()).await?;
                scored.group
            }
            None => {
                store::remove(conn, person).await?;
                pb::RfmGroup::Unspecified
            }
        };
        if current != previous {
            feed::append(conn, changed(person, previous, current)).await?;
        }
    }
    Ok(())
}

/// The full computation: new boundaries from the whole active population, every
/// customer rescored, group changes as events; one run at a time across replicas
/// (a transaction-scoped advisory lock on PostgreSQL, the write lock on SQLite).
/// Returns the population.
pub async fn recompute(db: &DatabaseConnection, cfg: &RfmConfig, now: DateTime<Utc>) -> Result<i64> {
    let txn = begin_write(db).await?;
    if txn.get_database_backend() == DbBackend::Postgres {
        let locked = txn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || ':rfm')) AS locked",
            ))
            .await?
            .map(|r| r.try_get::<bool>("", "locked"))
            .transpose()?
            .unwrap_or(false);
        if !locked {
            txn.rollback().await?;
            return Ok(-1);
        }
    }
    let now_us = now.timestamp_micros();
    let since = now_us - i64::from(cfg.window_days) * 86_400_000_000;
    let raws = store::raw_all(&txn, &cfg.currency, since, now_us).await?;
    let bounds = Boundaries::of(&raws, now_us);
    let before: BTreeMap<String, pb::RfmGroup> = store::groups(&txn).await?;
    let scored: Vec<Scored> = raws.iter().map(|r| bounds.score(r)).collect();
    store::upsert_all(&txn, &scored, now_us).await?;
    let active: std::collections::HashSet<&str> = raws.iter().map(|r| r.person.as_str()).collect();
    let mut events = Vec::new();
    let mut gone = Vec::new();
    for (person, previous) in &before {
        if !active.contains(person.as_str()) {
            gone.push(person.clone());
            events.push(changed(person, *previous, pb::RfmGroup::Unspecified));
        }
    }
    store::remove_all(&txn, &gone).await?;
    for s in &scored {
        let previous = before.get(&s.raw.person).copied().unwrap_or(pb::RfmGroup::Unspecified);
        if previous != s.group {
            events.push(changed(&s.raw.person, previous, s.group));
        }
    }
    feed::append_many(&txn, events).await?;
    store::save_boundaries(&txn, &bounds).await?;
    // Scores and groups moved for everyone: segments reading RFM are evaluated anew.
    crate::store::segments::mark_stale(&txn, crate::rule::deps::RFM).await?;
    txn.commit().await?;
    Ok(bounds.population)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_is_a_first_order_or_a_tenth() {
        assert!(!drifted(None, 0));
        assert!(drifted(None, 1));
        let b = Boundaries {
            population: 100,
            ..Boundaries::default()
        };
        assert!(!drifted(Some(&b), 105));
        assert!(drifted(Some(&b), 111));
        assert!(drifted(Some(&b), 89));
    }

    fn raw(person: &str, r: i64, f: i64, m: i64) -> Raw {
        Raw {
            person: person.into(),
            recency_days: r,
            frequency: f,
            monetary_micros: m,
        }
    }

    #[test]
    fn quintiles_split_the_population_and_ties_score_alike() {
        let raws: Vec<Raw> = (0..10).map(|i| raw(&format!("p{i}"), i, i + 1, (i + 1) * 100)).collect();
        let b = Boundaries::of(&raws, 0);
        assert_eq!(b.frequency, [3, 5, 7, 9]);
        let scores: Vec<i32> = raws.iter().map(|r| b.score(r).frequency_score).collect();
        assert_eq!(scores, vec![1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
        let recency: Vec<i32> = raws.iter().map(|r| b.score(r).recency_score).collect();
        assert_eq!(recency, vec![5, 5, 4, 4, 3, 3, 2, 2, 1, 1], "fewer days is better");
        // Everyone alike: everyone scores alike, whatever the order.
        let same: Vec<Raw> = (0..7).map(|i| raw(&format!("s{i}"), 3, 2, 50)).collect();
        let b = Boundaries::of(&same, 0);
        let first = b.score(&same[0]);
        assert!(same.iter().all(|r| {
            let s = b.score(r);
            (s.recency_score, s.frequency_score, s.monetary_score)
                == (first.recency_score, first.frequency_score, first.monetary_score)
        }));
        assert_eq!(Boundaries::of(&[], 0).population, 0);
    }

    #[test]
    fn every_score_pair_has_its_group() {
        use pb::RfmGroup as G;
        for r in 1..=5 {
            for f in 1..=5 {
                assert_ne!(group(r, f), G::Unspecified, "R{r} F{f}");
            }
        }
        assert_eq!(group(5, 5), G::Champions);
        assert_eq!(group(5, 1), G::New);
        assert_eq!(group(1, 5), G::CannotLose);
        assert_eq!(group(1, 1), G::Lost);
        assert_eq!(group(2, 2), G::Hibernating);
        assert_eq!(group(3, 3), G::NeedAttention);
    }
}
