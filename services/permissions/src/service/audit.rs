//! The tamper-evident audit log: appends (from this service and from others),
//! listing, and verification of the whole chain.

use crm_platform::{Error, FieldViolation, Result, db::begin_write};
use crm_proto::crm::permissions::v1::{self as pb, audit_entry::Outcome};

use super::{Caller, Page, Permissions};
use crate::{
    domain::chain,
    store::{
        self,
        audit::{self as log, AuditQuery},
    },
};

/// Links read per verification query.
const VERIFY_BATCH: u64 = 5000;

/// Submitted entries at most per call.
pub const MAX_BATCH: usize = 1000;

/// Result of walking the chain.
#[derive(Debug, Clone)]
pub struct Verification {
    /// The last entry purged by retention; verification starts after it.
    pub anchor_sequence: i64,
    pub intact: bool,
    pub checked: i64,
    pub first_broken: Option<i64>,
    pub problem: String,
    pub head_sequence: i64,
    pub head_hash: String,
}

fn validate(entries: &[pb::AuditEntry]) -> Result<()> {
    let mut v = Vec::new();
    if entries.is_empty() || entries.len() > MAX_BATCH {
        v.push(FieldViolation::new("entries", format!("between 1 and {MAX_BATCH} entries")));
    }
    for (i, e) in entries.iter().enumerate() {
        let f = |name: &str| format!("entries[{i}].{name}");
        if e.id.is_empty() || e.id.len() > 200 {
            v.push(FieldViolation::new(f("id"), "required, at most 200 characters"));
        }
        // Years 1970 to 9999: the log keeps microseconds in 64 bits.
        if !e
            .time
            .is_some_and(|t| (0..=253_402_300_799).contains(&t.seconds) && (0..1_000_000_000).contains(&t.nanos))
        {
            v.push(FieldViolation::new(f("time"), "required: a time between 1970 and 9999"));
        }
        if e.source.is_empty() || e.source.len() > 64 {
            v.push(FieldViolation::new(f("source"), "required, at most 64 characters"));
        }
        if e.action.is_empty() || e.action.len() > 200 {
            v.push(FieldViolation::new(f("action"), "required, at most 200 characters"));
        }
        if e.resource.len() > 500 || e.related_resources.len() > 1000 || e.fields.len() > 200 {
            v.push(FieldViolation::new(
                f("resource"),
                "at most 500 characters, 1000 related resources, 200 fields",
            ));
        }
        if !matches!(
            Outcome::try_from(e.outcome),
            Ok(Outcome::Success | Outcome::Denied | Outcome::Failed)
        ) {
            v.push(FieldViolation::new(f("outcome"), "required: SUCCESS, DENIED or FAILED"));
        }
        if e.reason.chars().count() > 1000 {
            v.push(FieldViolation::new(f("reason"), "at most 1000 characters"));
        }
    }
    if v.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(v))
    }
}

impl Permissions {
    /// Appends entries not already in the log (by id), stamped with who submitted
    /// them; returns (appended, duplicates).
    pub async fn append_audit(&self, entries: Vec<pb::AuditEntry>, submitter: Option<&str>) -> Result<(usize, usize)> {
        validate(&entries)?;
        let txn = begin_write(self.db()).await?;
        store::lock_chain(&txn).await?;
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let mut seen: std::collections::HashSet<String> = log::existing_ids(&txn, &ids).await?.into_iter().collect();
        let total = entries.len();
        let mut fresh = Vec::with_capacity(total);
        for mut e in entries {
            if !seen.insert(e.id.clone()) {
                continue;
            }
            e.name.clear();
            e.hash.clear();
            e.previous_hash.clear();
            // In-process writers (this service, services hosted alongside) are the
            // source they name; remote ones are the account they called with.
            e.submitter = submitter.map_or_else(|| e.source.clone(), str::to_owned);
            // A change without its "before" continues from the resource's last state.
            if !e.after_digest.is_empty() && e.before_digest.is_empty() && !e.resource.is_empty() {
                let earlier = fresh
                    .iter()
                    .rev()
                    .find(|p: &&pb::AuditEntry| p.resource == e.resource && !p.after_digest.is_empty())
                    .map(|p| p.after_digest.clone());
                e.before_digest = match earlier {
                    Some(d) => d,
                    None => log::last_digest(&txn, &e.resource).await?.unwrap_or_default(),
                };
            }
            fresh.push(e);
        }
        let appended = fresh.len();
        if appended > 0 {
            log::append(&txn, fresh).await?;
        }
        txn.commit().await?;
        Ok((appended, total - appended))
    }

    pub async fn write_audit_entries(&self, caller: &Caller, entries: Vec<pb::AuditEntry>) -> Result<(usize, usize)> {
        self.require(caller, "audit.write", "auditEntries").await?;
        self.append_audit(entries, Some(&caller.user_id)).await
    }

    /// The newest `limit` entries about `resource`, for services hosted in this
    /// process (their own account's `audit.read` is implied).
    pub async fn audit_trail(&self, resource: &str, limit: u32) -> Result<Vec<pb::AuditEntry>> {
        let q = AuditQuery {
            actor: String::new(),
            resource: resource.to_owned(),
            outcome: 0,
            start_us: None,
            end_us: None,
            before_seq: 0,
            limit: u64::from(limit),
        };
        log::list(self.db(), &q).await
    }

    pub async fn list_audit(&self, caller: &Caller, mut q: AuditQuery) -> Result<Page<pb::AuditEntry>> {
        self.require(caller, "audit.read", "auditEntries").await?;
        let size = q.limit;
        q.limit = size + 1;
        let mut items = log::list(self.db(), &q).await?;
        let next = if items.len() as u64 > size {
            items.truncate(size as usize);
            items
                .last()
                .and_then(|e| e.name.strip_prefix("auditEntries/").map(str::to_owned))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// Retention: removes the entries older than `days` before `now` (a prefix of the
    /// chain), keeps the last one's hash as the anchor verification starts from, and
    /// records the purge as an entry of the chain itself, so moving the anchor later
    /// shows. Under the chain lock: one run at a time across replicas. Returns how
    /// many entries went (or, with `dry_run`, would go).
    pub async fn purge_audit(&self, days: u32, now: chrono::DateTime<chrono::Utc>, dry_run: bool) -> Result<i64> {
        if days == 0 {
            return Ok(0);
        }
        let cutoff = now - chrono::Duration::days(i64::from(days));
        let txn = begin_write(self.db()).await?;
        store::lock_chain(&txn).await?;
        let Some((seq, hash, count)) = log::expired_prefix(&txn, cutoff.timestamp_micros()).await? else {
            txn.rollback().await?;
            return Ok(0);
        };
        if dry_run {
            txn.rollback().await?;
            return Ok(count);
        }
        log::purge_through(&txn, seq, &hash, now.timestamp_micros()).await?;
        let entry = pb::AuditEntry {
            id: uuid::Uuid::now_v7().to_string(),
            time: Some(crm_platform::feed::timestamp(now)),
            source: crate::SERVICE.into(),
            submitter: crate::SERVICE.into(),
            actor: crate::SERVICE.into(),
            action: "audit.purge".into(),
            resource: "auditEntries".into(),
            outcome: Outcome::Success as i32,
            reason: format!(
                "retention ({days} days): {count} entries through auditEntries/{seq} removed; the chain continues from its hash {hash}"
            ),
            ..pb::AuditEntry::default()
        };
        log::append(&txn, vec![entry]).await?;
        txn.commit().await?;
        Ok(count)
    }

    pub async fn verify_audit(&self, caller: &Caller) -> Result<Verification> {
        self.require(caller, "audit.read", "auditEntries").await?;
        self.verify_chain().await
    }

    /// Walks the chain in batches from its start: the retention anchor, if any.
    pub async fn verify_chain(&self) -> Result<Verification> {
        let (mut seq, mut hash) = log::anchor(self.db()).await?;
        let anchor_sequence = seq;
        let mut checked = 0i64;
        loop {
            let batch = log::links(self.db(), seq, VERIFY_BATCH).await?;
            if batch.is_empty() {
                return Ok(Verification {
                    anchor_sequence,
                    intact: true,
                    checked,
                    first_broken: None,
                    problem: String::new(),
                    head_sequence: seq,
                    head_hash: hash,
                });
            }
            for (link, copies_match) in &batch {
                match chain::verify(seq, &hash, std::iter::once(link)) {
                    Ok((s, h)) if *copies_match => {
                        seq = s;
                        hash = h;
                        checked += 1;
                    }
                    Ok(_) => {
                        return Ok(broken(
                            anchor_sequence,
                            checked,
                            link.sequence,
                            "search columns edited: they differ from the hashed entry",
                        ));
                    }
                    Err(b) => return Ok(broken(anchor_sequence, checked, b.sequence, &b.problem)),
                }
            }
        }
    }
}

fn broken(anchor_sequence: i64, checked: i64, sequence: i64, problem: &str) -> Verification {
    Verification {
        anchor_sequence,
        intact: false,
        checked,
        first_broken: Some(sequence),
        problem: problem.to_owned(),
        head_sequence: 0,
        head_hash: String::new(),
    }
}
