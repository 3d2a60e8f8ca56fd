//! Journeys: a trigger enrols customers into a small graph of steps (send, wait,
//! branch, tag, webhook, exit); each customer's position is a row, advanced exactly
//! once by the scheduler ([`engine`]). A send step is a campaign of its own (id
//! `{journey}.{step}`, not listed among campaigns) whose deliveries go through the
//! campaign dispatcher, so every check and all tracking apply.

pub mod api;
pub mod churn;
pub mod engine;
pub mod manage;
pub mod store;

use std::{collections::HashMap, sync::Arc};

use crm_platform::{Error, FieldViolation, Result, feed::duration_micros};
use crm_proto::crm::{customer::v1 as cpb, segmentation::v1 as pb};

use crate::{campaigns, rule::Rule, tags::valid_id};

const MINUTE_US: i64 = 60_000_000;
const DAY_US: i64 = 86_400_000_000;

/// An event a trigger or a wait listens for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Interaction {
        kind: i32,
        category: String,
    },
    Order {
        category: String,
    },
    /// analytics' `ChurnRiskRaised`.
    ChurnRisk,
}

impl Event {
    fn from_proto(e: &pb::JourneyEvent, field: &str, v: &mut Vec<FieldViolation>) -> Option<Self> {
        match &e.event {
            Some(pb::journey_event::Event::Interaction(k)) => {
                if *k == 0 || cpb::InteractionKind::try_from(*k).is_err() {
                    v.push(FieldViolation::new(format!("{field}.interaction"), "an interaction kind"));
                    return None;
                }
                Some(Self::Interaction {
                    kind: *k,
                    category: e.category.clone(),
                })
            }
            Some(pb::journey_event::Event::OrderPlaced(true)) => Some(Self::Order {
                category: e.category.clone(),
            }),
            Some(pb::journey_event::Event::ChurnRiskRaised(true)) => {
                if !e.category.is_empty() {
                    v.push(FieldViolation::new(
                        format!("{field}.category"),
                        "does not apply to churn_risk_raised",
                    ));
                }
                Some(Self::ChurnRisk)
            }
            _ => {
                v.push(FieldViolation::new(
                    field,
                    "required: `interaction`, `order_placed` or `churn_risk_raised`",
                ));
                None
            }
        }
    }

    /// Whether an interaction (kind, category) or an order (its categories) is this.
    pub fn matches_interaction(&self, kind: i32, category: &str) -> bool {
        matches!(self, Self::Interaction { kind: k, category: c } if *k == kind && (c.is_empty() || c == category))
    }

    pub fn matches_order(&self, categories: &[String]) -> bool {
        matches!(self, Self::Order { category } if category.is_empty() || categories.contains(category))
    }
}

/// What enrols customers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    Segment(String),
    Event(Event),
    Date { attribute: String, days_before: u32 },
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Queues a delivery of the step's campaign.
    Send {
        next: String,
    },
    Wait {
        duration_us: i64,
        until: Option<Event>,
        next: String,
        timeout_next: String,
    },
    Branch {
        rule: Arc<Rule>,
        if_true: String,
        if_false: String,
    },
    Tag {
        tag: String,
        remove: bool,
        next: String,
    },
    Webhook {
        url: String,
        next: String,
    },
    Exit,
}

/// A journey's validated settings.
#[derive(Debug, Clone)]
pub struct Definition {
    pub trigger: Trigger,
    /// In order; the first is where customers start.
    pub steps: Vec<(String, Action)>,
    index: HashMap<String, usize>,
    pub reentry_after_exit: bool,
    pub cooldown_us: i64,
    pub zone: chrono_tz::Tz,
}

impl Definition {
    pub fn first(&self) -> &str {
        self.steps.first().map_or("", |(id, _)| id.as_str())
    }

    pub fn step(&self, id: &str) -> Option<&Action> {
        self.index.get(id).map(|i| &self.steps[*i].1)
    }
}

/// The campaign id of a journey's send step.
pub fn step_campaign(journey: &str, step: &str) -> String {
    format!("{journey}.{step}")
}

/// The settings of a send step's campaign.
pub fn step_campaign_settings(j: &pb::Journey, step: &pb::JourneyStep, send: &pb::SendStep) -> pb::Campaign {
    pb::Campaign {
        display_name: format!("{} / {}", j.display_name, step.id).chars().take(100).collect(),
        channel: send.channel,
        purpose: j.purpose,
        message: send.message.clone(),
        schedule: Some(pb::Schedule {
            default_time_zone: j.time_zone.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Validates a journey, reporting every problem at once under `field`.
pub fn validate(
    j: &pb::Journey,
    field: &str,
    rules: &crate::rule::Context,
    traits: &dyn Fn(&str) -> bool,
    cfg: &campaigns::CampaignsConfig,
) -> Result<Definition> {
    let mut v = Vec::new();
    let f = |name: &str| format!("{field}.{name}");
    if !(1..=100).contains(&j.display_name.chars().count()) {
        v.push(FieldViolation::new(f("display_name"), "required, 1 to 100 characters"));
    }
    if j.description.chars().count() > 1000 {
        v.push(FieldViolation::new(f("description"), "at most 1000 characters"));
    }
    let trigger = match j.trigger.as_ref().and_then(|t| t.trigger.as_ref()) {
        Some(pb::journey_trigger::Trigger::SegmentEntered(s)) => match s.strip_prefix("segments/").filter(|id| valid_id(id)) {
            Some(id) => Some(Trigger::Segment(id.to_owned())),
            None => {
                v.push(FieldViolation::new(
                    f("trigger.segment_entered"),
                    "must be `segments/{segment}`",
                ));
                None
            }
        },
        Some(pb::journey_trigger::Trigger::Event(e)) => Event::from_proto(e, &f("trigger.event"), &mut v).map(Trigger::Event),
        Some(pb::journey_trigger::Trigger::Date(d)) => {
            let key_ok = d.attribute.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && d.attribute
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !key_ok {
                v.push(FieldViolation::new(
                    f("trigger.date.attribute"),
                    "an attribute key such as `birthday`",
                ));
            }
            if !(0..=60).contains(&d.days_before) {
                v.push(FieldViolation::new(f("trigger.date.days_before"), "0 to 60"));
            }
            Some(Trigger::Date {
                attribute: d.attribute.clone(),
                days_before: u32::try_from(d.days_before).unwrap_or(0),
            })
        }
        None => {
            v.push(FieldViolation::new(
                f("trigger"),
                "required: `segment_entered`, `event` or `date`",
            ));
            None
        }
    };
    if j.steps.is_empty() || j.steps.len() > 50 {
        v.push(FieldViolation::new(f("steps"), "1 to 50 steps"));
    }
    let mut index = HashMap::new();
    for (i, s) in j.steps.iter().enumerate() {
        if !valid_id(&s.id) {
            v.push(FieldViolation::new(
                format!("{}[{i}].id", f("steps")),
                "1 to 63 of [a-z0-9_-], starting with a letter",
            ));
        } else if index.insert(s.id.clone(), i).is_some() {
            v.push(FieldViolation::new(
                format!("{}[{i}].id", f("steps")),
                "used by an earlier step",
            ));
        }
    }
    let mut steps = Vec::new();
    for (i, s) in j.steps.iter().enumerate() {
        let at = format!("{}[{i}]", f("steps"));
        let target = |name: &str, next: &str, required: bool, v: &mut Vec<FieldViolation>| {
            if next.is_empty() {
                if required {
                    v.push(FieldViolation::new(format!("{at}.{name}"), "required: a step id"));
                }
            } else if !index.contains_key(next) {
                v.push(FieldViolation::new(format!("{at}.{name}"), format!("no step `{next}`")));
            }
        };
        let action = match &s.action {
            Some(pb::journey_step::Action::Send(send)) => {
                target("send.next", &send.next, false, &mut v);
                let settings = step_campaign_settings(j, s, send);
                if let Err(Error::InvalidArgument(found)) =
                    campaigns::validate_with(&settings, &format!("{at}.send"), traits, cfg, false)
                {
                    // Only the send step's own fields: channel and message.
                    v.extend(
                        found
                            .into_iter()
                            .filter(|x| x.field.contains(".send.channel") || x.field.contains(".send.message")),
                    );
                }
                Action::Send { next: send.next.clone() }
            }
            Some(pb::journey_step::Action::Wait(w)) => {
                let duration = w.duration.as_ref().map(duration_micros).unwrap_or(0);
                if !(MINUTE_US..=90 * DAY_US).contains(&duration) {
                    v.push(FieldViolation::new(format!("{at}.wait.duration"), "1 minute to 90 days"));
                }
                let until = w
                    .until
                    .as_ref()
                    .and_then(|e| Event::from_proto(e, &format!("{at}.wait.until"), &mut v));
                target("wait.next", &w.next, false, &mut v);
                if w.until.is_some() {
                    target("wait.timeout_next", &w.timeout_next, false, &mut v);
                } else if !w.timeout_next.is_empty() {
                    v.push(FieldViolation::new(format!("{at}.wait.timeout_next"), "only with `until`"));
                }
                Action::Wait {
                    duration_us: duration,
                    until,
                    next: w.next.clone(),
                    timeout_next: w.timeout_next.clone(),
                }
            }
            Some(pb::journey_step::Action::Branch(b)) => {
                target("branch.if_true", &b.if_true, false, &mut v);
                target("branch.if_false", &b.if_false, false, &mut v);
                let rule = match crate::segments::resolve(None, &b.condition, rules, &format!("{at}.branch")) {
                    Ok(r) => Some(Arc::new(r)),
                    Err(Error::InvalidArgument(found)) => {
                        v.extend(found.into_iter().map(|mut x| {
                            x.field = x
                                .field
                                .replace(".branch.filter", ".branch.condition")
                                .replace(".branch.rule", ".branch.condition");
                            x
                        }));
                        None
                    }
                    Err(other) => return Err(other),
                };
                match rule {
                    Some(rule) => Action::Branch {
                        rule,
                        if_true: b.if_true.clone(),
                        if_false: b.if_false.clone(),
                    },
                    None => Action::Exit,
                }
            }
            Some(pb::journey_step::Action::Tag(t)) => {
                if t.tag.strip_prefix("tags/").is_none_or(|id| !valid_id(id)) {
                    v.push(FieldViolation::new(format!("{at}.tag.tag"), "must be `tags/{tag}`"));
                }
                target("tag.next", &t.next, false, &mut v);
                Action::Tag {
                    tag: t.tag.clone(),
                    remove: t.remove,
                    next: t.next.clone(),
                }
            }
            Some(pb::journey_step::Action::Webhook(w)) => {
                let ok = w
                    .url
                    .parse::<http::Uri>()
                    .ok()
                    .is_some_and(|u| u.scheme_str() == Some("http") && u.host().is_some_and(|h| !h.is_empty()));
                if !ok {
                    v.push(FieldViolation::new(
                        format!("{at}.webhook.url"),
                        "an http:// URL (reach https endpoints through an egress proxy)",
                    ));
                }
                target("webhook.next", &w.next, false, &mut v);
                Action::Webhook {
                    url: w.url.clone(),
                    next: w.next.clone(),
                }
            }
            Some(pb::journey_step::Action::Exit(_)) => Action::Exit,
            None => {
                v.push(FieldViolation::new(
                    format!("{at}.action"),
                    "required: send, wait, branch, tag, webhook or exit",
                ));
                Action::Exit
            }
        };
        steps.push((s.id.clone(), action));
    }
    let zone = if j.time_zone.is_empty() {
        cfg.zone()
    } else {
        campaigns::zone(&j.time_zone).unwrap_or_else(|| {
            v.push(FieldViolation::new(f("time_zone"), "an IANA time zone such as Asia/Shanghai"));
            chrono_tz::Tz::UTC
        })
    };
    let cooldown_us = j.reentry_cooldown.as_ref().map(duration_micros).unwrap_or(0);
    if !(0..=3650 * DAY_US).contains(&cooldown_us) {
        v.push(FieldViolation::new(f("reentry_cooldown"), "0 to 10 years"));
    }
    if pb::Reentry::try_from(j.reentry).is_err() {
        v.push(FieldViolation::new(f("reentry"), "NEVER or AFTER_EXIT"));
    }
    if j.purpose != 0 && cpb::ConsentPurpose::try_from(j.purpose).is_err() {
        v.push(FieldViolation::new(f("purpose"), "a consent purpose"));
    }
    let def = Definition {
        trigger: trigger.unwrap_or(Trigger::Segment(String::new())),
        steps,
        index,
        reentry_after_exit: j.reentry == pb::Reentry::AfterExit as i32,
        cooldown_us,
        zone,
    };
    if v.is_empty() {
        check_graph(&def, &f("steps"), &mut v);
    }
    if !v.is_empty() {
        return Err(Error::InvalidArgument(v));
    }
    Ok(def)
}

/// The steps a step leads to.
fn successors(a: &Action) -> Vec<&str> {
    let all = match a {
        Action::Send { next } | Action::Tag { next, .. } | Action::Webhook { next, .. } => vec![next.as_str()],
        Action::Wait { next, timeout_next, .. } => vec![next.as_str(), timeout_next.as_str()],
        Action::Branch { if_true, if_false, .. } => vec![if_true.as_str(), if_false.as_str()],
        Action::Exit => vec![],
    };
    all.into_iter().filter(|s| !s.is_empty()).collect()
}

/// Every step reachable from the first; no cycle that does not pass a wait (it
/// would run forever within one scheduler round).
fn check_graph(def: &Definition, field: &str, v: &mut Vec<FieldViolation>) {
    let n = def.steps.len();
    let mut reached = vec![false; n];
    let mut stack = vec![0usize];
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut reached[i], true) {
            continue;
        }
        for s in successors(&def.steps[i].1) {
            if let Some(j) = def.index.get(s) {
                stack.push(*j);
            }
        }
    }
    for (i, r) in reached.iter().enumerate() {
        if !r {
            v.push(FieldViolation::new(
                format!("{field}[{i}]"),
                format!("step `{}` cannot be reached from the first step", def.steps[i].0),
            ));
        }
    }
    // Depth-first search over the edges that leave steps other than waits.
    fn visit(def: &Definition, i: usize, state: &mut [u8]) -> bool {
        state[i] = 1;
        if !matches!(def.steps[i].1, Action::Wait { .. }) {
            for s in successors(&def.steps[i].1) {
                let Some(&j) = def.index.get(s) else { continue };
                if state[j] == 1 || (state[j] == 0 && visit(def, j, state)) {
                    return true;
                }
            }
        }
        state[i] = 2;
        false
    }
    let mut state = vec![0u8; n];
    for i in 0..n {
        if state[i] == 0 && visit(def, i, &mut state) {
            v.push(FieldViolation::new(field, "a cycle of steps without a wait step"));
            return;
        }
    }
    // A message goes out at most once per enrolment and step: a send step on a
    // cycle would be skipped silently the second time.
    for (i, (id, action)) in def.steps.iter().enumerate() {
        if !matches!(action, Action::Send { .. }) {
            continue;
        }
        let mut seen = vec![false; n];
        let mut stack: Vec<usize> = successors(action).iter().filter_map(|s| def.index.get(*s).copied()).collect();
        while let Some(j) = stack.pop() {
            if j == i {
                v.push(FieldViolation::new(
                    format!("{field}[{i}]"),
                    format!("send step `{id}` can be reached again in one enrolment; a customer gets a step's message once (use re-entry to repeat)"),
                ));
                break;
            }
            if std::mem::replace(&mut seen[j], true) {
                continue;
            }
            stack.extend(successors(&def.steps[j].1).iter().filter_map(|s| def.index.get(*s).copied()));
        }
    }
}

#[cfg(test)]
mod tests;
