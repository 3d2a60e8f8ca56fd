//! The dispatcher: claims due deliveries in batches, decides each one when it is
//! due (gone, suppressed, no consent, no contact, frequency cap, quiet hours,
//! render), sends the rest through the channel's provider with bounded concurrency,
//! and records the outcomes and their touches in one transaction.
//!
//! A claim marks deliveries SENDING under a lease before anything is sent. A
//! process that stops mid-batch leaves them so; when the lease has passed, those on
//! a provider that deduplicates by idempotency key are queued again, the others fail
//! as "outcome unknown": a message is never sent twice.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crm_platform::{Result, consent::may_contact, db::begin_write, feed::Feed};
use crm_proto::crm::{customer::v1 as cpb, segmentation::v1 as pb};
use sea_orm::DatabaseConnection;

use super::{
    CampaignsConfig, Channel, Definition, backoff_us,
    channels::{Outgoing, Providers},
    contacts::{Contact, Contacts},
    store::{self, Claimed, Key, Outcome},
    stored_definition, template,
    touches::{self, Touch},
    tracking::{Links, Purpose},
    zone,
};

/// Sends due deliveries.
#[derive(Clone)]
pub struct Dispatcher {
    db: DatabaseConnection,
    feed: Feed,
    cfg: CampaignsConfig,
    providers: Providers,
    contacts: Contacts,
    links: Links,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("providers", &self.providers)
            .finish_non_exhaustive()
    }
}

/// What one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    pub claimed: usize,
    pub sent: usize,
    pub skipped: usize,
    pub deferred: usize,
    pub failed: usize,
}

/// A message composed for one recipient.
struct Composed {
    subject: String,
    body: String,
    html_body: String,
    link_url: String,
    unsubscribe_url: String,
    variables: std::collections::BTreeMap<String, String>,
}

/// A decision for one claimed delivery.
enum Decision {
    Done(Outcome),
    Send(Channel, Box<Outgoing>),
}

/// What a batch knows about its recipients.
struct Facts {
    live: HashSet<String>,
    contacts: HashMap<String, Contact>,
    /// region, locality, lifecycle stage, attributes JSON, RFM group.
    profile: HashMap<String, (String, String, i32, String, i32)>,
    traits: HashMap<String, HashMap<String, String>>,
    zones: HashMap<String, chrono_tz::Tz>,
}

fn enum_word(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_ascii_lowercase()
}

impl Dispatcher {
    pub fn new(
        db: DatabaseConnection,
        feed: Feed,
        cfg: CampaignsConfig,
        providers: Providers,
        contacts: Contacts,
        links: Links,
    ) -> Self {
        Self {
            db,
            feed,
            cfg,
            providers,
            contacts,
            links,
        }
    }

    /// Claims, decides, sends and records one batch of due deliveries.
    pub async fn batch(&self, now: chrono::DateTime<chrono::Utc>) -> Result<BatchReport> {
        let now_us = now.timestamp_micros();
        let lease_us = i64::try_from(self.cfg.lease_secs).unwrap_or(i64::MAX / 2) * 1_000_000;
        let txn = begin_write(&self.db).await?;
        let claimed = store::claim_due(&txn, now_us, lease_us, self.cfg.batch_size).await?;
        txn.commit().await?;
        let mut report = BatchReport {
            claimed: claimed.len(),
            ..BatchReport::default()
        };
        if claimed.is_empty() {
            return Ok(report);
        }
        let decisions = match self.decide(&claimed, now).await {
            Ok(d) => d,
            Err(err) => {
                // Nothing was sent: give them back rather than leave them to the lease.
                let keys: Vec<Key> = claimed.iter().map(|c| c.key.clone()).collect();
                if let Ok(txn) = begin_write(&self.db).await
                    && store::release(&txn, &keys).await.is_ok()
                {
                    let _ = txn.commit().await;
                }
                return Err(err);
            }
        };
        let mut outcomes: Vec<(Key, Outcome)> = Vec::with_capacity(claimed.len());
        let mut sends = Vec::new();
        for (c, d) in claimed.iter().zip(decisions) {
            match d {
                Decision::Done(o) => outcomes.push((c.key.clone(), o)),
                Decision::Send(channel, m) => sends.push((c, channel, m)),
            }
        }
        // Send with bounded concurrency.
        let limit = Arc::new(tokio::sync::Semaphore::new(self.cfg.send_concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (_, channel, message)) in sends.iter().enumerate() {
            let permit = limit.clone().acquire_owned().await;
            let providers = self.providers.clone();
            let (channel, message) = (*channel, message.clone());
            tasks.spawn(async move {
                let _permit = permit;
                (i, providers.send(channel, &message).await)
            });
        }
        let mut results = vec![None; sends.len()];
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, r)) => results[i] = Some(r),
                Err(err) => tracing::error!(%err, "a send task failed"),
            }
        }
        let sent_at = chrono::Utc::now().timestamp_micros();
        let mut touched = Vec::new();
        for ((c, channel, _), result) in sends.iter().zip(results) {
            let outcome = match result {
                Some(Ok(provider_id)) => {
                    touched.push(Touch::new(
                        c.key.clone(),
                        pb::TouchKind::Sent,
                        channel.to_proto() as i32,
                        sent_at,
                    ));
                    Outcome::Sent {
                        send_us: sent_at,
                        provider_id,
                    }
                }
                Some(Err(f)) if f.permanent || c.attempts + 1 >= self.cfg.max_attempts => Outcome::Failed(f.message),
                Some(Err(f)) => Outcome::Again {
                    due_us: sent_at + backoff_us(self.cfg.retry_base_secs, c.attempts + 1),
                    error: f.message,
                },
                // A task that did not finish: its outcome is unknown.
                None => Outcome::Failed("the send did not complete; outcome unknown, not retried".into()),
            };
            outcomes.push((c.key.clone(), outcome));
        }
        for (_, o) in &outcomes {
            match o {
                Outcome::Sent { .. } => report.sent += 1,
                Outcome::Skipped(_) => report.skipped += 1,
                Outcome::Deferred { .. } | Outcome::Again { .. } => report.deferred += 1,
                Outcome::Failed(_) => report.failed += 1,
            }
        }
        let txn = begin_write(&self.db).await?;
        store::finish(&txn, &outcomes).await?;
        touches::record(&txn, &touched, &self.cfg.interaction_source, sent_at).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(report)
    }

    /// Loads what the batch needs and decides each delivery.
    async fn decide(&self, claimed: &[Claimed], now: chrono::DateTime<chrono::Utc>) -> Result<Vec<Decision>> {
        let now_us = now.timestamp_micros();
        let mut defs: HashMap<String, Option<Definition>> = HashMap::new();
        for c in claimed {
            if !defs.contains_key(&c.key.campaign_id) {
                let def = match store::get(&self.db, &c.key.campaign_id).await? {
                    Some(row) => Some(stored_definition(&row, &self.cfg)?),
                    None => None,
                };
                defs.insert(c.key.campaign_id.clone(), def);
            }
        }
        let mut persons: Vec<&str> = claimed.iter().map(|c| c.key.person_id.as_str()).collect();
        persons.sort_unstable();
        persons.dedup();
        let all: Vec<&Definition> = defs.values().flatten().collect();
        let facts = self.facts(&persons, &all).await?;
        // Per campaign: consent, suppression and the frequency cap's counts.
        let mut consents = HashMap::new();
        let mut suppressed = HashMap::new();
        let mut counts: HashMap<(i32, i64), HashMap<String, i64>> = HashMap::new();
        for (id, def) in &defs {
            let Some(def) = def else { continue };
            let mine: Vec<&str> = claimed
                .iter()
                .filter(|c| &c.key.campaign_id == id)
                .map(|c| c.key.person_id.as_str())
                .collect();
            let channel = def.channel.to_proto() as i32;
            consents.insert(id.clone(), store::consents(&self.db, &mine, def.purpose as i32).await?);
            suppressed.insert(
                id.clone(),
                store::suppressed(&self.db, &mine, channel, &def.suppression_tags).await?,
            );
            if let Some(cap) = def.cap {
                let key = (channel, cap.window_us);
                if let std::collections::hash_map::Entry::Vacant(slot) = counts.entry(key) {
                    slot.insert(store::sent_since(&self.db, channel, now_us - cap.window_us, &persons).await?);
                }
            }
        }
        let mut decisions = Vec::with_capacity(claimed.len());
        for c in claimed {
            let Some(def) = defs.get(&c.key.campaign_id).and_then(Option::as_ref) else {
                decisions.push(Decision::Done(Outcome::Skipped(pb::SkipReason::Gone)));
                continue;
            };
            let empty = Vec::new();
            let records = consents
                .get(&c.key.campaign_id)
                .and_then(|m| m.get(&c.key.person_id))
                .unwrap_or(&empty);
            let is_suppressed = suppressed
                .get(&c.key.campaign_id)
                .is_some_and(|s| s.contains(&c.key.person_id));
            let decision = self.decide_one(c, def, &facts, records, is_suppressed, &mut counts, now);
            decisions.push(decision);
        }
        Ok(decisions)
    }

    #[allow(clippy::too_many_arguments)]
    fn decide_one(
        &self,
        c: &Claimed,
        def: &Definition,
        facts: &Facts,
        consent: &[cpb::ConsentRecord],
        suppressed: bool,
        counts: &mut HashMap<(i32, i64), HashMap<String, i64>>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Decision {
        let skip = |r: pb::SkipReason| Decision::Done(Outcome::Skipped(r));
        let person = c.key.person_id.as_str();
        if !facts.live.contains(person) {
            return skip(pb::SkipReason::Gone);
        }
        if suppressed {
            return skip(pb::SkipReason::Suppressed);
        }
        if !may_contact(consent, def.purpose, def.channel.to_proto(), now).allowed {
            return skip(pb::SkipReason::NoConsent);
        }
        let contact = facts.contacts.get(person).cloned().unwrap_or_default();
        let Some(address) = contact.address(def.channel) else {
            return skip(pb::SkipReason::NoContact);
        };
        if let Some(q) = def.quiet {
            let tz = facts.zones.get(person).copied().unwrap_or(def.zone);
            let release = q.release(now, tz);
            if release > now {
                return Decision::Done(Outcome::Deferred {
                    due_us: release.timestamp_micros(),
                });
            }
        }
        let channel = def.channel.to_proto() as i32;
        if let Some(cap) = def.cap {
            let n = counts
                .entry((channel, cap.window_us))
                .or_default()
                .entry(person.to_owned())
                .or_default();
            if *n >= cap.max {
                return skip(pb::SkipReason::FrequencyCap);
            }
            // Counted now, so a second campaign in this batch sees it.
            *n += 1;
        }
        let Ok(m) = self.compose(def, &c.key, facts, &contact, now) else {
            return skip(pb::SkipReason::RenderFailed);
        };
        Decision::Send(
            def.channel,
            Box::new(Outgoing {
                idempotency_key: format!("{}:{}:{}", c.key.campaign_id, c.key.run, person),
                to: address.to_owned(),
                subject: m.subject,
                body: m.body,
                html_body: m.html_body,
                template_id: def.wechat_template_id.clone(),
                url: if def.link.is_empty() { String::new() } else { m.link_url },
                unsubscribe_url: m.unsubscribe_url,
                campaign: format!("campaigns/{}", c.key.campaign_id),
                customer: format!("customers/{person}"),
            }),
        )
    }

    /// The message of delivery `key` for its recipient, with its tracked links.
    fn compose(
        &self,
        def: &Definition,
        key: &Key,
        facts: &Facts,
        contact: &Contact,
        now: chrono::DateTime<chrono::Utc>,
    ) -> std::result::Result<Composed, String> {
        let person = key.person_id.as_str();
        let now_secs = now.timestamp();
        let link_url = self.links.url(Purpose::Click, key, now_secs);
        let unsubscribe_url = self.links.url(Purpose::Unsubscribe, key, now_secs);
        let profile = facts.profile.get(person);
        let value = |path: &str| -> Option<String> {
            match path {
                "display_name" => Some(contact.display_name.clone()),
                "given_name" => Some(contact.given_name.clone()),
                "family_name" => Some(contact.family_name.clone()),
                "region" => profile.map(|p| p.0.clone()),
                "locality" => profile.map(|p| p.1.clone()),
                "lifecycle_stage" => profile
                    .and_then(|p| cpb::LifecycleStage::try_from(p.2).ok())
                    .filter(|s| *s != cpb::LifecycleStage::Unspecified)
                    .map(|s| enum_word(s.as_str_name(), "LIFECYCLE_STAGE_")),
                "rfm_group" => profile
                    .and_then(|p| pb::RfmGroup::try_from(p.4).ok())
                    .filter(|g| *g != pb::RfmGroup::Unspecified)
                    .map(|g| enum_word(g.as_str_name(), "RFM_GROUP_")),
                template::LINK_URL => Some(link_url.clone()),
                template::UNSUBSCRIBE_URL => Some(unsubscribe_url.clone()),
                p => {
                    if let Some(key) = p.strip_prefix("attributes.") {
                        let attrs: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&profile?.3).ok()?;
                        attrs.get(key).and_then(|v| v.as_str()).map(str::to_owned)
                    } else if let Some(name) = p.strip_prefix("traits.") {
                        facts.traits.get(person)?.get(name).cloned()
                    } else {
                        None
                    }
                }
            }
        };
        let subject = def.subject.render(&value, template::plain)?;
        let body = def.body.render(&value, template::plain)?;
        let mut html_body = def.html_body.render(&value, template::html)?;
        if !html_body.is_empty() {
            let pixel = format!(
                "<img src=\"{}\" width=\"1\" height=\"1\" alt=\"\">",
                template::html(&self.links.url(Purpose::Open, key, now_secs))
            );
            match html_body.rfind("</body>") {
                Some(at) => html_body.insert_str(at, &pixel),
                None => html_body.push_str(&pixel),
            }
        }
        let variables = def
            .paths()
            .into_iter()
            .filter(|p| *p != template::LINK_URL && *p != template::UNSUBSCRIBE_URL)
            .filter_map(|p| Some((p.to_owned(), value(p)?)))
            .collect();
        Ok(Composed {
            subject,
            body,
            html_body,
            link_url,
            unsubscribe_url,
            variables,
        })
    }

    /// Loads what messages to `persons` may say.
    async fn facts(&self, persons: &[&str], defs: &[&Definition]) -> Result<Facts> {
        let needs = |f: &dyn Fn(&Definition) -> bool| defs.iter().any(|d| f(d));
        Ok(Facts {
            live: store::live(&self.db, persons).await?,
            contacts: self.contacts.load(&self.db, persons).await?,
            profile: if needs(&|d| {
                d.paths()
                    .iter()
                    .any(|p| p.starts_with("attributes.") || ["region", "locality", "lifecycle_stage", "rfm_group"].contains(p))
            }) {
                store::profile_facts(&self.db, persons).await?
            } else {
                HashMap::new()
            },
            traits: if needs(&|d| d.paths().iter().any(|p| p.starts_with("traits."))) {
                store::traits_of(&self.db, persons).await?
            } else {
                HashMap::new()
            },
            zones: if needs(&|d| d.quiet.is_some()) {
                store::time_zones(&self.db, persons)
                    .await?
                    .into_iter()
                    .filter_map(|(id, tz)| Some((id, zone(&tz)?)))
                    .collect()
            } else {
                HashMap::new()
            },
        })
    }

    /// A campaign's message as `person` would receive it now (for a preview: its
    /// links name run 0, which no delivery has, so they track nothing).
    pub async fn render(&self, row: &store::CampaignRow, person: &str) -> Result<pb::RenderedMessage> {
        let def = stored_definition(row, &self.cfg)?;
        let facts = self.facts(&[person], &[&def]).await?;
        if !facts.live.contains(person) {
            return Err(crm_platform::Error::NotFound {
                resource_type: "crm.customer.v1.Customer",
                name: format!("customers/{person}"),
            });
        }
        let contact = facts.contacts.get(person).cloned().unwrap_or_default();
        let key = Key {
            person_id: person.to_owned(),
            campaign_id: row.id.clone(),
            run: 0,
        };
        let m = self
            .compose(&def, &key, &facts, &contact, chrono::Utc::now())
            .map_err(|why| crm_platform::Error::FailedPrecondition {
                reason: "RENDER_FAILED",
                subject: format!("campaigns/{}", row.id),
                message: format!("the message cannot be rendered for customers/{person}: {why}"),
            })?;
        Ok(pb::RenderedMessage {
            subject: m.subject,
            body: m.body,
            html_body: m.html_body,
            variables: m.variables,
        })
    }

    /// Deliveries abandoned by a stopped sender, past their lease: queued again
    /// where the provider deduplicates, failed elsewhere.
    pub async fn recover(&self, now_us: i64) -> Result<u64> {
        let retry: Vec<i32> = self
            .providers
            .deduplicating()
            .into_iter()
            .map(|c| c.to_proto() as i32)
            .collect();
        let txn = begin_write(&self.db).await?;
        let n = store::recover_abandoned(&txn, now_us, &retry).await?;
        txn.commit().await?;
        if n > 0 {
            tracing::warn!(n, "deliveries abandoned by a stopped sender recovered");
        }
        Ok(n)
    }

    /// Until shutdown: batches while there is work, else a poll's wait.
    pub async fn run(self, mut shutdown: crm_platform::server::ShutdownSignal) {
        let poll = std::time::Duration::from_millis(self.cfg.poll_interval_ms);
        // Abandoned deliveries are looked for every 20 polls (1 to 10 s).
        let recover_every = std::time::Duration::from_millis((self.cfg.poll_interval_ms * 20).clamp(1000, 10_000));
        let mut last_recovery: Option<std::time::Instant> = None;
        loop {
            if last_recovery.is_none_or(|at| at.elapsed() >= recover_every) {
                if let Err(err) = self.recover(chrono::Utc::now().timestamp_micros()).await {
                    tracing::warn!(%err, "recovering abandoned deliveries failed");
                }
                last_recovery = Some(std::time::Instant::now());
            }
            let busy = match self.batch(chrono::Utc::now()).await {
                Ok(r) => r.claimed >= self.cfg.batch_size,
                Err(err) => {
                    tracing::warn!(%err, "campaign dispatch failed; retrying");
                    false
                }
            };
            if busy {
                if shutdown.is_triggered() {
                    return;
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }
}
