//! The field standard: one definition per customer field (built-in or custom
//! attribute) with its type, applicability, requirement, allowed values,
//! classification and completeness weight. Built-in definitions always exist and
//! stored rows override them; custom attributes exist only once defined.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use crm_platform::{Error, FieldViolation};
use serde::{Deserialize, Serialize};

use super::{
    customer::{CustomerKind, Profile},
    normalize,
};

pub const CUSTOM_PREFIX: &str = "custom_attributes.";
pub const RESOURCE_TYPE: &str = "crm.customer.v1.FieldDefinition";
const MAX_ALLOWED_VALUES: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    String,
    Number,
    Boolean,
    Date,
    Enum,
    Phone,
    Email,
    Address,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    Public,
    #[default]
    Internal,
    Sensitive,
    Confidential,
}

impl Classification {
    /// Encrypted at rest?
    pub fn is_protected(self) -> bool {
        self >= Self::Sensitive
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldDefinition {
    /// `birth_date`, `person_name.family_name`, `custom_attributes.loyalty_tier`.
    pub path: String,
    pub display_name: String,
    pub description: String,
    pub field_type: FieldType,
    pub built_in: bool,
    /// Empty: both kinds.
    pub applies_to: Vec<CustomerKind>,
    pub required_for: Vec<CustomerKind>,
    pub allowed_values: Vec<String>,
    pub classification: Classification,
    pub completeness_weight: f64,
    /// Customers may change it themselves (self-service).
    #[serde(default)]
    pub self_editable: bool,
    /// 0 for a built-in never changed.
    pub revision: i64,
    pub update_time: Option<DateTime<Utc>>,
}

impl FieldDefinition {
    pub fn name(&self) -> String {
        format!("fieldDefinitions/{}", self.path)
    }

    pub fn etag(&self) -> String {
        format!("\"{}\"", self.revision)
    }

    pub fn applies(&self, kind: CustomerKind) -> bool {
        self.applies_to.is_empty() || self.applies_to.contains(&kind)
    }

    /// The custom-attribute key of a custom definition.
    pub fn custom_key(&self) -> Option<&str> {
        self.path.strip_prefix(CUSTOM_PREFIX)
    }

    /// Checks a definition as a caller would save it; `existing` is the stored one, if any.
    pub fn validated(mut self, existing: Option<&FieldDefinition>) -> Result<Self, Error> {
        let mut v = Vec::new();
        let mut fail = |field: &str, why: String| v.push(FieldViolation::new(field, why));
        self.display_name = normalize::text(&self.display_name);
        self.description = self.description.trim().to_owned();
        if self.display_name.chars().count() > 100 {
            fail("display_name", "at most 100 characters".into());
        }
        if self.description.chars().count() > 1000 {
            fail("description", "at most 1000 characters".into());
        }
        match existing {
            Some(old) if old.field_type != self.field_type => {
                fail("type", format!("immutable: the field is {:?}", old.field_type).to_lowercase());
            }
            None => match self.custom_key() {
                None => fail(
                    "name",
                    "only custom attributes (`fieldDefinitions/custom_attributes.{key}`) can be created".into(),
                ),
                Some(key) => {
                    if let Err(why) = normalize::attribute_key(key) {
                        fail("name", why);
                    }
                    if self.field_type == FieldType::Address {
                        fail("type", "ADDRESS is for the built-in `addresses` only".into());
                    }
                }
            },
            Some(_) => {}
        }
        if !(0.0..=100.0).contains(&self.completeness_weight) {
            fail("completeness_weight", "between 0 and 100".into());
        }
        if self.field_type == FieldType::Enum {
            let mut values = Vec::new();
            for (i, raw) in self.allowed_values.iter().enumerate() {
                let value = normalize::text(raw);
                if value.is_empty() || value.chars().count() > 64 {
                    fail(&format!("allowed_values[{i}]"), "1 to 64 characters".into());
                } else if values.contains(&value) {
                    fail(&format!("allowed_values[{i}]"), format!("`{value}` is listed twice"));
                } else {
                    values.push(value);
                }
            }
            if values.is_empty() || values.len() > MAX_ALLOWED_VALUES {
                fail(
                    "allowed_values",
                    format!("an ENUM field needs 1 to {MAX_ALLOWED_VALUES} values"),
                );
            }
            self.allowed_values = values;
        } else if !(self.allowed_values.is_empty() || self.built_in && self.allowed_values == existing_values(existing)) {
            fail("allowed_values", "only ENUM custom attributes have allowed values".into());
        }
        for kind in [&self.applies_to, &self.required_for].into_iter().flatten() {
            if *kind == CustomerKind::Unspecified {
                fail("applies_to", "customer types must be PERSON or ORGANIZATION".into());
            }
        }
        if self.required_for.iter().any(|k| !self.applies(*k)) {
            fail(
                "required_for",
                "a field can only be required for the customer types it applies to".into(),
            );
        }
        self.applies_to.sort_by_key(|k| *k as u8);
        self.applies_to.dedup();
        self.required_for.sort_by_key(|k| *k as u8);
        self.required_for.dedup();
        if v.is_empty() {
            Ok(self)
        } else {
            Err(Error::InvalidArgument(v))
        }
    }

    /// Validates and normalises a custom attribute's value by this definition's type.
    pub fn normalize_value(&self, raw: &str, region: &str) -> Result<String, String> {
        let value = raw.trim();
        match self.field_type {
            FieldType::String | FieldType::Address => Ok(normalize::text(value)),
            FieldType::Number => normalize::number(value),
            FieldType::Boolean => normalize::boolean(value),
            FieldType::Date => normalize::date(value),
            FieldType::Phone => normalize::phone(value, region),
            FieldType::Email => normalize::email(value),
            FieldType::Enum => {
                let value = normalize::text(value);
                self.allowed_values
                    .iter()
                    .find(|a| a.eq_ignore_ascii_case(&value))
                    .cloned()
                    .ok_or_else(|| format!("not one of: {}", self.allowed_values.join(", ")))
            }
        }
    }
}

fn existing_values(existing: Option<&FieldDefinition>) -> Vec<String> {
    existing.map(|e| e.allowed_values.clone()).unwrap_or_default()
}

/// A built-in field: path, label, type, applies to, classification, weight.
type BuiltIn = (
    &'static str,
    &'static str,
    FieldType,
    Option<CustomerKind>,
    Classification,
    f64,
);

const BUILT_IN: &[BuiltIn] = {
    use Classification::*;
    use CustomerKind::*;
    use FieldType::*;
    &[
        ("display_name", "Display name", String, None, Internal, 1.0),
        ("person_name.given_name", "Given name", String, Some(Person), Internal, 1.0),
        ("person_name.middle_name", "Middle name", String, Some(Person), Internal, 0.0),
        ("person_name.family_name", "Family name", String, Some(Person), Internal, 1.0),
        (
            "organization_name",
            "Organisation name",
            String,
            Some(Organization),
            Internal,
            1.0,
        ),
        ("phone_numbers", "Phone numbers", Phone, None, Sensitive, 2.0),
        ("email_addresses", "E-mail addresses", Email, None, Sensitive, 2.0),
        ("addresses", "Postal addresses", Address, None, Sensitive, 1.0),
        ("birth_date", "Date of birth", Date, Some(Person), Sensitive, 1.0),
        ("national_id", "National identity number", String, None, Confidential, 0.0),
        ("lifecycle_stage", "Lifecycle stage", Enum, None, Internal, 0.0),
        ("owner_user_id", "Owner", String, None, Internal, 0.0),
        ("team_id", "Team", String, None, Internal, 0.0),
        ("tags", "Tags", String, None, Internal, 0.0),
    ]
};

/// Built-in fields customers maintain themselves: their contacts and addresses.
const SELF_EDITABLE: &[&str] = &["phone_numbers", "email_addresses", "addresses"];

/// Identity fields a customer always sees of its own record, whatever their class.
const IDENTITY: &[&str] = &[
    "display_name",
    "person_name.given_name",
    "person_name.middle_name",
    "person_name.family_name",
    "organization_name",
];

impl FieldDefinition {
    /// Whether a customer sees this field of its own record: its identity, what it
    /// may edit, and everything but the company's internal classifications (owner,
    /// team, tags, lifecycle stage, internal custom attributes).
    pub fn visible_to_customer(&self) -> bool {
        self.self_editable || IDENTITY.contains(&self.path.as_str()) || self.classification != Classification::Internal
    }
}

/// The definitions in force.
#[derive(Debug, Clone)]
pub struct Definitions {
    fields: BTreeMap<String, FieldDefinition>,
}

impl Default for Definitions {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl Definitions {
    /// The built-ins, overridden and extended by `stored`.
    pub fn new(stored: Vec<FieldDefinition>) -> Self {
        let mut fields: BTreeMap<String, FieldDefinition> = BUILT_IN
            .iter()
            .map(|(path, label, field_type, kind, classification, weight)| {
                let def = FieldDefinition {
                    path: (*path).to_owned(),
                    display_name: (*label).to_owned(),
                    description: String::new(),
                    field_type: *field_type,
                    built_in: true,
                    applies_to: kind.iter().copied().collect(),
                    required_for: Vec::new(),
                    allowed_values: Vec::new(),
                    classification: *classification,
                    completeness_weight: *weight,
                    self_editable: SELF_EDITABLE.contains(path),
                    revision: 0,
                    update_time: None,
                };
                (def.path.clone(), def)
            })
            .collect();
        for def in stored {
            fields.insert(def.path.clone(), def);
        }
        Self { fields }
    }

    pub fn get(&self, path: &str) -> Option<&FieldDefinition> {
        self.fields.get(path)
    }

    pub fn custom(&self, key: &str) -> Option<&FieldDefinition> {
        self.fields.get(&format!("{CUSTOM_PREFIX}{key}"))
    }

    /// In path order.
    pub fn iter(&self) -> impl Iterator<Item = &FieldDefinition> {
        self.fields.values()
    }

    /// Is a custom attribute encrypted at rest?
    pub fn is_protected_custom(&self, key: &str) -> bool {
        self.custom(key).is_some_and(|d| d.classification.is_protected())
    }

    /// Does `profile` have a value for `def`?
    pub fn is_filled(def: &FieldDefinition, p: &Profile) -> bool {
        if let Some(key) = def.custom_key() {
            return p.custom_attributes.get(key).is_some_and(|v| !v.is_empty());
        }
        match def.path.as_str() {
            "display_name" => !p.display_name.is_empty(),
            "person_name.given_name" => !p.person_name.given.is_empty(),
            "person_name.middle_name" => !p.person_name.middle.is_empty(),
            "person_name.family_name" => !p.person_name.family.is_empty(),
            "organization_name" => !p.organization_name.is_empty(),
            "phone_numbers" => !p.phones.is_empty(),
            "email_addresses" => !p.emails.is_empty(),
            "addresses" => !p.addresses.is_empty(),
            "birth_date" => !p.birth_date.is_empty(),
            "national_id" => !p.national_id.is_empty(),
            "lifecycle_stage" => true,
            "owner_user_id" => !p.owner_user_id.is_empty(),
            "team_id" => !p.team_id.is_empty(),
            "tags" => !p.tags.is_empty(),
            _ => false,
        }
    }

    /// Weighted share of the applicable, weighted fields that are filled (1 when no
    /// field carries weight).
    pub fn completeness(&self, p: &Profile) -> f64 {
        let (mut filled, mut total) = (0.0, 0.0);
        for def in self
            .fields
            .values()
            .filter(|d| d.completeness_weight > 0.0 && d.applies(p.kind))
        {
            total += def.completeness_weight;
            if Self::is_filled(def, p) {
                filled += def.completeness_weight;
            }
        }
        if total == 0.0 { 1.0 } else { filled / total }
    }

    /// Violations for required fields `p` lacks.
    pub fn missing_required(&self, p: &Profile) -> Vec<FieldViolation> {
        let kind = match p.kind {
            CustomerKind::Organization => "an organisation",
            _ => "a person",
        };
        self.fields
            .values()
            .filter(|d| d.required_for.contains(&p.kind) && !Self::is_filled(d, p))
            .map(|d| FieldViolation::new(d.path.clone(), format!("required for {kind}")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custom(key: &str, field_type: FieldType) -> FieldDefinition {
        FieldDefinition {
            path: format!("{CUSTOM_PREFIX}{key}"),
            display_name: key.into(),
            description: String::new(),
            field_type,
            built_in: false,
            applies_to: vec![],
            required_for: vec![],
            allowed_values: vec![],
            classification: Classification::Internal,
            completeness_weight: 0.0,
            self_editable: false,
            revision: 1,
            update_time: None,
        }
    }

    #[test]
    fn completeness_weights_applicable_fields() {
        let defs = Definitions::default();
        let mut p = Profile {
            kind: CustomerKind::Person,
            display_name: "Li Wei".into(),
            ..Default::default()
        };
        // display 1 of given 1 + family 1 + display 1 + phone 2 + email 2 + address 1 + birth 1 = 9
        assert!((defs.completeness(&p) - 1.0 / 9.0).abs() < 1e-9);
        p.birth_date = "1990-01-01".into();
        assert!((defs.completeness(&p) - 2.0 / 9.0).abs() < 1e-9);
        let org = Profile {
            kind: CustomerKind::Organization,
            display_name: "ACME".into(),
            organization_name: "ACME".into(),
            ..Default::default()
        };
        // display 1 + org 1 of display + org + phone 2 + email 2 + address 1 = 7
        assert!((defs.completeness(&org) - 2.0 / 7.0).abs() < 1e-9);
    }

    #[test]
    fn required_fields_are_reported() {
        let mut birth = Definitions::default().get("birth_date").cloned().unwrap();
        birth.required_for = vec![CustomerKind::Person];
        let defs = Definitions::new(vec![birth]);
        let p = Profile {
            kind: CustomerKind::Person,
            ..Default::default()
        };
        let missing = defs.missing_required(&p);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].field, "birth_date");
        let org = Profile {
            kind: CustomerKind::Organization,
            ..Default::default()
        };
        assert!(defs.missing_required(&org).is_empty());
    }

    #[test]
    fn definition_rules() {
        let ok = FieldDefinition {
            allowed_values: vec!["Gold".into(), " Silver ".into()],
            ..custom("tier", FieldType::Enum)
        }
        .validated(None)
        .unwrap();
        assert_eq!(ok.allowed_values, vec!["Gold", "Silver"]);
        assert_eq!(ok.normalize_value("gold", "CN").as_deref(), Ok("Gold"));
        assert!(ok.normalize_value("bronze", "CN").is_err());

        let fields = |d: FieldDefinition, existing: Option<&FieldDefinition>| match d.validated(existing) {
            Err(Error::InvalidArgument(v)) => v.into_iter().map(|f| f.field).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(fields(custom("tier", FieldType::Enum), None), vec!["allowed_values"]);
        assert_eq!(fields(custom("Bad-Key", FieldType::String), None), vec!["name"]);
        let builtin = Definitions::default().get("birth_date").cloned().unwrap();
        assert_eq!(
            fields(
                FieldDefinition {
                    field_type: FieldType::String,
                    ..builtin.clone()
                },
                Some(&builtin)
            ),
            vec!["type"]
        );
        assert_eq!(
            fields(
                FieldDefinition {
                    revision: 0,
                    ..builtin.clone()
                },
                None
            ),
            vec!["name"]
        );
        let org_only = FieldDefinition {
            applies_to: vec![CustomerKind::Organization],
            required_for: vec![CustomerKind::Person],
            completeness_weight: 101.0,
            ..custom("vat", FieldType::String)
        };
        assert_eq!(fields(org_only, None), vec!["completeness_weight", "required_for"]);
    }

    #[test]
    fn typed_values() {
        assert_eq!(
            custom("n", FieldType::Number).normalize_value("1,000.50", "CN").as_deref(),
            Ok("1000.5")
        );
        assert_eq!(
            custom("d", FieldType::Date).normalize_value("20240229", "CN").as_deref(),
            Ok("2024-02-29")
        );
        assert_eq!(
            custom("p", FieldType::Phone).normalize_value("13800138000", "CN").as_deref(),
            Ok("+8613800138000")
        );
        assert!(custom("b", FieldType::Boolean).normalize_value("perhaps", "CN").is_err());
    }
}
