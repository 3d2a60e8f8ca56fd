//! Campaign use cases: create, change, move through their states, read their
//! results.

use crm_platform::{Error, FieldViolation, Result, db::begin_write, feed, feed::Feed};
use crm_proto::crm::segmentation::v1 as pb;
use sea_orm::DatabaseConnection;

use super::{
    CampaignsConfig, changed_event, channels::Providers, settings, store, store::CampaignRow, stored_definition, validate,
};
use crate::traits::Registry;

/// The campaign use cases.
#[derive(Debug, Clone)]
pub struct Campaigns {
    db: DatabaseConnection,
    feed: Feed,
    cfg: CampaignsConfig,
    traits: Registry,
    providers: Providers,
    currency: String,
}

fn not_found(name: &str) -> Error {
    Error::NotFound {
        resource_type: "crm.segmentation.v1.Campaign",
        name: name.to_owned(),
    }
}

/// The id of `campaigns/{id}` in field `field`.
pub fn campaign_id<'a>(name: &'a str, field: &str) -> Result<&'a str> {
    name.strip_prefix("campaigns/")
        .filter(|id| crate::tags::valid_id(id))
        .ok_or_else(|| Error::invalid(field, "must be a campaign name `campaigns/{campaign}`"))
}

fn etag(revision: i64) -> String {
    format!("\"{revision}\"")
}

/// Settings that may change in each state.
const EDITABLE_ANY_TIME: &[&str] = &["display_name", "description"];
const EDITABLE: &[&str] = &[
    "display_name",
    "description",
    "channel",
    "purpose",
    "audience",
    "message",
    "schedule",
    "frequency_cap",
    "quiet_hours",
    "control_share",
    "conversion_window",
];

impl Campaigns {
    pub fn new(
        db: DatabaseConnection,
        feed: Feed,
        cfg: CampaignsConfig,
        traits: Registry,
        providers: Providers,
        currency: &str,
    ) -> Self {
        Self {
            db,
            feed,
            cfg,
            traits,
            providers,
            currency: currency.to_owned(),
        }
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn cfg(&self) -> &CampaignsConfig {
        &self.cfg
    }

    fn check(&self, c: &pb::Campaign, field: &str) -> Result<super::Definition> {
        let traits = self.traits.current();
        validate(c, field, &|name| traits.traits.iter().any(|(n, _)| n == name), &self.cfg)
    }

    pub async fn create(&self, actor: &str, id: &str, c: &pb::Campaign) -> Result<CampaignRow> {
        let mut v = Vec::new();
        if !crate::tags::valid_id(id) {
            v.push(FieldViolation::new(
                "campaign_id",
                "1 to 63 of [a-z0-9_-], starting with a letter",
            ));
        }
        let def = match self.check(c, "campaign") {
            Ok(d) => Some(d),
            Err(Error::InvalidArgument(mut found)) => {
                v.append(&mut found);
                None
            }
            Err(other) => return Err(other),
        };
        if !v.is_empty() {
            return Err(Error::InvalidArgument(v));
        }
        let def = def.ok_or_else(|| Error::internal(anyhow::anyhow!("validated without a definition")))?;
        let now = chrono::Utc::now().timestamp_micros();
        let row = CampaignRow {
            id: id.to_owned(),
            settings: settings(c),
            state: pb::CampaignState::Draft,
            runs: 0,
            next_run_us: None,
            run_start_us: 0,
            enqueue_cursor: String::new(),
            enqueue_done: true,
            resume_state: pb::CampaignState::Unspecified,
            conversion_window_us: def.conversion_window_us,
            revision: 1,
            create_us: now,
            update_us: now,
            journey_id: String::new(),
        };
        let txn = begin_write(&self.db).await?;
        if store::get(&txn, id).await?.is_some() {
            return Err(Error::AlreadyExists {
                resource_type: "crm.segmentation.v1.Campaign",
                name: format!("campaigns/{id}"),
            });
        }
        store::insert(&txn, &row).await?;
        feed::append(&txn, changed_event(&row, false, actor)).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(row)
    }

    pub async fn get(&self, name: &str) -> Result<CampaignRow> {
        let id = campaign_id(name, "name")?;
        store::get(&self.db, id).await?.ok_or_else(|| not_found(name))
    }

    pub async fn list(&self, after: &str, limit: u64) -> Result<Vec<CampaignRow>> {
        store::list(&self.db, after, limit).await
    }

    /// Loads a campaign for a change, checking its etag.
    async fn load<C: sea_orm::ConnectionTrait>(&self, conn: &C, name: &str, field: &str, tag: &str) -> Result<CampaignRow> {
        let id = campaign_id(name, field)?;
        let row = store::get_for_update(conn, id).await?.ok_or_else(|| not_found(name))?;
        if !tag.is_empty() && tag != etag(row.revision) {
            return Err(Error::EtagMismatch { name: name.to_owned() });
        }
        Ok(row)
    }

    async fn save(&self, txn: sea_orm::DatabaseTransaction, row: &CampaignRow, actor: &str) -> Result<()> {
        store::save(&txn, row).await?;
        feed::append(&txn, changed_event(row, false, actor)).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(())
    }

    pub async fn update(&self, actor: &str, patch: &pb::Campaign, paths: &[String]) -> Result<CampaignRow> {
        let mut v = Vec::new();
        crm_platform::mask::check_paths(paths, EDITABLE, &mut v);
        if paths.is_empty() {
            v.push(FieldViolation::new("update_mask", "name at least one field to change"));
        }
        if !v.is_empty() {
            return Err(Error::InvalidArgument(v));
        }
        let txn = begin_write(&self.db).await?;
        let mut row = self.load(&txn, &patch.name, "campaign.name", &patch.etag).await?;
        let editable = matches!(row.state, pb::CampaignState::Draft | pb::CampaignState::Paused);
        if let Some(p) = paths.iter().find(|p| !EDITABLE_ANY_TIME.contains(&p.as_str()))
            && !editable
        {
            return Err(Error::FailedPrecondition {
                reason: "CAMPAIGN_NOT_EDITABLE",
                subject: patch.name.clone(),
                message: format!(
                    "`{p}` can change while the campaign is DRAFT or PAUSED; it is {:?}",
                    row.state
                ),
            });
        }
        if row.runs > 0 && paths.iter().any(|p| p == "channel") && patch.channel != row.settings.channel {
            return Err(Error::FailedPrecondition {
                reason: "CAMPAIGN_NOT_EDITABLE",
                subject: patch.name.clone(),
                message: "`channel` is fixed once a run has started: its deliveries and unsubscribes belong to it".into(),
            });
        }
        let mut next = row.settings.clone();
        for p in paths {
            match p.as_str() {
                "display_name" => next.display_name = patch.display_name.clone(),
                "description" => next.description = patch.description.clone(),
                "channel" => next.channel = patch.channel,
                "purpose" => next.purpose = patch.purpose,
                "audience" => next.audience = patch.audience.clone(),
                "message" => next.message = patch.message.clone(),
                "schedule" => next.schedule = patch.schedule.clone(),
                "frequency_cap" => next.frequency_cap = patch.frequency_cap,
                "quiet_hours" => next.quiet_hours = patch.quiet_hours.clone(),
                "control_share" => next.control_share = patch.control_share,
                "conversion_window" => next.conversion_window = patch.conversion_window,
                _ => {}
            }
        }
        let def = self.check(&next, "campaign")?;
        row.settings = settings(&next);
        row.conversion_window_us = def.conversion_window_us;
        row.revision += 1;
        row.update_us = chrono::Utc::now().timestamp_micros();
        self.save(txn, &row, actor).await?;
        Ok(row)
    }

    pub async fn delete(&self, actor: &str, name: &str, tag: &str) -> Result<()> {
        let txn = begin_write(&self.db).await?;
        let row = self.load(&txn, name, "name", tag).await?;
        if matches!(row.state, pb::CampaignState::Scheduled | pb::CampaignState::Running) {
            return Err(Error::FailedPrecondition {
                reason: "CAMPAIGN_ACTIVE",
                subject: name.to_owned(),
                message: format!("{name} is {:?}: pause or cancel it first", row.state),
            });
        }
        store::delete(&txn, &row.id).await?;
        feed::append(&txn, changed_event(&row, true, actor)).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(())
    }

    /// A state change allowed only `from` these states.
    fn refuse(row: &CampaignRow, name: &str, action: &str) -> Error {
        Error::FailedPrecondition {
            reason: "CAMPAIGN_STATE",
            subject: name.to_owned(),
            message: format!("{name} is {:?}: it cannot be {action}", row.state),
        }
    }

    pub async fn schedule(&self, actor: &str, name: &str, tag: &str) -> Result<CampaignRow> {
        let txn = begin_write(&self.db).await?;
        let mut row = self.load(&txn, name, "name", tag).await?;
        if row.state != pb::CampaignState::Draft {
            return Err(Self::refuse(&row, name, "scheduled (only a DRAFT can)"));
        }
        let def = stored_definition(&row, &self.cfg)?;
        if !self.providers.has(def.channel) {
            return Err(Error::FailedPrecondition {
                reason: "CHANNEL_NOT_CONFIGURED",
                subject: name.to_owned(),
                message: format!(
                    "no provider is configured for {} (segmentation.channels.{}.url)",
                    def.channel.key(),
                    def.channel.key()
                ),
            });
        }
        let mut missing = Vec::new();
        for s in def.segments.iter().chain(&def.exclude_segments) {
            if crate::store::segments::get(&txn, s).await?.is_none() {
                missing.push(format!("segments/{s}"));
            }
        }
        if !missing.is_empty() {
            return Err(Error::FailedPrecondition {
                reason: "SEGMENT_NOT_FOUND",
                subject: name.to_owned(),
                message: format!("the audience names segments that do not exist: {}", missing.join(", ")),
            });
        }
        let now = chrono::Utc::now().timestamp_micros();
        row.state = pb::CampaignState::Scheduled;
        row.next_run_us = Some(def.start_us.unwrap_or(now));
        row.revision += 1;
        row.update_us = now;
        self.save(txn, &row, actor).await?;
        Ok(row)
    }

    pub async fn pause(&self, actor: &str, name: &str, tag: &str) -> Result<CampaignRow> {
        let txn = begin_write(&self.db).await?;
        let mut row = self.load(&txn, name, "name", tag).await?;
        if !matches!(row.state, pb::CampaignState::Scheduled | pb::CampaignState::Running) {
            return Err(Self::refuse(&row, name, "paused"));
        }
        row.resume_state = row.state;
        row.state = pb::CampaignState::Paused;
        row.revision += 1;
        row.update_us = chrono::Utc::now().timestamp_micros();
        self.save(txn, &row, actor).await?;
        Ok(row)
    }

    pub async fn resume(&self, actor: &str, name: &str, tag: &str) -> Result<CampaignRow> {
        let txn = begin_write(&self.db).await?;
        let mut row = self.load(&txn, name, "name", tag).await?;
        if row.state != pb::CampaignState::Paused {
            return Err(Self::refuse(&row, name, "resumed (only a PAUSED one can)"));
        }
        // Settings may have changed while paused: check them again.
        stored_definition(&row, &self.cfg)?;
        row.state = row.resume_state;
        row.resume_state = pb::CampaignState::Unspecified;
        row.revision += 1;
        row.update_us = chrono::Utc::now().timestamp_micros();
        self.save(txn, &row, actor).await?;
        Ok(row)
    }

    pub async fn cancel(&self, actor: &str, name: &str, tag: &str) -> Result<CampaignRow> {
        let txn = begin_write(&self.db).await?;
        let mut row = self.load(&txn, name, "name", tag).await?;
        if matches!(row.state, pb::CampaignState::Completed | pb::CampaignState::Cancelled) {
            return Err(Self::refuse(&row, name, "cancelled"));
        }
        store::cancel_queued(&txn, &row.id).await?;
        row.state = pb::CampaignState::Cancelled;
        row.next_run_us = None;
        row.enqueue_done = true;
        row.revision += 1;
        row.update_us = chrono::Utc::now().timestamp_micros();
        self.save(txn, &row, actor).await?;
        Ok(row)
    }

    /// A campaign's results.
    pub async fn stats(&self, name: &str) -> Result<pb::CampaignStats> {
        let row = self.get(name).await?;
        self.stats_of(&row.id, name).await
    }

    /// The results of the campaign `id` (also a journey step's), reported as `name`.
    pub async fn stats_of(&self, id: &str, name: &str) -> Result<pb::CampaignStats> {
        let c = store::counts(&self.db, id, &self.currency).await?;
        let mut s = pb::CampaignStats {
            campaign: name.to_owned(),
            currency: self.currency.clone(),
            opened: c.opened,
            clicked: c.clicked,
            unsubscribed: c.unsubscribed,
            converted: c.converted,
            control_converted: c.control_converted,
            revenue_micros: c.revenue_micros,
            ..Default::default()
        };
        let mut skipped: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
        for (state, reason, n) in c.by_state {
            s.audience += n;
            match pb::DeliveryState::try_from(state) {
                Ok(pb::DeliveryState::Control) => s.control += n,
                Ok(pb::DeliveryState::Sent) => s.sent += n,
                Ok(pb::DeliveryState::Failed) => s.failed += n,
                Ok(pb::DeliveryState::Cancelled) => s.cancelled += n,
                Ok(pb::DeliveryState::Skipped) => *skipped.entry(reason).or_default() += n,
                // QUEUED, and SENDING (not in the contract) reads as queued.
                _ => s.queued += n,
            }
        }
        s.skipped = skipped
            .into_iter()
            .map(|(reason, count)| pb::SkipCount { reason, count })
            .collect();
        let rate = |a: i64, b: i64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
        s.conversion_rate = rate(s.converted, s.sent);
        s.control_conversion_rate = rate(s.control_converted, s.control);
        s.lift = if s.control_conversion_rate > 0.0 {
            (s.conversion_rate - s.control_conversion_rate) / s.control_conversion_rate
        } else {
            0.0
        };
        Ok(s)
    }

    /// Credits the conversions of a period to channels or campaigns.
    pub async fn attribution(&self, r: &pb::GetAttributionReportRequest) -> Result<pb::AttributionReport> {
        use super::attribution::{self, Model};
        const DAY: i64 = 86_400_000_000;
        let mut v = Vec::new();
        let micros = |t: &Option<prost_types::Timestamp>| t.as_ref().map(crm_platform::feed::micros);
        let duration =
            |d: &Option<prost_types::Duration>, default: i64| d.as_ref().map_or(default, crm_platform::feed::duration_micros);
        let (start, end) = (micros(&r.start_time), micros(&r.end_time));
        if start.is_none() {
            v.push(FieldViolation::new("start_time", "required"));
        }
        if end.is_none() {
            v.push(FieldViolation::new("end_time", "required"));
        }
        if let (Some(a), Some(b)) = (start, end)
            && (b <= a || b - a > 366 * DAY)
        {
            v.push(FieldViolation::new("end_time", "after start_time, at most 366 days"));
        }
        let lookback = duration(&r.lookback, 30 * DAY);
        if !(DAY / 24..=90 * DAY).contains(&lookback) {
            v.push(FieldViolation::new("lookback", "one hour to 90 days"));
        }
        let half_life = duration(&r.half_life, 7 * DAY);
        if half_life < 60_000_000 {
            v.push(FieldViolation::new("half_life", "at least one minute"));
        }
        let model = match pb::AttributionModel::try_from(r.model) {
            Ok(pb::AttributionModel::FirstTouch) => Some(Model::FirstTouch),
            Ok(pb::AttributionModel::LastTouch) => Some(Model::LastTouch),
            Ok(pb::AttributionModel::Linear) => Some(Model::Linear),
            Ok(pb::AttributionModel::TimeDecay) => Some(Model::TimeDecay { half_life_us: half_life }),
            Ok(pb::AttributionModel::PositionBased) => Some(Model::PositionBased),
            Ok(pb::AttributionModel::DataDriven) => Some(Model::DataDriven),
            _ => {
                v.push(FieldViolation::new(
                    "model",
                    "required: FIRST_TOUCH, LAST_TOUCH, LINEAR, TIME_DECAY, POSITION_BASED or DATA_DRIVEN",
                ));
                None
            }
        };
        let group_by = match pb::AttributionGrouping::try_from(r.group_by) {
            Ok(pb::AttributionGrouping::Unspecified | pb::AttributionGrouping::Channel) => pb::AttributionGrouping::Channel,
            Ok(pb::AttributionGrouping::Campaign) => pb::AttributionGrouping::Campaign,
            Err(_) => {
                v.push(FieldViolation::new("group_by", "CHANNEL or CAMPAIGN"));
                pb::AttributionGrouping::Channel
            }
        };
        let (Some(start), Some(end), Some(model)) = (start, end, model) else {
            return Err(Error::InvalidArgument(v));
        };
        if !v.is_empty() {
            return Err(Error::InvalidArgument(v));
        }
        let orders = store::orders_between(&self.db, start, end).await?;
        let touches = store::touches_between(&self.db, start - lookback, end).await?;
        let key = |t: &store::TouchRow| match group_by {
            // A journey's send step is a campaign `{journey}.{step}`.
            pb::AttributionGrouping::Campaign => match t.campaign_id.split_once('.') {
                Some((journey, step)) => format!("journeys/{journey}/steps/{step}"),
                None => format!("campaigns/{}", t.campaign_id),
            },
            _ => t.channel_key.clone(),
        };
        let paths = attribution::paths(&orders, &touches, start, lookback, &self.currency, &key);
        let credits = attribution::attribute(model, &paths);
        let attributed: Vec<&attribution::Path> = paths
            .iter()
            .filter(|p| p.conversion.is_some() && !p.touches.is_empty())
            .collect();
        let total: f64 = credits.values().map(|c| c.conversions).sum();
        let mut rows: Vec<pb::AttributionRow> = credits
            .into_iter()
            .map(|(key, c)| pb::AttributionRow {
                key,
                conversions: c.conversions,
                revenue_micros: c.revenue.round() as i64,
                share: if total > 0.0 { c.conversions / total } else { 0.0 },
                touches: c.touches,
                removal_effect: c.removal_effect,
            })
            .collect();
        rows.sort_by(|a, b| b.conversions.total_cmp(&a.conversions).then_with(|| a.key.cmp(&b.key)));
        Ok(pb::AttributionReport {
            model: r.model,
            group_by: group_by as i32,
            start_time: r.start_time,
            end_time: r.end_time,
            conversions: orders.len() as i64,
            attributed_conversions: attributed.len() as i64,
            null_paths: paths.iter().filter(|p| p.conversion.is_none()).count() as i64,
            revenue_micros: attributed
                .iter()
                .filter_map(|p| p.conversion.map(|c| c.1))
                .sum::<f64>()
                .round() as i64,
            currency: self.currency.clone(),
            rows,
        })
    }
}
