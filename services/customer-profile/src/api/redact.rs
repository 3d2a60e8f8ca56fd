//! Field-level security on the way out: every customer a response carries is
//! masked or stripped per the caller's field policy, including the raw input kept
//! beside normalised values. A field the policy does not name is hidden.

use crm_platform::authz::{REDACTED, Visibility, mask_email, mask_phone};
use crm_proto::crm::customer::v1 as pb;

use crate::domain::definitions::{Classification, Definitions};

/// The permissions contract's level for a definition's classification.
pub fn level(c: Classification) -> crm_platform::authz::Classification {
    use crm_platform::authz::Classification as L;
    match c {
        Classification::Public => L::Public,
        Classification::Internal => L::Internal,
        Classification::Sensitive => L::Sensitive,
        Classification::Confidential => L::Confidential,
    }
}

/// Keeps the first character and stars the rest (`张伟` -> `张*`).
fn mask_text(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => format!("{first}{}", "*".repeat(chars.count().min(8))),
        None => String::new(),
    }
}

/// The definition paths a duplicate-detection comparison (`FieldComparison.field`)
/// reveals something about.
pub fn compared_paths(field: &str) -> &'static [&'static str] {
    match field {
        "given_name" => &["person_name.given_name"],
        "family_name" => &["person_name.family_name"],
        "organization_name" => &["organization_name"],
        "phone" => &["phone_numbers"],
        "email" => &["email_addresses"],
        "national_id" => &["national_id"],
        "birth_date" => &["birth_date"],
        "address" | "postal_code" | "locality" => &["addresses"],
        // Unknown comparisons are withheld.
        _ => &["\u{0}"],
    }
}

/// What the response showed of each field, for the read audit.
#[derive(Debug, Default)]
pub struct Shown {
    /// Sensitive or confidential fields returned in clear (with a value).
    pub sensitive: Vec<String>,
}

/// Applies the caller's field visibility for this record (`visibility`, by
/// definition path) to `c`, records the withheld paths in `c.redacted_fields`, and
/// reports which sensitive fields went out in clear.
pub fn apply(c: &mut pb::Customer, visibility: &dyn Fn(&str) -> Visibility, defs: &Definitions) -> Shown {
    let mut shown = Shown::default();
    let mut redacted = Vec::new();
    for def in defs.iter() {
        let path = def.path.as_str();
        let v = visibility(path);
        let filled = apply_field(c, path, v);
        if !filled {
            continue;
        }
        match v {
            Visibility::Visible | Visibility::Unspecified => {
                if def.classification >= Classification::Sensitive {
                    shown.sensitive.push(path.to_owned());
                }
            }
            Visibility::Masked | Visibility::Hidden => redacted.push(path.to_owned()),
        }
    }
    // A custom attribute without a definition cannot be judged: hidden.
    let undefined: Vec<String> = c
        .custom_attributes
        .keys()
        .filter(|k| defs.custom(k).is_none())
        .cloned()
        .collect();
    for k in undefined {
        c.custom_attributes.remove(&k);
        redacted.push(format!("custom_attributes.{k}"));
    }
    // Raw input shows only beside a field shown in clear.
    c.raw_values.retain(|key, _| {
        defs.iter()
            .find(|d| {
                key == &d.path
                    || key
                        .strip_prefix(d.path.as_str())
                        .is_some_and(|r| r.starts_with('[') || r.starts_with('.'))
            })
            .is_some_and(|d| visibility(&d.path) == Visibility::Visible)
    });
    redacted.sort();
    c.redacted_fields = redacted;
    shown
}

/// Masks or clears one field; true when it held a value.
fn apply_field(c: &mut pb::Customer, path: &str, v: Visibility) -> bool {
    let clear = v == Visibility::Hidden;
    let mask = v == Visibility::Masked;
    let text = |s: &mut String| {
        let filled = !s.is_empty();
        if clear {
            s.clear();
        } else if mask {
            *s = mask_text(s);
        }
        filled
    };
    match path {
        "display_name" => text(&mut c.display_name),
        "organization_name" => text(&mut c.organization_name),
        "person_name.given_name" | "person_name.middle_name" | "person_name.family_name" => match &mut c.person_name {
            Some(n) => text(match path {
                "person_name.given_name" => &mut n.given_name,
                "person_name.middle_name" => &mut n.middle_name,
                _ => &mut n.family_name,
            }),
            None => false,
        },
        "phone_numbers" => {
            let filled = !c.phone_numbers.is_empty();
            if clear {
                c.phone_numbers.clear();
            } else if mask {
                for p in &mut c.phone_numbers {
                    p.number = mask_phone(&p.number);
                }
            }
            filled
        }
        "email_addresses" => {
            let filled = !c.email_addresses.is_empty();
            if clear {
                c.email_addresses.clear();
            } else if mask {
                for e in &mut c.email_addresses {
                    e.address = mask_email(&e.address);
                }
            }
            filled
        }
        "addresses" => {
            let filled = !c.addresses.is_empty();
            if clear {
                c.addresses.clear();
            } else if mask {
                // Region, province and city stay; the parts that locate a home go.
                for a in &mut c.addresses {
                    if let Some(p) = &mut a.postal_address {
                        p.postal_code.clear();
                        p.sublocality.clear();
                        p.address_lines.clear();
                        p.recipients.clear();
                    }
                }
            }
            filled
        }
        "birth_date" => {
            let filled = !c.birth_date.is_empty();
            if clear {
                c.birth_date.clear();
            } else if mask {
                c.birth_date = format!("{}-**-**", c.birth_date.get(..4).unwrap_or("****"));
            }
            filled
        }
        "national_id" => {
            let filled = !c.national_id.is_empty();
            if clear {
                c.national_id.clear();
            } else if mask {
                let n = c.national_id.chars().count();
                let head: String = c.national_id.chars().take(3.min(n / 3)).collect();
                let tail: String = c.national_id.chars().skip(n.saturating_sub(2.min(n / 3))).collect();
                c.national_id = format!("{head}****{tail}");
            }
            filled
        }
        "lifecycle_stage" => {
            let filled = c.lifecycle_stage != 0;
            if clear || mask {
                c.lifecycle_stage = 0;
            }
            filled
        }
        "owner_user_id" => text_or_clear(&mut c.owner_user_id, clear || mask),
        "team_id" => text_or_clear(&mut c.team_id, clear || mask),
        "tags" => {
            let filled = !c.tags.is_empty();
            if clear || mask {
                c.tags.clear();
            }
            filled
        }
        other => match other.strip_prefix("custom_attributes.") {
            Some(key) => match c.custom_attributes.get_mut(key) {
                Some(value) => {
                    if mask {
                        *value = REDACTED.to_owned();
                    } else if clear {
                        c.custom_attributes.remove(key);
                    }
                    true
                }
                None => false,
            },
            None => false,
        },
    }
}

fn text_or_clear(s: &mut String, clear: bool) -> bool {
    let filled = !s.is_empty();
    if clear {
        s.clear();
    }
    filled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pairs: &[(&'static str, Visibility)]) -> impl Fn(&str) -> Visibility {
        let pairs = pairs.to_vec();
        move |path: &str| pairs.iter().find(|(p, _)| *p == path).map_or(Visibility::Hidden, |(_, v)| *v)
    }

    #[test]
    fn masks_and_hides_by_policy() {
        let defs = Definitions::default();
        let mut c = pb::Customer {
            display_name: "Zhang Wei".into(),
            phone_numbers: vec![pb::PhoneNumber {
                number: "+8613800135678".into(),
                ..Default::default()
            }],
            email_addresses: vec![pb::EmailAddress {
                address: "zhang@example.com".into(),
                ..Default::default()
            }],
            national_id: "110101199003074514".into(),
            raw_values: [("phone_numbers[0].number".to_owned(), "138 0013 5678".to_owned())].into(),
            custom_attributes: [("undefined".to_owned(), "x".to_owned())].into(),
            ..Default::default()
        };
        let p = policy(&[
            ("display_name", Visibility::Visible),
            ("phone_numbers", Visibility::Masked),
            ("email_addresses", Visibility::Masked),
            ("national_id", Visibility::Hidden),
        ]);
        let shown = apply(&mut c, &p, &defs);
        assert_eq!(c.display_name, "Zhang Wei");
        assert_eq!(c.phone_numbers[0].number, "+86138****5678");
        assert_eq!(c.email_addresses[0].address, "z***@example.com");
        assert!(c.national_id.is_empty());
        assert!(c.raw_values.is_empty(), "raw input of a masked field leaks the value");
        assert!(c.custom_attributes.is_empty());
        assert_eq!(
            c.redacted_fields,
            vec![
                "custom_attributes.undefined",
                "email_addresses",
                "national_id",
                "phone_numbers"
            ]
        );
        assert!(shown.sensitive.is_empty());
    }

    #[test]
    fn sensitive_fields_in_clear_are_reported() {
        let defs = Definitions::default();
        let mut c = pb::Customer {
            phone_numbers: vec![pb::PhoneNumber {
                number: "+8613800135678".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let shown = apply(&mut c, &policy(&[("phone_numbers", Visibility::Visible)]), &defs);
        assert_eq!(shown.sensitive, vec!["phone_numbers"]);
        assert_eq!(c.phone_numbers[0].number, "+8613800135678");
    }
}
