//! The customer: its identity, its profile fields, and the rules a profile must meet
//! before it is stored. `Profile::validated` is the only way in: it normalises every
//! value and reports every violation at once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use crm_platform::{Error, FieldViolation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{definitions::Definitions, normalize};

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
    Sms,
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
    /// `YYYY-MM-DD`, or empty.
    #[serde(default)]
    pub birth_date: String,
    #[serde(default)]
    pub national_id: String,
}

/// The id of a customer in a channel system.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExternalId {
    pub source: String,
    pub external_id: String,
}

/// Which source set a field's value, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// Source system id; `api` for direct calls.
    pub source: String,
    pub channel: Channel,
    pub time: DateTime<Utc>,
}

/// A stored customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub id: CustomerId,
    pub profile: Profile,
    pub source_channel: Channel,
    /// Sorted.
    #[serde(default)]
    pub external_ids: Vec<ExternalId>,
    /// By field path (`person_name.given_name`, `phone_numbers`, `custom_attributes.x`).
    #[serde(default)]
    pub provenance: BTreeMap<String, Provenance>,
    /// Input as given, by field path, where normalisation changed it.
    #[serde(default)]
    pub raw_values: BTreeMap<String, String>,
    /// Last written or confirmed by a source.
    pub confirm_time: DateTime<Utc>,
    /// Customers merged into this one.
    #[serde(default)]
    pub merged_customers: Vec<CustomerId>,
    /// Set when this customer was merged into another.
    #[serde(default)]
    pub merged_into: Option<CustomerId>,
    /// Computed on read from the definitions in force; not stored.
    #[serde(default, skip_serializing)]
    pub completeness: f64,
    /// Incremented by every change; the etag is derived from it.
    pub revision: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub delete_time: Option<DateTime<Utc>>,
}

impl Customer {
    /// A customer created at `at` from a validated profile, its first revision.
    pub fn new(
        profile: Profile,
        source_channel: Channel,
        provenance: BTreeMap<String, Provenance>,
        external_ids: Vec<ExternalId>,
        raw_values: BTreeMap<String, String>,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            id: CustomerId::new(),
            profile,
            source_channel,
            external_ids,
            provenance,
            raw_values,
            confirm_time: at,
            merged_customers: Vec::new(),
            merged_into: None,
            completeness: 0.0,
            revision: 1,
            create_time: at,
            update_time: at,
            delete_time: None,
        }
    }

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

/// Collects violations while normalising a profile, and the raw input of values
/// normalisation changed.
struct Check(Vec<FieldViolation>, BTreeMap<String, String>);

impl Check {
    /// Remembers `raw` for `field` when the stored `value` differs from it.
    fn keep_raw(&mut self, field: impl Into<String>, raw: &str, value: &str) {
        if raw.trim() != value {
            self.1.insert(field.into(), raw.to_owned());
        }
    }

    /// Normalises an optional value with `f`, remembering the raw input.
    fn optional(&mut self, field: &str, raw: &str, f: impl Fn(&str) -> Result<String, String>) -> String {
        if raw.trim().is_empty() {
            return String::new();
        }
        match f(raw) {
            Ok(value) => {
                self.keep_raw(field, raw, &value);
                value
            }
            Err(why) => {
                self.fail(field, why);
                String::new()
            }
        }
    }

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
                Ok(v) if seen.contains(&key(&v)) => self.fail(format!("{field}[{i}].{leaf}"), "listed twice"),
                Ok(v) => {
                    seen.push(key(&v));
                    let raw = std::mem::replace(slot, v);
                    self.keep_raw(format!("{field}[{i}].{leaf}"), &raw, slot);
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
    /// Normalises every value and checks every rule and field definition, reporting
    /// all violations at once (field paths relative to the customer, e.g.
    /// `phone_numbers[1].number`). Returns the profile and the raw input of every value
    /// that normalisation changed, by field path.
    pub fn validated(self, rules: &Rules, defs: &Definitions) -> Result<(Self, BTreeMap<String, String>), Error> {
        self.normalized(rules, defs, true)
    }

    /// Like [`Profile::validated`] for a partial record that will be combined with a
    /// stored one (ingestion): checks and normalises the values given, but infers
    /// nothing and requires nothing. Validate the combined profile afterwards.
    pub fn validated_partial(self, rules: &Rules, defs: &Definitions) -> Result<(Self, BTreeMap<String, String>), Error> {
        self.normalized(rules, defs, false)
    }

    fn normalized(
        mut self,
        rules: &Rules,
        defs: &Definitions,
        complete: bool,
    ) -> Result<(Self, BTreeMap<String, String>), Error> {
        let mut check = Check(Vec::new(), BTreeMap::new());

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

        if complete && self.kind == CustomerKind::Unspecified {
            self.kind = if self.person_name.is_empty() && !self.organization_name.is_empty() {
                CustomerKind::Organization
            } else {
                CustomerKind::Person
            };
        }
        if complete && self.kind == CustomerKind::Organization && self.organization_name.is_empty() {
            check.fail("organization_name", "required for an organisation");
        }
        if complete && self.display_name.is_empty() {
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
            let region_ok = match normalize::region_code(&p.region_code) {
                Ok(code) => {
                    p.region_code = code;
                    true
                }
                Err(why) => {
                    check.fail(format!("{field}.region_code"), why);
                    false
                }
            };
            if region_ok {
                let region = p.region_code.clone();
                p.postal_code = check.optional(&format!("{field}.postal_code"), &p.postal_code, |raw| {
                    normalize::postal_code(raw, &region)
                });
            }
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

        if complete && self.lifecycle_stage == LifecycleStage::Unspecified {
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

        self.birth_date = check.optional("birth_date", &self.birth_date, normalize::date);
        self.national_id = check.optional("national_id", &self.national_id, |raw| normalize::national_id(raw, region));

        for (key, value) in &mut self.custom_attributes {
            let field = format!("custom_attributes[{key}]");
            if let Err(why) = normalize::attribute_key(key) {
                check.fail(field, why);
                continue;
            }
            if value.contains('\0') || value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                check.fail(field, "value must not contain control characters");
                continue;
            }
            if value.chars().count() > MAX_ATTRIBUTE_VALUE {
                check.fail(field, format!("value at most {MAX_ATTRIBUTE_VALUE} characters"));
                continue;
            }
            let Some(def) = defs.custom(key) else {
                check.fail(
                    field,
                    format!("no field definition `custom_attributes.{key}`: define it with UpdateFieldDefinition first"),
                );
                continue;
            };
            if self.kind != CustomerKind::Unspecified && !def.applies(self.kind) {
                check.fail(field, "does not apply to this customer type");
                continue;
            }
            match def.normalize_value(value, region) {
                Ok(v) => {
                    let raw = std::mem::replace(value, v);
                    check.keep_raw(field, &raw, value);
                }
                Err(why) => check.fail(field, why),
            }
        }
        self.custom_attributes.retain(|_, v| !v.is_empty());
        if complete {
            check.0.extend(defs.missing_required(&self));
        }

        if check.0.is_empty() {
            Ok((self, check.1))
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

    fn valid(p: Profile) -> Profile {
        p.validated(&rules(), &Definitions::default()).unwrap().0
    }

    fn violations(p: Profile) -> Vec<String> {
        match p.validated(&rules(), &Definitions::default()) {
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
        let p = valid(Profile {
            person_name: PersonName {
                given: " 小明 ".into(),
                family: "王".into(),
                ..Default::default()
            },
            phones: vec![phone("138 0013 8000")],
            emails: vec![email("Xiao.Ming@Example.CN", false)],
            tags: vec!["VIP".into(), "vip".into(), "new".into()],
            ..Default::default()
        });
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
        let p = valid(Profile {
            organization_name: "ACME  Ltd".into(),
            ..Default::default()
        });
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
            custom_attributes: BTreeMap::from([
                ("Bad-Key".to_owned(), "v".to_owned()),
                ("undefined".to_owned(), "v".to_owned()),
            ]),
            birth_date: "1990-02-30".into(),
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
            "custom_attributes[undefined]",
            "birth_date",
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
            custom_attributes: BTreeMap::from([("note".to_owned(), "a\u{1}".to_owned())]),
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
    fn raw_input_is_kept_where_normalisation_changed_it() {
        let (p, raw) = Profile {
            display_name: "Li".into(),
            phones: vec![phone("138 0013 8000"), phone("+8613900139000")],
            birth_date: "1990/1/2".into(),
            addresses: vec![Address {
                kind: ContactKind::Home,
                primary: true,
                postal: PostalAddress {
                    region_code: "cn".into(),
                    postal_code: "100 080".into(),
                    ..Default::default()
                },
            }],
            ..Default::default()
        }
        .validated(&rules(), &Definitions::default())
        .unwrap();
        assert_eq!(p.birth_date, "1990-01-02");
        assert_eq!(p.addresses[0].postal.postal_code, "100080");
        assert_eq!(raw.get("phone_numbers[0].number").map(String::as_str), Some("138 0013 8000"));
        assert_eq!(raw.get("birth_date").map(String::as_str), Some("1990/1/2"));
        assert_eq!(
            raw.get("addresses[0].postal_address.postal_code").map(String::as_str),
            Some("100 080")
        );
        assert!(
            !raw.contains_key("phone_numbers[1].number"),
            "unchanged values keep no raw copy"
        );
    }

    #[test]
    fn custom_attributes_follow_their_definitions() {
        use super::super::definitions::{FieldDefinition, FieldType};
        let tier = FieldDefinition {
            path: "custom_attributes.tier".into(),
            display_name: "Tier".into(),
            description: String::new(),
            field_type: FieldType::Enum,
            built_in: false,
            applies_to: vec![],
            required_for: vec![CustomerKind::Person],
            allowed_values: vec!["Gold".into(), "Silver".into()],
            classification: Default::default(),
            completeness_weight: 1.0,
            self_editable: false,
            revision: 1,
            update_time: None,
        };
        let defs = Definitions::new(vec![tier]);
        let ok = Profile {
            display_name: "Li".into(),
            custom_attributes: BTreeMap::from([("tier".to_owned(), "gold".to_owned())]),
            ..Default::default()
        };
        let (p, _) = ok.validated(&rules(), &defs).unwrap();
        assert_eq!(p.custom_attributes["tier"], "Gold");
        let missing = Profile {
            display_name: "Li".into(),
            ..Default::default()
        };
        match missing.validated(&rules(), &defs) {
            Err(Error::InvalidArgument(v)) => assert_eq!(v[0].field, "custom_attributes.tier"),
            other => panic!("{other:?}"),
        }
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
