//! Journey use cases: create, change, activate and pause, delete, read counts.

use crm_platform::{Error, FieldViolation, Result, db::begin_write, feed, feed::Feed, feed::NewEvent};
use crm_proto::crm::segmentation::v1 as pb;
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection};

use super::{step_campaign, step_campaign_settings, store, store::JourneyRow};
use crate::{
    campaigns::{self, CampaignsConfig, manage::Campaigns, store as campaign_store},
    rule::Context,
    traits::Registry,
};

/// The journey use cases.
#[derive(Debug, Clone)]
pub struct Journeys {
    db: DatabaseConnection,
    feed: Feed,
    cfg: CampaignsConfig,
    traits: Registry,
    campaigns: Campaigns,
}

fn not_found(name: &str) -> Error {
    Error::NotFound {
        resource_type: "crm.segmentation.v1.Journey",
        name: name.to_owned(),
    }
}

pub fn journey_id<'a>(name: &'a str, field: &str) -> Result<&'a str> {
    name.strip_prefix("journeys/")
        .filter(|id| crate::tags::valid_id(id))
        .ok_or_else(|| Error::invalid(field, "must be a journey name `journeys/{journey}`"))
}

fn etag(revision: i64) -> String {
    format!("\"{revision}\"")
}

/// A stored journey as the API shows it.
pub fn to_proto(j: &JourneyRow) -> pb::Journey {
    pb::Journey {
        name: format!("journeys/{}", j.id),
        state: j.state as i32,
        create_time: crate::tags::time(j.create_us),
        update_time: crate::tags::time(j.update_us),
        etag: etag(j.revision),
        ..j.settings.clone()
    }
}

fn changed(j: &JourneyRow, deleted: bool, actor: &str) -> NewEvent {
    NewEvent {
        event_type: "crm.segmentation.v1.JourneyChanged",
        subject: format!("journeys/{}", j.id),
        actor: actor.to_owned(),
        data: pb::JourneyChanged {
            journey: Some(to_proto(j)),
            deleted,
        }
        .encode_to_vec(),
    }
}

/// The settings part of a journey as stored.
fn settings(j: &pb::Journey) -> pb::Journey {
    pb::Journey {
        display_name: j.display_name.clone(),
        description: j.description.clone(),
        trigger: j.trigger.clone(),
        steps: j.steps.clone(),
        reentry: if j.reentry == 0 {
            pb::Reentry::Never as i32
        } else {
            j.reentry
        },
        reentry_cooldown: j.reentry_cooldown,
        purpose: if j.purpose == 0 {
            crm_proto::crm::customer::v1::ConsentPurpose::Marketing as i32
        } else {
            j.purpose
        },
        time_zone: j.time_zone.clone(),
        ..Default::default()
    }
}

const PATHS: &[&str] = &[
    "display_name",
    "description",
    "trigger",
    "steps",
    "reentry",
    "reentry_cooldown",
    "purpose",
    "time_zone",
];

impl Journeys {
    pub fn new(db: DatabaseConnection, feed: Feed, cfg: CampaignsConfig, traits: Registry, campaigns: Campaigns) -> Self {
        Self {
            db,
            feed,
            cfg,
            traits,
            campaigns,
        }
    }

    fn check(&self, j: &pb::Journey) -> Result<super::Definition> {
        let traits = self.traits.current();
        super::validate(
            j,
            "journey",
            &Context::new(&traits),
            &|name| traits.traits.iter().any(|(n, _)| n == name),
            &self.cfg,
        )
    }

    /// Writes the campaigns of the send steps (and drops those of removed steps);
    /// they run while the journey is active.
    async fn sync_steps<C: ConnectionTrait>(&self, conn: &C, j: &JourneyRow, now: i64) -> Result<()> {
        let state = if j.state == pb::JourneyState::Active {
            pb::CampaignState::Running
        } else {
            pb::CampaignState::Paused
        };
        let mut keep = Vec::new();
        for step in &j.settings.steps {
            let Some(pb::journey_step::Action::Send(send)) = &step.action else {
                continue;
            };
            let id = step_campaign(&j.id, &step.id);
            let s = campaigns::settings(&step_campaign_settings(&j.settings, step, send));
            let window = campaigns::validate_with(&s, "step", &|_| true, &self.cfg, false)?.conversion_window_us;
            match campaign_store::get(conn, &id).await? {
                Some(mut row) => {
                    row.settings = s;
                    row.state = state;
                    row.conversion_window_us = window;
                    row.revision += 1;
                    row.update_us = now;
                    campaign_store::save(conn, &row).await?;
                }
                None => {
                    campaign_store::insert(
                        conn,
                        &campaign_store::CampaignRow {
                            id: id.clone(),
                            settings: s,
                            state,
                            runs: 0,
                            next_run_us: None,
                            run_start_us: now,
                            enqueue_cursor: String::new(),
                            enqueue_done: true,
                            resume_state: pb::CampaignState::Unspecified,
                            conversion_window_us: window,
                            revision: 1,
                            create_us: now,
                            update_us: now,
                            journey_id: j.id.clone(),
                        },
                    )
                    .await?;
                }
            }
            keep.push(id);
        }
        for old in journey_campaigns(conn, &j.id).await? {
            if !keep.contains(&old) {
                campaign_store::delete(conn, &old).await?;
            }
        }
        Ok(())
    }

    pub async fn create(&self, actor: &str, id: &str, j: &pb::Journey) -> Result<JourneyRow> {
        let mut v = Vec::new();
        if !crate::tags::valid_id(id) {
            v.push(FieldViolation::new(
                "journey_id",
                "1 to 63 of [a-z0-9_-], starting with a letter",
            ));
        }
        match self.check(j) {
            Ok(_) => {}
            Err(Error::InvalidArgument(mut found)) => v.append(&mut found),
            Err(other) => return Err(other),
        }
        if !v.is_empty() {
            return Err(Error::InvalidArgument(v));
        }
        let now = chrono::Utc::now().timestamp_micros();
        let row = JourneyRow {
            id: id.to_owned(),
            settings: settings(j),
            state: pb::JourneyState::Draft,
            watermark_us: now,
            watermark_person: String::new(),
            revision: 1,
            create_us: now,
            update_us: now,
        };
        let txn = begin_write(&self.db).await?;
        if store::get(&txn, id, true).await?.is_some() {
            return Err(Error::AlreadyExists {
                resource_type: "crm.segmentation.v1.Journey",
                name: format!("journeys/{id}"),
            });
        }
        store::insert(&txn, &row).await?;
        self.sync_steps(&txn, &row, now).await?;
        feed::append(&txn, changed(&row, false, actor)).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(row)
    }

    pub async fn get(&self, name: &str) -> Result<JourneyRow> {
        let id = journey_id(name, "name")?;
        store::get(&self.db, id, false).await?.ok_or_else(|| not_found(name))
    }

    pub async fn list(&self, after: &str, limit: u64) -> Result<Vec<JourneyRow>> {
        store::list(&self.db, after, limit).await
    }

    async fn load<C: ConnectionTrait>(&self, conn: &C, name: &str, field: &str, tag: &str) -> Result<JourneyRow> {
        let id = journey_id(name, field)?;
        let row = store::get(conn, id, true).await?.ok_or_else(|| not_found(name))?;
        if !tag.is_empty() && tag != etag(row.revision) {
            return Err(Error::EtagMismatch { name: name.to_owned() });
        }
        Ok(row)
    }

    async fn save(&self, txn: sea_orm::DatabaseTransaction, row: &JourneyRow, actor: &str, now: i64) -> Result<()> {
        store::save(&txn, row).await?;
        self.sync_steps(&txn, row, now).await?;
        feed::append(&txn, changed(row, false, actor)).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(())
    }

    pub async fn update(&self, actor: &str, patch: &pb::Journey, paths: &[String]) -> Result<JourneyRow> {
        let mut v = Vec::new();
        crm_platform::mask::check_paths(paths, PATHS, &mut v);
        if paths.is_empty() {
            v.push(FieldViolation::new("update_mask", "name at least one field to change"));
        }
        if !v.is_empty() {
            return Err(Error::InvalidArgument(v));
        }
        let txn = begin_write(&self.db).await?;
        let mut row = self.load(&txn, &patch.name, "journey.name", &patch.etag).await?;
        if row.state == pb::JourneyState::Active
            && let Some(p) = paths.iter().find(|p| !["display_name", "description"].contains(&p.as_str()))
        {
            return Err(Error::FailedPrecondition {
                reason: "JOURNEY_NOT_EDITABLE",
                subject: patch.name.clone(),
                message: format!("`{p}` can change while the journey is DRAFT or PAUSED; pause it first"),
            });
        }
        let mut next = row.settings.clone();
        for p in paths {
            match p.as_str() {
                "display_name" => next.display_name = patch.display_name.clone(),
                "description" => next.description = patch.description.clone(),
                "trigger" => next.trigger = patch.trigger.clone(),
                "steps" => next.steps = patch.steps.clone(),
                "reentry" => next.reentry = patch.reentry,
                "reentry_cooldown" => next.reentry_cooldown = patch.reentry_cooldown,
                "purpose" => next.purpose = patch.purpose,
                "time_zone" => next.time_zone = patch.time_zone.clone(),
                _ => {}
            }
        }
        self.check(&next)?;
        row.settings = settings(&next);
        row.revision += 1;
        let now = chrono::Utc::now().timestamp_micros();
        row.update_us = now;
        let steps: Vec<String> = row.settings.steps.iter().map(|s| s.id.clone()).collect();
        store::drop_missing_steps(&txn, &row.id, &steps).await?;
        self.save(txn, &row, actor, now).await?;
        Ok(row)
    }

    pub async fn delete(&self, actor: &str, name: &str, tag: &str) -> Result<()> {
        let txn = begin_write(&self.db).await?;
        let row = self.load(&txn, name, "name", tag).await?;
        if row.state == pb::JourneyState::Active {
            return Err(Error::FailedPrecondition {
                reason: "JOURNEY_ACTIVE",
                subject: name.to_owned(),
                message: format!("{name} is ACTIVE: pause it first"),
            });
        }
        for c in journey_campaigns(&txn, &row.id).await? {
            campaign_store::delete(&txn, &c).await?;
        }
        store::delete(&txn, &row.id).await?;
        feed::append(&txn, changed(&row, true, actor)).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(())
    }

    pub async fn activate(&self, actor: &str, name: &str, tag: &str) -> Result<JourneyRow> {
        let txn = begin_write(&self.db).await?;
        let mut row = self.load(&txn, name, "name", tag).await?;
        if row.state == pb::JourneyState::Active {
            return Ok(row);
        }
        let def = self.check(&row.settings)?;
        if let super::Trigger::Segment(s) = &def.trigger
            && crate::store::segments::get(&txn, s).await?.is_none()
        {
            return Err(Error::FailedPrecondition {
                reason: "SEGMENT_NOT_FOUND",
                subject: name.to_owned(),
                message: format!("the trigger's segment `segments/{s}` does not exist"),
            });
        }
        let now = chrono::Utc::now().timestamp_micros();
        if row.state == pb::JourneyState::Draft {
            // Only customers entering the segment from now on are enrolled.
            row.watermark_us = now;
            row.watermark_person.clear();
        }
        row.state = pb::JourneyState::Active;
        row.revision += 1;
        row.update_us = now;
        self.save(txn, &row, actor, now).await?;
        Ok(row)
    }

    pub async fn pause(&self, actor: &str, name: &str, tag: &str) -> Result<JourneyRow> {
        let txn = begin_write(&self.db).await?;
        let mut row = self.load(&txn, name, "name", tag).await?;
        if row.state != pb::JourneyState::Active {
            return Err(Error::FailedPrecondition {
                reason: "JOURNEY_STATE",
                subject: name.to_owned(),
                message: format!("{name} is not ACTIVE"),
            });
        }
        let now = chrono::Utc::now().timestamp_micros();
        row.state = pb::JourneyState::Paused;
        row.revision += 1;
        row.update_us = now;
        self.save(txn, &row, actor, now).await?;
        Ok(row)
    }

    pub async fn stats(&self, name: &str) -> Result<pb::JourneyStats> {
        let row = self.get(name).await?;
        let (reached, on) = store::step_counts(&self.db, &row.id).await?;
        let (enrolled, active, exited) = store::totals(&self.db, &row.id).await?;
        let mut steps = Vec::new();
        for s in &row.settings.steps {
            let delivery = if matches!(s.action, Some(pb::journey_step::Action::Send(_))) {
                let id = step_campaign(&row.id, &s.id);
                Some(
                    self.campaigns
                        .stats_of(&id, &format!("journeys/{}/steps/{}", row.id, s.id))
                        .await?,
                )
            } else {
                None
            };
            steps.push(pb::JourneyStepStats {
                step: s.id.clone(),
                entered: reached.get(&s.id).copied().unwrap_or(0),
                active: on.get(&s.id).copied().unwrap_or(0),
                delivery,
            });
        }
        Ok(pb::JourneyStats {
            journey: name.to_owned(),
            enrolled,
            active,
            exited,
            steps,
        })
    }
}

/// The campaigns of a journey's send steps.
async fn journey_campaigns<C: ConnectionTrait>(conn: &C, journey: &str) -> Result<Vec<String>> {
    let rows = crm_platform::db::query(conn, "SELECT id FROM campaigns WHERE journey_id = ?", vec![journey.into()]).await?;
    rows.iter().map(|r| Ok(r.try_get("", "id")?)).collect()
}
