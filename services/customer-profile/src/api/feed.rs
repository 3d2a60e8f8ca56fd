//! The change feed as a caller may see it. Events carry whole customer records; a
//! caller cleared for every field gets them as stored, anyone else gets each record
//! masked like a read (`GetCustomer`) with the clearance that reaches that record,
//! so a service keeping a projection (segmentation) never receives contacts it may
//! not see.

use std::sync::Arc;

use crm_platform::authz::{FieldPolicy, Resource};
use crm_proto::crm::{
    customer::v1 as pb,
    events::v1::{StreamEventsResponse, stream_events_response::Kind},
};
use prost::Message;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::Status;

use super::redact;
use crate::domain::definitions::Definitions;

/// Masks every customer in every event of `inner` for `policy`.
pub fn masked(
    mut inner: ReceiverStream<Result<StreamEventsResponse, Status>>,
    policy: FieldPolicy,
    defs: Arc<Definitions>,
) -> ReceiverStream<Result<StreamEventsResponse, Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(item) = inner.next().await {
            let item = item.and_then(|mut msg| {
                if let Some(Kind::Event(event)) = &mut msg.kind
                    && let Some(data) = &mut event.data
                {
                    data.value = mask_event(&event.r#type, &data.value, &policy, &defs)
                        .map_err(|e| Status::internal(format!("event {}: {e}", event.id)))?;
                }
                Ok(msg)
            });
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

fn mask_customer(c: &mut pb::Customer, policy: &FieldPolicy, defs: &Definitions) {
    let (owner, team) = (c.owner_user_id.clone(), c.team_id.clone());
    let name = c.name.clone();
    let record = policy.for_record(Resource::record(&name, &owner, &team));
    redact::apply(c, &|path| record.visibility(path), defs);
}

/// The payload of one event with its customers masked; other events unchanged.
fn mask_event(kind: &str, data: &[u8], policy: &FieldPolicy, defs: &Definitions) -> Result<Vec<u8>, prost::DecodeError> {
    let one = |c: &mut Option<pb::Customer>| {
        if let Some(c) = c {
            mask_customer(c, policy, defs);
        }
    };
    Ok(match kind.strip_prefix("crm.customer.v1.").unwrap_or_default() {
        "CustomerCreated" => {
            let mut e = pb::CustomerCreated::decode(data)?;
            one(&mut e.customer);
            e.encode_to_vec()
        }
        "CustomerUpdated" => {
            let mut e = pb::CustomerUpdated::decode(data)?;
            one(&mut e.customer);
            e.encode_to_vec()
        }
        "CustomerDeleted" => {
            let mut e = pb::CustomerDeleted::decode(data)?;
            one(&mut e.customer);
            e.encode_to_vec()
        }
        "CustomersMerged" => {
            let mut e = pb::CustomersMerged::decode(data)?;
            one(&mut e.survivor);
            e.encode_to_vec()
        }
        "CustomersUnmerged" => {
            let mut e = pb::CustomersUnmerged::decode(data)?;
            one(&mut e.survivor);
            for c in &mut e.restored {
                mask_customer(c, policy, defs);
            }
            e.encode_to_vec()
        }
        _ => data.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::definitions::Definitions;
    use crm_platform::authz::Classification;

    #[test]
    fn customers_in_events_are_masked_and_others_pass() {
        let defs = Definitions::new(Vec::new());
        let fields: Vec<(String, Classification)> = defs
            .iter()
            .map(|d| (d.path.clone(), redact::level(d.classification)))
            .collect();
        let policy = FieldPolicy::uniform(&fields, Classification::Public);
        let event = pb::CustomerCreated {
            customer: Some(pb::Customer {
                name: "customers/1".into(),
                display_name: "Wei Zhang".into(),
                email_addresses: vec![pb::EmailAddress {
                    address: "wei@example.com".into(),
                    ..Default::default()
                }],
                national_id: "11010519491231002X".into(),
                ..Default::default()
            }),
        };
        let out = mask_event("crm.customer.v1.CustomerCreated", &event.encode_to_vec(), &policy, &defs).unwrap();
        let c = pb::CustomerCreated::decode(out.as_slice()).unwrap().customer.unwrap();
        assert!(c.national_id.is_empty() || c.national_id.contains('*'), "{}", c.national_id);
        assert!(c.email_addresses.iter().all(|e| e.address != "wei@example.com"));
        assert!(!c.redacted_fields.is_empty());
        let order = pb::OrderChanged::default().encode_to_vec();
        assert_eq!(
            mask_event("crm.customer.v1.OrderChanged", &order, &policy, &defs).unwrap(),
            order
        );
        assert!(mask_event("crm.customer.v1.CustomerCreated", b"\xff\xff", &policy, &defs).is_err());
    }
}
