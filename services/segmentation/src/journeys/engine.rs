//! The journey engine: enrols customers when a trigger fires and advances each
//! enrolment through its steps.
//!
//! - Event triggers and waits for an event run in the projection's transaction
//!   (the interaction or order that fired them is applied exactly once).
//! - Segment triggers read who entered the segment since the journey's watermark;
//!   date triggers look for the attribute's date once per poll (an enrolment per
//!   year).
//! - Due positions are claimed in batches (`FOR UPDATE SKIP LOCKED`) and each is
//!   advanced in that transaction, so a step runs once across replicas and a crash
//!   repeats nothing that committed.

use std::{collections::HashMap, sync::Arc};

use chrono::{Datelike, Utc};
use crm_platform::{
    Result,
    db::begin_write,
    feed::{self, Feed, NewEvent},
};
use crm_proto::crm::segmentation::v1 as pb;
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection};

use super::{
    Action, Definition, Event, Trigger,
    store::{self, DONE, DUE, JourneyRow, Position, WAITING},
};
use crate::{
    campaigns::{self, CampaignsConfig, channels::HttpClient},
    rule::{Context, Scope, deps},
    store::tags as tag_store,
};

/// Steps one enrolment may take in one round (cycles always pass a wait).
const MAX_STEPS: usize = 100;

/// What happened to a customer, as the projection applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed<'a> {
    Interaction {
        kind: i32,
        category: &'a str,
    },
    Order {
        categories: &'a [String],
    },
    /// analytics raised the customer's churn risk.
    ChurnRisk,
}

impl Observed<'_> {
    fn is(&self, e: &Event) -> bool {
        match self {
            Observed::Interaction { kind, category } => e.matches_interaction(*kind, category),
            Observed::Order { categories } => e.matches_order(categories),
            Observed::ChurnRisk => *e == Event::ChurnRisk,
        }
    }
}

/// Validated definitions by journey, with their revision.
type Definitions = HashMap<String, (i64, Arc<Definition>)>;

/// Enrols and advances.
#[derive(Clone)]
pub struct Engine {
    db: DatabaseConnection,
    feed: Feed,
    cfg: CampaignsConfig,
    evaluator: crate::segments::Evaluator,
    http: HttpClient,
    /// Definitions by (journey, revision).
    cache: Arc<std::sync::Mutex<Definitions>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(db: DatabaseConnection, feed: Feed, cfg: CampaignsConfig, evaluator: crate::segments::Evaluator) -> Self {
        Self {
            db,
            feed,
            cfg,
            evaluator,
            http: HttpClient::new(),
            cache: Arc::default(),
        }
    }

    /// The validated definition of a stored journey (checked when it was saved).
    pub fn definition(&self, j: &JourneyRow) -> Result<Arc<Definition>> {
        if let Ok(cache) = self.cache.lock()
            && let Some((rev, def)) = cache.get(&j.id)
            && *rev == j.revision
        {
            return Ok(def.clone());
        }
        let def = Arc::new(super::validate(
            &j.settings,
            "journey",
            &Context::lenient(),
            &|_| true,
            &self.cfg,
        )?);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(j.id.clone(), (j.revision, def.clone()));
        }
        Ok(def)
    }

    /// Enrols `person` (for date triggers with enrolment number `year`) unless the
    /// re-entry rule forbids it; true when enrolled.
    pub async fn enroll<C: ConnectionTrait>(
        &self,
        conn: &C,
        j: &JourneyRow,
        def: &Definition,
        person: &str,
        year: Option<i64>,
        now_us: i64,
    ) -> Result<bool> {
        let latest = store::latest(conn, &j.id, person).await?;
        let enrollment = match (&latest, year) {
            (Some(p), Some(y)) if p.enrollment >= y => return Ok(false),
            (Some(p), _) if p.state != DONE => return Ok(false),
            (_, Some(y)) => y,
            (None, None) => 1,
            (Some(p), None) => {
                if !def.reentry_after_exit || now_us - p.enter_us < def.cooldown_us {
                    return Ok(false);
                }
                p.enrollment + 1
            }
        };
        let p = Position {
            person_id: person.to_owned(),
            journey_id: j.id.clone(),
            enrollment,
            step_id: def.first().to_owned(),
            state: DUE,
            due_us: now_us,
            wait_since_us: None,
            attempts: 0,
            enter_us: now_us,
        };
        let fresh = store::enroll(conn, &p, now_us).await?;
        if fresh {
            store::log(conn, &p, def.first(), now_us).await?;
        }
        Ok(fresh)
    }

    /// The projection's hook: `person` did something. Enrols them in active journeys
    /// triggered by it and moves their waits for it on.
    pub async fn observed<C: ConnectionTrait>(&self, conn: &C, person: &str, what: Observed<'_>) -> Result<()> {
        let now = Utc::now().timestamp_micros();
        let active = store::active(conn).await?;
        if active.is_empty() {
            return Ok(());
        }
        for j in &active {
            let def = self.definition(j)?;
            if let Trigger::Event(e) = &def.trigger
                && what.is(e)
            {
                self.enroll(conn, j, &def, person, None, now).await?;
            }
        }
        for mut p in store::waiting_of(conn, person).await? {
            let Some(j) = active.iter().find(|j| j.id == p.journey_id) else {
                continue;
            };
            let def = self.definition(j)?;
            if let Some(Action::Wait {
                until: Some(e), next, ..
            }) = def.step(&p.step_id)
                && what.is(e)
            {
                let next = next.clone();
                goto(conn, &mut p, &next, now).await?;
                store::update(conn, &p, now).await?;
            }
        }
        Ok(())
    }

    /// Segment and date triggers of the active journeys.
    pub async fn triggers(&self, now: chrono::DateTime<Utc>) -> Result<usize> {
        let now_us = now.timestamp_micros();
        let mut enrolled = 0;
        for j in store::active(&self.db).await? {
            let def = self.definition(&j)?;
            match &def.trigger {
                Trigger::Segment(segment) => loop {
                    let txn = begin_write(&self.db).await?;
                    let Some(mut row) = store::get(&txn, &j.id, true).await? else {
                        break;
                    };
                    if row.state != pb::JourneyState::Active {
                        break;
                    }
                    let entered = store::entered_since(&txn, segment, row.watermark_us, &row.watermark_person, 1000).await?;
                    for (person, _) in &entered {
                        enrolled += usize::from(self.enroll(&txn, &row, &def, person, None, now_us).await?);
                    }
                    let Some((person, last)) = entered.last() else { break };
                    row.watermark_us = *last;
                    row.watermark_person.clone_from(person);
                    store::save(&txn, &row).await?;
                    txn.commit().await?;
                    if entered.len() < 1000 {
                        break;
                    }
                },
                Trigger::Date { attribute, days_before } => {
                    let local = now.with_timezone(&def.zone);
                    // Enrolled from 09:00 on the day, `days_before` the date.
                    if local.time() < chrono::NaiveTime::from_hms_opt(9, 0, 0).unwrap_or_default() {
                        continue;
                    }
                    let target = local.date_naive() + chrono::Days::new(u64::from(*days_before));
                    let month_day = format!("{:02}-{:02}", target.month(), target.day());
                    let txn = begin_write(&self.db).await?;
                    for person in store::dated(&txn, attribute, &month_day).await? {
                        let year = Some(i64::from(target.year()));
                        enrolled += usize::from(self.enroll(&txn, &j, &def, &person, year, now_us).await?);
                    }
                    txn.commit().await?;
                }
                Trigger::Event(_) => {}
            }
        }
        Ok(enrolled)
    }

    /// Advances up to `limit` due positions; how many.
    pub async fn advance(&self, now: chrono::DateTime<Utc>, limit: usize) -> Result<usize> {
        let now_us = now.timestamp_micros();
        let txn = begin_write(&self.db).await?;
        let due = store::claim_due(&txn, now_us, limit).await?;
        let mut journeys: HashMap<String, Option<(JourneyRow, Arc<Definition>)>> = HashMap::new();
        let mut events = Vec::new();
        for mut p in due.clone() {
            if !journeys.contains_key(&p.journey_id) {
                let row = store::get(&txn, &p.journey_id, false).await?;
                let entry = match row {
                    Some(row) => {
                        let def = self.definition(&row)?;
                        Some((row, def))
                    }
                    None => None,
                };
                journeys.insert(p.journey_id.clone(), entry);
            }
            let Some(Some((_, def))) = journeys.get(&p.journey_id) else {
                continue;
            };
            let def = def.clone();
            self.run(&txn, &def, &mut p, now_us, &mut events).await?;
            store::update(&txn, &p, now_us).await?;
        }
        feed::append_many(&txn, events).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(due.len())
    }

    /// Runs an enrolment's steps until it waits or leaves.
    async fn run<C: ConnectionTrait>(
        &self,
        conn: &C,
        def: &Definition,
        p: &mut Position,
        now_us: i64,
        events: &mut Vec<NewEvent>,
    ) -> Result<()> {
        for _ in 0..MAX_STEPS {
            if p.state == DONE {
                return Ok(());
            }
            let Some(action) = def.step(&p.step_id) else {
                p.state = DONE;
                return Ok(());
            };
            let next = match action {
                Action::Exit => {
                    p.state = DONE;
                    return Ok(());
                }
                Action::Send { next } => {
                    let campaign = super::step_campaign(&p.journey_id, &p.step_id);
                    campaigns::store::insert_deliveries(
                        conn,
                        &campaign,
                        p.enrollment,
                        campaign_channel(conn, &campaign).await?,
                        &[campaigns::store::NewDelivery {
                            person_id: p.person_id.clone(),
                            state: pb::DeliveryState::Queued,
                            due_us: now_us,
                        }],
                    )
                    .await?;
                    next.clone()
                }
                Action::Wait {
                    duration_us,
                    until,
                    next,
                    timeout_next,
                } => match p.wait_since_us {
                    None => {
                        p.wait_since_us = Some(now_us);
                        p.due_us = now_us + duration_us;
                        p.state = if until.is_some() { WAITING } else { DUE };
                        return Ok(());
                    }
                    Some(_) if p.due_us > now_us => return Ok(()),
                    Some(_) => {
                        p.wait_since_us = None;
                        if until.is_some() { timeout_next.clone() } else { next.clone() }
                    }
                },
                Action::Branch { rule, if_true, if_false } => {
                    let people = [p.person_id.clone()];
                    let holds = self.evaluator.matching(conn, rule, Scope::People(&people)).await?;
                    if holds.contains(&p.person_id) {
                        if_true.clone()
                    } else {
                        if_false.clone()
                    }
                }
                Action::Tag { tag, remove, next } => {
                    self.tag(conn, p, tag, *remove, now_us, events).await?;
                    next.clone()
                }
                Action::Webhook { url, next } => match self.webhook(url, p).await {
                    Ok(()) => next.clone(),
                    Err(f) if !f.permanent && p.attempts + 1 < self.cfg.max_attempts => {
                        p.attempts += 1;
                        p.due_us = now_us + campaigns::backoff_us(self.cfg.retry_base_secs, p.attempts);
                        tracing::info!(journey = %p.journey_id, error = %f.message, "webhook failed; retrying");
                        return Ok(());
                    }
                    Err(f) => {
                        tracing::warn!(journey = %p.journey_id, step = %p.step_id, error = %f.message, "webhook failed for good; the customer leaves the journey");
                        p.state = DONE;
                        return Ok(());
                    }
                },
            };
            goto(conn, p, &next, now_us).await?;
        }
        tracing::warn!(journey = %p.journey_id, "an enrolment took {MAX_STEPS} steps in one round; continuing later");
        Ok(())
    }

    async fn tag<C: ConnectionTrait>(
        &self,
        conn: &C,
        p: &Position,
        tag: &str,
        remove: bool,
        now_us: i64,
        events: &mut Vec<NewEvent>,
    ) -> Result<()> {
        let id = tag.trim_start_matches("tags/");
        if tag_store::get(conn, id).await?.is_none() {
            tracing::warn!(journey = %p.journey_id, %tag, "the tag of a tag step does not exist; skipped");
            return Ok(());
        }
        let actor = format!("journeys/{}", p.journey_id);
        let person = vec![p.person_id.clone()];
        if remove {
            if tag_store::unassign(conn, id, &p.person_id).await? {
                crate::tags::untagged(conn, id, person.clone(), pb::UntagReason::Manual, &actor).await?;
            }
        } else {
            tag_store::assign(
                conn,
                &tag_store::Assignment {
                    tag_id: id.to_owned(),
                    customer_id: p.person_id.clone(),
                    source: pb::TagSource::Manual as i32,
                    actor: actor.clone(),
                    assign_us: now_us,
                    expire_us: None,
                },
            )
            .await?;
            events.push(NewEvent {
                event_type: "crm.segmentation.v1.CustomersTagged",
                subject: format!("tags/{id}"),
                actor,
                data: pb::CustomersTagged {
                    tag: format!("tags/{id}"),
                    customers: vec![format!("customers/{}", p.person_id)],
                    source: pb::TagSource::Manual as i32,
                    expire_time: None,
                }
                .encode_to_vec(),
            });
        }
        self.evaluator.on_change(conn, &person, deps::TAGS).await
    }

    async fn webhook(&self, url: &str, p: &Position) -> std::result::Result<(), campaigns::channels::Failure> {
        let uri: http::Uri = url.parse().map_err(|e| campaigns::channels::Failure {
            permanent: true,
            message: format!("not a URL: {e}"),
        })?;
        let key = format!("{}:{}:{}:{}", p.journey_id, p.step_id, p.enrollment, p.person_id);
        let body = serde_json::json!({
            "journey": format!("journeys/{}", p.journey_id),
            "step": p.step_id,
            "customer": format!("customers/{}", p.person_id),
            "enrollment": p.enrollment,
        });
        let (status, answer) = self
            .http
            .post_json(
                &uri,
                &[("idempotency-key", key.as_str())],
                body.to_string().into_bytes(),
                std::time::Duration::from_secs(5),
                16 * 1024,
            )
            .await?;
        campaigns::channels::classify(status, &answer).map(|_| ())
    }

    /// Until shutdown: triggers, then due positions, every poll.
    pub async fn run_loop(self, mut shutdown: crm_platform::server::ShutdownSignal) {
        let poll = std::time::Duration::from_millis(self.cfg.poll_interval_ms);
        loop {
            let round = async {
                self.triggers(Utc::now()).await?;
                while self.advance(Utc::now(), self.cfg.batch_size).await? >= self.cfg.batch_size {}
                Ok::<_, crm_platform::Error>(())
            };
            if let Err(err) = round.await {
                tracing::warn!(%err, "journey engine failed; retrying");
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }
}

/// The channel of a step's campaign.
async fn campaign_channel<C: ConnectionTrait>(conn: &C, campaign: &str) -> Result<i32> {
    Ok(campaigns::store::get(conn, campaign).await?.map_or(0, |c| c.settings.channel))
}

/// Moves an enrolment to `next` (or out, when empty), due now.
async fn goto<C: ConnectionTrait>(conn: &C, p: &mut Position, next: &str, now_us: i64) -> Result<()> {
    p.wait_since_us = None;
    p.attempts = 0;
    if next.is_empty() {
        p.state = DONE;
        return Ok(());
    }
    p.step_id = next.to_owned();
    p.state = DUE;
    p.due_us = now_us;
    store::log(conn, p, next, now_us).await
}
