//! Consent per purpose and channel: statements validated, kept in full, the latest
//! per purpose and channel in force, each change an event. Whether a customer may
//! be contacted is `crm_platform::consent::may_contact`, shared by every service.

use chrono::{DateTime, Duration, Utc};
use crm_platform::{
    Error, FieldViolation, Result,
    db::begin_write,
    feed::{self, NewEvent, datetime as at},
    idempotency::{self, Recorded},
};
use crm_proto::crm::customer::v1 as pb;
use prost::Message;

use super::{Customers, now};
use crate::{domain::CustomerId, store::consent as store};

/// Statements per update at most.
pub const MAX_CHANGES: usize = 50;

/// Every problem with the statements of an update at `now`; fills in defaults (the
/// effective time, the source) and the output-only fields.
pub fn validate_changes(
    changes: &mut [pb::ConsentRecord],
    recorded_by: &str,
    default_source: Option<&str>,
    now: DateTime<Utc>,
) -> std::result::Result<(), Vec<FieldViolation>> {
    let mut bad = Vec::new();
    if changes.is_empty() || changes.len() > MAX_CHANGES {
        bad.push(FieldViolation::new("changes", format!("1 to {MAX_CHANGES} statements")));
    }
    for (i, r) in changes.iter_mut().enumerate() {
        let mut field = |name: &str, why: &str| bad.push(FieldViolation::new(format!("changes[{i}].{name}"), why));
        if r.purpose == 0 || pb::ConsentPurpose::try_from(r.purpose).is_err() {
            field("purpose", "required: a known purpose");
        }
        if pb::ContactChannel::try_from(r.channel).is_err() {
            field("channel", "unknown channel");
        }
        if r.status == 0 || pb::ConsentStatus::try_from(r.status).is_err() {
            field("status", "required: GRANTED, DENIED or WITHDRAWN");
        }
        if r.legal_basis == 0 || pb::LegalBasis::try_from(r.legal_basis).is_err() {
            field("legal_basis", "required: a known legal basis");
        }
        if let Some(source) = default_source {
            r.source = source.to_owned();
        }
        let source_ok = !r.source.is_empty()
            && r.source.len() <= 64
            && r.source.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && r.source
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
        if !source_ok {
            field("source", "required: [a-z0-9][a-z0-9_.-]{0,63}");
        }
        if r.proof_reference.chars().count() > 500 {
            field("proof_reference", "at most 500 characters");
        }
        let effective = match r.effective_time.as_ref() {
            None => Some(now),
            Some(t) => at(t),
        };
        match effective {
            None => field("effective_time", "out of range"),
            Some(t) if t > now + Duration::minutes(5) => field("effective_time", "in the future"),
            Some(t) => {
                r.effective_time = Some(feed::timestamp(t));
                if let Some(expiry) = r.expire_time.as_ref()
                    && at(expiry).is_none_or(|e| e <= t)
                {
                    field("expire_time", "after the effective time");
                }
            }
        }
        r.recorded_by = recorded_by.to_owned();
        r.record_time = Some(feed::timestamp(now));
    }
    if bad.is_empty() { Ok(()) } else { Err(bad) }
}

fn decode(data: &[u8]) -> Result<pb::ConsentRecord> {
    pb::ConsentRecord::decode(data).map_err(Error::internal)
}

impl Customers {
    /// The consent in force.
    pub async fn consent(&self, customer: CustomerId) -> Result<pb::Consent> {
        self.consent_in(&self.db, customer).await
    }

    async fn consent_in<C: sea_orm::ConnectionTrait>(&self, c: &C, customer: CustomerId) -> Result<pb::Consent> {
        let records = store::current(c, customer)
            .await?
            .iter()
            .map(|d| decode(d))
            .collect::<Result<Vec<_>>>()?;
        let version = store::version(c, customer).await?;
        let update_time = records
            .iter()
            .filter_map(|r| r.record_time)
            .max_by_key(|t| (t.seconds, t.nanos));
        Ok(pb::Consent {
            name: format!("{}/consent", customer.name()),
            records,
            update_time,
            etag: format!("\"{version}\""),
        })
    }

    /// Records consent statements (validated by [`validate_changes`]); `etag`, when
    /// set, must be the current version. Idempotent per `key`.
    pub async fn update_consent(
        &self,
        actor: &str,
        customer: CustomerId,
        changes: Vec<pb::ConsentRecord>,
        etag: &str,
        key: Option<idempotency::Key>,
    ) -> Result<pb::Consent> {
        let name = format!("{}/consent", customer.name());
        if let Some(key) = &key
            && idempotency::lookup(&self.db, key).await?.is_some()
        {
            return self.consent(customer).await;
        }
        let txn = begin_write(&self.db).await?;
        store::lock_customer(&txn, customer).await?;
        let version = store::version(&txn, customer).await?;
        if !etag.is_empty() && etag != format!("\"{version}\"") {
            return Err(Error::EtagMismatch { name });
        }
        if let Some(key) = &key
            && idempotency::record(&txn, key, &name).await? == Recorded::Duplicate
        {
            txn.rollback().await?;
            return self.consent(customer).await;
        }
        for (i, r) in changes.iter().enumerate() {
            let data = r.encode_to_vec();
            store::append(&txn, customer, version + 1 + i as i64, r.purpose, data.clone()).await?;
            let effective = r.effective_time.as_ref().and_then(at).unwrap_or_else(now).timestamp_micros();
            store::put_current(&txn, customer, r.purpose, r.channel, effective, data).await?;
        }
        let consent = self.consent_in(&txn, customer).await?;
        feed::append(
            &txn,
            NewEvent {
                event_type: "crm.customer.v1.ConsentChanged",
                subject: name,
                actor: actor.to_owned(),
                data: pb::ConsentChanged {
                    customer: customer.name(),
                    changes,
                    consent: Some(consent.clone()),
                }
                .encode_to_vec(),
            },
        )
        .await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(consent)
    }

    /// Statements newest first, below sequence `before` (0: from the newest): (seq, statement).
    pub async fn consent_history(
        &self,
        customer: CustomerId,
        purpose: Option<i32>,
        before: i64,
        limit: u64,
    ) -> Result<Vec<(i64, pb::ConsentRecord)>> {
        let before = if before <= 0 { i64::MAX } else { before };
        store::history(&self.db, customer, purpose, before, limit)
            .await?
            .iter()
            .map(|(seq, d)| Ok((*seq, decode(d)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_checked_and_completed() {
        let now = Utc::now();
        let mut ok = vec![pb::ConsentRecord {
            purpose: pb::ConsentPurpose::Marketing as i32,
            channel: pb::ContactChannel::Sms as i32,
            status: pb::ConsentStatus::Granted as i32,
            legal_basis: pb::LegalBasis::Consent as i32,
            source: "web-signup".into(),
            ..Default::default()
        }];
        validate_changes(&mut ok, "u1", None, now).unwrap();
        assert!(ok[0].effective_time.is_some() && ok[0].record_time.is_some());
        assert_eq!(ok[0].recorded_by, "u1");
        let mut bad = vec![pb::ConsentRecord {
            channel: 42,
            source: "Web Signup".into(),
            effective_time: Some(feed::timestamp(now + Duration::days(1))),
            ..Default::default()
        }];
        let fields: Vec<String> = validate_changes(&mut bad, "u1", None, now)
            .unwrap_err()
            .into_iter()
            .map(|f| f.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "changes[0].purpose",
                "changes[0].channel",
                "changes[0].status",
                "changes[0].legal_basis",
                "changes[0].source",
                "changes[0].effective_time"
            ]
        );
        // Self-service statements carry their own source.
        let mut mine = vec![pb::ConsentRecord {
            source: "anything".into(),
            ..ok[0].clone()
        }];
        validate_changes(&mut mine, "customers/c1", Some("self_service"), now).unwrap();
        assert_eq!(mine[0].source, "self_service");
    }
}
