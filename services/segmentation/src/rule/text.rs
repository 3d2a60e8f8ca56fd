//! The text form of a rule, in the style of AIP-160 filters:
//!
//! ```text
//! lifecycle_stage = CUSTOMER AND rfm.group = CHAMPIONS
//! interactions(product_view, 7d, "shoes") >= 3 AND orders(7d) = 0
//! NOT tags:"dormant" AND (may_contact(marketing, sms) OR may_contact(marketing, email))
//! ```
//!
//! As in AIP-160, `OR` binds tighter than `AND` (`a AND b OR c` is `a AND (b OR c)`),
//! `NOT` and `-` negate, and keywords are upper case. The canonical text (what
//! [`print`] writes) puts every nested group in parentheses.

use crm_platform::error::FieldViolation;
use crm_proto::crm::{
    customer::v1::{ConsentPurpose, ContactChannel, InteractionKind},
    segmentation::v1::{
        self as pb, ActivityMeasure, ConditionOperator, segment_condition::Subject as PbSubject, segment_rule::Kind,
    },
};

use super::{Cond, Rule, Subject, TraitKind, value_text};

/// Longest text accepted.
pub const MAX_LEN: usize = 10_000;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Comma,
    Op(ConditionOperator),
    Has,
    And,
    Or,
    Not,
    Minus,
    Word(String),
    Str(String),
    End,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::Comma => "`,`".into(),
        Tok::Op(_) | Tok::Has => "an operator".into(),
        Tok::And => "`AND`".into(),
        Tok::Or => "`OR`".into(),
        Tok::Not => "`NOT`".into(),
        Tok::Minus => "`-`".into(),
        Tok::Word(w) => format!("`{w}`"),
        Tok::Str(s) => format!("\"{s}\""),
        Tok::End => "the end".into(),
    }
}

/// A problem at a column (1-based, in characters).
#[derive(Debug)]
struct Problem(usize, String);

fn lex(text: &str) -> Result<Vec<(Tok, usize)>, Problem> {
    let chars: Vec<char> = text.chars().collect();
    let mut out: Vec<(Tok, usize)> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let after_op = matches!(out.last(), Some((Tok::Op(_), _)));
        let tok = match c {
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            ',' => Tok::Comma,
            ':' => Tok::Has,
            '=' => Tok::Op(ConditionOperator::Equal),
            '!' if chars.get(i + 1) == Some(&'=') => {
                i += 1;
                Tok::Op(ConditionOperator::NotEqual)
            }
            '<' | '>' => {
                let eq = chars.get(i + 1) == Some(&'=');
                if eq {
                    i += 1;
                }
                Tok::Op(match (c, eq) {
                    ('<', false) => ConditionOperator::Less,
                    ('<', true) => ConditionOperator::LessOrEqual,
                    (_, false) => ConditionOperator::Greater,
                    (_, true) => ConditionOperator::GreaterOrEqual,
                })
            }
            '-' if !after_op => Tok::Minus,
            '"' | '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(Problem(col, "a quoted text is not closed".into())),
                        Some(q) if *q == c => break,
                        Some('\\') => {
                            match chars.get(i + 1) {
                                Some(e @ ('"' | '\'' | '\\')) => s.push(*e),
                                _ => return Err(Problem(i + 1, "only \\\", \\' and \\\\ escape in quoted text".into())),
                            }
                            i += 2;
                            continue;
                        }
                        Some(ch) => s.push(*ch),
                    }
                    i += 1;
                }
                Tok::Str(s)
            }
            c if c.is_alphanumeric() || c == '_' || c == '-' => {
                let start = i;
                while i + 1 < chars.len() && (chars[i + 1].is_alphanumeric() || matches!(chars[i + 1], '_' | '.' | '-')) {
                    i += 1;
                }
                let w: String = chars[start..=i].iter().collect();
                match w.as_str() {
                    "AND" => Tok::And,
                    "OR" => Tok::Or,
                    "NOT" => Tok::Not,
                    _ => Tok::Word(w),
                }
            }
            other => return Err(Problem(col, format!("unexpected `{other}`"))),
        };
        out.push((tok, col));
        i += 1;
    }
    out.push((Tok::End, chars.len() + 1));
    Ok(out)
}

/// The parsed tree before paths are known.
enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
    Cond(pb::SegmentCondition, usize),
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].0
    }

    fn col(&self) -> usize {
        self.toks[self.at].1
    }

    fn next(&mut self) -> (Tok, usize) {
        let t = self.toks[self.at].clone();
        if self.at + 1 < self.toks.len() {
            self.at += 1;
        }
        t
    }

    fn expect(&mut self, want: &Tok, what: &str) -> Result<(), Problem> {
        if self.peek() == want {
            self.next();
            Ok(())
        } else {
            Err(Problem(
                self.col(),
                format!("expected {what}, found {}", describe(self.peek())),
            ))
        }
    }

    fn expression(&mut self, depth: usize) -> Result<Node, Problem> {
        if depth > super::MAX_DEPTH {
            return Err(Problem(self.col(), format!("nested deeper than {} levels", super::MAX_DEPTH)));
        }
        let mut items = vec![self.factor(depth)?];
        while self.peek() == &Tok::And {
            self.next();
            items.push(self.factor(depth)?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Node::All(items) })
    }

    fn factor(&mut self, depth: usize) -> Result<Node, Problem> {
        let mut items = vec![self.term(depth)?];
        while self.peek() == &Tok::Or {
            self.next();
            items.push(self.term(depth)?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Node::Any(items) })
    }

    fn term(&mut self, depth: usize) -> Result<Node, Problem> {
        if matches!(self.peek(), Tok::Not | Tok::Minus) {
            self.next();
            return Ok(Node::Not(Box::new(self.term(depth + 1)?)));
        }
        if self.peek() == &Tok::LParen {
            self.next();
            let inner = self.expression(depth + 1)?;
            self.expect(&Tok::RParen, "`)`")?;
            return Ok(inner);
        }
        self.restriction()
    }

    fn value(&mut self) -> Result<String, Problem> {
        match self.next() {
            (Tok::Word(w) | Tok::Str(w), _) => Ok(w),
            (t, col) => Err(Problem(col, format!("expected a value, found {}", describe(&t)))),
        }
    }

    fn args(&mut self) -> Result<Vec<(String, usize)>, Problem> {
        self.expect(&Tok::LParen, "`(`")?;
        let mut args = Vec::new();
        if self.peek() == &Tok::RParen {
            self.next();
            return Ok(args);
        }
        loop {
            let col = self.col();
            args.push((self.value()?, col));
            match self.next() {
                (Tok::Comma, _) => {}
                (Tok::RParen, _) => return Ok(args),
                (t, col) => return Err(Problem(col, format!("expected `,` or `)`, found {}", describe(&t)))),
            }
        }
    }

    fn restriction(&mut self) -> Result<Node, Problem> {
        let (tok, col) = self.next();
        let Tok::Word(word) = tok else {
            return Err(Problem(col, format!("expected a condition, found {}", describe(&tok))));
        };
        let mut cond = pb::SegmentCondition::default();
        let is_call = self.peek() == &Tok::LParen;
        let needs_cmp = match (word.as_str(), is_call) {
            ("tags", false) => {
                self.expect(&Tok::Has, "`:` after `tags` (tags:\"high-value\")")?;
                cond.subject = Some(PbSubject::Tag(format!("tags/{}", self.value()?)));
                false
            }
            ("may_contact", true) => {
                let args = self.args()?;
                cond.subject = Some(PbSubject::MayContact(contact(&args, col)?));
                false
            }
            ("orders" | "order_total" | "interactions", true) => {
                let args = self.args()?;
                cond.subject = Some(PbSubject::Activity(activity(&word, &args, col)?));
                true
            }
            (_, true) => {
                return Err(Problem(
                    col,
                    format!("`{word}` is not a function: orders, order_total, interactions, may_contact"),
                ));
            }
            (w, false) => {
                cond.subject = Some(if let Some(m) = w.strip_prefix("rfm.") {
                    PbSubject::Rfm(m.into())
                } else if let Some(t) = w.strip_prefix("traits.") {
                    PbSubject::Trait(t.into())
                } else {
                    PbSubject::Field(w.into())
                });
                true
            }
        };
        if needs_cmp {
            match self.next() {
                (Tok::Op(op), _) => {
                    cond.operator = op as i32;
                    cond.value = self.value()?;
                }
                (Tok::Has, c) => return Err(Problem(c, "`:` is for tags only (tags:\"high-value\")".into())),
                (t, c) => {
                    return Err(Problem(
                        c,
                        format!(
                            "expected a comparison (=, !=, <, <=, >, >=) after `{word}`, found {}",
                            describe(&t)
                        ),
                    ));
                }
            }
        }
        Ok(Node::Cond(cond, col))
    }
}

fn enum_arg(text: &str, prefix: &str, lookup: impl Fn(&str) -> Option<i32>) -> Option<i32> {
    lookup(&format!("{prefix}{}", text.to_uppercase().trim_start_matches(prefix))).filter(|n| *n != 0)
}

fn contact(args: &[(String, usize)], col: usize) -> Result<pb::ContactCheck, Problem> {
    let (purpose, channel) = match args {
        [p] => (p, None),
        [p, c] => (p, Some(c)),
        _ => {
            return Err(Problem(
                col,
                "may_contact(purpose[, channel]), e.g. may_contact(marketing, sms)".into(),
            ));
        }
    };
    let p = enum_arg(&purpose.0, "CONSENT_PURPOSE_", |n| {
        ConsentPurpose::from_str_name(n).map(|v| v as i32)
    })
    .ok_or_else(|| {
        Problem(
            purpose.1,
            format!(
                "`{}` is not a consent purpose (marketing, analytics, profiling, third_party_sharing)",
                purpose.0
            ),
        )
    })?;
    let c = match channel {
        None => 0,
        Some((text, at)) => enum_arg(text, "CONTACT_CHANNEL_", |n| {
            ContactChannel::from_str_name(n).map(|v| v as i32)
        })
        .ok_or_else(|| {
            Problem(
                *at,
                format!("`{text}` is not a contact channel (sms, email, wechat, phone, app_push)"),
            )
        })?,
    };
    Ok(pb::ContactCheck { purpose: p, channel: c })
}

fn window(text: &str, at: usize) -> Result<prost_types::Duration, Problem> {
    let bad = || {
        Problem(
            at,
            format!("`{text}` is not a window: whole days or hours, such as 7d or 12h"),
        )
    };
    let (n, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = n.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "d" => n.checked_mul(86_400),
        "h" => n.checked_mul(3600),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok(prost_types::Duration { seconds, nanos: 0 })
}

fn activity(name: &str, args: &[(String, usize)], col: usize) -> Result<pb::Activity, Problem> {
    let mut a = pb::Activity::default();
    let rest = match name {
        "interactions" => {
            let Some((kind, at)) = args.first() else {
                return Err(Problem(
                    col,
                    "interactions(kind, window[, category]), e.g. interactions(product_view, 7d)".into(),
                ));
            };
            a.measure = ActivityMeasure::Interactions as i32;
            a.interaction_kind = enum_arg(kind, "INTERACTION_KIND_", |n| {
                InteractionKind::from_str_name(n).map(|v| v as i32)
            })
            .ok_or_else(|| {
                Problem(
                    *at,
                    format!("`{kind}` is not an interaction kind (page_view, product_view, cart, search, …)"),
                )
            })?;
            &args[1..]
        }
        "orders" => {
            a.measure = ActivityMeasure::Orders as i32;
            args
        }
        _ => {
            a.measure = ActivityMeasure::OrderTotal as i32;
            args
        }
    };
    let most = if name == "order_total" { 1 } else { 2 };
    if rest.is_empty() || rest.len() > most {
        let usage = match name {
            "interactions" => "interactions(kind, window[, category])",
            "orders" => "orders(window[, category])",
            _ => "order_total(window)",
        };
        return Err(Problem(
            col,
            format!(
                "{usage}, e.g. {}",
                usage
                    .replace("kind", "product_view")
                    .replace("window", "30d")
                    .replace("[, category]", "")
            ),
        ));
    }
    a.window = Some(window(&rest[0].0, rest[0].1)?);
    if let Some((category, _)) = rest.get(1) {
        a.category = category.clone();
    }
    Ok(a)
}

/// Where each condition of a parsed text starts: (its path in the tree, column).
pub type Spans = Vec<(String, usize)>;

fn to_pb(node: Node, path: &str, spans: &mut Spans) -> pb::SegmentRule {
    let here = |leaf: &str| {
        if path.is_empty() {
            leaf.to_owned()
        } else {
            format!("{path}.{leaf}")
        }
    };
    let kind = match node {
        Node::All(items) => {
            let p = here("all_of");
            Kind::AllOf(pb::SegmentRules {
                rules: items
                    .into_iter()
                    .enumerate()
                    .map(|(i, n)| to_pb(n, &format!("{p}.rules[{i}]"), spans))
                    .collect(),
            })
        }
        Node::Any(items) => {
            let p = here("any_of");
            Kind::AnyOf(pb::SegmentRules {
                rules: items
                    .into_iter()
                    .enumerate()
                    .map(|(i, n)| to_pb(n, &format!("{p}.rules[{i}]"), spans))
                    .collect(),
            })
        }
        Node::Not(inner) => Kind::Not(Box::new(to_pb(*inner, &here("not"), spans))),
        Node::Cond(c, col) => {
            spans.push((here("condition"), col));
            Kind::Condition(c)
        }
    };
    pb::SegmentRule { kind: Some(kind) }
}

/// Parses a text rule into a tree (not yet validated) and where each condition
/// starts; a syntax error is one violation of `field`, naming the column.
pub fn parse(text: &str, field: &str) -> Result<(pb::SegmentRule, Spans), FieldViolation> {
    let at = |Problem(col, message): Problem| FieldViolation::new(field, format!("at column {col}: {message}"));
    if text.trim().is_empty() {
        return Err(FieldViolation::new(field, "required: a rule such as `rfm.group = CHAMPIONS`"));
    }
    if text.len() > MAX_LEN {
        return Err(FieldViolation::new(field, format!("at most {MAX_LEN} bytes")));
    }
    let mut p = Parser {
        toks: lex(text).map_err(at)?,
        at: 0,
    };
    let node = p.expression(0).map_err(at)?;
    if p.peek() != &Tok::End {
        return Err(at(Problem(
            p.col(),
            format!("expected AND, OR or the end, found {}", describe(p.peek())),
        )));
    }
    let mut spans = Spans::new();
    let tree = to_pb(node, "", &mut spans);
    Ok((tree, spans))
}

/// Validation problems of a parsed text, pointed at the conditions' columns.
pub fn locate(violations: Vec<FieldViolation>, spans: &Spans, field: &str) -> Vec<FieldViolation> {
    violations
        .into_iter()
        .map(|v| {
            let place = spans
                .iter()
                .filter(|(path, _)| v.field == *path || v.field.starts_with(&format!("{path}.")))
                .max_by_key(|(path, _)| path.len());
            match place {
                Some((path, col)) => {
                    let part = v.field[path.len()..].trim_start_matches('.');
                    let part = if part.is_empty() {
                        String::new()
                    } else {
                        format!(" ({part})")
                    };
                    FieldViolation::new(field, format!("at column {col}{part}: {}", v.description))
                }
                None => FieldViolation::new(field, v.description),
            }
        })
        .collect()
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn lower_name(full: &str, prefix: &str) -> String {
    full.trim_start_matches(prefix).to_lowercase()
}

fn window_text(hours: u32) -> String {
    if hours.is_multiple_of(24) {
        format!("{}d", hours / 24)
    } else {
        format!("{hours}h")
    }
}

fn cond_text(c: &Cond) -> String {
    let subject = match &c.subject {
        Subject::Enum(e) => e.name().to_owned(),
        Subject::Text(t) => (*t).to_owned(),
        Subject::Attribute(k) => format!("attributes.{k}"),
        Subject::CreateTime => "create_time".into(),
        Subject::Tag(t) => return format!("tags:{}", quote(t)),
        Subject::RfmGroup => "rfm.group".into(),
        Subject::Rfm(m) => format!("rfm.{}", m.name()),
        Subject::Trait { name, .. } => format!("traits.{name}"),
        Subject::MayContact { purpose, channel } => {
            let p = ConsentPurpose::try_from(*purpose).map_or("", |p| p.as_str_name());
            let p = lower_name(p, "CONSENT_PURPOSE_");
            return match ContactChannel::try_from(*channel) {
                Ok(ch) if ch != ContactChannel::Unspecified => {
                    format!("may_contact({p}, {})", lower_name(ch.as_str_name(), "CONTACT_CHANNEL_"))
                }
                _ => format!("may_contact({p})"),
            };
        }
        Subject::Activity(a) => {
            let w = window_text(a.window_hours);
            let cat = if a.category.is_empty() {
                String::new()
            } else {
                format!(", {}", quote(&a.category))
            };
            match a.measure {
                ActivityMeasure::Interactions => {
                    let k = InteractionKind::try_from(a.kind).map_or("", |k| k.as_str_name());
                    format!("interactions({}, {w}{cat})", lower_name(k, "INTERACTION_KIND_"))
                }
                ActivityMeasure::OrderTotal => format!("order_total({w})"),
                _ => format!("orders({w}{cat})"),
            }
        }
    };
    let Some((op, v)) = &c.cmp else { return subject };
    let text = value_text(&c.subject, v);
    let bare = match &c.subject {
        Subject::Enum(_) | Subject::RfmGroup | Subject::Rfm(_) | Subject::Activity(_) => true,
        Subject::Trait { kind, .. } => *kind == TraitKind::Integer,
        _ => false,
    };
    format!("{subject} {} {}", op.text(), if bare { text } else { quote(&text) })
}

fn nested(r: &Rule) -> String {
    match r {
        Rule::All(_) | Rule::Any(_) => format!("({})", print(r)),
        _ => print(r),
    }
}

/// The canonical text of a rule.
pub fn print(r: &Rule) -> String {
    match r {
        Rule::All(rs) => rs.iter().map(nested).collect::<Vec<_>>().join(" AND "),
        Rule::Any(rs) => rs.iter().map(nested).collect::<Vec<_>>().join(" OR "),
        Rule::Not(inner) => format!("NOT {}", nested(inner)),
        Rule::Cond(c) => cond_text(c),
    }
}
