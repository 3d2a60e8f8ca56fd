//! The escalation scheduler: fires SLA points as they fall due, exactly once across
//! replicas and restarts (see `store::sla`), and acts on them as the ticket's
//! escalation policy says.

use chrono::{DateTime, Utc};
use crm_platform::{Result, db::begin_write, server::ShutdownSignal};
use crm_proto::crm::ticketing::v1 as pb;
use prost::Message;

use super::{
    Ticketing,
    config::{self, priority, priority_to_proto},
    micros,
    tickets::{Loads, Work},
    timestamp,
};
use crate::{
    domain::{
        escalation::{self, Action, Effect, Recipient, TicketView},
        sla::Calendars,
    },
    store::{self, sla::Due},
};

/// Tickets handled per scheduler transaction (fewer commits; a failing batch is
/// retried one ticket at a time).
const TICKETS_PER_TRANSACTION: usize = 25;

impl Ticketing {
    /// Fires the SLA points due at `now`, one ticket per transaction; returns how
    /// many fired. Tickets another replica is handling are skipped (it fires them).
    pub async fn run_due(&self, now: DateTime<Utc>) -> Result<usize> {
        self.run_due_share(now, 0, 1).await
    }

    /// [`Ticketing::run_due`] for one of `shares` concurrent workers: the due
    /// tickets at positions `share`, `share + shares`, ...
    async fn run_due_share(&self, now: DateTime<Utc>, share: usize, shares: usize) -> Result<usize> {
        let limit = self.settings.scheduler_batch * shares as u64;
        let tickets = store::sla::due_tickets(&self.db, micros(now), limit).await?;
        let mine: Vec<String> = tickets.into_iter().skip(share).step_by(shares.max(1)).collect();
        let mut fired = 0;
        for chunk in mine.chunks(TICKETS_PER_TRANSACTION) {
            match self.fire_tickets(chunk, now).await {
                Ok(n) => fired += n,
                // One ticket per transaction, so one that fails holds no other back.
                Err(_) => {
                    for id in chunk {
                        match self.fire_tickets(std::slice::from_ref(id), now).await {
                            Ok(n) => fired += n,
                            Err(err) => {
                                tracing::warn!(ticket = %id, %err, "SLA points of this ticket not handled; retrying later")
                            }
                        }
                    }
                }
            }
        }
        Ok(fired)
    }

    /// Fires the due points of `ids` in one transaction, skipping tickets another
    /// replica holds; returns how many fired.
    async fn fire_tickets(&self, ids: &[String], now: DateTime<Utc>) -> Result<usize> {
        let txn = begin_write(&self.db).await?;
        let dir = self.directory(&txn).await?;
        let mut loads = Loads::default();
        let mut fired = 0;
        for id in ids {
            // History and events carry when the point was handled (never before `now`).
            let now = now.max(Utc::now());
            let Some(stored) = store::get_ticket(&txn, id, store::Lock::SkipLocked).await? else {
                continue;
            };
            // Read under the ticket's lock: points another replica fired are gone.
            let due = store::sla::due_points(&txn, id, micros(now)).await?;
            if due.is_empty() {
                continue;
            }
            let mut work = Work::open(&txn, dir.clone(), stored, "system", now)?;
            for point in &due {
                if fire(&mut work, point).await? {
                    fired += 1;
                }
            }
            work.reselect_policy();
            work.save(&mut loads).await?;
        }
        self.finish(txn, loads).await?;
        Ok(fired)
    }

    /// Runs the scheduler until shutdown: every `scheduler_interval` it fires what
    /// is due, with `scheduler_workers` concurrent workers on PostgreSQL (one on
    /// SQLite, which has one writer). The first round at start catches up on points
    /// that fell due while no replica ran.
    pub async fn run_scheduler(self, shutdown: ShutdownSignal) {
        let workers = if self.db.get_database_backend() == sea_orm::DbBackend::Postgres {
            self.settings.scheduler_workers.max(1)
        } else {
            1
        };
        let mut running = Vec::new();
        for share in 0..workers {
            let this = self.clone();
            let signal = shutdown.clone();
            running.push(tokio::spawn(async move { this.work_share(share, workers, signal).await }));
        }
        for r in running {
            let _ = r.await;
        }
    }

    async fn work_share(self, share: usize, shares: usize, mut shutdown: ShutdownSignal) {
        let mut tick = tokio::time::interval(self.settings.scheduler_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            // Go on at once while rounds fire something: a backlog drains without
            // waiting for ticks.
            loop {
                if shutdown.is_triggered() {
                    return;
                }
                match self.run_due_share(Utc::now(), share, shares).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(%err, "SLA scheduler round failed; retrying");
                        break;
                    }
                }
            }
        }
    }
}

/// Fires one point of `work`'s ticket if it is still due as stored; true when it did.
async fn fire(work: &mut Work<'_>, due: &Due) -> Result<bool> {
    let p = due.point;
    let now = work.now;
    let Some(metric) = config::metric(p.metric) else {
        store::sla::mark_fired(work.txn, due, micros(now)).await?;
        return Ok(false);
    };
    // The clock as it is now: a paused, met, restarted or retargeted clock no longer
    // has this point due (saving the ticket reschedules its points).
    let (business, elapsed) = work.calendars();
    let cals = Calendars {
        business: &business,
        elapsed: &elapsed,
    };
    let still_due = work.sla.clock(metric).is_some_and(|c| {
        micros(c.started_at) == p.clock_start_us
            && c.achieved_at.is_none()
            && c.point_at(u32::try_from(p.percent).unwrap_or(0), &cals)
                .ok()
                .flatten()
                .is_some_and(|at| at <= now)
    });
    if !still_due {
        return Ok(false);
    }
    let mut effects = Vec::new();
    let mut lines = Vec::new();
    let mut actions = Vec::new();
    let policy = work.policy().cloned();
    if let Some(escalation) = work.dir.escalation_of(policy.as_ref()) {
        let view = TicketView {
            priority: priority(work.ticket.priority),
            queue: &work.ticket.queue,
            assignee: (!work.ticket.assignee.is_empty()).then_some(work.ticket.assignee.as_str()),
        };
        for level in escalation.levels_at(metric, u32::try_from(p.percent).unwrap_or(0)) {
            let (e, line) = escalation::escalate(level, metric, view, &*work.dir);
            effects.extend(e);
            lines.push(line);
            actions.extend(level.actions.iter().map(|a| match a {
                Action::Notify(Recipient::Assignee) => pb::EscalationAction::NotifyAssignee,
                Action::Notify(Recipient::Supervisor) => pb::EscalationAction::NotifySupervisor,
                Action::RaisePriority => pb::EscalationAction::RaisePriority,
                Action::ReassignToSupervisor => pb::EscalationAction::ReassignToSupervisor,
            } as i32));
        }
    }
    if lines.is_empty() {
        let what = if p.percent >= 100 { "breached" } else { "at" };
        lines.push(format!("SLA {} {what} {} % of target", metric.as_str(), p.percent));
    }
    for effect in effects {
        match effect {
            Effect::SetPriority(to) => {
                work.ticket.priority = priority_to_proto(to) as i32;
                work.changed.push("priority".into());
            }
            Effect::Assign { agent } => {
                work.ticket.assignee = agent;
                work.changed.push("assignee".into());
            }
            Effect::Notify { agent } => {
                let notice = pb::NotificationRequested {
                    ticket: work.ticket.name.clone(),
                    recipient: agent,
                    reason: lines.join("; "),
                };
                work.event("crm.ticketing.v1.NotificationRequested", notice.encode_to_vec());
            }
        }
    }
    let description = lines.join("; ");
    let kind = if p.percent >= 100 {
        pb::HistoryKind::SlaBreach
    } else {
        pb::HistoryKind::SlaWarning
    };
    work.note(kind, description.clone());
    let reached = pb::SlaPointReached {
        ticket: work.ticket.name.clone(),
        metric: config::metric_to_proto(metric) as i32,
        percent: p.percent,
        due_time: DateTime::from_timestamp_micros(p.due_us).map(timestamp),
        handle_time: Some(timestamp(now)),
        actions,
        description,
    };
    work.event("crm.ticketing.v1.SlaPointReached", reached.encode_to_vec());
    store::sla::mark_fired(work.txn, due, micros(now)).await?;
    Ok(true)
}
