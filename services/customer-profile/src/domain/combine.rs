//! Combining customer data from several sources, field by field: the rule behind
//! ingestion (a channel system sends a record) and merging (duplicates become one).
//!
//! For a single-valued field, a set incoming value replaces the stored one when the
//! stored one is empty, when the incoming source is more trusted (its channel earlier
//! in the priority list), or when both are equally trusted and the incoming value is
//! at least as recent. Phone numbers, e-mail addresses, addresses and tags are united.
//! Every field taken records its provenance.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::customer::{Channel, CustomerKind, LifecycleStage, Profile, Provenance};

pub const MAX_CONTACTS: usize = 10;
const MAX_TAGS: usize = 50;

/// Channels from most to least trusted.
#[derive(Debug, Clone)]
pub struct SourcePriority(pub Vec<Channel>);

impl SourcePriority {
    /// Position in the list; unlisted channels rank after the listed ones, and
    /// enriched values ([`super::enrichment`]) after everything.
    fn rank(&self, origin: &Provenance) -> usize {
        if origin.is_enrichment() {
            return usize::MAX;
        }
        self.0.iter().position(|c| *c == origin.channel).unwrap_or(self.0.len())
    }

    /// Does a value from `incoming` replace one from `stored`?
    pub fn prefers(&self, incoming: &Provenance, stored: &Provenance) -> bool {
        let (ri, rs) = (self.rank(incoming), self.rank(stored));
        ri < rs || (ri == rs && incoming.time >= stored.time)
    }
}

pub const SCALAR_PATHS: &[&str] = &[
    "display_name",
    "person_name.given_name",
    "person_name.middle_name",
    "person_name.family_name",
    "person_name.prefix",
    "person_name.suffix",
    "organization_name",
    "birth_date",
    "national_id",
    "owner_user_id",
    "team_id",
];

fn scalar<'a>(p: &'a mut Profile, path: &str) -> Option<&'a mut String> {
    Some(match path {
        "display_name" => &mut p.display_name,
        "person_name.given_name" => &mut p.person_name.given,
        "person_name.middle_name" => &mut p.person_name.middle,
        "person_name.family_name" => &mut p.person_name.family,
        "person_name.prefix" => &mut p.person_name.prefix,
        "person_name.suffix" => &mut p.person_name.suffix,
        "organization_name" => &mut p.organization_name,
        "birth_date" => &mut p.birth_date,
        "national_id" => &mut p.national_id,
        "owner_user_id" => &mut p.owner_user_id,
        "team_id" => &mut p.team_id,
        _ => return None,
    })
}

/// Provenance of every field `p` has a value for, all from `origin`.
pub fn stamp_all(p: &Profile, origin: &Provenance) -> BTreeMap<String, Provenance> {
    let mut p = p.clone();
    let mut out = BTreeMap::new();
    for path in SCALAR_PATHS {
        if scalar(&mut p, path).is_some_and(|v| !v.is_empty()) {
            out.insert((*path).to_owned(), origin.clone());
        }
    }
    for (path, filled) in [
        ("phone_numbers", !p.phones.is_empty()),
        ("email_addresses", !p.emails.is_empty()),
        ("addresses", !p.addresses.is_empty()),
        ("tags", !p.tags.is_empty()),
        ("lifecycle_stage", p.lifecycle_stage != LifecycleStage::Unspecified),
    ] {
        if filled {
            out.insert(path.to_owned(), origin.clone());
        }
    }
    for key in p.custom_attributes.keys() {
        out.insert(format!("custom_attributes.{key}"), origin.clone());
    }
    out
}

/// One side of a combination: a profile and where its values came from.
pub struct Side<'a> {
    pub profile: &'a Profile,
    pub provenance: &'a BTreeMap<String, Provenance>,
    /// For fields without a provenance entry.
    pub fallback: &'a Provenance,
}

impl Side<'_> {
    fn origin(&self, path: &str) -> &Provenance {
        self.provenance.get(path).unwrap_or(self.fallback)
    }
}

/// The combined profile, its provenance, and the field paths whose value changed.
pub struct Combined {
    pub profile: Profile,
    pub provenance: BTreeMap<String, Provenance>,
    pub changed: Vec<String>,
}

/// Combines `incoming` into `base` (see the module documentation).
pub fn combine(base: &Side<'_>, incoming: &Side<'_>, priority: &SourcePriority) -> Combined {
    let mut profile = base.profile.clone();
    let mut provenance = base.provenance.clone();
    let mut changed = Vec::new();
    let mut src = incoming.profile.clone();

    let take = |path: &str, provenance: &mut BTreeMap<String, Provenance>, stored_empty: bool| -> bool {
        let wins = stored_empty || priority.prefers(incoming.origin(path), base.origin(path));
        if wins {
            provenance.insert(path.to_owned(), incoming.origin(path).clone());
        }
        wins
    };

    if profile.kind == CustomerKind::Unspecified {
        profile.kind = src.kind;
    }
    for path in SCALAR_PATHS {
        let Some(value) = scalar(&mut src, path).map(std::mem::take) else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        let Some(slot) = scalar(&mut profile, path) else { continue };
        if *slot != value && take(path, &mut provenance, slot.is_empty()) {
            *slot = value;
            changed.push((*path).to_owned());
        }
    }
    if src.lifecycle_stage != LifecycleStage::Unspecified
        && src.lifecycle_stage != profile.lifecycle_stage
        && take(
            "lifecycle_stage",
            &mut provenance,
            profile.lifecycle_stage == LifecycleStage::Unspecified,
        )
    {
        profile.lifecycle_stage = src.lifecycle_stage;
        changed.push("lifecycle_stage".into());
    }
    for (key, value) in &src.custom_attributes {
        let path = format!("custom_attributes.{key}");
        let stored = profile.custom_attributes.get(key);
        if !value.is_empty() && stored != Some(value) && take(&path, &mut provenance, stored.is_none_or(String::is_empty)) {
            profile.custom_attributes.insert(key.clone(), value.clone());
            changed.push(path);
        }
    }

    let mut unite = |path: &str, added: bool| {
        if added {
            provenance.insert(path.to_owned(), incoming.origin(path).clone());
            changed.push(path.to_owned());
        }
    };
    let added = union(
        &mut profile.phones,
        src.phones,
        MAX_CONTACTS,
        |a, b| a.number == b.number,
        |p| &mut p.primary,
    );
    unite("phone_numbers", added);
    let added = union(
        &mut profile.emails,
        src.emails,
        MAX_CONTACTS,
        |a, b| a.address.eq_ignore_ascii_case(&b.address),
        |e| &mut e.primary,
    );
    unite("email_addresses", added);
    let added = union(
        &mut profile.addresses,
        src.addresses,
        MAX_CONTACTS,
        |a, b| a.postal == b.postal,
        |a| &mut a.primary,
    );
    unite("addresses", added);
    let before = profile.tags.len();
    for tag in src.tags {
        if profile.tags.len() < MAX_TAGS && !profile.tags.contains(&tag) {
            profile.tags.push(tag);
        }
    }
    profile.tags.sort();
    unite("tags", profile.tags.len() != before);

    Combined {
        profile,
        provenance,
        changed,
    }
}

/// Appends the items of `incoming` not already in `list` (up to `max`), as
/// non-primary entries; true when any was added.
fn union<T>(
    list: &mut Vec<T>,
    incoming: Vec<T>,
    max: usize,
    same: impl Fn(&T, &T) -> bool,
    primary: impl Fn(&mut T) -> &mut bool,
) -> bool {
    let had_items = !list.is_empty();
    let mut added = false;
    for mut item in incoming {
        if list.len() >= max {
            break;
        }
        if !list.iter().any(|x| same(x, &item)) {
            if had_items {
                *primary(&mut item) = false;
            }
            list.push(item);
            added = true;
        }
    }
    added
}

/// A provenance entry for direct API writes.
pub fn api_origin(channel: Channel, time: DateTime<Utc>) -> Provenance {
    Provenance {
        source: "api".into(),
        channel: if channel == Channel::Unspecified {
            Channel::Api
        } else {
            channel
        },
        time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::customer::Phone;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn origin(channel: Channel, secs: i64) -> Provenance {
        Provenance {
            source: format!("{channel:?}").to_lowercase(),
            channel,
            time: at(secs),
        }
    }

    fn priority() -> SourcePriority {
        SourcePriority(vec![Channel::Api, Channel::Erp, Channel::Ecommerce, Channel::Web])
    }

    fn phone(n: &str, primary: bool) -> Phone {
        Phone {
            number: n.into(),
            kind: Default::default(),
            primary,
            verified: false,
        }
    }

    #[test]
    fn trusted_sources_win_and_recency_breaks_ties() {
        let erp = origin(Channel::Erp, 100);
        let base = Profile {
            display_name: "Li Wei".into(),
            birth_date: "1990-01-01".into(),
            phones: vec![phone("+8613800138000", true)],
            ..Default::default()
        };
        let base_prov = stamp_all(&base, &erp);
        let web = origin(Channel::Web, 200);
        let incoming = Profile {
            display_name: "LI WEI (web)".into(),
            organization_name: "ACME".into(),
            phones: vec![phone("+8613900139000", true), phone("+8613800138000", false)],
            ..Default::default()
        };
        let empty = BTreeMap::new();
        let c = combine(
            &Side {
                profile: &base,
                provenance: &base_prov,
                fallback: &erp,
            },
            &Side {
                profile: &incoming,
                provenance: &empty,
                fallback: &web,
            },
            &priority(),
        );
        assert_eq!(c.profile.display_name, "Li Wei", "less trusted web does not overwrite ERP");
        assert_eq!(c.profile.organization_name, "ACME", "empty fields take any source");
        assert_eq!(c.profile.phones.len(), 2, "contacts are united");
        assert!(c.profile.phones[0].primary && !c.profile.phones[1].primary);
        assert_eq!(c.provenance["organization_name"].channel, Channel::Web);
        assert_eq!(c.provenance["display_name"].channel, Channel::Erp);
        assert_eq!(c.changed, vec!["organization_name", "phone_numbers"]);

        let newer_erp = origin(Channel::Erp, 300);
        let c2 = combine(
            &Side {
                profile: &c.profile,
                provenance: &c.provenance,
                fallback: &erp,
            },
            &Side {
                profile: &Profile {
                    display_name: "Li Wei Jr".into(),
                    ..Default::default()
                },
                provenance: &empty,
                fallback: &newer_erp,
            },
            &priority(),
        );
        assert_eq!(c2.profile.display_name, "Li Wei Jr");
        let older_erp = origin(Channel::Erp, 50);
        let c3 = combine(
            &Side {
                profile: &c2.profile,
                provenance: &c2.provenance,
                fallback: &erp,
            },
            &Side {
                profile: &Profile {
                    display_name: "Old".into(),
                    ..Default::default()
                },
                provenance: &empty,
                fallback: &older_erp,
            },
            &priority(),
        );
        assert_eq!(
            c3.profile.display_name, "Li Wei Jr",
            "an older update of the same source loses"
        );
        assert!(c3.changed.is_empty());
    }
}
