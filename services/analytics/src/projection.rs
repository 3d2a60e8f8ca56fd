//! Applying the other services' events to the projection, each in the transaction
//! that moves that source's cursor (exactly-once effects). Every effect is an upsert,
//! an update or a deletion keyed by the source's ids, so applying a feed again from
//! its start gives the same projection.

use async_trait::async_trait;
use crm_platform::{
    Result,
    consumer::{Apply, id_in, payload},
};
use crm_proto::crm::{customer::v1 as cpb, events::v1::Event, segmentation::v1 as spb, ticketing::v1 as tpb};
use sea_orm::DatabaseTransaction;

use crate::store::{self, CustomerRow, LineRow, OrderRow, TicketRow, TouchRow};

/// One followed feed: its source, method and the event types read.
pub struct Source {
    pub source: &'static str,
    pub method: &'static str,
    pub event_types: &'static [&'static str],
}

pub const CUSTOMER_PROFILE: Source = Source {
    source: "customer-profile",
    method: "/crm.customer.v1.CustomerProfileService/StreamEvents",
    event_types: &[
        "crm.customer.v1.CustomerCreated",
        "crm.customer.v1.CustomerUpdated",
        "crm.customer.v1.CustomerDeleted",
        "crm.customer.v1.CustomersMerged",
        "crm.customer.v1.CustomersUnmerged",
        "crm.customer.v1.CustomerErased",
        "crm.customer.v1.OrderChanged",
        "crm.customer.v1.InteractionRecorded",
        "crm.customer.v1.DataPurged",
    ],
};

pub const TICKETING: Source = Source {
    source: "ticketing",
    method: "/crm.ticketing.v1.TicketingService/StreamEvents",
    event_types: &[
        "crm.ticketing.v1.TicketChanged",
        "crm.ticketing.v1.SlaPointReached",
        "crm.ticketing.v1.SurveySubmitted",
    ],
};

pub const SEGMENTATION: Source = Source {
    source: "marketing-segmentation",
    method: "/crm.segmentation.v1.SegmentationService/StreamEvents",
    event_types: &["crm.segmentation.v1.CampaignTouchesRecorded"],
};

fn micros(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map_or(0, crm_platform::feed::micros)
}

/// The last segment of a resource name.
fn leaf(name: &str) -> String {
    name.rsplit('/').next().unwrap_or_default().to_owned()
}

/// A customer as the projection keeps it.
pub fn customer_row(c: &cpb::Customer) -> Result<CustomerRow> {
    let stage = if c.redacted_fields.iter().any(|f| f == "lifecycle_stage") {
        0
    } else {
        c.lifecycle_stage
    };
    Ok(CustomerRow {
        id: id_in(&c.name, "customers")?,
        owner_user_id: c.owner_user_id.clone(),
        team_id: c.team_id.clone(),
        source_channel: c.source_channel,
        stage,
        create_us: micros(c.create_time.as_ref()),
        update_us: micros(c.update_time.as_ref()),
        deleted: c.delete_time.is_some(),
    })
}

/// An order as the projection keeps it.
pub fn order_row(customer: &str, o: &cpb::Order) -> Result<OrderRow> {
    Ok(OrderRow {
        id: leaf(&o.name),
        customer_id: id_in(customer, "customers")?,
        status: o.status,
        currency: o.currency.clone(),
        total_micros: o.total_micros,
        place_us: micros(o.place_time.as_ref()),
        lines: o
            .lines
            .iter()
            .map(|l| LineRow {
                product: l.sku.clone(),
                category: l.category.clone(),
                quantity: l.quantity,
            })
            .collect(),
    })
}

/// customer-profile's events: customers with their lifecycle, orders, interactions,
/// merges, erasures, purges.
pub struct Customers;

#[async_trait]
impl Apply for Customers {
    async fn apply(&self, txn: &DatabaseTransaction, event: &Event) -> Result<()> {
        let kind = event.r#type.strip_prefix("crm.customer.v1.").unwrap_or_default();
        match kind {
            "CustomerCreated" | "CustomerUpdated" | "CustomerDeleted" => {
                let customer = match kind {
                    "CustomerCreated" => payload::<cpb::CustomerCreated>(event)?.customer,
                    "CustomerUpdated" => payload::<cpb::CustomerUpdated>(event)?.customer,
                    _ => payload::<cpb::CustomerDeleted>(event)?.customer,
                };
                // An erased customer's earlier events are emptied at the source.
                match customer {
                    Some(c) => store::upsert_customer(txn, &customer_row(&c)?).await,
                    None => Ok(()),
                }
            }
            "CustomersMerged" => {
                let e = payload::<cpb::CustomersMerged>(event)?;
                let Some(survivor) = e.survivor else { return Ok(()) };
                let row = customer_row(&survivor)?;
                store::upsert_customer(txn, &row).await?;
                let merged = e.merged.iter().map(|m| id_in(m, "customers")).collect::<Result<Vec<_>>>()?;
                store::set_merged_into(txn, &merged, Some(&row.id)).await?;
                crm_platform::people::reassign(txn, std::slice::from_ref(&row.id), &["orders"]).await
            }
            "CustomersUnmerged" => {
                let e = payload::<cpb::CustomersUnmerged>(event)?;
                let Some(survivor) = e.survivor else { return Ok(()) };
                let row = customer_row(&survivor)?;
                store::upsert_customer(txn, &row).await?;
                let mut roots = vec![row.id];
                for c in &e.restored {
                    let restored = customer_row(c)?;
                    store::upsert_customer(txn, &restored).await?;
                    store::set_merged_into(txn, std::slice::from_ref(&restored.id), None).await?;
                    roots.push(restored.id);
                }
                crm_platform::people::reassign(txn, &roots, &["orders"]).await
            }
            "CustomerErased" => {
                let Some(erasure) = payload::<cpb::CustomerErased>(event)?.erasure else {
                    return Ok(());
                };
                let ids = erasure
                    .erased_customers
                    .iter()
                    .map(|c| id_in(c, "customers"))
                    .collect::<Result<Vec<_>>>()?;
                // This service's own events about them (scores in ChurnRiskRaised) keep
                // their shape and lose their content, as every feed's do.
                for id in &ids {
                    crm_platform::feed::empty_payloads(txn, &format!("customers/{id}")).await?;
                }
                store::erase(txn, &ids).await
            }
            "OrderChanged" => {
                let e = payload::<cpb::OrderChanged>(event)?;
                let Some(o) = e.order else { return Ok(()) };
                store::upsert_order(txn, &order_row(&e.customer, &o)?).await
            }
            "InteractionRecorded" => {
                let e = payload::<cpb::InteractionRecorded>(event)?;
                let Some(i) = e.interaction else { return Ok(()) };
                store::insert_interaction(
                    txn,
                    &leaf(&i.name),
                    &id_in(&e.customer, "customers")?,
                    i.kind,
                    i.channel,
                    micros(i.occur_time.as_ref()),
                )
                .await
            }
            "DataPurged" => {
                let report = payload::<cpb::DataPurged>(event)?.report.unwrap_or_default();
                for class in report.classes.iter().filter(|c| c.data_class == "interactions") {
                    if let Some(cutoff) = &class.cutoff_time {
                        store::delete_interactions_before(txn, micros(Some(cutoff))).await?;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// A ticket as the projection keeps it: a complaint is one in the `complaint`
/// category or tagged `complaint` (as ticketing's own report counts them).
pub fn ticket_row(t: &tpb::Ticket) -> Result<TicketRow> {
    Ok(TicketRow {
        id: id_in(&t.name, "tickets")?,
        customer_id: if t.customer.is_empty() {
            String::new()
        } else {
            id_in(&t.customer, "customers")?
        },
        channel: t.channel,
        category: t.category.clone(),
        queue: t.queue.clone(),
        complaint: t.category == "complaint" || t.tags.iter().any(|g| g == "complaint"),
        create_us: micros(t.create_time.as_ref()),
        first_response_us: micros(t.first_response_time.as_ref()),
        solve_us: micros(t.solve_time.as_ref()),
        has_sla: !t.sla_policy.is_empty(),
    })
}

/// ticketing's events: tickets, SLA breaches, satisfaction ratings.
pub struct Tickets;

#[async_trait]
impl Apply for Tickets {
    async fn apply(&self, txn: &DatabaseTransaction, event: &Event) -> Result<()> {
        match event.r#type.as_str() {
            "crm.ticketing.v1.TicketChanged" => match payload::<tpb::TicketChanged>(event)?.ticket {
                Some(t) => store::upsert_ticket(txn, &ticket_row(&t)?).await,
                None => Ok(()),
            },
            "crm.ticketing.v1.SlaPointReached" => {
                let e = payload::<tpb::SlaPointReached>(event)?;
                if e.percent < 100 {
                    return Ok(());
                }
                let resolution = e.metric == tpb::SlaMetric::Resolution as i32;
                store::breach(txn, &id_in(&e.ticket, "tickets")?, resolution).await
            }
            "crm.ticketing.v1.SurveySubmitted" => {
                let Some(r) = payload::<tpb::SurveySubmitted>(event)?.response else {
                    return Ok(());
                };
                store::rate(txn, &id_in(&r.ticket, "tickets")?, r.rating, micros(r.submit_time.as_ref())).await
            }
            _ => Ok(()),
        }
    }
}

/// marketing-segmentation's events: campaign touches.
pub struct Touches;

#[async_trait]
impl Apply for Touches {
    async fn apply(&self, txn: &DatabaseTransaction, event: &Event) -> Result<()> {
        if event.r#type != "crm.segmentation.v1.CampaignTouchesRecorded" {
            return Ok(());
        }
        let e = payload::<spb::CampaignTouchesRecorded>(event)?;
        let rows = e
            .touches
            .iter()
            .map(|t| {
                Ok(TouchRow {
                    campaign: t.campaign.clone(),
                    run: t.run,
                    customer_id: id_in(&t.customer, "customers")?,
                    kind: t.kind,
                    channel: t.channel,
                    occur_us: micros(t.occur_time.as_ref()),
                    control: t.control,
                    order_id: t.order.clone(),
                    revenue_micros: t.revenue_micros,
                    currency: t.currency.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        store::insert_touches(txn, &rows).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_ids() {
        assert_eq!(id_in("customers/x/orders/1", "customers").unwrap(), "x");
        assert_eq!(id_in("tickets/t-9", "tickets").unwrap(), "t-9");
        assert!(id_in("orders/1", "customers").is_err());
        assert!(id_in("customers/", "customers").is_err());
        assert_eq!(leaf("customers/x/orders/o-1"), "o-1");
    }

    #[test]
    fn a_complaint_is_its_category_or_its_tag() {
        let t = tpb::Ticket {
            name: "tickets/1".into(),
            customer: "customers/c".into(),
            category: "billing".into(),
            tags: vec!["complaint".into()],
            sla_policy: "slaPolicies/standard".into(),
            ..Default::default()
        };
        let row = ticket_row(&t).unwrap();
        assert!(row.complaint && row.has_sla);
        assert_eq!(row.customer_id, "c");
        let plain = ticket_row(&tpb::Ticket {
            tags: vec![],
            sla_policy: String::new(),
            ..t
        })
        .unwrap();
        assert!(!plain.complaint && !plain.has_sla);
    }

    #[test]
    fn a_withheld_stage_is_not_kept() {
        let c = cpb::Customer {
            name: "customers/a".into(),
            lifecycle_stage: cpb::LifecycleStage::Customer as i32,
            redacted_fields: vec!["lifecycle_stage".into()],
            ..Default::default()
        };
        assert_eq!(customer_row(&c).unwrap().stage, 0);
    }
}
