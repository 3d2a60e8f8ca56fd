//! The ticketing service's use cases: configuration objects, tickets (create, status,
//! comments) with routing, assignment and SLA clocks, and the escalation scheduler.
//! Each write is one transaction: the ticket, its history, its SLA points and its
//! feed events commit together.

mod changes;
pub mod config;
pub mod erasure;
pub mod kb;
mod queries;
mod scheduler;
mod sla_json;
mod tickets;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use crm_platform::{
    Error, Result,
    db::begin_write,
    feed::{self, Feed, NewEvent},
};
use crm_proto::crm::ticketing::v1 as pb;
use prost::Message;
use sea_orm::DatabaseConnection;

use self::config::Directory;
pub use self::{
    changes::{UPDATABLE, update_paths},
    queries::MAX_REPORT_DAYS,
    tickets::{AuthorType, NewComment},
};
use crate::store::{self, Kind};

/// How the service behaves; from `[ticketing]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where tickets go when no routing rule matches, `queues/{queue}`.
    pub default_queue: String,
    /// How often the scheduler looks for due SLA points.
    pub scheduler_interval: std::time::Duration,
    /// Tickets a scheduler worker takes per round (one transaction each).
    pub scheduler_batch: u64,
    /// Concurrent scheduler workers on PostgreSQL (SQLite: one).
    pub scheduler_workers: usize,
}

/// The configuration last loaded, with the version it was loaded at.
type CachedDirectory = Arc<std::sync::Mutex<Option<(i64, Arc<Directory>)>>>;

#[derive(Clone, Debug)]
pub struct Ticketing {
    db: DatabaseConnection,
    feed: Feed,
    settings: Arc<Settings>,
    directory: CachedDirectory,
}

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    feed::timestamp(t)
}

pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// Microseconds of a stored proto timestamp (0 when unset).
pub fn micros_of(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000))
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(Error::internal)
}

/// The etag of a stored revision.
pub fn etag(revision: i64) -> String {
    format!("\"{revision}\"")
}

/// `tickets/{id}` → `id`.
pub fn ticket_id(name: &str) -> Result<&str> {
    name.strip_prefix("tickets/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or_else(|| Error::invalid("name", "must be tickets/{ticket}"))
}

/// A configuration resource kept whole.
pub trait ConfigObject: Message + Default + Clone {
    const KIND: Kind;
    /// The collection in its names: `agents` for `agents/{agent}`.
    const COLLECTION: &'static str;
    const EVENT: &'static str = "crm.ticketing.v1.ConfigurationChanged";
    fn name(&self) -> &str;
    fn etag(&self) -> &str;
    fn set_etag(&mut self, etag: String);
    fn stamp(&mut self, t: prost_types::Timestamp);
    /// The fields an update mask may name.
    const FIELDS: &'static [&'static str];
    /// Copies field `path` from `from`; false when it is not one of [`Self::FIELDS`].
    fn assign(&mut self, from: &Self, path: &str) -> bool;
    /// The fields of [`Self::FIELDS`] set to something other than their default.
    fn set_fields(&self) -> Vec<String>;
    /// Every problem with the object, references checked against `dir`.
    fn validate(&self, dir: &Directory) -> Result<()>;
}

fn reference(dir: &Directory, kind: Kind, field: &str, name: &str, bad: &mut Vec<crm_platform::FieldViolation>) {
    if !name.is_empty() && !dir.has(kind, name) {
        bad.push(crm_platform::FieldViolation::new(
            field,
            format!("{} `{name}` does not exist", kind.resource_type()),
        ));
    }
}

fn text(value: &str, max: usize, field: &str, bad: &mut Vec<crm_platform::FieldViolation>) {
    if value.chars().count() > max {
        bad.push(crm_platform::FieldViolation::new(field, format!("at most {max} characters")));
    }
}

fn finish(bad: Vec<crm_platform::FieldViolation>) -> Result<()> {
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(bad))
    }
}

macro_rules! config_object {
    ($t:ty, $kind:expr, $collection:literal, [$($field:ident),+], |$o:ident, $dir:ident, $bad:ident| $check:block) => {
        impl ConfigObject for $t {
            const KIND: Kind = $kind;
            const COLLECTION: &'static str = $collection;
            const FIELDS: &'static [&'static str] = &[$(stringify!($field)),+];
            fn assign(&mut self, from: &Self, path: &str) -> bool {
                match path {
                    $(stringify!($field) => self.$field.clone_from(&from.$field),)+
                    _ => return false,
                }
                true
            }
            fn set_fields(&self) -> Vec<String> {
                let default = Self::default();
                let mut set = Vec::new();
                $(if self.$field != default.$field {
                    set.push(stringify!($field).to_owned());
                })+
                set
            }
            fn name(&self) -> &str {
                &self.name
            }
            fn etag(&self) -> &str {
                &self.etag
            }
            fn set_etag(&mut self, etag: String) {
                self.etag = etag;
            }
            fn stamp(&mut self, t: prost_types::Timestamp) {
                self.update_time = Some(t);
            }
            fn validate(&self, $dir: &Directory) -> Result<()> {
                let $o = self;
                let mut $bad = Vec::new();
                $check
                finish($bad)
            }
        }
    };
}

config_object!(
    pb::Agent,
    Kind::Agent,
    "agents",
    [display_name, queues, skills, languages, capacity, available, supervisor],
    |o, dir, bad| {
        for (i, q) in o.queues.iter().enumerate() {
            reference(dir, Kind::Queue, &format!("queues[{i}]"), q, &mut bad);
        }
        if !(1..=1000).contains(&o.capacity) {
            bad.push(crm_platform::FieldViolation::new("capacity", "1 to 1000"));
        }
        if o.supervisor == o.name {
            bad.push(crm_platform::FieldViolation::new(
                "supervisor",
                "an agent cannot supervise itself",
            ));
        }
        text(&o.display_name, 200, "display_name", &mut bad);
    }
);

config_object!(
    pb::Queue,
    Kind::Queue,
    "queues",
    [display_name, supervisor, team],
    |o, dir, bad| {
        reference(dir, Kind::Agent, "supervisor", &o.supervisor, &mut bad);
        text(&o.display_name, 200, "display_name", &mut bad);
        let team_ok = o.team.is_empty()
            || (o.team.len() <= 128
                && o.team
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')));
        if !team_ok {
            bad.push(crm_platform::FieldViolation::new(
                "team",
                "a team id (as in teams/{team}): letters, digits, -, _, .",
            ));
        }
    }
);

config_object!(
    pb::RoutingRule,
    Kind::RoutingRule,
    "routingRules",
    [display_name, order, conditions, queue, required_skills, disabled],
    |o, dir, bad| {
        if o.queue.is_empty() {
            bad.push(crm_platform::FieldViolation::new("queue", "required"));
        }
        reference(dir, Kind::Queue, "queue", &o.queue, &mut bad);
        text(&o.display_name, 200, "display_name", &mut bad);
    }
);

config_object!(
    pb::Calendar,
    Kind::Calendar,
    "calendars",
    [display_name, time_zone, shifts, holidays],
    |o, _dir, bad| {
        if let Err(Error::InvalidArgument(v)) = config::calendar(o) {
            bad.extend(v);
        }
        text(&o.display_name, 200, "display_name", &mut bad);
    }
);

config_object!(
    pb::SlaPolicy,
    Kind::SlaPolicy,
    "slaPolicies",
    [display_name, order, conditions, targets, calendar, escalation_policy],
    |o, dir, bad| {
        if let Err(Error::InvalidArgument(v)) = config::sla_targets(o) {
            bad.extend(v);
        }
        reference(dir, Kind::Calendar, "calendar", &o.calendar, &mut bad);
        reference(
            dir,
            Kind::EscalationPolicy,
            "escalation_policy",
            &o.escalation_policy,
            &mut bad,
        );
        text(&o.display_name, 200, "display_name", &mut bad);
    }
);

config_object!(
    pb::EscalationPolicy,
    Kind::EscalationPolicy,
    "escalationPolicies",
    [display_name, levels],
    |o, _dir, bad| {
        if let Err(Error::InvalidArgument(v)) = config::escalation_policy(o) {
            bad.extend(v);
        }
        text(&o.display_name, 200, "display_name", &mut bad);
    }
);

/// `{collection}/{id}` → `id`, with the id's format checked.
fn object_id<M: ConfigObject>(name: &str) -> Result<&str> {
    let id = name
        .strip_prefix(M::COLLECTION)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or("");
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(id)
    } else {
        Err(Error::invalid(
            "name",
            format!(
                "must be {}/{{id}} with an id of 1 to 128 letters, digits, -, _, ., @",
                M::COLLECTION
            ),
        ))
    }
}

impl Ticketing {
    pub fn new(db: DatabaseConnection, feed: Feed, settings: Settings) -> Self {
        Self {
            db,
            feed,
            settings: Arc::new(settings),
            directory: CachedDirectory::default(),
        }
    }

    /// The configuration as of `c`'s view: the cached one while the stored version
    /// has not moved (one small query), else loaded afresh.
    pub async fn directory<C: sea_orm::ConnectionTrait>(&self, c: &C) -> Result<Arc<Directory>> {
        let version = store::config_version(c).await?;
        if let Ok(cached) = self.directory.lock()
            && let Some((v, dir)) = cached.as_ref()
            && *v == version
        {
            return Ok(dir.clone());
        }
        let dir = Arc::new(Directory::load(c).await?);
        if let Ok(mut cached) = self.directory.lock()
            && cached.as_ref().is_none_or(|(v, _)| *v < version)
        {
            *cached = Some((version, dir.clone()));
        }
        Ok(dir)
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Active tickets per agent now.
    pub async fn agent_loads(&self) -> Result<std::collections::HashMap<String, i64>> {
        Ok(store::agent_stats(&self.db)
            .await?
            .into_iter()
            .map(|(agent, (load, _))| (agent, load))
            .collect())
    }

    /// Creates a configuration object.
    pub async fn create_object<M: ConfigObject>(&self, actor: &str, mut object: M, now: DateTime<Utc>) -> Result<M> {
        let id = object_id::<M>(object.name())?.to_owned();
        let txn = begin_write(&self.db).await?;
        object.validate(&Directory::load(&txn).await?)?;
        object.stamp(timestamp(now));
        object.set_etag(String::new());
        store::insert_object(&txn, M::KIND, &id, object.name(), object.encode_to_vec()).await?;
        store::bump_config_version(&txn).await?;
        self.config_event(&txn, actor, object.name(), false).await?;
        txn.commit().await?;
        self.feed.committed();
        object.set_etag(etag(1));
        Ok(object)
    }

    /// Changes the fields `mask` names (the fields set in `patch` when empty) of the
    /// stored object; `patch.etag`, when set, must be the stored one.
    pub async fn update_object<M: ConfigObject>(&self, actor: &str, patch: M, mask: &[String], now: DateTime<Utc>) -> Result<M> {
        let id = object_id::<M>(patch.name())?.to_owned();
        let paths = if mask.is_empty() { patch.set_fields() } else { mask.to_vec() };
        let txn = begin_write(&self.db).await?;
        let stored = store::get_object(&txn, M::KIND, &id).await?.ok_or_else(|| Error::NotFound {
            resource_type: M::KIND.resource_type(),
            name: patch.name().to_owned(),
        })?;
        if !patch.etag().is_empty() && patch.etag() != etag(stored.revision) {
            return Err(Error::EtagMismatch {
                name: patch.name().to_owned(),
            });
        }
        let mut object: M = decode(&stored.data)?;
        let unknown: Vec<crm_platform::FieldViolation> = paths
            .iter()
            .enumerate()
            .filter(|(_, p)| !object.assign(&patch, p))
            .map(|(i, p)| {
                crm_platform::FieldViolation::new(
                    format!("update_mask.paths[{i}]"),
                    format!("`{p}` cannot be changed; one of {}", M::FIELDS.join(", ")),
                )
            })
            .collect();
        finish(unknown)?;
        object.validate(&Directory::load(&txn).await?)?;
        object.stamp(timestamp(now));
        object.set_etag(String::new());
        let revision = store::update_object(&txn, M::KIND, &id, object.name(), stored.revision, object.encode_to_vec()).await?;
        store::bump_config_version(&txn).await?;
        self.config_event(&txn, actor, object.name(), false).await?;
        txn.commit().await?;
        self.feed.committed();
        object.set_etag(etag(revision));
        Ok(object)
    }

    /// Creates the default queue unless it exists (first start).
    pub async fn ensure_default_queue(&self, now: DateTime<Utc>) -> Result<()> {
        let queue = pb::Queue {
            name: self.settings.default_queue.clone(),
            display_name: "General".into(),
            ..Default::default()
        };
        match self.create_object("system", queue, now).await {
            Ok(_) | Err(Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn get_object<M: ConfigObject>(&self, name: &str) -> Result<M> {
        let id = object_id::<M>(name)?;
        let row = store::get_object(&self.db, M::KIND, id)
            .await?
            .ok_or_else(|| Error::NotFound {
                resource_type: M::KIND.resource_type(),
                name: name.to_owned(),
            })?;
        let mut object: M = decode(&row.data)?;
        object.set_etag(etag(row.revision));
        Ok(object)
    }

    /// Objects of a kind in name order after `after`, at most `limit`.
    pub async fn list_objects<M: ConfigObject>(&self, after: &str, limit: usize) -> Result<Vec<M>> {
        let rows = store::all_objects(&self.db, M::KIND).await?;
        let after_id = after
            .strip_prefix(M::COLLECTION)
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or("");
        rows.into_iter()
            .filter(|r| after.is_empty() || r.id.as_str() > after_id)
            .take(limit)
            .map(|r| {
                let mut o: M = decode(&r.data)?;
                o.set_etag(etag(r.revision));
                Ok(o)
            })
            .collect()
    }

    /// Deletes an object nothing refers to: not other configuration, not an active
    /// ticket, not the default queue.
    pub async fn delete_object<M: ConfigObject>(&self, actor: &str, name: &str, given_etag: &str) -> Result<()> {
        let id = object_id::<M>(name)?.to_owned();
        let txn = begin_write(&self.db).await?;
        let stored = store::get_object(&txn, M::KIND, &id).await?.ok_or_else(|| Error::NotFound {
            resource_type: M::KIND.resource_type(),
            name: name.to_owned(),
        })?;
        if !given_etag.is_empty() && given_etag != etag(stored.revision) {
            return Err(Error::EtagMismatch { name: name.to_owned() });
        }
        let dir = Directory::load(&txn).await?;
        let mut users = dir.referrers(name);
        let column = match M::KIND {
            Kind::Agent => Some(store::ReferenceColumn::Assignee),
            Kind::Queue => Some(store::ReferenceColumn::Queue),
            Kind::SlaPolicy => Some(store::ReferenceColumn::SlaPolicy),
            _ => None,
        };
        if let Some(column) = column {
            let active = store::count_active(&txn, column, name).await?;
            if active > 0 {
                users.push(format!("{active} active ticket(s)"));
            }
        }
        if M::KIND == Kind::Queue && name == self.settings.default_queue {
            users.push("the service's default queue (ticketing.default_queue)".into());
        }
        if !users.is_empty() {
            return Err(Error::FailedPrecondition {
                reason: "RESOURCE_IN_USE",
                subject: name.to_owned(),
                message: format!("still used by {}", users.join(", ")),
            });
        }
        store::delete_object(&txn, M::KIND, &id).await?;
        store::bump_config_version(&txn).await?;
        self.config_event(&txn, actor, name, true).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(())
    }

    async fn config_event<C: sea_orm::ConnectionTrait>(&self, c: &C, actor: &str, name: &str, deleted: bool) -> Result<()> {
        feed::append(
            c,
            NewEvent {
                event_type: "crm.ticketing.v1.ConfigurationChanged",
                subject: name.to_owned(),
                actor: actor.to_owned(),
                data: pb::ConfigurationChanged {
                    resource: name.to_owned(),
                    deleted,
                }
                .encode_to_vec(),
            },
        )
        .await
    }
}
