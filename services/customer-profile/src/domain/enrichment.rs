//! Firmographic enrichment of organisations: when a change asks for a lookup
//! ([`trigger`]), what the endpoint is told ([`Query`]: the organisation's name, its
//! e-mail domains and country, nothing personal), how its answer is read ([`parse`]),
//! and how the values are applied as the least trusted source ([`apply`]).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    combine::{Combined, SourcePriority},
    customer::{Address, Channel, ContactKind, CustomerKind, PostalAddress, Profile, Provenance},
};

/// The provenance source of enriched values. With [`Channel::Unspecified`], which no
/// write through the API or a channel system carries, it ranks below every channel
/// of `customer_profile.ingest.source_priority` (see [`SourcePriority`]).
pub const SOURCE: &str = "enrichment";

/// Provenance of a value the enrichment endpoint answered at `time`.
pub fn origin(time: DateTime<Utc>) -> Provenance {
    Provenance {
        source: SOURCE.into(),
        channel: Channel::Unspecified,
        time,
    }
}

impl Provenance {
    /// Set by the enrichment hook?
    pub fn is_enrichment(&self) -> bool {
        self.source == SOURCE && self.channel == Channel::Unspecified
    }
}

/// Why an organisation is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Created,
    /// A person became an organisation.
    TypeChanged,
    OrganizationNameChanged,
    EmailDomainChanged,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::TypeChanged => "type_changed",
            Self::OrganizationNameChanged => "organization_name_changed",
            Self::EmailDomainChanged => "email_domain_changed",
        }
    }
}

/// The domains of a profile's e-mail addresses, lower case.
pub fn email_domains(p: &Profile) -> BTreeSet<String> {
    p.emails
        .iter()
        .filter_map(|e| e.address.rsplit_once('@'))
        .map(|(_, domain)| domain.to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect()
}

/// Does a write from `before` (`None`: a create) to `after` ask for a lookup? Only
/// organisations with a name are looked up, and only when what identifies them to
/// the endpoint (type, name, e-mail domains) changed.
pub fn trigger(before: Option<&Profile>, after: &Profile) -> Option<Reason> {
    if after.kind != CustomerKind::Organization || after.organization_name.is_empty() {
        return None;
    }
    let Some(before) = before else {
        return Some(Reason::Created);
    };
    if before.kind != CustomerKind::Organization {
        Some(Reason::TypeChanged)
    } else if before.organization_name != after.organization_name {
        Some(Reason::OrganizationNameChanged)
    } else if email_domains(before) != email_domains(after) {
        Some(Reason::EmailDomainChanged)
    } else {
        None
    }
}

/// The body of a lookup: what identifies the organisation, and nothing else (no
/// phone numbers, no addresses beyond the country, no ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Query {
    pub organization_name: String,
    pub email_domains: Vec<String>,
    /// ISO 3166 alpha-2 of the primary address; left out when there is none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub country: String,
}

impl Query {
    pub fn of(p: &Profile) -> Self {
        let primary = p.addresses.iter().find(|a| a.primary).or(p.addresses.first());
        Self {
            organization_name: p.organization_name.clone(),
            email_domains: email_domains(p).into_iter().collect(),
            country: primary.map(|a| a.postal.region_code.clone()).unwrap_or_default(),
        }
    }
}

/// What the endpoint knows about an organisation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Firmographics {
    pub industry: String,
    pub employee_count: Option<u64>,
    pub address: Option<PostalAddress>,
}

/// The answer's JSON; unknown members are ignored (endpoints add fields).
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    industry: Option<String>,
    #[serde(default)]
    employee_count: Option<u64>,
    #[serde(default)]
    address: Option<AnswerAddress>,
}

#[derive(Deserialize)]
struct AnswerAddress {
    #[serde(default)]
    region_code: String,
    #[serde(default)]
    postal_code: String,
    #[serde(default)]
    administrative_area: String,
    #[serde(default)]
    locality: String,
    #[serde(default)]
    sublocality: String,
    #[serde(default)]
    address_lines: Vec<String>,
}

/// Reads a successful answer: `None` when it holds nothing usable (the endpoint
/// knows nothing of the organisation), an error when it is not the expected JSON.
pub fn parse(body: &[u8]) -> Result<Option<Firmographics>, String> {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| format!("malformed answer: {e}"))?;
    let address = answer.address.and_then(|a| {
        let postal = PostalAddress {
            region_code: a.region_code.trim().to_owned(),
            postal_code: a.postal_code,
            administrative_area: a.administrative_area,
            locality: a.locality,
            sublocality: a.sublocality,
            address_lines: a.address_lines,
            recipients: Vec::new(),
        };
        // Without a region there is no address to store.
        (!postal.region_code.is_empty()).then_some(postal)
    });
    let found = Firmographics {
        industry: answer.industry.map(|s| s.trim().to_owned()).unwrap_or_default(),
        employee_count: answer.employee_count,
        address,
    };
    Ok((found != Firmographics::default()).then_some(found))
}

/// The custom attributes enriched values are stored under; an empty key leaves
/// that value out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeKeys {
    pub industry: String,
    pub employee_count: String,
}

impl Firmographics {
    /// The values as a partial profile of an organisation, to be checked like any
    /// other input: the industry and employee count as custom attributes, the
    /// address as a work address.
    pub fn to_partial(&self, keys: &AttributeKeys) -> Profile {
        let mut custom_attributes = BTreeMap::new();
        if !keys.industry.is_empty() && !self.industry.is_empty() {
            custom_attributes.insert(keys.industry.clone(), self.industry.clone());
        }
        if let Some(n) = self.employee_count
            && !keys.employee_count.is_empty()
        {
            custom_attributes.insert(keys.employee_count.clone(), n.to_string());
        }
        Profile {
            kind: CustomerKind::Organization,
            custom_attributes,
            addresses: self
                .address
                .iter()
                .map(|postal| Address {
                    kind: ContactKind::Work,
                    primary: true,
                    postal: postal.clone(),
                })
                .collect(),
            ..Default::default()
        }
    }
}

/// Applies `found` (a checked partial profile from [`Firmographics::to_partial`])
/// to `base` as the least trusted source: a value is taken only where the field is
/// empty or was itself enriched earlier. The address is taken only when the
/// customer has none or its addresses all came from enrichment, and then replaces
/// them; an enriched address is never added beside one a person or system entered.
/// `fallback` is the provenance of fields without an entry.
pub fn apply(
    base: &Profile,
    provenance: &BTreeMap<String, Provenance>,
    fallback: &Provenance,
    found: &Profile,
    at: DateTime<Utc>,
    priority: &SourcePriority,
) -> Combined {
    let origin = origin(at);
    let mut profile = base.clone();
    let mut provenance = provenance.clone();
    let mut changed = Vec::new();
    for (key, value) in &found.custom_attributes {
        let path = format!("custom_attributes.{key}");
        let stored = profile.custom_attributes.get(key);
        if value.is_empty() || stored == Some(value) {
            continue;
        }
        let empty = stored.is_none_or(String::is_empty);
        if empty || priority.prefers(&origin, provenance.get(&path).unwrap_or(fallback)) {
            profile.custom_attributes.insert(key.clone(), value.clone());
            provenance.insert(path.clone(), origin.clone());
            changed.push(path);
        }
    }
    if let Some(address) = found.addresses.first() {
        let replace = profile.addresses.is_empty() || priority.prefers(&origin, provenance.get("addresses").unwrap_or(fallback));
        if replace && profile.addresses != [address.clone()] {
            profile.addresses = vec![address.clone()];
            provenance.insert("addresses".into(), origin.clone());
            changed.push("addresses".into());
        }
    }
    Combined {
        profile,
        provenance,
        changed,
    }
}

/// How long after failed attempt number `attempts` (1 for the first) the next one
/// is due: `base` doubled per earlier failure, at most `max`.
pub fn backoff(base: std::time::Duration, max: std::time::Duration, attempts: u32) -> std::time::Duration {
    let doublings = attempts.saturating_sub(1).min(30);
    base.saturating_mul(1u32 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{combine::api_origin, customer::Email};

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn org(name: &str, emails: &[&str]) -> Profile {
        Profile {
            kind: CustomerKind::Organization,
            organization_name: name.into(),
            emails: emails
                .iter()
                .map(|a| Email {
                    address: (*a).into(),
                    kind: ContactKind::Work,
                    primary: false,
                    verified: false,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn keys() -> AttributeKeys {
        AttributeKeys {
            industry: "industry".into(),
            employee_count: "employee_count".into(),
        }
    }

    fn priority() -> SourcePriority {
        SourcePriority(vec![Channel::Api, Channel::Erp, Channel::Import])
    }

    fn berlin() -> PostalAddress {
        PostalAddress {
            region_code: "DE".into(),
            locality: "Berlin".into(),
            address_lines: vec!["Invalidenstraße 117".into()],
            ..Default::default()
        }
    }

    #[test]
    fn only_organisations_whose_identity_changed_are_looked_up() {
        let acme = org("ACME", &["a@acme.example"]);
        let cases: Vec<(&str, Option<Profile>, Profile, Option<Reason>)> = vec![
            ("new organisation", None, acme.clone(), Some(Reason::Created)),
            (
                "new person",
                None,
                Profile {
                    kind: CustomerKind::Person,
                    organization_name: "ACME".into(),
                    ..Default::default()
                },
                None,
            ),
            (
                "person becomes organisation",
                Some(Profile {
                    kind: CustomerKind::Person,
                    ..acme.clone()
                }),
                acme.clone(),
                Some(Reason::TypeChanged),
            ),
            (
                "renamed",
                Some(acme.clone()),
                org("ACME GmbH", &["a@acme.example"]),
                Some(Reason::OrganizationNameChanged),
            ),
            (
                "new domain",
                Some(acme.clone()),
                org("ACME", &["a@acme.example", "b@acme.test"]),
                Some(Reason::EmailDomainChanged),
            ),
            (
                "another address, same domain",
                Some(acme.clone()),
                org("ACME", &["b@ACME.example"]),
                None,
            ),
            (
                "unrelated change",
                Some(acme.clone()),
                Profile {
                    team_id: "emea".into(),
                    ..acme.clone()
                },
                None,
            ),
        ];
        for (what, before, after, want) in cases {
            assert_eq!(trigger(before.as_ref(), &after), want, "{what}");
        }
    }

    #[test]
    fn the_query_holds_name_domains_and_country_only() {
        let mut p = org("ACME", &["x@acme.example", "y@Mail.acme.example", "z@acme.example"]);
        p.phones = vec![crate::domain::customer::Phone {
            number: "+8613800138000".into(),
            kind: ContactKind::Work,
            primary: true,
            verified: false,
        }];
        p.national_id = "91350100M000100Y43".into();
        p.addresses = vec![Address {
            kind: ContactKind::Work,
            primary: true,
            postal: berlin(),
        }];
        let json = serde_json::to_value(Query::of(&p)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "organization_name": "ACME",
                "email_domains": ["acme.example", "mail.acme.example"],
                "country": "DE",
            })
        );
        let bare = serde_json::to_value(Query::of(&org("ACME", &[]))).unwrap();
        assert_eq!(bare, serde_json::json!({"organization_name": "ACME", "email_domains": []}));
    }

    #[test]
    fn answers_are_parsed_strictly_enough() {
        let full = parse(
            br#"{"industry": " Software ", "employee_count": 250, "extra": true,
                 "address": {"region_code": "DE", "locality": "Berlin", "address_lines": ["Invalidenstrasse 117"]}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(full.industry, "Software");
        assert_eq!(full.employee_count, Some(250));
        assert_eq!(full.address.unwrap().locality, "Berlin");

        assert_eq!(parse(b"{}").unwrap(), None, "nothing known");
        assert_eq!(
            parse(br#"{"industry": "", "address": {"locality": "Berlin"}}"#).unwrap(),
            None,
            "an address without a region and an empty industry are nothing"
        );
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            br#"{"employee_count": -3}"#,
            br#"{"industry": 7}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn partial_profile_uses_the_configured_keys() {
        let f = Firmographics {
            industry: "Software".into(),
            employee_count: Some(12),
            address: Some(berlin()),
        };
        let p = f.to_partial(&keys());
        assert_eq!(p.custom_attributes["industry"], "Software");
        assert_eq!(p.custom_attributes["employee_count"], "12");
        assert_eq!(p.addresses.len(), 1);
        let none = f.to_partial(&AttributeKeys {
            industry: String::new(),
            employee_count: "size".into(),
        });
        assert_eq!(none.custom_attributes.keys().collect::<Vec<_>>(), ["size"]);
    }

    #[test]
    fn enrichment_never_overwrites_a_more_trusted_value() {
        let found = Firmographics {
            industry: "Software".into(),
            employee_count: Some(250),
            address: Some(berlin()),
        }
        .to_partial(&keys());
        let erp = Provenance {
            source: "sap".into(),
            channel: Channel::Erp,
            time: at(100),
        };
        let mut base = org("ACME", &[]);
        base.custom_attributes.insert("industry".into(), "Manufacturing".into());
        let provenance = BTreeMap::from([("custom_attributes.industry".to_owned(), erp.clone())]);
        let fallback = api_origin(Channel::Api, at(50));

        let c = apply(&base, &provenance, &fallback, &found, at(200), &priority());
        assert_eq!(
            c.profile.custom_attributes["industry"], "Manufacturing",
            "ERP wins over enrichment"
        );
        assert_eq!(c.provenance["custom_attributes.industry"], erp);
        assert_eq!(
            c.profile.custom_attributes["employee_count"], "250",
            "an empty field takes it"
        );
        assert!(c.provenance["custom_attributes.employee_count"].is_enrichment());
        assert_eq!(c.profile.addresses.len(), 1);
        assert!(c.provenance["addresses"].is_enrichment());
        assert_eq!(c.changed, vec!["custom_attributes.employee_count", "addresses"]);

        // A later answer replaces what enrichment set before, and only that.
        let newer = Firmographics {
            industry: "Retail".into(),
            employee_count: Some(300),
            address: Some(PostalAddress {
                locality: "Hamburg".into(),
                ..berlin()
            }),
        }
        .to_partial(&keys());
        let c2 = apply(&c.profile, &c.provenance, &fallback, &newer, at(300), &priority());
        assert_eq!(c2.profile.custom_attributes["industry"], "Manufacturing");
        assert_eq!(c2.profile.custom_attributes["employee_count"], "300");
        assert_eq!(c2.profile.addresses[0].postal.locality, "Hamburg");

        // An address someone entered (no provenance entry: the record's own source)
        // is neither replaced nor joined by an enriched one.
        let mut entered = org("ACME", &[]);
        entered.addresses = vec![Address {
            kind: ContactKind::Billing,
            primary: true,
            postal: PostalAddress {
                region_code: "CN".into(),
                locality: "Shanghai".into(),
                ..Default::default()
            },
        }];
        let c3 = apply(&entered, &BTreeMap::new(), &fallback, &found, at(400), &priority());
        assert_eq!(c3.profile.addresses, entered.addresses);
        assert!(!c3.changed.contains(&"addresses".to_owned()));

        // The same answer again changes nothing.
        let c4 = apply(&c.profile, &c.provenance, &fallback, &found, at(500), &priority());
        assert!(c4.changed.is_empty());
    }

    #[test]
    fn enrichment_ranks_below_every_channel_even_unlisted_ones() {
        let p = priority();
        let enriched = origin(at(1_000));
        let wechat_old = Provenance {
            source: "wx".into(),
            channel: Channel::Wechat,
            time: at(1),
        };
        assert!(
            !p.prefers(&enriched, &wechat_old),
            "an unlisted channel still outranks enrichment"
        );
        assert!(p.prefers(&wechat_old, &enriched));
        assert!(
            p.prefers(&origin(at(2_000)), &enriched),
            "a newer enrichment replaces an older one"
        );
        assert!(!p.prefers(&origin(at(10)), &enriched));
        let named_like_it = Provenance {
            source: SOURCE.into(),
            channel: Channel::Import,
            time: at(1),
        };
        assert!(
            !named_like_it.is_enrichment(),
            "a channel system called `enrichment` is just that system"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (base, max) = (Duration::from_secs(30), Duration::from_secs(600));
        let got: Vec<u64> = (1..=7).map(|n| backoff(base, max, n).as_secs()).collect();
        assert_eq!(got, [30, 60, 120, 240, 480, 600, 600]);
        assert_eq!(backoff(base, max, u32::MAX), max, "no overflow");
    }
}
