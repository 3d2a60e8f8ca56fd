//! Data-subject access: everything this service holds about a customer as one JSON
//! document (the record with provenance, orders, interactions, consent history),
//! plus what the other services hold (tickets; segments, tags and traits; the score;
//! the audit trail), gathered by the caller. Assembled as a job.

use chrono::{DateTime, Utc};
use crm_platform::{
    Error, Result,
    idempotency::{self, Recorded},
};
use crm_proto::crm::customer::v1 as pb;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Customers, now};
use crate::{
    domain::{Customer, CustomerId},
    store::{
        activity::{InteractionQuery, OrderQuery},
        export as store,
    },
};

const RUNNING: i32 = pb::ExportState::Running as i32;

/// Rows read per page while assembling.
const PAGE: u64 = 1000;

/// What the other services hold about the customer, each part the data or why it
/// could not be read.
pub struct Gathered {
    /// Tickets with their comments (ticketing).
    pub tickets: std::result::Result<Vec<Value>, String>,
    /// The audit trail of the customer (permissions).
    pub audit: std::result::Result<Vec<Value>, String>,
    /// RFM scores, segments, tags and computed traits (marketing-segmentation).
    pub marketing: std::result::Result<Value, String>,
    /// The lifetime-value and churn score (analytics).
    pub analytics: std::result::Result<Value, String>,
}

/// A timestamp as RFC 3339 text (null when unset).
pub fn time(t: Option<&prost_types::Timestamp>) -> Value {
    t.and_then(crm_platform::feed::datetime)
        .map_or(Value::Null, |t| Value::String(t.to_rfc3339()))
}

fn order_json(o: &pb::Order) -> Value {
    json!({
        "name": o.name,
        "source": o.source,
        "external_id": o.external_id,
        "status": pb::OrderStatus::try_from(o.status).map_or("?", |s| s.as_str_name()),
        "currency": o.currency,
        "total_micros": o.total_micros,
        "lines": o.lines.iter().map(|l| json!({
            "sku": l.sku, "product_name": l.product_name, "category": l.category,
            "quantity": l.quantity, "unit_price_micros": l.unit_price_micros,
        })).collect::<Vec<_>>(),
        "place_time": time(o.place_time.as_ref()),
        "source_update_time": time(o.source_update_time.as_ref()),
    })
}

fn interaction_json(i: &pb::Interaction) -> Value {
    json!({
        "name": i.name,
        "kind": pb::InteractionKind::try_from(i.kind).map_or("?", |k| k.as_str_name()),
        "channel": crm_proto::crm::common::v1::Channel::try_from(i.channel).map_or("?", |c| c.as_str_name()),
        "occur_time": time(i.occur_time.as_ref()),
        "properties": i.properties,
        "campaign": i.campaign,
        "order": i.order,
        "source": i.source,
        "external_id": i.external_id,
    })
}

fn consent_json(r: &pb::ConsentRecord) -> Value {
    json!({
        "purpose": pb::ConsentPurpose::try_from(r.purpose).map_or("?", |p| p.as_str_name()),
        "channel": pb::ContactChannel::try_from(r.channel).map_or("?", |c| c.as_str_name()),
        "status": pb::ConsentStatus::try_from(r.status).map_or("?", |s| s.as_str_name()),
        "legal_basis": pb::LegalBasis::try_from(r.legal_basis).map_or("?", |b| b.as_str_name()),
        "source": r.source,
        "effective_time": time(r.effective_time.as_ref()),
        "expire_time": time(r.expire_time.as_ref()),
        "proof_reference": r.proof_reference,
        "recorded_by": r.recorded_by,
        "record_time": time(r.record_time.as_ref()),
    })
}

/// A job as the API shows it.
pub fn job_to_proto(j: &store::JobRow) -> pb::ExportJob {
    let at = |us: i64| DateTime::from_timestamp_micros(us).map(crm_platform::feed::timestamp);
    pb::ExportJob {
        name: format!("exportJobs/{}", j.id),
        customer: format!("customers/{}", j.customer_id),
        state: j.state,
        create_time: at(j.create_us),
        finish_time: j.finish_us.and_then(at),
        size_bytes: j.size,
        sha256: j.sha256.clone(),
        unavailable_sections: j.unavailable.lines().map(str::to_owned).collect(),
        error: j.error.clone(),
        requested_by: j.requested_by.clone(),
    }
}

/// `exportJobs/{id}` → `id`.
pub fn job_id(name: &str) -> Result<&str> {
    name.strip_prefix("exportJobs/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or_else(|| Error::invalid("name", "must be exportJobs/{export_job}"))
}

impl Customers {
    /// Records an export request for `customer` (running); idempotent per `key`.
    pub async fn request_export(
        &self,
        requested_by: &str,
        customer: &Customer,
        key: Option<idempotency::Key>,
    ) -> Result<(store::JobRow, bool)> {
        if let Some(key) = &key
            && let Some(name) = idempotency::lookup(&self.db, key).await?
        {
            return Ok((self.export_job(&name).await?, false));
        }
        let id = uuid::Uuid::now_v7().simple().to_string();
        let txn = crm_platform::db::begin_write(&self.db).await?;
        if let Some(key) = &key
            && idempotency::record(&txn, key, &format!("exportJobs/{id}")).await? == Recorded::Duplicate
        {
            txn.rollback().await?;
            let name = idempotency::lookup(&self.db, key)
                .await?
                .ok_or_else(|| Error::internal(anyhow::anyhow!("idempotency key vanished after a conflict")))?;
            return Ok((self.export_job(&name).await?, false));
        }
        store::insert(
            &txn,
            &id,
            &customer.id.uuid().to_string(),
            requested_by,
            now().timestamp_micros(),
            RUNNING,
        )
        .await?;
        txn.commit().await?;
        Ok((self.export_job(&format!("exportJobs/{id}")).await?, true))
    }

    pub async fn export_job(&self, name: &str) -> Result<store::JobRow> {
        store::get(&self.db, job_id(name)?).await?.ok_or_else(|| Error::NotFound {
            resource_type: "export job",
            name: name.to_owned(),
        })
    }

    /// Jobs a restart left running.
    pub async fn unfinished_exports(&self) -> Result<Vec<store::JobRow>> {
        store::in_state(&self.db, RUNNING).await
    }

    /// Assembles the document of job `id` for `customer`, with what the other
    /// services hold (`gathered`, each part or why it could not be had), and finishes
    /// the job.
    pub async fn complete_export(&self, id: &str, customer: CustomerId, gathered: Gathered) -> Result<()> {
        let (state, document, unavailable, error) = match self.export_document(customer, &gathered).await {
            Ok((doc, unavailable)) => (pb::ExportState::Succeeded, Some(doc), unavailable, String::new()),
            Err(e) => {
                tracing::warn!(%e, job = id, "export failed");
                (
                    pb::ExportState::Failed,
                    None,
                    Vec::new(),
                    "the export could not be assembled; request a new one".to_owned(),
                )
            }
        };
        let sha = document.as_ref().map_or(String::new(), |d| {
            Sha256::digest(d).iter().map(|b| format!("{b:02x}")).collect()
        });
        store::finish(
            &self.db,
            id,
            RUNNING,
            state as i32,
            now().timestamp_micros(),
            document,
            &sha,
            &unavailable.join("\n"),
            &error,
        )
        .await?;
        Ok(())
    }

    async fn export_document(&self, id: CustomerId, gathered: &Gathered) -> Result<(Vec<u8>, Vec<String>)> {
        let customer = self.get(id).await?;
        let family = self.merged_family(&customer).await?;
        let mut orders = Vec::new();
        let mut q = OrderQuery {
            limit: PAGE,
            ..Default::default()
        };
        loop {
            let page = self.list_orders(&family, &q).await?;
            let Some((us, last)) = page.last() else { break };
            q.after = Some((*us, last.name.rsplit('/').next().unwrap_or_default().to_owned()));
            let full = page.len() as u64 == PAGE;
            orders.extend(page.iter().map(|(_, o)| order_json(o)));
            if !full {
                break;
            }
        }
        let mut interactions = Vec::new();
        let mut q = InteractionQuery {
            limit: PAGE,
            ..Default::default()
        };
        loop {
            let page = self.list_interactions(&family, &q).await?;
            let Some((us, last)) = page.last() else { break };
            q.after = Some((*us, last.name.rsplit('/').next().unwrap_or_default().to_owned()));
            let full = page.len() as u64 == PAGE;
            interactions.extend(page.iter().map(|(_, i)| interaction_json(i)));
            if !full {
                break;
            }
        }
        let mut consent = Vec::new();
        let mut before = 0;
        loop {
            let page = self.consent_history(customer.id, None, before, PAGE).await?;
            let Some((seq, _)) = page.last() else { break };
            before = *seq;
            let full = page.len() as u64 == PAGE;
            consent.extend(page.iter().map(|(_, r)| consent_json(r)));
            if !full {
                break;
            }
        }
        let mut unavailable = Vec::new();
        let mut section = |name: &str, part: &std::result::Result<Value, String>| match part {
            Ok(v) => v.clone(),
            Err(why) => {
                unavailable.push(format!("{name}: {why}"));
                Value::Null
            }
        };
        let tickets = section("tickets", &gathered.tickets.clone().map(Value::Array));
        let audit = section("audit_trail", &gathered.audit.clone().map(Value::Array));
        let marketing = section("marketing", &gathered.marketing);
        let analytics = section("analytics", &gathered.analytics);
        let doc = json!({
            "format": "crm.customer-export/1",
            "customer": customer.name(),
            "exported_at": Utc::now().to_rfc3339(),
            "record": serde_json::to_value(&customer).map_err(Error::internal)?,
            "merged_customers": family.iter().skip(1).map(|c| c.name()).collect::<Vec<_>>(),
            "orders": orders,
            "interactions": interactions,
            "consent_history": consent,
            "tickets": tickets,
            "audit_trail": audit,
            "marketing": marketing,
            "analytics": analytics,
            "unavailable_sections": unavailable,
        });
        Ok((serde_json::to_vec_pretty(&doc).map_err(Error::internal)?, unavailable))
    }

    /// The finished document of a job.
    pub async fn export_document_of(&self, name: &str) -> Result<Vec<u8>> {
        let job = self.export_job(name).await?;
        if job.state != pb::ExportState::Succeeded as i32 {
            return Err(Error::FailedPrecondition {
                reason: "EXPORT_NOT_READY",
                subject: name.to_owned(),
                message: "the export has not succeeded (see its state)".into(),
            });
        }
        store::document(&self.db, &job.id).await?.ok_or_else(|| Error::NotFound {
            resource_type: "export document",
            name: name.to_owned(),
        })
    }
}
