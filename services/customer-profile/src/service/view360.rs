//! The business and behaviour layers of the 360 view, summarised from this service's
//! orders and interactions.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use crm_platform::{Error, Result, feed::timestamp};
use crm_proto::crm::customer::v1 as pb;
use prost::Message;

use super::Customers;
use crate::{domain::CustomerId, store::activity as store};

/// Orders read for the category ranking at most (the most recent).
const CATEGORY_ORDERS: u64 = 5000;

fn time(us: i64) -> Option<prost_types::Timestamp> {
    DateTime::from_timestamp_micros(us).map(timestamp)
}

/// The most bought categories of `orders`, by units, at most `n`.
pub fn top_categories(orders: &[pb::Order], n: usize) -> Vec<pb::CategoryCount> {
    let mut by: HashMap<&str, (i64, i64)> = HashMap::new();
    for o in orders {
        let mut seen = std::collections::HashSet::new();
        for l in o.lines.iter().filter(|l| !l.category.is_empty()) {
            let entry = by.entry(l.category.as_str()).or_default();
            entry.0 = entry.0.saturating_add(l.quantity);
            if seen.insert(l.category.as_str()) {
                entry.1 += 1;
            }
        }
    }
    let mut out: Vec<pb::CategoryCount> = by
        .into_iter()
        .map(|(category, (quantity, orders))| pb::CategoryCount {
            category: category.to_owned(),
            quantity,
            orders,
        })
        .collect();
    out.sort_by(|a, b| b.quantity.cmp(&a.quantity).then_with(|| a.category.cmp(&b.category)));
    out.truncate(n);
    out
}

impl Customers {
    /// Orders: counts, first and last, totals and averages per currency, top categories.
    /// `open_tickets` is left to the caller (another service's).
    pub async fn business_summary(&self, customer: &[CustomerId]) -> Result<pb::BusinessSummary> {
        let totals = store::order_totals(&self.db, customer).await?;
        let orders = store::counted_orders(&self.db, customer, CATEGORY_ORDERS)
            .await?
            .iter()
            .map(|d| pb::Order::decode(d.as_slice()).map_err(Error::internal))
            .collect::<Result<Vec<_>>>()?;
        Ok(pb::BusinessSummary {
            order_count: totals.iter().map(|t| t.1).sum(),
            first_order_time: totals.iter().map(|t| t.3).min().and_then(time),
            last_order_time: totals.iter().map(|t| t.4).max().and_then(time),
            totals: totals
                .iter()
                .map(|(currency, n, total, _, _)| pb::CurrencyTotal {
                    currency: currency.clone(),
                    order_count: *n,
                    total_micros: *total,
                    average_micros: if *n > 0 { total / n } else { 0 },
                })
                .collect(),
            top_categories: top_categories(&orders, 5),
            open_tickets: 0,
            tickets: None,
        })
    }

    /// Interactions: last seen, per-channel activity over `window_days`, the
    /// preferred channel.
    pub async fn behaviour_summary(
        &self,
        customer: &[CustomerId],
        window_days: i32,
        now: DateTime<Utc>,
    ) -> Result<pb::BehaviourSummary> {
        let from = (now - Duration::days(i64::from(window_days))).timestamp_micros();
        let (channels, last) = store::channel_activity(&self.db, customer, from).await?;
        Ok(pb::BehaviourSummary {
            last_seen_time: last.and_then(time),
            preferred_channel: channels.first().map_or(0, |c| c.0),
            channels: channels
                .into_iter()
                .map(|(channel, count, last)| pb::ChannelActivity {
                    channel,
                    count,
                    last_time: time(last),
                })
                .collect(),
            window_days,
        })
    }
}

/// One entry of a customer's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineItem {
    pub time_us: i64,
    pub kind: pb::TimelineKind,
    pub resource: String,
    pub summary: String,
}

/// Where a timeline page ends: entries strictly before it come next.
pub type TimelineCursor = (i64, i32, String);

impl TimelineItem {
    pub fn cursor(&self) -> TimelineCursor {
        (self.time_us, self.kind as i32, self.resource.clone())
    }

    pub fn to_proto(&self) -> pb::TimelineEntry {
        pb::TimelineEntry {
            time: time(self.time_us),
            kind: self.kind as i32,
            resource: self.resource.clone(),
            summary: self.summary.clone(),
        }
    }
}

/// `micros` of a currency as `123.45`.
pub fn money(micros: i64, currency: &str) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    format!("{sign}{}.{:02} {currency}", m / 1_000_000, (m % 1_000_000) / 10_000)
}

/// Sorts newest first, keeps those strictly before `before`, at most `limit`.
pub fn merge_page(mut items: Vec<TimelineItem>, before: Option<&TimelineCursor>, limit: usize) -> Vec<TimelineItem> {
    if let Some(b) = before {
        items.retain(|i| &i.cursor() < b);
    }
    items.sort_by_key(|i| std::cmp::Reverse(i.cursor()));
    items.dedup_by(|a, b| a.cursor() == b.cursor());
    items.truncate(limit);
    items
}

/// Rows read per source beyond the page, for entries sharing the cursor's instant.
const TIMELINE_SLACK: u64 = 16;

impl Customers {
    /// The timeline entries this service holds (orders and interactions of
    /// `family`, the record's changes and consent of `customer`), strictly before
    /// `before`, newest first, at most `limit`.
    pub async fn timeline(
        &self,
        customer: CustomerId,
        family: &[CustomerId],
        kinds: &[pb::TimelineKind],
        before: Option<&TimelineCursor>,
        limit: usize,
    ) -> Result<Vec<TimelineItem>> {
        let wants = |k: pb::TimelineKind| kinds.is_empty() || kinds.contains(&k);
        let until = before.map_or(i64::MAX, |b| b.0);
        let n = limit as u64 + TIMELINE_SLACK;
        let name = customer.name();
        let mut items = Vec::new();
        if wants(pb::TimelineKind::Order) {
            for (us, _, data) in store::orders_until(&self.db, family, until, n).await? {
                let o = pb::Order::decode(data.as_slice()).map_err(Error::internal)?;
                let status = pb::OrderStatus::try_from(o.status).map_or("?", |s| s.as_str_name());
                items.push(TimelineItem {
                    time_us: us,
                    kind: pb::TimelineKind::Order,
                    resource: o.name.clone(),
                    summary: format!(
                        "order {} from {}: {}, {}",
                        o.external_id,
                        o.source,
                        status.trim_start_matches("ORDER_STATUS_").to_lowercase(),
                        money(o.total_micros, &o.currency)
                    ),
                });
            }
        }
        if wants(pb::TimelineKind::Interaction) {
            let q = store::InteractionQuery {
                to_us: Some(until.saturating_add(1)),
                limit: n,
                ..Default::default()
            };
            for (us, _, data) in store::list_interactions(&self.db, family, &q).await? {
                let i = pb::Interaction::decode(data.as_slice()).map_err(Error::internal)?;
                let kind = pb::InteractionKind::try_from(i.kind).map_or("?", |k| k.as_str_name());
                let channel = crm_proto::crm::common::v1::Channel::try_from(i.channel).map_or("?", |c| c.as_str_name());
                items.push(TimelineItem {
                    time_us: us,
                    kind: pb::TimelineKind::Interaction,
                    resource: i.name.clone(),
                    summary: format!(
                        "{} on {}",
                        kind.trim_start_matches("INTERACTION_KIND_").to_lowercase(),
                        channel.trim_start_matches("CHANNEL_").to_lowercase()
                    ),
                });
            }
        }
        if wants(pb::TimelineKind::ProfileChange) {
            let until_time = before.and_then(|b| DateTime::from_timestamp_micros(b.0));
            for (at, event_id, event_type, actor) in store::record_events_until(&self.db, &name, until_time, n).await? {
                let what = event_type.trim_start_matches("crm.customer.v1.");
                items.push(TimelineItem {
                    time_us: at.timestamp_micros(),
                    kind: pb::TimelineKind::ProfileChange,
                    resource: format!("{name}#event-{event_id}"),
                    summary: format!("{what} by {actor}"),
                });
            }
        }
        if wants(pb::TimelineKind::Consent) {
            for (seq, r) in self.consent_history(customer, None, 0, 1000).await? {
                let Some(at) = r.effective_time.as_ref().and_then(crm_platform::feed::datetime) else {
                    continue;
                };
                let purpose = pb::ConsentPurpose::try_from(r.purpose).map_or("?", |p| p.as_str_name());
                let status = pb::ConsentStatus::try_from(r.status).map_or("?", |s| s.as_str_name());
                let channel = pb::ContactChannel::try_from(r.channel).map_or("?", |c| c.as_str_name());
                items.push(TimelineItem {
                    time_us: at.timestamp_micros(),
                    kind: pb::TimelineKind::Consent,
                    resource: format!("{name}/consent#{seq}"),
                    summary: format!(
                        "consent {} for {} on {} (source {})",
                        status.trim_start_matches("CONSENT_STATUS_").to_lowercase(),
                        purpose.trim_start_matches("CONSENT_PURPOSE_").to_lowercase(),
                        if r.channel == 0 {
                            "every channel".to_owned()
                        } else {
                            channel.trim_start_matches("CONTACT_CHANNEL_").to_lowercase()
                        },
                        r.source
                    ),
                });
            }
        }
        Ok(merge_page(items, before, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_rank_by_units_then_name() {
        let line = |category: &str, quantity: i64| pb::OrderLine {
            sku: "x".into(),
            category: category.into(),
            quantity,
            ..Default::default()
        };
        let orders = vec![
            pb::Order {
                lines: vec![line("phones", 1), line("accessories", 2), line("accessories", 1)],
                ..Default::default()
            },
            pb::Order {
                lines: vec![line("accessories", 1), line("audio", 1)],
                ..Default::default()
            },
        ];
        let top = top_categories(&orders, 2);
        assert_eq!(top[0].category, "accessories");
        assert_eq!((top[0].quantity, top[0].orders), (4, 2));
        assert_eq!(top[1].category, "audio");
    }

    #[test]
    fn pages_merge_sources_newest_first_without_repeats() {
        let item = |us: i64, kind: pb::TimelineKind, r: &str| TimelineItem {
            time_us: us,
            kind,
            resource: r.into(),
            summary: String::new(),
        };
        let all = vec![
            item(10, pb::TimelineKind::Order, "o1"),
            item(30, pb::TimelineKind::Interaction, "i1"),
            item(30, pb::TimelineKind::Order, "o2"),
            item(20, pb::TimelineKind::Consent, "c1"),
        ];
        let first = merge_page(all.clone(), None, 2);
        assert_eq!(
            first.iter().map(|i| i.resource.as_str()).collect::<Vec<_>>(),
            vec!["i1", "o2"]
        );
        let next = merge_page(all, Some(&first[1].cursor()), 10);
        assert_eq!(next.iter().map(|i| i.resource.as_str()).collect::<Vec<_>>(), vec!["c1", "o1"]);
        assert_eq!(money(3_999_000_000, "CNY"), "3999.00 CNY");
        assert_eq!(money(1_505_000, "USD"), "1.50 USD");
    }
}
