//! The audit log table: appending links under the chain lock, reading pages,
//! scanning for verification.

use crm_platform::{Error, Result};
use crm_proto::crm::permissions::v1::AuditEntry;
use prost::Message;
use sea_orm::{ConnectionTrait, QueryResult, Value};

use super::{exec, query};

use crate::domain::chain::{self, Link};
/// A protobuf time in microseconds, saturating (times are validated on entry).
pub use crm_platform::feed::micros;

/// The last link: (sequence, hash); for an empty log the retention anchor, or (0, "").
pub async fn head<C: ConnectionTrait>(c: &C) -> Result<(i64, String)> {
    let rows = query(c, "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1", vec![]).await?;
    match rows.first() {
        Some(r) => Ok((r.try_get("", "seq")?, r.try_get("", "hash")?)),
        None => anchor(c).await,
    }
}

/// Where the chain starts: the last entry retention purged (sequence, hash), or (0, "").
pub async fn anchor<C: ConnectionTrait>(c: &C) -> Result<(i64, String)> {
    let rows = query(c, "SELECT seq, hash FROM audit_anchor WHERE singleton = 1", vec![]).await?;
    Ok(match rows.first() {
        Some(r) => (r.try_get("", "seq")?, r.try_get("", "hash")?),
        None => (0, String::new()),
    })
}

/// The last entry of the prefix older than `cutoff_us` (every entry up to it is
/// older): its sequence and hash, and how many entries the prefix holds after the
/// anchor. `None` when there is nothing to purge.
pub async fn expired_prefix<C: ConnectionTrait>(c: &C, cutoff_us: i64) -> Result<Option<(i64, String, i64)>> {
    let (start, _) = anchor(c).await?;
    let rows = query(
        c,
        "SELECT MIN(seq) AS first_kept FROM audit_log WHERE time_us >= ?",
        vec![cutoff_us.into()],
    )
    .await?;
    let first_kept: Option<i64> = match rows.first() {
        Some(r) => r.try_get("", "first_kept")?,
        None => None,
    };
    let last = match first_kept {
        Some(kept) => kept - 1,
        None => head(c).await?.0,
    };
    if last <= start {
        return Ok(None);
    }
    let rows = query(c, "SELECT hash FROM audit_log WHERE seq = ?", vec![last.into()]).await?;
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    Ok(Some((last, r.try_get("", "hash")?, last - start)))
}

/// Deletes the entries up to `seq` and makes `(seq, hash)` the anchor.
pub async fn purge_through<C: ConnectionTrait>(c: &C, seq: i64, hash: &str, now_us: i64) -> Result<()> {
    exec(c, "DELETE FROM audit_log WHERE seq <= ?", vec![seq.into()]).await?;
    exec(
        c,
        "INSERT INTO audit_anchor (singleton, seq, hash, purge_us) VALUES (1, ?, ?, ?) \
         ON CONFLICT (singleton) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, purge_us = excluded.purge_us",
        vec![seq.into(), hash.into(), now_us.into()],
    )
    .await?;
    Ok(())
}

/// Which of `ids` are already in the log.
pub async fn existing_ids<C: ConnectionTrait>(c: &C, ids: &[&str]) -> Result<Vec<String>> {
    let rows = crm_platform::db::in_list(c, "SELECT entry_id FROM audit_log WHERE entry_id <> ? AND entry_id", "", ids).await?;
    rows.iter().map(|r| Ok(r.try_get("", "entry_id")?)).collect()
}

/// The newest `after_digest` recorded for each resource in `resources`.
pub async fn last_digest<C: ConnectionTrait>(c: &C, resource: &str) -> Result<Option<String>> {
    let rows = query(
        c,
        "SELECT content FROM audit_log WHERE resource = ? ORDER BY seq DESC LIMIT 20",
        vec![resource.into()],
    )
    .await?;
    for r in &rows {
        let bytes: Vec<u8> = r.try_get("", "content")?;
        let entry = AuditEntry::decode(bytes.as_slice()).map_err(Error::internal)?;
        if !entry.after_digest.is_empty() {
            return Ok(Some(entry.after_digest));
        }
    }
    Ok(None)
}

/// Appends `entries` after the head, inside the caller's transaction (which holds
/// the chain lock). Returns the new head.
pub async fn append<C: ConnectionTrait>(c: &C, entries: Vec<AuditEntry>) -> Result<(i64, String)> {
    let (mut seq, mut prev) = head(c).await?;
    for entry in entries {
        seq += 1;
        let content = chain::content(&entry);
        let hash = chain::hash(seq, &prev, &content);
        let time_us = entry.time.as_ref().map(micros).unwrap_or_default();
        exec(
            c,
            "INSERT INTO audit_log (seq, entry_id, actor, resource, outcome, time_us, content, previous_hash, hash) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                seq.into(),
                entry.id.clone().into(),
                entry.actor.clone().into(),
                entry.resource.clone().into(),
                entry.outcome.into(),
                time_us.into(),
                content.into(),
                prev.clone().into(),
                hash.clone().into(),
            ],
        )
        .await?;
        prev = hash;
    }
    Ok((seq, prev))
}

/// A stored entry with the fields the log assigns.
pub fn decode(r: &QueryResult) -> Result<AuditEntry> {
    let seq: i64 = r.try_get("", "seq")?;
    let bytes: Vec<u8> = r.try_get("", "content")?;
    let mut entry = AuditEntry::decode(bytes.as_slice()).map_err(Error::internal)?;
    entry.name = format!("auditEntries/{seq}");
    entry.previous_hash = r.try_get("", "previous_hash")?;
    entry.hash = r.try_get("", "hash")?;
    Ok(entry)
}

/// Filters of a listing.
#[derive(Debug, Default, Clone)]
pub struct AuditQuery {
    pub actor: String,
    pub resource: String,
    pub outcome: i32,
    pub start_us: Option<i64>,
    pub end_us: Option<i64>,
    /// Newest first: entries with a sequence below this (0 = from the head).
    pub before_seq: i64,
    pub limit: u64,
}

pub async fn list<C: ConnectionTrait>(c: &C, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
    let mut sql = String::from("SELECT seq, content, previous_hash, hash FROM audit_log WHERE 1 = 1");
    let mut values: Vec<Value> = Vec::new();
    if q.before_seq > 0 {
        sql.push_str(" AND seq < ?");
        values.push(q.before_seq.into());
    }
    for (col, v) in [("actor", &q.actor), ("resource", &q.resource)] {
        if !v.is_empty() {
            sql.push_str(&format!(" AND {col} = ?"));
            values.push(v.clone().into());
        }
    }
    if q.outcome != 0 {
        sql.push_str(" AND outcome = ?");
        values.push(q.outcome.into());
    }
    if let Some(t) = q.start_us {
        sql.push_str(" AND time_us >= ?");
        values.push(t.into());
    }
    if let Some(t) = q.end_us {
        sql.push_str(" AND time_us < ?");
        values.push(t.into());
    }
    sql.push_str(" ORDER BY seq DESC LIMIT ?");
    values.push((q.limit as i64).into());
    query(c, &sql, values).await?.iter().map(decode).collect()
}

/// Links after `after_seq` in order, with a check that the filter columns still
/// match the hashed content (an edit of a copy would mislead searches).
pub async fn links<C: ConnectionTrait>(c: &C, after_seq: i64, limit: u64) -> Result<Vec<(Link, bool)>> {
    let rows = query(
        c,
        "SELECT seq, entry_id, actor, resource, outcome, time_us, content, previous_hash, hash FROM audit_log \
         WHERE seq > ? ORDER BY seq LIMIT ?",
        vec![after_seq.into(), (limit as i64).into()],
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let content: Vec<u8> = r.try_get("", "content")?;
        let copies_match = match AuditEntry::decode(content.as_slice()) {
            Ok(e) => {
                let time_us = e.time.as_ref().map(micros).unwrap_or_default();
                e.id == r.try_get::<String>("", "entry_id")?
                    && e.actor == r.try_get::<String>("", "actor")?
                    && e.resource == r.try_get::<String>("", "resource")?
                    && e.outcome == r.try_get::<i32>("", "outcome")?
                    && time_us == r.try_get::<i64>("", "time_us")?
            }
            Err(_) => false,
        };
        out.push((
            Link {
                sequence: r.try_get("", "seq")?,
                content,
                previous_hash: r.try_get("", "previous_hash")?,
                hash: r.try_get("", "hash")?,
            },
            copies_match,
        ));
    }
    Ok(out)
}
