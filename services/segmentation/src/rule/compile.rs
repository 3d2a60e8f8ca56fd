//! A rule as one SQL query over the projection, for PostgreSQL and SQLite.
//!
//! The query selects persons (`customers` rows not merged into another, not
//! deleted); every condition is a predicate on that row: a column comparison for
//! customer fields, `c.id IN (subquery)` for tags, RFM, traits, consent and activity.
//! `IN` over subqueries keeps the logic two-valued (a customer without an RFM row is
//! simply not in the set), so NOT means "does not match". An activity condition that
//! zero satisfies (`orders(30d) = 0`, `orders(30d) < 2`) is written as NOT IN the
//! persons whose count fails it, so persons with no rows at all match.

use crm_proto::crm::{customer::v1::ConsentStatus, segmentation::v1::ActivityMeasure};
use sea_orm::{DbBackend, Value as SqlValue};

use super::{Activity, Cond, Op, Rule, Subject, TraitKind, Value};

/// Which persons to evaluate.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Everyone (a preview, a full evaluation).
    All,
    /// Only these (an incremental evaluation).
    People(&'a [String]),
}

/// Order statuses that do not count (cancelled, refunded), as RFM and traits.
const NOT_COUNTED: &str = "status NOT IN (5, 6)";

struct Sql {
    backend: DbBackend,
    now_us: i64,
    currency: String,
    values: Vec<SqlValue>,
    scope_param: Option<SqlValue>,
}

impl Sql {
    fn bind(&mut self, v: impl Into<SqlValue>) -> &'static str {
        self.values.push(v.into());
        "?"
    }

    /// ` AND {column} in the scope`, or nothing for everyone.
    fn scope(&mut self, column: &str) -> String {
        match self.scope_param.clone() {
            None => String::new(),
            Some(p) => {
                self.values.push(p);
                match self.backend {
                    DbBackend::Postgres => format!(" AND {column} = ANY(string_to_array(?, chr(31)))"),
                    _ => format!(" AND {column} IN (SELECT value FROM json_each(?))"),
                }
            }
        }
    }

    /// Text comparisons order bytes on both backends.
    fn collate(&self) -> &'static str {
        if self.backend == DbBackend::Postgres {
            " COLLATE \"C\""
        } else {
            ""
        }
    }

    fn value(&mut self, v: &Value) -> &'static str {
        match v {
            Value::Int(n) => self.bind(*n),
            Value::Text(t) => self.bind(t.as_str()),
        }
    }

    fn expr(&mut self, r: &Rule) -> String {
        match r {
            Rule::All(rs) => format!("({})", rs.iter().map(|r| self.expr(r)).collect::<Vec<_>>().join(" AND ")),
            Rule::Any(rs) => format!("({})", rs.iter().map(|r| self.expr(r)).collect::<Vec<_>>().join(" OR ")),
            Rule::Not(inner) => format!("NOT {}", self.expr(inner)),
            Rule::Cond(c) => self.cond(c),
        }
    }

    fn cond(&mut self, c: &Cond) -> String {
        let cmp = c.cmp.clone();
        let (op, v) = match &cmp {
            Some((op, v)) => (*op, Some(v)),
            None => (Op::Eq, None),
        };
        let o = op.sql();
        match (&c.subject, v) {
            (Subject::Enum(e), Some(v)) => format!("(c.{} {o} {})", e.column(), self.value(v)),
            (Subject::Text(col), Some(v)) => format!("(c.{col}{} {o} {})", self.collate(), self.value(v)),
            (Subject::CreateTime, Some(v)) => format!("(c.create_us {o} {})", self.value(v)),
            (Subject::Attribute(key), Some(v)) => {
                let path = match self.backend {
                    DbBackend::Postgres => {
                        let k = self.bind(key.as_str());
                        format!("(c.attributes::jsonb ->> {k}){}", self.collate())
                    }
                    _ => {
                        let k = self.bind(format!("$.\"{key}\""));
                        format!("json_extract(c.attributes, {k})")
                    }
                };
                format!("COALESCE({path} {o} {}, FALSE)", self.value(v))
            }
            (Subject::Tag(tag), _) => {
                let t = self.bind(tag.as_str());
                let scope = self.scope("customer_id");
                format!("c.id IN (SELECT customer_id FROM customer_tags WHERE tag_id = {t}{scope})")
            }
            (Subject::RfmGroup, Some(v)) => {
                let g = self.value(v);
                let scope = self.scope("person_id");
                format!("c.id IN (SELECT person_id FROM rfm WHERE rfm_group {o} {g}{scope})")
            }
            (Subject::Rfm(m), Some(v)) => {
                let n = self.value(v);
                let scope = self.scope("person_id");
                format!("c.id IN (SELECT person_id FROM rfm WHERE {} {o} {n}{scope})", m.column())
            }
            (Subject::Trait { name, kind }, Some(v)) => {
                let n = self.bind(name.as_str());
                let lhs = match kind {
                    TraitKind::Integer => "CAST(value AS BIGINT)".to_owned(),
                    _ => format!("value{}", self.collate()),
                };
                let x = self.value(v);
                let scope = self.scope("person_id");
                format!("c.id IN (SELECT person_id FROM traits WHERE name = {n} AND {lhs} {o} {x}{scope})")
            }
            (Subject::MayContact { purpose, channel }, _) => self.may_contact(*purpose, *channel),
            (Subject::Activity(a), Some(Value::Int(n))) => self.activity(a, op, *n),
            // Validation pairs every subject with its value kind.
            _ => "FALSE".into(),
        }
    }

    /// The shared consent rule (`crm_platform::consent::may_contact`) over the
    /// projection's statements in force: of the latest statement for the channel and
    /// the one for every channel, the more recent decides (a tie goes to the
    /// channel's); it must be granted, in effect and unexpired.
    fn may_contact(&mut self, purpose: i32, channel: i32) -> String {
        let granted = ConsentStatus::Granted as i32;
        let p = self.bind(purpose);
        let ch = self.bind(channel);
        let now1 = self.bind(self.now_us);
        let g = self.bind(granted);
        let now2 = self.bind(self.now_us);
        let ch2 = self.bind(channel);
        let now3 = self.bind(self.now_us);
        let ch3 = self.bind(channel);
        let scope = self.scope("d.customer_id");
        format!(
            "c.id IN (SELECT d.customer_id FROM consents d WHERE d.purpose = {p} AND d.channel IN ({ch}, 0) \
             AND d.effective_us <= {now1} AND d.status = {g} AND (d.expire_us IS NULL OR d.expire_us > {now2}) \
             AND NOT EXISTS (SELECT 1 FROM consents e WHERE e.customer_id = d.customer_id AND e.purpose = d.purpose \
             AND e.channel IN ({ch2}, 0) AND e.channel <> d.channel AND e.effective_us <= {now3} \
             AND (e.effective_us > d.effective_us OR (e.effective_us = d.effective_us AND e.channel = {ch3}))){scope})"
        )
    }

    fn activity(&mut self, a: &Activity, op: Op, n: i64) -> String {
        let since = self.now_us - i64::from(a.window_hours) * 3_600_000_000;
        let (table, filter, aggregate) = match a.measure {
            ActivityMeasure::Interactions => {
                let k = self.bind(a.kind);
                let s = self.bind(since);
                let mut f = format!("kind = {k} AND occur_us >= {s}");
                if !a.category.is_empty() {
                    let c = self.bind(a.category.as_str());
                    f.push_str(&format!(" AND category = {c}"));
                }
                ("interactions", f, "COUNT(*)")
            }
            ActivityMeasure::OrderTotal => {
                let s = self.bind(since);
                let cur = self.bind(self.currency.clone());
                (
                    "orders",
                    format!("place_us >= {s} AND currency = {cur} AND {NOT_COUNTED}"),
                    "SUM(total_micros)",
                )
            }
            _ => {
                let s = self.bind(since);
                let mut f = format!("place_us >= {s} AND {NOT_COUNTED}");
                if !a.category.is_empty() {
                    // `categories` is a JSON array of strings: look for the quoted one.
                    let quoted = serde_json::to_string(&a.category).unwrap_or_default();
                    let q = self.bind(quoted);
                    let find = if self.backend == DbBackend::Postgres {
                        "strpos"
                    } else {
                        "instr"
                    };
                    f.push_str(&format!(" AND {find}(categories, {q}) > 0"));
                }
                ("orders", f, "COUNT(*)")
            }
        };
        let scope = self.scope("person_id");
        let o = op.sql();
        let v = self.bind(n);
        if op.holds(&0, &n) {
            // Zero satisfies it: everyone but those whose (non-zero) measure fails it.
            format!(
                "(NOT c.id IN (SELECT person_id FROM {table} WHERE {filter}{scope} GROUP BY person_id HAVING NOT ({aggregate} {o} {v})))"
            )
        } else {
            format!("c.id IN (SELECT person_id FROM {table} WHERE {filter}{scope} GROUP BY person_id HAVING {aggregate} {o} {v})")
        }
    }
}

/// The query selecting the persons matching `rule` at `now_us` (column `id`), and its
/// parameters (`?` placeholders, for `crm_platform::db::query`).
pub fn compile(rule: &Rule, backend: DbBackend, now_us: i64, currency: &str, scope: Scope<'_>) -> (String, Vec<SqlValue>) {
    let scope_param = match scope {
        Scope::All => None,
        Scope::People(ids) => Some(match backend {
            DbBackend::Postgres => SqlValue::from(ids.join("\u{1f}")),
            _ => SqlValue::from(serde_json::to_string(ids).unwrap_or_else(|_| "[]".into())),
        }),
    };
    let mut sql = Sql {
        backend,
        now_us,
        currency: currency.to_owned(),
        values: Vec::new(),
        scope_param,
    };
    let scope = sql.scope("c.id");
    let expr = sql.expr(rule);
    (
        // `merged_into IS NULL` is "is its own person" (`id = person_id`) in a form
        // the planner estimates from statistics (a column-to-column comparison is
        // guessed at 0.5 % and leads PostgreSQL into nested loops).
        format!("SELECT c.id AS id FROM customers c WHERE c.merged_into IS NULL AND c.deleted = 0{scope} AND {expr}"),
        sql.values,
    )
}
