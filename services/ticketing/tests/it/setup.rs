//! A ticketing service on a fresh test database, with the seeds' configuration:
//! after-sales and tech-support queues with supervisors, a Shanghai office calendar,
//! "respond within 2 hours, resolve within 24 hours" in business hours, and an
//! escalation policy that warns at 75 %, escalates to the supervisor at the breach
//! and up the chain at 150 %.

use chrono::{DateTime, Utc};
use crm_platform::{
    Platform,
    config::{PLATFORM_DEFAULTS, PlatformConfig, section},
    server::{Shutdown, shutdown_channel},
    testing::TestDatabase,
};
use crm_proto::crm::{common::v1::Channel, ticketing::v1 as pb};
use crm_ticketing::{Settings, Ticketing};

pub struct TestService {
    pub ticketing: Ticketing,
    pub platform: Platform,
    /// Kept for its lifetime: the SQLite directory or the PostgreSQL schema.
    _db: TestDatabase,
    _shutdown: Shutdown,
}

pub fn settings() -> Settings {
    Settings {
        default_queue: "queues/general".into(),
        scheduler_interval: std::time::Duration::from_millis(50),
        scheduler_batch: 100,
        scheduler_workers: 4,
    }
}

pub fn config(db: &TestDatabase) -> PlatformConfig {
    let value = crm_platform::config::load(&[PLATFORM_DEFAULTS], None).unwrap();
    let mut cfg: PlatformConfig = section(&value, None).unwrap();
    db.configure(&mut cfg.database);
    cfg.auth.jwt_secret = "integration-test-secret-0123456789abcdef".into();
    cfg
}

impl TestService {
    pub async fn start() -> Self {
        let db = TestDatabase::new("ticketing").unwrap();
        let (shutdown, signal) = shutdown_channel();
        let platform = Platform::new(config(&db), signal).unwrap();
        let ticketing = crm_ticketing::open(&platform, settings())
            .await
            .expect("service must open (is the test database reachable?)");
        Self {
            ticketing,
            platform,
            _db: db,
            _shutdown: shutdown,
        }
    }

    /// A second instance sharing this one's database.
    pub async fn replica(&self) -> Ticketing {
        crm_ticketing::open(&self.platform, settings()).await.unwrap()
    }
}

pub fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339).unwrap().with_timezone(&Utc)
}

fn hours(h: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: h * 3600,
        nanos: 0,
    })
}

/// The seeds' configuration.
pub async fn seed(t: &Ticketing) {
    let now = at("2026-11-01T00:00:00Z");
    let agent = |id: &str, queue: &str, skills: &[&str], languages: &[&str], supervisor: &str| pb::Agent {
        name: format!("agents/{id}"),
        display_name: id.into(),
        queues: vec![queue.into()],
        skills: skills.iter().map(|s| (*s).to_owned()).collect(),
        languages: languages.iter().map(|s| (*s).to_owned()).collect(),
        capacity: 10,
        available: true,
        supervisor: supervisor.into(),
        ..Default::default()
    };
    // Agents first (queues name their supervisors), then queues, then agents' queues.
    for (id, sup) in [("director", ""), ("head", "agents/director"), ("sup", "agents/head")] {
        t.create_object("root", agent(id, "", &[], &["zh"], sup), now).await.unwrap();
    }
    for (q, sup) in [
        ("queues/after-sales", "agents/sup"),
        ("queues/tech-support", "agents/head"),
        ("queues/general", ""),
    ] {
        t.create_object(
            "root",
            pb::Queue {
                name: q.into(),
                display_name: q.into(),
                supervisor: sup.into(),
                ..Default::default()
            },
            now,
        )
        .await
        .unwrap();
    }
    for a in [
        agent("li", "queues/after-sales", &["returns"], &["zh"], "agents/sup"),
        agent("wang", "queues/after-sales", &["returns"], &["zh", "en"], "agents/sup"),
        agent("smith", "queues/tech-support", &[], &["en"], "agents/head"),
    ] {
        t.create_object("root", a, now).await.unwrap();
    }
    let rule = |name: &str, order: i32, categories: &[&str], queue: &str, skills: &[&str]| pb::RoutingRule {
        name: format!("routingRules/{name}"),
        order,
        conditions: Some(pb::TicketConditions {
            categories: categories.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }),
        queue: queue.into(),
        required_skills: skills.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    };
    t.create_object(
        "root",
        rule("quality", 10, &["product_quality"], "queues/after-sales", &["returns"]),
        now,
    )
    .await
    .unwrap();
    t.create_object("root", rule("how-to", 20, &["how_to"], "queues/tech-support", &[]), now)
        .await
        .unwrap();
    let day = |d: pb::Weekday| pb::Shift {
        day: d as i32,
        start: "09:00".into(),
        end: "18:00".into(),
    };
    t.create_object(
        "root",
        pb::Calendar {
            name: "calendars/cn-office".into(),
            time_zone: "Asia/Shanghai".into(),
            shifts: vec![
                day(pb::Weekday::Monday),
                day(pb::Weekday::Tuesday),
                day(pb::Weekday::Wednesday),
                day(pb::Weekday::Thursday),
                day(pb::Weekday::Friday),
            ],
            holidays: vec!["2026-12-25".into()],
            ..Default::default()
        },
        now,
    )
    .await
    .unwrap();
    let level = |metric: pb::SlaMetric, percent: i32, depth: i32, actions: &[pb::EscalationAction]| pb::EscalationLevel {
        metric: metric as i32,
        percent,
        depth,
        actions: actions.iter().map(|a| *a as i32).collect(),
    };
    t.create_object(
        "root",
        pb::EscalationPolicy {
            name: "escalationPolicies/standard".into(),
            levels: vec![
                level(pb::SlaMetric::Unspecified, 75, 1, &[pb::EscalationAction::NotifyAssignee]),
                level(
                    pb::SlaMetric::Resolution,
                    100,
                    1,
                    &[
                        pb::EscalationAction::RaisePriority,
                        pb::EscalationAction::ReassignToSupervisor,
                    ],
                ),
                level(
                    pb::SlaMetric::Resolution,
                    150,
                    2,
                    &[pb::EscalationAction::ReassignToSupervisor],
                ),
                level(
                    pb::SlaMetric::FirstResponse,
                    100,
                    1,
                    &[pb::EscalationAction::NotifySupervisor],
                ),
            ],
            ..Default::default()
        },
        now,
    )
    .await
    .unwrap();
    t.create_object(
        "root",
        pb::SlaPolicy {
            name: "slaPolicies/standard".into(),
            order: 100,
            targets: vec![
                pb::SlaTarget {
                    metric: pb::SlaMetric::FirstResponse as i32,
                    within: hours(2),
                    business_hours: true,
                },
                pb::SlaTarget {
                    metric: pb::SlaMetric::Resolution as i32,
                    within: hours(24),
                    business_hours: true,
                },
            ],
            calendar: "calendars/cn-office".into(),
            escalation_policy: "escalationPolicies/standard".into(),
            ..Default::default()
        },
        now,
    )
    .await
    .unwrap();
}

pub fn ticket(customer: &str, category: &str, subject: &str) -> pb::Ticket {
    pb::Ticket {
        customer: format!("customers/{customer}"),
        channel: Channel::Wechat as i32,
        category: category.into(),
        subject: subject.into(),
        language: "zh".into(),
        ..Default::default()
    }
}
