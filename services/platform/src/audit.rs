//! The audit trail a service hands to the permissions service's tamper-evident
//! log, without ever losing an entry.
//!
//! Two durable sources feed it. Every change is already an event in the service's
//! outbox (same transaction as the change), so changes are audited from the feed.
//! Sensitive reads and denials are written to the local `audit_spool` table. A
//! forwarder ships both in batches to the permissions service (idempotent by entry
//! id) and only then advances its cursor or deletes the spooled rows; while the
//! permissions service is down, entries wait in the service's own database.

use std::{sync::Arc, time::Duration};

use crm_proto::crm::{
    events::v1::Event,
    permissions::v1::{AuditEntry, audit_entry::Outcome},
};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::{
    auth::Principal,
    authz::{PolicyDecisionPoint, hex},
    db::{begin_write, chunks_by_size, in_list},
    error::{Error, Result},
    feed::{Cursor, Feed, timestamp},
    migrate::{Dialect, placeholders},
    server::ShutdownSignal,
};

/// Tables of the spool and the feed cursor; part of each service's migrations.
pub fn migration_sql(d: Dialect) -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE audit_spool (seq {}, entry {} NOT NULL)",
            d.serial_primary_key(),
            d.bytes()
        ),
        "CREATE TABLE audit_feed_position (id INTEGER PRIMARY KEY, cursor TEXT NOT NULL)".to_owned(),
    ]
}

/// Entries read per round.
const BATCH: usize = 500;

/// Bytes per `WriteAuditEntries` call at most (the server takes 1 MiB messages).
const CALL_BYTES: usize = 256 * 1024;

/// Keeps an entry within what the audit log accepts, so one oversized entry can
/// never block the entries behind it: long texts are cut (marked with `…`), long
/// lists are cut and their length noted in `reason`.
pub fn clamp(mut e: AuditEntry) -> AuditEntry {
    fn cut(s: &mut String, max: usize) {
        if s.chars().count() > max {
            *s = s.chars().take(max.saturating_sub(1)).collect::<String>() + "…";
        }
    }
    cut(&mut e.resource, 500);
    cut(&mut e.action, 200);
    cut(&mut e.source, 64);
    if e.related_resources.len() > 1000 {
        e.reason = format!("{} (related_resources cut from {})", e.reason, e.related_resources.len());
        e.related_resources.truncate(1000);
    }
    for r in &mut e.related_resources {
        cut(r, 500);
    }
    e.fields.truncate(200);
    cut(&mut e.reason, 1000);
    e
}

/// A service's audit spool and forwarder.
#[derive(Clone, Debug)]
pub struct AuditSpool {
    db: DatabaseConnection,
    source: &'static str,
    wake: Arc<Notify>,
}

impl AuditSpool {
    pub fn new(db: DatabaseConnection, source: &'static str) -> Self {
        Self {
            db,
            source,
            wake: Arc::new(Notify::new()),
        }
    }

    /// A new entry by `principal`, stamped now with the current trace.
    pub fn entry(&self, principal: &Principal, action: &str, resource: &str, outcome: Outcome) -> AuditEntry {
        AuditEntry {
            id: uuid::Uuid::now_v7().to_string(),
            time: Some(timestamp(chrono::Utc::now())),
            source: self.source.into(),
            actor: principal.user_id.clone(),
            action: action.into(),
            resource: resource.into(),
            trace_id: crate::telemetry::current_traceparent()
                .and_then(|tp| tp.split('-').nth(1).map(str::to_owned))
                .unwrap_or_default(),
            outcome: outcome as i32,
            ..AuditEntry::default()
        }
    }

    /// Writes entries to the spool in their own transaction.
    pub async fn record_now(&self, entries: Vec<AuditEntry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let txn = begin_write(&self.db).await?;
        record(&txn, &entries).await?;
        txn.commit().await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Ships the feed's changes and the spooled entries until shutdown. `fields`
    /// names the fields an event changed (service-specific payloads).
    pub async fn run_forwarder(
        self,
        pdp: Arc<dyn PolicyDecisionPoint>,
        feed: Feed,
        fields: fn(&Event) -> Vec<String>,
        mut shutdown: ShutdownSignal,
    ) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let shipped = match self.forward_once(pdp.as_ref(), &feed, fields).await {
                Ok(n) => {
                    backoff = Duration::from_millis(200);
                    n
                }
                Err(err) => {
                    tracing::warn!(%err, "audit entries not shipped yet; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    0
                }
            };
            if shipped > 0 {
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(backoff.max(Duration::from_secs(1))) => {}
                _ = shutdown.wait() => return,
            }
        }
    }

    /// One round: a batch of feed events, then a batch of spooled entries. Returns
    /// how many entries were shipped.
    pub async fn forward_once(
        &self,
        pdp: &dyn PolicyDecisionPoint,
        feed: &Feed,
        fields: fn(&Event) -> Vec<String>,
    ) -> Result<usize> {
        let backend = self.db.get_database_backend();
        let position = self
            .db
            .query_one_raw(Statement::from_string(
                backend,
                "SELECT cursor FROM audit_feed_position WHERE id = 1",
            ))
            .await?
            .map(|r| r.try_get::<String>("", "cursor"))
            .transpose()?
            .unwrap_or_default();
        let events = feed.read(Cursor::parse(&position)?, BATCH as u32).await?;
        let mut shipped = 0;
        if let Some(last) = events.last().map(|e| e.cursor.clone()) {
            let entries: Vec<AuditEntry> = events.iter().map(|e| clamp(self.entry_of_event(e, fields(e)))).collect();
            shipped += entries.len();
            ship(pdp, entries).await?;
            let sql = if backend == sea_orm::DbBackend::Postgres {
                "INSERT INTO audit_feed_position (id, cursor) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET cursor = EXCLUDED.cursor"
            } else {
                "INSERT OR REPLACE INTO audit_feed_position (id, cursor) VALUES (1, ?)"
            };
            self.db
                .execute_raw(Statement::from_sql_and_values(
                    backend,
                    placeholders(backend, sql),
                    [Value::from(last)],
                ))
                .await?;
        }
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                placeholders(backend, "SELECT seq, entry FROM audit_spool ORDER BY seq LIMIT ?"),
                [Value::from(BATCH as i64)],
            ))
            .await?;
        if !rows.is_empty() {
            let mut seqs = Vec::with_capacity(rows.len());
            let mut entries = Vec::with_capacity(rows.len());
            for row in &rows {
                seqs.push(row.try_get::<i64>("", "seq")?.to_string());
                let bytes: Vec<u8> = row.try_get("", "entry")?;
                entries.push(clamp(prost::Message::decode(bytes.as_slice()).map_err(Error::internal)?));
            }
            shipped += entries.len();
            ship(pdp, entries).await?;
            // Exactly the rows shipped: on PostgreSQL a lower `seq` may commit later.
            let seqs: Vec<&str> = seqs.iter().map(String::as_str).collect();
            in_list(
                &self.db,
                "DELETE FROM audit_spool WHERE CAST(seq AS TEXT) <> ? AND CAST(seq AS TEXT)",
                "",
                &seqs,
            )
            .await?;
        }
        Ok(shipped)
    }

    /// The audit entry of a change event: who, what (the event type), which
    /// resource, which fields, and a digest of the state after the change.
    fn entry_of_event(&self, e: &Event, fields: Vec<String>) -> AuditEntry {
        AuditEntry {
            // Deterministic, so a re-shipped event is recognised as a duplicate.
            id: format!("{}:{}", self.source, e.id),
            time: e.time,
            source: self.source.into(),
            actor: e.actor.clone(),
            action: e.r#type.clone(),
            resource: e.subject.clone(),
            fields,
            after_digest: e.data.as_ref().map(|d| hex(&Sha256::digest(&d.value))).unwrap_or_default(),
            trace_id: e.traceparent.split('-').nth(1).unwrap_or_default().to_owned(),
            outcome: Outcome::Success as i32,
            ..AuditEntry::default()
        }
    }
}

/// Sends entries in calls of at most [`CALL_BYTES`].
async fn ship(pdp: &dyn PolicyDecisionPoint, entries: Vec<AuditEntry>) -> Result<()> {
    for chunk in crate::db::chunks_by_size_limit(&entries, 1000, CALL_BYTES, prost::Message::encoded_len) {
        pdp.write_audit(chunk.to_vec()).await?;
    }
    Ok(())
}

/// Writes entries to the spool inside the caller's transaction.
pub async fn record<C: ConnectionTrait>(conn: &C, entries: &[AuditEntry]) -> Result<()> {
    let backend = conn.get_database_backend();
    let encoded: Vec<Vec<u8>> = entries
        .iter()
        .map(|e| prost::Message::encode_to_vec(&clamp(e.clone())))
        .collect();
    for chunk in chunks_by_size(&encoded, 200, Vec::len) {
        let marks = vec!["(?)"; chunk.len()].join(", ");
        let values: Vec<Value> = chunk.iter().map(|b| Value::from(b.clone())).collect();
        conn.execute_raw(Statement::from_sql_and_values(
            backend,
            placeholders(backend, &format!("INSERT INTO audit_spool (entry) VALUES {marks}")),
            values,
        ))
        .await?;
    }
    Ok(())
}
