//! `crm bench sla`: escalation lag of the SLA scheduler. Opens the ticketing service
//! on a temporary SQLite file or a scratch PostgreSQL schema, seeds three SLA
//! policies (by priority, in elapsed time, with warning, breach and later levels)
//! and a business-hours one, creates the open tickets as if opened over a window that
//! starts once they all exist (so their warning, breach and later points fall due
//! in and after it), then runs the scheduler through the window and reports, as
//! JSON, how late each point due in the window fired (p50, p99, max) and the CPU the
//! process used meanwhile.
//!
//! A point is late from when it fell due, or from when it was scheduled when that
//! is later (raising the priority can shorten a clock past a point). Points that fell
//! due before the scheduler started (the setup ran longer than estimated) are
//! reported as `caught_up`, not as lag.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crm_platform::{Platform, server::shutdown_channel};
use crm_proto::crm::{common::v1::Channel, ticketing::v1 as pb};
use crm_ticketing::{Settings, Ticketing};

use crate::seed::Rng;

#[derive(Debug, Clone)]
pub struct Shape {
    pub tickets: usize,
    /// Seconds over which the points fall due.
    pub window: Duration,
    /// Concurrent ticket creators (PostgreSQL; SQLite has one writer anyway).
    pub writers: usize,
}

/// CPU seconds (user + system) this process used so far, from /proc/self/stat
/// (Linux reports them in USER_HZ = 100 ticks per second).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn seconds(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: s, nanos: 0 })
}

/// Three elapsed-time policies by priority and one in business hours.
async fn seed(t: &Ticketing, now: DateTime<Utc>) -> anyhow::Result<()> {
    let agent = |name: &str, queues: Vec<String>, supervisor: &str| pb::Agent {
        name: format!("agents/{name}"),
        queues,
        capacity: 1000,
        available: true,
        supervisor: supervisor.into(),
        ..Default::default()
    };
    // The supervisor first (the queue names it), then the queue, then its agents.
    t.create_object("bench", agent("lead", vec![], ""), now).await?;
    t.create_object(
        "bench",
        pb::Queue {
            name: "queues/support".into(),
            supervisor: "agents/lead".into(),
            ..Default::default()
        },
        now,
    )
    .await?;
    for name in ["a", "b", "c", "d"] {
        t.create_object("bench", agent(name, vec!["queues/support".into()], "agents/lead"), now)
            .await?;
    }
    let level = |percent: i32, actions: &[pb::EscalationAction]| pb::EscalationLevel {
        metric: 0,
        percent,
        depth: 1,
        actions: actions.iter().map(|a| *a as i32).collect(),
    };
    t.create_object(
        "bench",
        pb::EscalationPolicy {
            name: "escalationPolicies/bench".into(),
            levels: vec![
                level(75, &[pb::EscalationAction::NotifyAssignee]),
                level(
                    100,
                    &[pb::EscalationAction::RaisePriority, pb::EscalationAction::NotifySupervisor],
                ),
                level(150, &[pb::EscalationAction::ReassignToSupervisor]),
            ],
            ..Default::default()
        },
        now,
    )
    .await?;
    let weekdays = [1, 2, 3, 4, 5].map(|d| pb::Shift {
        day: d,
        start: "09:00".into(),
        end: "18:00".into(),
    });
    t.create_object(
        "bench",
        pb::Calendar {
            name: "calendars/office".into(),
            time_zone: "Asia/Shanghai".into(),
            shifts: weekdays.to_vec(),
            ..Default::default()
        },
        now,
    )
    .await?;
    for (name, order, priority, first, resolve, business) in [
        ("urgent", 1, pb::Priority::Urgent, 60, 240, false),
        ("high", 2, pb::Priority::High, 120, 480, false),
        ("normal", 3, pb::Priority::Normal, 180, 720, false),
        ("low-office", 4, pb::Priority::Low, 7200, 86_400, true),
    ] {
        t.create_object(
            "bench",
            pb::SlaPolicy {
                name: format!("slaPolicies/{name}"),
                order,
                conditions: Some(pb::TicketConditions {
                    priorities: vec![priority as i32],
                    ..Default::default()
                }),
                targets: vec![
                    pb::SlaTarget {
                        metric: pb::SlaMetric::FirstResponse as i32,
                        within: seconds(first),
                        business_hours: business,
                    },
                    pb::SlaTarget {
                        metric: pb::SlaMetric::Resolution as i32,
                        within: seconds(resolve),
                        business_hours: business,
                    },
                ],
                calendar: if business { "calendars/office".into() } else { String::new() },
                escalation_policy: "escalationPolicies/bench".into(),
                ..Default::default()
            },
            now,
        )
        .await?;
    }
    Ok(())
}

pub async fn run(cfg: &crate::Config, database_url: Option<&str>, shape: Shape) -> anyhow::Result<String> {
    let mut platform_cfg = cfg.platform.clone();
    let scratch = crate::embedded::Scratch::new(&mut platform_cfg, database_url)?;
    platform_cfg.database.max_connections = 16;
    let (shutdown, signal) = shutdown_channel();
    let platform = Platform::new(platform_cfg, signal.clone())?;
    let settings = Settings {
        default_queue: "queues/support".into(),
        scheduler_interval: Duration::from_millis(100),
        scheduler_batch: 200,
        scheduler_workers: 4,
    };
    let ticketing = crm_ticketing::open(&platform, settings).await?;
    let setup_start = Utc::now();
    seed(&ticketing, setup_start).await?;

    // The window opens after the setup, estimated at 700 tickets/s plus 5 s.
    let estimate = Duration::from_secs_f64(shape.tickets as f64 / 700.0 + 5.0);
    let window_start = setup_start + chrono::Duration::from_std(estimate)?;
    let window_ms = i64::try_from(shape.window.as_millis()).unwrap_or(i64::MAX).max(1);
    let created = Instant::now();
    let writers = if database_url.is_some() { shape.writers.max(1) } else { 1 };
    let mut tasks = Vec::new();
    for w in 0..writers {
        let t = ticketing.clone();
        let count = shape.tickets / writers + usize::from(w < shape.tickets % writers);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(0x5EED + w as u64);
            for i in 0..count {
                let n = rng.next_u64();
                let priority = match n % 10 {
                    0 => pb::Priority::Urgent,
                    1 | 2 => pb::Priority::High,
                    3..=7 => pb::Priority::Normal,
                    _ => pb::Priority::Low,
                };
                // Opened at a random instant of the window, so every point of its
                // clocks falls due after the window opens; the business-hours
                // tickets fall due much later (open load only).
                let created_at = window_start + chrono::Duration::milliseconds(((n >> 8) % window_ms as u64) as i64);
                let ticket = pb::Ticket {
                    customer: format!("customers/c{}", (n >> 20) % 50_000),
                    channel: Channel::Wechat as i32,
                    category: "general".into(),
                    subject: format!("bench ticket {w}-{i}"),
                    priority: priority as i32,
                    ..Default::default()
                };
                t.create_ticket("bench", ticket, created_at).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let setup_secs = created.elapsed().as_secs_f64();

    // Run the scheduler through the window (and the later points within it).
    let scheduler_start = Utc::now();
    let cpu_before = cpu_seconds();
    let running = tokio::spawn(ticketing.clone().run_scheduler(signal.clone()));
    let window_end = window_start + chrono::Duration::milliseconds(window_ms);
    let until = (window_end - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(2);
    tokio::time::sleep(until).await;
    shutdown.trigger();
    running.await?;
    let cpu = cpu_seconds() - cpu_before;
    let busy_secs = (Utc::now() - scheduler_start).num_milliseconds() as f64 / 1000.0;

    let start_us = scheduler_start.timestamp_micros();
    let end_us = window_end.timestamp_micros();
    let fired = crm_ticketing::store::sla::fired(ticketing.db()).await?;
    // A point is late from when it was due, or from when it was scheduled if later
    // (a raised priority can shorten a clock past a point).
    let caught_up = fired.iter().filter(|(due, _, _)| *due < start_us).count();
    let mut lags_ms: Vec<f64> = fired
        .iter()
        .filter(|(due, _, _)| *due >= start_us && *due <= end_us)
        .map(|(due, scheduled, at)| (at - due.max(scheduled)) as f64 / 1000.0)
        .collect();
    lags_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if lags_ms.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * (lags_ms.len() - 1) as f64).round() as usize;
        lags_ms[rank.min(lags_ms.len() - 1)]
    };
    let report = format!(
        r#"{{"bench":"sla","backend":"{}","tickets":{},"setup_seconds":{:.1},"window_seconds":{:.0},"points_fired_in_window":{},"caught_up":{},"lag_ms":{{"p50":{:.1},"p99":{:.1},"max":{:.1}}},"scheduler_cpu_seconds":{:.2},"scheduler_cpu_share":{:.3}}}"#,
        scratch.backend,
        shape.tickets,
        setup_secs,
        shape.window.as_secs_f64(),
        lags_ms.len(),
        caught_up,
        pct(50.0),
        pct(99.0),
        lags_ms.last().copied().unwrap_or(0.0),
        cpu,
        cpu / busy_secs.max(f64::EPSILON),
    );
    scratch.drop(&[]).await?;
    Ok(report)
}
