//! Read-through cache behind one interface: Redis when configured, otherwise an
//! in-process moka cache. A cache failure is logged, counted and treated as a miss:
//! the cache can slow a request down by at most its timeout, never fail it.
//!
//! Every value carries the revision it was read or written at, and a put only
//! replaces an older revision (atomically: a Lua script in Redis, a key lock in moka).
//! So a reader that raced a writer cannot put an older value back, and two writers'
//! puts cannot land in the wrong order.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use moka::ops::compute::Op;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tracing::Instrument;

use crate::config::{CacheConfig, RedisConfig};

#[async_trait]
pub trait Cache: Send + Sync + std::fmt::Debug {
    async fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Stores `value` at `revision` unless the key holds this revision or a newer one.
    /// False when the cache could not be reached (the caller may then `delete`).
    async fn put_newer(&self, key: &str, revision: i64, value: Vec<u8>) -> bool;
    async fn delete(&self, key: &str);
    /// Failed cache operations since start.
    fn errors(&self) -> u64;
}

/// Builds the configured cache. Redis connects lazily, so a Redis that is down at
/// start-up degrades to the database instead of stopping the service.
///
/// Without Redis, an in-process cache is only safe when this process is the only
/// writer: with PostgreSQL, several replicas may share the database and each would
/// keep serving what it cached after another replica's write. So on PostgreSQL
/// without Redis there is no cache unless `cache.allow_local_with_postgres` says
/// this process is alone.
pub fn from_config(redis: &RedisConfig, cache: &CacheConfig, shared_database: bool) -> crate::Result<Arc<dyn Cache>> {
    let ttl = Duration::from_secs(cache.ttl_secs.max(1));
    if !redis.url.is_empty() {
        return Ok(Arc::new(RedisCache::new(redis, ttl)?));
    }
    if shared_database && !cache.allow_local_with_postgres {
        tracing::info!("no redis.url with PostgreSQL: caching off (replicas could serve each other's stale values)");
        return Ok(Arc::new(NoCache));
    }
    Ok(Arc::new(MemoryCache::new(cache.max_entries, ttl)))
}

/// No caching: every read goes to the database.
#[derive(Debug)]
pub struct NoCache;

#[async_trait]
impl Cache for NoCache {
    async fn get(&self, _key: &str) -> Option<Vec<u8>> {
        None
    }
    async fn put_newer(&self, _key: &str, _revision: i64, _value: Vec<u8>) -> bool {
        true
    }
    async fn delete(&self, _key: &str) {}
    fn errors(&self) -> u64 {
        0
    }
}

/// In-process cache: bounded, entries expire after the TTL.
#[derive(Debug)]
pub struct MemoryCache {
    inner: moka::future::Cache<String, (i64, Arc<[u8]>)>,
}

impl MemoryCache {
    pub fn new(max_entries: u64, ttl: Duration) -> Self {
        Self {
            inner: moka::future::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .build(),
        }
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.inner.get(key).await.map(|(_, v)| v.to_vec())
    }
    async fn put_newer(&self, key: &str, revision: i64, value: Vec<u8>) -> bool {
        self.inner
            .entry(key.to_owned())
            .and_compute_with(|current| async move {
                match current {
                    Some(entry) if entry.value().0 >= revision => Op::Nop,
                    _ => Op::Put((revision, value.into())),
                }
            })
            .await;
        true
    }
    async fn delete(&self, key: &str) {
        self.inner.invalidate(key).await;
    }
    fn errors(&self) -> u64 {
        0
    }
}

/// Sets KEYS[1] to "<revision>:<value>" unless it holds a revision >= ARGV[1].
const PUT_NEWER: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local stored = tonumber(string.match(current, '^(%d+):'))
  if stored and stored >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3])
return 1
";

/// Redis cache. Every call is bounded by the configured timeout.
pub struct RedisCache {
    conn: ConnectionManager,
    prefix: String,
    ttl_ms: u64,
    timeout: Duration,
    errors: AtomicU64,
    started: Instant,
    /// Milliseconds since `started` of the last warning, to keep an outage from flooding logs.
    last_warning_ms: AtomicU64,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisCache {
    pub fn new(cfg: &RedisConfig, ttl: Duration) -> crate::Result<Self> {
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| crate::Error::Unavailable(format!("redis.url is not a valid Redis URL: {e}")))?;
        let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, manager_cfg)
            .map_err(|e| crate::Error::Unavailable(format!("redis: {e}")))?;
        Ok(Self {
            conn,
            prefix: cfg.key_prefix.clone(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            timeout,
            errors: AtomicU64::new(0),
            started: Instant::now(),
            last_warning_ms: AtomicU64::new(0),
        })
    }

    /// Round-trips a PING; for start-up checks and tests that must not run without Redis.
    pub async fn ping(&self) -> Result<(), String> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        match tokio::time::timeout(self.timeout * 5, cmd.query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, operation: &'static str, cmd: redis::Cmd) -> Option<T> {
        let mut conn = self.conn.clone();
        // A client span under the caller's; none for work outside any trace.
        let span = if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "redis",
                otel.name = operation,
                otel.kind = "client",
                db.system.name = "redis",
                db.operation.name = operation
            )
        };
        let outcome = tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn))
            .instrument(span)
            .await;
        match outcome {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.failed("timed out");
                None
            }
        }
    }

    fn failed(&self, cause: &str) {
        let count = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if (count == 1 || now.saturating_sub(last) >= 10_000)
            && self
                .last_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(cause, errors = count, "redis cache unavailable; serving from the database");
        } else {
            tracing::debug!(cause, errors = count, "redis cache call failed");
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// Strips the "<revision>:" prefix of a stored value.
fn strip_revision(stored: &[u8]) -> Option<Vec<u8>> {
    let colon = stored.iter().position(|b| *b == b':')?;
    stored[..colon]
        .iter()
        .all(u8::is_ascii_digit)
        .then(|| stored[colon + 1..].to_vec())
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(key));
        self.run::<Option<Vec<u8>>>("GET", cmd)
            .await
            .flatten()
            .and_then(|v| strip_revision(&v))
    }
    async fn put_newer(&self, key: &str, revision: i64, value: Vec<u8>) -> bool {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(PUT_NEWER)
            .arg(1)
            .arg(self.key(key))
            .arg(revision)
            .arg(value)
            .arg(self.ttl_ms);
        self.run::<redis::Value>("EVAL", cmd).await.is_some()
    }
    async fn delete(&self, key: &str) {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(key));
        let _: Option<redis::Value> = self.run("DEL", cmd).await;
    }
    fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract every implementation keeps: an older revision never replaces a newer one.
    async fn newer_wins(cache: &dyn Cache) {
        assert_eq!(cache.get("k").await, None);
        assert!(cache.put_newer("k", 2, b"two".to_vec()).await);
        cache.put_newer("k", 1, b"one".to_vec()).await;
        assert_eq!(cache.get("k").await.as_deref(), Some(&b"two"[..]));
        cache.put_newer("k", 3, b"three:with:colons".to_vec()).await;
        assert_eq!(cache.get("k").await.as_deref(), Some(&b"three:with:colons"[..]));
        cache.delete("k").await;
        assert_eq!(cache.get("k").await, None);
        cache.put_newer("k", 1, b"one".to_vec()).await;
        assert_eq!(cache.get("k").await.as_deref(), Some(&b"one"[..]));
    }

    #[tokio::test]
    async fn memory_cache_keeps_the_newer_revision() {
        newer_wins(&MemoryCache::new(100, Duration::from_secs(60))).await;
    }

    #[tokio::test]
    async fn redis_cache_keeps_the_newer_revision() {
        // Runs against the CI Redis; without CRM_TEST_REDIS_URL there is nothing to test.
        let Some(url) = crate::testing::redis_url() else { return };
        let cfg = RedisConfig {
            url,
            key_prefix: crate::testing::unique_key_prefix(),
            timeout_ms: 500,
        };
        let cache = RedisCache::new(&cfg, Duration::from_secs(60)).unwrap();
        cache
            .ping()
            .await
            .expect("CRM_TEST_REDIS_URL is set but Redis cannot be reached");
        newer_wins(&cache).await;
        assert_eq!(cache.errors(), 0);
    }

    #[test]
    fn stored_values_lose_their_revision_prefix() {
        assert_eq!(strip_revision(b"12:a:b").as_deref(), Some(&b"a:b"[..]));
        assert_eq!(strip_revision(b"x:a"), None);
        assert_eq!(strip_revision(b"nocolon"), None);
    }

    #[tokio::test]
    async fn unreachable_redis_is_a_counted_miss_not_an_error() {
        // Port 1 on loopback: connection refused at once.
        let cfg = RedisConfig {
            url: "redis://127.0.0.1:1/0".into(),
            key_prefix: "t:".into(),
            timeout_ms: 100,
        };
        let cache = RedisCache::new(&cfg, Duration::from_secs(5)).unwrap();
        assert!(!cache.put_newer("k", 1, b"v".to_vec()).await);
        assert_eq!(cache.get("k").await, None);
        cache.delete("k").await;
        assert!(cache.errors() >= 3, "errors counted: {}", cache.errors());
        assert!(cache.ping().await.is_err());
    }

    #[tokio::test]
    async fn invalid_url_is_a_config_error() {
        let cfg = RedisConfig {
            url: "not a url".into(),
            key_prefix: String::new(),
            timeout_ms: 100,
        };
        assert!(RedisCache::new(&cfg, Duration::from_secs(5)).is_err());
    }
}
