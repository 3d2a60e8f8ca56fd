//! Channel ingestion (upsert by external id, source priority, match-and-link) and
//! bulk import (batches of rows through the same path, with a resumable job).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use crm_platform::{Error, FieldViolation, Result, db::begin_write, feed};
use sea_orm::DatabaseTransaction;
use serde::{Deserialize, Serialize};

use super::{Customers, carry_raw, duplicates::Match, not_found};
use crate::{
    domain::{
        Customer, CustomerId, Profile,
        combine::{Side, api_origin, combine, stamp_all},
        customer::{Channel, ExternalId, Provenance},
        definitions::Definitions,
        import::{self, Mapping},
        matching::{BlockingKey, Comparison, Decision, blocking_keys, score},
        update,
    },
    events,
    store::{self, records},
};

/// A channel system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    pub system: String,
    pub channel: Channel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Created,
    Updated,
    Merged,
    Unchanged,
    Rejected,
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Merged => "merged",
            Self::Unchanged => "unchanged",
            Self::Rejected => "rejected",
            Self::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Created,
            Self::Updated,
            Self::Merged,
            Self::Unchanged,
            Self::Rejected,
            Self::Skipped,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// New customers of an import batch not written yet, and what goes with them.
#[derive(Default)]
struct Pending {
    customers: Vec<Customer>,
    keys: Vec<(CustomerId, Vec<BlockingKey>)>,
    by_key: HashMap<BlockingKey, Vec<usize>>,
    links: Vec<(String, String, CustomerId)>,
    events: Vec<feed::NewEvent>,
    candidates: Vec<(CustomerId, CustomerId, f64, Vec<Comparison>)>,
}

/// A partial record, checked and normalised, with the raw input normalisation changed.
#[derive(Debug, Clone)]
pub struct Partial {
    profile: Profile,
    raw: BTreeMap<String, String>,
}

impl Partial {
    /// The fields the record sets.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }
}

/// What an ingested record did.
#[derive(Debug, Clone)]
pub struct Ingested {
    pub customer: Customer,
    pub outcome: Outcome,
    pub probability: f64,
}

/// An import job as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImportJob {
    pub id: String,
    pub source: SourceRef,
    pub mapping: Mapping,
    pub state: ImportState,
    pub rows_processed: i64,
    pub counts: BTreeMap<String, i64>,
    /// The first rejected rows.
    pub errors: Vec<records::RowResult>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportState {
    Running,
    Interrupted,
    Succeeded,
}

impl ImportJob {
    pub fn name(&self) -> String {
        format!("importJobs/{}", self.id)
    }

    pub fn count(&self, outcome: Outcome) -> i64 {
        self.counts.get(outcome.as_str()).copied().unwrap_or(0)
    }
}

const MAX_JOB_ERRORS: usize = 100;
pub const IMPORT_RESOURCE_TYPE: &str = "crm.customer.v1.ImportJob";

impl serde::Serialize for records::RowResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        (&self.row_key, &self.outcome, &self.customer, &self.errors, self.probability).serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for records::RowResult {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (row_key, outcome, customer, errors, probability) =
            <(String, String, String, Vec<(String, String)>, f64)>::deserialize(d)?;
        Ok(Self {
            row_key,
            outcome,
            customer,
            errors,
            probability,
        })
    }
}

/// Another transaction linked the same external id first: nothing of this one may
/// commit (the caller rolls back); a retry takes the linked path.
fn concurrent_link(source: &SourceRef, external_id: &str) -> Error {
    Error::Unavailable(format!(
        "external id `{}` of `{}` was linked by a concurrent write; retry",
        external_id, source.system
    ))
}

impl SourceRef {
    /// The provenance of a value this source observed at `time`.
    fn origin(&self, time: DateTime<Utc>) -> Provenance {
        Provenance {
            source: self.system.clone(),
            channel: self.channel,
            time,
        }
    }

    /// The link of `external_id` in this source.
    fn link(&self, external_id: &str) -> ExternalId {
        ExternalId {
            source: self.system.clone(),
            external_id: external_id.to_owned(),
        }
    }
}

/// A source id: 1 to 64 of `[a-z0-9_.-]`.
pub fn check_source(system: &str) -> std::result::Result<(), String> {
    let ok = !system.is_empty()
        && system.len() <= 64
        && system
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("`{system}` is not a source id: 1 to 64 of [a-z0-9_.-]"))
    }
}

/// An external id: 1 to 128 characters, no control characters.
pub fn check_external_id(id: &str) -> std::result::Result<(), String> {
    if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
        Err("1 to 128 characters, no control characters".into())
    } else {
        Ok(())
    }
}

impl Customers {
    /// Checks and normalises a partial record (violations under `customer.`).
    pub async fn validate_partial(&self, profile: Profile) -> Result<Partial> {
        let defs = self.definitions().await?;
        let validated = profile.validated_partial(&self.settings.rules, &defs);
        if validated.is_err() {
            self.count_entry(&validated);
        }
        let (profile, raw) = validated.map_err(|e| e.in_field("customer"))?;
        Ok(Partial { profile, raw })
    }

    /// Ingests one record (checked by [`Customers::validate_partial`]) in its own
    /// transaction.
    pub async fn ingest(
        &self,
        actor: &str,
        source: &SourceRef,
        external_id: &str,
        partial: Partial,
        observed: Option<DateTime<Utc>>,
    ) -> Result<Ingested> {
        let defs = self.definitions().await?;
        let Partial { profile: incoming, raw } = partial;
        let txn = begin_write(&self.db).await?;
        let at = super::now();
        let done = self
            .ingest_in(
                &txn,
                &defs,
                actor,
                source,
                external_id,
                incoming,
                raw,
                observed.unwrap_or(at),
                at,
            )
            .await;
        self.count_entry(&done);
        let done = done.map_err(|e| e.in_field("customer"))?;
        if done.outcome == Outcome::Unchanged {
            self.commit_and_refresh(txn, Vec::new(), vec![done.customer.id]).await?;
        } else {
            self.commit_and_refresh(txn, vec![done.customer.clone()], Vec::new()).await?;
        }
        Ok(Ingested {
            customer: Self::present(done.customer, &defs),
            ..done
        })
    }

    /// The ingestion of one validated partial record inside `txn`. A record that
    /// cannot be stored fails with INVALID_ARGUMENT before anything is written.
    #[allow(clippy::too_many_arguments)]
    async fn ingest_in(
        &self,
        txn: &DatabaseTransaction,
        defs: &Definitions,
        actor: &str,
        source: &SourceRef,
        external_id: &str,
        incoming: Profile,
        raw: BTreeMap<String, String>,
        observed: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Ingested> {
        let origin = source.origin(observed);
        let link = source.link(external_id);
        let linked = records::external_id(txn, &source.system, external_id).await?;
        let (base, outcome, probability) = match linked {
            Some(id) => {
                let base = self.survivor_for_update(txn, defs, id).await?;
                if base.delete_time.is_some() {
                    return Err(Error::invalid(
                        "external_id",
                        format!("links to the deleted customer {}; restore or relink it", base.name()),
                    ));
                }
                (base, Outcome::Updated, 0.0)
            }
            None => {
                let (full, mut full_raw) = incoming.clone().validated(&self.settings.rules, defs)?;
                full_raw.extend(raw.clone());
                let found = self.matches(txn, defs, &full, None).await?;
                match found.first() {
                    Some(m) if self.settings.matching.decide(m.score.probability) == Decision::Match => {
                        let base = self.survivor_for_update(txn, defs, m.customer.id).await?;
                        (base, Outcome::Merged, m.score.probability)
                    }
                    _ => {
                        let provenance = stamp_all(&full, &origin);
                        let customer = Customer::new(full, source.channel, provenance, vec![link.clone()], full_raw, at);
                        store::insert(txn, self.sealer(defs), &customer).await?;
                        self.request_enrichment(txn, None, &customer).await?;
                        if !records::link_external_id(txn, &source.system, external_id, customer.id).await? {
                            return Err(concurrent_link(source, external_id));
                        }
                        self.index_new(txn, &customer, defs, found).await?;
                        feed::append(txn, self.seal_event(events::created(&customer, actor))?).await?;
                        return Ok(Ingested {
                            customer,
                            outcome: Outcome::Created,
                            probability: 0.0,
                        });
                    }
                }
            }
        };

        let fallback = api_origin(base.source_channel, base.update_time);
        let no_provenance = BTreeMap::new();
        let combined = combine(
            &Side {
                profile: &base.profile,
                provenance: &base.provenance,
                fallback: &fallback,
            },
            &Side {
                profile: &incoming,
                provenance: &no_provenance,
                fallback: &origin,
            },
            &self.settings.priority,
        );
        let (profile, _) = combined.profile.validated(&self.settings.rules, defs)?;
        let new_link = !base.external_ids.contains(&link);
        if new_link && !records::link_external_id(txn, &source.system, external_id, base.id).await? {
            return Err(concurrent_link(source, external_id));
        }
        let changed = update::changed_paths(&base.profile, &profile);
        if changed.is_empty() && !new_link {
            // The source confirmed what is stored: fresh again, with no new revision
            // and no event (nothing changed). The cached copy is dropped after commit.
            records::confirm(txn, base.id, at).await?;
            return Ok(Ingested {
                customer: Customer {
                    confirm_time: at,
                    ..base
                },
                outcome: Outcome::Unchanged,
                probability,
            });
        }
        let mut external_ids = base.external_ids.clone();
        if new_link {
            external_ids.push(link);
            external_ids.sort();
        }
        let next = Customer {
            profile,
            provenance: combined.provenance,
            raw_values: carry_raw(&base.raw_values, raw, &changed),
            external_ids,
            revision: base.revision + 1,
            update_time: at,
            confirm_time: at,
            ..base.clone()
        };
        self.write_in(txn, defs, &base, &next, events::updated(&next, changed, actor))
            .await?;
        Ok(Ingested {
            customer: next,
            outcome,
            probability,
        })
    }

    /// Locks a customer for a write, following merges to the survivor.
    async fn survivor_for_update(&self, txn: &DatabaseTransaction, defs: &Definitions, id: CustomerId) -> Result<Customer> {
        let mut id = id;
        for _ in 0..8 {
            let c = store::find_for_update(txn, self.sealer(defs), id)
                .await?
                .ok_or_else(|| not_found(id))?;
            match c.merged_into {
                Some(next) => id = next,
                None => return Ok(c),
            }
        }
        Err(Error::internal(anyhow::anyhow!("merge chain of {} too long", id.name())))
    }

    /// Creates an import job, or resumes the one with the same id (same source and
    /// mapping required).
    pub async fn open_import(&self, id: &str, source: SourceRef, mapping: Mapping) -> Result<ImportJob> {
        let name = format!("importJobs/{id}");
        let txn = begin_write(&self.db).await?;
        let at = super::now();
        let job = match records::load_job::<_, ImportJob>(&txn, id).await? {
            Some(mut job) => {
                if job.source != source || job.mapping != mapping {
                    return Err(Error::FailedPrecondition {
                        reason: "IMPORT_SPEC_CHANGED",
                        subject: name,
                        message: "an import job resumes only with the source and mapping it was created with".into(),
                    });
                }
                job.state = ImportState::Running;
                job.update_time = at;
                records::save_job(&txn, id, &job, at, false).await?;
                job
            }
            None => {
                let job = ImportJob {
                    id: id.to_owned(),
                    source,
                    mapping,
                    state: ImportState::Running,
                    rows_processed: 0,
                    counts: BTreeMap::new(),
                    errors: Vec::new(),
                    create_time: at,
                    update_time: at,
                };
                records::save_job(&txn, id, &job, at, true).await?;
                job
            }
        };
        txn.commit().await?;
        Ok(job)
    }

    /// Processes one batch of rows in one transaction: each row is skipped (key seen),
    /// rejected (with its field errors) or ingested; its result and the job's counts
    /// commit with the rows' effects. New customers are buffered and written with
    /// multi-row inserts; rows of the batch still match them through an in-memory
    /// index, and any row that must change a stored customer first writes the buffer.
    pub async fn import_batch(&self, actor: &str, job: &mut ImportJob, rows: Vec<import::Row>) -> Result<()> {
        let defs = self.definitions().await?;
        let txn = begin_write(&self.db).await?;
        // The stored job, locked: another stream on the same job (a client retrying while
        // its old stream lives) must not overwrite these counts or reuse these numbers.
        let mut next: ImportJob = records::load_job_for_update(&txn, &job.id)
            .await?
            .ok_or_else(|| Error::internal(anyhow::anyhow!("import job {} vanished", job.id)))?;
        let mut written = Vec::new();
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        let mut seen = records::rows_seen(&txn, &job.id, &keys).await?;
        let mapped: Vec<_> = rows.iter().map(|r| import::map_row(&job.mapping, r)).collect();
        let ids: Vec<&str> = mapped
            .iter()
            .filter_map(|m| m.as_ref().ok().map(|(id, _)| id.as_str()))
            .collect();
        let linked = records::external_ids_many(&txn, &job.source.system, &ids).await?;
        let mut handled: HashSet<String> = HashSet::new();
        let mut pending = Pending::default();
        let mut results = Vec::with_capacity(rows.len());
        for (row, mapped) in rows.iter().zip(mapped) {
            let seq = next.rows_processed + 1;
            let outcome = if !seen.insert(row.key.clone()) {
                Ok(None)
            } else {
                let at = super::now();
                match mapped {
                    Err(violations) => Err(violations),
                    Ok((external_id, profile)) => match profile.validated_partial(&self.settings.rules, &defs) {
                        Err(e) => Err(violations_of(e)?),
                        Ok((incoming, raw)) => {
                            let known = linked.contains_key(&external_id) || !handled.insert(external_id.clone());
                            let done = if known {
                                Ok(None)
                            } else {
                                self.create_buffered(
                                    &txn,
                                    &defs,
                                    actor,
                                    &job.source,
                                    &external_id,
                                    &incoming,
                                    &raw,
                                    at,
                                    &mut pending,
                                )
                                .await
                            };
                            match done {
                                // An invalid new customer is this row's rejection, not the batch's.
                                Err(e) => Err(violations_of(e)?),
                                Ok(Some(done)) => Ok(Some(done)),
                                Ok(None) => {
                                    // Changes a stored customer: the buffer goes first.
                                    self.flush(&txn, &defs, &mut pending).await?;
                                    match self
                                        .ingest_in(&txn, &defs, actor, &job.source, &external_id, incoming, raw, at, at)
                                        .await
                                    {
                                        Ok(done) => Ok(Some(done)),
                                        Err(e) => Err(violations_of(e)?),
                                    }
                                }
                            }
                        }
                    },
                }
            };
            let result = match outcome {
                Ok(None) => records::RowResult {
                    row_key: row.key.clone(),
                    outcome: Outcome::Skipped.as_str().into(),
                    customer: String::new(),
                    errors: Vec::new(),
                    probability: 0.0,
                },
                Ok(Some(done)) => {
                    if done.outcome != Outcome::Created {
                        written.push(done.customer.id);
                    }
                    records::RowResult {
                        row_key: row.key.clone(),
                        outcome: done.outcome.as_str().into(),
                        customer: done.customer.name(),
                        errors: Vec::new(),
                        probability: done.probability,
                    }
                }
                Err(violations) => records::RowResult {
                    row_key: row.key.clone(),
                    outcome: Outcome::Rejected.as_str().into(),
                    customer: String::new(),
                    errors: violations.into_iter().map(|v| (v.field, v.description)).collect(),
                    probability: 0.0,
                },
            };
            if result.outcome != Outcome::Skipped.as_str() {
                self.entry.count(result.outcome != Outcome::Rejected.as_str());
                results.push((seq, result.clone()));
            }
            *next.counts.entry(result.outcome.clone()).or_default() += 1;
            next.rows_processed = seq;
            if result.outcome == Outcome::Rejected.as_str() && next.errors.len() < MAX_JOB_ERRORS {
                next.errors.push(result);
            }
        }

        self.flush(&txn, &defs, &mut pending).await?;
        records::insert_rows_many(&txn, &job.id, &results).await?;
        next.update_time = super::now();
        records::save_job(&txn, &job.id, &next, next.update_time, false).await?;

        self.commit_and_refresh(txn, Vec::new(), written).await?;
        *job = next;
        Ok(())
    }

    /// A row with an external id new to the batch and the database: buffered as a new
    /// customer unless it matches one (stored or buffered) at the auto-merge threshold,
    /// in which case `None` sends it down the ingestion path.
    #[allow(clippy::too_many_arguments)]
    async fn create_buffered(
        &self,
        txn: &DatabaseTransaction,
        defs: &Definitions,
        actor: &str,
        source: &SourceRef,
        external_id: &str,
        incoming: &Profile,
        raw: &BTreeMap<String, String>,
        at: DateTime<Utc>,
        pending: &mut Pending,
    ) -> Result<Option<Ingested>> {
        let (full, mut full_raw) = incoming.clone().validated(&self.settings.rules, defs)?;
        full_raw.extend(raw.clone());
        let found = self.matches_with(txn, defs, &full, pending).await?;
        if found
            .first()
            .is_some_and(|m| self.settings.matching.decide(m.score.probability) == Decision::Match)
        {
            return Ok(None);
        }
        let provenance = stamp_all(&full, &source.origin(at));
        let customer = Customer::new(full, source.channel, provenance, vec![source.link(external_id)], full_raw, at);
        pending.events.push(self.seal_event(events::created(&customer, actor))?);
        for m in &found {
            pending
                .candidates
                .push((customer.id, m.customer.id, m.score.probability, m.score.comparisons.clone()));
        }
        let keys = blocking_keys(&customer.profile);
        for k in &keys {
            pending.by_key.entry(k.clone()).or_default().push(pending.customers.len());
        }
        pending.keys.push((customer.id, keys));
        pending
            .links
            .push((source.system.clone(), external_id.to_owned(), customer.id));
        pending.customers.push(customer.clone());
        Ok(Some(Ingested {
            customer,
            outcome: Outcome::Created,
            probability: 0.0,
        }))
    }

    /// [`Customers::matches`] over the stored customers and the buffered ones.
    async fn matches_with(
        &self,
        txn: &DatabaseTransaction,
        defs: &Definitions,
        profile: &Profile,
        pending: &Pending,
    ) -> Result<Vec<Match>> {
        let mut found = self.matches(txn, defs, profile, None).await?;
        let mut buffered: Vec<usize> = blocking_keys(profile)
            .iter()
            .filter_map(|k| pending.by_key.get(k))
            .flatten()
            .copied()
            .collect();
        buffered.sort_unstable();
        buffered.dedup();
        let cfg = &self.settings.matching;
        for i in buffered {
            let c = &pending.customers[i];
            let score = score(cfg, profile, &c.profile);
            if score.probability >= cfg.review_threshold {
                found.push(Match {
                    customer: c.clone(),
                    score,
                });
            }
        }
        found.sort_by(|a, b| b.score.probability.total_cmp(&a.score.probability));
        Ok(found)
    }

    /// Writes the buffered new customers, their keys, links, events and candidates.
    async fn flush(&self, txn: &DatabaseTransaction, defs: &Definitions, pending: &mut Pending) -> Result<()> {
        if pending.customers.is_empty() {
            return Ok(());
        }
        let p = std::mem::take(pending);
        store::insert_many(txn, self.sealer(defs), &p.customers).await?;
        for c in &p.customers {
            self.request_enrichment(txn, None, c).await?;
        }
        records::insert_keys_many(txn, &self.keyring, &p.keys).await?;
        records::link_external_ids_many(txn, &p.links).await?;
        feed::append_many(txn, p.events).await?;
        let at = super::now();
        for (a, b, probability, comparisons) in &p.candidates {
            records::upsert_candidate(txn, *a, *b, *probability, comparisons, at).await?;
        }
        Ok(())
    }

    /// Marks the end of a stream: succeeded, or interrupted (resumable).
    pub async fn close_import(&self, job: &mut ImportJob, completed: bool) -> Result<()> {
        let txn = begin_write(&self.db).await?;
        let mut stored: ImportJob = records::load_job_for_update(&txn, &job.id)
            .await?
            .ok_or_else(|| Error::internal(anyhow::anyhow!("import job {} vanished", job.id)))?;
        stored.state = if completed {
            ImportState::Succeeded
        } else {
            ImportState::Interrupted
        };
        stored.update_time = super::now();
        records::save_job(&txn, &stored.id, &stored, stored.update_time, false).await?;
        txn.commit().await?;
        *job = stored;
        Ok(())
    }

    /// Marks a running job interrupted (its stream broke off).
    pub async fn interrupt_import(&self, id: &str) -> Result<()> {
        let mut job = self.get_import(id).await?;
        if job.state == ImportState::Running {
            self.close_import(&mut job, false).await?;
        }
        Ok(())
    }

    pub async fn get_import(&self, id: &str) -> Result<ImportJob> {
        records::load_job(&self.db, id).await?.ok_or_else(|| Error::NotFound {
            resource_type: IMPORT_RESOURCE_TYPE,
            name: format!("importJobs/{id}"),
        })
    }

    pub async fn list_import_rows(
        &self,
        id: &str,
        outcome: Option<Outcome>,
        after: i64,
        limit: u64,
    ) -> Result<Vec<(i64, records::RowResult)>> {
        self.get_import(id).await?;
        records::list_rows(&self.db, id, outcome.map(Outcome::as_str), after, limit).await
    }
}

/// A rejection's field violations; any other error aborts the batch.
fn violations_of(e: Error) -> Result<Vec<FieldViolation>> {
    match e {
        Error::InvalidArgument(v) => Ok(v),
        other => Err(other),
    }
}
