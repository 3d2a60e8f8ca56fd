//! SLA points: one row per escalation point of a clock cycle. Writers replace a
//! ticket's pending points in the transaction that changes its clocks, holding the
//! ticket's row. The scheduler locks a ticket with due points (`FOR UPDATE SKIP
//! LOCKED` on PostgreSQL, so replicas take different tickets; the write lock on
//! SQLite), acts, and marks the points fired in the same transaction: each point
//! fires once, whichever replica gets it, and points that fell due while no replica
//! ran are still due when one starts.

use crm_platform::Result;
use sea_orm::{ConnectionTrait, Value};

use super::{exec, query};

/// A point's identity and due time (µs since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub metric: i32,
    pub clock_start_us: i64,
    pub percent: i32,
    pub due_us: i64,
}

/// A due point of some ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub ticket_id: String,
    pub point: Point,
}

/// Makes `points` the ticket's pending points. Points that already fired stay fired
/// (they are never scheduled again), so a recomputation never fires one twice.
/// `now_us` records when new points were scheduled (a point may be scheduled already
/// due, when a retarget shortens its clock).
///
/// Works from the ticket's rows by primary key: a `fired_us IS NULL` predicate here
/// would invite PostgreSQL to scan the whole pending-points index per ticket.
pub async fn replace_points<C: ConnectionTrait>(c: &C, ticket_id: &str, points: &[Point], now_us: i64) -> Result<()> {
    let rows = query(
        c,
        "SELECT metric, clock_start_us, percent, due_us, fired_us FROM sla_points WHERE ticket_id = ?",
        vec![ticket_id.into()],
    )
    .await?;
    let mut existing = Vec::with_capacity(rows.len());
    for r in &rows {
        let point = Point {
            metric: r.try_get("", "metric")?,
            clock_start_us: r.try_get("", "clock_start_us")?,
            percent: r.try_get("", "percent")?,
            due_us: r.try_get("", "due_us")?,
        };
        let fired: Option<i64> = r.try_get("", "fired_us")?;
        existing.push((point, fired.is_some()));
    }
    let same_key = |a: &Point, b: &Point| a.metric == b.metric && a.clock_start_us == b.clock_start_us && a.percent == b.percent;
    // Pending points no longer wanted, or wanted at another time, go.
    for (old, fired) in &existing {
        if !fired && !points.iter().any(|p| same_key(p, old) && p.due_us == old.due_us) {
            exec(
                c,
                "DELETE FROM sla_points WHERE ticket_id = ? AND metric = ? AND clock_start_us = ? AND percent = ?",
                vec![
                    ticket_id.into(),
                    old.metric.into(),
                    old.clock_start_us.into(),
                    old.percent.into(),
                ],
            )
            .await?;
        }
    }
    // Wanted points not stored yet (or just deleted for a new time) come in.
    let new: Vec<&Point> = points
        .iter()
        .filter(|p| {
            !existing
                .iter()
                .any(|(old, fired)| same_key(p, old) && (*fired || p.due_us == old.due_us))
        })
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    let marks = vec!["(?, ?, ?, ?, ?, ?)"; new.len()].join(", ");
    let mut values: Vec<Value> = Vec::with_capacity(new.len() * 6);
    for p in new {
        values.extend([
            ticket_id.into(),
            p.metric.into(),
            p.clock_start_us.into(),
            p.percent.into(),
            p.due_us.into(),
            now_us.into(),
        ]);
    }
    exec(
        c,
        &format!("INSERT INTO sla_points (ticket_id, metric, clock_start_us, percent, due_us, scheduled_us) VALUES {marks}"),
        values,
    )
    .await?;
    Ok(())
}

/// Tickets with points due at `now_us`, most overdue first (not locked: the
/// scheduler then locks each ticket, skipping those another replica holds).
pub async fn due_tickets<C: ConnectionTrait>(c: &C, now_us: i64, limit: u64) -> Result<Vec<String>> {
    let rows = query(
        c,
        "SELECT ticket_id, MIN(due_us) AS first_due FROM sla_points WHERE fired_us IS NULL AND due_us <= ? \
         GROUP BY ticket_id ORDER BY first_due LIMIT ?",
        vec![now_us.into(), (limit as i64).into()],
    )
    .await?;
    rows.iter().map(|r| Ok(r.try_get("", "ticket_id")?)).collect()
}

/// A ticket's pending points due at `now_us`, in order. Call while holding the
/// ticket's row: every writer of a ticket's points holds it first.
pub async fn due_points<C: ConnectionTrait>(c: &C, ticket_id: &str, now_us: i64) -> Result<Vec<Due>> {
    // By primary key, filtered here (see `replace_points`).
    let rows = query(
        c,
        "SELECT metric, clock_start_us, percent, due_us, fired_us FROM sla_points WHERE ticket_id = ?",
        vec![ticket_id.into()],
    )
    .await?;
    let mut due = Vec::new();
    for r in &rows {
        let fired: Option<i64> = r.try_get("", "fired_us")?;
        let point = Point {
            metric: r.try_get("", "metric")?,
            clock_start_us: r.try_get("", "clock_start_us")?,
            percent: r.try_get("", "percent")?,
            due_us: r.try_get("", "due_us")?,
        };
        if fired.is_none() && point.due_us <= now_us {
            due.push(Due {
                ticket_id: ticket_id.to_owned(),
                point,
            });
        }
    }
    due.sort_by_key(|d| (d.point.due_us, d.point.percent));
    Ok(due)
}

/// Marks a claimed point fired at `now_us`; false when it was not pending any more.
pub async fn mark_fired<C: ConnectionTrait>(c: &C, due: &Due, now_us: i64) -> Result<bool> {
    let p = due.point;
    // The full primary key first: the planner takes that index.
    let changed = exec(
        c,
        "UPDATE sla_points SET fired_us = ? WHERE ticket_id = ? AND metric = ? AND clock_start_us = ? \
         AND percent = ? AND fired_us IS NULL",
        vec![
            now_us.into(),
            due.ticket_id.clone().into(),
            p.metric.into(),
            p.clock_start_us.into(),
            p.percent.into(),
        ],
    )
    .await?;
    Ok(changed == 1)
}

/// The earliest pending point (µs), if any: when the scheduler must look next.
pub async fn next_due<C: ConnectionTrait>(c: &C) -> Result<Option<i64>> {
    let rows = query(c, "SELECT MIN(due_us) AS due FROM sla_points WHERE fired_us IS NULL", vec![]).await?;
    Ok(match rows.first() {
        Some(r) => r.try_get::<Option<i64>>("", "due")?,
        None => None,
    })
}

/// Fired points in µs: (due, scheduled, fired), for lag measurements. A point is
/// late by `fired - max(due, scheduled)`.
pub async fn fired<C: ConnectionTrait>(c: &C) -> Result<Vec<(i64, i64, i64)>> {
    let rows = query(
        c,
        "SELECT due_us, scheduled_us, fired_us FROM sla_points WHERE fired_us IS NOT NULL",
        Vec::<Value>::new(),
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("", "due_us")?,
                r.try_get("", "scheduled_us")?,
                r.try_get("", "fired_us")?,
            ))
        })
        .collect()
}
