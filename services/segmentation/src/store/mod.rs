//! The segmentation database: the projection of customer-profile's feed (what
//! segment rules read), its cursor, this service's own outbox. Every write runs in
//! the caller's transaction (the one that also moves the feed cursor).
//!
//! Merges: every projected row keeps the customer it was recorded for
//! (`customer_id`) and the person it counts for now (`person_id`: the survivor the
//! customer was merged into, followed to the end), so an unmerge gives each row back.

use std::collections::BTreeMap;

use crm_platform::{
    Result, audit, consumer,
    db::{exec, in_list, query},
    feed, idempotency,
    migrate::{Dialect, Migration},
    people::chain_end,
};
use sea_orm::{ConnectionTrait, Value};

pub mod rfm;
pub mod segments;
pub mod tags;

/// The tables of rows recorded per customer, counted for its person (see
/// [`crm_platform::people`]).
pub const PER_CUSTOMER: &[&str] = &["orders", "interactions", "consents"];

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "projection of customer-profile (customers, orders, interactions, consent), feed cursor, outbox, audit spool",
        up: v1,
    },
    Migration {
        version: 2,
        name: "tag taxonomy and tags on customers",
        up: tags::migration,
    },
    Migration {
        version: 3,
        name: "RFM per person and the quintile boundaries",
        up: rfm::migration,
    },
    Migration {
        version: 4,
        name: "computed traits per person",
        up: crate::traits::migration,
    },
    Migration {
        version: 5,
        name: "segments, their rule versions and membership; time indexes for activity conditions",
        up: segments::migration,
    },
    Migration {
        version: 6,
        name: "computed traits declared over the API",
        up: crate::traits::definitions_migration,
    },
    Migration {
        version: 7,
        name: "campaigns: contacts (sealed), campaigns, deliveries, suppressions, calls forwarded to customer-profile",
        up: crate::campaigns::store::migration,
    },
    Migration {
        version: 8,
        name: "journeys, customers' positions in them, the steps they reached",
        up: crate::journeys::store::migration,
    },
];

fn v1(d: Dialect) -> Vec<String> {
    let mut sql = vec![
        // A customer as the service account may read it (masked fields left out).
        "CREATE TABLE customers (id TEXT PRIMARY KEY, person_id TEXT NOT NULL, merged_into TEXT, kind INTEGER NOT NULL, \
         lifecycle_stage INTEGER NOT NULL, source_channel INTEGER NOT NULL, owner_user_id TEXT NOT NULL, \
         team_id TEXT NOT NULL, region TEXT NOT NULL, locality TEXT NOT NULL, tags TEXT NOT NULL, \
         attributes TEXT NOT NULL, create_us BIGINT NOT NULL, update_us BIGINT NOT NULL, deleted INTEGER NOT NULL)"
            .into(),
        "CREATE INDEX customers_person ON customers (person_id)".into(),
        "CREATE INDEX customers_merged_into ON customers (merged_into)".into(),
        "CREATE TABLE orders (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, person_id TEXT NOT NULL, status INTEGER NOT NULL, \
         currency TEXT NOT NULL, total_micros BIGINT NOT NULL, place_us BIGINT NOT NULL, categories TEXT NOT NULL)"
            .into(),
        "CREATE INDEX orders_person ON orders (person_id, place_us)".into(),
        "CREATE INDEX orders_customer ON orders (customer_id)".into(),
        "CREATE TABLE interactions (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, person_id TEXT NOT NULL, \
         kind INTEGER NOT NULL, channel INTEGER NOT NULL, occur_us BIGINT NOT NULL, category TEXT NOT NULL, \
         campaign TEXT NOT NULL)"
            .into(),
        "CREATE INDEX interactions_person ON interactions (person_id, kind, occur_us)".into(),
        "CREATE INDEX interactions_customer ON interactions (customer_id)".into(),
        "CREATE INDEX interactions_time ON interactions (occur_us)".into(),
        "CREATE TABLE consents (customer_id TEXT NOT NULL, person_id TEXT NOT NULL, purpose INTEGER NOT NULL, \
         channel INTEGER NOT NULL, status INTEGER NOT NULL, effective_us BIGINT NOT NULL, expire_us BIGINT, \
         PRIMARY KEY (customer_id, purpose, channel))"
            .into(),
        "CREATE INDEX consents_person ON consents (person_id)".into(),
    ];
    sql.extend(consumer::migration_sql(d));
    sql.extend(feed::migration_sql(d));
    sql.extend(idempotency::migration_sql(d));
    sql.extend(audit::migration_sql(d));
    sql
}

/// A customer row of the projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerRow {
    pub id: String,
    pub kind: i32,
    pub lifecycle_stage: i32,
    pub source_channel: i32,
    pub owner_user_id: String,
    pub team_id: String,
    pub region: String,
    pub locality: String,
    pub tags: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    pub create_us: i64,
    pub update_us: i64,
    pub deleted: bool,
}

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(crm_platform::Error::internal)
}

/// Inserts or replaces a customer; a new one is its own person until a merge says
/// otherwise, an existing one keeps its merge.
pub async fn upsert_customer<C: ConnectionTrait>(conn: &C, c: &CustomerRow) -> Result<()> {
    exec(
        conn,
        "INSERT INTO customers (id, person_id, merged_into, kind, lifecycle_stage, source_channel, owner_user_id, team_id, \
         region, locality, tags, attributes, create_us, update_us, deleted) \
         VALUES (?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, lifecycle_stage = excluded.lifecycle_stage, \
         source_channel = excluded.source_channel, owner_user_id = excluded.owner_user_id, team_id = excluded.team_id, \
         region = excluded.region, locality = excluded.locality, tags = excluded.tags, attributes = excluded.attributes, \
         create_us = excluded.create_us, update_us = excluded.update_us, deleted = excluded.deleted",
        vec![
            c.id.as_str().into(),
            c.id.as_str().into(),
            c.kind.into(),
            c.lifecycle_stage.into(),
            c.source_channel.into(),
            c.owner_user_id.as_str().into(),
            c.team_id.as_str().into(),
            c.region.as_str().into(),
            c.locality.as_str().into(),
            json(&c.tags)?.into(),
            json(&c.attributes)?.into(),
            c.create_us.into(),
            c.update_us.into(),
            i32::from(c.deleted).into(),
        ],
    )
    .await?;
    Ok(())
}

/// Records (or, with `None`, clears) the merge of `ids` into `survivor`.
pub async fn set_merged_into<C: ConnectionTrait>(conn: &C, ids: &[String], survivor: Option<&str>) -> Result<()> {
    for id in ids {
        exec(
            conn,
            "UPDATE customers SET merged_into = ? WHERE id = ?",
            vec![survivor.map(str::to_owned).into(), id.as_str().into()],
        )
        .await?;
    }
    Ok(())
}

/// Whether the projection holds customer `id`.
pub async fn exists<C: ConnectionTrait>(conn: &C, id: &str) -> Result<bool> {
    Ok(!query(conn, "SELECT 1 AS one FROM customers WHERE id = ?", vec![id.into()])
        .await?
        .is_empty())
}

/// An order of the projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    pub id: String,
    pub customer_id: String,
    pub status: i32,
    pub currency: String,
    pub total_micros: i64,
    pub place_us: i64,
    pub categories: Vec<String>,
}

/// Stores an order; returns the persons it changes: the one it counts for, and the
/// one it counted for before when the order moved to another customer.
pub async fn upsert_order<C: ConnectionTrait>(conn: &C, o: &OrderRow) -> Result<Vec<String>> {
    let person = chain_end(conn, &o.customer_id).await?;
    let before: Option<String> = query(conn, "SELECT person_id FROM orders WHERE id = ?", vec![o.id.as_str().into()])
        .await?
        .first()
        .map(|r| r.try_get("", "person_id"))
        .transpose()?;
    exec(
        conn,
        "INSERT INTO orders (id, customer_id, person_id, status, currency, total_micros, place_us, categories) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id, \
         person_id = excluded.person_id, status = excluded.status, currency = excluded.currency, \
         total_micros = excluded.total_micros, place_us = excluded.place_us, categories = excluded.categories",
        vec![
            o.id.as_str().into(),
            o.customer_id.as_str().into(),
            person.as_str().into(),
            o.status.into(),
            o.currency.as_str().into(),
            o.total_micros.into(),
            o.place_us.into(),
            json(&o.categories)?.into(),
        ],
    )
    .await?;
    Ok(match before {
        Some(b) if b != person => vec![person, b],
        _ => vec![person],
    })
}

/// An interaction of the projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InteractionRow {
    pub id: String,
    pub customer_id: String,
    pub kind: i32,
    pub channel: i32,
    pub occur_us: i64,
    pub category: String,
    pub campaign: String,
}

/// Stores an interaction (once); returns the person it counts for.
pub async fn insert_interaction<C: ConnectionTrait>(conn: &C, i: &InteractionRow) -> Result<String> {
    let person = chain_end(conn, &i.customer_id).await?;
    exec(
        conn,
        "INSERT INTO interactions (id, customer_id, person_id, kind, channel, occur_us, category, campaign) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        vec![
            i.id.as_str().into(),
            i.customer_id.as_str().into(),
            person.as_str().into(),
            i.kind.into(),
            i.channel.into(),
            i.occur_us.into(),
            i.category.as_str().into(),
            i.campaign.as_str().into(),
        ],
    )
    .await?;
    Ok(person)
}

/// Interactions that occurred before `cutoff_us` go (the source purged them).
pub async fn delete_interactions_before<C: ConnectionTrait>(conn: &C, cutoff_us: i64) -> Result<u64> {
    exec(conn, "DELETE FROM interactions WHERE occur_us < ?", vec![cutoff_us.into()]).await
}

/// A consent statement in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRow {
    pub purpose: i32,
    pub channel: i32,
    pub status: i32,
    pub effective_us: i64,
    pub expire_us: Option<i64>,
}

/// Replaces the consent in force of `customer_id`.
pub async fn replace_consent<C: ConnectionTrait>(conn: &C, customer_id: &str, rows: &[ConsentRow]) -> Result<()> {
    exec(conn, "DELETE FROM consents WHERE customer_id = ?", vec![customer_id.into()]).await?;
    let person = chain_end(conn, customer_id).await?;
    for r in rows {
        exec(
            conn,
            "INSERT INTO consents (customer_id, person_id, purpose, channel, status, effective_us, expire_us) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
            vec![
                customer_id.into(),
                person.as_str().into(),
                r.purpose.into(),
                r.channel.into(),
                r.status.into(),
                r.effective_us.into(),
                r.expire_us.into(),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Which of `ids` the projection knows (not erased), and each one's person.
pub async fn people_of<C: ConnectionTrait>(conn: &C, ids: &[&str]) -> Result<BTreeMap<String, String>> {
    let rows = in_list(conn, "SELECT id, person_id FROM customers WHERE id <> ? AND id", "", ids).await?;
    rows.iter()
        .map(|r| Ok((r.try_get("", "id")?, r.try_get("", "person_id")?)))
        .collect()
}

/// Removes everything projected about the erased customers `ids`.
pub async fn erase<C: ConnectionTrait>(conn: &C, ids: &[String]) -> Result<()> {
    for id in ids {
        for (table, column) in [
            ("customers", "id"),
            ("orders", "customer_id"),
            ("interactions", "customer_id"),
            ("consents", "customer_id"),
        ] {
            exec(
                conn,
                &format!("DELETE FROM {table} WHERE {column} = ?"),
                vec![id.as_str().into()],
            )
            .await?;
        }
    }
    Ok(())
}

/// Rows per projected table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub customers: i64,
    pub orders: i64,
    pub interactions: i64,
    pub consents: i64,
}

pub async fn counts<C: ConnectionTrait>(conn: &C) -> Result<Counts> {
    let rows = query(
        conn,
        "SELECT (SELECT COUNT(*) FROM customers) AS customers, (SELECT COUNT(*) FROM orders) AS orders, \
         (SELECT COUNT(*) FROM interactions) AS interactions, (SELECT COUNT(*) FROM consents) AS consents",
        Vec::<Value>::new(),
    )
    .await?;
    let Some(r) = rows.first() else {
        return Ok(Counts::default());
    };
    Ok(Counts {
        customers: r.try_get("", "customers")?,
        orders: r.try_get("", "orders")?,
        interactions: r.try_get("", "interactions")?,
        consents: r.try_get("", "consents")?,
    })
}
