//! The right to erasure with crypto-shredding. Each customer's personal data is
//! sealed under its own data key (rows, cache entries); erasing destroys the keys
//! of the customer's family (it and the records merged with it: one person), which
//! is the point of no return, then removes or empties what this service holds in one
//! transaction with the erasure record and a `CustomerErased` event, on which other
//! services scrub their copies.
//!
//! The key store keeps a tombstone per erased customer. When the data shows no
//! erasure record for a tombstone (a crash between the two steps, or a data backup
//! restored from before the erasure), [`Customers::finish_erasures`] scrubs again;
//! it runs before the service serves and with the background jobs.

use chrono::{DateTime, Utc};
use crm_platform::{Error, Result, db::begin_write, feed};
use crm_proto::crm::customer::v1 as pb;

use super::{Customers, cache_key, not_found, now};
use crate::{domain::CustomerId, events, store};

/// Longest accepted erasure reason.
const MAX_REASON: usize = 500;

/// Actor of erasures the service finishes on its own.
const SYSTEM: &str = "customer-profile";

impl Customers {
    /// Erases `id` and its merged family; an erased customer answers its record.
    pub async fn erase(&self, actor: &str, id: CustomerId, reason: &str, etag: &str) -> Result<pb::Erasure> {
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > MAX_REASON {
            return Err(Error::invalid("reason", format!("required, 1 to {MAX_REASON} characters")));
        }
        let uuid = id.uuid().to_string();
        if let Some(done) = store::erasure::find(&self.db, &uuid).await? {
            return Ok(done);
        }
        if self.keys.is_erased(&uuid).await? {
            // Keys destroyed, data not yet scrubbed: finish, then answer the record.
            self.finish_erasures().await?;
            return store::erasure::find(&self.db, &uuid).await?.ok_or_else(|| not_found(id));
        }
        let defs = self.definitions().await?;
        let asked = store::find(&self.db, self.sealer(&defs), id)
            .await?
            .ok_or_else(|| not_found(id))?;
        if !etag.is_empty() && !asked.etag_matches(etag) {
            return Err(Error::EtagMismatch { name: id.name() });
        }
        let mut root = asked;
        // Merges chain at most a few levels; the bound guards against a cycle.
        for _ in 0..8 {
            match root.merged_into {
                Some(survivor) => {
                    root = store::find(&self.db, self.sealer(&defs), survivor)
                        .await?
                        .ok_or_else(|| not_found(survivor))?;
                }
                None => break,
            }
        }
        let family: Vec<String> = self
            .merged_family(&root)
            .await?
            .into_iter()
            .map(|c| c.uuid().to_string())
            .collect();
        let refs: Vec<&str> = family.iter().map(String::as_str).collect();
        let at = now();
        // The point of no return: from here the sealed data opens nowhere.
        self.keys.destroy(&refs, at).await?;
        self.scrub_family(actor, reason, &uuid, &family, at).await
    }

    /// The erasure record of `id`.
    pub async fn erasure(&self, id: CustomerId) -> Result<pb::Erasure> {
        store::erasure::find(&self.db, &id.uuid().to_string())
            .await?
            .ok_or_else(|| Error::NotFound {
                resource_type: "crm.customer.v1.Erasure",
                name: format!("erasures/{}", id.uuid()),
            })
    }

    /// Removes what this service holds about `family` (whose keys are destroyed),
    /// records the erasure and announces it, in one transaction. A concurrent erasure
    /// of the same customer that committed first wins; its record is answered.
    async fn scrub_family(
        &self,
        actor: &str,
        reason: &str,
        asked: &str,
        family: &[String],
        at: DateTime<Utc>,
    ) -> Result<pb::Erasure> {
        let refs: Vec<&str> = family.iter().map(String::as_str).collect();
        let txn = begin_write(&self.db).await?;
        let mut erasure = pb::Erasure {
            name: format!("erasures/{asked}"),
            customer: format!("customers/{asked}"),
            erased_customers: family.iter().map(|id| format!("customers/{id}")).collect(),
            reason: reason.to_owned(),
            actor: actor.to_owned(),
            erase_time: Some(feed::timestamp(at)),
            removed: Default::default(),
        };
        // Claim first: a concurrent erasure of the same customer waits here.
        if !store::erasure::record(&txn, asked, at.timestamp_micros(), &erasure).await? {
            txn.rollback().await?;
            return store::erasure::find(&self.db, asked)
                .await?
                .ok_or_else(|| Error::internal(anyhow::anyhow!("erasure record vanished")));
        }
        erasure.removed = store::erasure::scrub(&txn, &refs).await?.into_iter().collect();
        for id in family {
            let mut own = erasure.clone();
            own.name = format!("erasures/{id}");
            store::erasure::save(&txn, id, at.timestamp_micros(), &own).await?;
        }
        feed::append(&txn, self.seal_event(events::erased(&erasure, actor))?).await?;
        txn.commit().await?;
        self.feed.committed();
        // No old page of the erased rows (nor of the destroyed keys) stays in a log file.
        crm_platform::db::truncate_log(&self.db).await?;
        crm_platform::db::truncate_log(self.keys.db()).await?;
        for id in family {
            if let Ok(uuid) = uuid::Uuid::parse_str(id) {
                self.cache.delete(&cache_key(CustomerId::from_uuid(uuid))).await;
            }
        }
        tracing::info!(customer = %erasure.customer, erased = family.len(), "customer erased");
        Ok(erasure)
    }

    /// Scrubs the customers whose keys the key store shows destroyed but whose data
    /// shows no erasure record; returns how many.
    pub async fn finish_erasures(&self) -> Result<usize> {
        let mut after = String::new();
        let mut finished = 0;
        loop {
            let batch = store::keys::tombstones(self.keys.db(), &after, 500).await?;
            let Some((last, _)) = batch.last() else { break };
            after = last.clone();
            let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
            let recorded = store::erasure::recorded(&self.db, &ids).await?;
            for (id, erase_us) in batch.iter().filter(|(id, _)| !recorded.contains(id)) {
                let at = DateTime::from_timestamp_micros(*erase_us).unwrap_or_else(Utc::now);
                self.keys.forget(&[id.as_str()]);
                self.scrub_family(
                    SYSTEM,
                    "finished from the key store's tombstone (an interrupted erasure, or data restored from before it)",
                    id,
                    std::slice::from_ref(id),
                    at,
                )
                .await?;
                finished += 1;
            }
        }
        if finished > 0 {
            tracing::warn!(finished, "erasures finished from key-store tombstones");
        }
        Ok(finished)
    }
}
