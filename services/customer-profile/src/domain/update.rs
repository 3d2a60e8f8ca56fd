//! Field-mask updates (AIP-134): which paths a caller may name, how a patch merges
//! into the stored profile, and which fields a change actually changed.

use crm_platform::{Error, FieldViolation};

use super::customer::Profile;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    Kind,
    DisplayName,
    PersonName,
    PersonNamePart(NamePart),
    OrganizationName,
    PhoneNumbers,
    EmailAddresses,
    Addresses,
    LifecycleStage,
    OwnerUserId,
    TeamId,
    Tags,
    CustomAttributes,
    CustomAttribute(String),
    BirthDate,
    NationalId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamePart {
    Given,
    Middle,
    Family,
    Prefix,
    Suffix,
}

const ALL: [Path; 14] = [
    Path::Kind,
    Path::DisplayName,
    Path::PersonName,
    Path::OrganizationName,
    Path::PhoneNumbers,
    Path::EmailAddresses,
    Path::Addresses,
    Path::LifecycleStage,
    Path::OwnerUserId,
    Path::TeamId,
    Path::Tags,
    Path::CustomAttributes,
    Path::BirthDate,
    Path::NationalId,
];

impl Path {
    fn parse(path: &str) -> Option<Self> {
        Some(match path {
            "type" => Self::Kind,
            "display_name" => Self::DisplayName,
            "person_name" => Self::PersonName,
            "person_name.given_name" => Self::PersonNamePart(NamePart::Given),
            "person_name.middle_name" => Self::PersonNamePart(NamePart::Middle),
            "person_name.family_name" => Self::PersonNamePart(NamePart::Family),
            "person_name.prefix" => Self::PersonNamePart(NamePart::Prefix),
            "person_name.suffix" => Self::PersonNamePart(NamePart::Suffix),
            "organization_name" => Self::OrganizationName,
            "phone_numbers" => Self::PhoneNumbers,
            "email_addresses" => Self::EmailAddresses,
            "addresses" => Self::Addresses,
            "lifecycle_stage" => Self::LifecycleStage,
            "owner_user_id" => Self::OwnerUserId,
            "team_id" => Self::TeamId,
            "tags" => Self::Tags,
            "custom_attributes" => Self::CustomAttributes,
            "birth_date" => Self::BirthDate,
            "national_id" => Self::NationalId,
            other => Self::CustomAttribute(other.strip_prefix("custom_attributes.")?.to_owned()),
        })
    }
}

/// Parses an update mask. `*` means every updatable field; output-only and immutable
/// fields (`name`, `source_channel`, times, `etag`) are refused.
pub fn parse_mask(paths: &[String]) -> Result<Vec<Path>, Error> {
    let mut parsed = Vec::new();
    let mut violations = Vec::new();
    for (i, raw) in paths.iter().enumerate() {
        match raw.trim() {
            "*" => parsed.extend(ALL.iter().cloned()),
            p @ ("name" | "source_channel" | "create_time" | "update_time" | "delete_time" | "etag") => violations.push(
                FieldViolation::new(format!("update_mask.paths[{i}]"), format!("`{p}` cannot be updated")),
            ),
            p => match Path::parse(p) {
                Some(path) => parsed.push(path),
                None => violations.push(FieldViolation::new(
                    format!("update_mask.paths[{i}]"),
                    format!("unknown field `{p}`"),
                )),
            },
        }
    }
    if violations.is_empty() {
        Ok(parsed)
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

/// The paths of the fields set (non-default) in `patch`: the meaning of an empty mask.
pub fn populated_paths(patch: &Profile) -> Vec<Path> {
    let d = Profile::default();
    let mut paths = Vec::new();
    let mut push = |set: bool, p: Path| {
        if set {
            paths.push(p);
        }
    };
    push(patch.kind != d.kind, Path::Kind);
    push(!patch.display_name.is_empty(), Path::DisplayName);
    push(!patch.person_name.is_empty(), Path::PersonName);
    push(!patch.organization_name.is_empty(), Path::OrganizationName);
    push(!patch.phones.is_empty(), Path::PhoneNumbers);
    push(!patch.emails.is_empty(), Path::EmailAddresses);
    push(!patch.addresses.is_empty(), Path::Addresses);
    push(patch.lifecycle_stage != d.lifecycle_stage, Path::LifecycleStage);
    push(!patch.owner_user_id.is_empty(), Path::OwnerUserId);
    push(!patch.team_id.is_empty(), Path::TeamId);
    push(!patch.tags.is_empty(), Path::Tags);
    push(!patch.custom_attributes.is_empty(), Path::CustomAttributes);
    push(!patch.birth_date.is_empty(), Path::BirthDate);
    push(!patch.national_id.is_empty(), Path::NationalId);
    paths
}

/// `current` with the masked fields taken from `patch`. The result still has to be
/// validated.
pub fn apply(current: &Profile, patch: &Profile, paths: &[Path]) -> Profile {
    let mut next = current.clone();
    for path in paths {
        match path {
            Path::Kind => next.kind = patch.kind,
            Path::DisplayName => next.display_name.clone_from(&patch.display_name),
            Path::PersonName => next.person_name = patch.person_name.clone(),
            Path::PersonNamePart(part) => {
                let (to, from) = (&mut next.person_name, &patch.person_name);
                match part {
                    NamePart::Given => to.given.clone_from(&from.given),
                    NamePart::Middle => to.middle.clone_from(&from.middle),
                    NamePart::Family => to.family.clone_from(&from.family),
                    NamePart::Prefix => to.prefix.clone_from(&from.prefix),
                    NamePart::Suffix => to.suffix.clone_from(&from.suffix),
                }
            }
            Path::OrganizationName => next.organization_name.clone_from(&patch.organization_name),
            Path::PhoneNumbers => next.phones = patch.phones.clone(),
            Path::EmailAddresses => next.emails = patch.emails.clone(),
            Path::Addresses => next.addresses = patch.addresses.clone(),
            Path::LifecycleStage => next.lifecycle_stage = patch.lifecycle_stage,
            Path::OwnerUserId => next.owner_user_id.clone_from(&patch.owner_user_id),
            Path::TeamId => next.team_id.clone_from(&patch.team_id),
            Path::Tags => next.tags = patch.tags.clone(),
            Path::CustomAttributes => next.custom_attributes = patch.custom_attributes.clone(),
            Path::BirthDate => next.birth_date.clone_from(&patch.birth_date),
            Path::NationalId => next.national_id.clone_from(&patch.national_id),
            Path::CustomAttribute(key) => match patch.custom_attributes.get(key) {
                Some(value) => {
                    next.custom_attributes.insert(key.clone(), value.clone());
                }
                None => {
                    next.custom_attributes.remove(key);
                }
            },
        }
    }
    next
}

/// The top-level fields whose value differs, as proto field paths.
pub fn changed_paths(old: &Profile, new: &Profile) -> Vec<String> {
    let checks: [(&str, bool); 14] = [
        ("type", old.kind != new.kind),
        ("display_name", old.display_name != new.display_name),
        ("person_name", old.person_name != new.person_name),
        ("organization_name", old.organization_name != new.organization_name),
        ("phone_numbers", old.phones != new.phones),
        ("email_addresses", old.emails != new.emails),
        ("addresses", old.addresses != new.addresses),
        ("lifecycle_stage", old.lifecycle_stage != new.lifecycle_stage),
        ("owner_user_id", old.owner_user_id != new.owner_user_id),
        ("team_id", old.team_id != new.team_id),
        ("tags", old.tags != new.tags),
        ("custom_attributes", old.custom_attributes != new.custom_attributes),
        ("birth_date", old.birth_date != new.birth_date),
        ("national_id", old.national_id != new.national_id),
    ];
    checks
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(p, _)| (*p).to_owned())
        .collect()
}

/// The field-definition paths an update of `path` writes, for field-level write
/// checks; `custom_attributes` as a whole stands for every custom attribute.
pub fn definition_paths(path: &Path) -> Vec<String> {
    let one = |p: &str| vec![p.to_owned()];
    match path {
        Path::Kind => Vec::new(),
        Path::DisplayName => one("display_name"),
        Path::PersonName => vec![
            "person_name.given_name".into(),
            "person_name.middle_name".into(),
            "person_name.family_name".into(),
        ],
        Path::PersonNamePart(NamePart::Given) => one("person_name.given_name"),
        Path::PersonNamePart(NamePart::Middle) => one("person_name.middle_name"),
        Path::PersonNamePart(NamePart::Family) => one("person_name.family_name"),
        Path::PersonNamePart(NamePart::Prefix | NamePart::Suffix) => Vec::new(),
        Path::OrganizationName => one("organization_name"),
        Path::PhoneNumbers => one("phone_numbers"),
        Path::EmailAddresses => one("email_addresses"),
        Path::Addresses => one("addresses"),
        Path::LifecycleStage => one("lifecycle_stage"),
        Path::OwnerUserId => one("owner_user_id"),
        Path::TeamId => one("team_id"),
        Path::Tags => one("tags"),
        Path::CustomAttributes => one("custom_attributes"),
        Path::CustomAttribute(key) => vec![format!("custom_attributes.{key}")],
        Path::BirthDate => one("birth_date"),
        Path::NationalId => one("national_id"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::customer::{LifecycleStage, PersonName};

    fn stored() -> Profile {
        Profile {
            display_name: "Ada".into(),
            person_name: PersonName {
                given: "Ada".into(),
                family: "Lovelace".into(),
                ..Default::default()
            },
            tags: vec!["vip".into()],
            custom_attributes: BTreeMap::from([("tier".into(), "gold".into()), ("region".into(), "eu".into())]),
            lifecycle_stage: LifecycleStage::Prospect,
            ..Default::default()
        }
    }

    #[test]
    fn mask_parsing() {
        let paths = parse_mask(&[
            "display_name".into(),
            "person_name.given_name".into(),
            "custom_attributes.tier".into(),
        ])
        .unwrap();
        assert_eq!(paths[2], Path::CustomAttribute("tier".into()));
        let err = parse_mask(&["nope".into(), "create_time".into()]).unwrap_err();
        match err {
            Error::InvalidArgument(v) => {
                assert_eq!(v.len(), 2);
                assert_eq!(v[0].field, "update_mask.paths[0]");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_mask(&["*".into()]).unwrap().contains(&Path::Tags));
    }

    #[test]
    fn apply_only_masked_fields() {
        let patch = Profile {
            display_name: "Countess".into(),
            person_name: PersonName {
                given: "Augusta".into(),
                ..Default::default()
            },
            tags: vec![],
            custom_attributes: BTreeMap::from([("tier".into(), "platinum".into())]),
            ..Default::default()
        };
        let paths = parse_mask(&[
            "person_name.given_name".into(),
            "custom_attributes.tier".into(),
            "custom_attributes.region".into(),
        ])
        .unwrap();
        let next = apply(&stored(), &patch, &paths);
        assert_eq!(next.display_name, "Ada", "not in the mask");
        assert_eq!(next.person_name.given, "Augusta");
        assert_eq!(next.person_name.family, "Lovelace");
        assert_eq!(next.custom_attributes.get("tier").map(String::as_str), Some("platinum"));
        assert!(
            !next.custom_attributes.contains_key("region"),
            "masked key absent from patch is removed"
        );
        assert_eq!(next.tags, vec!["vip"]);
        assert_eq!(changed_paths(&stored(), &next), vec!["person_name", "custom_attributes"]);
    }

    #[test]
    fn empty_mask_means_populated_fields() {
        let patch = Profile {
            team_id: "emea".into(),
            lifecycle_stage: LifecycleStage::Customer,
            ..Default::default()
        };
        assert_eq!(populated_paths(&patch), vec![Path::LifecycleStage, Path::TeamId]);
    }
}
