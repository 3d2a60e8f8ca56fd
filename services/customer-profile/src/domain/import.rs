//! Import rows: a column mapping (source column -> customer field) and the mapping
//! of one row to an external id and a partial profile.

use std::collections::BTreeMap;

use crm_platform::{Error, FieldViolation};
use serde::{Deserialize, Serialize};

use super::customer::{Address, ContactKind, Email, LifecycleStage, Phone, PostalAddress, Profile};
use super::normalize;

/// Source column -> target field, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping(pub Vec<(String, String)>);

pub const TARGETS: &[&str] = &[
    "external_id",
    "display_name",
    "organization_name",
    "person_name.given_name",
    "person_name.middle_name",
    "person_name.family_name",
    "phone_numbers",
    "email_addresses",
    "addresses.address_lines",
    "addresses.postal_code",
    "addresses.locality",
    "addresses.sublocality",
    "addresses.administrative_area",
    "addresses.region_code",
    "birth_date",
    "national_id",
    "lifecycle_stage",
    "owner_user_id",
    "team_id",
    "tags",
];

impl Mapping {
    /// Checks the targets; exactly one column must map to `external_id`.
    pub fn validated(pairs: Vec<(String, String)>) -> Result<Self, Error> {
        let mut v = Vec::new();
        if pairs.is_empty() || pairs.len() > 200 {
            v.push(FieldViolation::new("mapping", "1 to 200 column mappings"));
        }
        for (i, (column, field)) in pairs.iter().enumerate() {
            if column.is_empty() || column.len() > 128 {
                v.push(FieldViolation::new(format!("mapping[{i}].column"), "1 to 128 characters"));
            }
            let custom_ok = field
                .strip_prefix("custom_attributes.")
                .is_some_and(|k| normalize::attribute_key(k).is_ok());
            if !TARGETS.contains(&field.as_str()) && !custom_ok {
                v.push(FieldViolation::new(
                    format!("mapping[{i}].field"),
                    format!(
                        "`{field}` is not a target: one of {}, or custom_attributes.{{key}}",
                        TARGETS.join(", ")
                    ),
                ));
            }
        }
        let ids = pairs.iter().filter(|(_, f)| f == "external_id").count();
        if ids != 1 {
            v.push(FieldViolation::new("mapping", "exactly one column must map to `external_id`"));
        }
        if v.is_empty() {
            Ok(Self(pairs))
        } else {
            Err(Error::InvalidArgument(v))
        }
    }
}

/// One import row.
#[derive(Debug, Clone)]
pub struct Row {
    pub key: String,
    pub values: BTreeMap<String, String>,
}

/// The row's external id and partial profile; field errors name target fields.
pub fn map_row(mapping: &Mapping, row: &Row) -> Result<(String, Profile), Vec<FieldViolation>> {
    let mut p = Profile::default();
    let mut external_id = String::new();
    let mut postal = PostalAddress::default();
    let mut errors = Vec::new();
    for (column, field) in &mapping.0 {
        let Some(value) = row.values.get(column).map(|v| v.trim()).filter(|v| !v.is_empty()) else {
            continue;
        };
        let value = value.to_owned();
        match field.as_str() {
            "external_id" => external_id = value,
            "display_name" => p.display_name = value,
            "organization_name" => p.organization_name = value,
            "person_name.given_name" => p.person_name.given = value,
            "person_name.middle_name" => p.person_name.middle = value,
            "person_name.family_name" => p.person_name.family = value,
            "phone_numbers" => p.phones.push(Phone {
                number: value,
                kind: ContactKind::Unspecified,
                primary: false,
                verified: false,
            }),
            "email_addresses" => p.emails.push(Email {
                address: value,
                kind: ContactKind::Unspecified,
                primary: false,
                verified: false,
            }),
            "addresses.address_lines" => postal.address_lines.push(value),
            "addresses.postal_code" => postal.postal_code = value,
            "addresses.locality" => postal.locality = value,
            "addresses.sublocality" => postal.sublocality = value,
            "addresses.administrative_area" => postal.administrative_area = value,
            "addresses.region_code" => postal.region_code = value,
            "birth_date" => p.birth_date = value,
            "national_id" => p.national_id = value,
            "lifecycle_stage" => match value.to_lowercase().as_str() {
                "lead" => p.lifecycle_stage = LifecycleStage::Lead,
                "prospect" => p.lifecycle_stage = LifecycleStage::Prospect,
                "customer" => p.lifecycle_stage = LifecycleStage::Customer,
                "churned" => p.lifecycle_stage = LifecycleStage::Churned,
                _ => errors.push(FieldViolation::new(
                    "lifecycle_stage",
                    format!("`{value}` is not lead, prospect, customer or churned"),
                )),
            },
            "owner_user_id" => p.owner_user_id = value,
            "team_id" => p.team_id = value,
            "tags" => p
                .tags
                .extend(value.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned)),
            other => {
                if let Some(key) = other.strip_prefix("custom_attributes.") {
                    p.custom_attributes.insert(key.to_owned(), value);
                }
            }
        }
    }
    if postal != PostalAddress::default() {
        p.addresses.push(Address {
            kind: ContactKind::Unspecified,
            primary: true,
            postal,
        });
    }
    if external_id.is_empty() {
        errors.push(FieldViolation::new(
            "external_id",
            "required: the column mapped to external_id is empty",
        ));
    } else if let Err(why) = crate::service::ingest::check_external_id(&external_id) {
        errors.push(FieldViolation::new("external_id", why));
    }
    if errors.is_empty() {
        Ok((external_id, p))
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping() -> Mapping {
        Mapping::validated(
            [
                ("id", "external_id"),
                ("given", "person_name.given_name"),
                ("street1", "addresses.address_lines"),
                ("street2", "addresses.address_lines"),
                ("zip", "addresses.postal_code"),
                ("tags", "tags"),
            ]
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect(),
        )
        .unwrap()
    }

    #[test]
    fn maps_columns_in_order() {
        let row = Row {
            key: "1".into(),
            values: BTreeMap::from([
                ("id".to_owned(), "A-1".to_owned()),
                ("given".to_owned(), " Ann ".to_owned()),
                ("street1".to_owned(), "12 Main St".to_owned()),
                ("street2".to_owned(), "Unit 4".to_owned()),
                ("zip".to_owned(), "2600".to_owned()),
                ("tags".to_owned(), "vip, new".to_owned()),
            ]),
        };
        let (id, p) = map_row(&mapping(), &row).unwrap();
        assert_eq!(id, "A-1");
        assert_eq!(p.person_name.given, "Ann");
        assert_eq!(p.addresses[0].postal.address_lines, vec!["12 Main St", "Unit 4"]);
        assert_eq!(p.tags, vec!["vip", "new"]);
        let missing = Row {
            key: "2".into(),
            values: BTreeMap::new(),
        };
        assert_eq!(map_row(&mapping(), &missing).unwrap_err()[0].field, "external_id");
    }

    #[test]
    fn mapping_rules() {
        let bad = |pairs: &[(&str, &str)]| match Mapping::validated(
            pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect(),
        ) {
            Err(Error::InvalidArgument(v)) => v.into_iter().map(|f| f.field).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(bad(&[("a", "person_name.given_name")]), vec!["mapping"]);
        assert_eq!(bad(&[("a", "external_id"), ("b", "nickname")]), vec!["mapping[1].field"]);
    }
}
