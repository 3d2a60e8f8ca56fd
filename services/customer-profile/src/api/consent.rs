//! Handlers of consent: reading needs `customer.read`, stating `customer.update`, on
//! the customer (a self-service token on its own record, with source `self_service`).

use crm_platform::{Error, auth, error::Validation, idempotency, paging};
use crm_proto::crm::customer::v1 as pb;
use prost::Message;
use tonic::{Request, Response, Status};

use super::{Api, MAX_PAGE_SIZE};
use crate::{domain::CustomerId, service::consent::validate_changes};

/// `customers/{c}/consent` → the customer.
fn consent_of(name: &str) -> Result<CustomerId, Error> {
    name.strip_suffix("/consent")
        .and_then(|c| CustomerId::parse_name(c, "name").ok())
        .ok_or_else(|| Error::invalid("name", "must be customers/{customer}/consent"))
}

impl Api {
    pub(super) async fn get_consent_call(&self, req: Request<pb::GetConsentRequest>) -> Result<Response<pb::Consent>, Status> {
        let principal = auth::principal(&req)?;
        let customer = consent_of(&req.get_ref().name)?;
        let c = self.load_for(&principal, "customer.read", customer).await?;
        Ok(Response::new(self.customers.consent(c.id).await?))
    }

    pub(super) async fn update_consent_call(
        &self,
        req: Request<pb::UpdateConsentRequest>,
    ) -> Result<Response<pb::Consent>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let key = idempotency::Key::new("UpdateConsent", &principal.user_id, &req.request_id, &req.encode_to_vec())?;
        let customer = consent_of(&req.name)?;
        let c = self.load_for(&principal, "customer.update", customer).await?;
        let (recorded_by, source) = match &principal.customer_id {
            Some(_) => (c.name(), Some("self_service")),
            None => (principal.user_id.clone(), None),
        };
        let mut changes = req.changes;
        validate_changes(&mut changes, &recorded_by, source, chrono::Utc::now()).map_err(Error::InvalidArgument)?;
        let consent = self
            .customers
            .update_consent(&recorded_by, c.id, changes, &req.etag, key)
            .await?;
        Ok(Response::new(consent))
    }

    pub(super) async fn list_consent_history_call(
        &self,
        req: Request<pb::ListConsentHistoryRequest>,
    ) -> Result<Response<pb::ListConsentHistoryResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let customer = consent_of(&req.name)?;
        let c = self.load_for(&principal, "customer.read", customer).await?;
        let fingerprint = paging::fingerprint(&["consent", &req.name, &req.purpose.to_string()]);
        let mut v = Validation::default();
        let size = v.check(paging::page_size(req.page_size, 50, MAX_PAGE_SIZE));
        let before = v.check(if req.page_token.is_empty() {
            Ok(0)
        } else {
            self.page_tokens.decode::<i64>(&fingerprint, &req.page_token)
        });
        let purpose = v.check(
            pb::ConsentPurpose::try_from(req.purpose)
                .map(|p| (p != pb::ConsentPurpose::Unspecified).then_some(p as i32))
                .map_err(|_| Error::invalid("purpose", "unknown purpose")),
        );
        let ((size, before), purpose) = v.finish(size.zip(before).zip(purpose))?;
        let mut found = self
            .customers
            .consent_history(c.id, purpose, before, u64::from(size) + 1)
            .await?;
        let next_page_token = self.page_tokens.cut(&fingerprint, &mut found, size, |(seq, _)| *seq)?;
        Ok(Response::new(pb::ListConsentHistoryResponse {
            records: found.into_iter().map(|(_, r)| r).collect(),
            next_page_token,
        }))
    }
}
