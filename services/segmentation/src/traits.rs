//! Computed traits: per-person aggregates named in configuration
//! (`segmentation.traits`), e.g. `orders.count_90d`, `orders.total_365d`,
//! `last_order_at`, `favourite_category`, `preferred_channel`,
//! `events.product_view.count_7d`. They are recomputed for a person in the
//! projection's transaction when an order, an interaction, a merge or an erasure
//! touches it, and for everyone on a schedule (time windows move).

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use chrono::{DateTime, Utc};
use crm_platform::{
    Error, Result,
    db::{begin_write, exec, query},
    migrate::Dialect,
};
use crm_proto::crm::{common::v1::Channel, customer::v1::InteractionKind};
use sea_orm::{ConnectionTrait, Value};

pub fn migration(_: Dialect) -> Vec<String> {
    vec![
        "CREATE TABLE traits (person_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, update_us BIGINT NOT NULL, \
         PRIMARY KEY (person_id, name))"
            .into(),
        "CREATE INDEX traits_name ON traits (name, value)".into(),
    ]
}

/// Traits declared over the API, and how far their first computation got.
pub fn definitions_migration(_: Dialect) -> Vec<String> {
    vec![
        "CREATE TABLE trait_definitions (name TEXT PRIMARY KEY, actor TEXT NOT NULL, create_us BIGINT NOT NULL, \
         backfill_us BIGINT NOT NULL)"
            .into(),
    ]
}

/// A trait declared over the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub name: String,
    pub actor: String,
    pub create_us: i64,
    /// When everyone's value was first computed; 0 while pending.
    pub backfill_us: i64,
}

pub async fn declared<C: ConnectionTrait>(conn: &C) -> Result<Vec<Definition>> {
    query(
        conn,
        "SELECT name, actor, create_us, backfill_us FROM trait_definitions ORDER BY name",
        vec![],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(Definition {
            name: r.try_get("", "name")?,
            actor: r.try_get("", "actor")?,
            create_us: r.try_get("", "create_us")?,
            backfill_us: r.try_get("", "backfill_us")?,
        })
    })
    .collect()
}

/// The traits in force: the configured ones, then those declared over the API. The
/// projection, rule validation and the schedule share one registry; it reloads the
/// declared ones from the database (another replica may have declared one).
#[derive(Debug, Clone)]
pub struct Registry {
    configured: Traits,
    current: Arc<RwLock<Traits>>,
    wake: Arc<tokio::sync::Notify>,
}

impl Registry {
    pub fn new(configured: Traits) -> Self {
        Self {
            current: Arc::new(RwLock::new(configured.clone())),
            configured,
            wake: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The traits in force now.
    pub fn current(&self) -> Traits {
        self.current.read().map_or_else(|p| p.into_inner().clone(), |t| t.clone())
    }

    pub fn is_configured(&self, name: &str) -> bool {
        self.configured.traits.iter().any(|(n, _)| n == name)
    }

    /// Resolves when a trait was declared here (its backfill is due).
    pub async fn declared_one(&self) {
        self.wake.notified().await;
    }

    /// Reads the declared traits anew.
    pub async fn reload<C: ConnectionTrait>(&self, conn: &C) -> Result<()> {
        let mut next = self.configured.clone();
        for d in declared(conn).await? {
            match parse(&d.name) {
                Ok(t) if !self.is_configured(&d.name) => next.traits.push((d.name, t)),
                Ok(_) => {}
                Err(e) => tracing::warn!(trait_name = %d.name, error = %e, "declared trait ignored"),
            }
        }
        if let Ok(mut current) = self.current.write() {
            *current = next;
        }
        Ok(())
    }

    /// Declares a trait (computed for everyone in the background).
    pub async fn declare(&self, db: &sea_orm::DatabaseConnection, actor: &str, name: &str) -> Result<Definition> {
        parse(name).map_err(|e| Error::invalid("computed_trait_id", e))?;
        let exists = || Error::AlreadyExists {
            resource_type: "crm.segmentation.v1.ComputedTraitDefinition",
            name: format!("computedTraits/{name}"),
        };
        if self.is_configured(name) {
            return Err(exists());
        }
        let d = Definition {
            name: name.to_owned(),
            actor: actor.to_owned(),
            create_us: Utc::now().timestamp_micros(),
            backfill_us: 0,
        };
        let txn = begin_write(db).await?;
        let n = exec(
            &txn,
            "INSERT INTO trait_definitions (name, actor, create_us, backfill_us) VALUES (?, ?, ?, 0) ON CONFLICT (name) DO NOTHING",
            vec![name.into(), actor.into(), d.create_us.into()],
        )
        .await?;
        if n != 1 {
            return Err(exists());
        }
        txn.commit().await?;
        self.reload(db).await?;
        self.wake.notify_one();
        Ok(d)
    }

    /// Removes a declared trait and its values, unless a segment's rule reads it.
    pub async fn remove(&self, db: &sea_orm::DatabaseConnection, name: &str) -> Result<()> {
        let not_found = || Error::NotFound {
            resource_type: "crm.segmentation.v1.ComputedTraitDefinition",
            name: format!("computedTraits/{name}"),
        };
        if self.is_configured(name) {
            return Err(Error::FailedPrecondition {
                reason: "CONFIGURED",
                subject: format!("computedTraits/{name}"),
                message: "a configured trait is removed from `segmentation.traits`, not over the API".into(),
            });
        }
        let txn = begin_write(db).await?;
        crate::segments::refuse_if_read(&txn, &format!("computedTraits/{name}"), "trait", |rule| {
            rule.conditions()
                .iter()
                .any(|c| matches!(&c.subject, crate::rule::Subject::Trait { name: n, .. } if n == name))
        })
        .await?;
        if exec(&txn, "DELETE FROM trait_definitions WHERE name = ?", vec![name.into()]).await? == 0 {
            return Err(not_found());
        }
        exec(&txn, "DELETE FROM traits WHERE name = ?", vec![name.into()]).await?;
        txn.commit().await?;
        self.reload(db).await
    }

    /// Computes every pending declared trait for everyone; returns how many.
    pub async fn backfill(&self, db: &sea_orm::DatabaseConnection) -> Result<usize> {
        let pending: Vec<Definition> = declared(db).await?.into_iter().filter(|d| d.backfill_us == 0).collect();
        for d in &pending {
            let Ok(t) = parse(&d.name) else { continue };
            let one = Traits {
                traits: vec![(d.name.clone(), t)],
                currency: self.configured.currency.clone(),
            };
            let txn = begin_write(db).await?;
            let now = Utc::now();
            one.refresh_all(&txn, now).await?;
            exec(
                &txn,
                "UPDATE trait_definitions SET backfill_us = ? WHERE name = ?",
                vec![now.timestamp_micros().into(), d.name.as_str().into()],
            )
            .await?;
            crate::store::segments::mark_stale(&txn, crate::rule::deps::TRAITS).await?;
            txn.commit().await?;
        }
        Ok(pending.len())
    }
}

/// What a trait computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trait {
    /// Orders (not cancelled or refunded) in the last `days`.
    OrdersCount { days: u32 },
    /// Their total in the RFM currency, in millionths.
    OrdersTotal { days: u32 },
    /// When the last order was placed (RFC 3339).
    LastOrderAt,
    /// The category bought most often (ties: the first by name).
    FavouriteCategory,
    /// The channel with most interactions (ties: the first by number).
    PreferredChannel,
    /// Interactions of a kind in the last `days`.
    EventsCount { kind: i32, days: u32 },
}

impl Trait {
    /// Does an order change it?
    pub fn reads_orders(&self) -> bool {
        matches!(
            self,
            Self::OrdersCount { .. } | Self::OrdersTotal { .. } | Self::LastOrderAt | Self::FavouriteCategory
        )
    }
}

fn days(text: &str, name: &str) -> std::result::Result<u32, String> {
    let n = text
        .strip_prefix("count_")
        .or_else(|| text.strip_prefix("total_"))
        .and_then(|t| t.strip_suffix('d'))
        .ok_or_else(|| format!("`{name}`: a window is written like count_90d"))?;
    match n.parse::<u32>() {
        Ok(d) if (1..=3650).contains(&d) => Ok(d),
        _ => Err(format!("`{name}`: the window is 1 to 3650 days")),
    }
}

/// Parses a trait name.
pub fn parse(name: &str) -> std::result::Result<Trait, String> {
    match name {
        "last_order_at" => return Ok(Trait::LastOrderAt),
        "favourite_category" => return Ok(Trait::FavouriteCategory),
        "preferred_channel" => return Ok(Trait::PreferredChannel),
        _ => {}
    }
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["orders", w] if w.starts_with("count_") => Ok(Trait::OrdersCount { days: days(w, name)? }),
        ["orders", w] if w.starts_with("total_") => Ok(Trait::OrdersTotal { days: days(w, name)? }),
        ["events", kind, w] if w.starts_with("count_") => {
            let k = InteractionKind::from_str_name(&format!("INTERACTION_KIND_{}", kind.to_uppercase()))
                .filter(|k| *k != InteractionKind::Unspecified)
                .ok_or_else(|| format!("`{name}`: `{kind}` is not an interaction kind (page_view, product_view, cart, …)"))?;
            Ok(Trait::EventsCount {
                kind: k as i32,
                days: days(w, name)?,
            })
        }
        _ => Err(format!(
            "`{name}` is not a trait: orders.count_<N>d, orders.total_<N>d, last_order_at, favourite_category, preferred_channel, events.<kind>.count_<N>d"
        )),
    }
}

/// The traits in force, parsed once.
#[derive(Debug, Clone)]
pub struct Traits {
    pub traits: Vec<(String, Trait)>,
    pub currency: String,
}

impl Traits {
    /// Parses `names`; an error names the index and says why.
    pub fn new(names: &[String], currency: &str) -> std::result::Result<Self, (usize, String)> {
        let mut traits = Vec::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            traits.push((n.clone(), parse(n).map_err(|e| (i, e))?));
        }
        Ok(Self {
            traits,
            currency: currency.to_owned(),
        })
    }

    /// Recomputes the traits of `people` (those reading orders only, when
    /// `orders_only`) at `now`, in the caller's transaction.
    pub async fn refresh<C: ConnectionTrait>(
        &self,
        conn: &C,
        people: &[String],
        orders_only: bool,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let now_us = now.timestamp_micros();
        // One that is no longer a person (merged into another) keeps no traits.
        let refs: Vec<&str> = people.iter().map(String::as_str).collect();
        let persons: std::collections::BTreeSet<String> = crm_platform::db::in_list(
            conn,
            "SELECT id FROM customers WHERE id <> ? AND merged_into IS NULL AND id",
            "",
            &refs,
        )
        .await?
        .iter()
        .map(|r| r.try_get("", "id"))
        .collect::<std::result::Result<_, _>>()?;
        for person in people {
            if !persons.contains(person) {
                exec(conn, "DELETE FROM traits WHERE person_id = ?", vec![person.as_str().into()]).await?;
                continue;
            }
            for (name, t) in &self.traits {
                if orders_only && !t.reads_orders() {
                    continue;
                }
                match compute(conn, person, t, &self.currency, now_us).await? {
                    Some(value) => {
                        exec(
                            conn,
                            "INSERT INTO traits (person_id, name, value, update_us) VALUES (?, ?, ?, ?) \
                             ON CONFLICT (person_id, name) DO UPDATE SET value = excluded.value, update_us = excluded.update_us",
                            vec![person.as_str().into(), name.as_str().into(), value.into(), now_us.into()],
                        )
                        .await?;
                    }
                    None => {
                        exec(
                            conn,
                            "DELETE FROM traits WHERE person_id = ? AND name = ?",
                            vec![person.as_str().into(), name.as_str().into()],
                        )
                        .await?;
                    }
                }
            }
        }
        Ok(())
    }
}

const COUNTED: &str = "status NOT IN (5, 6)";

/// Persons (customers not merged into another), as the per-person refresh reaches
/// them.
const PERSONS: &str = "customers c WHERE c.merged_into IS NULL";

impl Traits {
    /// Every person's traits anew at `now`, one set-based query per trait (what the
    /// schedule runs: the per-person path is for the few persons a change touches).
    /// Gives the same values as [`Traits::refresh`] for everyone; a trait row nobody
    /// rewrote (no value any more) goes.
    pub async fn refresh_all<C: ConnectionTrait>(&self, conn: &C, now: DateTime<Utc>) -> Result<()> {
        let now_us = now.timestamp_micros();
        for (name, t) in &self.traits {
            let values = values_all(conn, t, &self.currency, now_us).await?;
            for chunk in values.chunks(250) {
                let rows = vec!["(?, ?, ?, ?)"; chunk.len()].join(", ");
                let mut params: Vec<Value> = Vec::with_capacity(chunk.len() * 4);
                for (person, value) in chunk {
                    params.extend([
                        person.as_str().into(),
                        name.as_str().into(),
                        value.as_str().into(),
                        now_us.into(),
                    ]);
                }
                exec(
                    conn,
                    &format!(
                        "INSERT INTO traits (person_id, name, value, update_us) VALUES {rows} \
                         ON CONFLICT (person_id, name) DO UPDATE SET value = excluded.value, update_us = excluded.update_us"
                    ),
                    params,
                )
                .await?;
            }
            exec(
                conn,
                "DELETE FROM traits WHERE name = ? AND update_us < ?",
                vec![name.as_str().into(), now_us.into()],
            )
            .await?;
        }
        Ok(())
    }
}

/// (person, value) of every person with a value of `t`.
async fn values_all<C: ConnectionTrait>(conn: &C, t: &Trait, currency: &str, now_us: i64) -> Result<Vec<(String, String)>> {
    let since = |d: u32| now_us - i64::from(d) * 86_400_000_000;
    let pg = conn.get_database_backend() == sea_orm::DbBackend::Postgres;
    let (sql, values): (String, Vec<Value>) = match t {
        Trait::OrdersCount { days } => (
            format!(
                "SELECT c.id AS person_id, COALESCE(o.v, 0) AS v FROM customers c LEFT JOIN (SELECT person_id, COUNT(*) AS v \
                 FROM orders WHERE place_us >= ? AND {COUNTED} GROUP BY person_id) o ON o.person_id = c.id WHERE c.merged_into IS NULL"
            ),
            vec![since(*days).into()],
        ),
        Trait::OrdersTotal { days } => (
            format!(
                "SELECT c.id AS person_id, COALESCE(o.v, 0) AS v FROM customers c LEFT JOIN (SELECT person_id, \
                 CAST(SUM(total_micros) AS BIGINT) AS v FROM orders WHERE place_us >= ? AND currency = ? AND {COUNTED} \
                 GROUP BY person_id) o ON o.person_id = c.id WHERE c.merged_into IS NULL"
            ),
            vec![since(*days).into(), currency.into()],
        ),
        Trait::EventsCount { kind, days } => (
            "SELECT c.id AS person_id, COALESCE(i.v, 0) AS v FROM customers c LEFT JOIN (SELECT person_id, COUNT(*) AS v \
             FROM interactions WHERE kind = ? AND occur_us >= ? GROUP BY person_id) i ON i.person_id = c.id \
             WHERE c.merged_into IS NULL"
                .to_owned(),
            vec![(*kind).into(), since(*days).into()],
        ),
        Trait::LastOrderAt => (
            format!(
                "SELECT o.person_id AS person_id, MAX(o.place_us) AS v FROM orders o WHERE o.{COUNTED} \
                 AND o.person_id IN (SELECT c.id FROM {PERSONS}) GROUP BY o.person_id"
            ),
            vec![],
        ),
        Trait::FavouriteCategory => {
            let (each, value, collate) = if pg {
                (
                    "jsonb_array_elements_text(o.categories::jsonb) AS e(value)",
                    "e.value",
                    " COLLATE \"C\"",
                )
            } else {
                ("json_each(o.categories) AS e", "e.value", "")
            };
            (
                format!(
                    "SELECT person_id, v FROM (SELECT o.person_id AS person_id, {value} AS v, ROW_NUMBER() OVER \
                     (PARTITION BY o.person_id ORDER BY COUNT(*) DESC, {value}{collate}) AS r FROM orders o CROSS JOIN {each} \
                     WHERE o.{COUNTED} AND o.person_id IN (SELECT c.id FROM {PERSONS}) GROUP BY o.person_id, {value}) x WHERE r = 1"
                ),
                vec![],
            )
        }
        Trait::PreferredChannel => (
            format!(
                "SELECT person_id, channel AS v FROM (SELECT i.person_id AS person_id, i.channel AS channel, ROW_NUMBER() OVER \
                 (PARTITION BY i.person_id ORDER BY COUNT(*) DESC, i.channel) AS r FROM interactions i \
                 WHERE i.person_id IN (SELECT c.id FROM {PERSONS}) GROUP BY i.person_id, i.channel) x WHERE r = 1"
            ),
            vec![],
        ),
    };
    let rows = query(conn, &sql, values).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let person: String = r.try_get("", "person_id")?;
        let value = match t {
            Trait::FavouriteCategory => Some(r.try_get::<String>("", "v")?),
            Trait::PreferredChannel => channel_name(r.try_get::<i32>("", "v")?),
            Trait::LastOrderAt => time_text(r.try_get::<i64>("", "v")?),
            _ => Some(r.try_get::<i64>("", "v")?.to_string()),
        };
        if let Some(v) = value {
            out.push((person, v));
        }
    }
    Ok(out)
}

fn channel_name(channel: i32) -> Option<String> {
    Channel::try_from(channel)
        .ok()
        .map(|c| c.as_str_name().trim_start_matches("CHANNEL_").to_lowercase())
}

fn time_text(us: i64) -> Option<String> {
    DateTime::from_timestamp_micros(us).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

async fn scalar<C: ConnectionTrait>(conn: &C, sql: &str, values: Vec<Value>) -> Result<Option<i64>> {
    let rows = query(conn, sql, values).await?;
    Ok(match rows.first() {
        Some(r) => r.try_get("", "v")?,
        None => None,
    })
}

/// One trait of one person; `None` when it has no value (nothing to count from).
async fn compute<C: ConnectionTrait>(conn: &C, person: &str, t: &Trait, currency: &str, now_us: i64) -> Result<Option<String>> {
    let since = |d: u32| now_us - i64::from(d) * 86_400_000_000;
    Ok(match t {
        Trait::OrdersCount { days } => scalar(
            conn,
            &format!("SELECT COUNT(*) AS v FROM orders WHERE person_id = ? AND place_us >= ? AND {COUNTED}"),
            vec![person.into(), since(*days).into()],
        )
        .await?
        .map(|n| n.to_string()),
        Trait::OrdersTotal { days } => scalar(
            conn,
            &format!(
                "SELECT CAST(COALESCE(SUM(total_micros), 0) AS BIGINT) AS v FROM orders \
                 WHERE person_id = ? AND place_us >= ? AND currency = ? AND {COUNTED}"
            ),
            vec![person.into(), since(*days).into(), currency.into()],
        )
        .await?
        .map(|n| n.to_string()),
        Trait::LastOrderAt => scalar(
            conn,
            &format!("SELECT MAX(place_us) AS v FROM orders WHERE person_id = ? AND {COUNTED}"),
            vec![person.into()],
        )
        .await?
        .and_then(time_text),
        Trait::FavouriteCategory => {
            let rows = query(
                conn,
                &format!("SELECT categories FROM orders WHERE person_id = ? AND {COUNTED}"),
                vec![person.into()],
            )
            .await?;
            let mut counts: BTreeMap<String, i64> = BTreeMap::new();
            for r in &rows {
                let text: String = r.try_get("", "categories")?;
                let cats: Vec<String> = serde_json::from_str(&text).map_err(crm_platform::Error::internal)?;
                for c in cats {
                    *counts.entry(c).or_default() += 1;
                }
            }
            // The most frequent; among equals the first by name (BTreeMap order).
            counts
                .into_iter()
                .fold(None::<(String, i64)>, |best, (c, n)| match best {
                    Some((_, m)) if m >= n => best,
                    _ => Some((c, n)),
                })
                .map(|(c, _)| c)
        }
        Trait::PreferredChannel => {
            let rows = query(
                conn,
                "SELECT channel, COUNT(*) AS n FROM interactions WHERE person_id = ? GROUP BY channel ORDER BY n DESC, channel LIMIT 1",
                vec![person.into()],
            )
            .await?;
            match rows.first() {
                Some(r) => channel_name(r.try_get("", "channel")?),
                None => None,
            }
        }
        Trait::EventsCount { kind, days } => scalar(
            conn,
            "SELECT COUNT(*) AS v FROM interactions WHERE person_id = ? AND kind = ? AND occur_us >= ?",
            vec![person.into(), (*kind).into(), since(*days).into()],
        )
        .await?
        .map(|n| n.to_string()),
    })
}

/// Every person with an order or an interaction, in batches after `after`.
pub async fn people_after<C: ConnectionTrait>(conn: &C, after: &str, limit: u64) -> Result<Vec<String>> {
    query(
        conn,
        "SELECT id FROM customers WHERE id = person_id AND id > ? ORDER BY id LIMIT ?",
        vec![after.into(), i64::try_from(limit).unwrap_or(i64::MAX).into()],
    )
    .await?
    .iter()
    .map(|r| Ok(r.try_get("", "id")?))
    .collect()
}

/// The stored traits of a person, by name.
pub async fn of_person<C: ConnectionTrait>(conn: &C, person: &str) -> Result<Vec<(String, String, i64)>> {
    query(
        conn,
        "SELECT name, value, update_us FROM traits WHERE person_id = ? ORDER BY name",
        vec![person.into()],
    )
    .await?
    .iter()
    .map(|r| Ok((r.try_get("", "name")?, r.try_get("", "value")?, r.try_get("", "update_us")?)))
    .collect()
}

/// Drops the traits of the persons `ids` (erased).
pub async fn remove<C: ConnectionTrait>(conn: &C, ids: &[String]) -> Result<()> {
    for id in ids {
        exec(conn, "DELETE FROM traits WHERE person_id = ?", vec![id.as_str().into()]).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_or_say_why_not() {
        assert_eq!(parse("orders.count_90d").unwrap(), Trait::OrdersCount { days: 90 });
        assert_eq!(parse("orders.total_365d").unwrap(), Trait::OrdersTotal { days: 365 });
        assert_eq!(
            parse("events.product_view.count_7d").unwrap(),
            Trait::EventsCount {
                kind: InteractionKind::ProductView as i32,
                days: 7
            }
        );
        assert_eq!(parse("favourite_category").unwrap(), Trait::FavouriteCategory);
        assert!(parse("events.teleport.count_7d").unwrap_err().contains("teleport"));
        assert!(parse("orders.count_0d").unwrap_err().contains("1 to 3650"));
        assert!(parse("orders.count").unwrap_err().contains("orders.count_<N>d"));
        assert!(parse("orders.count_x").unwrap_err().contains("count_90d"));
        assert!(parse("shoe_size").unwrap_err().contains("not a trait"));
        let err = Traits::new(&["last_order_at".into(), "bogus".into()], "CNY").unwrap_err();
        assert_eq!(err.0, 1);
    }
}
