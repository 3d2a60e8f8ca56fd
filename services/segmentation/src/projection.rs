//! Applying customer-profile's events to the projection, each in the transaction that
//! moves the feed cursor (exactly-once effects). Applying the whole feed again from
//! its start gives the same projection: every effect is an upsert, a replacement or
//! a deletion keyed by the source's ids.

use async_trait::async_trait;
use crm_platform::{
    Result,
    consumer::{Apply, payload},
};
use crm_proto::crm::{customer::v1 as pb, events::v1::Event};
use sea_orm::DatabaseTransaction;

use crate::{
    rule::deps,
    store::{self, ConsentRow, CustomerRow, InteractionRow, OrderRow},
};

/// The source followed, the cursor's key.
pub const SOURCE: &str = "customer-profile";

/// customer-profile's `StreamEvents`.
pub const METHOD: &str = "/crm.customer.v1.CustomerProfileService/StreamEvents";

/// The event types the projection reads.
pub const EVENT_TYPES: &[&str] = &[
    "crm.customer.v1.CustomerCreated",
    "crm.customer.v1.CustomerUpdated",
    "crm.customer.v1.CustomerDeleted",
    "crm.customer.v1.CustomersMerged",
    "crm.customer.v1.CustomersUnmerged",
    "crm.customer.v1.CustomerErased",
    "crm.customer.v1.OrderChanged",
    "crm.customer.v1.InteractionRecorded",
    "crm.customer.v1.ConsentChanged",
    "crm.customer.v1.DataPurged",
];

/// Applies customer-profile's events to the projection (and rescores the RFM of the
/// people they touch).
pub struct Projection {
    rfm: crate::rfm::RfmConfig,
    traits: crate::traits::Registry,
    segments: crate::segments::Evaluator,
    campaigns: Option<crate::campaigns::ProjectionHooks>,
}

impl Projection {
    pub fn new(rfm: crate::rfm::RfmConfig, traits: crate::traits::Registry, segments: crate::segments::Evaluator) -> Self {
        Self {
            rfm,
            traits,
            segments,
            campaigns: None,
        }
    }

    /// Also keeps contacts and conversions for campaigns.
    pub fn with_campaigns(mut self, hooks: crate::campaigns::ProjectionHooks) -> Self {
        self.campaigns = Some(hooks);
        self
    }

    /// The customer's (or, when merged, its survivor's) segments anew.
    async fn customer_changed(&self, txn: &DatabaseTransaction, c: Option<&pb::Customer>) -> Result<()> {
        let Some(c) = c else { return Ok(()) };
        let person = crm_platform::people::chain_end(txn, &customer_id(&c.name)?).await?;
        self.segments.on_change(txn, &[person], deps::CUSTOMER).await
    }

    /// RFM and computed traits of `people` anew (only the order traits with
    /// `orders_only`).
    async fn rescore(&self, txn: &DatabaseTransaction, people: &[String], orders_only: bool) -> Result<()> {
        let now = chrono::Utc::now();
        crate::rfm::refresh(txn, &self.rfm, people, now).await?;
        self.traits.current().refresh(txn, people, orders_only, now).await
    }
}

fn micros(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map_or(0, crm_platform::feed::micros)
}

/// The id of a resource name `customers/{id}` (or `customers/{id}/...`).
fn customer_id(name: &str) -> Result<String> {
    crm_platform::consumer::id_in(name, "customers")
}

/// The last segment of a resource name.
fn leaf(name: &str) -> String {
    name.rsplit('/').next().unwrap_or_default().to_owned()
}

/// A customer as the projection keeps it: only what the feed showed in clear (a
/// field in `redacted_fields` was masked or withheld for this service's account).
pub fn customer_row(c: &pb::Customer) -> Result<CustomerRow> {
    let redacted = |path: &str| c.redacted_fields.iter().any(|f| f == path);
    let address = c
        .addresses
        .iter()
        .find(|a| a.primary)
        .or(c.addresses.first())
        .and_then(|a| a.postal_address.as_ref())
        .filter(|_| !redacted("addresses"));
    Ok(CustomerRow {
        id: customer_id(&c.name)?,
        kind: c.r#type,
        lifecycle_stage: if redacted("lifecycle_stage") { 0 } else { c.lifecycle_stage },
        source_channel: c.source_channel,
        owner_user_id: c.owner_user_id.clone(),
        team_id: c.team_id.clone(),
        region: address.map(|a| a.region_code.clone()).unwrap_or_default(),
        locality: address.map(|a| a.locality.clone()).unwrap_or_default(),
        tags: if redacted("tags") { Vec::new() } else { c.tags.clone() },
        attributes: c
            .custom_attributes
            .iter()
            .filter(|(k, _)| !redacted(&format!("custom_attributes.{k}")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        create_us: micros(c.create_time.as_ref()),
        update_us: micros(c.update_time.as_ref()),
        deleted: c.delete_time.is_some(),
    })
}

fn order_row(customer: &str, o: &pb::Order) -> Result<OrderRow> {
    let mut categories: Vec<String> = o.lines.iter().map(|l| l.category.clone()).filter(|c| !c.is_empty()).collect();
    categories.sort();
    categories.dedup();
    Ok(OrderRow {
        id: leaf(&o.name),
        customer_id: customer_id(customer)?,
        status: o.status,
        currency: o.currency.clone(),
        total_micros: o.total_micros,
        place_us: micros(o.place_time.as_ref()),
        categories,
    })
}

fn interaction_row(customer: &str, i: &pb::Interaction) -> Result<InteractionRow> {
    Ok(InteractionRow {
        id: leaf(&i.name),
        customer_id: customer_id(customer)?,
        kind: i.kind,
        channel: i.channel,
        occur_us: micros(i.occur_time.as_ref()),
        category: i.properties.get("category").cloned().unwrap_or_default(),
        campaign: i.campaign.clone(),
    })
}

fn consent_rows(c: &pb::Consent) -> Vec<ConsentRow> {
    c.records
        .iter()
        .map(|r| ConsentRow {
            purpose: r.purpose,
            channel: r.channel,
            status: r.status,
            effective_us: micros(r.effective_time.as_ref()),
            expire_us: r.expire_time.as_ref().map(|t| micros(Some(t))),
        })
        .collect()
}

impl Projection {
    async fn upsert(&self, txn: &DatabaseTransaction, c: Option<&pb::Customer>) -> Result<()> {
        // An erased customer's earlier events are emptied at the source: nothing to apply.
        let Some(c) = c else { return Ok(()) };
        let row = customer_row(c)?;
        store::upsert_customer(txn, &row).await?;
        if let Some(hooks) = &self.campaigns {
            hooks.customer(txn, &row.id, c).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Apply for Projection {
    async fn apply(&self, txn: &DatabaseTransaction, event: &Event) -> Result<()> {
        let kind = event.r#type.strip_prefix("crm.customer.v1.").unwrap_or_default();
        match kind {
            "CustomerCreated" | "CustomerUpdated" | "CustomerDeleted" => {
                let customer = match kind {
                    "CustomerCreated" => payload::<pb::CustomerCreated>(event)?.customer,
                    "CustomerUpdated" => payload::<pb::CustomerUpdated>(event)?.customer,
                    _ => payload::<pb::CustomerDeleted>(event)?.customer,
                };
                self.upsert(txn, customer.as_ref()).await?;
                self.customer_changed(txn, customer.as_ref()).await
            }
            "CustomersMerged" => {
                let e = payload::<pb::CustomersMerged>(event)?;
                let Some(survivor) = e.survivor else { return Ok(()) };
                let row = customer_row(&survivor)?;
                self.upsert(txn, Some(&survivor)).await?;
                let merged = e.merged.iter().map(|m| customer_id(m)).collect::<Result<Vec<_>>>()?;
                store::set_merged_into(txn, &merged, Some(&row.id)).await?;
                crm_platform::people::reassign(txn, std::slice::from_ref(&row.id), store::PER_CUSTOMER).await?;
                let mut people = merged;
                people.push(row.id);
                self.rescore(txn, &people, false).await?;
                self.segments.on_change(txn, &people, deps::ALL).await
            }
            "CustomersUnmerged" => {
                let e = payload::<pb::CustomersUnmerged>(event)?;
                let Some(survivor) = e.survivor else { return Ok(()) };
                let row = customer_row(&survivor)?;
                self.upsert(txn, Some(&survivor)).await?;
                let mut roots = vec![row.id];
                for c in &e.restored {
                    let restored = customer_row(c)?;
                    self.upsert(txn, Some(c)).await?;
                    store::set_merged_into(txn, std::slice::from_ref(&restored.id), None).await?;
                    roots.push(restored.id);
                }
                crm_platform::people::reassign(txn, &roots, store::PER_CUSTOMER).await?;
                self.rescore(txn, &roots, false).await?;
                self.segments.on_change(txn, &roots, deps::ALL).await
            }
            "CustomerErased" => {
                let Some(erasure) = payload::<pb::CustomerErased>(event)?.erasure else {
                    return Ok(());
                };
                let ids = erasure
                    .erased_customers
                    .iter()
                    .map(|c| customer_id(c))
                    .collect::<Result<Vec<_>>>()?;
                crate::tags::remove_erased(txn, &ids).await?;
                if let Some(hooks) = &self.campaigns {
                    hooks.erased(txn, &ids).await?;
                }
                store::erase(txn, &ids).await?;
                crate::traits::remove(txn, &ids).await?;
                crate::rfm::refresh(txn, &self.rfm, &ids, chrono::Utc::now()).await?;
                self.segments.on_change(txn, &ids, deps::ALL).await
            }
            "OrderChanged" => {
                let e = payload::<pb::OrderChanged>(event)?;
                let Some(o) = e.order else { return Ok(()) };
                let row = order_row(&e.customer, &o)?;
                let people = store::upsert_order(txn, &row).await?;
                if let Some(hooks) = &self.campaigns {
                    // The order's person comes first.
                    let person = people.first().cloned().unwrap_or_default();
                    let newly_placed = e.created || (e.previous_status != 0 && !crate::campaigns::is_placed(e.previous_status));
                    hooks.order(txn, &person, &o, &o.name, &row.categories, newly_placed).await?;
                }
                self.rescore(txn, &people, true).await?;
                self.segments
                    .on_change(txn, &people, deps::ORDERS | deps::RFM | deps::TRAITS)
                    .await
            }
            "InteractionRecorded" => {
                let e = payload::<pb::InteractionRecorded>(event)?;
                let Some(i) = e.interaction else { return Ok(()) };
                let row = interaction_row(&e.customer, &i)?;
                let person = store::insert_interaction(txn, &row).await?;
                if let Some(hooks) = &self.campaigns {
                    hooks.interaction(txn, &person, row.kind, &row.category).await?;
                }
                self.traits
                    .current()
                    .refresh(txn, std::slice::from_ref(&person), false, chrono::Utc::now())
                    .await?;
                self.segments
                    .on_change(txn, &[person], deps::INTERACTIONS | deps::TRAITS)
                    .await
            }
            "ConsentChanged" => {
                let e = payload::<pb::ConsentChanged>(event)?;
                let Some(c) = e.consent else { return Ok(()) };
                let id = customer_id(&e.customer)?;
                store::replace_consent(txn, &id, &consent_rows(&c)).await?;
                let person = crm_platform::people::chain_end(txn, &id).await?;
                self.segments.on_change(txn, &[person], deps::CONSENT).await
            }
            "DataPurged" => {
                let report = payload::<pb::DataPurged>(event)?.report.unwrap_or_default();
                for class in report.classes.iter().filter(|c| c.data_class == "interactions") {
                    if let Some(cutoff) = &class.cutoff_time {
                        store::delete_interactions_before(txn, micros(Some(cutoff))).await?;
                        crate::store::segments::mark_stale(txn, deps::INTERACTIONS).await?;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_feed_showed_in_clear_is_kept() {
        let c = pb::Customer {
            name: "customers/abc".into(),
            lifecycle_stage: pb::LifecycleStage::Customer as i32,
            tags: vec!["vip".into()],
            custom_attributes: [
                ("tier".to_owned(), "gold".to_owned()),
                ("income".to_owned(), "9*****".to_owned()),
            ]
            .into(),
            redacted_fields: vec!["custom_attributes.income".into(), "addresses".into()],
            addresses: vec![pb::Address {
                postal_address: Some(crm_proto::crm::common::v1::PostalAddress {
                    region_code: "CN".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let row = customer_row(&c).unwrap();
        assert_eq!(row.id, "abc");
        assert_eq!(row.attributes.keys().collect::<Vec<_>>(), vec!["tier"]);
        assert_eq!(row.region, "", "a withheld address is not kept");
        assert_eq!(row.tags, vec!["vip".to_owned()]);
        assert!(
            customer_row(&pb::Customer::default()).is_err(),
            "a customer without a name is an error"
        );
    }

    #[test]
    fn names_resolve_to_ids() {
        assert_eq!(customer_id("customers/x/orders/1").unwrap(), "x");
        assert_eq!(leaf("customers/x/orders/o-1"), "o-1");
        assert!(customer_id("orders/1").is_err());
    }
}
