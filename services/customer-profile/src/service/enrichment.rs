//! The enrichment hook: a write that creates an organisation or changes what
//! identifies it records a request in its own transaction (never a call); a job
//! claims due requests once across replicas, asks the endpoint, and applies the
//! firmographics as the least trusted source through the normal write path (one
//! `CustomerUpdated` event by `customer-profile/enrichment`). Failures are retried
//! with exponential backoff, then kept as failed with their error.

use std::time::Duration;

use chrono::Utc;
use crm_platform::{Error, Result, db::begin_write, server::ShutdownSignal};
use sea_orm::ConnectionTrait;
use serde::Deserialize;

use super::{Customers, carry_raw, now};
use crate::{
    domain::{
        Customer, CustomerId,
        combine::api_origin,
        enrichment::{self, AttributeKeys, Query},
        update,
    },
    enrichment::{Answer, Endpoint, Failure},
    events,
    store::{self, records},
};

/// The actor of the feed events enrichment writes.
pub const ACTOR: &str = "customer-profile/enrichment";

/// Optimistic-concurrency retries of one apply.
const APPLY_TRIES: usize = 3;

/// `[customer_profile.enrichment]`.
#[derive(Clone, Deserialize)]
pub struct EnrichmentConfig {
    /// The endpoint (`http://...`); empty: enrichment is off and nothing is recorded.
    pub url: String,
    /// Sent as `Authorization: Bearer ...` when set; never logged.
    pub bearer_token: String,
    /// Deadline of one lookup (connect, send, answer).
    pub timeout_ms: u64,
    /// How often due requests are looked for.
    pub interval_secs: u64,
    /// Requests claimed per look.
    pub batch: u64,
    /// Attempts before a request is kept as failed.
    pub max_attempts: u32,
    /// Wait after the first failed attempt, doubled after each further one...
    pub retry_base_ms: u64,
    /// ... up to this.
    pub retry_max_ms: u64,
    /// Custom attribute that receives the industry; empty: not stored. Applied only
    /// when the attribute is defined (UpdateFieldDefinition).
    pub industry_attribute: String,
    /// Custom attribute that receives the employee count; empty: not stored.
    pub employee_count_attribute: String,
}

impl std::fmt::Debug for EnrichmentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrichmentConfig")
            .field("url", &self.url)
            .field("timeout_ms", &self.timeout_ms)
            .field("interval_secs", &self.interval_secs)
            .field("batch", &self.batch)
            .field("max_attempts", &self.max_attempts)
            .field("retry_base_ms", &self.retry_base_ms)
            .field("retry_max_ms", &self.retry_max_ms)
            .field("industry_attribute", &self.industry_attribute)
            .field("employee_count_attribute", &self.employee_count_attribute)
            .finish_non_exhaustive()
    }
}

impl EnrichmentConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    fn keys(&self) -> AttributeKeys {
        AttributeKeys {
            industry: self.industry_attribute.clone(),
            employee_count: self.employee_count_attribute.clone(),
        }
    }

    /// The first invalid key (relative to the section) and why.
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.enabled() {
            crate::enrichment::check_url(&self.url).map_err(|why| ("url", why))?;
        }
        if !(1..=60_000).contains(&self.timeout_ms) {
            return Err(("timeout_ms", "1 to 60000".into()));
        }
        if self.interval_secs == 0 {
            return Err(("interval_secs", "at least 1".into()));
        }
        if !(1..=1000).contains(&self.batch) {
            return Err(("batch", "1 to 1000".into()));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(("max_attempts", "1 to 100".into()));
        }
        if self.retry_base_ms == 0 {
            return Err(("retry_base_ms", "at least 1".into()));
        }
        if self.retry_max_ms < self.retry_base_ms {
            return Err(("retry_max_ms", "at least retry_base_ms".into()));
        }
        for (key, value) in [
            ("industry_attribute", &self.industry_attribute),
            ("employee_count_attribute", &self.employee_count_attribute),
        ] {
            if !value.is_empty()
                && let Err(why) = crate::domain::normalize::attribute_key(value)
            {
                return Err((key, why));
            }
        }
        Ok(())
    }
}

/// How an attempt ended, for the log and the `crm.enrichment.requests` counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    /// Answered, but nothing to apply (nothing known, or every value outranked).
    Unchanged,
    /// The customer is gone or a newer request replaced this one.
    Dropped,
    Retrying,
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::Dropped => "dropped",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
        }
    }
}

impl Customers {
    /// Inside a write's transaction: records an enrichment request when the write
    /// from `before` (`None`: created) to `after` asks for one. Never calls out.
    pub(super) async fn request_enrichment<C: ConnectionTrait>(
        &self,
        conn: &C,
        before: Option<&crate::domain::Profile>,
        after: &Customer,
    ) -> Result<()> {
        if !self.settings.enrichment.enabled() || after.delete_time.is_some() || after.merged_into.is_some() {
            return Ok(());
        }
        if let Some(reason) = enrichment::trigger(before, &after.profile) {
            records::request_enrichment(conn, after.id, reason.as_str(), after.update_time.timestamp_micros()).await?;
        }
        Ok(())
    }

    /// The stored enrichment request of a customer (pending or failed), if any.
    pub async fn enrichment_request(&self, id: CustomerId) -> Result<Option<records::EnrichmentRequest>> {
        records::enrichment_request(&self.db, id).await
    }

    /// The scheduled job, every `interval_secs`, until shutdown.
    pub async fn run_enrichment(self, endpoint: Endpoint, mut shutdown: ShutdownSignal) {
        let every = Duration::from_secs(self.settings.enrichment.interval_secs.max(1));
        let counter = opentelemetry::global::meter("customer-profile")
            .u64_counter("crm.enrichment.requests")
            .with_description("Enrichment attempts by outcome")
            .build();
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(every) => {}
            }
            // Due requests are worked off in batches until none is left.
            loop {
                match self.enrich_due(&endpoint).await {
                    Ok(outcomes) if outcomes.is_empty() => break,
                    Ok(outcomes) => {
                        for o in outcomes {
                            counter.add(1, &[opentelemetry::KeyValue::new("outcome", o.as_str())]);
                        }
                    }
                    Err(err) => {
                        tracing::warn!(%err, "enrichment run failed; retrying at the next interval");
                        break;
                    }
                }
                if shutdown.is_triggered() {
                    return;
                }
            }
        }
    }

    /// Claims one batch of due requests and attempts each.
    async fn enrich_due(&self, endpoint: &Endpoint) -> Result<Vec<Outcome>> {
        let cfg = &self.settings.enrichment;
        let at = Utc::now();
        // A claimed request is due again after its lease: should this replica stop
        // mid-call, another one takes it over then.
        let lease = cfg.timeout() * 2 + Duration::from_secs(30);
        let lease_us = at.timestamp_micros() + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 2);
        let txn = begin_write(&self.db).await?;
        let claims = records::claim_enrichment(&txn, at.timestamp_micros(), lease_us, cfg.batch).await?;
        txn.commit().await?;
        let mut outcomes = Vec::with_capacity(claims.len());
        for claim in claims {
            outcomes.push(self.attempt(endpoint, &claim).await?);
        }
        Ok(outcomes)
    }

    /// One attempt of a claimed request.
    async fn attempt(&self, endpoint: &Endpoint, claim: &records::EnrichmentClaim) -> Result<Outcome> {
        let cfg = &self.settings.enrichment;
        let id = claim.customer_id;
        let defs = self.definitions().await?;
        let Some(customer) = store::find(&self.db, self.sealer(&defs), id)
            .await?
            .filter(|c| c.delete_time.is_none() && c.merged_into.is_none())
        else {
            records::finish_enrichment(&self.db, id, claim.generation).await?;
            return Ok(Outcome::Dropped);
        };
        let query = Query::of(&customer.profile);
        let result = match endpoint.lookup(&query).await {
            Ok(Answer::NoData) => Ok(None),
            Ok(Answer::Found(found)) => Ok(Some(*found)),
            Err(failure) => Err(failure),
        };
        let result = match result {
            Ok(found) => self.apply(id, claim.generation, found.as_ref()).await,
            Err(failure) => Ok(Err(failure)),
        };
        // A database error while applying counts as a failed attempt, retried.
        let result = result.unwrap_or_else(|err| {
            Err(Failure {
                permanent: false,
                message: format!("applying the answer: {err}"),
            })
        });
        match result {
            Ok(outcome) => {
                tracing::info!(customer = %id.name(), reason = %claim.reason, outcome = outcome.as_str(), "enrichment done");
                Ok(outcome)
            }
            Err(failure) => {
                let attempts = u32::try_from(claim.attempts).unwrap_or(u32::MAX);
                let retry = (!failure.permanent && attempts < cfg.max_attempts).then(|| {
                    let wait = enrichment::backoff(
                        Duration::from_millis(cfg.retry_base_ms),
                        Duration::from_millis(cfg.retry_max_ms),
                        attempts,
                    );
                    Utc::now().timestamp_micros() + i64::try_from(wait.as_micros()).unwrap_or(i64::MAX / 2)
                });
                records::fail_enrichment(&self.db, id, claim.generation, retry, &failure.message).await?;
                if retry.is_some() {
                    tracing::info!(customer = %id.name(), attempts, error = %failure.message, "enrichment attempt failed; retrying later");
                    Ok(Outcome::Retrying)
                } else {
                    tracing::warn!(customer = %id.name(), attempts, error = %failure.message, "enrichment failed; kept as failed");
                    Ok(Outcome::Failed)
                }
            }
        }
    }

    /// Applies an answer (`None`: nothing known) and completes the request in one
    /// transaction, re-reading the customer on a revision conflict. The inner error
    /// is an answer that cannot be stored.
    async fn apply(
        &self,
        id: CustomerId,
        generation: i64,
        found: Option<&enrichment::Firmographics>,
    ) -> Result<std::result::Result<Outcome, Failure>> {
        for _ in 0..APPLY_TRIES {
            match self.apply_once(id, generation, found).await {
                Err(Error::EtagMismatch { .. }) => continue,
                other => return other,
            }
        }
        Err(Error::Unavailable(format!(
            "{} kept changing while enrichment was applied",
            id.name()
        )))
    }

    async fn apply_once(
        &self,
        id: CustomerId,
        generation: i64,
        found: Option<&enrichment::Firmographics>,
    ) -> Result<std::result::Result<Outcome, Failure>> {
        let defs = self.definitions().await?;
        let txn = begin_write(&self.db).await?;
        // The customer row first, as every write locks it before the request row.
        let current = store::find_for_update(&txn, self.sealer(&defs), id)
            .await?
            .filter(|c| c.delete_time.is_none() && c.merged_into.is_none());
        if !records::enrichment_current(&txn, id, generation).await? {
            // A newer trigger replaced this request: its own attempt applies.
            txn.rollback().await?;
            return Ok(Ok(Outcome::Dropped));
        }
        let (Some(current), Some(found)) = (&current, found) else {
            records::finish_enrichment(&txn, id, generation).await?;
            txn.commit().await?;
            return Ok(Ok(if current.is_none() {
                Outcome::Dropped
            } else {
                Outcome::Unchanged
            }));
        };
        let partial = match self.checked_partial(found, &defs) {
            Ok(p) => p,
            Err(failure) => {
                txn.rollback().await?;
                return Ok(Err(failure));
            }
        };
        let at = now();
        let fallback = api_origin(current.source_channel, current.update_time);
        let combined = enrichment::apply(
            &current.profile,
            &current.provenance,
            &fallback,
            &partial,
            at,
            &self.settings.priority,
        );
        let (profile, raw) = match combined.profile.validated(&self.settings.rules, &defs) {
            Ok(v) => v,
            Err(err) => {
                txn.rollback().await?;
                return Ok(Err(Failure {
                    permanent: true,
                    message: format!("the enriched customer does not validate: {err}"),
                }));
            }
        };
        let changed = update::changed_paths(&current.profile, &profile);
        records::finish_enrichment(&txn, id, generation).await?;
        if changed.is_empty() {
            txn.commit().await?;
            return Ok(Ok(Outcome::Unchanged));
        }
        let next = Customer {
            profile,
            provenance: combined.provenance,
            raw_values: carry_raw(&current.raw_values, raw, &changed),
            revision: current.revision + 1,
            update_time: at,
            // Enrichment does not confirm what the customer's own sources said.
            ..current.clone()
        };
        self.write_in(&txn, &defs, current, &next, events::updated(&next, changed, ACTOR))
            .await?;
        self.commit_and_refresh(txn, vec![next], Vec::new()).await?;
        Ok(Ok(Outcome::Applied))
    }

    /// The answer as a partial profile checked like any input. Values the field
    /// standard refuses (an undefined attribute, a value outside an enum, an address
    /// that does not validate) are left out rather than failing the whole answer.
    fn checked_partial(
        &self,
        found: &enrichment::Firmographics,
        defs: &crate::domain::definitions::Definitions,
    ) -> std::result::Result<crate::domain::Profile, Failure> {
        let mut partial = found.to_partial(&self.settings.enrichment.keys());
        for _ in 0..2 {
            match partial.clone().validated_partial(&self.settings.rules, defs) {
                Ok((checked, _)) => return Ok(checked),
                Err(Error::InvalidArgument(violations)) => {
                    for v in violations {
                        tracing::debug!(field = %v.field, why = %v.description, "enriched value left out");
                        if v.field.starts_with("addresses") {
                            partial.addresses.clear();
                        } else if let Some(key) = v.field.strip_prefix("custom_attributes[").and_then(|k| k.strip_suffix(']')) {
                            partial.custom_attributes.remove(key);
                        }
                    }
                }
                Err(other) => {
                    return Err(Failure {
                        permanent: true,
                        message: format!("checking the answer: {other}"),
                    });
                }
            }
        }
        Err(Failure {
            permanent: true,
            message: "the answer holds no value the field standard accepts".into(),
        })
    }
}
