//! The one place where protobuf messages and domain types meet.

use crm_platform::{Error, FieldViolation, feed::timestamp};
use crm_proto::crm::{common::v1 as common, customer::v1 as pb};

use crate::domain::{
    Customer, Profile,
    customer::{Address, Channel, ContactKind, CustomerKind, Email, LifecycleStage, PersonName, Phone, PostalAddress},
};

/// Reads an enum field, reporting unknown numbers as a violation of `field`.
fn enum_value<E: TryFrom<i32>>(value: i32, field: &str, violations: &mut Vec<FieldViolation>) -> Option<E> {
    match E::try_from(value) {
        Ok(v) => Some(v),
        Err(_) => {
            violations.push(FieldViolation::new(field, format!("{value} is not a known value")));
            None
        }
    }
}

/// The caller-settable fields of `customer`, unvalidated (see `Profile::validated`).
pub fn profile_from_proto(c: pb::Customer) -> Result<Profile, Error> {
    let mut v = Vec::new();
    let kind = match enum_value(c.r#type, "type", &mut v) {
        Some(pb::CustomerType::Person) => CustomerKind::Person,
        Some(pb::CustomerType::Organization) => CustomerKind::Organization,
        Some(pb::CustomerType::Unspecified) | None => CustomerKind::Unspecified,
    };
    let lifecycle_stage = match enum_value(c.lifecycle_stage, "lifecycle_stage", &mut v) {
        Some(pb::LifecycleStage::Lead) => LifecycleStage::Lead,
        Some(pb::LifecycleStage::Prospect) => LifecycleStage::Prospect,
        Some(pb::LifecycleStage::Customer) => LifecycleStage::Customer,
        Some(pb::LifecycleStage::Churned) => LifecycleStage::Churned,
        Some(pb::LifecycleStage::Unspecified) | None => LifecycleStage::Unspecified,
    };
    let phones = c
        .phone_numbers
        .into_iter()
        .enumerate()
        .map(|(i, p)| Phone {
            kind: match enum_value(p.r#type, &format!("phone_numbers[{i}].type"), &mut v) {
                Some(pb::PhoneType::Mobile) => ContactKind::Mobile,
                Some(pb::PhoneType::Home) => ContactKind::Home,
                Some(pb::PhoneType::Work) => ContactKind::Work,
                Some(pb::PhoneType::Other) => ContactKind::Other,
                Some(pb::PhoneType::Unspecified) | None => ContactKind::Unspecified,
            },
            number: p.number,
            primary: p.primary,
            verified: p.verified,
        })
        .collect();
    let emails = c
        .email_addresses
        .into_iter()
        .enumerate()
        .map(|(i, e)| Email {
            kind: match enum_value(e.r#type, &format!("email_addresses[{i}].type"), &mut v) {
                Some(pb::EmailType::Personal) => ContactKind::Personal,
                Some(pb::EmailType::Work) => ContactKind::Work,
                Some(pb::EmailType::Other) => ContactKind::Other,
                Some(pb::EmailType::Unspecified) | None => ContactKind::Unspecified,
            },
            address: e.address,
            primary: e.primary,
            verified: e.verified,
        })
        .collect();
    let mut addresses = Vec::with_capacity(c.addresses.len());
    for (i, a) in c.addresses.into_iter().enumerate() {
        let kind = match enum_value(a.r#type, &format!("addresses[{i}].type"), &mut v) {
            Some(pb::AddressType::Home) => ContactKind::Home,
            Some(pb::AddressType::Work) => ContactKind::Work,
            Some(pb::AddressType::Billing) => ContactKind::Billing,
            Some(pb::AddressType::Shipping) => ContactKind::Shipping,
            Some(pb::AddressType::Other) => ContactKind::Other,
            Some(pb::AddressType::Unspecified) | None => ContactKind::Unspecified,
        };
        let Some(p) = a.postal_address else {
            v.push(FieldViolation::new(format!("addresses[{i}].postal_address"), "required"));
            continue;
        };
        addresses.push(Address {
            kind,
            primary: a.primary,
            postal: PostalAddress {
                region_code: p.region_code,
                postal_code: p.postal_code,
                administrative_area: p.administrative_area,
                locality: p.locality,
                sublocality: p.sublocality,
                address_lines: p.address_lines,
                recipients: p.recipients,
            },
        });
    }
    let name = c.person_name.unwrap_or_default();
    if !v.is_empty() {
        return Err(Error::InvalidArgument(v));
    }
    Ok(Profile {
        kind,
        display_name: c.display_name,
        person_name: PersonName {
            given: name.given_name,
            middle: name.middle_name,
            family: name.family_name,
            prefix: name.prefix,
            suffix: name.suffix,
        },
        organization_name: c.organization_name,
        phones,
        emails,
        addresses,
        lifecycle_stage,
        owner_user_id: c.owner_user_id,
        team_id: c.team_id,
        tags: c.tags,
        custom_attributes: c.custom_attributes.into_iter().collect(),
    })
}

pub fn channel_from_proto(value: i32) -> Result<Channel, Error> {
    let mut v = Vec::new();
    let channel = match enum_value(value, "source_channel", &mut v) {
        Some(common::Channel::Web) => Channel::Web,
        Some(common::Channel::App) => Channel::App,
        Some(common::Channel::Store) => Channel::Store,
        Some(common::Channel::ServiceDesk) => Channel::ServiceDesk,
        Some(common::Channel::Erp) => Channel::Erp,
        Some(common::Channel::Ecommerce) => Channel::Ecommerce,
        Some(common::Channel::Phone) => Channel::Phone,
        Some(common::Channel::Email) => Channel::Email,
        Some(common::Channel::Wechat) => Channel::Wechat,
        Some(common::Channel::Import) => Channel::Import,
        Some(common::Channel::Api) | Some(common::Channel::Unspecified) => Channel::Api,
        None => return Err(Error::InvalidArgument(v)),
    };
    Ok(channel)
}

fn channel_to_proto(c: Channel) -> common::Channel {
    match c {
        Channel::Unspecified => common::Channel::Unspecified,
        Channel::Web => common::Channel::Web,
        Channel::App => common::Channel::App,
        Channel::Store => common::Channel::Store,
        Channel::ServiceDesk => common::Channel::ServiceDesk,
        Channel::Erp => common::Channel::Erp,
        Channel::Ecommerce => common::Channel::Ecommerce,
        Channel::Phone => common::Channel::Phone,
        Channel::Email => common::Channel::Email,
        Channel::Wechat => common::Channel::Wechat,
        Channel::Import => common::Channel::Import,
        Channel::Api => common::Channel::Api,
    }
}

fn phone_type(k: ContactKind) -> pb::PhoneType {
    match k {
        ContactKind::Mobile => pb::PhoneType::Mobile,
        ContactKind::Home => pb::PhoneType::Home,
        ContactKind::Work => pb::PhoneType::Work,
        ContactKind::Other => pb::PhoneType::Other,
        ContactKind::Unspecified | ContactKind::Personal | ContactKind::Billing | ContactKind::Shipping => {
            pb::PhoneType::Unspecified
        }
    }
}

fn email_type(k: ContactKind) -> pb::EmailType {
    match k {
        ContactKind::Personal => pb::EmailType::Personal,
        ContactKind::Work => pb::EmailType::Work,
        ContactKind::Other => pb::EmailType::Other,
        ContactKind::Unspecified | ContactKind::Mobile | ContactKind::Home | ContactKind::Billing | ContactKind::Shipping => {
            pb::EmailType::Unspecified
        }
    }
}

fn address_type(k: ContactKind) -> pb::AddressType {
    match k {
        ContactKind::Home => pb::AddressType::Home,
        ContactKind::Work => pb::AddressType::Work,
        ContactKind::Billing => pb::AddressType::Billing,
        ContactKind::Shipping => pb::AddressType::Shipping,
        ContactKind::Other => pb::AddressType::Other,
        ContactKind::Unspecified | ContactKind::Mobile | ContactKind::Personal => pb::AddressType::Unspecified,
    }
}

pub fn customer_to_proto(c: &Customer) -> pb::Customer {
    let p = &c.profile;
    pb::Customer {
        name: c.name(),
        r#type: match p.kind {
            CustomerKind::Unspecified => pb::CustomerType::Unspecified,
            CustomerKind::Person => pb::CustomerType::Person,
            CustomerKind::Organization => pb::CustomerType::Organization,
        } as i32,
        display_name: p.display_name.clone(),
        person_name: (!p.person_name.is_empty()).then(|| pb::PersonName {
            given_name: p.person_name.given.clone(),
            middle_name: p.person_name.middle.clone(),
            family_name: p.person_name.family.clone(),
            prefix: p.person_name.prefix.clone(),
            suffix: p.person_name.suffix.clone(),
        }),
        organization_name: p.organization_name.clone(),
        phone_numbers: p
            .phones
            .iter()
            .map(|x| pb::PhoneNumber {
                number: x.number.clone(),
                r#type: phone_type(x.kind) as i32,
                primary: x.primary,
                verified: x.verified,
            })
            .collect(),
        email_addresses: p
            .emails
            .iter()
            .map(|x| pb::EmailAddress {
                address: x.address.clone(),
                r#type: email_type(x.kind) as i32,
                primary: x.primary,
                verified: x.verified,
            })
            .collect(),
        addresses: p
            .addresses
            .iter()
            .map(|a| pb::Address {
                r#type: address_type(a.kind) as i32,
                primary: a.primary,
                postal_address: Some(common::PostalAddress {
                    region_code: a.postal.region_code.clone(),
                    postal_code: a.postal.postal_code.clone(),
                    administrative_area: a.postal.administrative_area.clone(),
                    locality: a.postal.locality.clone(),
                    sublocality: a.postal.sublocality.clone(),
                    address_lines: a.postal.address_lines.clone(),
                    recipients: a.postal.recipients.clone(),
                }),
            })
            .collect(),
        lifecycle_stage: match p.lifecycle_stage {
            LifecycleStage::Unspecified => pb::LifecycleStage::Unspecified,
            LifecycleStage::Lead => pb::LifecycleStage::Lead,
            LifecycleStage::Prospect => pb::LifecycleStage::Prospect,
            LifecycleStage::Customer => pb::LifecycleStage::Customer,
            LifecycleStage::Churned => pb::LifecycleStage::Churned,
        } as i32,
        owner_user_id: p.owner_user_id.clone(),
        team_id: p.team_id.clone(),
        tags: p.tags.clone(),
        custom_attributes: p.custom_attributes.clone(),
        source_channel: channel_to_proto(c.source_channel) as i32,
        create_time: Some(timestamp(c.create_time)),
        update_time: Some(timestamp(c.update_time)),
        delete_time: c.delete_time.map(timestamp),
        etag: c.etag(),
    }
}
