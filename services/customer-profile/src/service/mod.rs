//! The customer use cases: each write is one transaction holding the change, its
//! blocking keys and duplicate candidates, its change-feed event and (for creates)
//! its idempotency key; the cache is refreshed only after commit.

pub mod activity;
pub mod consent;
mod definitions;
pub mod duplicates;
pub mod enrichment;
pub mod erasure;
pub mod export;
pub mod ingest;
mod merge;
pub mod quality;
pub mod retention;
pub mod view360;

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};
use tracing::Instrument as _;

use chrono::{SubsecRound, Utc};
use crm_platform::{
    Error, Result,
    cache::Cache,
    crypto::Keyring,
    db::begin_write,
    feed::{self, Feed},
    idempotency::{self, Recorded},
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction};

use crate::{
    domain::{
        Customer, CustomerId, Profile,
        combine::{SourcePriority, api_origin, stamp_all},
        customer::{Channel, Rules},
        definitions::Definitions,
        matching::MatchConfig,
        update::{self, Path},
    },
    events,
    store::{self, ListQuery, Sealer},
};

/// Settings of the use cases.
#[derive(Debug, Clone)]
pub struct Settings {
    pub rules: Rules,
    pub matching: MatchConfig,
    pub priority: SourcePriority,
    /// How long a replica trusts its copy of the field definitions.
    pub definitions_refresh: Duration,
    pub quality: quality::QualityConfig,
    pub reencrypt_interval: Duration,
    /// Orders and interactions naming an unknown external id.
    pub unknown_customer: activity::UnknownCustomer,
    pub retention: retention::RetentionConfig,
    pub enrichment: enrichment::EnrichmentConfig,
}

#[derive(Clone, Debug)]
pub struct Customers {
    db: DatabaseConnection,
    cache: Arc<dyn Cache>,
    feed: Feed,
    keyring: Arc<Keyring>,
    /// Each customer's data key (crypto-shredding), in the key store.
    keys: store::DataKeys,
    settings: Arc<Settings>,
    definitions: Arc<RwLock<Option<Loaded>>>,
    /// Bumped whenever this replica changes a definition: a load that started before
    /// the change must not install what it read.
    definitions_generation: Arc<std::sync::atomic::AtomicU64>,
    entry: Arc<quality::EntryCounters>,
    last_report: Arc<tokio::sync::Mutex<Option<(Instant, quality::QualityReport)>>>,
}

/// This replica's copy of the field definitions and when it was loaded.
type Loaded = (Instant, Arc<Definitions>);

fn cache_key(id: CustomerId) -> String {
    format!("customer-profile:customer:{}", id.uuid())
}

/// Timestamps at the precision both databases keep, so a value read back equals the
/// value written.
fn now() -> chrono::DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

impl Customers {
    pub fn new(
        db: DatabaseConnection,
        cache: Arc<dyn Cache>,
        feed: Feed,
        keyring: Arc<Keyring>,
        keys: store::DataKeys,
        settings: Settings,
    ) -> Self {
        Self {
            db,
            cache,
            feed,
            keyring,
            keys,
            settings: Arc::new(settings),
            definitions: Arc::new(RwLock::new(None)),
            definitions_generation: Arc::default(),
            entry: Arc::default(),
            last_report: Arc::default(),
        }
    }

    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The field definitions in force: this replica's copy, reloaded from the
    /// database once it is older than `definitions_refresh`.
    pub async fn definitions(&self) -> Result<Arc<Definitions>> {
        if let Ok(guard) = self.definitions.read()
            && let Some((loaded, defs)) = guard.as_ref()
            && loaded.elapsed() < self.settings.definitions_refresh
        {
            return Ok(defs.clone());
        }
        use std::sync::atomic::Ordering;
        let generation = self.definitions_generation.load(Ordering::SeqCst);
        let defs = Arc::new(Definitions::new(store::records::load_definitions(&self.db).await?));
        if let Ok(mut guard) = self.definitions.write()
            && self.definitions_generation.load(Ordering::SeqCst) == generation
        {
            *guard = Some((Instant::now(), defs.clone()));
        }
        Ok(defs)
    }

    fn forget_definitions(&self) {
        if let Ok(mut guard) = self.definitions.write() {
            self.definitions_generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            *guard = None;
        }
    }

    fn sealer<'a>(&'a self, definitions: &'a Definitions) -> Sealer<'a> {
        Sealer {
            keyring: &self.keyring,
            definitions,
            keys: &self.keys,
        }
    }

    fn validate(&self, profile: Profile, defs: &Definitions) -> Result<(Profile, BTreeMap<String, String>)> {
        profile
            .validated(&self.settings.rules, defs)
            .map_err(|e| e.in_field("customer"))
    }

    /// The customer as answered: with its completeness under the definitions in force.
    fn present(mut c: Customer, defs: &Definitions) -> Customer {
        c.completeness = defs.completeness(&c.profile);
        c
    }

    fn seal_event(&self, event: feed::NewEvent) -> Result<feed::NewEvent> {
        events::seal(event, &self.keyring)
    }

    /// Wakes this process's feed streams and refreshes the cache. The refresh runs on
    /// its own task: the caller's request may be cancelled the moment it has committed,
    /// and the cache must still learn of the new revision.
    fn after_commit(&self, customer: &Customer) {
        self.feed.committed();
        let cache = self.cache.clone();
        let key = cache_key(customer.id);
        let revision = customer.revision;
        let bytes = self.cache_value(&key, customer);
        tokio::spawn(
            async move {
                let stored = match bytes {
                    Ok(bytes) => cache.put_newer(&key, revision, bytes).await,
                    Err(_) => false,
                };
                if !stored {
                    cache.delete(&key).await;
                }
            }
            .in_current_span(),
        );
    }

    /// Commits `txn`, then refreshes the cache for `changed` and drops the entries of
    /// `dropped`, on a task of its own: a caller cancelled once the commit is under
    /// way (a deadline, a client gone) cannot skip the refresh, which would leave a
    /// copy cached by a concurrent reader stale until the TTL.
    async fn commit_and_refresh(&self, txn: DatabaseTransaction, changed: Vec<Customer>, dropped: Vec<CustomerId>) -> Result<()> {
        let this = self.clone();
        tokio::spawn(
            async move {
                txn.commit().await?;
                for id in &dropped {
                    this.cache.delete(&cache_key(*id)).await;
                }
                this.feed.committed();
                for c in &changed {
                    this.after_commit(c);
                }
                Ok(())
            }
            .in_current_span(),
        )
        .await
        .map_err(|e| Error::internal(anyhow::anyhow!("commit task failed: {e}")))?
    }

    /// Cached values hold personal data: sealed under the customer's data key like the
    /// row, so an erasure shreds them too (Redis may persist, or replicate). Only a key
    /// this process already holds is used; without one nothing is cached.
    fn cache_value(&self, key: &str, customer: &Customer) -> Result<Vec<u8>> {
        let data_key = self
            .keys
            .held(&customer.id.uuid().to_string())
            .ok_or_else(|| Error::internal(anyhow::anyhow!("no data key in memory")))?;
        let json = serde_json::to_vec(customer).map_err(Error::internal)?;
        data_key.seal(&json, key.as_bytes())
    }

    async fn decode_cached(&self, id: CustomerId, key: &str, bytes: &[u8]) -> Option<Customer> {
        let uuid = id.uuid().to_string();
        let keys = self.keys.for_read(&[uuid.as_str()]).await.ok()?;
        let json = keys.get(&uuid)?.open(bytes, key.as_bytes()).ok()?;
        serde_json::from_slice(&json).ok()
    }

    /// Replaces the blocking keys of `c` and records its duplicate candidates.
    async fn index<C: ConnectionTrait>(&self, conn: &C, c: &Customer, defs: &Definitions) -> Result<()> {
        let keys = crate::domain::matching::blocking_keys(&c.profile);
        store::records::set_keys(conn, &self.keyring, c.id, &keys, false).await?;
        self.detect(conn, c, defs, None).await?;
        Ok(())
    }

    /// [`Customers::index`] for a customer just inserted, whose matches are known.
    async fn index_new<C: ConnectionTrait>(
        &self,
        conn: &C,
        c: &Customer,
        defs: &Definitions,
        found: Vec<duplicates::Match>,
    ) -> Result<()> {
        let keys = crate::domain::matching::blocking_keys(&c.profile);
        store::records::set_keys(conn, &self.keyring, c.id, &keys, true).await?;
        self.detect(conn, c, defs, Some(found)).await
    }

    pub async fn create(
        &self,
        actor: &str,
        profile: Profile,
        source_channel: Channel,
        key: Option<idempotency::Key>,
    ) -> Result<Customer> {
        let defs = self.definitions().await?;
        let validated = self.validate(profile, &defs);
        self.count_entry(&validated);
        let (profile, raw_values) = validated?;
        if let Some(key) = &key
            && let Some(name) = idempotency::lookup(&self.db, key).await?
        {
            return self.get(CustomerId::parse_name(&name, "request_id")?).await;
        }
        let txn = begin_write(&self.db).await?;
        // Stamped once the write transaction has begun (on SQLite: holds the write lock),
        // not while waiting for it.
        let at = now();
        let provenance = stamp_all(&profile, &api_origin(source_channel, at));
        let customer = Customer::new(profile, source_channel, provenance, Vec::new(), raw_values, at);
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
        store::insert(&txn, self.sealer(&defs), &customer).await?;
        self.request_enrichment(&txn, None, &customer).await?;
        let found = self.matches(&txn, &defs, &customer.profile, Some(customer.id)).await?;
        self.index_new(&txn, &customer, &defs, found).await?;
        feed::append(&txn, self.seal_event(events::created(&customer, actor))?).await?;
        self.commit_and_refresh(txn, vec![customer.clone()], Vec::new()).await?;
        Ok(Self::present(customer, &defs))
    }

    /// A customer by id. A customer merged into another answers with the survivor.
    pub async fn get(&self, id: CustomerId) -> Result<Customer> {
        let defs = self.definitions().await?;
        let mut customer = self.get_exact(id, &defs).await?;
        // Merges chain at most a few levels; the bound guards against a cycle.
        for _ in 0..8 {
            match customer.merged_into {
                Some(survivor) => customer = self.get_exact(survivor, &defs).await?,
                None => break,
            }
        }
        Ok(Self::present(customer, &defs))
    }

    async fn get_exact(&self, id: CustomerId, defs: &Definitions) -> Result<Customer> {
        let key = cache_key(id);
        if let Some(bytes) = self.cache.get(&key).await {
            match self.decode_cached(id, &key, &bytes).await {
                Some(customer) => return Ok(customer),
                None => tracing::warn!("undecodable cache entry; reading the database"),
            }
        }
        let customer = store::find(&self.db, self.sealer(defs), id)
            .await?
            .ok_or_else(|| not_found(id))?;
        if let Ok(bytes) = self.cache_value(&key, &customer) {
            self.cache.put_newer(&key, customer.revision, bytes).await;
        }
        Ok(customer)
    }

    /// Reads the stored customer (never the cache) inside the write transaction, locked,
    /// so no other writer can change it between this read and the write.
    async fn current(&self, txn: &DatabaseTransaction, defs: &Definitions, id: CustomerId, etag: &str) -> Result<Customer> {
        let current = store::find_for_update(txn, self.sealer(defs), id)
            .await?
            .filter(|c| c.merged_into.is_none())
            .ok_or_else(|| not_found(id))?;
        if current.delete_time.is_some() {
            return Err(not_found(id));
        }
        if !current.etag_matches(etag) {
            return Err(Error::EtagMismatch { name: id.name() });
        }
        Ok(current)
    }

    /// Writes `next` over `current` with its event and commits.
    async fn write(
        &self,
        txn: DatabaseTransaction,
        defs: &Definitions,
        current: &Customer,
        next: &Customer,
        event: feed::NewEvent,
    ) -> Result<()> {
        self.write_in(&txn, defs, current, next, event).await?;
        self.commit_and_refresh(txn, vec![next.clone()], Vec::new()).await
    }

    /// The write of [`Customers::write`] without the commit.
    async fn write_in(
        &self,
        txn: &DatabaseTransaction,
        defs: &Definitions,
        current: &Customer,
        next: &Customer,
        event: feed::NewEvent,
    ) -> Result<()> {
        // The row is locked since `current` was read, so the revision cannot have moved;
        // the check stays as a guard against a write path that forgot the lock.
        if !store::update(txn, self.sealer(defs), next, current.revision).await? {
            return Err(Error::EtagMismatch { name: current.name() });
        }
        self.request_enrichment(txn, Some(&current.profile), next).await?;
        if next.delete_time.is_none() && next.profile != current.profile {
            self.index(txn, next, defs).await?;
        }
        feed::append(txn, self.seal_event(event)?).await?;
        // Drop the cached value before the commit makes the change visible: should the
        // refresh after commit fail, readers fall through to the database.
        self.cache.delete(&cache_key(next.id)).await;
        Ok(())
    }

    pub async fn update(&self, actor: &str, id: CustomerId, patch: &Profile, paths: &[Path], etag: &str) -> Result<Customer> {
        self.update_from(actor, "api", id, patch, paths, etag).await
    }

    /// [`Self::update`] with the changed fields' provenance naming `source` (`api`,
    /// or `self_service` for a customer's own change).
    pub async fn update_from(
        &self,
        actor: &str,
        source: &str,
        id: CustomerId,
        patch: &Profile,
        paths: &[Path],
        etag: &str,
    ) -> Result<Customer> {
        let defs = self.definitions().await?;
        let txn = begin_write(&self.db).await?;
        let current = self.current(&txn, &defs, id, etag).await?;
        let validated = self.validate(update::apply(&current.profile, patch, paths), &defs);
        self.count_entry(&validated);
        let (profile, raw) = validated?;
        let changed = update::changed_paths(&current.profile, &profile);
        if changed.is_empty() {
            txn.rollback().await?;
            return Ok(Self::present(current, &defs));
        }
        let at = now();
        let mut origin = api_origin(Channel::Api, at);
        origin.source = source.to_owned();
        let mut provenance = current.provenance.clone();
        for (path, p) in stamp_all(&profile, &origin) {
            let top = path.split('.').next().unwrap_or(&path);
            let top = if top == "custom_attributes" {
                "custom_attributes"
            } else {
                top
            };
            if changed.iter().any(|c| c == top) {
                provenance.insert(path, p);
            }
        }
        let next = Customer {
            profile,
            provenance,
            raw_values: carry_raw(&current.raw_values, raw, &changed),
            revision: current.revision + 1,
            update_time: at,
            confirm_time: at,
            ..current.clone()
        };
        self.write(txn, &defs, &current, &next, events::updated(&next, changed, actor))
            .await?;
        Ok(Self::present(next, &defs))
    }

    pub async fn delete(&self, actor: &str, id: CustomerId, etag: &str) -> Result<Customer> {
        let defs = self.definitions().await?;
        let txn = begin_write(&self.db).await?;
        let current = self.current(&txn, &defs, id, etag).await?;
        let at = now();
        let next = Customer {
            revision: current.revision + 1,
            update_time: at,
            delete_time: Some(at),
            ..current.clone()
        };
        // A deleted customer leaves duplicate detection and the review queue.
        store::records::set_keys(&txn, &self.keyring, id, &[], false).await?;
        store::records::drop_open_candidates(&txn, id).await?;
        self.write(txn, &defs, &current, &next, events::deleted(&next, actor)).await?;
        Ok(Self::present(next, &defs))
    }

    pub async fn list(&self, query: &ListQuery) -> Result<Vec<Customer>> {
        let defs = self.definitions().await?;
        let found = store::list(&self.db, self.sealer(&defs), query).await?;
        Ok(found.into_iter().map(|c| Self::present(c, &defs)).collect())
    }
}

/// Raw input after a write: the new captures for the fields that changed, the
/// earlier ones for the fields that did not.
fn carry_raw(old: &BTreeMap<String, String>, new: BTreeMap<String, String>, changed: &[String]) -> BTreeMap<String, String> {
    let top = |path: &str| path.split(['.', '[']).next().unwrap_or(path).to_owned();
    let mut out: BTreeMap<String, String> = old
        .iter()
        .filter(|(k, _)| !changed.contains(&top(k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.extend(new.into_iter().filter(|(k, _)| changed.contains(&top(k))));
    out
}

fn not_found(id: CustomerId) -> Error {
    Error::NotFound {
        resource_type: crate::domain::customer::RESOURCE_TYPE,
        name: id.name(),
    }
}
