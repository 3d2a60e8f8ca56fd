//! Persistence beside the customer rows: blocking keys (blind indexes), external
//! ids, duplicate candidates, field definitions, import jobs and their row results.
//! Plain SQL, written once for both backends (`?` placeholders are rewritten for
//! PostgreSQL).

use chrono::{DateTime, Utc};
use crm_platform::{Error, Result, crypto::Keyring};
use sea_orm::{ConnectionTrait, QueryResult, Value};
use serde::{Serialize, de::DeserializeOwned};

use crate::domain::{
    CustomerId,
    definitions::FieldDefinition,
    matching::{BlockingKey, Comparison},
};

use super::{exec, query};

fn json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(Error::internal)
}

fn from_json<T: DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::internal(anyhow::anyhow!("stored {what}: {e}")))
}

fn customer_id(text: &str) -> Result<CustomerId> {
    uuid::Uuid::parse_str(text)
        .map(CustomerId::from_uuid)
        .map_err(|e| Error::internal(anyhow::anyhow!("stored customer id {text}: {e}")))
}

// ---- blocking keys ----------------------------------------------------------

/// Replaces the blocking keys of `id` with the blind indexes of `keys` (`new`: it
/// has none yet).
pub async fn set_keys<C: ConnectionTrait>(
    conn: &C,
    keyring: &Keyring,
    id: CustomerId,
    keys: &[BlockingKey],
    new: bool,
) -> Result<()> {
    if !new {
        exec(
            conn,
            "DELETE FROM customer_keys WHERE customer_id = ?",
            vec![id.uuid().to_string().into()],
        )
        .await?;
    }
    insert_keys_many(conn, keyring, &[(id, keys.to_vec())]).await
}

/// Inserts the blocking keys of new customers with multi-row statements.
pub async fn insert_keys_many<C: ConnectionTrait>(
    conn: &C,
    keyring: &Keyring,
    items: &[(CustomerId, Vec<BlockingKey>)],
) -> Result<()> {
    let all: Vec<(String, &BlockingKey)> = items
        .iter()
        .flat_map(|(id, keys)| {
            let id = id.uuid().to_string();
            keys.iter().map(move |k| (id.clone(), k))
        })
        .collect();
    for chunk in crm_platform::db::chunks_by_size(&all, 1000, |(id, k)| id.len() + k.kind.len() + 40) {
        let rows = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 3);
        for (id, k) in chunk {
            values.extend([id.clone().into(), k.kind.into(), keyring.blind_index(k.kind, &k.value).into()]);
        }
        exec(
            conn,
            &format!("INSERT INTO customer_keys (customer_id, kind, value) VALUES {rows}"),
            values,
        )
        .await?;
    }
    Ok(())
}

/// Customers sharing any of `keys`, most recent first per key, at most `per_key`
/// per key; `exclude` left out.
pub async fn candidates<C: ConnectionTrait>(
    conn: &C,
    keyring: &Keyring,
    keys: &[BlockingKey],
    per_key: u32,
    exclude: Option<CustomerId>,
) -> Result<Vec<CustomerId>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let exclude = exclude.map(|e| e.uuid().to_string()).unwrap_or_default();
    // One round trip: a union of one index range per key, each capped.
    let sql = (0..keys.len())
        .map(|i| {
            format!(
                "SELECT customer_id FROM (SELECT customer_id FROM customer_keys WHERE kind = ? AND value = ? AND customer_id <> ? \
                 ORDER BY customer_id DESC LIMIT ?) AS k{i}"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let mut values = Vec::with_capacity(keys.len() * 4);
    for k in keys {
        values.push(k.kind.into());
        values.push(keyring.blind_index(k.kind, &k.value).into());
        values.push(exclude.clone().into());
        values.push(i64::from(per_key).into());
    }
    let mut out: Vec<CustomerId> = Vec::new();
    for row in query(conn, &sql, values).await? {
        let id = customer_id(&row.try_get::<String>("", "customer_id")?)?;
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

// ---- external ids -----------------------------------------------------------

pub async fn external_id<C: ConnectionTrait>(conn: &C, source: &str, external_id: &str) -> Result<Option<CustomerId>> {
    let rows = query(
        conn,
        "SELECT customer_id FROM customer_external_ids WHERE source = ? AND external_id = ?",
        vec![source.into(), external_id.into()],
    )
    .await?;
    rows.first()
        .map(|r| customer_id(&r.try_get::<String>("", "customer_id")?))
        .transpose()
}

/// The customers linked to `external_ids` of `source`.
pub async fn external_ids_many<C: ConnectionTrait>(
    conn: &C,
    source: &str,
    external_ids: &[&str],
) -> Result<std::collections::HashMap<String, CustomerId>> {
    let mut out = std::collections::HashMap::new();
    let prefix = "SELECT external_id, customer_id FROM customer_external_ids WHERE source = ? AND external_id";
    for row in crm_platform::db::in_list(conn, prefix, source, external_ids).await? {
        out.insert(
            row.try_get("", "external_id")?,
            customer_id(&row.try_get::<String>("", "customer_id")?)?,
        );
    }
    Ok(out)
}

/// Links new `(source, external_id, customer)` triples with multi-row statements.
pub async fn link_external_ids_many<C: ConnectionTrait>(conn: &C, links: &[(String, String, CustomerId)]) -> Result<()> {
    for chunk in crm_platform::db::chunks_by_size(links, 500, |(s, e, _)| s.len() + e.len() + 40) {
        let rows = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 3);
        for (source, external_id, id) in chunk {
            values.extend([
                source.clone().into(),
                external_id.clone().into(),
                id.uuid().to_string().into(),
            ]);
        }
        exec(
            conn,
            &format!("INSERT INTO customer_external_ids (source, external_id, customer_id) VALUES {rows}"),
            values,
        )
        .await?;
    }
    Ok(())
}

/// Links `(source, external_id)` to `id`; false when it already links elsewhere.
pub async fn link_external_id<C: ConnectionTrait>(conn: &C, source: &str, external_id: &str, id: CustomerId) -> Result<bool> {
    let n = exec(
        conn,
        "INSERT INTO customer_external_ids (source, external_id, customer_id) VALUES (?, ?, ?) ON CONFLICT (source, external_id) DO NOTHING",
        vec![source.into(), external_id.into(), id.uuid().to_string().into()],
    )
    .await?;
    Ok(n == 1)
}

// ---- duplicate candidates ---------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateState {
    Open,
    Merged,
    Dismissed,
}

impl CandidateState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Merged => "merged",
            Self::Dismissed => "dismissed",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "open" => Ok(Self::Open),
            "merged" => Ok(Self::Merged),
            "dismissed" => Ok(Self::Dismissed),
            other => Err(Error::internal(anyhow::anyhow!("stored candidate state {other}"))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: uuid::Uuid,
    pub customer: CustomerId,
    pub other: CustomerId,
    pub probability: f64,
    pub comparisons: Vec<Comparison>,
    pub state: CandidateState,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl Candidate {
    pub fn name(&self) -> String {
        format!("duplicateCandidates/{}", self.id)
    }
}

fn pair_key(a: CustomerId, b: CustomerId) -> String {
    let (a, b) = (a.uuid().to_string(), b.uuid().to_string());
    if a < b { format!("{a}|{b}") } else { format!("{b}|{a}") }
}

/// Records or re-scores the pair; a dismissed or merged pair keeps its state.
pub async fn upsert_candidate<C: ConnectionTrait>(
    conn: &C,
    customer: CustomerId,
    other: CustomerId,
    probability: f64,
    comparisons: &[Comparison],
    at: DateTime<Utc>,
) -> Result<()> {
    exec(
        conn,
        "INSERT INTO duplicate_candidates (id, pair_key, customer_id, other_customer_id, probability, comparisons, state, create_time, update_time) \
         VALUES (?, ?, ?, ?, ?, ?, 'open', ?, ?) ON CONFLICT (pair_key) DO UPDATE SET probability = excluded.probability, \
         comparisons = excluded.comparisons, update_time = excluded.update_time",
        vec![
            uuid::Uuid::now_v7().to_string().into(),
            pair_key(customer, other).into(),
            customer.uuid().to_string().into(),
            other.uuid().to_string().into(),
            probability.into(),
            json(&comparisons)?.into(),
            at.into(),
            at.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Closes open pairs of `customer` that no longer score above the review threshold.
pub async fn drop_open_candidates_except<C: ConnectionTrait>(conn: &C, customer: CustomerId, keep: &[CustomerId]) -> Result<()> {
    let id = customer.uuid().to_string();
    let rows = query(
        conn,
        "SELECT pair_key FROM duplicate_candidates WHERE state = 'open' AND (customer_id = ? OR other_customer_id = ?)",
        vec![id.clone().into(), id.into()],
    )
    .await?;
    let keep: Vec<String> = keep.iter().map(|k| pair_key(customer, *k)).collect();
    for row in rows {
        let key: String = row.try_get("", "pair_key")?;
        if !keep.contains(&key) {
            exec(
                conn,
                "DELETE FROM duplicate_candidates WHERE pair_key = ? AND state = 'open'",
                vec![key.into()],
            )
            .await?;
        }
    }
    Ok(())
}

fn decode_candidate(row: &QueryResult) -> Result<Candidate> {
    let id: String = row.try_get("", "id")?;
    Ok(Candidate {
        id: uuid::Uuid::parse_str(&id).map_err(|e| Error::internal(anyhow::anyhow!("candidate id {id}: {e}")))?,
        customer: customer_id(&row.try_get::<String>("", "customer_id")?)?,
        other: customer_id(&row.try_get::<String>("", "other_customer_id")?)?,
        probability: row.try_get("", "probability")?,
        comparisons: from_json(&row.try_get::<String>("", "comparisons")?, "comparisons")?,
        state: CandidateState::parse(&row.try_get::<String>("", "state")?)?,
        create_time: row.try_get("", "create_time")?,
        update_time: row.try_get("", "update_time")?,
    })
}

const CANDIDATE_COLUMNS: &str = "id, customer_id, other_customer_id, probability, comparisons, state, create_time, update_time";

pub async fn find_candidate<C: ConnectionTrait>(conn: &C, id: uuid::Uuid) -> Result<Option<Candidate>> {
    let rows = query(
        conn,
        &format!("SELECT {CANDIDATE_COLUMNS} FROM duplicate_candidates WHERE id = ?"),
        vec![id.to_string().into()],
    )
    .await?;
    rows.first().map(decode_candidate).transpose()
}

pub async fn set_candidate_state<C: ConnectionTrait>(
    conn: &C,
    id: uuid::Uuid,
    state: CandidateState,
    at: DateTime<Utc>,
) -> Result<()> {
    exec(
        conn,
        "UPDATE duplicate_candidates SET state = ?, update_time = ? WHERE id = ?",
        vec![state.as_str().into(), at.into(), id.to_string().into()],
    )
    .await?;
    Ok(())
}

/// Where a candidate page ended: (probability, id) of its last row.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CandidatePosition {
    pub probability: f64,
    pub id: String,
}

/// Candidates in `state`, optionally of one customer, highest probability first.
pub async fn list_candidates<C: ConnectionTrait>(
    conn: &C,
    state: CandidateState,
    customer: Option<CustomerId>,
    after: Option<&CandidatePosition>,
    limit: u64,
) -> Result<Vec<Candidate>> {
    let mut sql = format!("SELECT {CANDIDATE_COLUMNS} FROM duplicate_candidates WHERE state = ?");
    let mut values: Vec<Value> = vec![state.as_str().into()];
    if let Some(c) = customer {
        sql.push_str(" AND (customer_id = ? OR other_customer_id = ?)");
        let c = c.uuid().to_string();
        values.push(c.clone().into());
        values.push(c.into());
    }
    if let Some(p) = after {
        sql.push_str(" AND (probability < ? OR (probability = ? AND id > ?))");
        values.extend([p.probability.into(), p.probability.into(), p.id.clone().into()]);
    }
    sql.push_str(" ORDER BY probability DESC, id ASC LIMIT ?");
    values.push((limit as i64).into());
    query(conn, &sql, values).await?.iter().map(decode_candidate).collect()
}

/// Open candidates at or above `threshold`, for the duplicate-rate KPI.
pub async fn count_open_candidates<C: ConnectionTrait>(conn: &C, threshold: f64) -> Result<i64> {
    let rows = query(
        conn,
        "SELECT COUNT(*) AS n FROM duplicate_candidates WHERE state = 'open' AND probability >= ?",
        vec![threshold.into()],
    )
    .await?;
    Ok(rows.first().map(|r| r.try_get::<i64>("", "n")).transpose()?.unwrap_or(0))
}

// ---- field definitions ------------------------------------------------------

pub async fn load_definitions<C: ConnectionTrait>(conn: &C) -> Result<Vec<FieldDefinition>> {
    query(conn, "SELECT body FROM field_definitions ORDER BY path", vec![])
        .await?
        .iter()
        .map(|r| from_json(&r.try_get::<String>("", "body")?, "field definition"))
        .collect()
}

/// Writes `def` if its stored revision is `expected` (0: not stored yet).
pub async fn save_definition<C: ConnectionTrait>(conn: &C, def: &FieldDefinition, expected: i64) -> Result<bool> {
    let body = json(def)?;
    let at = def.update_time.unwrap_or_else(Utc::now);
    let n = if expected == 0 {
        exec(
            conn,
            "INSERT INTO field_definitions (path, body, revision, update_time) VALUES (?, ?, ?, ?) ON CONFLICT (path) DO NOTHING",
            vec![def.path.clone().into(), body.into(), def.revision.into(), at.into()],
        )
        .await?
    } else {
        exec(
            conn,
            "UPDATE field_definitions SET body = ?, revision = ?, update_time = ? WHERE path = ? AND revision = ?",
            vec![
                body.into(),
                def.revision.into(),
                at.into(),
                def.path.clone().into(),
                expected.into(),
            ],
        )
        .await?
    };
    Ok(n == 1)
}

// ---- imports ----------------------------------------------------------------

/// An import job's stored body.
pub async fn load_job<C: ConnectionTrait, T: DeserializeOwned>(conn: &C, id: &str) -> Result<Option<T>> {
    read_job(conn, id, "").await
}

/// [`load_job`] inside a write transaction, locking the row on PostgreSQL (SQLite's
/// write transaction already excludes other writers).
pub async fn load_job_for_update<C: ConnectionTrait, T: DeserializeOwned>(conn: &C, id: &str) -> Result<Option<T>> {
    let lock = if conn.get_database_backend() == sea_orm::DbBackend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    read_job(conn, id, lock).await
}

async fn read_job<C: ConnectionTrait, T: DeserializeOwned>(conn: &C, id: &str, lock: &str) -> Result<Option<T>> {
    let rows = query(
        conn,
        &format!("SELECT body FROM import_jobs WHERE id = ?{lock}"),
        vec![id.into()],
    )
    .await?;
    rows.first()
        .map(|r| from_json(&r.try_get::<String>("", "body")?, "import job"))
        .transpose()
}

pub async fn save_job<C: ConnectionTrait, T: Serialize>(
    conn: &C,
    id: &str,
    body: &T,
    at: DateTime<Utc>,
    create: bool,
) -> Result<()> {
    let body = json(body)?;
    if create {
        exec(
            conn,
            "INSERT INTO import_jobs (id, body, create_time, update_time) VALUES (?, ?, ?, ?)",
            vec![id.into(), body.into(), at.into(), at.into()],
        )
        .await?;
    } else {
        exec(
            conn,
            "UPDATE import_jobs SET body = ?, update_time = ? WHERE id = ?",
            vec![body.into(), at.into(), id.into()],
        )
        .await?;
    }
    Ok(())
}

/// Stored result of an import row.
#[derive(Debug, Clone, PartialEq)]
pub struct RowResult {
    pub row_key: String,
    pub outcome: String,
    pub customer: String,
    /// JSON list of `[field, description]`.
    pub errors: Vec<(String, String)>,
    pub probability: f64,
}

/// The keys among `row_keys` the job already processed.
pub async fn rows_seen<C: ConnectionTrait>(conn: &C, job: &str, row_keys: &[&str]) -> Result<std::collections::HashSet<String>> {
    let mut seen = std::collections::HashSet::new();
    for row in crm_platform::db::in_list(
        conn,
        "SELECT row_key FROM import_rows WHERE job_id = ? AND row_key",
        job,
        row_keys,
    )
    .await?
    {
        seen.insert(row.try_get::<String>("", "row_key")?);
    }
    Ok(seen)
}

/// Inserts row results with multi-row statements.
pub async fn insert_rows_many<C: ConnectionTrait>(conn: &C, job: &str, rows: &[(i64, RowResult)]) -> Result<()> {
    let size = |(_, r): &(i64, RowResult)| {
        r.row_key.len() + r.customer.len() + r.errors.iter().map(|(f, d)| f.len() + d.len() + 8).sum::<usize>() + 80
    };
    for chunk in crm_platform::db::chunks_by_size(rows, 500, size) {
        let marks = vec!["(?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 7);
        for (seq, r) in chunk {
            values.extend([
                job.into(),
                r.row_key.clone().into(),
                (*seq).into(),
                r.outcome.clone().into(),
                r.customer.clone().into(),
                json(&r.errors)?.into(),
                r.probability.into(),
            ]);
        }
        exec(
            conn,
            &format!("INSERT INTO import_rows (job_id, row_key, seq, outcome, customer, errors, probability) VALUES {marks}"),
            values,
        )
        .await?;
    }
    Ok(())
}

/// Row results after sequence number `after`, optionally of one outcome.
pub async fn list_rows<C: ConnectionTrait>(
    conn: &C,
    job: &str,
    outcome: Option<&str>,
    after: i64,
    limit: u64,
) -> Result<Vec<(i64, RowResult)>> {
    let mut sql =
        "SELECT seq, row_key, outcome, customer, errors, probability FROM import_rows WHERE job_id = ? AND seq > ?".to_owned();
    let mut values: Vec<Value> = vec![job.into(), after.into()];
    if let Some(o) = outcome {
        sql.push_str(" AND outcome = ?");
        values.push(o.into());
    }
    sql.push_str(" ORDER BY seq LIMIT ?");
    values.push((limit as i64).into());
    query(conn, &sql, values)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("", "seq")?,
                RowResult {
                    row_key: r.try_get("", "row_key")?,
                    outcome: r.try_get("", "outcome")?,
                    customer: r.try_get("", "customer")?,
                    errors: from_json(&r.try_get::<String>("", "errors")?, "row errors")?,
                    probability: r.try_get("", "probability")?,
                },
            ))
        })
        .collect()
}

// ---- merges -----------------------------------------------------------------

/// A stored merge: who survived at which revision, and the sealed before-images.
#[derive(Debug, Clone)]
pub struct MergeRecord {
    pub id: String,
    pub survivor: CustomerId,
    pub survivor_revision: i64,
    pub sealed: Vec<u8>,
    pub merge_time: DateTime<Utc>,
}

pub async fn save_merge<C: ConnectionTrait>(conn: &C, m: &MergeRecord, members: &[CustomerId]) -> Result<()> {
    exec(
        conn,
        "INSERT INTO merges (id, survivor_id, survivor_revision, sealed, merge_time) VALUES (?, ?, ?, ?, ?)",
        vec![
            m.id.clone().into(),
            m.survivor.uuid().to_string().into(),
            m.survivor_revision.into(),
            m.sealed.clone().into(),
            m.merge_time.into(),
        ],
    )
    .await?;
    for member in members {
        exec(
            conn,
            "INSERT INTO merge_members (customer_id, merge_id) VALUES (?, ?) ON CONFLICT (customer_id) DO UPDATE SET merge_id = excluded.merge_id",
            vec![member.uuid().to_string().into(), m.id.clone().into()],
        )
        .await?;
    }
    Ok(())
}

/// The merge `member` was merged by, if any.
pub async fn merge_of<C: ConnectionTrait>(conn: &C, member: CustomerId) -> Result<Option<MergeRecord>> {
    let rows = query(
        conn,
        "SELECT m.id, m.survivor_id, m.survivor_revision, m.sealed, m.merge_time FROM merge_members mm \
         JOIN merges m ON m.id = mm.merge_id WHERE mm.customer_id = ?",
        vec![member.uuid().to_string().into()],
    )
    .await?;
    rows.first()
        .map(|r| {
            Ok(MergeRecord {
                id: r.try_get("", "id")?,
                survivor: customer_id(&r.try_get::<String>("", "survivor_id")?)?,
                survivor_revision: r.try_get("", "survivor_revision")?,
                sealed: r.try_get("", "sealed")?,
                merge_time: r.try_get("", "merge_time")?,
            })
        })
        .transpose()
}

pub async fn delete_merge<C: ConnectionTrait>(conn: &C, id: &str) -> Result<()> {
    exec(conn, "DELETE FROM merge_members WHERE merge_id = ?", vec![id.into()]).await?;
    exec(conn, "DELETE FROM merges WHERE id = ?", vec![id.into()]).await?;
    Ok(())
}

/// Points the external ids in `ids` at `to`.
pub async fn relink_external_ids<C: ConnectionTrait>(
    conn: &C,
    ids: &[crate::domain::customer::ExternalId],
    to: CustomerId,
) -> Result<()> {
    for e in ids {
        exec(
            conn,
            "UPDATE customer_external_ids SET customer_id = ? WHERE source = ? AND external_id = ?",
            vec![
                to.uuid().to_string().into(),
                e.source.clone().into(),
                e.external_id.clone().into(),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Sets the state of the pair `(a, b)` if it is recorded.
pub async fn set_pair_state<C: ConnectionTrait>(
    conn: &C,
    a: CustomerId,
    b: CustomerId,
    state: CandidateState,
    at: DateTime<Utc>,
) -> Result<()> {
    exec(
        conn,
        "UPDATE duplicate_candidates SET state = ?, update_time = ? WHERE pair_key = ?",
        vec![state.as_str().into(), at.into(), pair_key(a, b).into()],
    )
    .await?;
    Ok(())
}

/// Removes the open pairs of `customer` (it left the active set).
pub async fn drop_open_candidates<C: ConnectionTrait>(conn: &C, customer: CustomerId) -> Result<()> {
    drop_open_candidates_except(conn, customer, &[]).await
}

// ---- entry statistics and stale reminders ----------------------------------

/// Adds to the counts of `day` (`YYYY-MM-DD`).
pub async fn add_entry_stats<C: ConnectionTrait>(conn: &C, day: &str, accepted: i64, rejected: i64) -> Result<()> {
    exec(
        conn,
        "INSERT INTO entry_stats (day, accepted, rejected) VALUES (?, ?, ?) ON CONFLICT (day) DO UPDATE SET \
         accepted = entry_stats.accepted + excluded.accepted, rejected = entry_stats.rejected + excluded.rejected",
        vec![day.into(), accepted.into(), rejected.into()],
    )
    .await?;
    Ok(())
}

/// Accepted and rejected writes on days from `since` on.
pub async fn entry_stats<C: ConnectionTrait>(conn: &C, since: &str) -> Result<(i64, i64)> {
    let rows = query(
        conn,
        // SUM of BIGINT is NUMERIC on PostgreSQL: cast back.
        "SELECT CAST(COALESCE(SUM(accepted), 0) AS BIGINT) AS a, CAST(COALESCE(SUM(rejected), 0) AS BIGINT) AS r \
         FROM entry_stats WHERE day >= ?",
        vec![since.into()],
    )
    .await?;
    match rows.first() {
        Some(r) => Ok((r.try_get("", "a")?, r.try_get("", "r")?)),
        None => Ok((0, 0)),
    }
}

/// A customer due a stale-profile reminder.
#[derive(Debug, Clone)]
pub struct Stale {
    pub id: CustomerId,
    pub owner_user_id: String,
    pub team_id: String,
    pub confirm_time: DateTime<Utc>,
}

/// Active customers last confirmed before `before` and not reminded since, oldest
/// first; on PostgreSQL locked and skipped by concurrent claimers.
pub async fn claim_stale<C: ConnectionTrait>(conn: &C, before: DateTime<Utc>, limit: u64) -> Result<Vec<Stale>> {
    let lock = if conn.get_database_backend() == sea_orm::DbBackend::Postgres {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let rows = query(
        conn,
        &format!(
            "SELECT id, owner_user_id, team_id, COALESCE(confirm_time, update_time) AS confirmed FROM customers \
             WHERE delete_time IS NULL AND merged_into IS NULL AND COALESCE(confirm_time, update_time) < ? \
             AND (reminder_time IS NULL OR reminder_time < COALESCE(confirm_time, update_time)) \
             ORDER BY confirm_time, id LIMIT ?{lock}"
        ),
        vec![before.into(), (limit as i64).into()],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Stale {
                id: customer_id(&r.try_get::<String>("", "id")?)?,
                owner_user_id: r.try_get("", "owner_user_id")?,
                team_id: r.try_get("", "team_id")?,
                confirm_time: r.try_get("", "confirmed")?,
            })
        })
        .collect()
}

pub async fn set_reminded<C: ConnectionTrait>(conn: &C, id: CustomerId, at: DateTime<Utc>) -> Result<()> {
    set_time(conn, "reminder_time", id, at).await
}

/// Sets a timestamp column of one customer row (no revision: not a data change).
async fn set_time<C: ConnectionTrait>(conn: &C, column: &'static str, id: CustomerId, at: DateTime<Utc>) -> Result<()> {
    exec(
        conn,
        &format!("UPDATE customers SET {column} = ? WHERE id = ?"),
        vec![at.into(), id.uuid().to_string().into()],
    )
    .await?;
    Ok(())
}

/// Ids of customers sealed with another key than `active`.
pub async fn sealed_with_other_key<C: ConnectionTrait>(conn: &C, active: &str, limit: u64) -> Result<Vec<CustomerId>> {
    query(
        conn,
        "SELECT id FROM customers WHERE key_id <> ? ORDER BY id LIMIT ?",
        vec![active.into(), (limit as i64).into()],
    )
    .await?
    .iter()
    .map(|r| customer_id(&r.try_get::<String>("", "id")?))
    .collect()
}

/// Makes the re-encryption job re-seal every customer (after a custom attribute's
/// classification changed which side of the seal its values belong on).
pub async fn mark_all_for_reseal<C: ConnectionTrait>(conn: &C) -> Result<()> {
    exec(conn, "UPDATE customers SET key_id = ''", vec![]).await?;
    Ok(())
}

/// Records that a source confirmed the stored data of `id` at `at`.
pub async fn confirm<C: ConnectionTrait>(conn: &C, id: CustomerId, at: DateTime<Utc>) -> Result<()> {
    set_time(conn, "confirm_time", id, at).await
}

/// Carries the pairs of `from` that a reviewer dismissed over to `to` (a merge
/// survivor), so the same decision is not asked again.
pub async fn carry_dismissed<C: ConnectionTrait>(conn: &C, from: CustomerId, to: CustomerId, at: DateTime<Utc>) -> Result<()> {
    let id = from.uuid().to_string();
    let rows = query(
        conn,
        "SELECT customer_id, other_customer_id, probability, comparisons FROM duplicate_candidates \
         WHERE state = 'dismissed' AND (customer_id = ? OR other_customer_id = ?)",
        vec![id.clone().into(), id.into()],
    )
    .await?;
    for row in rows {
        let a = customer_id(&row.try_get::<String>("", "customer_id")?)?;
        let b = customer_id(&row.try_get::<String>("", "other_customer_id")?)?;
        let other = if a == from { b } else { a };
        if other == to {
            continue;
        }
        exec(
            conn,
            "INSERT INTO duplicate_candidates (id, pair_key, customer_id, other_customer_id, probability, comparisons, state, create_time, update_time) \
             VALUES (?, ?, ?, ?, ?, ?, 'dismissed', ?, ?) ON CONFLICT (pair_key) DO UPDATE SET state = 'dismissed', update_time = excluded.update_time",
            vec![
                uuid::Uuid::now_v7().to_string().into(),
                pair_key(to, other).into(),
                to.uuid().to_string().into(),
                other.uuid().to_string().into(),
                row.try_get::<f64>("", "probability")?.into(),
                row.try_get::<String>("", "comparisons")?.into(),
                at.into(),
                at.into(),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Profile updates since `since` on the change feed: (by the customers themselves
/// through self-service, all).
pub async fn update_counts<C: ConnectionTrait>(conn: &C, since: DateTime<Utc>) -> Result<(i64, i64)> {
    let rows = query(
        conn,
        "SELECT COUNT(*) AS total, COALESCE(SUM(CASE WHEN actor LIKE 'customers/%' THEN 1 ELSE 0 END), 0) AS own \
         FROM outbox WHERE event_type = 'crm.customer.v1.CustomerUpdated' AND occur_time >= ?",
        vec![since.into()],
    )
    .await?;
    Ok(match rows.first() {
        Some(r) => (
            r.try_get::<i64>("", "own")
                .or_else(|_| r.try_get::<i32>("", "own").map(i64::from))?,
            r.try_get("", "total")?,
        ),
        None => (0, 0),
    })
}

// ---- enrichment requests ----------------------------------------------------

const PENDING: &str = "pending";
const FAILED: &str = "failed";

/// Records (or resets) the enrichment request of `id`, due at `due_us`: one row per
/// customer, whatever its state, so repeated triggers coalesce.
pub async fn request_enrichment<C: ConnectionTrait>(conn: &C, id: CustomerId, reason: &str, due_us: i64) -> Result<()> {
    exec(
        conn,
        "INSERT INTO enrichment_requests (customer_id, reason, state, generation, attempts, due_us, request_us, last_error) \
         VALUES (?, ?, ?, 1, 0, ?, ?, '') ON CONFLICT (customer_id) DO UPDATE SET reason = excluded.reason, \
         state = excluded.state, generation = enrichment_requests.generation + 1, attempts = 0, \
         due_us = excluded.due_us, request_us = excluded.request_us, last_error = ''",
        vec![
            id.uuid().to_string().into(),
            reason.into(),
            PENDING.into(),
            due_us.into(),
            due_us.into(),
        ],
    )
    .await?;
    Ok(())
}

/// A request claimed for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrichmentClaim {
    pub customer_id: CustomerId,
    pub generation: i64,
    /// Including this one.
    pub attempts: i64,
    pub reason: String,
}

/// Claims up to `limit` pending requests due at `now_us` for one attempt each,
/// pushing their due time to `lease_us` and counting the attempt. Within `txn`:
/// PostgreSQL skips rows another replica is claiming (`FOR UPDATE SKIP LOCKED`),
/// SQLite has one writer; the conditional update claims a row at most once either way.
pub async fn claim_enrichment(
    txn: &sea_orm::DatabaseTransaction,
    now_us: i64,
    lease_us: i64,
    limit: u64,
) -> Result<Vec<EnrichmentClaim>> {
    let lock = if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let rows = query(
        txn,
        &format!(
            "SELECT customer_id, generation, attempts, reason FROM enrichment_requests \
             WHERE state = ? AND due_us <= ? ORDER BY due_us, customer_id LIMIT ?{lock}"
        ),
        vec![PENDING.into(), now_us.into(), i64::try_from(limit).unwrap_or(i64::MAX).into()],
    )
    .await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.try_get("", "customer_id")?;
        let generation: i64 = row.try_get("", "generation")?;
        let n = exec(
            txn,
            "UPDATE enrichment_requests SET attempts = attempts + 1, due_us = ? \
             WHERE customer_id = ? AND generation = ? AND state = ? AND due_us <= ?",
            vec![
                lease_us.into(),
                id.clone().into(),
                generation.into(),
                PENDING.into(),
                now_us.into(),
            ],
        )
        .await?;
        if n == 1 {
            claimed.push(EnrichmentClaim {
                customer_id: customer_id(&id)?,
                generation,
                attempts: row.try_get::<i64>("", "attempts")? + 1,
                reason: row.try_get("", "reason")?,
            });
        }
    }
    Ok(claimed)
}

/// Is `generation` still the request of `id` (no newer trigger reset it)?
pub async fn enrichment_current<C: ConnectionTrait>(conn: &C, id: CustomerId, generation: i64) -> Result<bool> {
    let rows = query(
        conn,
        "SELECT generation FROM enrichment_requests WHERE customer_id = ? AND generation = ?",
        vec![id.uuid().to_string().into(), generation.into()],
    )
    .await?;
    Ok(!rows.is_empty())
}

/// Removes a completed request, unless a newer trigger reset it meanwhile.
pub async fn finish_enrichment<C: ConnectionTrait>(conn: &C, id: CustomerId, generation: i64) -> Result<()> {
    exec(
        conn,
        "DELETE FROM enrichment_requests WHERE customer_id = ? AND generation = ?",
        vec![id.uuid().to_string().into(), generation.into()],
    )
    .await?;
    Ok(())
}

/// Records a failed attempt: due again at `retry_us`, or (`retry_us` = None) kept
/// as failed for good. Either way with `error`; a request reset meanwhile is left alone.
pub async fn fail_enrichment<C: ConnectionTrait>(
    conn: &C,
    id: CustomerId,
    generation: i64,
    retry_us: Option<i64>,
    error: &str,
) -> Result<()> {
    let (state, due) = match retry_us {
        Some(at) => (PENDING, Some(at)),
        None => (FAILED, None),
    };
    exec(
        conn,
        "UPDATE enrichment_requests SET state = ?, due_us = COALESCE(?, due_us), last_error = ? \
         WHERE customer_id = ? AND generation = ?",
        vec![
            state.into(),
            due.into(),
            error.into(),
            id.uuid().to_string().into(),
            generation.into(),
        ],
    )
    .await?;
    Ok(())
}

/// An enrichment request as stored, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrichmentRequest {
    pub reason: String,
    /// `pending` or `failed`.
    pub state: String,
    pub attempts: i64,
    pub last_error: String,
}

/// The request of `id`, if one is pending or failed.
pub async fn enrichment_request<C: ConnectionTrait>(conn: &C, id: CustomerId) -> Result<Option<EnrichmentRequest>> {
    let rows = query(
        conn,
        "SELECT reason, state, attempts, last_error FROM enrichment_requests WHERE customer_id = ?",
        vec![id.uuid().to_string().into()],
    )
    .await?;
    rows.first()
        .map(|r| {
            Ok(EnrichmentRequest {
                reason: r.try_get("", "reason")?,
                state: r.try_get("", "state")?,
                attempts: r.try_get("", "attempts")?,
                last_error: r.try_get("", "last_error")?,
            })
        })
        .transpose()
}
