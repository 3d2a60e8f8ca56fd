//! Erasures announced on customer-profile's feed (`CustomerErased`): the tickets of
//! the erased customers lose their personal data (see `store::erasure`), each with a
//! history entry saying so, in the transaction that moves the feed cursor.

use async_trait::async_trait;
use chrono::Utc;
use crm_platform::{Result, consumer::Apply, feed::timestamp};
use crm_proto::crm::{customer::v1 as cpb, events::v1::Event, ticketing::v1 as pb};
use prost::Message;
use sea_orm::DatabaseTransaction;

use crate::store::{self, Log};

/// The event type followed.
pub const CUSTOMER_ERASED: &str = "crm.customer.v1.CustomerErased";

/// Applies `CustomerErased` events.
pub struct Erasures;

#[async_trait]
impl Apply for Erasures {
    async fn apply(&self, txn: &DatabaseTransaction, event: &Event) -> Result<()> {
        if event.r#type != CUSTOMER_ERASED {
            return Ok(());
        }
        let erased: cpb::CustomerErased = crm_platform::consumer::payload(event)?;
        let Some(erasure) = erased.erasure else {
            return Ok(());
        };
        let (tickets, counts) = store::erasure::scrub_customers(txn, &erasure.erased_customers).await?;
        let entry = pb::HistoryEntry {
            time: Some(timestamp(Utc::now())),
            actor: event.actor.clone(),
            kind: pb::HistoryKind::Updated as i32,
            description: format!("personal data erased ({}: the customer's erasure)", erasure.name),
        }
        .encode_to_vec();
        for id in &tickets {
            store::append(txn, Log::History, id, vec![entry.clone()]).await?;
        }
        tracing::info!(erasure = %erasure.name, tickets = tickets.len(), ?counts, "erased customer's tickets scrubbed");
        Ok(())
    }

    async fn committed(&self, db: &sea_orm::DatabaseConnection) -> Result<()> {
        crm_platform::db::truncate_log(db).await
    }
}
