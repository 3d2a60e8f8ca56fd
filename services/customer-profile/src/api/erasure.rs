//! Handlers of erasure: `customer.erase` on the customer (a customer token with that
//! permission erases its own record); the record of an erasure for `customer.erase`
//! or `audit.read` holders.

use crm_platform::{Error, auth};
use crm_proto::crm::customer::v1 as pb;
use tonic::{Request, Response, Status};

use super::{Api, COLLECTION};
use crate::domain::CustomerId;

impl Api {
    pub(super) async fn erase_customer_call(
        &self,
        req: Request<pb::EraseCustomerRequest>,
    ) -> Result<Response<pb::Erasure>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let id = CustomerId::parse_name(&req.name, "name")?;
        // Erasing again answers the first erasure's record.
        if let Ok(done) = self.customers.erasure(id).await {
            self.check_own_or(&principal, id, "customer.erase").await?;
            return Ok(Response::new(done));
        }
        // Checked on the survivor (a merged record answers with it); the family is
        // erased either way, recorded under the id asked for.
        self.load_for(&principal, "customer.erase", id).await?;
        let erasure = self.customers.erase(&principal.user_id, id, &req.reason, &req.etag).await?;
        Ok(Response::new(erasure))
    }

    pub(super) async fn get_erasure_call(&self, req: Request<pb::GetErasureRequest>) -> Result<Response<pb::Erasure>, Status> {
        let principal = auth::principal(&req)?;
        let id = req
            .get_ref()
            .name
            .strip_prefix("erasures/")
            .and_then(|id| uuid::Uuid::parse_str(id).ok())
            .map(CustomerId::from_uuid)
            .ok_or_else(|| Error::invalid("name", "must be a resource name `erasures/{customer}`"))?;
        if self.check_own_or(&principal, id, "customer.erase").await.is_err() {
            self.check(&principal, "audit.read", COLLECTION).await?;
        }
        Ok(Response::new(self.customers.erasure(id).await?))
    }

    /// A customer token for its own id, or `permission` on the collection (the
    /// record is gone: no owner or team decides any more).
    async fn check_own_or(&self, p: &auth::Principal, id: CustomerId, permission: &str) -> Result<(), Error> {
        match &p.customer_id {
            Some(own) if *own == id.uuid().to_string() => self.check(p, permission, &id.name()).await,
            Some(_) => Err(Error::PermissionDenied {
                permission: permission.to_owned(),
                resource: id.name(),
            }),
            None => self.check(p, permission, COLLECTION).await,
        }
    }
}
