//! Changing a ticket after creation: field updates under an update mask, and routing
//! again with the current rules and agents.

use chrono::{DateTime, Utc};
use crm_platform::{Error, FieldViolation, Result, db::begin_write};
use crm_proto::crm::ticketing::v1 as pb;

use super::{
    Ticketing,
    config::{priority, status},
    etag,
    tickets::{Loads, Work, validate},
    timestamp,
};
use crate::{domain::ticket::Status, store::Kind};

/// Ticket fields an update mask may name.
pub const UPDATABLE: &[&str] = &[
    "status",
    "priority",
    "assignee",
    "queue",
    "category",
    "tags",
    "custom_fields",
    "customer_tier",
    "language",
    "subject",
    "description",
    "attachments",
];

/// The paths of an update mask, checked; the fields set in `patch` when empty.
pub fn update_paths(mask: &[String], patch: &pb::Ticket) -> Result<Vec<String>> {
    if mask.is_empty() {
        let default = pb::Ticket::default();
        let set = [
            ("status", patch.status != default.status),
            ("priority", patch.priority != default.priority),
            ("assignee", !patch.assignee.is_empty()),
            ("queue", !patch.queue.is_empty()),
            ("category", !patch.category.is_empty()),
            ("tags", !patch.tags.is_empty()),
            ("custom_fields", !patch.custom_fields.is_empty()),
            ("customer_tier", !patch.customer_tier.is_empty()),
            ("language", !patch.language.is_empty()),
            ("subject", !patch.subject.is_empty()),
            ("description", !patch.description.is_empty()),
            ("attachments", !patch.attachments.is_empty()),
        ];
        return Ok(set.iter().filter(|(_, on)| *on).map(|(p, _)| (*p).to_owned()).collect());
    }
    let bad: Vec<FieldViolation> = mask
        .iter()
        .enumerate()
        .filter(|(_, p)| !UPDATABLE.contains(&p.as_str()))
        .map(|(i, p)| {
            FieldViolation::new(
                format!("update_mask.paths[{i}]"),
                format!("`{p}` cannot be changed; one of {}", UPDATABLE.join(", ")),
            )
        })
        .collect();
    if bad.is_empty() {
        let mut paths = mask.to_vec();
        paths.sort();
        paths.dedup();
        Ok(paths)
    } else {
        Err(Error::InvalidArgument(bad))
    }
}

fn check_etag(work: &Work<'_>, given: &str, name: &str) -> Result<()> {
    match work.revision {
        Some(r) if !given.is_empty() && given != etag(r) => Err(Error::EtagMismatch { name: name.to_owned() }),
        _ => Ok(()),
    }
}

fn closed(name: &str, what: &str) -> Error {
    Error::FailedPrecondition {
        reason: "TICKET_CLOSED",
        subject: name.to_owned(),
        message: format!("a closed ticket cannot be {what}"),
    }
}

impl Ticketing {
    /// Changes the fields `paths` of ticket `patch.name` to `patch`'s values.
    pub async fn update_ticket(
        &self,
        actor: &str,
        patch: pb::Ticket,
        paths: &[String],
        now: DateTime<Utc>,
    ) -> Result<pb::Ticket> {
        let txn = begin_write(&self.db).await?;
        let mut work = Work::load(self, &txn, &patch.name, actor, now).await?;
        check_etag(&work, &patch.etag, &patch.name)?;
        if work.status() == Status::Closed {
            return Err(closed(&patch.name, "changed"));
        }
        let before = work.ticket.clone();
        let mut next = before.clone();
        for path in paths {
            match path.as_str() {
                "status" => next.status = patch.status,
                "priority" => next.priority = patch.priority,
                "assignee" => next.assignee.clone_from(&patch.assignee),
                "queue" => next.queue.clone_from(&patch.queue),
                "category" => next.category.clone_from(&patch.category),
                "tags" => next.tags.clone_from(&patch.tags),
                "custom_fields" => next.custom_fields.clone_from(&patch.custom_fields),
                "customer_tier" => next.customer_tier.clone_from(&patch.customer_tier),
                "language" => next.language.clone_from(&patch.language),
                "subject" => next.subject = patch.subject.trim().to_owned(),
                "description" => next.description.clone_from(&patch.description),
                "attachments" => next.attachments.clone_from(&patch.attachments),
                _ => {}
            }
        }
        if next.priority == 0 {
            next.priority = pb::Priority::Normal as i32;
        }
        let mut bad = match validate(&next, false) {
            Err(Error::InvalidArgument(v)) => v,
            Err(e) => return Err(e),
            Ok(()) => Vec::new(),
        };
        if next.queue.is_empty() || !work.dir.has(Kind::Queue, &next.queue) {
            bad.push(FieldViolation::new("queue", format!("queue `{}` does not exist", next.queue)));
        }
        if !next.assignee.is_empty() && !work.dir.has(Kind::Agent, &next.assignee) {
            bad.push(FieldViolation::new(
                "assignee",
                format!("agent `{}` does not exist", next.assignee),
            ));
        }
        if !bad.is_empty() {
            return Err(Error::InvalidArgument(bad));
        }
        let to = status(next.status).unwrap_or(Status::New);
        next.status = before.status;
        work.ticket = next;
        if work.ticket.priority != before.priority {
            work.note(
                pb::HistoryKind::Priority,
                format!("priority {} → {}", priority(before.priority), priority(work.ticket.priority)),
            );
            work.changed.push("priority".into());
        }
        if work.ticket.queue != before.queue {
            work.note(
                pb::HistoryKind::Routed,
                format!("moved from {} to {} by {actor}", before.queue, work.ticket.queue),
            );
            work.changed.push("queue".into());
        }
        if work.ticket.assignee != before.assignee {
            let reason = if work.ticket.assignee.is_empty() {
                format!("unassigned by {actor}")
            } else {
                format!("{} assigned by {actor}", work.ticket.assignee)
            };
            work.note(pb::HistoryKind::Assigned, reason.clone());
            if let Some(r) = work.ticket.routing.as_mut() {
                r.assignment_reason = reason;
                r.decide_time = Some(timestamp(now));
            }
            work.changed.push("assignee".into());
        }
        let others: Vec<&str> = [
            ("category", before.category != work.ticket.category),
            ("tags", before.tags != work.ticket.tags),
            ("custom_fields", before.custom_fields != work.ticket.custom_fields),
            ("customer_tier", before.customer_tier != work.ticket.customer_tier),
            ("language", before.language != work.ticket.language),
            ("subject", before.subject != work.ticket.subject),
            ("description", before.description != work.ticket.description),
            ("attachments", before.attachments != work.ticket.attachments),
        ]
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(f, _)| f)
        .collect();
        if !others.is_empty() {
            work.note(pb::HistoryKind::Updated, format!("changed {}", others.join(", ")));
            work.changed.extend(others.iter().map(|f| (*f).to_owned()));
        }
        if to != work.status() {
            work.set_status(to)?;
        }
        // Priority, category and tier select the SLA policy.
        work.reselect_policy();
        let mut loads = Loads::default();
        let saved = work.save(&mut loads).await?;
        self.finish(txn, loads).await?;
        Ok(saved)
    }

    /// Routes and assigns the ticket again with today's rules and agents.
    pub async fn reroute(&self, actor: &str, name: &str, given_etag: &str, now: DateTime<Utc>) -> Result<pb::Ticket> {
        let txn = begin_write(&self.db).await?;
        let mut work = Work::load(self, &txn, name, actor, now).await?;
        check_etag(&work, given_etag, name)?;
        if !work.status().is_active() {
            return Err(Error::FailedPrecondition {
                reason: "TICKET_NOT_ACTIVE",
                subject: name.to_owned(),
                message: format!("a {} ticket is not routed", work.status()),
            });
        }
        work.ticket.queue.clear();
        work.ticket.assignee.clear();
        self.route(&mut work).await?;
        work.reselect_policy();
        let mut loads = Loads::default();
        let saved = work.save(&mut loads).await?;
        self.finish(txn, loads).await?;
        Ok(saved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_name_only_changeable_fields() {
        let patch = pb::Ticket {
            priority: pb::Priority::High as i32,
            tags: vec!["x".into()],
            ..Default::default()
        };
        assert_eq!(update_paths(&[], &patch).unwrap(), vec!["priority", "tags"]);
        let Err(Error::InvalidArgument(v)) = update_paths(&["tags".into(), "create_time".into()], &patch) else {
            panic!("accepted");
        };
        assert_eq!(v[0].field, "update_mask.paths[1]");
        assert_eq!(
            update_paths(&["tags".into(), "status".into(), "tags".into()], &patch).unwrap(),
            vec!["status", "tags"]
        );
    }
}
