//! Following another service's change feed with exactly-once effects (DESIGN.md §4):
//! each event's effect and the consumer's cursor commit in one transaction, so a
//! crash replays at most the event whose effect did not commit. The stream is read
//! as this service's own account, reconnecting with backoff; heartbeats move the
//! cursor past events the subscription filters out.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::Utc;
use crm_proto::crm::events::v1::{Event, StreamEventsRequest, StreamEventsResponse, stream_events_response::Kind};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction};
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::{
    Result,
    authz::ServiceCredentials,
    db::{begin_write, exec, query},
    feed::micros,
    migrate::Dialect,
    server::ShutdownSignal,
};

/// The cursors table; a consuming service's migration includes it.
pub fn migration_sql(_: Dialect) -> Vec<String> {
    vec![
        // `event_us`: occurrence time of the last event applied; `heartbeat_us`: when the
        // source last said this consumer was caught up; `applied`: events applied.
        "CREATE TABLE feed_cursors (source TEXT PRIMARY KEY, cursor TEXT NOT NULL, update_us BIGINT NOT NULL, \
         event_us BIGINT NOT NULL DEFAULT 0, heartbeat_us BIGINT NOT NULL DEFAULT 0, applied BIGINT NOT NULL DEFAULT 0)"
            .into(),
    ]
}

/// Where a consumer stands on one source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CursorStatus {
    pub cursor: String,
    /// When the cursor last moved (microseconds).
    pub update_us: i64,
    /// Occurrence time of the last event applied (microseconds; 0: none yet).
    pub event_us: i64,
    /// When the source last reported this consumer caught up (microseconds; 0: never).
    pub heartbeat_us: i64,
    /// Events applied since the consumer started from the feed's start.
    pub applied: i64,
}

impl CursorStatus {
    /// How stale the consumer's view may be at `now_us`: since the newer of the last
    /// applied event and the last "caught up" from the source (0 when never in touch).
    pub fn lag_us(&self, now_us: i64) -> i64 {
        let known = self.event_us.max(self.heartbeat_us);
        if known == 0 { 0 } else { (now_us - known).max(0) }
    }
}

/// The stored position of `source`, if the consumer ever moved.
pub async fn status<C: ConnectionTrait>(conn: &C, source: &str) -> Result<Option<CursorStatus>> {
    let rows = query(
        conn,
        "SELECT cursor, update_us, event_us, heartbeat_us, applied FROM feed_cursors WHERE source = ?",
        vec![source.into()],
    )
    .await?;
    rows.first()
        .map(|r| {
            Ok(CursorStatus {
                cursor: r.try_get("", "cursor")?,
                update_us: r.try_get("", "update_us")?,
                event_us: r.try_get("", "event_us")?,
                heartbeat_us: r.try_get("", "heartbeat_us")?,
                applied: r.try_get("", "applied")?,
            })
        })
        .transpose()
}

/// What to follow.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Name of the source, the cursor's key (e.g. `customer-profile`).
    pub source: &'static str,
    /// The source's `StreamEvents` method path, e.g.
    /// `/crm.customer.v1.CustomerProfileService/StreamEvents`.
    pub method: &'static str,
    /// Only these event types (empty: all).
    pub event_types: Vec<String>,
}

/// The payload of a followed `event`, as message `M`.
pub fn payload<M: prost::Message + Default>(event: &Event) -> Result<M> {
    let data = event.data.as_ref().map(|d| d.value.as_slice()).unwrap_or_default();
    M::decode(data).map_err(|e| crate::Error::internal(anyhow::anyhow!("event {} ({}): {e}", event.id, event.r#type)))
}

/// The id after `collection/` in a resource name from an event: `customers/{id}`, or
/// `customers/{id}/orders/{o}` for `customers`.
pub fn id_in(name: &str, collection: &str) -> Result<String> {
    name.strip_prefix(collection)
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|rest| rest.split('/').next())
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| crate::Error::internal(anyhow::anyhow!("not a {collection} name: {name}")))
}

/// A consumer's effect of one event, inside the transaction that also moves the
/// cursor. An error rolls both back; the event is delivered again after a backoff.
#[async_trait]
pub trait Apply: Send + Sync + 'static {
    async fn apply(&self, txn: &DatabaseTransaction, event: &Event) -> Result<()>;

    /// Runs after an applied event committed (e.g. [`crate::db::truncate_log`] after
    /// removing personal data).
    async fn committed(&self, _db: &DatabaseConnection) -> Result<()> {
        Ok(())
    }
}

/// The stored cursor of `source` (empty: from the feed's start).
pub async fn cursor<C: ConnectionTrait>(conn: &C, source: &str) -> Result<String> {
    let rows = query(conn, "SELECT cursor FROM feed_cursors WHERE source = ?", vec![source.into()]).await?;
    Ok(match rows.first() {
        Some(r) => r.try_get("", "cursor")?,
        None => String::new(),
    })
}

/// Moves the cursor past an applied event (`event_us`: its occurrence time).
async fn save_event<C: ConnectionTrait>(conn: &C, source: &str, cursor: &str, event_us: i64) -> Result<()> {
    exec(
        conn,
        "INSERT INTO feed_cursors (source, cursor, update_us, event_us, applied) VALUES (?, ?, ?, ?, 1) \
         ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor, update_us = excluded.update_us, \
         event_us = excluded.event_us, applied = feed_cursors.applied + 1",
        vec![
            source.into(),
            cursor.into(),
            Utc::now().timestamp_micros().into(),
            event_us.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Moves the cursor to a heartbeat's (`heartbeat_us`: when the source sent it), or
/// back to the start (`""`, with 0).
async fn save_cursor<C: ConnectionTrait>(conn: &C, source: &str, cursor: &str, heartbeat_us: i64) -> Result<()> {
    exec(
        conn,
        "INSERT INTO feed_cursors (source, cursor, update_us, heartbeat_us) VALUES (?, ?, ?, ?) \
         ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor, update_us = excluded.update_us, \
         heartbeat_us = excluded.heartbeat_us",
        vec![
            source.into(),
            cursor.into(),
            Utc::now().timestamp_micros().into(),
            heartbeat_us.into(),
        ],
    )
    .await?;
    Ok(())
}

/// A channel for a long-lived stream: a connect timeout, no per-call deadline.
pub fn stream_channel(url: &str, ca_path: &str) -> anyhow::Result<Channel> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30));
    if url.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if !ca_path.is_empty() {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(ca_path)?));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect_lazy())
}

/// Follows `subscription` on `channel` until shutdown, applying each event with
/// `handler` in `db`. Effects must tolerate an event applied again: after the
/// source's database is restored, the feed is read again from its start.
pub async fn follow(
    db: DatabaseConnection,
    channel: Channel,
    credentials: ServiceCredentials,
    subscription: Subscription,
    handler: Arc<dyn Apply>,
    mut shutdown: ShutdownSignal,
) {
    let mut backoff = Duration::from_millis(200);
    // A source starting alongside (`crm serve`) is briefly unreachable: only repeated
    // failures are worth a warning.
    let mut failures = 0u32;
    loop {
        let run = read_stream(&db, &channel, &credentials, &subscription, handler.as_ref());
        tokio::select! {
            _ = shutdown.wait() => return,
            outcome = run => match outcome {
                Ok(()) => {
                    backoff = Duration::from_millis(200);
                    failures = 0;
                }
                Err(Stop::Expired(message)) => {
                    // Events purged before this consumer read them are lost here; after a
                    // restore of the source, events may come again (effects must be
                    // idempotent). Say so loudly and go on from the oldest kept.
                    tracing::error!(source = subscription.source, %message, "feed cursor expired or unknown: continuing from the oldest retained event");
                    if let Err(err) = save_cursor(&db, subscription.source, "", 0).await {
                        tracing::warn!(%err, "cannot reset the feed cursor");
                    }
                }
                Err(Stop::Failed(message)) => {
                    failures += 1;
                    let retry_in_ms = backoff.as_millis() as u64;
                    if failures >= 3 {
                        tracing::warn!(source = subscription.source, %message, retry_in_ms, failures, "feed consumer interrupted; reconnecting");
                    } else {
                        tracing::debug!(source = subscription.source, %message, retry_in_ms, "feed consumer interrupted; reconnecting");
                    }
                    tokio::select! {
                        _ = shutdown.wait() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

enum Stop {
    Expired(String),
    Failed(String),
}

impl From<crate::Error> for Stop {
    fn from(e: crate::Error) -> Self {
        Stop::Failed(e.to_string())
    }
}

impl From<tonic::Status> for Stop {
    fn from(s: tonic::Status) -> Self {
        // Purged before it was read, or a cursor the feed never issued (the source's
        // database was restored from a backup): start over from what the feed holds.
        let expired = s
            .get_error_details()
            .error_info()
            .is_some_and(|info| info.reason == "FEED_CURSOR_EXPIRED" || info.reason == "FEED_CURSOR_UNKNOWN");
        if expired {
            Stop::Expired(s.message().to_owned())
        } else {
            Stop::Failed(format!("{:?}: {}", s.code(), s.message()))
        }
    }
}

async fn read_stream(
    db: &DatabaseConnection,
    channel: &Channel,
    credentials: &ServiceCredentials,
    sub: &Subscription,
    handler: &dyn Apply,
) -> std::result::Result<(), Stop> {
    let req = credentials.request(StreamEventsRequest {
        after_cursor: cursor(db, sub.source).await?,
        event_types: sub.event_types.clone(),
    })?;
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Stop::Failed(format!("{} unreachable: {e}", sub.source)))?;
    let path = http::uri::PathAndQuery::from_static(sub.method);
    let codec = tonic_prost::ProstCodec::<StreamEventsRequest, StreamEventsResponse>::default();
    let mut stream = grpc.server_streaming(req, path, codec).await?.into_inner();
    while let Some(msg) = stream.message().await? {
        match msg.kind {
            Some(Kind::Event(event)) => {
                let txn = begin_write(db).await?;
                handler.apply(&txn, &event).await?;
                let event_us = event.time.as_ref().map(micros).unwrap_or_default();
                save_event(&txn, sub.source, &event.cursor, event_us).await?;
                txn.commit().await.map_err(crate::Error::from)?;
                handler.committed(db).await?;
            }
            Some(Kind::Heartbeat(beat)) => {
                let at = beat.time.as_ref().map(micros).unwrap_or_default();
                save_cursor(db, sub.source, &beat.cursor, at).await?;
            }
            _ => {}
        }
    }
    Ok(())
}
