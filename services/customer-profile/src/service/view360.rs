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
    pub async fn business_summary(&self, customer: CustomerId) -> Result<pb::BusinessSummary> {
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
        customer: CustomerId,
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
}
