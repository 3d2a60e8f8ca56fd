//! Routing and assignment. Ordered rules pick a queue from what the ticket says
//! (channel, category, priority, the customer's tier, keywords); within the queue an
//! agent is chosen by skills, language, load against capacity and continuity (the
//! agent who handled this customer before), with round-robin among equals. Every
//! decision comes with its reason, which the ticket keeps.

use chrono::{DateTime, Utc};

use super::ticket::Priority;

/// What routing looks at.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub channel: &'a str,
    pub category: &'a str,
    pub priority: Priority,
    pub customer_tier: &'a str,
    pub subject: &'a str,
    pub description: &'a str,
}

/// Conditions of a rule; an empty list matches anything. Keywords match when any
/// appears in the subject or description, ignoring case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    pub channels: Vec<String>,
    pub categories: Vec<String>,
    pub priorities: Vec<Priority>,
    pub customer_tiers: Vec<String>,
    pub keywords: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub conditions: Conditions,
    pub queue: String,
    /// Skills an agent needs for tickets this rule routes.
    pub required_skills: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub queue: String,
    /// The rule that matched; `None` when the default queue took the ticket.
    pub rule: Option<String>,
    pub required_skills: Vec<String>,
    pub reason: String,
}

fn any_equal(allowed: &[String], value: &str) -> bool {
    allowed.is_empty() || allowed.iter().any(|a| a.eq_ignore_ascii_case(value))
}

impl Conditions {
    /// Why the ticket matches, or `None` when it does not.
    fn matches(&self, facts: &Facts) -> Option<Vec<String>> {
        let mut why = Vec::new();
        let mut check = |allowed: &[String], value: &str, what: &str| {
            if !any_equal(allowed, value) {
                return false;
            }
            if !allowed.is_empty() {
                why.push(format!("{what} {value}"));
            }
            true
        };
        if !check(&self.channels, facts.channel, "channel")
            || !check(&self.categories, facts.category, "category")
            || !check(&self.customer_tiers, facts.customer_tier, "customer tier")
        {
            return None;
        }
        if !self.priorities.is_empty() {
            if !self.priorities.contains(&facts.priority) {
                return None;
            }
            why.push(format!("priority {}", facts.priority));
        }
        if !self.keywords.is_empty() {
            let text = format!("{}\n{}", facts.subject, facts.description).to_lowercase();
            let found = self
                .keywords
                .iter()
                .find(|k| !k.is_empty() && text.contains(&k.to_lowercase()))?;
            why.push(format!("keyword \"{found}\""));
        }
        Some(why)
    }
}

/// The queue for a ticket: the first rule in order whose conditions all hold, else
/// `default_queue`.
pub fn route(rules: &[Rule], facts: &Facts, default_queue: &str) -> Routed {
    for rule in rules {
        if let Some(why) = rule.conditions.matches(facts) {
            let because = if why.is_empty() {
                "it matches every ticket".to_owned()
            } else {
                why.join(", ")
            };
            return Routed {
                queue: rule.queue.clone(),
                rule: Some(rule.name.clone()),
                required_skills: rule.required_skills.clone(),
                reason: format!("rule \"{}\" routed it to {}: {because}", rule.name, rule.queue),
            };
        }
    }
    Routed {
        queue: default_queue.to_owned(),
        rule: None,
        required_skills: Vec::new(),
        reason: format!("no rule matched; default queue {default_queue}"),
    }
}

/// An agent of the queue as assignment sees it.
#[derive(Debug, Clone)]
pub struct Agent<'a> {
    pub id: &'a str,
    pub skills: &'a [String],
    pub languages: &'a [String],
    /// Active tickets the agent may hold.
    pub capacity: u32,
    /// Active tickets the agent holds now.
    pub load: u32,
    pub available: bool,
    pub last_assigned_at: Option<DateTime<Utc>>,
}

/// What the ticket needs.
#[derive(Debug, Clone, Copy)]
pub struct Need<'a> {
    pub skills: &'a [String],
    /// The customer's language, if known.
    pub language: Option<&'a str>,
    /// Agents who handled this customer, most recent first.
    pub previous_agents: &'a [String],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub agent: String,
    pub reason: String,
}

/// The agent for a ticket, or why nobody fits (the ticket then waits in its queue).
pub fn assign(agents: &[Agent], need: &Need) -> Result<Assigned, String> {
    let has_skills = |a: &Agent| need.skills.iter().all(|s| a.skills.iter().any(|k| k.eq_ignore_ascii_case(s)));
    let skilled: Vec<&Agent> = agents.iter().filter(|a| a.available && has_skills(a)).collect();
    let free: Vec<&Agent> = skilled.iter().copied().filter(|a| a.load < a.capacity).collect();
    if free.is_empty() {
        let skills = if need.skills.is_empty() {
            String::new()
        } else {
            format!(" with skills {}", need.skills.join(", "))
        };
        return Err(if skilled.is_empty() {
            format!("no available agent{skills}")
        } else {
            format!("every available agent{skills} is at capacity")
        });
    }
    let mut notes = Vec::new();
    let pool: Vec<&Agent> = match need.language {
        Some(lang) => {
            let speakers: Vec<&Agent> = free
                .iter()
                .copied()
                .filter(|a| a.languages.iter().any(|l| l.eq_ignore_ascii_case(lang)))
                .collect();
            if speakers.is_empty() {
                notes.push(format!("nobody free speaks {lang}"));
                free
            } else {
                notes.push(format!("speaks {lang}"));
                speakers
            }
        }
        None => free,
    };
    if !need.skills.is_empty() {
        notes.push(format!("has skills {}", need.skills.join(", ")));
    }
    let context = |notes: &[String]| {
        if notes.is_empty() {
            String::new()
        } else {
            format!("; {}", notes.join("; "))
        }
    };
    if let Some(previous) = need.previous_agents.iter().find_map(|p| pool.iter().find(|a| a.id == p)) {
        return Ok(Assigned {
            agent: previous.id.to_owned(),
            reason: format!(
                "continuity: {} handled this customer before (load {}/{}){}",
                previous.id,
                previous.load,
                previous.capacity,
                context(&notes)
            ),
        });
    }
    // Least loaded relative to capacity; among equals the one waiting longest for a
    // ticket (round-robin), then by id for a stable order.
    let chosen = pool
        .iter()
        .min_by(|a, b| {
            (u64::from(a.load) * u64::from(b.capacity))
                .cmp(&(u64::from(b.load) * u64::from(a.capacity)))
                .then(a.last_assigned_at.cmp(&b.last_assigned_at))
                .then(a.id.cmp(b.id))
        })
        .ok_or_else(|| "no agent".to_owned())?;
    Ok(Assigned {
        agent: chosen.id.to_owned(),
        reason: format!(
            "least loaded of {} eligible agents (load {}/{}), next in turn{}",
            pool.len(),
            chosen.load,
            chosen.capacity,
            context(&notes)
        ),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn rules() -> Vec<Rule> {
        vec![
            Rule {
                name: "vip-urgent".into(),
                conditions: Conditions {
                    priorities: vec![Priority::Urgent],
                    customer_tiers: strings(&["vip"]),
                    ..Default::default()
                },
                queue: "queues/vip".into(),
                required_skills: vec![],
            },
            Rule {
                name: "quality".into(),
                conditions: Conditions {
                    categories: strings(&["product_quality"]),
                    ..Default::default()
                },
                queue: "queues/after-sales".into(),
                required_skills: strings(&["returns"]),
            },
            Rule {
                name: "how-to".into(),
                conditions: Conditions {
                    categories: strings(&["how_to"]),
                    channels: strings(&["app", "web"]),
                    ..Default::default()
                },
                queue: "queues/tech-support".into(),
                required_skills: vec![],
            },
            Rule {
                name: "refund-words".into(),
                conditions: Conditions {
                    keywords: strings(&["退款", "Refund"]),
                    ..Default::default()
                },
                queue: "queues/billing".into(),
                required_skills: vec![],
            },
        ]
    }

    #[test]
    fn routes_by_rules_in_order() {
        let facts = |channel, category, priority, tier, subject| Facts {
            channel,
            category,
            priority,
            customer_tier: tier,
            subject,
            description: "",
        };
        let cases = [
            (
                facts("wechat", "product_quality", Priority::Normal, "standard", "屏幕坏了"),
                "queues/after-sales",
                Some("quality"),
            ),
            (
                facts("app", "how_to", Priority::Low, "standard", "怎么导出"),
                "queues/tech-support",
                Some("how-to"),
            ),
            (
                facts("phone", "how_to", Priority::Low, "standard", "how do I"),
                "queues/general",
                None,
            ),
            (
                facts("web", "product_quality", Priority::Urgent, "VIP", "broken"),
                "queues/vip",
                Some("vip-urgent"),
            ),
            (
                facts("email", "other", Priority::Normal, "standard", "我要退款"),
                "queues/billing",
                Some("refund-words"),
            ),
            (
                facts("email", "other", Priority::Normal, "standard", "REFUND please"),
                "queues/billing",
                Some("refund-words"),
            ),
        ];
        for (facts, queue, rule) in cases {
            let routed = route(&rules(), &facts, "queues/general");
            assert_eq!(routed.queue, queue, "{facts:?}");
            assert_eq!(routed.rule.as_deref(), rule, "{facts:?}");
        }
        let routed = route(
            &rules(),
            &facts("wechat", "product_quality", Priority::Normal, "standard", ""),
            "q",
        );
        assert_eq!(routed.required_skills, strings(&["returns"]));
        assert_eq!(
            routed.reason,
            "rule \"quality\" routed it to queues/after-sales: category product_quality"
        );
    }

    fn agent<'a>(id: &'a str, skills: &'a [String], languages: &'a [String], load: u32, capacity: u32) -> Agent<'a> {
        Agent {
            id,
            skills,
            languages,
            capacity,
            load,
            available: true,
            last_assigned_at: None,
        }
    }

    #[test]
    fn assigns_by_skill_language_load_and_continuity() {
        let returns = strings(&["returns"]);
        let none: Vec<String> = vec![];
        let zh = strings(&["zh"]);
        let en = strings(&["en"]);
        let mut agents = vec![
            agent("li", &returns, &zh, 3, 10),
            agent("wang", &returns, &zh, 1, 10),
            agent("smith", &returns, &en, 0, 10),
            agent("zhao", &none, &zh, 0, 10),
        ];
        let need = |language| Need {
            skills: &returns,
            language,
            previous_agents: &[],
        };
        // Speaks Chinese, has the skill, least loaded.
        let got = assign(&agents, &need(Some("zh"))).unwrap();
        assert_eq!(got.agent, "wang");
        assert!(
            got.reason.contains("speaks zh") && got.reason.contains("has skills returns"),
            "{}",
            got.reason
        );
        // Nobody speaks French: the least loaded skilled agent, and the reason says so.
        let got = assign(&agents, &need(Some("fr"))).unwrap();
        assert_eq!(got.agent, "smith");
        assert!(got.reason.contains("nobody free speaks fr"));
        // Continuity wins over load while the previous agent is free.
        let previous = strings(&["li"]);
        let with_history = Need {
            skills: &returns,
            language: Some("zh"),
            previous_agents: &previous,
        };
        let got = assign(&agents, &with_history).unwrap();
        assert_eq!(got.agent, "li");
        assert!(got.reason.starts_with("continuity"));
        // ... but not once they are at capacity or away.
        agents[0].load = 10;
        assert_eq!(assign(&agents, &with_history).unwrap().agent, "wang");
        agents[0].load = 3;
        agents[0].available = false;
        assert_eq!(assign(&agents, &with_history).unwrap().agent, "wang");
        // Load is relative to capacity: 2 of 4 is busier than 3 of 10.
        let a = agent("a", &none, &none, 2, 4);
        let b = agent("b", &none, &none, 3, 10);
        let free = Need {
            skills: &[],
            language: None,
            previous_agents: &[],
        };
        assert_eq!(assign(&[a, b], &free).unwrap().agent, "b");
    }

    #[test]
    fn equals_take_turns_and_nobody_fitting_is_explained() {
        let none: Vec<String> = vec![];
        let t = |h| Utc.with_ymd_and_hms(2026, 11, 24, h, 0, 0).unwrap();
        let mut agents = vec![agent("a", &none, &none, 1, 5), agent("b", &none, &none, 1, 5)];
        agents[0].last_assigned_at = Some(t(10));
        agents[1].last_assigned_at = Some(t(9));
        let free = Need {
            skills: &[],
            language: None,
            previous_agents: &[],
        };
        assert_eq!(assign(&agents, &free).unwrap().agent, "b", "waited longest");
        agents[1].last_assigned_at = Some(t(11));
        assert_eq!(assign(&agents, &free).unwrap().agent, "a");

        let returns = strings(&["returns"]);
        let need = Need {
            skills: &returns,
            language: None,
            previous_agents: &[],
        };
        assert_eq!(assign(&agents, &need).unwrap_err(), "no available agent with skills returns");
        let skilled = vec![agent("c", &returns, &none, 5, 5)];
        assert_eq!(
            assign(&skilled, &need).unwrap_err(),
            "every available agent with skills returns is at capacity"
        );
    }
}
