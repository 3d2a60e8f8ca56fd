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
    tickets::Work,
    timestamp,
};
use crate::{
    domain::{
        escalation::{self, Action, Effect, Recipient, TicketView},
        sla::Calendars,
    },
    store::{self, sla::Due},
};

impl Ticketing {
    /// Fires the SLA points due at `now`, one ticket per transaction; returns how
    /// many fired. Tickets another replica is handling are skipped (it fires them).
    pub async fn run_due(&self, now: DateTime<Utc>) -> Result<usize> {
        let tickets = store::sla::due_tickets(&self.db, micros(now), self.settings.scheduler_batch).await?;
        let mut fired = 0;
        for id in tickets {
            let txn = begin_write(&self.db).await?;
            let Some(stored) = store::get_ticket(&txn, &id, store::Lock::SkipLocked).await? else {
                continue;
            };
            // Read under the ticket's lock: points another replica fired are gone.
            let due = store::sla::due_points(&txn, &id, micros(now)).await?;
            if due.is_empty() {
                continue;
            }
            let mut work = Work::open(txn, stored, "system", now).await?;
            for point in &due {
                if fire(&mut work, point).await? {
                    fired += 1;
                }
            }
            work.reselect_policy();
            work.save(self).await?;
        }
        Ok(fired)
    }

    /// Runs [`Ticketing::run_due`] every `scheduler_interval` until shutdown. The first
    /// round at start catches up on points that fell due while no replica ran.
    pub async fn run_scheduler(self, mut shutdown: ShutdownSignal) {
        let mut tick = tokio::time::interval(self.settings.scheduler_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            loop {
                match self.run_due(Utc::now()).await {
                    // A full batch may leave more behind: go on at once.
                    Ok(n) if n as u64 >= self.settings.scheduler_batch => {}
                    Ok(_) => break,
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
async fn fire(work: &mut Work, due: &Due) -> Result<bool> {
    let p = due.point;
    let now = work.now;
    let Some(metric) = config::metric(p.metric) else {
        store::sla::mark_fired(&work.txn, due, micros(now)).await?;
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
            let (e, line) = escalation::escalate(level, metric, view, &work.dir);
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
    store::sla::mark_fired(&work.txn, due, micros(now)).await?;
    Ok(true)
}
