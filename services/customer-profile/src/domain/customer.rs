//! The customer: its identity, its profile fields, and the rules a profile must meet
//! before it is stored. `Profile::validated` is the only way in: it normalises every
//! value and reports every violation at once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use crm_platform::{Error, FieldViolation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::normalize;

pub const COLLECTION: &str = "customers";
pub const RESOURCE_TYPE: &str = "crm.customer.v1.Customer";

const MAX_NAME: usize = 200;
const MAX_NAME_PART: usize = 100;
const MAX_ID: usize = 128;
const MAX_CONTACTS: usize = 10;
const MAX_TAGS: usize = 50;
const MAX_ATTRIBUTES: usize = 50;
const MAX_ATTRIBUTE_VALUE: usize = 1024;
const MAX_ADDRESS_LINES: usize = 5;
const MAX_ADDRESS_FIELD: usize = 200;
const MAX_RECIPIENTS: usize = 5;

/// A customer id, parsed from a resource name `customers/{uuid}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CustomerId(Uuid);

impl CustomerId {
    pub fn new() -> Self {
        // v7: time-ordered, so new rows append to the primary-key index.
        Self(Uuid::now_v7())
    }

    /// Parses `customers/{uuid}`; the violation is reported on `field`.
    pub fn parse_name(name: &str, field: &str) -> Result<Self, Error> {
        let id = name
            .strip_prefix("customers/")
            .ok_or_else(|| Error::invalid(field, "must be a resource name `customers/{customer}`"))?;
        Uuid::parse_str(id)
            .map(Self)
            .map_err(|_| Error::invalid(field, format!("`{id}` is not a customer id")))
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn uuid(self) -> Uuid {
        self.0
    }

    pub fn name(self) -> String {
        format!("customers/{}", self.0)
    }
}

impl Default for CustomerId {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CustomerKind {
    /// Not given: inferred by [`Profile::validated`].
    #[default]
    Unspecified,
    Person,
    Organization,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleStage {
    #[default]
    Unspecified,
    Lead,
    Prospect,
    Customer,
    Churned,
}

impl LifecycleStage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Lead => "lead",
            Self::Prospect => "prospect",
            Self::Customer => "customer",
            Self::Churned => "churned",
        }
    }
}

/// The channel a customer came in through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    #[default]
    Unspecified,
    Web,
    App,
    Store,
    ServiceDesk,
    Erp,
    Ecommerce,
    Phone,
    Email,
    Wechat,
    Import,
    Api,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ContactKind {
    #[default]
    Unspecified,
    Mobile,
    Home,
    Work,
    Personal,
    Billing,
    Shipping,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PersonName {
    pub given: String,
    pub middle: String,
    pub family: String,
    pub prefix: String,
    pub suffix: String,
}

impl PersonName {
    pub fn is_empty(&self) -> bool {
        self.given.is_empty()
            && self.middle.is_empty()
            && self.family.is_empty()
            && self.prefix.is_empty()
            && self.suffix.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phone {
    /// E.164 once validated.
    pub number: String,
    pub kind: ContactKind,
    pub primary: bool,
    pub verified: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    pub address: String,
    pub kind: ContactKind,
    pub primary: bool,
    pub verified: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PostalAddress {
    pub region_code: String,
    pub postal_code: String,
    pub administrative_area: String,
    pub locality: String,
    pub sublocality: String,
    pub address_lines: Vec<String>,
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub kind: ContactKind,
    pub primary: bool,
    pub postal: PostalAddress,
}

/// The fields of a customer a caller can set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Profile {
    pub kind: CustomerKind,
    pub display_name: String,
    pub person_name: PersonName,
    pub organization_name: String,
    pub phones: Vec<Phone>,
    pub emails: Vec<Email>,
    pub addresses: Vec<Address>,
    pub lifecycle_stage: LifecycleStage,
    pub owner_user_id: String,
    pub team_id: String,
    /// Sorted, unique.
    pub tags: Vec<String>,
    pub custom_attributes: BTreeMap<String, String>,
}

/// A stored customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub id: CustomerId,
    pub profile: Profile,
    pub source_channel: Channel,
    /// Incremented by every change; the etag is derived from it.
    pub revision: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub delete_time: Option<DateTime<Utc>>,
}

impl Customer {
    pub fn name(&self) -> String {
        self.id.name()
    }

    /// The etag of this revision (opaque to callers).
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.revision)
    }

    /// Is `etag` (as sent by a caller) this revision's? An empty etag matches anything.
    pub fn etag_matches(&self, etag: &str) -> bool {
        etag.is_empty() || etag == self.etag()
    }
}

/// Settings the rules depend on.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Region for phone numbers written without a country code (ISO 3166 alpha-2).
    pub default_region: String,
}

/// Collects violations while normalising a profile.
struct Check(Vec<FieldViolation>);

impl Check {
    fn fail(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    fn text(&mut self, field: &str, raw: &str, max: usize) -> String {
        let value = normalize::text(raw);
        if value.chars().count() > max {
            self.fail(field, format!("at most {max} characters"));
        } else if value.chars().any(char::is_control) {
            self.fail(field, "must not contain control characters");
        }
        value
    }

    /// Fails `field` when `len` exceeds `max`.
    fn at_most(&mut self, field: &str, len: usize, max: usize) {
        if len > max {
            self.fail(field, format!("at most {max} entries, got {len}"));
        }
    }

    fn identifier(&mut self, field: &str, raw: &str) -> String {
        let value = raw.trim().to_owned();
        if value.len() > MAX_ID || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
            self.fail(field, format!("at most {MAX_ID} characters, no white space"));
        }
        value
    }

    /// Normalises `value` of every item; an item whose `key` (of the normalised value)
    /// repeats an earlier one is a violation.
    fn unique<T>(
        &mut self,
        field: &str,
        leaf: &str,
        items: &mut [T],
        value: impl Fn(&mut T) -> &mut String,
        normalize: impl Fn(&str) -> Result<String, String>,
        key: impl Fn(&str) -> String,
    ) {
        let mut seen = Vec::new();
        for (i, item) in items.iter_mut().enumerate() {
            let slot = value(item);
            match normalize(slot) {
                Ok(v) if seen.contains(&key(&v)) => self.fail(format!("{field}[{i}].{leaf}"), format!("{v} is listed twice")),
                Ok(v) => {
                    seen.push(key(&v));
                    *slot = v;
                }
                Err(why) => self.fail(format!("{field}[{i}].{leaf}"), why),
            }
        }
    }

    /// At most one primary; the first becomes primary when none is.
    fn primaries<T>(&mut self, field: &str, items: &mut [T], primary: impl Fn(&mut T) -> &mut bool) {
        let count = items.iter_mut().filter_map(|i| primary(i).then_some(())).count();
        if count > 1 {
            self.fail(field, "at most one entry may be primary");
        } else if count == 0
            && let Some(first) = items.first_mut()
        {
            *primary(first) = true;
        }
    }
}

impl Profile {
    /// Normalises every value and checks every rule, reporting all violations at
    /// once (field paths relative to the customer, e.g. `phone_numbers[1].number`).
    pub fn validated(mut self, rules: &Rules) -> Result<Self, Error> {
        let mut check = Check(Vec::new());

        // Sizes first: an oversized list is refused before any per-item work, so a
        // large request costs no more than reading it.
        check.at_most("phone_numbers", self.phones.len(), MAX_CONTACTS);
        check.at_most("email_addresses", self.emails.len(), MAX_CONTACTS);
        check.at_most("addresses", self.addresses.len(), MAX_CONTACTS);
        check.at_most("tags", self.tags.len(), MAX_TAGS);
        check.at_most("custom_attributes", self.custom_attributes.len(), MAX_ATTRIBUTES);
        for (i, a) in self.addresses.iter().enumerate().take(MAX_CONTACTS) {
            check.at_most(
                &format!("addresses[{i}].postal_address.address_lines"),
                a.postal.address_lines.len(),
                MAX_ADDRESS_LINES,
            );
            check.at_most(
                &format!("addresses[{i}].postal_address.recipients"),
                a.postal.recipients.len(),
                MAX_RECIPIENTS,
            );
        }
        if !check.0.is_empty() {
            return Err(Error::InvalidArgument(check.0));
        }

        let n = &mut self.person_name;
        n.given = check.text("person_name.given_name", &n.given, MAX_NAME_PART);
        n.middle = check.text("person_name.middle_name", &n.middle, MAX_NAME_PART);
        n.family = check.text("person_name.family_name", &n.family, MAX_NAME_PART);
        n.prefix = check.text("person_name.prefix", &n.prefix, MAX_NAME_PART);
        n.suffix = check.text("person_name.suffix", &n.suffix, MAX_NAME_PART);
        self.organization_name = check.text("organization_name", &self.organization_name, MAX_NAME);
        self.display_name = check.text("display_name", &self.display_name, MAX_NAME);

        if self.kind == CustomerKind::Unspecified {
            self.kind = if self.person_name.is_empty() && !self.organization_name.is_empty() {
                CustomerKind::Organization
            } else {
                CustomerKind::Person
            };
        }
        if self.kind == CustomerKind::Organization && self.organization_name.is_empty() {
            check.fail("organization_name", "required for an organisation");
        }
        if self.display_name.is_empty() {
            let n = &self.person_name;
            self.display_name = match self.kind {
                CustomerKind::Organization => self.organization_name.clone(),
                _ => normalize::display_person_name(&n.given, &n.middle, &n.family),
            };
            if self.display_name.is_empty() {
                self.display_name = self.organization_name.clone();
            }
            if self.display_name.is_empty() {
                check.fail("display_name", "required: set display_name, person_name or organization_name");
            }
        }

        let region = rules.default_region.as_str();
        check.unique(
            "phone_numbers",
            "number",
            &mut self.phones,
            |p| &mut p.number,
            |raw| normalize::phone(raw, region),
            str::to_owned,
        );
        check.primaries("phone_numbers", &mut self.phones, |p| &mut p.primary);

        check.unique(
            "email_addresses",
            "address",
            &mut self.emails,
            |e| &mut e.address,
            normalize::email,
            str::to_lowercase,
        );
        check.primaries("email_addresses", &mut self.emails, |e| &mut e.primary);

        for (i, address) in self.addresses.iter_mut().enumerate() {
            let field = format!("addresses[{i}].postal_address");
            let p = &mut address.postal;
            match normalize::region_code(&p.region_code) {
                Ok(code) => p.region_code = code,
                Err(why) => check.fail(format!("{field}.region_code"), why),
            }
            p.postal_code = check.text(&format!("{field}.postal_code"), &p.postal_code, 16);
            p.administrative_area = check.text(
                &format!("{field}.administrative_area"),
                &p.administrative_area,
                MAX_ADDRESS_FIELD,
            );
            p.locality = check.text(&format!("{field}.locality"), &p.locality, MAX_ADDRESS_FIELD);
            p.sublocality = check.text(&format!("{field}.sublocality"), &p.sublocality, MAX_ADDRESS_FIELD);
            let lines = std::mem::take(&mut p.address_lines);
            p.address_lines = lines
                .iter()
                .enumerate()
                .map(|(j, l)| check.text(&format!("{field}.address_lines[{j}]"), l, MAX_ADDRESS_FIELD))
                .filter(|l| !l.is_empty())
                .collect();
            let recipients = std::mem::take(&mut p.recipients);
            p.recipients = recipients
                .iter()
                .enumerate()
                .map(|(j, r)| check.text(&format!("{field}.recipients[{j}]"), r, MAX_NAME))
                .filter(|r| !r.is_empty())
                .collect();
        }
        check.primaries("addresses", &mut self.addresses, |a| &mut a.primary);

        if self.lifecycle_stage == LifecycleStage::Unspecified {
            self.lifecycle_stage = LifecycleStage::Lead;
        }
        self.owner_user_id = check.identifier("owner_user_id", &self.owner_user_id);
        self.team_id = check.identifier("team_id", &self.team_id);

        let mut tags = Vec::with_capacity(self.tags.len());
        for (i, raw) in self.tags.iter().enumerate() {
            match normalize::tag(raw) {
                Ok(tag) => tags.push(tag),
                Err(why) => check.fail(format!("tags[{i}]"), why),
            }
        }
        tags.sort();
        tags.dedup();
        if tags.len() > MAX_TAGS {
            check.fail("tags", format!("at most {MAX_TAGS} distinct tags"));
        }
        self.tags = tags;

        for (key, value) in &mut self.custom_attributes {
            if let Err(why) = normalize::attribute_key(key) {
                check.fail(format!("custom_attributes[{key}]"), why);
            }
            *value = value.trim().to_owned();
            if value.contains('\0') {
                check.fail(format!("custom_attributes[{key}]"), "value must not contain NUL characters");
            } else if value.chars().count() > MAX_ATTRIBUTE_VALUE {
                check.fail(
                    format!("custom_attributes[{key}]"),
                    format!("value at most {MAX_ATTRIBUTE_VALUE} characters"),
                );
            }
        }

        if check.0.is_empty() {
            Ok(self)
        } else {
            Err(Error::InvalidArgument(check.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            default_region: "CN".into(),
        }
    }

    fn violations(p: Profile) -> Vec<String> {
        match p.validated(&rules()) {
            Err(Error::InvalidArgument(v)) => v.into_iter().map(|f| f.field).collect(),
            other => panic!("expected violations, got {other:?}"),
        }
    }

    fn phone(n: &str) -> Phone {
        Phone {
            number: n.into(),
            kind: ContactKind::Mobile,
            primary: false,
            verified: false,
        }
    }

    fn email(a: &str, primary: bool) -> Email {
        Email {
            address: a.into(),
            kind: ContactKind::Personal,
            primary,
            verified: false,
        }
    }

    #[test]
    fn normalises_and_infers() {
        let p = Profile {
            person_name: PersonName {
                given: " 小明 ".into(),
                family: "王".into(),
                ..Default::default()
            },
            phones: vec![phone("138 0013 8000")],
            emails: vec![email("Xiao.Ming@Example.CN", false)],
            tags: vec!["VIP".into(), "vip".into(), "new".into()],
            ..Default::default()
        }
        .validated(&rules())
        .unwrap();
        assert_eq!(p.kind, CustomerKind::Person);
        assert_eq!(p.display_name, "王小明");
        assert_eq!(p.phones[0].number, "+8613800138000");
        assert!(p.phones[0].primary, "first contact becomes primary");
        assert_eq!(p.emails[0].address, "Xiao.Ming@example.cn");
        assert_eq!(p.tags, vec!["new", "vip"]);
        assert_eq!(p.lifecycle_stage, LifecycleStage::Lead);
    }

    #[test]
    fn organisation_inferred_and_named() {
        let p = Profile {
            organization_name: "ACME  Ltd".into(),
            ..Default::default()
        }
        .validated(&rules())
        .unwrap();
        assert_eq!(p.kind, CustomerKind::Organization);
        assert_eq!(p.display_name, "ACME Ltd");
        let missing = Profile {
            kind: CustomerKind::Organization,
            display_name: "x".into(),
            ..Default::default()
        };
        assert_eq!(violations(missing), vec!["organization_name"]);
    }

    #[test]
    fn reports_every_violation_at_once() {
        let p = Profile {
            phones: vec![phone("12"), phone("13800138000"), phone("+86 138-0013-8000")],
            emails: vec![email("nope", true), email("a@b.com", true)],
            tags: vec!["bad tag".into()],
            custom_attributes: BTreeMap::from([("Bad-Key".to_owned(), "v".to_owned())]),
            owner_user_id: "has space".into(),
            ..Default::default()
        };
        let fields = violations(p);
        for want in [
            "display_name",
            "phone_numbers[0].number",
            "phone_numbers[2].number",
            "email_addresses[0].address",
            "email_addresses",
            "tags[0]",
            "custom_attributes[Bad-Key]",
            "owner_user_id",
        ] {
            assert!(fields.iter().any(|f| f == want), "missing {want} in {fields:?}");
        }
    }

    #[test]
    fn oversized_lists_are_refused_before_item_work() {
        let p = Profile {
            display_name: "x".into(),
            emails: (0..100_000).map(|i| email(&format!("a{i}@b.co"), false)).collect(),
            tags: vec!["t".into(); 51],
            ..Default::default()
        };
        let fields = violations(p);
        assert_eq!(fields, vec!["email_addresses", "tags"]);
    }

    #[test]
    fn control_characters_are_refused() {
        let p = Profile {
            display_name: "A\u{0}B".into(),
            ..Default::default()
        };
        assert_eq!(violations(p), vec!["display_name"]);
        let p = Profile {
            display_name: "ok".into(),
            custom_attributes: BTreeMap::from([("note".to_owned(), "a\u{0}".to_owned())]),
            ..Default::default()
        };
        assert_eq!(violations(p), vec!["custom_attributes[note]"]);
    }

    #[test]
    fn limits() {
        let p = Profile {
            display_name: "x".repeat(201),
            ..Default::default()
        };
        assert_eq!(violations(p), vec!["display_name"]);
        let p = Profile {
            display_name: "x".into(),
            addresses: vec![Address {
                kind: ContactKind::Home,
                primary: false,
                postal: PostalAddress {
                    region_code: "China".into(),
                    ..Default::default()
                },
            }],
            ..Default::default()
        };
        assert_eq!(violations(p), vec!["addresses[0].postal_address.region_code"]);
    }

    #[test]
    fn resource_names() {
        let id = CustomerId::new();
        assert_eq!(CustomerId::parse_name(&id.name(), "name").unwrap(), id);
        for bad in [
            "",
            "customers/",
            "customers/xyz",
            "tickets/0192f0c1-0000-7000-8000-000000000000",
        ] {
            assert!(CustomerId::parse_name(bad, "name").is_err(), "{bad}");
        }
    }
}
