//! Configuration resources (agents, queues, routing rules, calendars, SLA and
//! escalation policies): one generic path per standard method. Reading needs
//! `ticket.read`, changing `ticket.admin`; customers reach none of it.

use chrono::Utc;
use crm_platform::{Error, auth::Principal};
use crm_proto::crm::ticketing::v1 as pb;

use super::{Api, DEFAULT_PAGE_SIZE, page, paging_of, required};
use crate::service::ConfigObject;

impl Api {
    async fn check_config<M: ConfigObject>(&self, p: &Principal, permission: &str) -> Result<(), Error> {
        Self::staff_only(p, permission)?;
        self.check(p, permission, M::COLLECTION).await
    }

    pub(super) async fn create_config<M: ConfigObject>(&self, p: &Principal, object: Option<M>, field: &str) -> Result<M, Error> {
        self.check_config::<M>(p, "ticket.admin").await?;
        let object = required(object, field)?;
        self.ticketing
            .create_object(&p.user_id, object, Utc::now())
            .await
            .map_err(|e| e.in_field(field))
    }

    pub(super) async fn get_config<M: ConfigObject>(&self, p: &Principal, name: &str) -> Result<M, Error> {
        self.check_config::<M>(p, "ticket.read").await?;
        self.ticketing.get_object(name).await
    }

    pub(super) async fn list_config<M: ConfigObject>(
        &self,
        p: &Principal,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<M>, String), Error> {
        self.check_config::<M>(p, "ticket.read").await?;
        let (size, after) = paging_of::<String>(&self.page_tokens, M::COLLECTION, page_size, page_token, DEFAULT_PAGE_SIZE)?;
        let found = self
            .ticketing
            .list_objects::<M>(after.as_deref().unwrap_or(""), size as usize + 1)
            .await?;
        page(&self.page_tokens, M::COLLECTION, found, size, |o: &M| o.name().to_owned())
    }

    pub(super) async fn update_config<M: ConfigObject>(
        &self,
        p: &Principal,
        object: Option<M>,
        mask: Option<prost_types::FieldMask>,
        field: &str,
    ) -> Result<M, Error> {
        self.check_config::<M>(p, "ticket.admin").await?;
        let object = required(object, field)?;
        let mask = mask.map(|m| m.paths).unwrap_or_default();
        self.ticketing
            .update_object(&p.user_id, object, &mask, Utc::now())
            .await
            .map_err(|e| match e {
                Error::InvalidArgument(v) if v.iter().all(|f| f.field.starts_with("update_mask")) => Error::InvalidArgument(v),
                e => e.in_field(field),
            })
    }

    pub(super) async fn delete_config<M: ConfigObject>(&self, p: &Principal, name: &str, etag: &str) -> Result<(), Error> {
        self.check_config::<M>(p, "ticket.admin").await?;
        self.ticketing.delete_object::<M>(&p.user_id, name, etag).await
    }

    /// Agents with their current load.
    pub(super) async fn with_loads(&self, mut agents: Vec<pb::Agent>) -> Result<Vec<pb::Agent>, Error> {
        let loads = self.ticketing.agent_loads().await?;
        for a in &mut agents {
            a.load = loads.get(&a.name).map_or(0, |l| i32::try_from(*l).unwrap_or(i32::MAX));
        }
        Ok(agents)
    }
}
