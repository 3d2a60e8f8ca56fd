//! Tickets: creation (validation, routing, assignment, SLA clocks), status moves,
//! comments, and what the SLA says now.

use chrono::{DateTime, Utc};
use crm_platform::{
    Error, FieldViolation, Result,
    db::begin_write,
    feed::{self, NewEvent},
    idempotency::{self, Recorded},
};
use crm_proto::crm::ticketing::v1 as pb;
use prost::Message;
use sea_orm::DatabaseTransaction;

use super::{
    Ticketing,
    config::{self, Directory, channel_name, priority, status, status_to_proto},
    decode, etag, micros, sla_json, ticket_id, timestamp,
};
use crate::{
    domain::{
        calendar::Calendar,
        routing::{self, Facts},
        sla::{Calendars, ClockState, Event, Sla},
        ticket::Status,
    },
    store::{self, Log, TicketColumns, sla::Point},
};

/// Who wrote a comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorType {
    Agent,
    Customer,
}

/// A comment to add.
#[derive(Debug, Clone)]
pub struct NewComment {
    pub author: String,
    pub author_type: AuthorType,
    pub internal: bool,
    pub body: String,
    pub attachments: Vec<pb::Attachment>,
}

pub(super) fn is_token(s: &str, max: usize, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || extra.contains(&c))
}

/// A category id: `[a-z][a-z0-9_]{0,62}`.
pub(super) fn is_category(s: &str) -> bool {
    is_token(s, 63, &[]) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// Every problem with a ticket to create.
fn validate_new(t: &pb::Ticket) -> Result<()> {
    validate(t, true)
}

/// Every problem with a ticket's fields; `creating` also checks the initial status.
pub(super) fn validate(t: &pb::Ticket, creating: bool) -> Result<()> {
    let mut bad = Vec::new();
    let mut check = |ok: bool, field: &str, what: &str| {
        if !ok {
            bad.push(FieldViolation::new(field, what));
        }
    };
    let customer_ok = t
        .customer
        .strip_prefix("customers/")
        .is_some_and(|id| !id.is_empty() && !id.contains('/') && id.len() <= 128);
    check(customer_ok, "customer", "required: customers/{customer}");
    check(
        t.channel != 0 && crm_proto::crm::common::v1::Channel::try_from(t.channel).is_ok(),
        "channel",
        "required: a known channel",
    );
    check(is_category(&t.category), "category", "required: [a-z][a-z0-9_]{0,62}");
    let subject = t.subject.trim();
    check(
        !subject.is_empty() && subject.chars().count() <= 300,
        "subject",
        "required, at most 300 characters",
    );
    check(
        t.description.chars().count() <= 20_000,
        "description",
        "at most 20000 characters",
    );
    if creating {
        check(
            pb::TicketStatus::try_from(t.status).is_ok() && matches!(status(t.status), None | Some(Status::New | Status::Open)),
            "status",
            "a new ticket is NEW or OPEN",
        );
    } else {
        check(status(t.status).is_some(), "status", "required: a known status");
    }
    check(t.tags.len() <= 20, "tags", "at most 20");
    for (i, tag) in t.tags.iter().enumerate() {
        check(is_token(tag, 63, &['-']), &format!("tags[{i}]"), "[a-z0-9][a-z0-9_-]{0,62}");
    }
    check(t.custom_fields.len() <= 50, "custom_fields", "at most 50");
    for (k, v) in &t.custom_fields {
        check(
            is_token(k, 63, &[]) && k.starts_with(|c: char| c.is_ascii_lowercase()),
            &format!("custom_fields[{k}]"),
            "keys [a-z][a-z0-9_]{0,62}",
        );
        check(
            v.chars().count() <= 1000,
            &format!("custom_fields[{k}]"),
            "at most 1000 characters",
        );
    }
    check(t.attachments.len() <= 20, "attachments", "at most 20");
    for (i, a) in t.attachments.iter().enumerate() {
        check(
            !a.uri.is_empty() && a.uri.len() <= 2048,
            &format!("attachments[{i}].uri"),
            "required, at most 2048 characters",
        );
    }
    check(t.language.len() <= 35, "language", "a BCP 47 tag");
    check(t.customer_tier.len() <= 63, "customer_tier", "at most 63 characters");
    check(pb::Priority::try_from(t.priority).is_ok(), "priority", "unknown priority");
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(bad))
    }
}

/// The stored ticket `name`, read with `lock`; NOT_FOUND when there is none.
pub(super) async fn require_ticket<C: sea_orm::ConnectionTrait>(
    c: &C,
    name: &str,
    lock: store::Lock,
) -> Result<store::TicketRow> {
    store::get_ticket(c, ticket_id(name)?, lock)
        .await?
        .ok_or_else(|| Error::NotFound {
            resource_type: "ticket",
            name: name.to_owned(),
        })
}

/// Changes of agents' loads in one transaction: per agent, the net change and the
/// latest assignment time.
#[derive(Debug, Default)]
pub(super) struct Loads(std::collections::BTreeMap<String, (i64, Option<i64>)>);

impl Loads {
    fn add(&mut self, agent: &str, delta: i64, assigned_us: Option<i64>) {
        let entry = self.0.entry(agent.to_owned()).or_insert((0, None));
        entry.0 += delta;
        entry.1 = entry.1.max(assigned_us);
    }
}

/// A ticket being changed inside a write transaction (the caller commits).
pub(super) struct Work<'t> {
    pub txn: &'t DatabaseTransaction,
    pub id: String,
    /// `None` for a ticket being created.
    pub revision: Option<i64>,
    pub ticket: pb::Ticket,
    pub sla: Sla,
    pub dir: std::sync::Arc<Directory>,
    pub actor: String,
    pub now: DateTime<Utc>,
    history: Vec<pb::HistoryEntry>,
    events: Vec<NewEvent>,
    pub changed: Vec<String>,
    /// Assignee and whether it counted in their load, as stored.
    before: (String, bool),
}

impl<'t> Work<'t> {
    /// The ticket `name`, locked in `txn`.
    pub(super) async fn load(
        ticketing: &Ticketing,
        txn: &'t DatabaseTransaction,
        name: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Self> {
        let stored = require_ticket(txn, name, store::Lock::Update).await?;
        let dir = ticketing.directory(txn).await?;
        Self::open(txn, dir, stored, actor, now)
    }

    /// A ticket read (and locked) in `txn`, under configuration `dir`.
    pub(super) fn open(
        txn: &'t DatabaseTransaction,
        dir: std::sync::Arc<Directory>,
        stored: store::TicketRow,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Self> {
        let ticket: pb::Ticket = decode(&stored.row.data)?;
        let sla = sla_json::decode(&stored.sla)?;
        let active = status(ticket.status).is_some_and(Status::is_active);
        Ok(Self {
            id: stored.row.id.clone(),
            txn,
            revision: Some(stored.row.revision),
            before: (ticket.assignee.clone(), active),
            ticket,
            sla,
            dir,
            actor: actor.to_owned(),
            now,
            history: Vec::new(),
            events: Vec::new(),
            changed: Vec::new(),
        })
    }

    pub fn status(&self) -> Status {
        status(self.ticket.status).unwrap_or(Status::New)
    }

    pub fn policy(&self) -> Option<&pb::SlaPolicy> {
        self.dir.sla_policy_named(&self.ticket.sla_policy)
    }

    /// The calendars of the ticket's policy: (business, elapsed).
    pub fn calendars(&self) -> (Calendar, Calendar) {
        (self.dir.calendar_of(self.policy()), Calendar::always())
    }

    pub fn note(&mut self, kind: pb::HistoryKind, description: String) {
        self.history.push(pb::HistoryEntry {
            time: Some(timestamp(self.now)),
            actor: self.actor.clone(),
            kind: kind as i32,
            description,
        });
    }

    pub fn event(&mut self, event_type: &'static str, data: Vec<u8>) {
        self.events.push(NewEvent {
            event_type,
            subject: format!("tickets/{}", self.id),
            actor: self.actor.clone(),
            data,
        });
    }

    pub fn sla_event(&mut self, event: Event) {
        let (business, elapsed) = self.calendars();
        let cals = Calendars {
            business: &business,
            elapsed: &elapsed,
        };
        self.sla.on(event, self.now, &cals);
    }

    /// Moves the ticket to `to`, with its SLA clocks and history.
    pub fn set_status(&mut self, to: Status) -> Result<()> {
        let from = self.status();
        if !from.may_become(to) {
            return Err(Error::FailedPrecondition {
                reason: "TICKET_STATUS_MOVE",
                subject: format!("tickets/{}", self.id),
                message: format!("a {from} ticket cannot become {to}"),
            });
        }
        self.ticket.status = status_to_proto(to) as i32;
        match to {
            Status::Solved => self.ticket.solve_time = Some(timestamp(self.now)),
            Status::Closed => self.ticket.close_time = Some(timestamp(self.now)),
            _ => {}
        }
        self.sla_event(Event::StatusChanged { from, to });
        self.changed.push("status".into());
        self.note(pb::HistoryKind::Status, format!("status {from} → {to}"));
        if to == Status::Solved {
            let survey = pb::SurveyRequested {
                ticket: format!("tickets/{}", self.id),
                customer: self.ticket.customer.clone(),
                agent: self.ticket.assignee.clone(),
            };
            self.event("crm.ticketing.v1.SurveyRequested", survey.encode_to_vec());
        }
        Ok(())
    }

    /// Picks the SLA policy again (priority, category or tier changed): clocks keep
    /// the time counted.
    pub fn reselect_policy(&mut self) {
        let chosen = self.dir.sla_policy(&self.ticket).cloned();
        let name = chosen.as_ref().map(|p| p.name.clone()).unwrap_or_default();
        let targets = chosen.as_ref().and_then(|p| config::sla_targets(p).ok()).unwrap_or_default();
        if name != self.ticket.sla_policy || targets.as_slice() != self.sla.targets() {
            let status = self.status();
            self.sla.retarget(targets, status, self.now);
            self.ticket.sla_policy = name;
            self.changed.push("sla_policy".into());
        }
    }

    /// The escalation points of the running clocks: every level's percentage of its
    /// metric, and the breach (100) always.
    fn points(&self) -> Result<Vec<Point>> {
        let (business, elapsed) = self.calendars();
        let cals = Calendars {
            business: &business,
            elapsed: &elapsed,
        };
        let escalation = self.dir.escalation_of(self.policy());
        let mut points = Vec::new();
        for clock in self.sla.clocks.iter().filter(|c| c.achieved_at.is_none()) {
            let mut percents = escalation.map(|e| e.percents(clock.metric)).unwrap_or_default();
            if !percents.contains(&100) {
                percents.push(100);
            }
            for percent in percents {
                let at = clock.point_at(percent, &cals).map_err(|e| Error::FailedPrecondition {
                    reason: "CALENDAR_CLOSED",
                    subject: self.ticket.sla_policy.clone(),
                    message: e.to_string(),
                })?;
                if let Some(at) = at {
                    points.push(Point {
                        metric: config::metric_to_proto(clock.metric) as i32,
                        clock_start_us: micros(clock.started_at),
                        percent: i32::try_from(percent).unwrap_or(i32::MAX),
                        due_us: micros(at),
                    });
                }
            }
        }
        Ok(points)
    }

    /// Writes the ticket, its history, SLA points and events, and notes its agent
    /// load changes in `loads` (the caller applies them and commits: [`Ticketing::finish`]).
    pub async fn save(mut self, loads: &mut Loads) -> Result<pb::Ticket> {
        self.ticket.update_time = Some(timestamp(self.now));
        self.ticket.etag.clear();
        let points = self.points()?;
        let sla = sla_json::encode(&self.sla)?;
        let status_now = self.status();
        let cols = TicketColumns {
            status: self.ticket.status,
            queue: &self.ticket.queue,
            assignee: &self.ticket.assignee,
            customer: &self.ticket.customer,
            category: &self.ticket.category,
            sla_policy: &self.ticket.sla_policy,
            create_us: super::micros_of(self.ticket.create_time.as_ref()),
        };
        let name = format!("tickets/{}", self.id);
        let revision = match self.revision {
            None => {
                store::insert_ticket(self.txn, &self.id, &cols, self.ticket.encode_to_vec(), sla).await?;
                1
            }
            Some(r) => store::update_ticket(self.txn, &self.id, &name, r, &cols, self.ticket.encode_to_vec(), sla).await?,
        };
        store::sla::replace_points(self.txn, &self.id, &points, micros(self.now)).await?;
        // Agent loads: what the ticket counted for before, and now.
        let after = (self.ticket.assignee.clone(), status_now.is_active());
        if after != self.before {
            if self.before.1 && !self.before.0.is_empty() {
                loads.add(&self.before.0, -1, None);
            }
            let newly = (after.0 != self.before.0).then(|| micros(self.now));
            if after.1 && !after.0.is_empty() {
                loads.add(&after.0, 1, newly);
            }
        }
        let entries = self.history.iter().map(Message::encode_to_vec).collect();
        store::append(self.txn, Log::History, &self.id, entries).await?;
        let mut saved = self.ticket.clone();
        saved.etag = etag(revision);
        let change = pb::TicketChanged {
            ticket: Some(saved.clone()),
            created: self.revision.is_none(),
            changed_fields: self.changed.clone(),
            entry: self.history.last().cloned(),
        };
        self.events.insert(
            0,
            NewEvent {
                event_type: "crm.ticketing.v1.TicketChanged",
                subject: name,
                actor: self.actor.clone(),
                data: change.encode_to_vec(),
            },
        );
        feed::append_many(self.txn, std::mem::take(&mut self.events)).await?;
        Ok(saved)
    }
}

impl Ticketing {
    /// Creates a ticket: routes it, assigns it, starts its SLA clocks.
    pub async fn create_ticket(&self, actor: &str, ticket: pb::Ticket, now: DateTime<Utc>) -> Result<pb::Ticket> {
        self.create_ticket_once(actor, ticket, None, None, now).await
    }

    /// [`Self::create_ticket`], once per idempotency `key`: a retry gets the ticket
    /// the first call created. `tier_note` says where the customer tier came from.
    pub async fn create_ticket_once(
        &self,
        actor: &str,
        mut ticket: pb::Ticket,
        key: Option<idempotency::Key>,
        tier_note: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<pb::Ticket> {
        validate_new(&ticket)?;
        if let Some(key) = &key
            && let Some(name) = idempotency::lookup(&self.db, key).await?
        {
            return self.get_ticket(&name).await;
        }
        let id = uuid::Uuid::now_v7().simple().to_string();
        ticket.name = format!("tickets/{id}");
        ticket.subject = ticket.subject.trim().to_owned();
        if ticket.priority == 0 {
            ticket.priority = pb::Priority::Normal as i32;
        }
        let requested = status(ticket.status).unwrap_or(Status::New);
        ticket.status = pb::TicketStatus::New as i32;
        ticket.sla_policy.clear();
        ticket.routing = None;
        ticket.create_time = Some(timestamp(now));
        ticket.first_response_time = None;
        ticket.solve_time = None;
        ticket.close_time = None;
        let txn = begin_write(&self.db).await?;
        if let Some(key) = &key
            && idempotency::record(&txn, key, &ticket.name).await? == Recorded::Duplicate
        {
            txn.rollback().await?;
            return self.replay(key).await;
        }
        let dir = self.directory(&txn).await?;
        let mut bad = Vec::new();
        if !ticket.queue.is_empty() && !dir.has(store::Kind::Queue, &ticket.queue) {
            bad.push(FieldViolation::new(
                "queue",
                format!("queue `{}` does not exist", ticket.queue),
            ));
        }
        if !ticket.assignee.is_empty() && !dir.has(store::Kind::Agent, &ticket.assignee) {
            bad.push(FieldViolation::new(
                "assignee",
                format!("agent `{}` does not exist", ticket.assignee),
            ));
        }
        if !bad.is_empty() {
            return Err(Error::InvalidArgument(bad));
        }
        let mut work = Work {
            txn: &txn,
            id,
            revision: None,
            ticket,
            sla: Sla::default(),
            dir,
            actor: actor.to_owned(),
            now,
            history: Vec::new(),
            events: Vec::new(),
            changed: Vec::new(),
            before: (String::new(), false),
        };
        work.note(
            pb::HistoryKind::Created,
            format!(
                "created from {} in category {}",
                channel_name(work.ticket.channel),
                work.ticket.category
            ),
        );
        if let Some(note) = tier_note {
            work.note(pb::HistoryKind::Updated, note);
        }
        self.route(&mut work).await?;
        work.reselect_policy();
        work.sla_event(Event::Created);
        if requested == Status::Open {
            work.set_status(Status::Open)?;
        }
        let mut loads = Loads::default();
        let saved = work.save(&mut loads).await?;
        self.finish(txn, loads).await?;
        Ok(saved)
    }

    /// Applies the agent load changes of a write (in agent order, so concurrent
    /// transactions lock those rows in the same order and never deadlock), commits,
    /// and wakes this process's change-feed streams.
    pub(super) async fn finish(&self, txn: DatabaseTransaction, loads: Loads) -> Result<()> {
        for (agent, (delta, assigned)) in loads.0 {
            if delta != 0 || assigned.is_some() {
                store::adjust_agent(&txn, &agent, delta, assigned).await?;
            }
        }
        txn.commit().await?;
        self.feed.committed();
        Ok(())
    }

    /// Routes (unless a queue was given) and assigns (unless an agent was given).
    pub(super) async fn route(&self, work: &mut Work<'_>) -> Result<()> {
        let t = &work.ticket;
        let facts = Facts {
            channel: &channel_name(t.channel),
            category: &t.category,
            priority: priority(t.priority),
            customer_tier: &t.customer_tier,
            subject: &t.subject,
            description: &t.description,
        };
        let (queue, rule, queue_reason, skills) = if t.queue.is_empty() {
            let routed = work.dir.route(&facts, &self.settings.default_queue);
            (routed.queue, routed.rule, routed.reason, routed.required_skills)
        } else {
            (
                t.queue.clone(),
                None,
                format!("queue {} set by the caller", t.queue),
                Vec::new(),
            )
        };
        let assignment_reason = if t.assignee.is_empty() {
            let stats = store::agent_stats(work.txn).await?;
            let previous = store::previous_agents(work.txn, &t.customer, 5).await?;
            let agents: Vec<routing::Agent> = work
                .dir
                .agents
                .iter()
                .filter(|a| a.queues.contains(&queue))
                .map(|a| {
                    let (load, last) = stats.get(&a.name).copied().unwrap_or((0, 0));
                    routing::Agent {
                        id: &a.name,
                        skills: &a.skills,
                        languages: &a.languages,
                        capacity: u32::try_from(a.capacity).unwrap_or(0),
                        load: u32::try_from(load).unwrap_or(u32::MAX),
                        available: a.available,
                        last_assigned_at: (last > 0).then(|| DateTime::from_timestamp_micros(last)).flatten(),
                    }
                })
                .collect();
            let language = (!t.language.is_empty()).then_some(t.language.as_str());
            let need = routing::Need {
                skills: &skills,
                language,
                previous_agents: &previous,
            };
            match routing::assign(&agents, &need) {
                Ok(assigned) => {
                    work.ticket.assignee = assigned.agent;
                    assigned.reason
                }
                Err(why) => format!("unassigned: {why}"),
            }
        } else {
            format!("{} set by the caller", t.assignee)
        };
        work.ticket.queue = queue;
        work.note(pb::HistoryKind::Routed, queue_reason.clone());
        work.note(pb::HistoryKind::Assigned, assignment_reason.clone());
        work.ticket.routing = Some(pb::RoutingDecision {
            routing_rule: rule.unwrap_or_default(),
            queue_reason,
            assignment_reason,
            decide_time: Some(timestamp(work.now)),
        });
        work.changed.push("queue".into());
        work.changed.push("assignee".into());
        Ok(())
    }

    pub async fn get_ticket(&self, name: &str) -> Result<pb::Ticket> {
        let stored = require_ticket(&self.db, name, store::Lock::None).await?;
        let mut t: pb::Ticket = decode(&stored.row.data)?;
        t.etag = etag(stored.row.revision);
        Ok(t)
    }

    /// Moves a ticket to another status.
    pub async fn change_status(&self, actor: &str, name: &str, to: Status, now: DateTime<Utc>) -> Result<pb::Ticket> {
        let txn = begin_write(&self.db).await?;
        let mut work = Work::load(self, &txn, name, actor, now).await?;
        work.set_status(to)?;
        let mut loads = Loads::default();
        let saved = work.save(&mut loads).await?;
        self.finish(txn, loads).await?;
        Ok(saved)
    }

    /// The ticket another call with `key` created (it committed first).
    async fn replay(&self, key: &idempotency::Key) -> Result<pb::Ticket> {
        let name = idempotency::lookup(&self.db, key)
            .await?
            .ok_or_else(|| Error::internal(anyhow::anyhow!("idempotency key vanished after a conflict")))?;
        self.get_ticket(&name).await
    }

    /// Adds a comment: a public agent comment answers the customer (SLA), a customer
    /// comment starts the next-response clock and brings a pending ticket back.
    pub async fn add_comment(&self, name: &str, comment: NewComment, now: DateTime<Utc>) -> Result<pb::Comment> {
        self.add_comment_once(name, comment, None, now).await
    }

    /// [`Self::add_comment`], once per idempotency `key`.
    pub async fn add_comment_once(
        &self,
        name: &str,
        comment: NewComment,
        key: Option<idempotency::Key>,
        now: DateTime<Utc>,
    ) -> Result<pb::Comment> {
        if let Some(key) = &key
            && let Some(done) = idempotency::lookup(&self.db, key).await?
        {
            return self.comment(&done).await;
        }
        let mut bad = Vec::new();
        let chars = comment.body.trim().chars().count();
        if chars == 0 || chars > 20_000 {
            bad.push(FieldViolation::new("comment.body", "required, at most 20000 characters"));
        }
        if comment.attachments.len() > 20 {
            bad.push(FieldViolation::new("comment.attachments", "at most 20"));
        }
        if comment.author_type == AuthorType::Customer && comment.internal {
            bad.push(FieldViolation::new("comment.internal", "customers write public comments"));
        }
        if !bad.is_empty() {
            return Err(Error::InvalidArgument(bad));
        }
        let txn = begin_write(&self.db).await?;
        let mut work = Work::load(self, &txn, name, &comment.author, now).await?;
        if work.status() == Status::Closed {
            return Err(Error::FailedPrecondition {
                reason: "TICKET_CLOSED",
                subject: name.to_owned(),
                message: "a closed ticket takes no comments".into(),
            });
        }
        match (comment.author_type, comment.internal) {
            (AuthorType::Agent, false) => {
                work.sla_event(Event::AgentReplied);
                if work.ticket.first_response_time.is_none() {
                    work.ticket.first_response_time = Some(timestamp(now));
                    work.changed.push("first_response_time".into());
                }
                if work.status() == Status::New {
                    work.set_status(Status::Open)?;
                }
            }
            (AuthorType::Customer, _) => {
                if matches!(work.status(), Status::PendingCustomer | Status::Solved) {
                    work.set_status(Status::Open)?;
                }
                work.sla_event(Event::CustomerReplied);
            }
            (AuthorType::Agent, true) => {}
        }
        let mut saved = pb::Comment {
            name: String::new(),
            author: comment.author.clone(),
            author_type: match comment.author_type {
                AuthorType::Agent => pb::AuthorType::Agent,
                AuthorType::Customer => pb::AuthorType::Customer,
            } as i32,
            internal: comment.internal,
            body: comment.body.trim().to_owned(),
            attachments: comment.attachments,
            create_time: Some(timestamp(now)),
        };
        let seq = store::append(work.txn, Log::Comments, &work.id, vec![saved.encode_to_vec()]).await?;
        saved.name = format!("tickets/{}/comments/{seq}", work.id);
        if let Some(key) = &key
            && idempotency::record(work.txn, key, &saved.name).await? == Recorded::Duplicate
        {
            drop(work);
            txn.rollback().await?;
            let done = idempotency::lookup(&self.db, key)
                .await?
                .ok_or_else(|| Error::internal(anyhow::anyhow!("idempotency key vanished after a conflict")))?;
            return self.comment(&done).await;
        }
        let visibility = if saved.internal { "internal" } else { "public" };
        work.note(pb::HistoryKind::Comment, format!("{visibility} comment by {}", saved.author));
        let added = pb::CommentAdded {
            ticket: name.to_owned(),
            comment: Some(saved.clone()),
        };
        work.event("crm.ticketing.v1.CommentAdded", added.encode_to_vec());
        let mut loads = Loads::default();
        work.save(&mut loads).await?;
        self.finish(txn, loads).await?;
        Ok(saved)
    }

    /// The comment `tickets/{t}/comments/{seq}`.
    pub async fn comment(&self, name: &str) -> Result<pb::Comment> {
        let not_found = || Error::NotFound {
            resource_type: "comment",
            name: name.to_owned(),
        };
        let (ticket, seq) = name.split_once("/comments/").ok_or_else(not_found)?;
        let seq: i64 = seq.parse().map_err(|_| not_found())?;
        let found = store::read_log(&self.db, Log::Comments, ticket_id(ticket)?, seq - 1, 1).await?;
        let (_, data) = found.into_iter().find(|(s, _)| *s == seq).ok_or_else(not_found)?;
        let mut c: pb::Comment = decode(&data)?;
        c.name = name.to_owned();
        Ok(c)
    }

    /// The ticket's history, oldest first.
    pub async fn history(&self, name: &str, after_seq: i64, limit: u64) -> Result<Vec<(i64, pb::HistoryEntry)>> {
        let id = ticket_id(name)?;
        store::read_log(&self.db, Log::History, id, after_seq, limit)
            .await?
            .into_iter()
            .map(|(seq, data)| Ok((seq, decode(&data)?)))
            .collect()
    }

    /// Each targeted metric's clock as of `now`.
    pub async fn sla_status(&self, name: &str, now: DateTime<Utc>) -> Result<pb::SlaStatus> {
        let stored = require_ticket(&self.db, name, store::Lock::None).await?;
        let ticket: pb::Ticket = decode(&stored.row.data)?;
        let sla = sla_json::decode(&stored.sla)?;
        let dir = self.directory(&self.db).await?;
        let business = dir.calendar_of(dir.sla_policy_named(&ticket.sla_policy));
        let elapsed = Calendar::always();
        let cals = Calendars {
            business: &business,
            elapsed: &elapsed,
        };
        let duration = |d: chrono::Duration| prost_types::Duration {
            seconds: d.num_seconds(),
            nanos: 0,
        };
        let metrics = sla
            .clocks
            .iter()
            .map(|c| {
                let state = match c.state(now, &cals) {
                    ClockState::Active => pb::SlaState::Active,
                    ClockState::Paused => pb::SlaState::Paused,
                    ClockState::Achieved => pb::SlaState::Achieved,
                    ClockState::Breached => pb::SlaState::Breached,
                };
                Ok(pb::SlaMetricStatus {
                    metric: config::metric_to_proto(c.metric) as i32,
                    target: Some(duration(c.target)),
                    business_hours: c.business_hours,
                    elapsed: Some(duration(c.elapsed(now, &cals))),
                    remaining: Some(duration(c.remaining(now, &cals))),
                    state: state as i32,
                    start_time: Some(timestamp(c.started_at)),
                    due_time: if c.achieved_at.is_none() {
                        c.point_at(100, &cals).ok().flatten().map(timestamp)
                    } else {
                        None
                    },
                    achieve_time: c.achieved_at.map(timestamp),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(pb::SlaStatus {
            ticket: name.to_owned(),
            sla_policy: ticket.sla_policy,
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ticket_names_every_field() {
        let bad = pb::Ticket {
            customer: "c1".into(),
            channel: 999,
            category: "Product Quality".into(),
            subject: "  ".into(),
            status: pb::TicketStatus::Solved as i32,
            tags: vec!["ok".into(), "Not OK".into()],
            custom_fields: [("Bad Key".to_owned(), "v".to_owned())].into(),
            attachments: vec![pb::Attachment::default()],
            priority: 42,
            ..Default::default()
        };
        let Err(Error::InvalidArgument(v)) = validate_new(&bad) else {
            panic!("accepted");
        };
        let fields: Vec<&str> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "customer",
                "channel",
                "category",
                "subject",
                "status",
                "tags[1]",
                "custom_fields[Bad Key]",
                "attachments[0].uri",
                "priority"
            ]
        );
        let good = pb::Ticket {
            customer: "customers/c1".into(),
            channel: crm_proto::crm::common::v1::Channel::Wechat as i32,
            category: "product_quality".into(),
            subject: "屏幕坏了".into(),
            ..Default::default()
        };
        assert!(validate_new(&good).is_ok());
    }
}
