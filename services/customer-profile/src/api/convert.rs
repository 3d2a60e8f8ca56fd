//! The one place where protobuf messages and domain types meet.

use crm_platform::{Error, FieldViolation, feed::timestamp};
use crm_proto::crm::{common::v1 as common, customer::v1 as pb};

use crate::{
    domain::{
        Customer, Profile,
        customer::{Address, Channel, ContactKind, CustomerKind, Email, LifecycleStage, PersonName, Phone, PostalAddress},
        definitions::{Classification, FieldDefinition, FieldType},
        matching::{Comparison, Outcome},
    },
    service::{
        ingest::{ImportJob, ImportState, Outcome as IngestOutcome, SourceRef, check_source},
        quality::{Kpi, QualityReport},
    },
    store::records::{Candidate, CandidateState, RowResult},
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
    let kind = kind_from_proto(c.r#type, "type", &mut v);
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
        birth_date: c.birth_date,
        national_id: c.national_id,
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
        Some(common::Channel::Sms) => Channel::Sms,
        Some(common::Channel::Api) | Some(common::Channel::Unspecified) => Channel::Api,
        None => return Err(Error::InvalidArgument(v)),
    };
    Ok(channel)
}

pub fn channel_to_proto(c: Channel) -> common::Channel {
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
        Channel::Sms => common::Channel::Sms,
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
        birth_date: p.birth_date.clone(),
        national_id: p.national_id.clone(),
        external_ids: c
            .external_ids
            .iter()
            .map(|e| pb::ExternalId {
                source: e.source.clone(),
                external_id: e.external_id.clone(),
            })
            .collect(),
        provenance: c
            .provenance
            .iter()
            .map(|(field, p)| pb::FieldProvenance {
                field: field.clone(),
                source: p.source.clone(),
                channel: channel_to_proto(p.channel) as i32,
                update_time: Some(timestamp(p.time)),
            })
            .collect(),
        raw_values: c.raw_values.clone().into_iter().collect(),
        completeness: c.completeness,
        confirm_time: Some(timestamp(c.confirm_time)),
        merged_customers: c.merged_customers.iter().map(|m| m.name()).collect(),
        redacted_fields: Vec::new(),
    }
}

fn kind_from_proto(value: i32, field: &str, v: &mut Vec<FieldViolation>) -> CustomerKind {
    match enum_value(value, field, v) {
        Some(pb::CustomerType::Person) => CustomerKind::Person,
        Some(pb::CustomerType::Organization) => CustomerKind::Organization,
        Some(pb::CustomerType::Unspecified) | None => CustomerKind::Unspecified,
    }
}

fn kind_to_proto(k: CustomerKind) -> i32 {
    let kind = match k {
        CustomerKind::Unspecified => pb::CustomerType::Unspecified,
        CustomerKind::Person => pb::CustomerType::Person,
        CustomerKind::Organization => pb::CustomerType::Organization,
    };
    kind as i32
}

/// A definition as a caller sent it (path from `name`), unvalidated.
pub fn definition_from_proto(d: pb::FieldDefinition) -> Result<FieldDefinition, Error> {
    let mut v = Vec::new();
    let path = match d.name.strip_prefix("fieldDefinitions/") {
        Some(p) if !p.is_empty() => p.to_owned(),
        _ => {
            v.push(FieldViolation::new(
                "name",
                "must be a resource name `fieldDefinitions/{field}`",
            ));
            String::new()
        }
    };
    let field_type = match enum_value(d.r#type, "type", &mut v) {
        Some(pb::FieldType::String) => Some(FieldType::String),
        Some(pb::FieldType::Number) => Some(FieldType::Number),
        Some(pb::FieldType::Boolean) => Some(FieldType::Boolean),
        Some(pb::FieldType::Date) => Some(FieldType::Date),
        Some(pb::FieldType::Enum) => Some(FieldType::Enum),
        Some(pb::FieldType::Phone) => Some(FieldType::Phone),
        Some(pb::FieldType::Email) => Some(FieldType::Email),
        Some(pb::FieldType::Address) => Some(FieldType::Address),
        Some(pb::FieldType::Unspecified) => {
            v.push(FieldViolation::new("type", "required"));
            None
        }
        None => None,
    };
    let classification = match enum_value(d.classification, "classification", &mut v) {
        Some(common::Classification::Public) => Classification::Public,
        Some(common::Classification::Sensitive) => Classification::Sensitive,
        Some(common::Classification::Confidential) => Classification::Confidential,
        Some(common::Classification::Internal | common::Classification::Unspecified) | None => Classification::Internal,
    };
    let applies_to = d
        .applies_to
        .iter()
        .enumerate()
        .map(|(i, k)| kind_from_proto(*k, &format!("applies_to[{i}]"), &mut v))
        .collect();
    let required_for = d
        .required_for
        .iter()
        .enumerate()
        .map(|(i, k)| kind_from_proto(*k, &format!("required_for[{i}]"), &mut v))
        .collect();
    if !d.completeness_weight.is_finite() {
        v.push(FieldViolation::new("completeness_weight", "must be a number"));
    }
    match field_type {
        Some(field_type) if v.is_empty() => Ok(FieldDefinition {
            path,
            display_name: d.display_name,
            description: d.description,
            field_type,
            built_in: false,
            applies_to,
            required_for,
            allowed_values: d.allowed_values,
            classification,
            completeness_weight: d.completeness_weight,
            self_editable: d.self_editable,
            revision: 0,
            update_time: None,
        }),
        _ => Err(Error::InvalidArgument(v)),
    }
}

pub fn definition_to_proto(d: &FieldDefinition) -> pb::FieldDefinition {
    pb::FieldDefinition {
        name: d.name(),
        display_name: d.display_name.clone(),
        description: d.description.clone(),
        r#type: match d.field_type {
            FieldType::String => pb::FieldType::String,
            FieldType::Number => pb::FieldType::Number,
            FieldType::Boolean => pb::FieldType::Boolean,
            FieldType::Date => pb::FieldType::Date,
            FieldType::Enum => pb::FieldType::Enum,
            FieldType::Phone => pb::FieldType::Phone,
            FieldType::Email => pb::FieldType::Email,
            FieldType::Address => pb::FieldType::Address,
        } as i32,
        built_in: d.built_in,
        self_editable: d.self_editable,
        applies_to: d.applies_to.iter().map(|k| kind_to_proto(*k)).collect(),
        required_for: d.required_for.iter().map(|k| kind_to_proto(*k)).collect(),
        allowed_values: d.allowed_values.clone(),
        classification: match d.classification {
            Classification::Public => common::Classification::Public,
            Classification::Internal => common::Classification::Internal,
            Classification::Sensitive => common::Classification::Sensitive,
            Classification::Confidential => common::Classification::Confidential,
        } as i32,
        completeness_weight: d.completeness_weight,
        update_time: d.update_time.map(timestamp),
        etag: d.etag(),
    }
}

pub fn comparisons_to_proto(cs: &[Comparison]) -> Vec<pb::FieldComparison> {
    cs.iter()
        .map(|c| pb::FieldComparison {
            field: c.field.clone(),
            outcome: match c.outcome {
                Outcome::Agree => pb::ComparisonOutcome::Agree,
                Outcome::Partial => pb::ComparisonOutcome::Partial,
                Outcome::Disagree => pb::ComparisonOutcome::Disagree,
                Outcome::Missing => pb::ComparisonOutcome::Missing,
            } as i32,
            similarity: c.similarity,
            weight: c.weight,
        })
        .collect()
}

pub fn candidate_to_proto(c: &Candidate) -> pb::DuplicateCandidate {
    pb::DuplicateCandidate {
        name: c.name(),
        customer: c.customer.name(),
        other_customer: c.other.name(),
        match_probability: c.probability,
        comparisons: comparisons_to_proto(&c.comparisons),
        state: match c.state {
            CandidateState::Open => pb::DuplicateState::Open,
            CandidateState::Merged => pb::DuplicateState::Merged,
            CandidateState::Dismissed => pb::DuplicateState::Dismissed,
        } as i32,
        create_time: Some(timestamp(c.create_time)),
        update_time: Some(timestamp(c.update_time)),
    }
}

pub fn outcome_to_proto(o: IngestOutcome) -> pb::IngestOutcome {
    match o {
        IngestOutcome::Created => pb::IngestOutcome::Created,
        IngestOutcome::Updated => pb::IngestOutcome::Updated,
        IngestOutcome::Merged => pb::IngestOutcome::Merged,
        IngestOutcome::Unchanged => pb::IngestOutcome::Unchanged,
        IngestOutcome::Rejected => pb::IngestOutcome::Rejected,
        IngestOutcome::Skipped => pb::IngestOutcome::Skipped,
    }
}

pub fn row_to_proto(r: &RowResult) -> pb::ImportRowResult {
    pb::ImportRowResult {
        row_key: r.row_key.clone(),
        outcome: IngestOutcome::parse(&r.outcome).map_or(pb::IngestOutcome::Unspecified, outcome_to_proto) as i32,
        customer: r.customer.clone(),
        errors: r
            .errors
            .iter()
            .map(|(field, description)| pb::FieldError {
                field: field.clone(),
                description: description.clone(),
            })
            .collect(),
        match_probability: r.probability,
    }
}

pub fn source_to_proto(s: &SourceRef) -> pb::Source {
    pb::Source {
        system: s.system.clone(),
        channel: channel_to_proto(s.channel) as i32,
    }
}

pub fn job_to_proto(j: &ImportJob) -> pb::ImportJob {
    pb::ImportJob {
        name: j.name(),
        source: Some(source_to_proto(&j.source)),
        mapping: j
            .mapping
            .0
            .iter()
            .map(|(column, field)| pb::FieldMapping {
                column: column.clone(),
                field: field.clone(),
            })
            .collect(),
        state: match j.state {
            ImportState::Running => pb::ImportState::Running,
            ImportState::Interrupted => pb::ImportState::Interrupted,
            ImportState::Succeeded => pb::ImportState::Succeeded,
        } as i32,
        rows_processed: j.rows_processed,
        created: j.count(IngestOutcome::Created),
        updated: j.count(IngestOutcome::Updated),
        merged: j.count(IngestOutcome::Merged),
        unchanged: j.count(IngestOutcome::Unchanged),
        rejected: j.count(IngestOutcome::Rejected),
        skipped: j.count(IngestOutcome::Skipped),
        errors: j.errors.iter().map(row_to_proto).collect(),
        create_time: Some(timestamp(j.create_time)),
        update_time: Some(timestamp(j.update_time)),
    }
}

/// A source from the request; both fields required.
pub fn source_from_proto(s: Option<pb::Source>, field: &str) -> Result<SourceRef, Error> {
    let Some(s) = s else {
        return Err(Error::invalid(field, "required"));
    };
    let mut v = Vec::new();
    if let Err(why) = check_source(&s.system) {
        v.push(FieldViolation::new(format!("{field}.system"), why));
    }
    if s.channel == common::Channel::Unspecified as i32 {
        v.push(FieldViolation::new(format!("{field}.channel"), "required"));
    }
    let channel = channel_from_proto(s.channel).map_err(|e| e.in_field(field));
    match channel {
        Ok(channel) if v.is_empty() => Ok(SourceRef {
            system: s.system,
            channel,
        }),
        Ok(_) => Err(Error::InvalidArgument(v)),
        Err(Error::InvalidArgument(more)) => {
            v.extend(more);
            Err(Error::InvalidArgument(v))
        }
        Err(e) => Err(e),
    }
}

fn kpi_to_proto(k: &Kpi) -> pb::Kpi {
    pb::Kpi {
        value: k.value,
        target: k.target,
        status: if k.ok { pb::KpiStatus::Ok } else { pb::KpiStatus::Alert } as i32,
        numerator: k.numerator,
        denominator: k.denominator,
    }
}

pub fn quality_to_proto(r: &QualityReport) -> pb::DataQualityReport {
    pb::DataQualityReport {
        completeness: Some(kpi_to_proto(&r.completeness)),
        duplicate_rate: Some(kpi_to_proto(&r.duplicate_rate)),
        entry_error_rate: Some(kpi_to_proto(&r.entry_error_rate)),
        freshness: Some(kpi_to_proto(&r.freshness)),
        self_service_rate: Some(kpi_to_proto(&r.self_service_rate)),
        fields: r
            .fields
            .iter()
            .map(|(field, filled, applicable)| pb::FieldCompleteness {
                field: field.clone(),
                filled: *filled,
                applicable: *applicable,
            })
            .collect(),
        customers: r.customers,
        compute_time: Some(timestamp(r.compute_time)),
    }
}
