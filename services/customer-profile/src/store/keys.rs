//! The key store: each customer's data key, wrapped by the keyring, in a database of
//! its own (`<data_dir>/customer-profile-keys.db`, or the schema
//! `customer_profile_keys`), apart from the customer data and its backups. Erasing a
//! customer destroys its key and leaves a tombstone (the customer id and the time,
//! nothing else): a data backup restored later still holds the sealed data, which
//! no key opens any more, and the tombstone tells the service to finish the scrub.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use crm_platform::{
    Error, Result,
    crypto::{DataKey, Keyring},
    db::{count_or_delete, exec, in_list, query},
    migrate::{Dialect, Migration},
};
use sea_orm::{ConnectionTrait, Value};

/// The key store's own schema.
pub const KEY_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "customer data keys and erasure tombstones",
    up: v1,
}];

fn v1(d: Dialect) -> Vec<String> {
    let bytes = d.bytes();
    vec![
        // `wrapped` is NULL once erased; `erase_us` is then the tombstone's time.
        format!(
            "CREATE TABLE data_keys (customer_id TEXT PRIMARY KEY, wrapped {bytes}, wrap_key TEXT NOT NULL, \
             create_us BIGINT NOT NULL, erase_us BIGINT)"
        ),
        "CREATE INDEX data_keys_erased ON data_keys (erase_us, customer_id)".into(),
        "CREATE INDEX data_keys_wrap_key ON data_keys (wrap_key)".into(),
    ]
}

/// A stored key: wrapped, or `None` when erased.
pub struct StoredKey {
    pub customer_id: String,
    pub wrapped: Option<Vec<u8>>,
}

fn stored_keys(rows: &[sea_orm::QueryResult]) -> Result<Vec<StoredKey>> {
    rows.iter()
        .map(|r| {
            Ok(StoredKey {
                customer_id: r.try_get("", "customer_id")?,
                wrapped: r.try_get("", "wrapped")?,
            })
        })
        .collect()
}

/// The keys of `ids` that exist (erased ones with `wrapped: None`).
pub async fn find_many<C: ConnectionTrait>(conn: &C, ids: &[&str]) -> Result<Vec<StoredKey>> {
    let rows = in_list(
        conn,
        "SELECT customer_id, wrapped FROM data_keys WHERE customer_id > ? AND customer_id",
        "",
        ids,
    )
    .await?;
    stored_keys(&rows)
}

/// Stores new wrapped keys; a customer that already has one (another replica won
/// the race) keeps it. Returns the ids stored by this call.
pub async fn insert_missing<C: ConnectionTrait>(
    conn: &C,
    keys: &[(String, Vec<u8>)],
    wrap_key: &str,
    at: DateTime<Utc>,
) -> Result<std::collections::HashSet<String>> {
    let mut stored = std::collections::HashSet::with_capacity(keys.len());
    for chunk in keys.chunks(200) {
        let rows = vec!["(?, ?, ?, ?)"; chunk.len()].join(", ");
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 4);
        for (id, wrapped) in chunk {
            values.push(id.as_str().into());
            values.push(wrapped.clone().into());
            values.push(wrap_key.into());
            values.push(at.timestamp_micros().into());
        }
        let inserted = query(
            conn,
            &format!(
                "INSERT INTO data_keys (customer_id, wrapped, wrap_key, create_us) VALUES {rows} \
                 ON CONFLICT (customer_id) DO NOTHING RETURNING customer_id"
            ),
            values,
        )
        .await?;
        for r in &inserted {
            stored.insert(r.try_get("", "customer_id")?);
        }
    }
    Ok(stored)
}

/// Destroys the keys of `ids` and leaves their tombstones (also for customers that
/// never had a key: sealed under the keyring before data keys existed). An earlier
/// erasure time is kept.
pub async fn destroy<C: ConnectionTrait>(conn: &C, ids: &[&str], at: DateTime<Utc>) -> Result<()> {
    for id in ids {
        exec(
            conn,
            "INSERT INTO data_keys (customer_id, wrapped, wrap_key, create_us, erase_us) VALUES (?, NULL, '', ?, ?) \
             ON CONFLICT (customer_id) DO UPDATE SET wrapped = NULL, wrap_key = '', \
             erase_us = COALESCE(data_keys.erase_us, excluded.erase_us)",
            vec![(*id).into(), at.timestamp_micros().into(), at.timestamp_micros().into()],
        )
        .await?;
    }
    Ok(())
}

/// Tombstones in customer id order after `after`, with their erasure times (micros).
pub async fn tombstones<C: ConnectionTrait>(conn: &C, after: &str, limit: u64) -> Result<Vec<(String, i64)>> {
    let rows = query(
        conn,
        "SELECT customer_id, erase_us FROM data_keys WHERE erase_us IS NOT NULL AND customer_id > ? \
         ORDER BY customer_id LIMIT ?",
        vec![after.into(), i64::try_from(limit).unwrap_or(i64::MAX).into()],
    )
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("", "customer_id")?, r.try_get("", "erase_us")?)))
        .collect()
}

/// Tombstones older than `before`: how many, or (not `dry_run`) deleted.
pub async fn purge_tombstones<C: ConnectionTrait>(conn: &C, before: DateTime<Utc>, dry_run: bool) -> Result<i64> {
    count_or_delete(
        conn,
        "data_keys",
        "erase_us IS NOT NULL AND erase_us < ?",
        vec![before.timestamp_micros().into()],
        dry_run,
    )
    .await
}

/// Live keys wrapped with another keyring key than `active` (after a rotation).
pub async fn wrapped_with_other<C: ConnectionTrait>(conn: &C, active: &str, limit: u64) -> Result<Vec<StoredKey>> {
    let rows = query(
        conn,
        "SELECT customer_id, wrapped FROM data_keys WHERE wrapped IS NOT NULL AND wrap_key <> ? ORDER BY customer_id LIMIT ?",
        vec![active.into(), i64::try_from(limit).unwrap_or(i64::MAX).into()],
    )
    .await?;
    stored_keys(&rows)
}

/// Replaces a live key's wrapping (same key, wrapped anew).
pub async fn rewrap<C: ConnectionTrait>(conn: &C, id: &str, wrapped: Vec<u8>, wrap_key: &str) -> Result<()> {
    exec(
        conn,
        "UPDATE data_keys SET wrapped = ?, wrap_key = ? WHERE customer_id = ? AND wrapped IS NOT NULL",
        vec![wrapped.into(), wrap_key.into(), id.into()],
    )
    .await?;
    Ok(())
}

/// The data keys as the service uses them: loaded in batches, unwrapped, and kept in
/// this process for a while (a cached customer is opened without a database trip).
#[derive(Clone)]
pub struct DataKeys {
    db: sea_orm::DatabaseConnection,
    keyring: std::sync::Arc<Keyring>,
    cache: std::sync::Arc<std::sync::Mutex<HashMap<String, (DataKey, Instant)>>>,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKeys(..)")
    }
}

/// Unwrapped keys by customer id (uuid text).
pub type KeySet = HashMap<String, DataKey>;

/// How long an unwrapped key stays in memory, and how many at most.
const CACHE_TTL: Duration = Duration::from_secs(300);
const CACHE_MAX: usize = 100_000;

impl DataKeys {
    pub fn new(db: sea_orm::DatabaseConnection, keyring: std::sync::Arc<Keyring>) -> Self {
        Self {
            db,
            keyring,
            cache: std::sync::Arc::default(),
        }
    }

    pub fn db(&self) -> &sea_orm::DatabaseConnection {
        &self.db
    }

    fn cached(&self, ids: &[&str], out: &mut KeySet) -> Vec<String> {
        let mut missing = Vec::new();
        let Ok(cache) = self.cache.lock() else {
            return ids.iter().map(|s| (*s).to_owned()).collect();
        };
        for id in ids {
            match cache.get(*id) {
                Some((key, at)) if at.elapsed() < CACHE_TTL => {
                    out.insert((*id).to_owned(), key.clone());
                }
                _ => missing.push((*id).to_owned()),
            }
        }
        missing
    }

    fn remember(&self, found: &KeySet) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() + found.len() > CACHE_MAX {
                cache.clear();
            }
            let now = Instant::now();
            for (id, key) in found {
                cache.insert(id.clone(), (key.clone(), now));
            }
        }
    }

    /// The key of `id` if this process holds it (no database trip).
    pub fn held(&self, id: &str) -> Option<DataKey> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(id)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(k, _)| k.clone())
    }

    /// Drops keys from this process's memory (an erasure).
    pub fn forget(&self, ids: &[&str]) {
        if let Ok(mut cache) = self.cache.lock() {
            for id in ids {
                cache.remove(*id);
            }
        }
    }

    /// The live keys of `ids`; erased or unknown customers are absent.
    pub async fn for_read(&self, ids: &[&str]) -> Result<KeySet> {
        Ok(self.load(ids).await?.0)
    }

    /// The keys of `ids` this process holds or the store has (unwrapped and held),
    /// the ids the store has no row for, and the erased ones.
    async fn load(&self, ids: &[&str]) -> Result<(KeySet, Vec<String>, Vec<String>)> {
        let mut out = KeySet::new();
        let mut missing = self.cached(ids, &mut out);
        let mut erased = Vec::new();
        if missing.is_empty() {
            return Ok((out, missing, erased));
        }
        let refs: Vec<&str> = missing.iter().map(String::as_str).collect();
        let mut loaded = KeySet::new();
        for k in find_many(&self.db, &refs).await? {
            match k.wrapped {
                Some(wrapped) => {
                    let key = self.keyring.unwrap_data_key(&wrapped, k.customer_id.as_bytes())?;
                    loaded.insert(k.customer_id, key);
                }
                None => erased.push(k.customer_id),
            }
        }
        self.remember(&loaded);
        missing.retain(|id| !loaded.contains_key(id) && !erased.contains(id));
        out.extend(loaded);
        Ok((out, missing, erased))
    }

    /// The keys of `ids`, created for those without one: one read and, for new
    /// customers, one insert per call. An erased customer is refused: nothing is
    /// sealed for it again.
    pub async fn for_write(&self, ids: &[&str]) -> Result<KeySet> {
        let (mut out, missing, erased) = self.load(ids).await?;
        if let Some(id) = erased.first() {
            return Err(Error::FailedPrecondition {
                reason: "CUSTOMER_ERASED",
                subject: format!("customers/{id}"),
                message: "this customer was erased: its data cannot be written again".into(),
            });
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let mut fresh = Vec::with_capacity(missing.len());
        let mut made = KeySet::new();
        for id in &missing {
            let (key, wrapped) = self.keyring.new_data_key(id.as_bytes())?;
            made.insert(id.clone(), key);
            fresh.push((id.clone(), wrapped));
        }
        let stored = insert_missing(&self.db, &fresh, self.keyring.active_key(), Utc::now()).await?;
        // A key this insert did not store was stored first by a concurrent writer.
        let lost: Vec<&str> = missing
            .iter()
            .filter(|id| !stored.contains(*id))
            .map(String::as_str)
            .collect();
        made.retain(|id, _| stored.contains(id));
        self.remember(&made);
        out.extend(made);
        if !lost.is_empty() {
            let (theirs, still_missing, erased) = self.load(&lost).await?;
            if let Some(id) = still_missing.first().or(erased.first()) {
                return Err(Error::internal(anyhow::anyhow!("customer {id}: data key not stored")));
            }
            out.extend(theirs);
        }
        Ok(out)
    }

    /// Has `id` a tombstone (its key destroyed)?
    pub async fn is_erased(&self, id: &str) -> Result<bool> {
        Ok(find_many(&self.db, &[id]).await?.iter().any(|k| k.wrapped.is_none()))
    }

    /// Destroys the keys of `ids` (leaving tombstones) and forgets them here.
    pub async fn destroy(&self, ids: &[&str], at: DateTime<Utc>) -> Result<()> {
        destroy(&self.db, ids, at).await?;
        self.forget(ids);
        Ok(())
    }

    /// Re-wraps up to `limit` keys wrapped with a retired keyring key; returns how many.
    pub async fn rewrap_retired(&self, limit: u64) -> Result<usize> {
        let active = self.keyring.active_key();
        let found = wrapped_with_other(&self.db, active, limit).await?;
        let mut moved = 0;
        for k in found {
            let Some(wrapped) = k.wrapped else { continue };
            let rewrapped = self.keyring.rewrap_data_key(&wrapped, k.customer_id.as_bytes())?;
            rewrap(&self.db, &k.customer_id, rewrapped, active).await?;
            moved += 1;
        }
        Ok(moved)
    }
}
