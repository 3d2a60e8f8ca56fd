//! The configuration the rules run on (agents, queues, routing rules, calendars, SLA
//! and escalation policies): validated from their protos into domain values, and
//! loaded together as a [`Directory`] for routing, SLA selection and escalation.

use std::collections::{BTreeSet, HashMap};

use chrono::{NaiveDate, NaiveTime};
use chrono_tz::Tz;
use crm_platform::{Error, FieldViolation, Result};
use crm_proto::crm::{common::v1::Channel, ticketing::v1 as pb};
use prost::Message;
use sea_orm::ConnectionTrait;

use crate::{
    domain::{
        calendar::{Calendar, Shift},
        escalation::{self, Action, Level, Org, Recipient},
        routing::{self, Conditions, Facts, Routed, Rule},
        sla::{Metric, Target},
        ticket::{Priority, Status},
    },
    store::{self, Kind},
};

pub fn priority(p: i32) -> Priority {
    match pb::Priority::try_from(p).unwrap_or(pb::Priority::Unspecified) {
        pb::Priority::Low => Priority::Low,
        pb::Priority::High => Priority::High,
        pb::Priority::Urgent => Priority::Urgent,
        pb::Priority::Normal | pb::Priority::Unspecified => Priority::Normal,
    }
}

pub fn priority_to_proto(p: Priority) -> pb::Priority {
    match p {
        Priority::Low => pb::Priority::Low,
        Priority::Normal => pb::Priority::Normal,
        Priority::High => pb::Priority::High,
        Priority::Urgent => pb::Priority::Urgent,
    }
}

pub fn status(s: i32) -> Option<Status> {
    Some(match pb::TicketStatus::try_from(s).ok()? {
        pb::TicketStatus::Unspecified => return None,
        pb::TicketStatus::New => Status::New,
        pb::TicketStatus::Open => Status::Open,
        pb::TicketStatus::PendingCustomer => Status::PendingCustomer,
        pb::TicketStatus::OnHold => Status::OnHold,
        pb::TicketStatus::Solved => Status::Solved,
        pb::TicketStatus::Closed => Status::Closed,
    })
}

pub fn status_to_proto(s: Status) -> pb::TicketStatus {
    match s {
        Status::New => pb::TicketStatus::New,
        Status::Open => pb::TicketStatus::Open,
        Status::PendingCustomer => pb::TicketStatus::PendingCustomer,
        Status::OnHold => pb::TicketStatus::OnHold,
        Status::Solved => pb::TicketStatus::Solved,
        Status::Closed => pb::TicketStatus::Closed,
    }
}

pub fn metric(m: i32) -> Option<Metric> {
    match pb::SlaMetric::try_from(m).ok()? {
        pb::SlaMetric::FirstResponse => Some(Metric::FirstResponse),
        pb::SlaMetric::NextResponse => Some(Metric::NextResponse),
        pb::SlaMetric::Resolution => Some(Metric::Resolution),
        pb::SlaMetric::Unspecified => None,
    }
}

pub fn metric_to_proto(m: Metric) -> pb::SlaMetric {
    match m {
        Metric::FirstResponse => pb::SlaMetric::FirstResponse,
        Metric::NextResponse => pb::SlaMetric::NextResponse,
        Metric::Resolution => pb::SlaMetric::Resolution,
    }
}

/// `channel_name(CHANNEL_WECHAT)` = `wechat`: how rules and reports name channels.
pub fn channel_name(c: i32) -> String {
    Channel::try_from(c)
        .map(|c| c.as_str_name().trim_start_matches("CHANNEL_").to_ascii_lowercase())
        .unwrap_or_default()
}

fn hh_mm(text: &str) -> Option<NaiveTime> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    NaiveTime::from_hms_opt(h.parse().ok()?, m.parse().ok()?, 0)
}

/// A calendar proto as a domain calendar, or every problem with it.
pub fn calendar(c: &pb::Calendar) -> Result<Calendar> {
    let mut bad = Vec::new();
    let tz: Option<Tz> = c.time_zone.parse().ok();
    if tz.is_none() {
        bad.push(FieldViolation::new(
            "time_zone",
            format!("`{}` is not an IANA time zone such as Asia/Shanghai", c.time_zone),
        ));
    }
    let mut week: [Vec<Shift>; 7] = std::array::from_fn(|_| Vec::new());
    for (i, s) in c.shifts.iter().enumerate() {
        let day = match pb::Weekday::try_from(s.day) {
            Ok(pb::Weekday::Unspecified) | Err(_) => {
                bad.push(FieldViolation::new(format!("shifts[{i}].day"), "required"));
                continue;
            }
            Ok(d) => d as usize - 1,
        };
        match (hh_mm(&s.start), hh_mm(&s.end)) {
            (Some(start), Some(end)) => week[day].push(Shift::new(start, end)),
            (start, _) => bad.push(FieldViolation::new(
                format!("shifts[{i}].{}", if start.is_none() { "start" } else { "end" }),
                "must be a local time HH:MM",
            )),
        }
    }
    if c.holidays.len() > 1000 {
        bad.push(FieldViolation::new("holidays", "at most 1000"));
    }
    let mut holidays = BTreeSet::new();
    for (i, h) in c.holidays.iter().enumerate() {
        match NaiveDate::parse_from_str(h, "%Y-%m-%d") {
            Ok(d) => {
                holidays.insert(d);
            }
            Err(_) => bad.push(FieldViolation::new(format!("holidays[{i}]"), "must be a date YYYY-MM-DD")),
        }
    }
    if !bad.is_empty() {
        return Err(Error::InvalidArgument(bad));
    }
    Calendar::new(tz.unwrap_or(Tz::UTC), week, holidays).map_err(|e| Error::invalid("shifts", e.to_string()))
}

/// An SLA policy's targets, or every problem with them.
pub fn sla_targets(p: &pb::SlaPolicy) -> Result<Vec<Target>> {
    let mut bad = Vec::new();
    let mut targets: Vec<Target> = Vec::new();
    for (i, t) in p.targets.iter().enumerate() {
        let Some(m) = metric(t.metric) else {
            bad.push(FieldViolation::new(format!("targets[{i}].metric"), "required"));
            continue;
        };
        if targets.iter().any(|x| x.metric == m) {
            bad.push(FieldViolation::new(
                format!("targets[{i}].metric"),
                "each metric at most once per policy",
            ));
        }
        let secs = t.within.as_ref().map_or(0, |d| d.seconds);
        if !(1..=365 * 86_400).contains(&secs) || t.within.as_ref().is_some_and(|d| d.nanos != 0) {
            bad.push(FieldViolation::new(
                format!("targets[{i}].within"),
                "whole seconds from 1 second to 365 days",
            ));
        }
        targets.push(Target {
            metric: m,
            within: chrono::Duration::seconds(secs),
            business_hours: t.business_hours,
        });
    }
    if p.targets.is_empty() {
        bad.push(FieldViolation::new("targets", "at least one"));
    }
    if targets.iter().any(|t| t.business_hours) && p.calendar.is_empty() {
        bad.push(FieldViolation::new(
            "calendar",
            "required when a target counts business hours",
        ));
    }
    if bad.is_empty() {
        Ok(targets)
    } else {
        Err(Error::InvalidArgument(bad))
    }
}

/// An escalation policy proto as domain levels, or every problem with it.
pub fn escalation_policy(p: &pb::EscalationPolicy) -> Result<escalation::Policy> {
    let mut bad = Vec::new();
    if p.levels.len() > 20 {
        bad.push(FieldViolation::new("levels", "at most 20"));
    }
    let mut levels = Vec::new();
    for (i, l) in p.levels.iter().enumerate() {
        if !(1..=1000).contains(&l.percent) {
            bad.push(FieldViolation::new(format!("levels[{i}].percent"), "1 to 1000"));
        }
        if !(0..=10).contains(&l.depth) {
            bad.push(FieldViolation::new(format!("levels[{i}].depth"), "1 to 10 (0 means 1)"));
        }
        if l.actions.is_empty() {
            bad.push(FieldViolation::new(format!("levels[{i}].actions"), "at least one"));
        }
        let mut actions = Vec::new();
        for (j, a) in l.actions.iter().enumerate() {
            match pb::EscalationAction::try_from(*a) {
                Ok(pb::EscalationAction::NotifyAssignee) => actions.push(Action::Notify(Recipient::Assignee)),
                Ok(pb::EscalationAction::NotifySupervisor) => actions.push(Action::Notify(Recipient::Supervisor)),
                Ok(pb::EscalationAction::RaisePriority) => actions.push(Action::RaisePriority),
                Ok(pb::EscalationAction::ReassignToSupervisor) => actions.push(Action::ReassignToSupervisor),
                _ => bad.push(FieldViolation::new(format!("levels[{i}].actions[{j}]"), "unknown action")),
            }
        }
        levels.push(Level {
            metric: metric(l.metric),
            percent: u32::try_from(l.percent).unwrap_or(0),
            depth: u32::try_from(l.depth.max(1)).unwrap_or(1),
            actions,
        });
    }
    if bad.is_empty() {
        Ok(escalation::Policy { levels })
    } else {
        Err(Error::InvalidArgument(bad))
    }
}

fn conditions(c: Option<&pb::TicketConditions>) -> Conditions {
    let Some(c) = c else {
        return Conditions::default();
    };
    Conditions {
        channels: c.channels.iter().map(|ch| channel_name(*ch)).collect(),
        categories: c.categories.clone(),
        priorities: c.priorities.iter().map(|p| priority(*p)).collect(),
        customer_tiers: c.customer_tiers.clone(),
        keywords: c.keywords.clone(),
    }
}

/// Everything routing, SLA selection and escalation read, loaded in one go.
#[derive(Debug, Default)]
pub struct Directory {
    pub agents: Vec<pb::Agent>,
    queues: HashMap<String, pb::Queue>,
    rules: Vec<Rule>,
    /// Every routing rule, disabled ones too (references).
    all_rules: Vec<pb::RoutingRule>,
    calendars: HashMap<String, Calendar>,
    sla_policies: Vec<pb::SlaPolicy>,
    escalations: HashMap<String, escalation::Policy>,
}

fn decode_all<M: Message + Default>(rows: Vec<store::Row>) -> Result<Vec<M>> {
    rows.iter()
        .map(|r| M::decode(r.data.as_slice()).map_err(Error::internal))
        .collect()
}

impl Directory {
    pub async fn load<C: ConnectionTrait>(c: &C) -> Result<Self> {
        let agents: Vec<pb::Agent> = decode_all(store::all_objects(c, Kind::Agent).await?)?;
        let queues: Vec<pb::Queue> = decode_all(store::all_objects(c, Kind::Queue).await?)?;
        let all_rules: Vec<pb::RoutingRule> = decode_all(store::all_objects(c, Kind::RoutingRule).await?)?;
        let mut rules: Vec<pb::RoutingRule> = all_rules.iter().filter(|r| !r.disabled).cloned().collect();
        rules.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.name.cmp(&b.name)));
        let calendars: Vec<pb::Calendar> = decode_all(store::all_objects(c, Kind::Calendar).await?)?;
        let mut sla_policies: Vec<pb::SlaPolicy> = decode_all(store::all_objects(c, Kind::SlaPolicy).await?)?;
        sla_policies.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.name.cmp(&b.name)));
        let escalations: Vec<pb::EscalationPolicy> = decode_all(store::all_objects(c, Kind::EscalationPolicy).await?)?;
        Ok(Self {
            agents,
            queues: queues.into_iter().map(|q| (q.name.clone(), q)).collect(),
            rules: rules
                .into_iter()
                .map(|r| Rule {
                    name: r.name.clone(),
                    conditions: conditions(r.conditions.as_ref()),
                    queue: r.queue.clone(),
                    required_skills: r.required_skills.clone(),
                })
                .collect(),
            all_rules,
            // Stored calendars and policies were validated on write.
            calendars: calendars
                .iter()
                .filter_map(|c| Some((c.name.clone(), calendar(c).ok()?)))
                .collect(),
            sla_policies,
            escalations: escalations
                .iter()
                .filter_map(|p| Some((p.name.clone(), escalation_policy(p).ok()?)))
                .collect(),
        })
    }

    pub fn route(&self, facts: &Facts, default_queue: &str) -> Routed {
        routing::route(&self.rules, facts, default_queue)
    }

    /// The first SLA policy (in order) whose conditions the ticket meets.
    pub fn sla_policy(&self, t: &pb::Ticket) -> Option<&pb::SlaPolicy> {
        let facts = Facts {
            channel: "",
            category: &t.category,
            priority: priority(t.priority),
            customer_tier: &t.customer_tier,
            subject: "",
            description: "",
        };
        self.sla_policies.iter().find(|p| {
            // Channels and keywords are not SLA conditions.
            let mut c = conditions(p.conditions.as_ref());
            c.channels.clear();
            c.keywords.clear();
            let rule = Rule {
                name: String::new(),
                conditions: c,
                queue: String::new(),
                required_skills: Vec::new(),
            };
            routing::route(std::slice::from_ref(&rule), &facts, "").rule.is_some()
        })
    }

    pub fn sla_policy_named(&self, name: &str) -> Option<&pb::SlaPolicy> {
        self.sla_policies.iter().find(|p| p.name == name)
    }

    /// The business calendar of a policy (elapsed time when it names none).
    pub fn calendar_of(&self, policy: Option<&pb::SlaPolicy>) -> Calendar {
        policy
            .and_then(|p| self.calendars.get(&p.calendar))
            .cloned()
            .unwrap_or_else(Calendar::always)
    }

    pub fn escalation_of(&self, policy: Option<&pb::SlaPolicy>) -> Option<&escalation::Policy> {
        self.escalations.get(&policy?.escalation_policy)
    }

    /// The permissions team of a queue (empty when it has none).
    pub fn queue_team(&self, queue: &str) -> &str {
        self.queues.get(queue).map_or("", |q| q.team.as_str())
    }

    /// The queues worked by any of `teams`.
    pub fn queues_of_teams(&self, teams: &[String]) -> Vec<String> {
        self.queues
            .values()
            .filter(|q| !q.team.is_empty() && teams.contains(&q.team))
            .map(|q| q.name.clone())
            .collect()
    }

    /// The configuration objects that refer to `name`, by name.
    pub fn referrers(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for a in &self.agents {
            if a.supervisor == name || a.queues.iter().any(|q| q == name) {
                out.push(a.name.clone());
            }
        }
        for q in self.queues.values() {
            if q.supervisor == name {
                out.push(q.name.clone());
            }
        }
        for r in &self.all_rules {
            if r.queue == name {
                out.push(r.name.clone());
            }
        }
        for p in &self.sla_policies {
            if p.calendar == name || p.escalation_policy == name {
                out.push(p.name.clone());
            }
        }
        out.sort();
        out
    }

    pub fn has(&self, kind: Kind, name: &str) -> bool {
        match kind {
            Kind::Queue => self.queues.contains_key(name),
            Kind::Agent => self.agents.iter().any(|a| a.name == name),
            Kind::Calendar => self.calendars.contains_key(name),
            Kind::EscalationPolicy => self.escalations.contains_key(name),
            Kind::RoutingRule | Kind::SlaPolicy => false,
        }
    }
}

impl Org for Directory {
    fn queue_supervisor(&self, queue: &str) -> Option<String> {
        self.queues.get(queue).map(|q| q.supervisor.clone()).filter(|s| !s.is_empty())
    }

    fn supervisor_of(&self, agent: &str) -> Option<String> {
        self.agents
            .iter()
            .find(|a| a.name == agent)
            .map(|a| a.supervisor.clone())
            .filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn calendar_violations_name_their_field() {
        let bad = pb::Calendar {
            name: "calendars/cn".into(),
            time_zone: "Mars/Olympus".into(),
            shifts: vec![
                pb::Shift {
                    day: pb::Weekday::Monday as i32,
                    start: "9:00".into(),
                    end: "18:00".into(),
                },
                pb::Shift {
                    day: 0,
                    start: "09:00".into(),
                    end: "18:00".into(),
                },
            ],
            holidays: vec!["2026-13-01".into()],
            ..Default::default()
        };
        let Err(Error::InvalidArgument(v)) = calendar(&bad) else {
            panic!("accepted");
        };
        let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, vec!["time_zone", "shifts[0].start", "shifts[1].day", "holidays[0]"]);
        let good = pb::Calendar {
            time_zone: "Asia/Shanghai".into(),
            shifts: vec![pb::Shift {
                day: pb::Weekday::Sunday as i32,
                start: "22:00".into(),
                end: "06:00".into(),
            }],
            ..Default::default()
        };
        assert!(calendar(&good).is_ok());
    }

    #[test]
    fn policy_violations_name_their_field() {
        let p = pb::SlaPolicy {
            targets: vec![
                pb::SlaTarget {
                    metric: pb::SlaMetric::Resolution as i32,
                    within: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
                    business_hours: true,
                },
                pb::SlaTarget {
                    metric: pb::SlaMetric::Resolution as i32,
                    within: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
                    business_hours: false,
                },
            ],
            ..Default::default()
        };
        let Err(Error::InvalidArgument(v)) = sla_targets(&p) else {
            panic!("accepted");
        };
        let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, vec!["targets[0].within", "targets[1].metric", "calendar"]);
        let e = pb::EscalationPolicy {
            levels: vec![pb::EscalationLevel {
                metric: 0,
                percent: 0,
                depth: 11,
                actions: vec![],
            }],
            ..Default::default()
        };
        let Err(Error::InvalidArgument(v)) = escalation_policy(&e) else {
            panic!("accepted");
        };
        assert_eq!(v.len(), 3);
        assert_eq!(channel_name(Channel::Wechat as i32), "wechat");
    }
}
