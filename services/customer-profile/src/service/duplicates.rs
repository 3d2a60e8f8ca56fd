//! Duplicate detection on write and on demand, and the review queue.

use crm_platform::{Error, Result, db::begin_write};
use sea_orm::ConnectionTrait;

use super::Customers;
use crate::{
    domain::{
        Customer, CustomerId, Profile,
        definitions::Definitions,
        matching::{self, Score},
    },
    store::{
        self,
        records::{self, Candidate, CandidatePosition, CandidateState},
    },
};

pub const CANDIDATE_RESOURCE_TYPE: &str = "crm.customer.v1.DuplicateCandidate";

/// A scored match of a probe.
#[derive(Debug, Clone)]
pub struct Match {
    pub customer: Customer,
    pub score: Score,
}

impl Customers {
    /// Active customers sharing a blocking key with `profile`, scored, best first;
    /// only those at or above the review threshold.
    pub(crate) async fn matches<C: ConnectionTrait>(
        &self,
        conn: &C,
        defs: &Definitions,
        profile: &Profile,
        exclude: Option<CustomerId>,
    ) -> Result<Vec<Match>> {
        let cfg = &self.settings.matching;
        let keys = matching::blocking_keys(profile);
        let ids = records::candidates(conn, &self.keyring, &keys, cfg.max_candidates_per_key, exclude).await?;
        let found = store::find_many(conn, self.sealer(defs), &ids).await?;
        let mut out: Vec<Match> = found
            .into_iter()
            .filter(|c| c.delete_time.is_none() && c.merged_into.is_none())
            .map(|c| {
                let score = matching::score(cfg, profile, &c.profile);
                Match { customer: c, score }
            })
            .filter(|m| m.score.probability >= cfg.review_threshold)
            .collect();
        out.sort_by(|a, b| b.score.probability.total_cmp(&a.score.probability));
        Ok(out)
    }

    /// Records the review candidates of `c` (inside the write's transaction). `known`:
    /// the matches of a customer just created (it has no earlier candidates).
    pub(super) async fn detect<C: ConnectionTrait>(
        &self,
        conn: &C,
        c: &Customer,
        defs: &Definitions,
        known: Option<Vec<Match>>,
    ) -> Result<()> {
        let new = known.is_some();
        let found = match known {
            Some(found) => found,
            None => self.matches(conn, defs, &c.profile, Some(c.id)).await?,
        };
        let at = super::now();
        for m in &found {
            records::upsert_candidate(conn, c.id, m.customer.id, m.score.probability, &m.score.comparisons, at).await?;
        }
        if new {
            return Ok(());
        }
        let keep: Vec<CustomerId> = found.iter().map(|m| m.customer.id).collect();
        records::drop_open_candidates_except(conn, c.id, &keep).await
    }

    /// Scores the customers that may be duplicates of a stored customer.
    pub async fn find_duplicates_of(&self, id: CustomerId, max: usize) -> Result<Vec<Match>> {
        let customer = self.get(id).await?;
        let defs = self.definitions().await?;
        let mut found = self.matches(&self.db, &defs, &customer.profile, Some(customer.id)).await?;
        found.truncate(max);
        Ok(found)
    }

    /// Scores the customers that may be duplicates of an unsaved record.
    pub async fn find_duplicates_of_probe(&self, probe: Profile, max: usize) -> Result<Vec<Match>> {
        let defs = self.definitions().await?;
        let (profile, _) = self.validate(probe, &defs)?;
        let mut found = self.matches(&self.db, &defs, &profile, None).await?;
        found.truncate(max);
        Ok(found)
    }

    pub async fn list_candidates(
        &self,
        state: CandidateState,
        customer: Option<CustomerId>,
        after: Option<&CandidatePosition>,
        limit: u64,
    ) -> Result<Vec<Candidate>> {
        records::list_candidates(&self.db, state, customer, after, limit).await
    }

    /// Declares a pair distinct. Dismissing a dismissed pair is a no-op; a merged
    /// pair cannot be dismissed.
    pub async fn dismiss_candidate(&self, id: uuid::Uuid) -> Result<Candidate> {
        let txn = begin_write(&self.db).await?;
        let name = format!("duplicateCandidates/{id}");
        let mut candidate = records::find_candidate(&txn, id).await?.ok_or_else(|| Error::NotFound {
            resource_type: CANDIDATE_RESOURCE_TYPE,
            name: name.clone(),
        })?;
        match candidate.state {
            CandidateState::Dismissed => return Ok(candidate),
            CandidateState::Merged => {
                return Err(Error::FailedPrecondition {
                    reason: "CANDIDATE_MERGED",
                    subject: name,
                    message: "the pair was merged; unmerge the customer instead".into(),
                });
            }
            CandidateState::Open => {}
        }
        let at = super::now();
        records::set_candidate_state(&txn, id, CandidateState::Dismissed, at).await?;
        txn.commit().await?;
        candidate.state = CandidateState::Dismissed;
        candidate.update_time = at;
        Ok(candidate)
    }
}
