//! Escalation policies: what happens when an SLA point falls due. A policy has levels;
//! each level fires at a percentage of a metric's target (75 warns, 100 is the breach,
//! 150 is half the target again past it) and acts: notify, raise the priority, or
//! reassign up the supervisor chain (depth 1 is the queue's supervisor, depth 2 their
//! supervisor, and so on).

use super::{sla::Metric, ticket::Priority};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipient {
    Assignee,
    /// The supervisor `depth` steps up the chain from the queue.
    Supervisor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Notify(Recipient),
    RaisePriority,
    ReassignToSupervisor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    /// The metric this level watches; `None` watches every metric.
    pub metric: Option<Metric>,
    pub percent: u32,
    /// Steps up the supervisor chain (at least 1).
    pub depth: u32,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub levels: Vec<Level>,
}

impl Policy {
    /// The percentages at which `metric` has levels, ascending, without repeats.
    pub fn percents(&self, metric: Metric) -> Vec<u32> {
        let mut p: Vec<u32> = self
            .levels
            .iter()
            .filter(|l| l.metric.is_none_or(|m| m == metric))
            .map(|l| l.percent)
            .collect();
        p.sort_unstable();
        p.dedup();
        p
    }

    /// The levels that fire when `metric` reaches `percent`.
    pub fn levels_at(&self, metric: Metric, percent: u32) -> impl Iterator<Item = &Level> {
        self.levels
            .iter()
            .filter(move |l| l.percent == percent && l.metric.is_none_or(|m| m == metric))
    }
}

/// Who supervises whom, as escalation needs it.
pub trait Org {
    fn queue_supervisor(&self, queue: &str) -> Option<String>;
    fn supervisor_of(&self, agent: &str) -> Option<String>;
}

/// A change escalation makes to the ticket or a message it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    SetPriority(Priority),
    Assign { agent: String },
    Notify { agent: String },
}

/// The ticket as escalation sees it.
#[derive(Debug, Clone, Copy)]
pub struct TicketView<'a> {
    pub priority: Priority,
    pub queue: &'a str,
    pub assignee: Option<&'a str>,
}

/// The supervisor `depth` steps up from the queue, or the highest one there is.
fn supervisor(org: &dyn Org, queue: &str, depth: u32) -> Option<String> {
    let mut at = org.queue_supervisor(queue)?;
    for _ in 1..depth.max(1) {
        match org.supervisor_of(&at) {
            Some(up) if up != at => at = up,
            _ => break,
        }
    }
    Some(at)
}

/// What `level` does to the ticket, with a line for its history explaining it.
pub fn escalate(level: &Level, metric: Metric, ticket: TicketView, org: &dyn Org) -> (Vec<Effect>, String) {
    let mut effects = Vec::new();
    let mut said = Vec::new();
    let boss = supervisor(org, ticket.queue, level.depth);
    for action in &level.actions {
        match action {
            Action::RaisePriority => {
                let raised = ticket.priority.raised();
                if raised != ticket.priority {
                    effects.push(Effect::SetPriority(raised));
                    said.push(format!("priority {} → {raised}", ticket.priority));
                }
            }
            Action::ReassignToSupervisor => match &boss {
                Some(agent) if Some(agent.as_str()) != ticket.assignee => {
                    effects.push(Effect::Assign { agent: agent.clone() });
                    said.push(format!("reassigned to supervisor {agent}"));
                }
                Some(_) => said.push("already with the supervisor".to_owned()),
                None => said.push(format!("queue {} has no supervisor to reassign to", ticket.queue)),
            },
            Action::Notify(Recipient::Assignee) => match ticket.assignee {
                Some(agent) => {
                    effects.push(Effect::Notify { agent: agent.to_owned() });
                    said.push(format!("notified assignee {agent}"));
                }
                None => said.push("no assignee to notify".to_owned()),
            },
            Action::Notify(Recipient::Supervisor) => match &boss {
                Some(agent) => {
                    effects.push(Effect::Notify { agent: agent.clone() });
                    said.push(format!("notified supervisor {agent}"));
                }
                None => said.push(format!("queue {} has no supervisor to notify", ticket.queue)),
            },
        }
    }
    let what = if level.percent >= 100 { "breached" } else { "at" };
    let line = format!(
        "SLA {} {what} {} % of target: {}",
        metric.as_str(),
        level.percent,
        if said.is_empty() {
            "no action".to_owned()
        } else {
            said.join(", ")
        }
    );
    (effects, line)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Chart {
        queues: HashMap<&'static str, &'static str>,
        bosses: HashMap<&'static str, &'static str>,
    }

    impl Org for Chart {
        fn queue_supervisor(&self, queue: &str) -> Option<String> {
            self.queues.get(queue).map(|s| (*s).to_owned())
        }
        fn supervisor_of(&self, agent: &str) -> Option<String> {
            self.bosses.get(agent).map(|s| (*s).to_owned())
        }
    }

    fn chart() -> Chart {
        Chart {
            queues: HashMap::from([("queues/after-sales", "sup")]),
            bosses: HashMap::from([("sup", "head"), ("head", "director")]),
        }
    }

    fn policy() -> Policy {
        Policy {
            levels: vec![
                Level {
                    metric: None,
                    percent: 75,
                    depth: 1,
                    actions: vec![Action::Notify(Recipient::Assignee)],
                },
                Level {
                    metric: Some(Metric::Resolution),
                    percent: 100,
                    depth: 1,
                    actions: vec![Action::RaisePriority, Action::ReassignToSupervisor],
                },
                Level {
                    metric: Some(Metric::Resolution),
                    percent: 150,
                    depth: 2,
                    actions: vec![Action::ReassignToSupervisor, Action::Notify(Recipient::Supervisor)],
                },
                Level {
                    metric: Some(Metric::FirstResponse),
                    percent: 100,
                    depth: 1,
                    actions: vec![Action::Notify(Recipient::Supervisor)],
                },
            ],
        }
    }

    #[test]
    fn percents_per_metric() {
        assert_eq!(policy().percents(Metric::Resolution), vec![75, 100, 150]);
        assert_eq!(policy().percents(Metric::FirstResponse), vec![75, 100]);
        assert_eq!(policy().percents(Metric::NextResponse), vec![75]);
    }

    #[test]
    fn levels_act_up_the_chain() {
        let org = chart();
        let ticket = TicketView {
            priority: Priority::Normal,
            queue: "queues/after-sales",
            assignee: Some("agent"),
        };
        let fire = |metric, percent, ticket| {
            let p = policy();
            let level = p.levels_at(metric, percent).next().unwrap().clone();
            escalate(&level, metric, ticket, &org)
        };
        let (effects, line) = fire(Metric::Resolution, 75, ticket);
        assert_eq!(effects, vec![Effect::Notify { agent: "agent".into() }]);
        assert_eq!(line, "SLA resolution at 75 % of target: notified assignee agent");

        let (effects, line) = fire(Metric::Resolution, 100, ticket);
        assert_eq!(
            effects,
            vec![Effect::SetPriority(Priority::High), Effect::Assign { agent: "sup".into() }]
        );
        assert_eq!(
            line,
            "SLA resolution breached 100 % of target: priority normal → high, reassigned to supervisor sup"
        );

        let with_sup = TicketView {
            priority: Priority::High,
            assignee: Some("sup"),
            ..ticket
        };
        let (effects, _) = fire(Metric::Resolution, 150, with_sup);
        assert_eq!(
            effects,
            vec![
                Effect::Assign { agent: "head".into() },
                Effect::Notify { agent: "head".into() }
            ]
        );

        // No supervisor: said, not silently skipped.
        let orphan = TicketView {
            queue: "queues/none",
            ..ticket
        };
        let (effects, line) = fire(Metric::FirstResponse, 100, orphan);
        assert!(effects.is_empty());
        assert!(line.contains("has no supervisor"), "{line}");
    }

    #[test]
    fn the_chain_stops_at_its_top() {
        let org = chart();
        assert_eq!(supervisor(&org, "queues/after-sales", 1).as_deref(), Some("sup"));
        assert_eq!(supervisor(&org, "queues/after-sales", 3).as_deref(), Some("director"));
        assert_eq!(supervisor(&org, "queues/after-sales", 9).as_deref(), Some("director"));
        assert_eq!(supervisor(&org, "queues/none", 1), None);
    }
}
