//! Orders and interactions: the business and behaviour layers, fed by integrators.
//! Orders upsert by (source, external id) and ignore stale updates; interactions
//! append in batches, a repeated event acknowledged as a duplicate. Each change is an
//! event on the feed in the same transaction.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use crm_platform::{
    Error, FieldViolation, Result,
    db::begin_write,
    feed::{self, NewEvent},
};
use crm_proto::crm::{common::v1 as common, customer::v1 as pb};
use prost::Message;
use serde::Deserialize;

use super::{Customers, ingest::SourceRef, now};
use crate::{
    domain::{Customer, CustomerId, customer::Channel},
    store::{
        activity::{self as store, InteractionQuery, NewInteraction, OrderColumns, OrderQuery},
        records,
    },
};

/// What to do with an order or interaction whose customer reference names nobody.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnknownCustomer {
    /// Reject it (NOT_FOUND): the customer must be ingested first.
    #[default]
    Reject,
    /// Create a lead linked to the external id, then record it.
    CreateLead,
}

/// Whose order or interaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CustomerRef {
    Id(CustomerId),
    External { source: String, external_id: String },
}

fn micros(t: &prost_types::Timestamp) -> Option<i64> {
    feed::datetime(t).map(|t| t.timestamp_micros())
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    feed::timestamp(t)
}

fn is_key(s: &str, max: usize, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || extra.contains(&c))
}

fn check_source_and_id(source: &str, external_id: &str, bad: &mut Vec<FieldViolation>) {
    if let Err(why) = super::ingest::check_source(source) {
        bad.push(FieldViolation::new("source", why));
    }
    if let Err(why) = super::ingest::check_external_id(external_id) {
        bad.push(FieldViolation::new("external_id", why));
    }
}

/// Every problem with an order; fills in the total from the lines when unset.
pub fn validate_order(o: &mut pb::Order) -> std::result::Result<(), Vec<FieldViolation>> {
    let mut bad = Vec::new();
    check_source_and_id(&o.source, &o.external_id, &mut bad);
    if o.status == 0 || pb::OrderStatus::try_from(o.status).is_err() {
        bad.push(FieldViolation::new("status", "required: a known status"));
    }
    if !(o.currency.len() == 3 && o.currency.chars().all(|c| c.is_ascii_uppercase())) {
        bad.push(FieldViolation::new("currency", "required: an ISO 4217 code such as CNY"));
    }
    if o.lines.len() > 500 {
        bad.push(FieldViolation::new("lines", "at most 500"));
    }
    let mut sum: Option<i64> = Some(0);
    for (i, l) in o.lines.iter().enumerate() {
        if l.sku.is_empty() || l.sku.chars().count() > 128 {
            bad.push(FieldViolation::new(
                format!("lines[{i}].sku"),
                "required, at most 128 characters",
            ));
        }
        if l.product_name.chars().count() > 300 {
            bad.push(FieldViolation::new(
                format!("lines[{i}].product_name"),
                "at most 300 characters",
            ));
        }
        if !l.category.is_empty() && !is_key(&l.category, 64, &['.', '-']) {
            bad.push(FieldViolation::new(
                format!("lines[{i}].category"),
                "[a-z0-9][a-z0-9_.-]{0,63}",
            ));
        }
        if l.quantity < 1 {
            bad.push(FieldViolation::new(format!("lines[{i}].quantity"), "at least 1"));
        }
        if l.unit_price_micros < 0 {
            bad.push(FieldViolation::new(format!("lines[{i}].unit_price_micros"), "0 or more"));
        }
        sum = sum
            .zip(l.quantity.checked_mul(l.unit_price_micros))
            .and_then(|(a, b)| a.checked_add(b));
    }
    if o.total_micros < 0 {
        bad.push(FieldViolation::new("total_micros", "0 or more"));
    } else if o.total_micros == 0 && !o.lines.is_empty() {
        match sum {
            Some(s) => o.total_micros = s,
            None => bad.push(FieldViolation::new("lines", "the lines' total is out of range")),
        }
    }
    if o.channel != 0 && common::Channel::try_from(o.channel).is_err() {
        bad.push(FieldViolation::new("channel", "unknown channel"));
    }
    if o.place_time.as_ref().and_then(micros).is_none() {
        bad.push(FieldViolation::new("place_time", "required"));
    }
    if o.source_update_time.as_ref().is_some_and(|t| micros(t).is_none()) {
        bad.push(FieldViolation::new("source_update_time", "out of range"));
    }
    if bad.is_empty() { Ok(()) } else { Err(bad) }
}

/// Every problem with an interaction recorded at `now`.
pub fn validate_interaction(i: &pb::Interaction, now: DateTime<Utc>) -> std::result::Result<(), Vec<FieldViolation>> {
    let mut bad = Vec::new();
    check_source_and_id(&i.source, &i.external_id, &mut bad);
    if i.kind == 0 || pb::InteractionKind::try_from(i.kind).is_err() {
        bad.push(FieldViolation::new("kind", "required: a known kind"));
    }
    if i.channel == 0 || common::Channel::try_from(i.channel).is_err() {
        bad.push(FieldViolation::new("channel", "required: a known channel"));
    }
    match i.occur_time.as_ref().and_then(micros) {
        None => bad.push(FieldViolation::new("occur_time", "required")),
        Some(us) if us > (now + Duration::minutes(5)).timestamp_micros() => {
            bad.push(FieldViolation::new("occur_time", "more than 5 minutes in the future"));
        }
        Some(_) => {}
    }
    if i.properties.len() > 30 {
        bad.push(FieldViolation::new("properties", "at most 30"));
    }
    for (k, v) in &i.properties {
        if !(is_key(k, 63, &[]) && k.starts_with(|c: char| c.is_ascii_lowercase())) || v.chars().count() > 1000 {
            bad.push(FieldViolation::new(
                format!("properties[{k}]"),
                "keys [a-z][a-z0-9_]{0,62}, values at most 1000 characters",
            ));
        }
    }
    if !i.campaign.is_empty()
        && !i
            .campaign
            .strip_prefix("campaigns/")
            .is_some_and(|c| !c.is_empty() && !c.contains('/'))
    {
        bad.push(FieldViolation::new("campaign", "campaigns/{campaign}"));
    }
    if !i.order.is_empty() && order_name(&i.order).is_none() {
        bad.push(FieldViolation::new("order", "customers/{customer}/orders/{order}"));
    }
    if bad.is_empty() { Ok(()) } else { Err(bad) }
}

/// `customers/{c}/orders/{o}` → (customer, order id).
pub fn order_name(name: &str) -> Option<(CustomerId, &str)> {
    let (customer, order) = name.split_once("/orders/")?;
    let id = CustomerId::parse_name(customer, "name").ok()?;
    (!order.is_empty() && !order.contains('/')).then_some((id, order))
}

/// What became of an upsert.
#[derive(Debug, Clone)]
pub struct UpsertedOrder {
    pub order: pb::Order,
    pub customer: CustomerId,
    pub created: bool,
    pub stale: bool,
    pub lead_created: bool,
}

/// What became of one interaction of a batch.
#[derive(Debug, Clone)]
pub enum Recorded {
    Stored(String),
    Duplicate(String),
    Rejected(Vec<FieldViolation>),
}

fn order_from(row: &store::OrderRow) -> Result<pb::Order> {
    let mut o = pb::Order::decode(row.data.as_slice()).map_err(Error::internal)?;
    o.etag = format!("\"{}\"", row.revision);
    Ok(o)
}

impl Customers {
    /// The customer a reference names (merged customers answer with the survivor),
    /// creating a lead for an unknown external id when configured; and whether it did.
    pub async fn resolve(&self, actor: &str, r: &CustomerRef, channel: Channel) -> Result<(Customer, bool)> {
        let id = match r {
            CustomerRef::Id(id) => *id,
            CustomerRef::External { source, external_id } => match records::external_id(&self.db, source, external_id).await? {
                Some(id) => id,
                None if self.settings.unknown_customer == UnknownCustomer::CreateLead => {
                    // A placeholder name until a source tells more.
                    let profile = crate::domain::Profile {
                        display_name: format!("{source} {external_id}"),
                        ..Default::default()
                    };
                    let lead = self.validate_partial(profile).await?;
                    let source = SourceRef {
                        system: source.clone(),
                        channel,
                    };
                    let done = self.ingest(actor, &source, external_id, lead, None).await?;
                    return Ok((done.customer, true));
                }
                None => {
                    return Err(Error::NotFound {
                        resource_type: "customer",
                        name: format!("external id {source}/{external_id}"),
                    });
                }
            },
        };
        let c = self.get(id).await?;
        if c.delete_time.is_some() {
            return Err(Error::FailedPrecondition {
                reason: "CUSTOMER_DELETED",
                subject: c.name(),
                message: "the customer is deleted".into(),
            });
        }
        Ok((c, false))
    }

    /// Creates or updates an order by (source, external id).
    pub async fn upsert_order(&self, actor: &str, customer: &CustomerRef, mut order: pb::Order) -> Result<UpsertedOrder> {
        validate_order(&mut order).map_err(|v| Error::InvalidArgument(v).in_field("order"))?;
        let channel = crate::api::convert::channel_from_proto(if order.channel == 0 {
            common::Channel::Api as i32
        } else {
            order.channel
        })?;
        let (owner, lead_created) = self.resolve(actor, customer, channel).await?;
        let at = now();
        let update_us = order
            .source_update_time
            .as_ref()
            .and_then(micros)
            .unwrap_or(at.timestamp_micros());
        let place_us = order.place_time.as_ref().and_then(micros).unwrap_or(0);
        // Two attempts: a concurrent first insert of the same key makes the second an update.
        for _ in 0..2 {
            let txn = begin_write(&self.db).await?;
            let stored = store::order_by_key(&txn, &order.source, &order.external_id).await?;
            if let Some(s) = &stored
                && s.source_update_us > update_us
            {
                txn.rollback().await?;
                return Ok(UpsertedOrder {
                    order: order_from(s)?,
                    customer: CustomerId::parse_name(&format!("customers/{}", s.customer_id), "customer")?,
                    created: false,
                    stale: true,
                    lead_created,
                });
            }
            let id = stored
                .as_ref()
                .map_or_else(|| uuid::Uuid::now_v7().simple().to_string(), |s| s.id.clone());
            let mut saved = order.clone();
            saved.name = format!("{}/orders/{id}", owner.name());
            saved.etag.clear();
            saved.update_time = Some(timestamp(at));
            saved.source_update_time = DateTime::from_timestamp_micros(update_us).map(timestamp);
            saved.create_time = match &stored {
                Some(s) => order_from(s)?.create_time,
                None => Some(timestamp(at)),
            };
            let owner_id = owner.id.uuid().to_string();
            let cols = OrderColumns {
                customer_id: &owner_id,
                source: &saved.source,
                external_id: &saved.external_id,
                status: saved.status,
                currency: &saved.currency,
                total_micros: saved.total_micros,
                place_us,
                source_update_us: update_us,
            };
            let (written, revision) = match &stored {
                None => (store::insert_order(&txn, &id, &cols, saved.encode_to_vec()).await?, 1),
                Some(s) => (
                    store::update_order(&txn, &id, s.revision, &cols, saved.encode_to_vec()).await?,
                    s.revision + 1,
                ),
            };
            if !written {
                txn.rollback().await?;
                continue;
            }
            let event = pb::OrderChanged {
                customer: owner.name(),
                order: Some(saved.clone()),
                created: stored.is_none(),
                previous_status: stored.as_ref().map_or(0, |s| s.status),
            };
            feed::append(
                &txn,
                NewEvent {
                    event_type: "crm.customer.v1.OrderChanged",
                    subject: saved.name.clone(),
                    actor: actor.to_owned(),
                    data: event.encode_to_vec(),
                },
            )
            .await?;
            txn.commit().await?;
            self.feed.committed();
            saved.etag = format!("\"{revision}\"");
            return Ok(UpsertedOrder {
                order: saved,
                customer: owner.id,
                created: stored.is_none(),
                stale: false,
                lead_created,
            });
        }
        Err(Error::Unavailable(format!(
            "order {}/{} changed concurrently; retry",
            order.source, order.external_id
        )))
    }

    /// The order `name` and its customer.
    pub async fn get_order(&self, name: &str) -> Result<pb::Order> {
        let not_found = || Error::NotFound {
            resource_type: "order",
            name: name.to_owned(),
        };
        let (customer, id) = order_name(name).ok_or_else(|| Error::invalid("name", "customers/{customer}/orders/{order}"))?;
        let row = store::order(&self.db, id).await?.ok_or_else(not_found)?;
        if row.customer_id != customer.uuid().to_string() {
            return Err(not_found());
        }
        order_from(&row)
    }

    /// The customer and every customer merged into it (transitively): orders and
    /// interactions recorded under any of them are the survivor's. An unmerge takes
    /// its customer out of the list, and so its records back.
    pub async fn merged_family(&self, c: &Customer) -> Result<Vec<CustomerId>> {
        let defs = self.definitions().await?;
        let mut family = vec![c.id];
        let mut frontier = c.merged_customers.clone();
        // Merges chain at most a few levels; the bound guards against a cycle.
        for _ in 0..8 {
            let mut next = Vec::new();
            for id in frontier {
                if family.contains(&id) {
                    continue;
                }
                family.push(id);
                if let Ok(merged) = self.get_exact(id, &defs).await {
                    next.extend(merged.merged_customers);
                }
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        Ok(family)
    }

    /// A page of the orders of `family` (see [`Self::merged_family`]): (place_us, order).
    pub async fn list_orders(&self, customer: &[CustomerId], q: &OrderQuery) -> Result<Vec<(i64, pb::Order)>> {
        store::list_orders(&self.db, customer, q)
            .await?
            .iter()
            .map(|(us, row)| Ok((*us, order_from(row)?)))
            .collect()
    }

    /// Records a batch of interactions in one transaction: each valid one stored
    /// (or found stored before), each invalid one rejected with its field problems.
    /// Returns when everything stored is committed.
    pub async fn record_interactions(
        &self,
        actor: &str,
        batch: Vec<(Option<CustomerRef>, pb::Interaction)>,
    ) -> Result<Vec<Recorded>> {
        let at = now();
        let mut outcomes: Vec<Option<Recorded>> = vec![None; batch.len()];
        // Resolve each distinct reference once.
        let mut owners: HashMap<CustomerRef, std::result::Result<Customer, Error>> = HashMap::new();
        let mut rows = Vec::new();
        let mut events = Vec::new();
        let mut pending: Vec<(usize, String, i64, String, String)> = Vec::new();
        for (index, (reference, mut interaction)) in batch.into_iter().enumerate() {
            let mut bad = validate_interaction(&interaction, at).err().unwrap_or_default();
            bad.iter_mut().for_each(|f| f.field = format!("interaction.{}", f.field));
            let Some(reference) = reference else {
                bad.insert(0, FieldViolation::new("customer", "required"));
                outcomes[index] = Some(Recorded::Rejected(bad));
                continue;
            };
            if !bad.is_empty() {
                outcomes[index] = Some(Recorded::Rejected(bad));
                continue;
            }
            if !owners.contains_key(&reference) {
                let channel = crate::api::convert::channel_from_proto(interaction.channel)?;
                let found = self.resolve(actor, &reference, channel).await.map(|(c, _)| c);
                owners.insert(reference.clone(), found);
            }
            let owner = match owners.get(&reference) {
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    outcomes[index] = Some(Recorded::Rejected(vec![FieldViolation::new("customer", e.to_string())]));
                    continue;
                }
                None => continue,
            };
            let id = uuid::Uuid::now_v7().simple().to_string();
            let occur_us = interaction.occur_time.as_ref().and_then(micros).unwrap_or(0);
            interaction.name = format!("{}/interactions/{id}", owner.name());
            interaction.record_time = Some(timestamp(at));
            events.push((
                id.clone(),
                NewEvent {
                    event_type: "crm.customer.v1.InteractionRecorded",
                    subject: interaction.name.clone(),
                    actor: actor.to_owned(),
                    data: pb::InteractionRecorded {
                        customer: owner.name(),
                        interaction: Some(interaction.clone()),
                    }
                    .encode_to_vec(),
                },
            ));
            pending.push((
                index,
                id.clone(),
                occur_us,
                interaction.source.clone(),
                interaction.external_id.clone(),
            ));
            rows.push(NewInteraction {
                id,
                customer_id: owner.id.uuid().to_string(),
                kind: interaction.kind,
                channel: interaction.channel,
                occur_us,
                source: interaction.source.clone(),
                external_id: interaction.external_id.clone(),
                record_us: at.timestamp_micros(),
                data: interaction.encode_to_vec(),
            });
        }
        if !rows.is_empty() {
            let txn = begin_write(&self.db).await?;
            let inserted: std::collections::HashSet<String> =
                store::insert_interactions(&txn, &rows).await?.into_iter().collect();
            let fresh: Vec<NewEvent> = events
                .into_iter()
                .filter(|(id, _)| inserted.contains(id))
                .map(|(_, e)| e)
                .collect();
            feed::append_many(&txn, fresh).await?;
            for (index, id, occur_us, source, external_id) in &pending {
                let outcome = if inserted.contains(id) {
                    let customer = rows
                        .iter()
                        .find(|r| &r.id == id)
                        .map(|r| r.customer_id.clone())
                        .unwrap_or_default();
                    Recorded::Stored(format!("customers/{customer}/interactions/{id}"))
                } else {
                    match store::interaction_by_key(&txn, source, external_id, *occur_us).await? {
                        Some((customer, existing)) => {
                            Recorded::Duplicate(format!("customers/{customer}/interactions/{existing}"))
                        }
                        None => Recorded::Duplicate(String::new()),
                    }
                };
                outcomes[*index] = Some(outcome);
            }
            txn.commit().await?;
            self.feed.committed();
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Recorded::Rejected(vec![FieldViolation::new("interaction", "not processed")])))
            .collect())
    }

    /// A page of the interactions of `family`, newest first: (occur_us, interaction).
    pub async fn list_interactions(&self, customer: &[CustomerId], q: &InteractionQuery) -> Result<Vec<(i64, pb::Interaction)>> {
        store::list_interactions(&self.db, customer, q)
            .await?
            .into_iter()
            .map(|(us, _, data)| Ok((us, pb::Interaction::decode(data.as_slice()).map_err(Error::internal)?)))
            .collect()
    }

    /// Creates this month's and the next three months' interaction partitions
    /// (PostgreSQL). Run before serving, so no row of the current month lands in the
    /// default partition.
    pub async fn prepare_partitions(&self) -> Result<()> {
        let created = store::ensure_partitions(&self.db, Utc::now(), 3).await?;
        if !created.is_empty() {
            tracing::info!(?created, "interaction partitions created");
        }
        Ok(())
    }

    /// [`Self::prepare_partitions`] daily, so partitions always exist months ahead.
    pub async fn run_partition_upkeep(self, mut shutdown: crm_platform::server::ShutdownSignal) {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(86_400)) => {}
            }
            if let Err(err) = self.prepare_partitions().await {
                tracing::warn!(%err, "interaction partition upkeep failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> pb::Order {
        pb::Order {
            source: "erp".into(),
            external_id: "SO-1".into(),
            status: pb::OrderStatus::Paid as i32,
            currency: "CNY".into(),
            lines: vec![
                pb::OrderLine {
                    sku: "P-1".into(),
                    quantity: 2,
                    unit_price_micros: 1_500_000,
                    ..Default::default()
                },
                pb::OrderLine {
                    sku: "C-9".into(),
                    quantity: 1,
                    unit_price_micros: 990_000,
                    category: "accessories".into(),
                    ..Default::default()
                },
            ],
            place_time: Some(prost_types::Timestamp {
                seconds: 1_790_000_000,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_order_total_defaults_to_its_lines() {
        let mut o = order();
        validate_order(&mut o).unwrap();
        assert_eq!(o.total_micros, 3_990_000);
    }

    #[test]
    fn a_bad_order_names_every_field() {
        let mut o = pb::Order {
            source: "ERP!".into(),
            currency: "rmb".into(),
            lines: vec![pb::OrderLine {
                quantity: 0,
                ..Default::default()
            }],
            ..Default::default()
        };
        let fields: Vec<String> = validate_order(&mut o).unwrap_err().into_iter().map(|f| f.field).collect();
        assert_eq!(
            fields,
            vec![
                "source",
                "external_id",
                "status",
                "currency",
                "lines[0].sku",
                "lines[0].quantity",
                "place_time"
            ]
        );
    }

    #[test]
    fn interactions_in_the_future_are_refused() {
        let now = Utc::now();
        let i = pb::Interaction {
            kind: pb::InteractionKind::ProductView as i32,
            channel: common::Channel::App as i32,
            occur_time: Some(timestamp(now + Duration::hours(1))),
            source: "app".into(),
            external_id: "e1".into(),
            properties: [("Bad Key".to_owned(), "x".to_owned())].into(),
            order: "orders/1".into(),
            ..Default::default()
        };
        let fields: Vec<String> = validate_interaction(&i, now)
            .unwrap_err()
            .into_iter()
            .map(|f| f.field)
            .collect();
        assert_eq!(fields, vec!["occur_time", "properties[Bad Key]", "order"]);
    }
}
