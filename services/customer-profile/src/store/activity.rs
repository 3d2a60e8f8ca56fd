//! Orders and interactions. Orders are upserted by (source, external id).
//! Interactions are appended in batches with duplicates caught by (source, external
//! id, occurrence time); on PostgreSQL they live in monthly partitions made ahead of
//! time by [`ensure_partitions`].

use chrono::{DateTime, Datelike, TimeZone, Utc};
use crm_platform::Result;
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Value};

use crm_platform::db::marks;

use super::{exec, query};
use crate::domain::CustomerId;

/// `customer_id IN (…)` over a customer and the customers merged into it.
fn owners(ids: &[CustomerId]) -> (String, Vec<Value>) {
    (
        format!("customer_id IN ({})", marks(ids.len().max(1))),
        if ids.is_empty() {
            vec![Value::from(String::new())]
        } else {
            ids.iter().map(|c| Value::from(c.uuid().to_string())).collect()
        },
    )
}

/// An order as stored.
#[derive(Debug, Clone)]
pub struct OrderRow {
    pub id: String,
    pub customer_id: String,
    pub status: i32,
    pub source_update_us: i64,
    pub revision: i64,
    pub data: Vec<u8>,
}

fn order_row(r: &QueryResult) -> Result<OrderRow> {
    Ok(OrderRow {
        id: r.try_get("", "id")?,
        customer_id: r.try_get("", "customer_id")?,
        status: r.try_get("", "status")?,
        source_update_us: r.try_get("", "source_update_us")?,
        revision: r.try_get("", "revision")?,
        data: r.try_get("", "data")?,
    })
}

const ORDER_COLUMNS: &str = "id, customer_id, status, source_update_us, revision, data";

/// The columns of an order that queries and summaries read.
#[derive(Debug, Clone)]
pub struct OrderColumns<'a> {
    pub customer_id: &'a str,
    pub source: &'a str,
    pub external_id: &'a str,
    pub status: i32,
    pub currency: &'a str,
    pub total_micros: i64,
    pub place_us: i64,
    pub source_update_us: i64,
}

/// The order `(source, external_id)`, locked for the transaction on PostgreSQL.
pub async fn order_by_key<C: ConnectionTrait>(conn: &C, source: &str, external_id: &str) -> Result<Option<OrderRow>> {
    let lock = if conn.get_database_backend() == DbBackend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let rows = query(
        conn,
        &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE source = ? AND external_id = ?{lock}"),
        vec![source.into(), external_id.into()],
    )
    .await?;
    rows.first().map(order_row).transpose()
}

pub async fn order<C: ConnectionTrait>(conn: &C, id: &str) -> Result<Option<OrderRow>> {
    let rows = query(
        conn,
        &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?"),
        vec![id.into()],
    )
    .await?;
    rows.first().map(order_row).transpose()
}

/// Inserts an order; false when another transaction inserted the same key first.
pub async fn insert_order<C: ConnectionTrait>(conn: &C, id: &str, cols: &OrderColumns<'_>, data: Vec<u8>) -> Result<bool> {
    let n = exec(
        conn,
        "INSERT INTO orders (id, customer_id, source, external_id, status, currency, total_micros, place_us, \
         source_update_us, revision, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?) \
         ON CONFLICT (source, external_id) DO NOTHING",
        vec![
            id.into(),
            cols.customer_id.into(),
            cols.source.into(),
            cols.external_id.into(),
            cols.status.into(),
            cols.currency.into(),
            cols.total_micros.into(),
            cols.place_us.into(),
            cols.source_update_us.into(),
            data.into(),
        ],
    )
    .await?;
    Ok(n == 1)
}

/// Replaces an order read at `revision`; false when it changed meanwhile.
pub async fn update_order<C: ConnectionTrait>(
    conn: &C,
    id: &str,
    revision: i64,
    cols: &OrderColumns<'_>,
    data: Vec<u8>,
) -> Result<bool> {
    let n = exec(
        conn,
        "UPDATE orders SET customer_id = ?, status = ?, currency = ?, total_micros = ?, place_us = ?, \
         source_update_us = ?, revision = ?, data = ? WHERE id = ? AND revision = ?",
        vec![
            cols.customer_id.into(),
            cols.status.into(),
            cols.currency.into(),
            cols.total_micros.into(),
            cols.place_us.into(),
            cols.source_update_us.into(),
            (revision + 1).into(),
            data.into(),
            id.into(),
            revision.into(),
        ],
    )
    .await?;
    Ok(n == 1)
}

/// Filters of an order list.
#[derive(Debug, Clone, Default)]
pub struct OrderQuery {
    pub statuses: Vec<i32>,
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    /// Newest placed first, after `(place_us, id)`.
    pub after: Option<(i64, String)>,
    pub limit: u64,
}

pub async fn list_orders<C: ConnectionTrait>(conn: &C, customer: &[CustomerId], q: &OrderQuery) -> Result<Vec<(i64, OrderRow)>> {
    let (clause, mut values) = owners(customer);
    let mut sql = format!("SELECT {ORDER_COLUMNS}, place_us FROM orders WHERE {clause}");
    if !q.statuses.is_empty() {
        sql.push_str(&format!(" AND status IN ({})", marks(q.statuses.len())));
        values.extend(q.statuses.iter().map(|s| Value::from(*s)));
    }
    if let Some(from) = q.from_us {
        sql.push_str(" AND place_us >= ?");
        values.push(from.into());
    }
    if let Some(to) = q.to_us {
        sql.push_str(" AND place_us < ?");
        values.push(to.into());
    }
    if let Some((us, id)) = &q.after {
        sql.push_str(" AND (place_us < ? OR (place_us = ? AND id < ?))");
        values.extend([Value::from(*us), Value::from(*us), Value::from(id.clone())]);
    }
    sql.push_str(" ORDER BY place_us DESC, id DESC LIMIT ?");
    values.push((q.limit as i64).into());
    query(conn, &sql, values)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("", "place_us")?, order_row(r)?)))
        .collect()
}

/// An interaction to append.
#[derive(Debug, Clone)]
pub struct NewInteraction {
    pub id: String,
    pub customer_id: String,
    pub kind: i32,
    pub channel: i32,
    pub occur_us: i64,
    pub source: String,
    pub external_id: String,
    pub record_us: i64,
    pub data: Vec<u8>,
}

/// Rows per insert statement (9 values each).
const INSERT_CHUNK: usize = 50;

/// Appends interactions; returns the ids actually inserted (a row whose (source,
/// external id, time) is stored already is skipped).
pub async fn insert_interactions<C: ConnectionTrait>(conn: &C, rows: &[NewInteraction]) -> Result<Vec<String>> {
    let mut inserted = Vec::new();
    for chunk in rows.chunks(INSERT_CHUNK) {
        let tuples = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 9);
        for r in chunk {
            values.extend([
                Value::from(r.id.clone()),
                r.customer_id.clone().into(),
                r.kind.into(),
                r.channel.into(),
                r.occur_us.into(),
                r.source.clone().into(),
                r.external_id.clone().into(),
                r.record_us.into(),
                r.data.clone().into(),
            ]);
        }
        let sql = format!(
            "INSERT INTO interactions (id, customer_id, kind, channel, occur_us, source, external_id, record_us, data) \
             VALUES {tuples} ON CONFLICT (source, external_id, occur_us) DO NOTHING RETURNING id"
        );
        for r in query(conn, &sql, values).await? {
            inserted.push(r.try_get("", "id")?);
        }
    }
    Ok(inserted)
}

/// The stored interaction (customer id, interaction id) of a source event.
pub async fn interaction_by_key<C: ConnectionTrait>(
    conn: &C,
    source: &str,
    external_id: &str,
    occur_us: i64,
) -> Result<Option<(String, String)>> {
    let rows = query(
        conn,
        "SELECT customer_id, id FROM interactions WHERE source = ? AND external_id = ? AND occur_us = ?",
        vec![source.into(), external_id.into(), occur_us.into()],
    )
    .await?;
    rows.first()
        .map(|r| Ok((r.try_get("", "customer_id")?, r.try_get("", "id")?)))
        .transpose()
}

/// Filters of an interaction list.
#[derive(Debug, Clone, Default)]
pub struct InteractionQuery {
    pub kinds: Vec<i32>,
    pub channels: Vec<i32>,
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    /// Newest first, after `(occur_us, id)`.
    pub after: Option<(i64, String)>,
    pub limit: u64,
}

/// (occur_us, id, data) newest first.
pub async fn list_interactions<C: ConnectionTrait>(
    conn: &C,
    customer: &[CustomerId],
    q: &InteractionQuery,
) -> Result<Vec<(i64, String, Vec<u8>)>> {
    let (clause, mut values) = owners(customer);
    let mut sql = format!("SELECT occur_us, id, data FROM interactions WHERE {clause}");
    for (column, list) in [("kind", &q.kinds), ("channel", &q.channels)] {
        if !list.is_empty() {
            sql.push_str(&format!(" AND {column} IN ({})", marks(list.len())));
            values.extend(list.iter().map(|v| Value::from(*v)));
        }
    }
    if let Some(from) = q.from_us {
        sql.push_str(" AND occur_us >= ?");
        values.push(from.into());
    }
    if let Some(to) = q.to_us {
        sql.push_str(" AND occur_us < ?");
        values.push(to.into());
    }
    if let Some((us, id)) = &q.after {
        sql.push_str(" AND (occur_us < ? OR (occur_us = ? AND id < ?))");
        values.extend([Value::from(*us), Value::from(*us), Value::from(id.clone())]);
    }
    sql.push_str(" ORDER BY occur_us DESC, id DESC LIMIT ?");
    values.push((q.limit as i64).into());
    query(conn, &sql, values)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("", "occur_us")?, r.try_get("", "id")?, r.try_get("", "data")?)))
        .collect()
}

/// The first instant of the month `months` after the month of `t` (UTC).
fn month_start(t: DateTime<Utc>, months: i32) -> Option<DateTime<Utc>> {
    let index = t.year() * 12 + t.month0() as i32 + months;
    Utc.with_ymd_and_hms(index.div_euclid(12), index.rem_euclid(12) as u32 + 1, 1, 0, 0, 0)
        .single()
}

/// PostgreSQL: makes sure the monthly partitions of interactions exist from this
/// month to `ahead` months later (idempotent; replicas may race, the loser's error
/// is only logged). SQLite: nothing to do. Returns the partitions created.
pub async fn ensure_partitions<C: ConnectionTrait>(conn: &C, now: DateTime<Utc>, ahead: i32) -> Result<Vec<String>> {
    if conn.get_database_backend() != DbBackend::Postgres {
        return Ok(Vec::new());
    }
    let mut created = Vec::new();
    for m in 0..=ahead {
        let (Some(from), Some(to)) = (month_start(now, m), month_start(now, m + 1)) else {
            continue;
        };
        let name = partition_name(from);
        let exists = query(
            conn,
            "SELECT 1 AS one FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname = ? AND n.nspname = current_schema()",
            vec![name.clone().into()],
        )
        .await?;
        if !exists.is_empty() {
            continue;
        }
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {name} PARTITION OF interactions FOR VALUES FROM ({}) TO ({})",
            from.timestamp_micros(),
            to.timestamp_micros()
        );
        match exec(conn, &sql, vec![]).await {
            Ok(_) => created.push(name),
            Err(err) => tracing::warn!(%err, partition = %name, "could not create an interactions partition"),
        }
    }
    Ok(created)
}

/// Order statuses that count for nothing (cancelled, refunded in full).
const VOID_STATUSES: &str = "5, 6";

/// Per currency, over the orders that count: (currency, count, total, first place,
/// last place).
pub async fn order_totals<C: ConnectionTrait>(conn: &C, customer: &[CustomerId]) -> Result<Vec<(String, i64, i64, i64, i64)>> {
    let (clause, values) = owners(customer);
    query(
        conn,
        &format!(
            "SELECT currency, COUNT(*) AS n, CAST(SUM(total_micros) AS BIGINT) AS total, MIN(place_us) AS first_us, MAX(place_us) AS last_us \
             FROM orders WHERE {clause} AND status NOT IN ({VOID_STATUSES}) GROUP BY currency ORDER BY COUNT(*) DESC, currency"
        ),
        values,
    )
    .await?
    .iter()
    .map(|r| {
        Ok((
            r.try_get("", "currency")?,
            r.try_get("", "n")?,
            r.try_get("", "total")?,
            r.try_get("", "first_us")?,
            r.try_get("", "last_us")?,
        ))
    })
    .collect()
}

/// The encoded orders that count, newest first, at most `limit`.
pub async fn counted_orders<C: ConnectionTrait>(conn: &C, customer: &[CustomerId], limit: u64) -> Result<Vec<Vec<u8>>> {
    let (clause, mut values) = owners(customer);
    values.push((limit as i64).into());
    query(
        conn,
        &format!("SELECT data FROM orders WHERE {clause} AND status NOT IN ({VOID_STATUSES}) ORDER BY place_us DESC LIMIT ?"),
        values,
    )
    .await?
    .iter()
    .map(|r| Ok(r.try_get("", "data")?))
    .collect()
}

/// Per channel since `from_us`: (channel, count, last occurrence), most active first;
/// and the last occurrence of all.
pub async fn channel_activity<C: ConnectionTrait>(
    conn: &C,
    customer: &[CustomerId],
    from_us: i64,
) -> Result<(Vec<(i32, i64, i64)>, Option<i64>)> {
    let (clause, values) = owners(customer);
    let mut windowed = values.clone();
    windowed.push(from_us.into());
    let per_channel = query(
        conn,
        &format!(
            "SELECT channel, COUNT(*) AS n, MAX(occur_us) AS last_us FROM interactions \
             WHERE {clause} AND occur_us >= ? GROUP BY channel ORDER BY COUNT(*) DESC, channel"
        ),
        windowed,
    )
    .await?
    .iter()
    .map(|r| Ok((r.try_get("", "channel")?, r.try_get("", "n")?, r.try_get("", "last_us")?)))
    .collect::<Result<Vec<_>>>()?;
    let last = query(
        conn,
        &format!("SELECT occur_us FROM interactions WHERE {clause} ORDER BY occur_us DESC LIMIT 1"),
        values,
    )
    .await?
    .first()
    .map(|r| r.try_get::<i64>("", "occur_us"))
    .transpose()?;
    Ok((per_channel, last))
}

/// Orders placed at or before `until_us`, newest first: (place_us, id, data).
pub async fn orders_until<C: ConnectionTrait>(
    conn: &C,
    customer: &[CustomerId],
    until_us: i64,
    limit: u64,
) -> Result<Vec<(i64, String, Vec<u8>)>> {
    let (clause, mut values) = owners(customer);
    values.extend([Value::from(until_us), Value::from(limit as i64)]);
    query(
        conn,
        &format!(
            "SELECT place_us, id, data FROM orders WHERE {clause} AND place_us <= ? ORDER BY place_us DESC, id DESC LIMIT ?"
        ),
        values,
    )
    .await?
    .iter()
    .map(|r| Ok((r.try_get("", "place_us")?, r.try_get("", "id")?, r.try_get("", "data")?)))
    .collect()
}

/// Events about the customer record itself (created, changed, merged…) at or before
/// `until` (all when `None`), newest first, as long as the feed keeps them: (time,
/// event id, type, actor).
pub async fn record_events_until<C: ConnectionTrait>(
    conn: &C,
    subject: &str,
    until: Option<DateTime<Utc>>,
    limit: u64,
) -> Result<Vec<(DateTime<Utc>, String, String, String)>> {
    let mut sql = String::from("SELECT occur_time, event_id, event_type, actor FROM outbox WHERE subject = ?");
    let mut values: Vec<Value> = vec![subject.into()];
    if let Some(until) = until {
        sql.push_str(" AND occur_time <= ?");
        values.push(until.into());
    }
    sql.push_str(" ORDER BY occur_time DESC LIMIT ?");
    values.push((limit as i64).into());
    query(conn, &sql, values)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("", "occur_time")?,
                r.try_get("", "event_id")?,
                r.try_get("", "event_type")?,
                r.try_get("", "actor")?,
            ))
        })
        .collect()
}

/// The name of the monthly partition holding `from` (see [`ensure_partitions`]).
fn partition_name(from: DateTime<Utc>) -> String {
    format!("interactions_y{}m{:02}", from.year(), from.month())
}

/// The month a partition name stands for, when it is one of ours.
fn partition_month(name: &str) -> Option<DateTime<Utc>> {
    let rest = name.strip_prefix("interactions_y")?;
    let (year, month) = rest.split_once('m')?;
    let (year, month): (i32, u32) = (year.parse().ok()?, month.parse().ok()?);
    let start = Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single()?;
    (partition_name(start) == name).then_some(start)
}

/// PostgreSQL: the monthly interaction partitions that end at or before `cutoff`.
pub async fn partitions_before<C: ConnectionTrait>(conn: &C, cutoff: DateTime<Utc>) -> Result<Vec<String>> {
    let rows = query(
        conn,
        "SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace \
         WHERE p.relname = 'interactions' AND n.nspname = current_schema() ORDER BY c.relname",
        vec![],
    )
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let name: String = r.try_get("", "name")?;
        if let Some(start) = partition_month(&name)
            && month_start(start, 1).is_some_and(|end| end <= cutoff)
        {
            out.push(name);
        }
    }
    Ok(out)
}

/// Rows of `table` (`interactions` or one of its partitions) before `cutoff_us`; all
/// of them when `None`.
pub async fn count_interactions<C: ConnectionTrait>(conn: &C, table: &str, cutoff_us: Option<i64>) -> Result<i64> {
    check_table(table)?;
    let rows = match cutoff_us {
        Some(c) => {
            query(
                conn,
                &format!("SELECT COUNT(*) AS n FROM {table} WHERE occur_us < ?"),
                vec![c.into()],
            )
            .await?
        }
        None => query(conn, &format!("SELECT COUNT(*) AS n FROM {table}"), vec![]).await?,
    };
    Ok(match rows.first() {
        Some(r) => r.try_get("", "n")?,
        None => 0,
    })
}

/// Deletes the rows of `table` before `cutoff_us`, `batch` at a time; returns how many.
pub async fn delete_interactions_before<C: ConnectionTrait>(conn: &C, table: &str, cutoff_us: i64, batch: u64) -> Result<u64> {
    check_table(table)?;
    let mut total = 0;
    loop {
        let n = exec(
            conn,
            &format!("DELETE FROM {table} WHERE occur_us < ? AND id IN (SELECT id FROM {table} WHERE occur_us < ? LIMIT ?)"),
            vec![cutoff_us.into(), cutoff_us.into(), (batch as i64).into()],
        )
        .await?;
        total += n;
        if n == 0 {
            return Ok(total);
        }
    }
}

/// Drops a monthly partition.
pub async fn drop_partition<C: ConnectionTrait>(conn: &C, name: &str) -> Result<()> {
    if partition_month(name).is_none() {
        return Err(crm_platform::Error::internal(anyhow::anyhow!(
            "`{name}` is not an interactions partition"
        )));
    }
    exec(conn, &format!("DROP TABLE {name}"), vec![]).await?;
    Ok(())
}

/// Table names are spliced into SQL: only ours pass.
fn check_table(table: &str) -> Result<()> {
    if table == "interactions" || table == "interactions_default" || partition_month(table).is_some() {
        Ok(())
    } else {
        Err(crm_platform::Error::internal(anyhow::anyhow!(
            "`{table}` is not an interactions table"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip() {
        let t = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        assert_eq!(partition_name(t), "interactions_y2026m03");
        assert_eq!(partition_month("interactions_y2026m03"), Some(t));
        assert_eq!(partition_month("interactions_y2026m3"), None);
        assert_eq!(partition_month("interactions_default"), None);
        assert_eq!(partition_month("interactions_y2026m13"), None);
    }

    #[test]
    fn months_roll_over_years() {
        let t = Utc.with_ymd_and_hms(2026, 11, 24, 13, 0, 0).unwrap();
        assert_eq!(
            month_start(t, 0).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(month_start(t, 2).unwrap(), Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
        assert_eq!(
            month_start(t, -11).unwrap(),
            Utc.with_ymd_and_hms(2025, 12, 1, 0, 0, 0).unwrap()
        );
    }
}
