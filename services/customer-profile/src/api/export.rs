//! Handlers of data exports: `customer.export` on the customer (a customer exports
//! its own); the requester may always follow and download its job.

use crm_platform::{Error, auth, auth::Principal, idempotency};
use crm_proto::crm::customer::v1 as pb;
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Api;
use crate::{domain::CustomerId, sections::run_export, service::export::job_to_proto, store::export::JobRow};

/// Bytes per download message.
const CHUNK: usize = 64 * 1024;

impl Api {
    fn requester(p: &Principal) -> String {
        match &p.customer_id {
            Some(c) => format!("customers/{c}"),
            None => p.user_id.clone(),
        }
    }

    /// A job the caller may see: its own request, or one on a customer it may export.
    async fn visible_job(&self, p: &Principal, name: &str) -> Result<JobRow, Error> {
        let job = self.customers.export_job(name).await?;
        if job.requested_by != Self::requester(p) {
            let customer = CustomerId::parse_name(&format!("customers/{}", job.customer_id), "name")?;
            self.load_for(p, "customer.export", customer).await?;
        }
        Ok(job)
    }

    pub(super) async fn export_customer_data_call(
        &self,
        req: Request<pb::ExportCustomerDataRequest>,
    ) -> Result<Response<pb::ExportJob>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let key = idempotency::Key::new(
            "ExportCustomerData",
            &principal.user_id,
            &req.request_id,
            &req.encode_to_vec(),
        )?;
        let id = CustomerId::parse_name(&req.name, "name")?;
        let customer = self.load_for(&principal, "customer.export", id).await?;
        let (job, fresh) = self
            .customers
            .request_export(&Self::requester(&principal), &customer, key)
            .await?;
        if fresh {
            tokio::spawn(run_export(
                self.customers.clone(),
                self.sections.clone(),
                self.authz.clone(),
                job.clone(),
            ));
        }
        Ok(Response::new(job_to_proto(&job)))
    }

    pub(super) async fn get_export_job_call(
        &self,
        req: Request<pb::GetExportJobRequest>,
    ) -> Result<Response<pb::ExportJob>, Status> {
        let principal = auth::principal(&req)?;
        let job = self.visible_job(&principal, &req.get_ref().name).await?;
        Ok(Response::new(job_to_proto(&job)))
    }

    pub(super) async fn download_export_call(
        &self,
        req: Request<pb::DownloadExportRequest>,
    ) -> Result<Response<ReceiverStream<Result<pb::ExportChunk, Status>>>, Status> {
        let principal = auth::principal(&req)?;
        let name = req.get_ref().name.clone();
        self.visible_job(&principal, &name).await?;
        let document = self.customers.export_document_of(&name).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for (i, chunk) in document.chunks(CHUNK).enumerate() {
                let piece = pb::ExportChunk {
                    data: chunk.to_vec(),
                    offset: (i * CHUNK) as i64,
                };
                if tx.send(Ok(piece)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
