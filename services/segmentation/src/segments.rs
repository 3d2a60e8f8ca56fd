//! Segments: rules over the projection, tags, RFM, traits and consent, with their
//! membership materialised and kept up to date.
//!
//! - A change applied to the projection (or a tag put on or taken off) re-evaluates,
//!   in the same transaction, only the segments whose rule reads what changed, and
//!   only for the persons it touched ([`Evaluator::on_change`]).
//! - A full evaluation computes a segment's whole membership: for a new rule version,
//!   after an RFM recomputation or a purge (marked stale), and on a schedule for rules
//!   that read time (activity windows, traits, consent expiry) ([`Segments::run`]).
//! - Both paths diff against the stored membership and publish who entered and who
//!   left as `SegmentMembershipChanged` events. Evaluations of one segment take its
//!   row lock (PostgreSQL) or the write lock (SQLite), so they never interleave.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::Utc;
use crm_platform::{
    Error, FieldViolation, Result,
    db::{begin_write, query},
    feed::{self, Feed, NewEvent},
    server::ShutdownSignal,
};
use crm_proto::crm::segmentation::v1 as pb;
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use serde::Deserialize;
use tokio::sync::Notify;

use crate::{
    rule::{self, Context, Rule, Scope},
    store::segments::{self as store, SegmentRow, VersionRow},
    store::tags as tag_store,
    tags::{check_text, etag, time, valid_id},
};

/// `[segmentation.segments]`.
#[derive(Debug, Clone, Deserialize)]
pub struct SegmentsConfig {
    /// How often rules that read time are evaluated in full.
    pub refresh_interval_secs: u64,
    /// How often the evaluator looks for due segments (a create or update wakes it
    /// at once).
    pub poll_interval_ms: u64,
}

/// Customers in a preview sample at most.
pub const MAX_SAMPLE: i32 = 100;
/// Memory for a whole-population evaluation's aggregates on PostgreSQL (the server's
/// default, 4 MB, spills them to disk at a million customers).
const EVALUATION_WORK_MEM: &str = "SET LOCAL work_mem = '64MB'";

/// Gives a whole-population evaluation in transaction `conn` its memory.
async fn evaluation_memory<C: ConnectionTrait>(conn: &C) -> Result<()> {
    if conn.get_database_backend() == sea_orm::DbBackend::Postgres {
        conn.execute_unprepared(EVALUATION_WORK_MEM).await?;
    }
    Ok(())
}

/// Customers per membership event at most.
const EVENT_BATCH: usize = 1000;
/// Rounds of segments re-evaluated because another segment's tag changed, at most
/// (a cycle of segments tagging each other stops there).
const MAX_TAG_ROUNDS: usize = 4;

/// Puts segment `segment`'s tag on `people` that lack it, with the event; returns them.
async fn tag_on<C: ConnectionTrait>(conn: &C, segment: &str, tag: &str, people: &[String]) -> Result<Vec<String>> {
    if tag.is_empty() || people.is_empty() {
        return Ok(Vec::new());
    }
    let actor = format!("segments/{segment}");
    let fresh = tag_store::assign_by_rule(conn, tag, &actor, people, Utc::now().timestamp_micros()).await?;
    if !fresh.is_empty() {
        feed::append(
            conn,
            NewEvent {
                event_type: "crm.segmentation.v1.CustomersTagged",
                subject: format!("tags/{tag}"),
                actor,
                data: pb::CustomersTagged {
                    tag: format!("tags/{tag}"),
                    customers: fresh.iter().map(|p| format!("customers/{p}")).collect(),
                    source: pb::TagSource::Rule as i32,
                    expire_time: None,
                }
                .encode_to_vec(),
            },
        )
        .await?;
    }
    Ok(fresh)
}

/// Takes segment `segment`'s tag off `people` it put it on, with the event; returns
/// them.
async fn tag_off<C: ConnectionTrait>(conn: &C, segment: &str, tag: &str, people: &[String]) -> Result<Vec<String>> {
    if tag.is_empty() || people.is_empty() {
        return Ok(Vec::new());
    }
    let actor = format!("segments/{segment}");
    let gone = tag_store::unassign_by_rule(conn, tag, &actor, people).await?;
    crate::tags::untagged(conn, tag, gone.clone(), pb::UntagReason::Rule, &actor).await?;
    Ok(gone)
}

/// A built-in template.
pub struct Template {
    pub id: &'static str,
    pub display_name: &'static str,
    pub description: &'static str,
    pub filter: &'static str,
    pub strategy: &'static str,
}

/// The seeds' three segments.
pub const TEMPLATES: &[Template] = &[
    Template {
        id: "new-after-first-purchase",
        display_name: "New customers after their first purchase",
        description: "Exactly one order, placed in the last 30 days.",
        filter: "orders(3650d) = 1 AND orders(30d) = 1",
        strategy: "first-order coupon",
    },
    Template {
        id: "high-value-repeat-buyers",
        display_name: "High-value repeat buyers",
        description: "RFM champions and loyal customers in the top two fifths by spend.",
        filter: "(rfm.group = CHAMPIONS OR rfm.group = LOYAL) AND rfm.monetary_score >= 4",
        strategy: "exclusive benefits",
    },
    Template {
        id: "dormant-to-wake-up",
        display_name: "Dormant customers to wake up",
        description: "Bought in the last year, but nothing in the last 90 days.",
        filter: "orders(365d) >= 1 AND orders(90d) = 0",
        strategy: "win-back",
    },
];

/// Parsed stored rules, by their text (parsing is deterministic, so any service
/// instance may share them). Kept small: cleared when it grows past a bound.
static PARSED: Mutex<Option<HashMap<String, Arc<Rule>>>> = Mutex::new(None);

/// A stored (canonical, once validated) rule, parsed. Stored rules are read with any
/// trait allowed: one dropped from configuration since makes its conditions match
/// nobody rather than stopping the service.
pub fn stored_rule(filter: &str) -> Result<Arc<Rule>> {
    if let Some(r) = PARSED
        .lock()
        .ok()
        .and_then(|m| m.as_ref().and_then(|m| m.get(filter).cloned()))
    {
        return Ok(r);
    }
    let (tree, _) = rule::parse(filter, "filter")
        .map_err(|v| Error::internal(anyhow::anyhow!("stored rule `{filter}`: {}", v.description)))?;
    let parsed = rule::validate(&tree, &Context::lenient())
        .map_err(|v| Error::internal(anyhow::anyhow!("stored rule `{filter}`: {:?}", v)))?;
    let parsed = Arc::new(parsed);
    if let Ok(mut guard) = PARSED.lock() {
        let map = guard.get_or_insert_with(HashMap::new);
        if map.len() > 1000 {
            map.clear();
        }
        map.insert(filter.to_owned(), parsed.clone());
    }
    Ok(parsed)
}

/// A resource that a segment's rule still reads cannot go: FAILED_PRECONDITION
/// `RESOURCE_IN_USE` naming the first such segment (`what` says what the rule reads,
/// "tag" or "trait").
pub async fn refuse_if_read<C: ConnectionTrait>(
    conn: &C,
    subject: &str,
    what: &str,
    reads: impl Fn(&Rule) -> bool,
) -> Result<()> {
    for (segment, filter) in store::filters(conn).await? {
        let rule = stored_rule(&filter)?;
        if reads(&rule) {
            return Err(Error::FailedPrecondition {
                reason: "RESOURCE_IN_USE",
                subject: subject.to_owned(),
                message: format!("segments/{segment} reads this {what}: change its rule first"),
            });
        }
    }
    Ok(())
}

fn membership_events(segment: &str, version: i64, entered: &[String], exited: &[String]) -> Vec<NewEvent> {
    let names = |ids: &[String]| ids.iter().map(|c| format!("customers/{c}")).collect::<Vec<_>>();
    let batches = entered.len().div_ceil(EVENT_BATCH).max(exited.len().div_ceil(EVENT_BATCH));
    (0..batches)
        .map(|i| {
            let part = |ids: &[String]| -> Vec<String> {
                ids.get(i * EVENT_BATCH..)
                    .map_or(Vec::new(), |rest| names(&rest[..rest.len().min(EVENT_BATCH)]))
            };
            NewEvent {
                event_type: "crm.segmentation.v1.SegmentMembershipChanged",
                subject: format!("segments/{segment}"),
                actor: crate::SERVICE.to_owned(),
                data: pb::SegmentMembershipChanged {
                    segment: format!("segments/{segment}"),
                    version,
                    entered: part(entered),
                    exited: part(exited),
                }
                .encode_to_vec(),
            }
        })
        .collect()
}

/// Evaluates rules and applies membership changes, in the caller's transaction.
#[derive(Debug, Clone)]
pub struct Evaluator {
    /// The currency order totals are summed in (the RFM one).
    pub currency: String,
}

impl Evaluator {
    /// The persons among `scope` matching `rule` now.
    pub async fn matching<C: ConnectionTrait>(&self, conn: &C, rule: &Rule, scope: Scope<'_>) -> Result<BTreeSet<String>> {
        let now = Utc::now().timestamp_micros();
        let (sql, values) = rule::compile(rule, conn.get_database_backend(), now, &self.currency, scope);
        query(conn, &sql, values)
            .await?
            .iter()
            .map(|r| Ok(r.try_get("", "id")?))
            .collect()
    }

    /// Stores who entered and left a segment, with their events, and puts the
    /// segment's tag on and off them; returns the persons whose tags changed.
    async fn apply<C: ConnectionTrait>(
        &self,
        conn: &C,
        s: &SegmentRow,
        entered: &[String],
        exited: &[String],
    ) -> Result<Vec<String>> {
        if entered.is_empty() && exited.is_empty() {
            return Ok(Vec::new());
        }
        let now = Utc::now().timestamp_micros();
        store::add_members(conn, &s.id, entered, now).await?;
        store::remove_members(conn, &s.id, exited).await?;
        feed::append_many(conn, membership_events(&s.id, s.version, entered, exited)).await?;
        let mut retagged = tag_on(conn, &s.id, &s.rule_tag, entered).await?;
        retagged.extend(tag_off(conn, &s.id, &s.rule_tag, exited).await?);
        Ok(retagged)
    }

    /// After a change to `people` touching the data `deps` (`rule::deps` bits):
    /// re-evaluates, for those persons only, every segment reading any of it. A
    /// person that is no longer one (merged into another, erased) leaves.
    pub async fn on_change<C: ConnectionTrait>(&self, conn: &C, people: &[String], deps: i64) -> Result<()> {
        self.cascade(conn, people.to_vec(), deps).await
    }

    /// `on_change`, then again for the persons whose rule tags changed (segments
    /// reading tags), a bounded number of rounds.
    async fn cascade<C: ConnectionTrait>(&self, conn: &C, mut people: Vec<String>, mut deps: i64) -> Result<()> {
        for _ in 0..MAX_TAG_ROUNDS {
            if people.is_empty() {
                return Ok(());
            }
            people.sort();
            people.dedup();
            let mut retagged = Vec::new();
            for s in store::lock_reading(conn, deps).await? {
                let rule = stored_rule(&s.filter)?;
                let matched = self.matching(conn, &rule, Scope::People(&people)).await?;
                let current: BTreeSet<String> = store::members_among(conn, &s.id, &people).await?.into_iter().collect();
                let entered: Vec<String> = matched.difference(&current).cloned().collect();
                let exited: Vec<String> = current.difference(&matched).cloned().collect();
                retagged.extend(self.apply(conn, &s, &entered, &exited).await?);
                let delta = i64::try_from(entered.len()).unwrap_or(0) - i64::try_from(exited.len()).unwrap_or(0);
                if delta != 0 {
                    store::add_members_count(conn, &s.id, delta).await?;
                }
            }
            people = retagged;
            deps = rule::deps::TAGS;
        }
        if !people.is_empty() {
            tracing::warn!(
                people = people.len(),
                "segment tags still changing after {MAX_TAG_ROUNDS} rounds: segments tag each other in a cycle"
            );
        }
        Ok(())
    }

    /// A segment's tag changed from `old` to its `rule_tag`: moved on every member.
    async fn retag<C: ConnectionTrait>(&self, conn: &C, s: &SegmentRow, old: &str) -> Result<()> {
        let members = store::all_members(conn, &s.id).await?;
        let mut retagged = tag_off(conn, &s.id, old, &members).await?;
        retagged.extend(tag_on(conn, &s.id, &s.rule_tag, &members).await?);
        self.cascade(conn, retagged, rule::deps::TAGS).await
    }

    /// The whole membership of a segment anew (its current rule version); returns
    /// (entered, exited), or `None` when the segment is gone.
    pub async fn evaluate<C: ConnectionTrait>(&self, conn: &C, id: &str) -> Result<Option<(usize, usize)>> {
        let Some(s) = store::lock(conn, id).await? else {
            return Ok(None);
        };
        let rule = stored_rule(&s.filter)?;
        evaluation_memory(conn).await?;
        let matched = self.matching(conn, &rule, Scope::All).await?;
        let current: BTreeSet<String> = store::all_members(conn, id).await?.into_iter().collect();
        let entered: Vec<String> = matched.difference(&current).cloned().collect();
        let exited: Vec<String> = current.difference(&matched).cloned().collect();
        let retagged = self.apply(conn, &s, &entered, &exited).await?;
        let count = i64::try_from(matched.len()).unwrap_or(i64::MAX);
        store::evaluated(conn, id, s.version, Utc::now().timestamp_micros(), count).await?;
        self.cascade(conn, retagged, rule::deps::TAGS).await?;
        Ok(Some((entered.len(), exited.len())))
    }
}

/// A rule given as a tree or as text (exactly one), validated; violations are named
/// under `prefix` (`segment.rule…` / `segment.filter`).
pub fn resolve(tree: Option<&pb::SegmentRule>, filter: &str, ctx: &Context, prefix: &str) -> Result<Rule> {
    let field = |leaf: &str| {
        if prefix.is_empty() {
            leaf.to_owned()
        } else {
            format!("{prefix}.{leaf}")
        }
    };
    match (tree, filter.trim().is_empty()) {
        (Some(_), false) => Err(Error::invalid(field("filter"), "give the rule or the filter, not both")),
        (None, true) => Err(Error::invalid(
            field("rule"),
            "required: the rule as a tree, or `filter` as text",
        )),
        (Some(t), true) => rule::validate(t, ctx).map_err(|v| {
            Error::InvalidArgument(
                v.into_iter()
                    .map(|f| {
                        let path = if f.field.is_empty() {
                            field("rule")
                        } else {
                            format!("{}.{}", field("rule"), f.field)
                        };
                        FieldViolation::new(path, f.description)
                    })
                    .collect(),
            )
        }),
        (None, false) => {
            let (t, spans) = rule::parse(filter, &field("filter")).map_err(|v| Error::InvalidArgument(vec![v]))?;
            rule::validate(&t, ctx).map_err(|v| Error::InvalidArgument(rule::text::locate(v, &spans, &field("filter"))))
        }
    }
}

/// A preview's outcome.
#[derive(Debug, Clone)]
pub struct Preview {
    pub count: i64,
    pub sample: Vec<String>,
    pub rule: Rule,
}

/// The segment use cases.
#[derive(Clone)]
pub struct Segments {
    db: DatabaseConnection,
    feed: Feed,
    traits: crate::traits::Registry,
    evaluator: Evaluator,
    cfg: SegmentsConfig,
    wake: Arc<Notify>,
}

fn not_found(id: &str) -> Error {
    Error::NotFound {
        resource_type: "crm.segmentation.v1.Segment",
        name: format!("segments/{id}"),
    }
}

/// `segments/{segment}` → `segment`.
pub fn segment_id<'a>(name: &'a str, field: &str) -> Result<&'a str> {
    name.strip_prefix("segments/")
        .filter(|id| valid_id(id))
        .ok_or_else(|| Error::invalid(field, "must be a segment name `segments/{segment}`"))
}

pub fn to_proto(s: &SegmentRow) -> pb::Segment {
    pb::Segment {
        name: format!("segments/{}", s.id),
        display_name: s.display_name.clone(),
        description: s.description.clone(),
        rule: stored_rule(&s.filter).ok().map(|r| rule::to_proto(&r)),
        filter: s.filter.clone(),
        template: String::new(),
        strategy: s.strategy.clone(),
        version: s.version,
        state: if s.evaluated_version < s.version {
            pb::SegmentState::Computing
        } else {
            pb::SegmentState::Active
        } as i32,
        member_count: s.member_count,
        time_dependent: s.time_dependent,
        evaluate_time: time(s.evaluate_us),
        create_time: time(s.create_us),
        update_time: time(s.update_us),
        etag: etag(s.revision),
        tag: if s.rule_tag.is_empty() {
            String::new()
        } else {
            format!("tags/{}", s.rule_tag)
        },
    }
}

fn changed(s: &SegmentRow, deleted: bool, actor: &str) -> NewEvent {
    NewEvent {
        event_type: "crm.segmentation.v1.SegmentChanged",
        subject: format!("segments/{}", s.id),
        actor: actor.to_owned(),
        data: pb::SegmentChanged {
            segment: Some(to_proto(s)),
            deleted,
        }
        .encode_to_vec(),
    }
}

pub fn template_to_proto(t: &Template) -> pb::SegmentTemplate {
    pb::SegmentTemplate {
        name: format!("segmentTemplates/{}", t.id),
        display_name: t.display_name.into(),
        description: t.description.into(),
        filter: t.filter.into(),
        rule: stored_rule(t.filter).ok().map(|r| rule::to_proto(&r)),
        strategy: t.strategy.into(),
    }
}

impl Segments {
    pub fn new(
        db: DatabaseConnection,
        feed: Feed,
        traits: crate::traits::Registry,
        evaluator: Evaluator,
        cfg: SegmentsConfig,
    ) -> Self {
        Self {
            db,
            feed,
            traits,
            evaluator,
            cfg,
            wake: Arc::new(Notify::new()),
        }
    }

    /// What rules are validated against: the traits in force now.
    fn ctx(&self) -> Context {
        Context::new(&self.traits.current())
    }

    /// The rule of a create or update: tree, text or (create) template.
    fn rule_of(&self, s: &pb::Segment, template: Option<&Template>) -> Result<Rule> {
        match template {
            Some(t) if s.rule.is_none() && s.filter.trim().is_empty() => Ok((*stored_rule(t.filter)?).clone()),
            Some(_) => Err(Error::invalid("segment.template", "give a template or a rule, not both")),
            None => resolve(s.rule.as_ref(), &s.filter, &self.ctx(), "segment"),
        }
    }

    /// The tag a segment puts on its members: empty, or an existing tag its rule does
    /// not read.
    async fn rule_tag<C: ConnectionTrait>(&self, conn: &C, name: &str, rule: &Rule) -> Result<String> {
        if name.is_empty() {
            return Ok(String::new());
        }
        let id = crate::tags::tag_id(name, "segment.tag")?;
        if crate::store::tags::get(conn, id).await?.is_none() {
            return Err(Error::invalid("segment.tag", format!("tags/{id} does not exist")));
        }
        if rule.tags().iter().any(|t| t == id) {
            return Err(Error::invalid(
                "segment.tag",
                "the rule reads this tag: a segment cannot put on the tag it selects by",
            ));
        }
        Ok(id.to_owned())
    }

    /// Every tag a rule names must exist.
    async fn check_tags<C: ConnectionTrait>(&self, conn: &C, rule: &Rule, field: &str) -> Result<()> {
        for tag in rule.tags() {
            if crate::store::tags::get(conn, &tag).await?.is_none() {
                return Err(Error::invalid(field, format!("tags/{tag} does not exist")));
            }
        }
        Ok(())
    }

    pub async fn preview(&self, tree: Option<&pb::SegmentRule>, filter: &str, sample: i32) -> Result<Preview> {
        let rule = resolve(tree, filter, &self.ctx(), "")?;
        let sample = match sample {
            0 => 10,
            n if (1..=MAX_SAMPLE).contains(&n) => n,
            _ => return Err(Error::invalid("sample_size", format!("0 to {MAX_SAMPLE}"))),
        };
        self.check_tags(&self.db, &rule, if filter.is_empty() { "rule" } else { "filter" })
            .await?;
        let now = Utc::now().timestamp_micros();
        let (sql, mut values) = rule::compile(
            &rule,
            self.db.get_database_backend(),
            now,
            &self.evaluator.currency,
            Scope::All,
        );
        values.push(i64::from(sample).into());
        let txn = self.db.begin().await?;
        evaluation_memory(&txn).await?;
        let rows = query(
            &txn,
            &format!("SELECT m.id AS id, COUNT(*) OVER () AS n FROM ({sql}) m ORDER BY m.id LIMIT ?"),
            values,
        )
        .await?;
        txn.commit().await?;
        let count = match rows.first() {
            Some(r) => r.try_get("", "n")?,
            None => 0,
        };
        let sample = rows
            .iter()
            .map(|r| r.try_get("", "id"))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Preview { count, sample, rule })
    }

    fn template(&self, name: &str) -> Result<Option<&'static Template>> {
        if name.is_empty() {
            return Ok(None);
        }
        name.strip_prefix("segmentTemplates/")
            .and_then(|id| TEMPLATES.iter().find(|t| t.id == id))
            .map(Some)
            .ok_or_else(|| {
                let known: Vec<String> = TEMPLATES.iter().map(|t| format!("segmentTemplates/{}", t.id)).collect();
                Error::invalid("segment.template", format!("not a template: {}", known.join(", ")))
            })
    }

    pub async fn create(&self, actor: &str, segment_id: &str, s: &pb::Segment) -> Result<SegmentRow> {
        let mut v = Vec::new();
        if !valid_id(segment_id) {
            v.push(FieldViolation::new(
                "segment_id",
                "1 to 63 of [a-z0-9_-], starting with a letter",
            ));
        }
        let template = match self.template(&s.template) {
            Ok(t) => t,
            Err(Error::InvalidArgument(mut found)) => {
                v.append(&mut found);
                None
            }
            Err(other) => return Err(other),
        };
        let display_name = if s.display_name.trim().is_empty() {
            template.map_or("", |t| t.display_name)
        } else {
            s.display_name.as_str()
        };
        let description = if s.description.is_empty() {
            template.map_or("", |t| t.description)
        } else {
            &s.description
        };
        let strategy = if s.strategy.is_empty() {
            template.map_or("", |t| t.strategy)
        } else {
            &s.strategy
        };
        check_text(&mut v, "segment.display_name", display_name, 100, true);
        check_text(&mut v, "segment.description", description, 1000, false);
        check_text(&mut v, "segment.strategy", strategy, 200, false);
        let rule = match self.rule_of(s, template) {
            Ok(r) => Some(r),
            Err(Error::InvalidArgument(mut found)) => {
                v.append(&mut found);
                None
            }
            Err(other) => return Err(other),
        };
        let Some(rule) = rule.filter(|_| v.is_empty()) else {
            return Err(Error::InvalidArgument(v));
        };
        let txn = begin_write(&self.db).await?;
        self.check_tags(
            &txn,
            &rule,
            if s.filter.is_empty() {
                "segment.rule"
            } else {
                "segment.filter"
            },
        )
        .await?;
        let rule_tag = self.rule_tag(&txn, &s.tag, &rule).await?;
        let now = Utc::now().timestamp_micros();
        let row = SegmentRow {
            id: segment_id.to_owned(),
            display_name: display_name.trim().to_owned(),
            description: description.trim().to_owned(),
            strategy: strategy.trim().to_owned(),
            filter: rule::print(&rule),
            version: 1,
            deps: rule.deps(),
            time_dependent: rule.time_dependent(),
            evaluated_version: 0,
            stale: false,
            evaluate_us: 0,
            member_count: 0,
            revision: 1,
            create_us: now,
            update_us: now,
            rule_tag,
        };
        if !store::insert(&txn, &row).await? {
            return Err(Error::AlreadyExists {
                resource_type: "crm.segmentation.v1.Segment",
                name: format!("segments/{segment_id}"),
            });
        }
        store::add_version(
            &txn,
            segment_id,
            &VersionRow {
                version: 1,
                filter: row.filter.clone(),
                actor: actor.to_owned(),
                create_us: now,
            },
        )
        .await?;
        feed::append(&txn, changed(&row, false, actor)).await?;
        txn.commit().await?;
        self.feed.committed();
        self.wake.notify_one();
        Ok(row)
    }

    pub async fn get(&self, id: &str) -> Result<SegmentRow> {
        store::get(&self.db, id).await?.ok_or_else(|| not_found(id))
    }

    pub async fn list(&self, after: &str, limit: u64) -> Result<Vec<SegmentRow>> {
        store::list(&self.db, after, limit).await
    }

    pub async fn update(&self, actor: &str, patch: &pb::Segment, paths: &[String]) -> Result<SegmentRow> {
        let id = segment_id(&patch.name, "segment.name")?;
        let mut v = Vec::new();
        crm_platform::mask::check_paths(
            paths,
            &["display_name", "description", "strategy", "rule", "filter", "tag"],
            &mut v,
        );
        let wants = |f: &str| paths.iter().any(|p| p == f);
        if wants("display_name") {
            check_text(&mut v, "segment.display_name", &patch.display_name, 100, true);
        }
        if wants("description") {
            check_text(&mut v, "segment.description", &patch.description, 1000, false);
        }
        if wants("strategy") {
            check_text(&mut v, "segment.strategy", &patch.strategy, 200, false);
        }
        if !patch.template.is_empty() {
            v.push(FieldViolation::new("segment.template", "templates are for CreateSegment"));
        }
        let rule = if wants("rule") || wants("filter") {
            match resolve(patch.rule.as_ref(), &patch.filter, &self.ctx(), "segment") {
                Ok(r) => Some(r),
                Err(Error::InvalidArgument(mut found)) => {
                    v.append(&mut found);
                    None
                }
                Err(other) => return Err(other),
            }
        } else {
            None
        };
        if !v.is_empty() {
            return Err(Error::InvalidArgument(v));
        }
        let txn = begin_write(&self.db).await?;
        let current = store::get(&txn, id).await?.ok_or_else(|| not_found(id))?;
        if !patch.etag.is_empty() && patch.etag != etag(current.revision) {
            return Err(Error::EtagMismatch {
                name: patch.name.clone(),
            });
        }
        let mut next = current.clone();
        if wants("display_name") {
            next.display_name = patch.display_name.trim().to_owned();
        }
        if wants("description") {
            next.description = patch.description.trim().to_owned();
        }
        if wants("strategy") {
            next.strategy = patch.strategy.trim().to_owned();
        }
        let now = Utc::now().timestamp_micros();
        if let Some(rule) = &rule {
            let text = rule::print(rule);
            if text != current.filter {
                self.check_tags(
                    &txn,
                    rule,
                    if patch.filter.is_empty() {
                        "segment.rule"
                    } else {
                        "segment.filter"
                    },
                )
                .await?;
                next.filter = text;
                next.version += 1;
                next.deps = rule.deps();
                next.time_dependent = rule.time_dependent();
                store::add_version(
                    &txn,
                    id,
                    &VersionRow {
                        version: next.version,
                        filter: next.filter.clone(),
                        actor: actor.to_owned(),
                        create_us: now,
                    },
                )
                .await?;
            }
        }
        if wants("tag") || (rule.is_some() && !next.rule_tag.is_empty()) {
            let name = if wants("tag") {
                patch.tag.clone()
            } else {
                format!("tags/{}", next.rule_tag)
            };
            let rule_now = stored_rule(&next.filter)?;
            next.rule_tag = self.rule_tag(&txn, &name, &rule_now).await?;
        }
        if next == current {
            return Ok(current);
        }
        next.revision += 1;
        next.update_us = now;
        if !store::update(&txn, &next, current.revision).await? {
            return Err(Error::EtagMismatch {
                name: patch.name.clone(),
            });
        }
        if next.rule_tag != current.rule_tag {
            self.evaluator.retag(&txn, &next, &current.rule_tag).await?;
        }
        feed::append(&txn, changed(&next, false, actor)).await?;
        txn.commit().await?;
        self.feed.committed();
        self.wake.notify_one();
        Ok(next)
    }

    pub async fn delete(&self, actor: &str, name: &str, etag_value: &str) -> Result<()> {
        let id = segment_id(name, "name")?;
        let txn = begin_write(&self.db).await?;
        let current = store::lock(&txn, id).await?.ok_or_else(|| not_found(id))?;
        if !etag_value.is_empty() && etag_value != etag(current.revision) {
            return Err(Error::EtagMismatch { name: name.to_owned() });
        }
        let untagging = SegmentRow {
            rule_tag: String::new(),
            ..current.clone()
        };
        self.evaluator.retag(&txn, &untagging, &current.rule_tag).await?;
        store::delete(&txn, id).await?;
        feed::append(&txn, changed(&current, true, actor)).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(())
    }

    pub async fn versions(&self, id: &str) -> Result<Vec<VersionRow>> {
        self.get(id).await?;
        store::versions(&self.db, id).await
    }

    pub async fn members(&self, id: &str, after: &str, limit: u64) -> Result<(SegmentRow, Vec<(String, i64)>)> {
        let s = self.get(id).await?;
        Ok((s, store::members(&self.db, id, after, limit).await?))
    }

    /// Whether `person` is in the segment: (segment, entered).
    pub async fn check(&self, id: &str, person: &str) -> Result<(SegmentRow, Option<i64>)> {
        let s = self.get(id).await?;
        let found = store::of_person(&self.db, person).await?;
        Ok((s, found.into_iter().find(|(seg, _)| seg == id).map(|(_, at)| at)))
    }

    pub async fn of_person(&self, person: &str) -> Result<Vec<(String, i64)>> {
        store::of_person(&self.db, person).await
    }

    /// Evaluates every due segment in full, each in its own transaction; returns how
    /// many were evaluated.
    pub async fn evaluate_due(&self) -> Result<usize> {
        let refresh = i64::try_from(self.cfg.refresh_interval_secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000);
        let due = store::due(&self.db, Utc::now().timestamp_micros().saturating_sub(refresh)).await?;
        for id in &due {
            let txn = begin_write(&self.db).await?;
            if let Some((entered, exited)) = self.evaluator.evaluate(&txn, id).await? {
                tracing::debug!(segment = %id, entered, exited, "segment evaluated");
            }
            txn.commit().await?;
            self.feed.committed();
        }
        Ok(due.len())
    }

    /// Full evaluations of due segments until shutdown.
    pub async fn run(self, mut shutdown: ShutdownSignal) {
        let poll = Duration::from_millis(self.cfg.poll_interval_ms.max(10));
        loop {
            // Traits another replica declared.
            if let Err(err) = self.traits.reload(&self.db).await {
                tracing::warn!(%err, "reading declared traits failed; retrying");
            }
            if let Err(err) = self.evaluate_due().await {
                tracing::warn!(%err, "segment evaluation failed; retrying");
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }
}
