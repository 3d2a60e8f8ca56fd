//! The customer use cases: each write is one transaction holding the change, its
//! change-feed event and (for creates) its idempotency key; the cache is refreshed
//! only after commit.

use std::sync::Arc;

use chrono::{SubsecRound, Utc};
use crm_platform::{
    Error, Result,
    cache::Cache,
    db::begin_write,
    feed::{self, Feed},
    idempotency::{self, Recorded},
};
use sea_orm::{DatabaseConnection, DatabaseTransaction};

use crate::{
    domain::{
        Customer, CustomerId, Profile,
        customer::{Channel, Rules},
        update::{self, Path},
    },
    events,
    store::{self, ListQuery},
};

#[derive(Clone, Debug)]
pub struct Customers {
    db: DatabaseConnection,
    cache: Arc<dyn Cache>,
    feed: Feed,
    rules: Rules,
}

fn cache_key(id: CustomerId) -> String {
    format!("customer-profile:customer:{}", id.uuid())
}

/// Timestamps at the precision both databases keep, so a value read back equals the
/// value written.
fn now() -> chrono::DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

impl Customers {
    pub fn new(db: DatabaseConnection, cache: Arc<dyn Cache>, feed: Feed, rules: Rules) -> Self {
        Self { db, cache, feed, rules }
    }

    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    fn validate(&self, profile: Profile) -> Result<Profile> {
        profile.validated(&self.rules).map_err(|e| e.in_field("customer"))
    }

    /// Wakes this process's feed streams and refreshes the cache. The refresh runs on
    /// its own task: the caller's request may be cancelled the moment it has committed,
    /// and the cache must still learn of the new revision.
    fn after_commit(&self, customer: &Customer) {
        self.feed.committed();
        let cache = self.cache.clone();
        let key = cache_key(customer.id);
        let revision = customer.revision;
        let bytes = serde_json::to_vec(customer);
        tokio::spawn(async move {
            let stored = match bytes {
                Ok(bytes) => cache.put_newer(&key, revision, bytes).await,
                Err(_) => false,
            };
            if !stored {
                cache.delete(&key).await;
            }
        });
    }

    pub async fn create(
        &self,
        actor: &str,
        profile: Profile,
        source_channel: Channel,
        key: Option<idempotency::Key>,
    ) -> Result<Customer> {
        let profile = self.validate(profile)?;
        if let Some(key) = &key
            && let Some(name) = idempotency::lookup(&self.db, key).await?
        {
            return self.get(CustomerId::parse_name(&name, "request_id")?).await;
        }
        let txn = begin_write(&self.db).await?;
        // Stamped once the write transaction has begun (on SQLite: holds the write lock),
        // not while waiting for it.
        let at = now();
        let customer = Customer {
            id: CustomerId::new(),
            profile,
            source_channel,
            revision: 1,
            create_time: at,
            update_time: at,
            delete_time: None,
        };
        if let Some(key) = &key
            && idempotency::record(&txn, key, &customer.name()).await? == Recorded::Duplicate
        {
            // A concurrent retry with the same key committed first: answer with its customer.
            txn.rollback().await?;
            let name = idempotency::lookup(&self.db, key)
                .await?
                .ok_or_else(|| Error::internal(anyhow::anyhow!("idempotency key vanished after a conflict")))?;
            return self.get(CustomerId::parse_name(&name, "request_id")?).await;
        }
        store::insert(&txn, &customer).await?;
        feed::append(&txn, events::created(&customer, actor)).await?;
        txn.commit().await?;
        self.after_commit(&customer);
        Ok(customer)
    }

    pub async fn get(&self, id: CustomerId) -> Result<Customer> {
        let key = cache_key(id);
        if let Some(bytes) = self.cache.get(&key).await {
            match serde_json::from_slice(&bytes) {
                Ok(customer) => return Ok(customer),
                Err(err) => tracing::warn!(%err, "undecodable cache entry; reading the database"),
            }
        }
        let customer = store::find(&self.db, id).await?.ok_or_else(|| not_found(id))?;
        if let Ok(bytes) = serde_json::to_vec(&customer) {
            self.cache.put_newer(&key, customer.revision, bytes).await;
        }
        Ok(customer)
    }

    /// Reads the stored customer (never the cache) inside the write transaction, locked,
    /// so no other writer can change it between this read and the write.
    async fn current(txn: &DatabaseTransaction, id: CustomerId, etag: &str) -> Result<Customer> {
        let current = store::find_for_update(txn, id).await?.ok_or_else(|| not_found(id))?;
        if current.delete_time.is_some() {
            return Err(not_found(id));
        }
        if !current.etag_matches(etag) {
            return Err(Error::EtagMismatch { name: id.name() });
        }
        Ok(current)
    }

    /// Writes `next` over `current` with its event and commits.
    async fn write(&self, txn: DatabaseTransaction, current: &Customer, next: &Customer, event: feed::NewEvent) -> Result<()> {
        // The row is locked since `current` was read, so the revision cannot have moved;
        // the check stays as a guard against a write path that forgot the lock.
        if !store::update(&txn, next, current.revision).await? {
            txn.rollback().await?;
            return Err(Error::EtagMismatch { name: current.name() });
        }
        feed::append(&txn, event).await?;
        // Drop the cached value before the commit makes the change visible: should the
        // refresh after commit fail, readers fall through to the database.
        self.cache.delete(&cache_key(next.id)).await;
        txn.commit().await?;
        self.after_commit(next);
        Ok(())
    }

    pub async fn update(&self, actor: &str, id: CustomerId, patch: &Profile, paths: &[Path], etag: &str) -> Result<Customer> {
        let txn = begin_write(&self.db).await?;
        let current = Self::current(&txn, id, etag).await?;
        let profile = self.validate(update::apply(&current.profile, patch, paths))?;
        let changed = update::changed_paths(&current.profile, &profile);
        if changed.is_empty() {
            txn.rollback().await?;
            return Ok(current);
        }
        let next = Customer {
            profile,
            revision: current.revision + 1,
            update_time: now(),
            ..current.clone()
        };
        self.write(txn, &current, &next, events::updated(&next, changed, actor))
            .await?;
        Ok(next)
    }

    pub async fn delete(&self, actor: &str, id: CustomerId, etag: &str) -> Result<Customer> {
        let txn = begin_write(&self.db).await?;
        let current = Self::current(&txn, id, etag).await?;
        let at = now();
        let next = Customer {
            revision: current.revision + 1,
            update_time: at,
            delete_time: Some(at),
            ..current.clone()
        };
        self.write(txn, &current, &next, events::deleted(&next, actor)).await?;
        Ok(next)
    }

    pub async fn list(&self, query: &ListQuery) -> Result<Vec<Customer>> {
        store::list(&self.db, query).await
    }
}

fn not_found(id: CustomerId) -> Error {
    Error::NotFound {
        resource_type: crate::domain::customer::RESOURCE_TYPE,
        name: id.name(),
    }
}
