//! The events customer-profile publishes on its change feed.

use crm_platform::{Result, crypto::Keyring, feed::NewEvent};
use crm_proto::crm::customer::v1 as pb;
use prost::Message;

use crate::{api::convert::customer_to_proto, domain::Customer};

/// Events carry personal data: their payload is sealed at rest like the row.
pub fn seal(event: NewEvent, keyring: &Keyring) -> Result<NewEvent> {
    event.sealed(keyring)
}

pub fn created(c: &Customer, actor: &str) -> NewEvent {
    let data = pb::CustomerCreated {
        customer: Some(customer_to_proto(c)),
    }
    .encode_to_vec();
    NewEvent {
        event_type: "crm.customer.v1.CustomerCreated",
        subject: c.name(),
        actor: actor.to_owned(),
        data,
    }
}

pub fn updated(c: &Customer, changed_paths: Vec<String>, actor: &str) -> NewEvent {
    let data = pb::CustomerUpdated {
        customer: Some(customer_to_proto(c)),
        changed_paths,
    }
    .encode_to_vec();
    NewEvent {
        event_type: "crm.customer.v1.CustomerUpdated",
        subject: c.name(),
        actor: actor.to_owned(),
        data,
    }
}

pub fn deleted(c: &Customer, actor: &str) -> NewEvent {
    let data = pb::CustomerDeleted {
        customer: Some(customer_to_proto(c)),
    }
    .encode_to_vec();
    NewEvent {
        event_type: "crm.customer.v1.CustomerDeleted",
        subject: c.name(),
        actor: actor.to_owned(),
        data,
    }
}

pub fn field_definition_changed(def: &crate::domain::definitions::FieldDefinition, actor: &str) -> NewEvent {
    let data = pb::FieldDefinitionChanged {
        field_definition: Some(crate::api::convert::definition_to_proto(def)),
    }
    .encode_to_vec();
    NewEvent {
        event_type: "crm.customer.v1.FieldDefinitionChanged",
        subject: def.name(),
        actor: actor.to_owned(),
        data,
    }
}

pub fn merged(survivor: &Customer, merged: &[Customer], actor: &str) -> NewEvent {
    let data = pb::CustomersMerged {
        survivor: Some(customer_to_proto(survivor)),
        merged: merged.iter().map(Customer::name).collect(),
    }
    .encode_to_vec();
    NewEvent {
        event_type: "crm.customer.v1.CustomersMerged",
        subject: survivor.name(),
        actor: actor.to_owned(),
        data,
    }
}

pub fn unmerged(survivor: &Customer, restored: &[Customer], actor: &str) -> NewEvent {
    let data = pb::CustomersUnmerged {
        survivor: Some(customer_to_proto(survivor)),
        restored: restored.iter().map(customer_to_proto).collect(),
    }
    .encode_to_vec();
    NewEvent {
        event_type: "crm.customer.v1.CustomersUnmerged",
        subject: survivor.name(),
        actor: actor.to_owned(),
        data,
    }
}

pub fn stale(id: crate::domain::CustomerId, owner: &str, team: &str, days: i64, fields_to_confirm: Vec<String>) -> NewEvent {
    let data = pb::CustomerStale {
        customer: id.name(),
        owner_user_id: owner.to_owned(),
        team_id: team.to_owned(),
        days_since_confirmed: days,
        fields_to_confirm,
    }
    .encode_to_vec();
    NewEvent {
        event_type: "crm.customer.v1.CustomerStale",
        subject: id.name(),
        actor: String::new(),
        data,
    }
}

/// The fields a change event touched, for the audit trail (the forwarder records
/// every event; updates name their changed paths).
pub fn audited_fields(event: &crm_proto::crm::events::v1::Event) -> Vec<String> {
    match (event.r#type.as_str(), &event.data) {
        ("crm.customer.v1.CustomerUpdated", Some(data)) => pb::CustomerUpdated::decode(data.value.as_slice())
            .map(|u| u.changed_paths)
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

pub fn erased(erasure: &pb::Erasure, actor: &str) -> NewEvent {
    let data = pb::CustomerErased {
        erasure: Some(erasure.clone()),
    }
    .encode_to_vec();
    NewEvent {
        event_type: "crm.customer.v1.CustomerErased",
        subject: erasure.customer.clone(),
        actor: actor.to_owned(),
        data,
    }
}
