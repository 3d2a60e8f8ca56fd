//! May we contact this customer for this purpose on this channel? The one rule every
//! service applies before sending anything (campaigns, journeys, notifications):
//!
//! - the statements that apply are the customer's latest for the purpose on that
//!   channel and for the purpose on every channel; the more recent one decides (a
//!   purpose-wide withdrawal after a channel grant withdraws it; a channel grant after
//!   a purpose-wide refusal grants that channel); a tie goes to the channel's own;
//! - it must be GRANTED, in effect (not stated in the future) and not expired;
//! - no statement at all means no: contact is opt-in.

use chrono::{DateTime, Utc};
use crm_proto::crm::customer::v1::{ConsentPurpose, ConsentRecord, ConsentStatus, ContactChannel};

/// The answer, with the reason in words (for logs, audit and skip counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactDecision {
    pub allowed: bool,
    pub reason: String,
}

fn at(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    crate::feed::datetime(t?)
}

/// Whether `records` (a customer's consent in force, or its whole history) allow
/// contacting them for `purpose` on `channel` at `now`.
pub fn may_contact(
    records: &[ConsentRecord],
    purpose: ConsentPurpose,
    channel: ContactChannel,
    now: DateTime<Utc>,
) -> ContactDecision {
    let stated = |r: &&ConsentRecord| at(r.effective_time.as_ref()).is_some_and(|t| t <= now);
    let latest = |c: ContactChannel| {
        records
            .iter()
            .filter(|r| r.purpose == purpose as i32 && r.channel == c as i32)
            .filter(stated)
            .max_by_key(|r| at(r.effective_time.as_ref()))
    };
    let specific = if channel == ContactChannel::Unspecified {
        None
    } else {
        latest(channel)
    };
    let general = latest(ContactChannel::Unspecified);
    let deciding = match (specific, general) {
        (Some(s), Some(g)) => {
            if at(g.effective_time.as_ref()) > at(s.effective_time.as_ref()) {
                g
            } else {
                s
            }
        }
        (Some(s), None) => s,
        (None, Some(g)) => g,
        (None, None) => {
            return ContactDecision {
                allowed: false,
                reason: format!(
                    "no consent recorded for {} on {}",
                    purpose.as_str_name(),
                    channel.as_str_name()
                ),
            };
        }
    };
    let scope = if deciding.channel == ContactChannel::Unspecified as i32 {
        "every channel".to_owned()
    } else {
        ContactChannel::try_from(deciding.channel)
            .map_or("?", |c| c.as_str_name())
            .to_owned()
    };
    if let Some(expiry) = at(deciding.expire_time.as_ref())
        && expiry <= now
    {
        return ContactDecision {
            allowed: false,
            reason: format!("consent for {} on {scope} expired at {expiry}", purpose.as_str_name()),
        };
    }
    let status = ConsentStatus::try_from(deciding.status).unwrap_or(ConsentStatus::Unspecified);
    ContactDecision {
        allowed: status == ConsentStatus::Granted,
        reason: format!(
            "{} for {} on {scope} (source {})",
            status.as_str_name(),
            purpose.as_str_name(),
            deciding.source
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(channel: ContactChannel, status: ConsentStatus, at_secs: i64, expire: Option<i64>) -> ConsentRecord {
        ConsentRecord {
            purpose: ConsentPurpose::Marketing as i32,
            channel: channel as i32,
            status: status as i32,
            source: "test".into(),
            effective_time: Some(prost_types::Timestamp {
                seconds: at_secs,
                nanos: 0,
            }),
            expire_time: expire.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
            ..Default::default()
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(10_000, 0).unwrap()
    }

    use ConsentStatus::{Denied, Granted, Withdrawn};
    use ContactChannel::{Email, Sms, Unspecified as AllChannels};

    #[test]
    fn the_rule_table() {
        let cases: Vec<(&str, Vec<ConsentRecord>, ContactChannel, bool)> = vec![
            ("nothing recorded", vec![], Sms, false),
            ("granted on the channel", vec![record(Sms, Granted, 100, None)], Sms, true),
            (
                "granted on another channel",
                vec![record(Email, Granted, 100, None)],
                Sms,
                false,
            ),
            (
                "granted on every channel",
                vec![record(AllChannels, Granted, 100, None)],
                Sms,
                true,
            ),
            ("denied on the channel", vec![record(Sms, Denied, 100, None)], Sms, false),
            (
                "a later purpose-wide withdrawal beats a channel grant",
                vec![record(Sms, Granted, 100, None), record(AllChannels, Withdrawn, 200, None)],
                Sms,
                false,
            ),
            (
                "a later channel grant beats a purpose-wide refusal",
                vec![record(AllChannels, Denied, 100, None), record(Sms, Granted, 200, None)],
                Sms,
                true,
            ),
            (
                "a tie goes to the channel's own",
                vec![record(AllChannels, Granted, 100, None), record(Sms, Withdrawn, 100, None)],
                Sms,
                false,
            ),
            (
                "the latest statement on the channel counts",
                vec![
                    record(Sms, Granted, 100, None),
                    record(Sms, Withdrawn, 300, None),
                    record(Sms, Granted, 200, None),
                ],
                Sms,
                false,
            ),
            ("expired", vec![record(Sms, Granted, 100, Some(9_000))], Sms, false),
            ("not expired yet", vec![record(Sms, Granted, 100, Some(20_000))], Sms, true),
            ("stated in the future", vec![record(Sms, Granted, 20_000, None)], Sms, false),
        ];
        for (name, records, channel, allowed) in cases {
            let d = may_contact(&records, ConsentPurpose::Marketing, channel, now());
            assert_eq!(d.allowed, allowed, "{name}: {}", d.reason);
        }
    }

    #[test]
    fn other_purposes_do_not_count() {
        let mut analytics = record(Sms, Granted, 100, None);
        analytics.purpose = ConsentPurpose::Analytics as i32;
        let d = may_contact(&[analytics], ConsentPurpose::Marketing, Sms, now());
        assert!(!d.allowed);
        assert!(d.reason.contains("no consent recorded"), "{}", d.reason);
    }
}
