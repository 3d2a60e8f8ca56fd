//! The gRPC handlers: authorize, translate, call the store.

use chrono::Utc;
use crm_platform::{
    Error, auth,
    authz::{Authz, Resource},
    consumer,
    feed::timestamp,
};
use crm_proto::crm::segmentation::v1::{self as pb, segmentation_service_server::SegmentationService};
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status};

use crate::{projection, store};

#[derive(Clone)]
pub struct Api {
    db: DatabaseConnection,
    authz: Authz,
}

impl Api {
    pub fn new(db: DatabaseConnection, authz: Authz) -> Self {
        Self { db, authz }
    }
}

fn time(us: i64) -> Option<prost_types::Timestamp> {
    (us > 0)
        .then(|| chrono::DateTime::from_timestamp_micros(us))
        .flatten()
        .map(timestamp)
}

#[tonic::async_trait]
impl SegmentationService for Api {
    async fn get_projection_status(
        &self,
        req: Request<pb::GetProjectionStatusRequest>,
    ) -> Result<Response<pb::ProjectionStatus>, Status> {
        let principal = auth::principal(&req)?;
        self.authz
            .check(&principal, "segment.read", Resource::named("projectionStatus"))
            .await?;
        let status = consumer::status(&self.db, projection::SOURCE).await?.unwrap_or_default();
        let counts = store::counts(&self.db).await?;
        let lag_us = status.lag_us(Utc::now().timestamp_micros());
        Ok(Response::new(pb::ProjectionStatus {
            source: projection::SOURCE.into(),
            cursor: status.cursor,
            last_event_time: time(status.event_us),
            caught_up_time: time(status.heartbeat_us),
            lag: Some(prost_types::Duration {
                seconds: lag_us / 1_000_000,
                nanos: i32::try_from((lag_us % 1_000_000) * 1000).map_err(|e| Error::internal(anyhow::anyhow!(e)))?,
            }),
            events_applied: status.applied,
            customers: counts.customers,
            orders: counts.orders,
            interactions: counts.interactions,
            consents: counts.consents,
        }))
    }
}
