//! Win-back: the analytics service's `ChurnRiskRaised` events, followed from its feed,
//! enrol customers into journeys triggered by them and end waits for them, in the
//! transaction that moves the cursor (exactly once, like customer-profile's events).

use async_trait::async_trait;
use crm_platform::{Error, Result, consumer::Apply};
use crm_proto::crm::{analytics::v1 as apb, events::v1::Event};
use sea_orm::DatabaseTransaction;

use super::engine::{Engine, Observed};

/// The source followed, the cursor's key.
pub const SOURCE: &str = "analytics";

/// analytics' `StreamEvents`.
pub const METHOD: &str = "/crm.analytics.v1.AnalyticsService/StreamEvents";

/// The event types read.
pub const EVENT_TYPES: &[&str] = &["crm.analytics.v1.ChurnRiskRaised"];

/// Applies `ChurnRiskRaised` to the journeys.
pub struct ChurnRisks {
    pub engine: Engine,
}

#[async_trait]
impl Apply for ChurnRisks {
    async fn apply(&self, txn: &DatabaseTransaction, event: &Event) -> Result<()> {
        if event.r#type != EVENT_TYPES[0] {
            return Ok(());
        }
        let raised: apb::ChurnRiskRaised = crm_platform::consumer::payload(event)?;
        let Some(id) = raised
            .score
            .as_ref()
            .and_then(|s| s.customer.strip_prefix("customers/"))
            .filter(|id| !id.is_empty())
        else {
            return Ok(());
        };
        // The two feeds are not ordered with each other. analytics raised this after
        // seeing the customer in customer-profile's feed, so a customer this
        // projection has not seen is waited for (the event is retried) until it has
        // caught up with customer-profile past the event's time; still absent then,
        // the customer was erased, and the event is left.
        if !crate::store::exists(txn, id).await? {
            let raised_us = event.time.as_ref().map_or(0, crm_platform::feed::micros);
            let caught_up_us = crm_platform::consumer::status(txn, crate::projection::SOURCE)
                .await?
                .map_or(0, |s| s.heartbeat_us);
            if caught_up_us <= raised_us {
                return Err(Error::Unavailable(format!(
                    "customers/{id} is not in the projection yet; ChurnRiskRaised waits for customer-profile's feed"
                )));
            }
            tracing::warn!(customer = id, "ChurnRiskRaised for a customer erased since: left");
            return Ok(());
        }
        let person = crm_platform::people::chain_end(txn, id).await?;
        self.engine.observed(txn, &person, Observed::ChurnRisk).await
    }
}
