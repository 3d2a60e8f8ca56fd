//! Merging duplicates into a survivor, and undoing a merge.

use chrono::Duration;
use crm_platform::{Error, Result, db::begin_write, feed};
use serde::{Deserialize, Serialize};

use super::{Customers, cache_key, not_found};
use crate::{
    domain::{
        Customer, CustomerId,
        combine::{MAX_CONTACTS, Side, api_origin, combine},
    },
    events,
    store::{
        self,
        records::{self, CandidateState, MergeRecord},
    },
};

const MAX_MERGED: usize = 10;

/// What undoes a merge: every customer as it was before.
#[derive(Serialize, Deserialize)]
struct BeforeImages {
    survivor: Customer,
    merged: Vec<Customer>,
}

impl Customers {
    pub async fn merge(&self, actor: &str, survivor: CustomerId, etag: &str, merged: &[CustomerId]) -> Result<Customer> {
        if merged.is_empty() || merged.len() > MAX_MERGED {
            return Err(Error::invalid("merged", format!("1 to {MAX_MERGED} customers")));
        }
        for (i, id) in merged.iter().enumerate() {
            if *id == survivor || merged[..i].contains(id) {
                return Err(Error::invalid(
                    format!("merged[{i}]"),
                    "each merged customer must be distinct from the survivor and the others",
                ));
            }
        }
        let defs = self.definitions().await?;
        let txn = begin_write(&self.db).await?;
        let base = self.current(&txn, &defs, survivor, etag).await?;
        let mut losers = Vec::with_capacity(merged.len());
        for id in merged {
            losers.push(self.current(&txn, &defs, *id, "").await?);
        }
        too_many_contacts(&base, &losers)?;
        let mut profile = base.profile.clone();
        let mut provenance = base.provenance.clone();
        let mut external_ids = base.external_ids.clone();
        let survivor_fallback = api_origin(base.source_channel, base.update_time);
        for loser in &losers {
            let fallback = api_origin(loser.source_channel, loser.update_time);
            let c = combine(
                &Side {
                    profile: &profile,
                    provenance: &provenance,
                    fallback: &survivor_fallback,
                },
                &Side {
                    profile: &loser.profile,
                    provenance: &loser.provenance,
                    fallback: &fallback,
                },
                &self.settings.priority,
            );
            profile = c.profile;
            provenance = c.provenance;
            external_ids.extend(loser.external_ids.iter().cloned());
        }
        external_ids.sort();
        external_ids.dedup();
        let (profile, _) = self.validate(profile, &defs)?;
        let at = super::now();
        let mut merged_customers = base.merged_customers.clone();
        merged_customers.extend(merged.iter().copied());
        let next = Customer {
            profile,
            provenance,
            external_ids,
            merged_customers,
            revision: base.revision + 1,
            update_time: at,
            confirm_time: at,
            ..base.clone()
        };

        let images = serde_json::to_vec(&BeforeImages {
            survivor: base.clone(),
            merged: losers.clone(),
        })
        .map_err(Error::internal)?;
        let merge_id = uuid::Uuid::now_v7().to_string();
        let record = MergeRecord {
            sealed: self.keyring.seal(&images, merge_id.as_bytes())?,
            id: merge_id,
            survivor,
            survivor_revision: next.revision,
            merge_time: at,
        };
        records::save_merge(&txn, &record, merged).await?;

        let mut aliases = Vec::with_capacity(losers.len());
        for loser in &losers {
            let alias = Customer {
                merged_into: Some(survivor),
                revision: loser.revision + 1,
                update_time: at,
                ..loser.clone()
            };
            if !store::update(&txn, self.sealer(&defs), &alias, loser.revision).await? {
                return Err(Error::EtagMismatch { name: loser.name() });
            }
            records::set_keys(&txn, &self.keyring, loser.id, &[], false).await?;
            records::relink_external_ids(&txn, &loser.external_ids, survivor).await?;
            records::set_pair_state(&txn, survivor, loser.id, CandidateState::Merged, at).await?;
            records::carry_dismissed(&txn, loser.id, survivor, at).await?;
            records::drop_open_candidates(&txn, loser.id).await?;
            aliases.push(alias);
        }
        if !store::update(&txn, self.sealer(&defs), &next, base.revision).await? {
            return Err(Error::EtagMismatch { name: base.name() });
        }
        self.request_enrichment(&txn, Some(&base.profile), &next).await?;
        self.index(&txn, &next, &defs).await?;
        feed::append(&txn, self.seal_event(events::merged(&next, &losers, actor))?).await?;
        for loser in &losers {
            self.cache.delete(&cache_key(loser.id)).await;
        }
        self.cache.delete(&cache_key(survivor)).await;
        let mut changed = aliases;
        changed.push(next.clone());
        self.commit_and_refresh(txn, changed, Vec::new()).await?;
        Ok(Self::present(next, &defs))
    }

    /// Undoes the merge `member` took part in; returns the restored `member`.
    pub async fn unmerge(&self, actor: &str, member: CustomerId) -> Result<Customer> {
        let defs = self.definitions().await?;
        let txn = begin_write(&self.db).await?;
        let record = records::merge_of(&txn, member)
            .await?
            .ok_or_else(|| Error::FailedPrecondition {
                reason: "NOT_MERGED",
                subject: member.name(),
                message: "this customer is not merged into another".into(),
            })?;
        let window = Duration::days(i64::from(self.settings.matching.unmerge_window_days));
        let at = super::now();
        if at > record.merge_time + window {
            return Err(Error::FailedPrecondition {
                reason: "UNMERGE_WINDOW_CLOSED",
                subject: member.name(),
                message: format!("merges can be undone for {} days", self.settings.matching.unmerge_window_days),
            });
        }
        let survivor = store::find_for_update(&txn, self.sealer(&defs), record.survivor)
            .await?
            .ok_or_else(|| not_found(record.survivor))?;
        if survivor.revision != record.survivor_revision {
            return Err(Error::FailedPrecondition {
                reason: "SURVIVOR_CHANGED",
                subject: survivor.name(),
                message: "the survivor was written after the merge; undoing it would lose that change".into(),
            });
        }
        let images: BeforeImages = serde_json::from_slice(&self.keyring.open(&record.sealed, record.id.as_bytes())?)
            .map_err(|e| Error::internal(anyhow::anyhow!("merge {}: before-images: {e}", record.id)))?;
        let restored_survivor = Customer {
            revision: survivor.revision + 1,
            update_time: at,
            ..images.survivor
        };
        if !store::update(&txn, self.sealer(&defs), &restored_survivor, survivor.revision).await? {
            return Err(Error::EtagMismatch { name: survivor.name() });
        }
        records::relink_external_ids(&txn, &restored_survivor.external_ids, restored_survivor.id).await?;
        let mut restored = Vec::with_capacity(images.merged.len());
        for before in images.merged {
            let alias = store::find_for_update(&txn, self.sealer(&defs), before.id)
                .await?
                .ok_or_else(|| not_found(before.id))?;
            let back = Customer {
                revision: alias.revision + 1,
                update_time: at,
                merged_into: None,
                ..before
            };
            if !store::update(&txn, self.sealer(&defs), &back, alias.revision).await? {
                return Err(Error::EtagMismatch { name: back.name() });
            }
            records::relink_external_ids(&txn, &back.external_ids, back.id).await?;
            restored.push(back);
        }
        self.index(&txn, &restored_survivor, &defs).await?;
        for back in &restored {
            self.index(&txn, back, &defs).await?;
            // A person undid the merge: the pair is declared distinct (after indexing,
            // which may have recorded it as open).
            records::set_pair_state(&txn, restored_survivor.id, back.id, CandidateState::Dismissed, at).await?;
        }
        records::delete_merge(&txn, &record.id).await?;
        feed::append(&txn, self.seal_event(events::unmerged(&restored_survivor, &restored, actor))?).await?;
        self.cache.delete(&cache_key(restored_survivor.id)).await;
        for back in &restored {
            self.cache.delete(&cache_key(back.id)).await;
        }
        let mut changed = restored.clone();
        changed.push(restored_survivor.clone());
        self.commit_and_refresh(txn, changed, Vec::new()).await?;
        let member = restored
            .into_iter()
            .find(|c| c.id == member)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("merge {} does not hold {}", record.id, member.name())))?;
        Ok(Self::present(member, &defs))
    }
}

/// Merging unites contacts; rather than drop any beyond the limits, refuse.
fn too_many_contacts(base: &Customer, losers: &[Customer]) -> Result<()> {
    use std::collections::HashSet;
    let all = || std::iter::once(base).chain(losers.iter());
    let phones: HashSet<_> = all()
        .flat_map(|c| c.profile.phones.iter().map(|p| p.number.clone()))
        .collect();
    let emails: HashSet<_> = all()
        .flat_map(|c| c.profile.emails.iter().map(|e| e.address.to_lowercase()))
        .collect();
    let addresses = {
        let mut seen: Vec<&crate::domain::customer::PostalAddress> = Vec::new();
        for a in all().flat_map(|c| c.profile.addresses.iter()) {
            if !seen.contains(&&a.postal) {
                seen.push(&a.postal);
            }
        }
        seen.len()
    };
    let tags: HashSet<_> = all().flat_map(|c| c.profile.tags.iter().cloned()).collect();
    for (what, n, max) in [
        ("phone numbers", phones.len(), MAX_CONTACTS),
        ("e-mail addresses", emails.len(), MAX_CONTACTS),
        ("addresses", addresses, MAX_CONTACTS),
        ("tags", tags.len(), 50),
    ] {
        if n > max {
            return Err(Error::FailedPrecondition {
                reason: "MERGE_TOO_MANY_VALUES",
                subject: base.name(),
                message: format!(
                    "together the customers have {n} {what}, more than the {max} a customer holds: remove some first"
                ),
            });
        }
    }
    Ok(())
}
