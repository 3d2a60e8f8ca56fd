//! Segment rules: the typed tree of the proto and its AIP-160-style text, validated
//! into one domain form ([`Rule`]), printed back as canonical text, and compiled to
//! SQL ([`compile`]) for both backends.
//!
//! Every condition compiles to SQL on PostgreSQL and on SQLite alike (the few
//! differences, JSON attribute access and the scoped `IN` list, are the dialect's).
//! Evaluation is always set-based: the whole population for a preview or a full
//! evaluation, a handful of people for an incremental one.

mod compile;
pub mod text;

pub use compile::{Scope, compile};
pub use text::{parse, print};

use std::collections::BTreeMap;

use chrono::DateTime;
use crm_platform::error::FieldViolation;
use crm_proto::crm::{
    common::v1::Channel,
    customer::v1::{ConsentPurpose, ContactChannel, CustomerType, InteractionKind, LifecycleStage},
    segmentation::v1::{
        self as pb, ActivityMeasure, ConditionOperator, segment_condition::Subject as PbSubject, segment_rule::Kind,
    },
};

use crate::traits::Trait;

/// Children of one AND or OR at most.
pub const MAX_CHILDREN: usize = 50;
/// Conditions of one rule at most.
pub const MAX_CONDITIONS: usize = 200;
/// Nesting depth at most.
pub const MAX_DEPTH: usize = 12;

/// A validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    All(Vec<Rule>),
    Any(Vec<Rule>),
    Not(Box<Rule>),
    Cond(Cond),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    pub fn sql(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "<>",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            Self::Ne => "!=",
            other => other.sql(),
        }
    }

    /// Does `a op b` hold?
    pub fn holds<T: Ord>(self, a: &T, b: &T) -> bool {
        match self {
            Self::Eq => a == b,
            Self::Ne => a != b,
            Self::Lt => a < b,
            Self::Le => a <= b,
            Self::Gt => a > b,
            Self::Ge => a >= b,
        }
    }

    fn from_proto(op: i32) -> Option<Self> {
        Some(match ConditionOperator::try_from(op).ok()? {
            ConditionOperator::Equal => Self::Eq,
            ConditionOperator::NotEqual => Self::Ne,
            ConditionOperator::Less => Self::Lt,
            ConditionOperator::LessOrEqual => Self::Le,
            ConditionOperator::Greater => Self::Gt,
            ConditionOperator::GreaterOrEqual => Self::Ge,
            ConditionOperator::Unspecified => return None,
        })
    }

    fn to_proto(self) -> ConditionOperator {
        match self {
            Self::Eq => ConditionOperator::Equal,
            Self::Ne => ConditionOperator::NotEqual,
            Self::Lt => ConditionOperator::Less,
            Self::Le => ConditionOperator::LessOrEqual,
            Self::Gt => ConditionOperator::Greater,
            Self::Ge => ConditionOperator::GreaterOrEqual,
        }
    }
}

/// The customer columns a condition may name, and the enum ones' value sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnumField {
    LifecycleStage,
    Type,
    SourceChannel,
}

impl EnumField {
    fn name(self) -> &'static str {
        match self {
            Self::LifecycleStage => "lifecycle_stage",
            Self::Type => "type",
            Self::SourceChannel => "source_channel",
        }
    }

    pub fn column(self) -> &'static str {
        match self {
            Self::LifecycleStage => "lifecycle_stage",
            Self::Type => "kind",
            Self::SourceChannel => "source_channel",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Self::LifecycleStage => "LIFECYCLE_STAGE_",
            Self::Type => "CUSTOMER_TYPE_",
            Self::SourceChannel => "CHANNEL_",
        }
    }

    fn lookup(self, name: &str) -> Option<i32> {
        let full = format!("{}{}", self.prefix(), name.to_uppercase().trim_start_matches(self.prefix()));
        let n = match self {
            Self::LifecycleStage => LifecycleStage::from_str_name(&full).map(|v| v as i32),
            Self::Type => CustomerType::from_str_name(&full).map(|v| v as i32),
            Self::SourceChannel => Channel::from_str_name(&full).map(|v| v as i32),
        }?;
        (n != 0).then_some(n)
    }

    fn value_name(self, n: i32) -> String {
        let full = match self {
            Self::LifecycleStage => LifecycleStage::try_from(n).map(|v| v.as_str_name()),
            Self::Type => CustomerType::try_from(n).map(|v| v.as_str_name()),
            Self::SourceChannel => Channel::try_from(n).map(|v| v.as_str_name()),
        }
        .unwrap_or("UNSPECIFIED");
        full.trim_start_matches(self.prefix()).to_owned()
    }
}

/// An RFM measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RfmMeasure {
    RecencyScore,
    FrequencyScore,
    MonetaryScore,
    RecencyDays,
    Frequency,
    Monetary,
}

impl RfmMeasure {
    const ALL: [(&'static str, Self, &'static str); 6] = [
        ("recency_score", Self::RecencyScore, "r_score"),
        ("frequency_score", Self::FrequencyScore, "f_score"),
        ("monetary_score", Self::MonetaryScore, "m_score"),
        ("recency_days", Self::RecencyDays, "recency_days"),
        ("frequency", Self::Frequency, "frequency"),
        ("monetary", Self::Monetary, "monetary_micros"),
    ];

    fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, m, _)| *m == self).map_or("", |(n, _, _)| n)
    }

    pub fn column(self) -> &'static str {
        Self::ALL.iter().find(|(_, m, _)| *m == self).map_or("", |(_, _, c)| c)
    }
}

/// What a condition is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Enum(EnumField),
    /// `region`, `locality`, `owner_user_id`, `team_id`: the column.
    Text(&'static str),
    Attribute(String),
    CreateTime,
    Tag(String),
    RfmGroup,
    Rfm(RfmMeasure),
    Trait {
        name: String,
        kind: TraitKind,
    },
    MayContact {
        purpose: i32,
        channel: i32,
    },
    Activity(Activity),
}

/// How a trait's stored value compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraitKind {
    Integer,
    Time,
    Text,
}

/// Behaviour counted in a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub measure: ActivityMeasure,
    /// The interaction kind (interactions only).
    pub kind: i32,
    pub category: String,
    pub window_hours: u32,
}

/// A comparison's right-hand side, as the subject reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Text(String),
}

/// A validated condition; `cmp` is `None` for tags and consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub subject: Subject,
    pub cmp: Option<(Op, Value)>,
}

/// What a rule reads, as bits: a change to one re-evaluates the segments reading it.
pub mod deps {
    pub const CUSTOMER: i64 = 1;
    pub const TAGS: i64 = 2;
    pub const RFM: i64 = 4;
    pub const TRAITS: i64 = 8;
    pub const CONSENT: i64 = 16;
    pub const ORDERS: i64 = 32;
    pub const INTERACTIONS: i64 = 64;
    pub const ALL: i64 = 127;
}

impl Rule {
    fn walk<'a>(&'a self, out: &mut Vec<&'a Cond>) {
        match self {
            Self::All(rs) | Self::Any(rs) => rs.iter().for_each(|r| r.walk(out)),
            Self::Not(r) => r.walk(out),
            Self::Cond(c) => out.push(c),
        }
    }

    /// The conditions, in order.
    pub fn conditions(&self) -> Vec<&Cond> {
        let mut out = Vec::new();
        self.walk(&mut out);
        out
    }

    /// The data the rule reads (`deps` bits); every rule reads the customer (its
    /// existence).
    pub fn deps(&self) -> i64 {
        self.conditions().iter().fold(deps::CUSTOMER, |acc, c| {
            acc | match &c.subject {
                Subject::Enum(_) | Subject::Text(_) | Subject::Attribute(_) | Subject::CreateTime => deps::CUSTOMER,
                Subject::Tag(_) => deps::TAGS,
                Subject::RfmGroup | Subject::Rfm(_) => deps::RFM,
                Subject::Trait { .. } => deps::TRAITS,
                Subject::MayContact { .. } => deps::CONSENT,
                Subject::Activity(a) if a.measure == ActivityMeasure::Interactions => deps::INTERACTIONS,
                Subject::Activity(_) => deps::ORDERS,
            }
        })
    }

    /// Whether the outcome moves with time alone (windows, consent expiry, traits
    /// over windows): such segments are evaluated anew on a schedule too.
    pub fn time_dependent(&self) -> bool {
        self.conditions().iter().any(|c| {
            matches!(
                c.subject,
                Subject::Activity(_) | Subject::Trait { .. } | Subject::MayContact { .. }
            )
        })
    }

    /// The tags the rule names.
    pub fn tags(&self) -> Vec<String> {
        self.conditions()
            .iter()
            .filter_map(|c| match &c.subject {
                Subject::Tag(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }
}

/// What validation needs to know: the computed traits in force.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub traits: BTreeMap<String, Trait>,
    /// Any well-formed trait name is accepted (reading stored rules).
    pub any_trait: bool,
}

impl Context {
    pub fn new(traits: &crate::traits::Traits) -> Self {
        Self {
            traits: traits.traits.iter().cloned().collect(),
            any_trait: false,
        }
    }

    /// For rules validated once already: every well-formed trait name is accepted.
    pub fn lenient() -> Self {
        Self {
            traits: BTreeMap::new(),
            any_trait: true,
        }
    }

    fn trait_named(&self, name: &str) -> Option<Trait> {
        self.traits.get(name).cloned().or_else(|| {
            if self.any_trait {
                crate::traits::parse(name).ok()
            } else {
                None
            }
        })
    }
}

/// Violations with paths relative to the rule (`all_of.rules[1].condition.value`).
type Violations = Vec<FieldViolation>;

fn violation(v: &mut Violations, path: &str, leaf: &str, message: impl Into<String>) {
    let field = if leaf.is_empty() {
        path.to_owned()
    } else if path.is_empty() {
        leaf.to_owned()
    } else {
        format!("{path}.{leaf}")
    };
    v.push(FieldViolation::new(field, message));
}

/// Validates a rule tree; every problem is reported with its path below the rule.
pub fn validate(rule: &pb::SegmentRule, ctx: &Context) -> std::result::Result<Rule, Violations> {
    let mut v = Violations::new();
    let mut count = 0;
    let out = check_rule(rule, ctx, "", 0, &mut count, &mut v);
    if count > MAX_CONDITIONS {
        violation(&mut v, "", "", format!("at most {MAX_CONDITIONS} conditions"));
    }
    match out {
        Some(r) if v.is_empty() => Ok(r),
        _ => Err(v),
    }
}

fn join(path: &str, leaf: &str) -> String {
    if path.is_empty() {
        leaf.to_owned()
    } else {
        format!("{path}.{leaf}")
    }
}

fn check_rule(
    r: &pb::SegmentRule,
    ctx: &Context,
    path: &str,
    depth: usize,
    count: &mut usize,
    v: &mut Violations,
) -> Option<Rule> {
    if depth > MAX_DEPTH {
        violation(v, path, "", format!("nested deeper than {MAX_DEPTH} levels"));
        return None;
    }
    match &r.kind {
        None => {
            violation(v, path, "", "a rule is one of all_of, any_of, not or condition");
            None
        }
        Some(Kind::AllOf(list)) | Some(Kind::AnyOf(list)) => {
            let all = matches!(r.kind, Some(Kind::AllOf(_)));
            let here = join(path, if all { "all_of" } else { "any_of" });
            if list.rules.is_empty() {
                violation(v, &here, "rules", "at least one rule");
                return None;
            }
            if list.rules.len() > MAX_CHILDREN {
                violation(v, &here, "rules", format!("at most {MAX_CHILDREN} rules"));
                return None;
            }
            let children: Vec<Option<Rule>> = list
                .rules
                .iter()
                .enumerate()
                .map(|(i, c)| check_rule(c, ctx, &format!("{here}.rules[{i}]"), depth + 1, count, v))
                .collect();
            let mut children: Vec<Rule> = children.into_iter().collect::<Option<_>>()?;
            // One rule in a group is that rule.
            if children.len() == 1 {
                return children.pop();
            }
            Some(if all { Rule::All(children) } else { Rule::Any(children) })
        }
        Some(Kind::Not(inner)) => {
            let inner = check_rule(inner, ctx, &join(path, "not"), depth + 1, count, v)?;
            Some(match inner {
                // NOT NOT a is a.
                Rule::Not(a) => *a,
                other => Rule::Not(Box::new(other)),
            })
        }
        Some(Kind::Condition(c)) => {
            *count += 1;
            check_condition(c, ctx, &join(path, "condition"), v).map(Rule::Cond)
        }
    }
}

const TEXT_FIELDS: [&str; 4] = ["region", "locality", "owner_user_id", "team_id"];

/// Whole units (decimals up to six places) as millionths.
pub fn parse_money(text: &str) -> Option<i64> {
    let (neg, t) = text.strip_prefix('-').map_or((false, text), |t| (true, t));
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 6
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    let n = whole.checked_mul(1_000_000)?.checked_add(frac)?;
    Some(if neg { -n } else { n })
}

/// Millionths as whole units, shortest exact form.
pub fn format_money(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    let (whole, frac) = (m / 1_000_000, m % 1_000_000);
    if frac == 0 {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{}", format!("{frac:06}").trim_end_matches('0'))
    }
}

fn rfc3339_micros(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_micros())
}

fn valid_attribute_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 64 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_condition(c: &pb::SegmentCondition, ctx: &Context, path: &str, v: &mut Violations) -> Option<Cond> {
    let before = v.len();
    let op = Op::from_proto(c.operator);
    let value = c.value.trim();
    // The comparison a subject needs, or none.
    let mut needs_cmp = true;
    let mut equality_only = false;
    let subject = match &c.subject {
        None => {
            violation(
                v,
                path,
                "",
                "a condition names one subject: field, tag, rfm, trait, may_contact or activity",
            );
            return None;
        }
        Some(PbSubject::Field(f)) => {
            let f = f.trim();
            if let Some(e) = [EnumField::LifecycleStage, EnumField::Type, EnumField::SourceChannel]
                .into_iter()
                .find(|e| e.name() == f)
            {
                equality_only = true;
                Some(Subject::Enum(e))
            } else if let Some(t) = TEXT_FIELDS.iter().find(|t| **t == f) {
                Some(Subject::Text(t))
            } else if f == "create_time" {
                Some(Subject::CreateTime)
            } else if let Some(k) = f.strip_prefix("attributes.") {
                if valid_attribute_key(k) {
                    Some(Subject::Attribute(k.to_owned()))
                } else {
                    violation(v, path, "field", "an attribute key is 1 to 64 of [A-Za-z0-9_-]");
                    None
                }
            } else {
                violation(
                    v,
                    path,
                    "field",
                    format!(
                        "`{f}` is not a customer field: lifecycle_stage, type, source_channel, region, locality, owner_user_id, team_id, create_time, attributes.<key>"
                    ),
                );
                None
            }
        }
        Some(PbSubject::Tag(t)) => {
            needs_cmp = false;
            match crate::tags::tag_id(t, "tag") {
                Ok(id) => Some(Subject::Tag(id.to_owned())),
                Err(_) => {
                    violation(v, path, "tag", "must be `tags/{tag}`");
                    None
                }
            }
        }
        Some(PbSubject::Rfm(m)) => {
            let m = m.trim();
            if m == "group" {
                equality_only = true;
                Some(Subject::RfmGroup)
            } else if let Some((_, measure, _)) = RfmMeasure::ALL.iter().find(|(n, _, _)| *n == m) {
                Some(Subject::Rfm(*measure))
            } else {
                violation(
                    v,
                    path,
                    "rfm",
                    format!(
                        "`{m}` is not an RFM measure: group, recency_score, frequency_score, monetary_score, recency_days, frequency, monetary"
                    ),
                );
                None
            }
        }
        Some(PbSubject::Trait(t)) => match ctx.trait_named(t.trim()) {
            Some(tr) => {
                let kind = match tr {
                    Trait::LastOrderAt => TraitKind::Time,
                    Trait::FavouriteCategory | Trait::PreferredChannel => {
                        equality_only = true;
                        TraitKind::Text
                    }
                    _ => TraitKind::Integer,
                };
                Some(Subject::Trait {
                    name: t.trim().to_owned(),
                    kind,
                })
            }
            None => {
                let known: Vec<&str> = ctx.traits.keys().map(String::as_str).collect();
                violation(
                    v,
                    path,
                    "trait",
                    format!("`{t}` is not a computed trait in force ({})", known.join(", ")),
                );
                None
            }
        },
        Some(PbSubject::MayContact(m)) => {
            needs_cmp = false;
            match ConsentPurpose::try_from(m.purpose) {
                Ok(p) if p != ConsentPurpose::Unspecified => {}
                _ => violation(v, path, "may_contact.purpose", "required: a consent purpose"),
            }
            if ContactChannel::try_from(m.channel).is_err() {
                violation(v, path, "may_contact.channel", "not a contact channel");
            }
            Some(Subject::MayContact {
                purpose: m.purpose,
                channel: m.channel,
            })
        }
        Some(PbSubject::Activity(a)) => {
            let measure = ActivityMeasure::try_from(a.measure).unwrap_or(ActivityMeasure::Unspecified);
            if measure == ActivityMeasure::Unspecified {
                violation(v, path, "activity.measure", "required: ORDERS, ORDER_TOTAL or INTERACTIONS");
            }
            let kind_ok = InteractionKind::try_from(a.interaction_kind).is_ok_and(|k| k != InteractionKind::Unspecified);
            if measure == ActivityMeasure::Interactions && !kind_ok {
                violation(
                    v,
                    path,
                    "activity.interaction_kind",
                    "required for INTERACTIONS: page_view, product_view, cart, …",
                );
            }
            if measure != ActivityMeasure::Interactions && a.interaction_kind != 0 {
                violation(v, path, "activity.interaction_kind", "only for INTERACTIONS");
            }
            if measure == ActivityMeasure::OrderTotal && !a.category.is_empty() {
                violation(
                    v,
                    path,
                    "activity.category",
                    "not for ORDER_TOTAL (an order's total is not split by category)",
                );
            }
            if a.category.chars().count() > 100 {
                violation(v, path, "activity.category", "at most 100 characters");
            }
            let hours = match &a.window {
                Some(d) if d.nanos == 0 && d.seconds > 0 && d.seconds % 3600 == 0 && d.seconds <= 3650 * 86_400 => {
                    u32::try_from(d.seconds / 3600).ok()
                }
                _ => None,
            };
            if hours.is_none() {
                violation(v, path, "activity.window", "required: whole hours, 1 hour to 3650 days");
            }
            Some(Subject::Activity(Activity {
                measure,
                kind: if measure == ActivityMeasure::Interactions {
                    a.interaction_kind
                } else {
                    0
                },
                category: a.category.clone(),
                window_hours: hours.unwrap_or(0),
            }))
        }
    };
    let cmp = if !needs_cmp {
        if c.operator != 0 || !c.value.is_empty() {
            violation(
                v,
                path,
                "operator",
                "a tag or may_contact condition takes no operator or value",
            );
        }
        None
    } else {
        match op {
            None => {
                violation(v, path, "operator", "required: =, !=, <, <=, > or >=");
                None
            }
            Some(op) if equality_only && !matches!(op, Op::Eq | Op::Ne) => {
                violation(v, path, "operator", "this subject compares with = or != only");
                None
            }
            Some(op) => subject
                .as_ref()
                .and_then(|s| check_value(s, value, path, v))
                .map(|val| (op, val)),
        }
    };
    if v.len() > before {
        return None;
    }
    Some(Cond { subject: subject?, cmp })
}

fn check_value(s: &Subject, value: &str, path: &str, v: &mut Violations) -> Option<Value> {
    let mut bad = |message: String| {
        violation(v, path, "value", message);
        None
    };
    if value.is_empty() {
        return bad("required".into());
    }
    if value.chars().count() > 200 {
        return bad("at most 200 characters".into());
    }
    match s {
        Subject::Enum(e) => match e.lookup(value) {
            Some(n) => Some(Value::Int(i64::from(n))),
            None => bad(format!("`{value}` is not a {} value", e.name())),
        },
        Subject::Text(_) | Subject::Attribute(_) => Some(Value::Text(value.to_owned())),
        Subject::CreateTime => match rfc3339_micros(value) {
            Some(us) => Some(Value::Int(us)),
            None => bad(format!("`{value}` is not an RFC 3339 time such as 2026-01-31T00:00:00Z")),
        },
        Subject::RfmGroup => {
            let full = format!("RFM_GROUP_{}", value.to_uppercase().trim_start_matches("RFM_GROUP_"));
            match pb::RfmGroup::from_str_name(&full) {
                Some(g) if g != pb::RfmGroup::Unspecified => Some(Value::Int(g as i64)),
                _ => bad(format!("`{value}` is not an RFM group (CHAMPIONS, LOYAL, …, LOST)")),
            }
        }
        Subject::Rfm(RfmMeasure::Monetary) => match parse_money(value) {
            Some(m) => Some(Value::Int(m)),
            None => bad(format!("`{value}` is not an amount in whole units, such as 1000 or 99.5")),
        },
        Subject::Rfm(_) => match value.parse::<i64>() {
            Ok(n) => Some(Value::Int(n)),
            Err(_) => bad(format!("`{value}` is not an integer")),
        },
        Subject::Trait { kind, .. } => match kind {
            TraitKind::Integer => match value.parse::<i64>() {
                Ok(n) => Some(Value::Int(n)),
                Err(_) => bad(format!("`{value}` is not an integer")),
            },
            TraitKind::Time => match rfc3339_micros(value).and_then(DateTime::from_timestamp_micros) {
                // Stored traits are in this exact form, so text order is time order.
                Some(t) => Some(Value::Text(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))),
                None => bad(format!("`{value}` is not an RFC 3339 time")),
            },
            TraitKind::Text => Some(Value::Text(value.to_owned())),
        },
        Subject::Activity(a) if a.measure == ActivityMeasure::OrderTotal => match parse_money(value) {
            Some(m) => Some(Value::Int(m)),
            None => bad(format!("`{value}` is not an amount in whole units, such as 1000 or 99.5")),
        },
        Subject::Activity(_) => match value.parse::<i64>() {
            Ok(n) => Some(Value::Int(n)),
            Err(_) => bad(format!("`{value}` is not an integer")),
        },
        Subject::Tag(_) | Subject::MayContact { .. } => None,
    }
}

/// The rule as a proto tree (the canonical form of what was validated).
pub fn to_proto(r: &Rule) -> pb::SegmentRule {
    let kind = match r {
        Rule::All(rs) => Kind::AllOf(pb::SegmentRules {
            rules: rs.iter().map(to_proto).collect(),
        }),
        Rule::Any(rs) => Kind::AnyOf(pb::SegmentRules {
            rules: rs.iter().map(to_proto).collect(),
        }),
        Rule::Not(inner) => Kind::Not(Box::new(to_proto(inner))),
        Rule::Cond(c) => Kind::Condition(cond_to_proto(c)),
    };
    pb::SegmentRule { kind: Some(kind) }
}

/// The value as a person writes it.
pub fn value_text(s: &Subject, v: &Value) -> String {
    match (s, v) {
        (Subject::Enum(e), Value::Int(n)) => e.value_name(i32::try_from(*n).unwrap_or(0)),
        (Subject::RfmGroup, Value::Int(n)) => pb::RfmGroup::try_from(i32::try_from(*n).unwrap_or(0))
            .map_or("UNSPECIFIED", |g| g.as_str_name())
            .trim_start_matches("RFM_GROUP_")
            .to_owned(),
        (Subject::CreateTime, Value::Int(us)) => DateTime::from_timestamp_micros(*us)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            .unwrap_or_default(),
        (Subject::Rfm(RfmMeasure::Monetary), Value::Int(m)) => format_money(*m),
        (Subject::Activity(a), Value::Int(m)) if a.measure == ActivityMeasure::OrderTotal => format_money(*m),
        (_, Value::Int(n)) => n.to_string(),
        (_, Value::Text(t)) => t.clone(),
    }
}

fn cond_to_proto(c: &Cond) -> pb::SegmentCondition {
    let subject = match &c.subject {
        Subject::Enum(e) => PbSubject::Field(e.name().into()),
        Subject::Text(t) => PbSubject::Field((*t).into()),
        Subject::Attribute(k) => PbSubject::Field(format!("attributes.{k}")),
        Subject::CreateTime => PbSubject::Field("create_time".into()),
        Subject::Tag(t) => PbSubject::Tag(format!("tags/{t}")),
        Subject::RfmGroup => PbSubject::Rfm("group".into()),
        Subject::Rfm(m) => PbSubject::Rfm(m.name().into()),
        Subject::Trait { name, .. } => PbSubject::Trait(name.clone()),
        Subject::MayContact { purpose, channel } => PbSubject::MayContact(pb::ContactCheck {
            purpose: *purpose,
            channel: *channel,
        }),
        Subject::Activity(a) => PbSubject::Activity(pb::Activity {
            measure: a.measure as i32,
            interaction_kind: a.kind,
            category: a.category.clone(),
            window: Some(prost_types::Duration {
                seconds: i64::from(a.window_hours) * 3600,
                nanos: 0,
            }),
        }),
    };
    let (operator, value) = match &c.cmp {
        Some((op, v)) => (op.to_proto() as i32, value_text(&c.subject, v)),
        None => (0, String::new()),
    };
    pb::SegmentCondition {
        subject: Some(subject),
        operator,
        value,
    }
}

#[cfg(test)]
mod tests;
