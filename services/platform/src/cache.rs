//! Read-through cache behind one interface: Redis when configured, otherwise an
//! in-process moka cache. A cache failure is logged, counted and treated as a miss:
//! the cache can slow a request down by at most its timeout, never fail it.
//!
//! Writers `put` the fresh value after commit; readers `put_if_absent` what they read,
//! so a reader that raced a writer cannot overwrite the newer value with an older one.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{CacheConfig, RedisConfig};

#[async_trait]
pub trait Cache: Send + Sync + std::fmt::Debug {
    async fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Stores `value`, replacing any older one.
    async fn put(&self, key: &str, value: Vec<u8>);
    /// Stores `value` unless the key holds a value already.
    async fn put_if_absent(&self, key: &str, value: Vec<u8>);
    async fn delete(&self, key: &str);
    /// Failed cache operations since start.
    fn errors(&self) -> u64;
}

/// Builds the configured cache. Redis connects lazily, so a Redis that is down at
/// start-up degrades to the database instead of stopping the service.
pub fn from_config(redis: &RedisConfig, cache: &CacheConfig) -> crate::Result<Arc<dyn Cache>> {
    let ttl = Duration::from_secs(cache.ttl_secs.max(1));
    if redis.url.is_empty() {
        return Ok(Arc::new(MemoryCache::new(cache.max_entries, ttl)));
    }
    Ok(Arc::new(RedisCache::new(redis, ttl)?))
}

/// In-process cache: bounded, entries expire after the TTL.
#[derive(Debug)]
pub struct MemoryCache {
    inner: moka::future::Cache<String, Arc<[u8]>>,
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
        self.inner.get(key).await.map(|v| v.to_vec())
    }
    async fn put(&self, key: &str, value: Vec<u8>) {
        self.inner.insert(key.to_owned(), value.into()).await;
    }
    async fn put_if_absent(&self, key: &str, value: Vec<u8>) {
        self.inner.entry(key.to_owned()).or_insert(value.into()).await;
    }
    async fn delete(&self, key: &str) {
        self.inner.invalidate(key).await;
    }
    fn errors(&self) -> u64 {
        0
    }
}

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

    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Option<T> {
        let mut conn = self.conn.clone();
        let outcome = tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await;
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

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(key));
        self.run::<Option<Vec<u8>>>(cmd).await.flatten()
    }
    async fn put(&self, key: &str, value: Vec<u8>) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value).arg("PX").arg(self.ttl_ms);
        let _: Option<redis::Value> = self.run(cmd).await;
    }
    async fn put_if_absent(&self, key: &str, value: Vec<u8>) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value).arg("PX").arg(self.ttl_ms).arg("NX");
        let _: Option<redis::Value> = self.run(cmd).await;
    }
    async fn delete(&self, key: &str) {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(key));
        let _: Option<redis::Value> = self.run(cmd).await;
    }
    fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_cache_put_if_absent_keeps_the_newer_value() {
        let cache = MemoryCache::new(100, Duration::from_secs(60));
        assert_eq!(cache.get("k").await, None);
        cache.put("k", b"new".to_vec()).await;
        cache.put_if_absent("k", b"old".to_vec()).await;
        assert_eq!(cache.get("k").await.as_deref(), Some(&b"new"[..]));
        cache.delete("k").await;
        assert_eq!(cache.get("k").await, None);
        cache.put_if_absent("k", b"first".to_vec()).await;
        assert_eq!(cache.get("k").await.as_deref(), Some(&b"first"[..]));
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
        cache.put("k", b"v".to_vec()).await;
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
