//! The change feed: events written to the `outbox` table in the same transaction as
//! the change, and `StreamEvents`, which replays them after a cursor and then tails.
//!
//! Ordering. A plain auto-increment position skips rows whose transaction commits
//! after a later-numbered one was already read. On PostgreSQL each row records the
//! id of its writing transaction (`tx_id`), the feed is ordered by `(tx_id, id)`, and a
//! reader only returns rows with `tx_id` below the oldest transaction still running
//! (`pg_snapshot_xmin`): that set can no longer grow below the cursor, so no row is
//! ever skipped, and writers never wait on each other. The price is that a long
//! write transaction holds the feed back until it ends. On SQLite writers are
//! serialised by the database lock, so `id` order is commit order and `tx_id` is 0.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use crm_proto::crm::events::v1::{Event, Heartbeat, StreamEventsResponse, stream_events_response::Kind};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::{
    config::FeedConfig,
    crypto::Keyring,
    db::begin_write,
    error::{Error, Result},
    migrate::{Dialect, placeholders},
    server::ShutdownSignal,
};

/// Tables of the feed; a service's first migration includes them.
pub fn migration_sql(d: Dialect) -> Vec<String> {
    let tx_id_default = if d.is_postgres() {
        "(pg_current_xact_id()::text::bigint)"
    } else {
        "0"
    };
    let id = if d.is_postgres() {
        "id BIGINT GENERATED ALWAYS AS IDENTITY"
    } else {
        "id INTEGER PRIMARY KEY AUTOINCREMENT"
    };
    let key = if d.is_postgres() { ", PRIMARY KEY (tx_id, id)" } else { "" };
    vec![
        format!(
            "CREATE TABLE outbox ({id}, tx_id BIGINT NOT NULL DEFAULT {tx_id_default}, event_id TEXT NOT NULL, \
             event_type TEXT NOT NULL, subject TEXT NOT NULL, actor TEXT NOT NULL, traceparent TEXT NOT NULL, \
             occur_time {ts} NOT NULL, data {bytes} NOT NULL{key})",
            ts = d.timestamp(),
            bytes = d.bytes(),
        ),
        "CREATE INDEX outbox_occur_time ON outbox (occur_time)".into(),
        "CREATE TABLE outbox_purged (singleton INTEGER PRIMARY KEY CHECK (singleton = 1), tx_id BIGINT NOT NULL, id BIGINT NOT NULL)"
            .into(),
    ]
}

/// A position in the feed. Encoded as 32 hex digits so it sorts as text too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Cursor {
    pub tx_id: i64,
    pub id: i64,
}

impl Cursor {
    pub fn encode(self) -> String {
        format!("{:016x}{:016x}", self.tx_id, self.id)
    }

    /// Parses a cursor; empty means the start of the feed.
    pub fn parse(text: &str) -> Result<Self> {
        if text.is_empty() {
            return Ok(Self::default());
        }
        let bad = || {
            Error::invalid(
                "after_cursor",
                "not a cursor of this feed: pass back an `Event.cursor` unchanged",
            )
        };
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let tx_id = i64::from_str_radix(&text[..16], 16).map_err(|_| bad())?;
        let id = i64::from_str_radix(&text[16..], 16).map_err(|_| bad())?;
        Ok(Self { tx_id, id })
    }
}

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Fully-qualified protobuf name of `data`, e.g. `crm.customer.v1.CustomerCreated`.
    pub event_type: &'static str,
    /// Resource name of what changed.
    pub subject: String,
    /// User id of the caller; empty for system jobs.
    pub actor: String,
    /// The encoded domain event.
    pub data: Vec<u8>,
}

impl NewEvent {
    /// Encrypts the payload at rest (it holds personal data); the feed opens it with
    /// the same keyring ([`Feed::with_keyring`]) before serving it.
    pub fn sealed(mut self, keyring: &Keyring) -> Result<Self> {
        self.data = keyring.seal(&self.data, self.subject.as_bytes())?;
        Ok(self)
    }
}

/// Empties the payloads of the events about `subject` and every subject under it
/// (`subject/...`), for an erasure: the events keep their type, subject, time and
/// actor, so cursors and the audit trail stay whole. Returns how many changed.
pub async fn empty_payloads<C: ConnectionTrait>(conn: &C, subject: &str) -> Result<u64> {
    // `s/` up to `s0` holds every subject under `s` ('0' follows '/').
    crate::db::exec(
        conn,
        "UPDATE outbox SET data = ? WHERE (subject = ? OR (subject >= ? AND subject < ?)) AND data <> ?",
        vec![
            Value::from(Vec::<u8>::new()),
            subject.into(),
            format!("{subject}/").into(),
            format!("{subject}0").into(),
            Value::from(Vec::<u8>::new()),
        ],
    )
    .await
}

/// Writes `event` inside the caller's transaction. Call [`Feed::committed`] after
/// the commit to wake this process's streams at once.
pub async fn append<C: ConnectionTrait>(txn: &C, event: NewEvent) -> Result<()> {
    let backend = txn.get_database_backend();
    let traceparent = crate::telemetry::current_traceparent().unwrap_or_default();
    txn.execute_raw(Statement::from_sql_and_values(
        backend,
        placeholders(
            backend,
            "INSERT INTO outbox (event_id, event_type, subject, actor, traceparent, occur_time, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
        ),
        [
            uuid::Uuid::now_v7().to_string().into(),
            event.event_type.into(),
            event.subject.into(),
            event.actor.into(),
            traceparent.into(),
            Utc::now().into(),
            event.data.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Writes `events`, in order, inside the caller's transaction, with multi-row
/// inserts (bulk paths such as imports).
pub async fn append_many<C: ConnectionTrait>(txn: &C, events: Vec<NewEvent>) -> Result<()> {
    let backend = txn.get_database_backend();
    let traceparent = crate::telemetry::current_traceparent().unwrap_or_default();
    let now = Utc::now();
    if backend == sea_orm::DbBackend::Postgres
        && events.len() >= 2
        && !events.iter().any(|e| e.subject.contains(SEP) || e.actor.contains(SEP))
    {
        return append_unnest(txn, &events, &traceparent, now).await;
    }
    for chunk in crate::db::chunks_by_size(&events, 500, |e| e.data.len() + e.subject.len() + 120) {
        let rows = vec!["(?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 7);
        for e in chunk {
            values.extend([
                uuid::Uuid::now_v7().to_string().into(),
                e.event_type.into(),
                e.subject.clone().into(),
                e.actor.clone().into(),
                traceparent.clone().into(),
                now.into(),
                e.data.clone().into(),
            ]);
        }
        let sql =
            format!("INSERT INTO outbox (event_id, event_type, subject, actor, traceparent, occur_time, data) VALUES {rows}");
        txn.execute_raw(Statement::from_sql_and_values(backend, placeholders(backend, &sql), values))
            .await?;
    }
    Ok(())
}

/// Separates the elements of the text arrays of [`append_unnest`].
const SEP: char = '\u{1f}';

/// PostgreSQL's bulk path: each column travels as one text parameter split into an
/// array (`unnest`), thousands of events per statement instead of hundreds of bound
/// parameters per few rows. Chunks hold at least two events, so every array splits
/// into as many elements as there are events (an empty text splits into none).
async fn append_unnest<C: ConnectionTrait>(
    txn: &C,
    events: &[NewEvent],
    traceparent: &str,
    now: chrono::DateTime<Utc>,
) -> Result<()> {
    use std::fmt::Write;
    const CHUNK: usize = 5000;
    let mut start = 0;
    while start < events.len() {
        // Never leave a single event for the last chunk.
        let mut end = (start + CHUNK).min(events.len());
        if events.len() - end == 1 {
            end -= 1;
        }
        let chunk = &events[start..end];
        let sep = SEP.to_string();
        let ids: Vec<String> = chunk.iter().map(|_| uuid::Uuid::now_v7().to_string()).collect();
        let mut data = String::new();
        for (i, e) in chunk.iter().enumerate() {
            if i > 0 {
                data.push(SEP);
            }
            for b in &e.data {
                let _ = write!(data, "{b:02x}");
            }
        }
        let column = |f: &dyn Fn(&NewEvent) -> &str| chunk.iter().map(f).collect::<Vec<_>>().join(&sep);
        let sql = "INSERT INTO outbox (event_id, event_type, subject, actor, traceparent, occur_time, data) \
                   SELECT u.e, u.t, u.s, u.a, ?, ?, decode(u.d, 'hex') FROM unnest(string_to_array(?, chr(31)), \
                   string_to_array(?, chr(31)), string_to_array(?, chr(31)), string_to_array(?, chr(31)), \
                   string_to_array(?, chr(31))) WITH ORDINALITY AS u(e, t, s, a, d, n) ORDER BY u.n";
        let values: Vec<Value> = vec![
            traceparent.into(),
            now.into(),
            ids.join(&sep).into(),
            column(&|e| e.event_type).into(),
            column(&|e| e.subject.as_str()).into(),
            column(&|e| e.actor.as_str()).into(),
            data.into(),
        ];
        let backend = txn.get_database_backend();
        txn.execute_raw(Statement::from_sql_and_values(backend, placeholders(backend, sql), values))
            .await?;
        start = end;
    }
    Ok(())
}

/// A service's feed: reads, streams and purges its outbox.
#[derive(Clone, Debug)]
pub struct Feed {
    db: DatabaseConnection,
    source: &'static str,
    cfg: FeedConfig,
    commits: Arc<watch::Sender<u64>>,
    shutdown: ShutdownSignal,
    keyring: Option<Arc<Keyring>>,
    audit_hold: bool,
}

impl Feed {
    pub fn new(db: DatabaseConnection, source: &'static str, cfg: FeedConfig, shutdown: ShutdownSignal) -> Self {
        Self {
            db,
            source,
            cfg,
            commits: Arc::new(watch::channel(0).0),
            shutdown,
            keyring: None,
            audit_hold: false,
        }
    }

    /// Opens event payloads sealed with [`NewEvent::sealed`] before they are served.
    pub fn with_keyring(mut self, keyring: Arc<Keyring>) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// Retention never purges events the audit forwarder has not shipped yet
    /// (see [`crate::audit`]): the audit trail of a change is its event.
    pub fn with_audit_hold(mut self) -> Self {
        self.audit_hold = true;
        self
    }

    /// Tells this process's streams that new events were committed.
    pub fn committed(&self) {
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn purged_through(&self) -> Result<Cursor> {
        let row = self
            .db
            .query_one_raw(Statement::from_string(
                self.db.get_database_backend(),
                "SELECT tx_id, id FROM outbox_purged WHERE singleton = 1",
            ))
            .await?;
        Ok(match row {
            Some(row) => Cursor {
                tx_id: row.try_get("", "tx_id")?,
                id: row.try_get("", "id")?,
            },
            None => Cursor::default(),
        })
    }

    /// Up to `limit` committed events after `after`, in feed order. Fails with
    /// FAILED_PRECONDITION when events after `after` were already purged.
    pub async fn read(&self, after: Cursor, limit: u32) -> Result<Vec<Event>> {
        let purged = self.purged_through().await?;
        self.check_not_expired(after, purged)?;
        let requested = after;
        let after = after.max(purged);
        let backend = self.db.get_database_backend();
        let sql = match backend {
            DbBackend::Postgres => {
                "SELECT tx_id, id, event_id, event_type, subject, actor, traceparent, occur_time, data FROM outbox \
                 WHERE (tx_id, id) > ($1, $2) AND tx_id < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
                 ORDER BY tx_id, id LIMIT $3"
            }
            // tx_id is always 0 on SQLite: `id` alone is the position, and the rowid order.
            _ => {
                "SELECT tx_id, id, event_id, event_type, subject, actor, traceparent, occur_time, data FROM outbox \
                 WHERE tx_id = ? AND id > ? ORDER BY id LIMIT ?"
            }
        };
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                sql,
                [after.tx_id.into(), after.id.into(), i64::from(limit).into()],
            ))
            .await?;
        // A purge that committed between the check above and this read may have removed
        // events after `requested` that the read then could not see.
        self.check_not_expired(requested, self.purged_through().await?)?;
        rows.iter().map(|row| self.decode(row)).collect()
    }

    /// A cursor this feed cannot have issued (beyond every position assigned so far)
    /// would otherwise wait silently forever: a typo, another service's cursor, or a
    /// database restored into a new PostgreSQL cluster, whose transaction ids restart.
    async fn check_not_ahead(&self, after: Cursor) -> Result<()> {
        let backend = self.db.get_database_backend();
        let sql = match backend {
            // Every transaction id below xmax has been assigned.
            DbBackend::Postgres => "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS head",
            _ => "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0) AS head",
        };
        let row = self.db.query_one_raw(Statement::from_string(backend, sql)).await?;
        let head: i64 = match row {
            Some(row) => row.try_get("", "head")?,
            None => 0,
        };
        let ahead = match backend {
            DbBackend::Postgres => after.tx_id >= head,
            _ => after.tx_id != 0 || after.id > head,
        };
        if after != Cursor::default() && ahead {
            return Err(Error::FailedPrecondition {
                reason: "FEED_CURSOR_UNKNOWN",
                subject: after.encode(),
                message: "this feed never issued this cursor (was the database restored elsewhere?): resynchronise from the List methods, then stream from an empty cursor".into(),
            });
        }
        Ok(())
    }

    /// An empty cursor asks for the oldest retained event; any other cursor before the
    /// purge point has missed events.
    fn check_not_expired(&self, after: Cursor, purged: Cursor) -> Result<()> {
        if after != Cursor::default() && after < purged {
            return Err(Error::FailedPrecondition {
                reason: "FEED_CURSOR_EXPIRED",
                subject: after.encode(),
                message: format!(
                    "events after this cursor were purged (retention {} days): resynchronise from the List methods, then stream from an empty cursor",
                    self.cfg.retention_days
                ),
            });
        }
        Ok(())
    }

    fn decode(&self, row: &sea_orm::QueryResult) -> Result<Event> {
        let cursor = Cursor {
            tx_id: row.try_get("", "tx_id")?,
            id: row.try_get("", "id")?,
        };
        let event_type: String = row.try_get("", "event_type")?;
        let subject: String = row.try_get("", "subject")?;
        let mut data: Vec<u8> = row.try_get("", "data")?;
        if let Some(keyring) = &self.keyring
            && crate::crypto::is_sealed(&data)
        {
            data = keyring.open(&data, subject.as_bytes())?;
        }
        let time: DateTime<Utc> = row.try_get("", "occur_time")?;
        Ok(Event {
            cursor: cursor.encode(),
            id: row.try_get("", "event_id")?,
            subject,
            source: self.source.to_owned(),
            time: Some(timestamp(time)),
            actor: row.try_get("", "actor")?,
            traceparent: row.try_get("", "traceparent")?,
            data: Some(prost_types::Any {
                type_url: format!("type.googleapis.com/{event_type}"),
                value: data,
            }),
            r#type: event_type,
        })
    }

    /// The `StreamEvents` response stream: replay after `after_cursor`, then tail until
    /// the client goes away, the server shuts down (UNAVAILABLE: reconnect), or the
    /// caller's token expires at `expires_at` (Unix seconds, 0 = never; UNAUTHENTICATED:
    /// reconnect with a fresh token). Either way the client resumes from its last cursor.
    /// With `event_types`, only events of those types are sent; heartbeats still move
    /// the cursor past the others, so a consumer does not read them again.
    pub async fn stream(
        &self,
        after_cursor: &str,
        event_types: &[String],
        expires_at: u64,
    ) -> Result<ReceiverStream<Result<StreamEventsResponse, Status>>> {
        let start = Cursor::parse(after_cursor)?;
        let types: std::collections::HashSet<String> = event_types.iter().cloned().collect();
        // Fail fast (as the call's status, not mid-stream) on an expired or unknown cursor.
        self.check_not_ahead(start).await?;
        self.read(start, 1).await?;
        let (tx, rx) = mpsc::channel(64);
        let feed = self.clone();
        let until = (expires_at > 0).then(|| {
            let now = u64::try_from(Utc::now().timestamp()).unwrap_or(0);
            tokio::time::Instant::now() + Duration::from_secs(expires_at.saturating_sub(now))
        });
        tokio::spawn(async move { feed.pump(start, types, until, tx).await });
        Ok(ReceiverStream::new(rx))
    }

    async fn pump(
        self,
        mut after: Cursor,
        types: std::collections::HashSet<String>,
        until: Option<tokio::time::Instant>,
        tx: mpsc::Sender<Result<StreamEventsResponse, Status>>,
    ) {
        let expired = async move {
            match until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        let mut commits = self.commits.subscribe();
        let mut shutdown = self.shutdown.clone();
        let poll = Duration::from_millis(self.cfg.poll_interval_ms);
        let heartbeat_every = Duration::from_secs(self.cfg.heartbeat_secs);
        let mut last_heartbeat: Option<tokio::time::Instant> = None;
        let mut delivered_since_heartbeat = true;
        loop {
            commits.borrow_and_update();
            let events = match self.read(after, self.cfg.batch_size).await {
                Ok(events) => events,
                Err(err) => {
                    let _ = tx.send(Err(err.into())).await;
                    return;
                }
            };
            let full = events.len() >= self.cfg.batch_size as usize;
            for event in events {
                if let Ok(c) = Cursor::parse(&event.cursor) {
                    after = c;
                }
                delivered_since_heartbeat = true;
                if !types.is_empty() && !types.contains(&event.r#type) {
                    continue;
                }
                if tx
                    .send(Ok(StreamEventsResponse {
                        kind: Some(Kind::Event(event)),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if full {
                continue;
            }
            let due = last_heartbeat.is_none_or(|at| at.elapsed() >= heartbeat_every);
            if delivered_since_heartbeat || due {
                let beat = Heartbeat {
                    cursor: after.encode(),
                    time: Some(timestamp(Utc::now())),
                };
                if tx
                    .send(Ok(StreamEventsResponse {
                        kind: Some(Kind::Heartbeat(beat)),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
                last_heartbeat = Some(tokio::time::Instant::now());
                delivered_since_heartbeat = false;
            }
            tokio::select! {
                _ = commits.changed() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = tx.closed() => return,
                _ = shutdown.wait() => {
                    let _ = tx.send(Err(Status::unavailable("the server is shutting down: reconnect and resume from your last cursor"))).await;
                    return;
                }
                _ = &mut expired => {
                    let _ = tx.send(Err(Error::Unauthenticated {
                        reason: "TOKEN_EXPIRED",
                        reason_text: "the token expired during the stream: reconnect with a fresh token and resume from your last cursor".into(),
                    }.into())).await;
                    return;
                }
            }
        }
    }

    /// Deletes events older than the retention period, a prefix of the feed at a time,
    /// and records how far it purged. Returns the number of events deleted.
    pub async fn purge(&self, now: DateTime<Utc>) -> Result<u64> {
        if self.cfg.retention_days == 0 {
            return Ok(0);
        }
        let cutoff = now - chrono::Duration::days(i64::from(self.cfg.retention_days));
        let backend = self.db.get_database_backend();
        let txn = begin_write(&self.db).await?;
        if backend == DbBackend::Postgres {
            // One purge at a time per service, even with several replicas.
            txn.execute_unprepared("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.outbox_purge'))")
                .await?;
        }
        // Only a prefix that readers can already see: never purge past a row a reader
        // could still receive later.
        let visible = if backend == DbBackend::Postgres {
            " AND tx_id < pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
        } else {
            ""
        };
        let newest_old = txn
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                placeholders(
                    backend,
                    &format!("SELECT tx_id, id FROM outbox WHERE occur_time < ?{visible} ORDER BY tx_id DESC, id DESC LIMIT 1"),
                ),
                [cutoff.into()],
            ))
            .await?;
        let Some(row) = newest_old else {
            txn.rollback().await?;
            return Ok(0);
        };
        let mut through = Cursor {
            tx_id: row.try_get("", "tx_id")?,
            id: row.try_get("", "id")?,
        };
        if self.audit_hold {
            let shipped = txn
                .query_one_raw(Statement::from_string(
                    backend,
                    "SELECT cursor FROM audit_feed_position WHERE id = 1",
                ))
                .await?
                .map(|r| r.try_get::<String>("", "cursor"))
                .transpose()?
                .unwrap_or_default();
            through = through.min(Cursor::parse(&shipped)?);
            if through == Cursor::default() {
                txn.rollback().await?;
                return Ok(0);
            }
        }
        let values = || -> [Value; 2] { [through.tx_id.into(), through.id.into()] };
        let deleted = txn
            .execute_raw(Statement::from_sql_and_values(
                backend,
                placeholders(backend, "DELETE FROM outbox WHERE (tx_id, id) <= (?, ?)"),
                values(),
            ))
            .await?
            .rows_affected();
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            placeholders(
                backend,
                "INSERT INTO outbox_purged (singleton, tx_id, id) VALUES (1, ?, ?) \
                 ON CONFLICT (singleton) DO UPDATE SET tx_id = excluded.tx_id, id = excluded.id \
                 WHERE (outbox_purged.tx_id, outbox_purged.id) < (excluded.tx_id, excluded.id)",
            ),
            values(),
        ))
        .await?;
        txn.commit().await?;
        Ok(deleted)
    }

    /// Runs [`purge`](Self::purge) hourly until shutdown.
    pub async fn run_retention(self) {
        let mut shutdown = self.shutdown.clone();
        loop {
            match self.purge(Utc::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(source = self.source, deleted = n, "purged change-feed events past retention"),
                Err(err) => tracing::warn!(source = self.source, error = %err, "change-feed purge failed; will retry"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                _ = shutdown.wait() => return,
            }
        }
    }
}

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf timestamp in microseconds since the epoch, saturating (for times
/// already validated, or read from events).
pub fn micros(t: &prost_types::Timestamp) -> i64 {
    t.seconds.saturating_mul(1_000_000).saturating_add(i64::from(t.nanos / 1000))
}

/// The protobuf timestamp of `us` microseconds since the epoch (the inverse of
/// [`micros`]).
pub fn from_micros(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: i32::try_from(us.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

/// A protobuf duration in microseconds, saturating.
pub fn duration_micros(d: &prost_types::Duration) -> i64 {
    d.seconds.saturating_mul(1_000_000).saturating_add(i64::from(d.nanos) / 1000)
}

/// The instant of a protobuf timestamp (the inverse of [`timestamp`]); `None` when
/// it is out of range or its nanoseconds are not 0 to 999 999 999.
pub fn datetime(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_order() {
        let a = Cursor { tx_id: 7, id: 300 };
        let b = Cursor { tx_id: 8, id: 2 };
        assert_eq!(Cursor::parse(&a.encode()).unwrap(), a);
        assert!(a < b && a.encode() < b.encode());
        assert_eq!(Cursor::parse("").unwrap(), Cursor::default());
        for bad in ["xyz", "0000000000000007000000000000012", "g000000000000007000000000000012c"] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }
}
