//! The scheduler: starts a campaign's run when it is due, queues one delivery per
//! recipient (in chunks, each its own transaction, resumable from a cursor after a
//! restart), and finishes a run when nothing of it is left to send: the next run is
//! scheduled, or the campaign completes. With several replicas each campaign is
//! claimed by one of them at a time (`FOR UPDATE SKIP LOCKED`).

use std::collections::HashMap;

use crm_platform::{
    Result,
    db::begin_write,
    feed::{self, Feed},
};
use crm_proto::crm::segmentation::v1 as pb;
use sea_orm::DatabaseConnection;

use super::{
    CampaignsConfig, changed_event, due_at, in_control, next_run, send_time,
    store::{self, NewDelivery},
    stored_definition, zone,
};

/// Opens and clicks older than this do not tell a customer's habits.
const ENGAGEMENT_HISTORY_US: i64 = 365 * 86_400_000_000;

/// Engagements read for the population's habits (of opens, and of clicks).
const POPULATION_SAMPLE: u64 = 200_000;

/// The population's habits for one (campaign, run).
type Population = ((String, i64), std::sync::Arc<send_time::Histogram>);

/// Starts runs and queues their deliveries.
#[derive(Debug, Clone)]
pub struct Runner {
    db: DatabaseConnection,
    feed: Feed,
    cfg: CampaignsConfig,
    /// The population's habits of the run being queued: (campaign, run) → shares.
    population: std::sync::Arc<std::sync::Mutex<Option<Population>>>,
}

impl Runner {
    pub fn new(db: DatabaseConnection, feed: Feed, cfg: CampaignsConfig) -> Self {
        Self {
            db,
            feed,
            cfg,
            population: std::sync::Arc::default(),
        }
    }

    /// The population's shares of engagement by hour of the week (in the campaign's
    /// zone), read once per run.
    async fn population<C: sea_orm::ConnectionTrait>(
        &self,
        conn: &C,
        campaign: &str,
        run: i64,
        since_us: i64,
        zone: chrono_tz::Tz,
    ) -> Result<std::sync::Arc<send_time::Histogram>> {
        let key = (campaign.to_owned(), run);
        if let Ok(slot) = self.population.lock()
            && let Some((k, h)) = slot.as_ref()
            && *k == key
        {
            return Ok(h.clone());
        }
        let times = store::population_engagement(conn, since_us, POPULATION_SAMPLE).await?;
        let shares = std::sync::Arc::new(send_time::shares(&send_time::histogram(times, zone)));
        if let Ok(mut slot) = self.population.lock() {
            *slot = Some((key, shares.clone()));
        }
        Ok(shares)
    }

    /// Queues the next chunk of one due campaign's run (starting the run first when
    /// it is due); false when no campaign had anything to queue.
    pub async fn step(&self, now_us: i64) -> Result<bool> {
        let txn = begin_write(&self.db).await?;
        let Some(mut c) = store::claim_due_run(&txn, now_us).await? else {
            return Ok(false);
        };
        let def = stored_definition(&c, &self.cfg)?;
        let mut events = Vec::new();
        if c.state == pb::CampaignState::Scheduled {
            c.runs += 1;
            c.state = pb::CampaignState::Running;
            c.run_start_us = c.next_run_us.unwrap_or(now_us).min(now_us);
            c.next_run_us = None;
            c.enqueue_cursor.clear();
            c.enqueue_done = false;
            c.revision += 1;
            c.update_us = now_us;
            events.push(changed_event(&c, false, crate::SERVICE));
        }
        let persons = store::audience_page(
            &txn,
            &def.segments,
            &def.exclude_segments,
            &c.enqueue_cursor,
            self.cfg.enqueue_chunk,
        )
        .await?;
        let ids: Vec<&str> = persons.iter().map(String::as_str).collect();
        let zones: HashMap<String, chrono_tz::Tz> = if def.local_minutes.is_some() || def.send_time_window_us.is_some() {
            store::time_zones(&txn, &ids)
                .await?
                .into_iter()
                .filter_map(|(id, tz)| Some((id, zone(&tz)?)))
                .collect()
        } else {
            HashMap::new()
        };
        let start = chrono::DateTime::from_timestamp_micros(c.run_start_us).unwrap_or_default();
        // Send-time optimisation: each one's habits, and everyone's.
        let since = c.run_start_us - ENGAGEMENT_HISTORY_US;
        let (habits, population) = match def.send_time_window_us {
            Some(_) => (
                store::engagement(&txn, &ids, since).await?,
                Some(self.population(&txn, &c.id, c.runs, since, def.zone).await?),
            ),
            None => (HashMap::new(), None),
        };
        let rows: Vec<NewDelivery> = persons
            .iter()
            .map(|p| {
                let control = in_control(&c.id, p, def.control_share);
                let tz = zones.get(p).copied().unwrap_or(def.zone);
                NewDelivery {
                    person_id: p.clone(),
                    state: if control {
                        pb::DeliveryState::Control
                    } else {
                        pb::DeliveryState::Queued
                    },
                    due_us: match (control, def.send_time_window_us, &population) {
                        (true, _, _) => c.run_start_us,
                        (false, Some(window), Some(population)) => {
                            let own = send_time::histogram(habits.get(p).into_iter().flatten().copied(), tz);
                            send_time::best_time(
                                start,
                                chrono::Duration::microseconds(window),
                                tz,
                                &own,
                                population,
                                self.cfg.send_time_prior_weight,
                            )
                            .timestamp_micros()
                        }
                        _ => due_at(start, def.local_minutes, tz).timestamp_micros(),
                    },
                }
            })
            .collect();
        store::insert_deliveries(&txn, &c.id, c.runs, def.channel.to_proto() as i32, &rows).await?;
        match persons.last() {
            Some(last) if persons.len() >= self.cfg.enqueue_chunk => c.enqueue_cursor = last.clone(),
            _ => {
                c.enqueue_done = true;
                tracing::info!(campaign = %c.id, run = c.runs, "run queued");
            }
        }
        store::save(&txn, &c).await?;
        feed::append_many(&txn, events).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(true)
    }

    /// Running campaigns whose run is fully queued and has nothing left to send:
    /// the next run is scheduled, or the campaign completes.
    pub async fn finish_runs(&self, now_us: i64) -> Result<()> {
        for id in store::running_queued(&self.db).await? {
            let txn = begin_write(&self.db).await?;
            let Some(mut c) = store::get_for_update(&txn, &id).await? else {
                continue;
            };
            if c.state != pb::CampaignState::Running || !c.enqueue_done || store::run_pending(&txn, &c.id, c.runs).await? {
                continue;
            }
            let def = stored_definition(&c, &self.cfg)?;
            match next_run(&def, c.run_start_us, now_us) {
                Some(next) => {
                    c.state = pb::CampaignState::Scheduled;
                    c.next_run_us = Some(next);
                }
                None => c.state = pb::CampaignState::Completed,
            }
            c.revision += 1;
            c.update_us = now_us;
            store::save(&txn, &c).await?;
            feed::append(&txn, changed_event(&c, false, crate::SERVICE)).await?;
            txn.commit().await?;
            self.feed.committed();
            tracing::info!(campaign = %c.id, run = c.runs, state = ?c.state, "run finished");
        }
        Ok(())
    }

    /// Until shutdown: queue what is due, finish what is done, then wait a poll.
    pub async fn run(self, mut shutdown: crm_platform::server::ShutdownSignal) {
        let poll = std::time::Duration::from_millis(self.cfg.poll_interval_ms);
        loop {
            let now = chrono::Utc::now().timestamp_micros();
            let work = async {
                while self.step(now).await? {}
                self.finish_runs(now).await
            };
            if let Err(err) = work.await {
                tracing::warn!(%err, "campaign scheduler failed; retrying");
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }
}
