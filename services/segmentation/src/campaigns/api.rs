//! The `CampaignService` handlers: authorize, translate, call the use cases.

use crm_platform::{
    Error, auth,
    auth::Principal,
    authz::{Authz, Resource},
    mask::update_paths,
    paging::{PageTokens, page_size},
};
use crm_proto::crm::segmentation::v1::{self as pb, campaign_service_server::CampaignService};
use tonic::{Request, Response, Status};

use super::{manage::Campaigns, manage::campaign_id, store, to_proto};
use crate::tags::time;

/// The handlers.
#[derive(Clone)]
pub struct Api {
    campaigns: Campaigns,
    authz: Authz,
    page_tokens: PageTokens,
    preview: super::dispatch::Dispatcher,
}

impl Api {
    pub fn new(campaigns: Campaigns, authz: Authz, page_tokens: PageTokens, preview: super::dispatch::Dispatcher) -> Self {
        Self {
            campaigns,
            authz,
            page_tokens,
            preview,
        }
    }

    async fn check(&self, p: &Principal, permission: &str) -> Result<(), Error> {
        self.authz.check(p, permission, Resource::named("campaigns")).await
    }

    fn after<T: serde::de::DeserializeOwned + Default>(&self, fingerprint: &str, token: &str) -> Result<T, Error> {
        if token.is_empty() {
            Ok(T::default())
        } else {
            self.page_tokens.decode(fingerprint, token)
        }
    }
}

#[tonic::async_trait]
impl CampaignService for Api {
    async fn create_campaign(&self, req: Request<pb::CreateCampaignRequest>) -> Result<Response<pb::Campaign>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.manage").await?;
        let req = req.into_inner();
        let campaign = req.campaign.ok_or_else(|| Error::invalid("campaign", "required"))?;
        let row = self.campaigns.create(&principal.user_id, &req.campaign_id, &campaign).await?;
        Ok(Response::new(to_proto(&row)))
    }

    async fn get_campaign(&self, req: Request<pb::GetCampaignRequest>) -> Result<Response<pb::Campaign>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.read").await?;
        let row = self.campaigns.get(&req.get_ref().name).await?;
        Ok(Response::new(to_proto(&row)))
    }

    async fn list_campaigns(
        &self,
        req: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.read").await?;
        let req = req.into_inner();
        let size = page_size(req.page_size, 100, 1000)?;
        let after: String = self.after("campaigns", &req.page_token)?;
        let mut rows = self.campaigns.list(&after, u64::from(size) + 1).await?;
        let next_page_token = self.page_tokens.cut("campaigns", &mut rows, size, |c| c.id.clone())?;
        Ok(Response::new(pb::ListCampaignsResponse {
            campaigns: rows.iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_campaign(&self, req: Request<pb::UpdateCampaignRequest>) -> Result<Response<pb::Campaign>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.manage").await?;
        let req = req.into_inner();
        let campaign = req.campaign.ok_or_else(|| Error::invalid("campaign", "required"))?;
        let paths = update_paths(
            req.update_mask,
            &[
                ("display_name", !campaign.display_name.is_empty()),
                ("description", !campaign.description.is_empty()),
                ("channel", campaign.channel != 0),
                ("purpose", campaign.purpose != 0),
                ("audience", campaign.audience.is_some()),
                ("message", campaign.message.is_some()),
                ("schedule", campaign.schedule.is_some()),
                ("frequency_cap", campaign.frequency_cap.is_some()),
                ("quiet_hours", campaign.quiet_hours.is_some()),
                ("control_share", campaign.control_share != 0.0),
                ("conversion_window", campaign.conversion_window.is_some()),
            ],
        );
        let row = self.campaigns.update(&principal.user_id, &campaign, &paths).await?;
        Ok(Response::new(to_proto(&row)))
    }

    async fn delete_campaign(
        &self,
        req: Request<pb::DeleteCampaignRequest>,
    ) -> Result<Response<pb::DeleteCampaignResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.manage").await?;
        let req = req.into_inner();
        self.campaigns.delete(&principal.user_id, &req.name, &req.etag).await?;
        Ok(Response::new(pb::DeleteCampaignResponse {}))
    }

    async fn schedule_campaign(&self, req: Request<pb::ScheduleCampaignRequest>) -> Result<Response<pb::Campaign>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.manage").await?;
        let req = req.into_inner();
        let row = self.campaigns.schedule(&principal.user_id, &req.name, &req.etag).await?;
        Ok(Response::new(to_proto(&row)))
    }

    async fn pause_campaign(&self, req: Request<pb::PauseCampaignRequest>) -> Result<Response<pb::Campaign>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.manage").await?;
        let req = req.into_inner();
        let row = self.campaigns.pause(&principal.user_id, &req.name, &req.etag).await?;
        Ok(Response::new(to_proto(&row)))
    }

    async fn resume_campaign(&self, req: Request<pb::ResumeCampaignRequest>) -> Result<Response<pb::Campaign>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.manage").await?;
        let req = req.into_inner();
        let row = self.campaigns.resume(&principal.user_id, &req.name, &req.etag).await?;
        Ok(Response::new(to_proto(&row)))
    }

    async fn cancel_campaign(&self, req: Request<pb::CancelCampaignRequest>) -> Result<Response<pb::Campaign>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.manage").await?;
        let req = req.into_inner();
        let row = self.campaigns.cancel(&principal.user_id, &req.name, &req.etag).await?;
        Ok(Response::new(to_proto(&row)))
    }

    async fn render_campaign_message(
        &self,
        req: Request<pb::RenderCampaignMessageRequest>,
    ) -> Result<Response<pb::RenderedMessage>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.manage").await?;
        let req = req.into_inner();
        let row = self.campaigns.get(&req.campaign).await.map_err(|e| match e {
            Error::InvalidArgument(_) => Error::invalid("campaign", "must be a campaign name `campaigns/{campaign}`"),
            other => other,
        })?;
        let person = req
            .customer
            .strip_prefix("customers/")
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .ok_or_else(|| Error::invalid("customer", "must be `customers/{customer}`"))?;
        let rendered = self.preview.render(&row, person).await?;
        Ok(Response::new(rendered))
    }

    async fn get_campaign_stats(&self, req: Request<pb::GetCampaignStatsRequest>) -> Result<Response<pb::CampaignStats>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.read").await?;
        campaign_id(&req.get_ref().campaign, "campaign")?;
        Ok(Response::new(self.campaigns.stats(&req.get_ref().campaign).await?))
    }

    async fn list_campaign_deliveries(
        &self,
        req: Request<pb::ListCampaignDeliveriesRequest>,
    ) -> Result<Response<pb::ListCampaignDeliveriesResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.read").await?;
        let req = req.into_inner();
        let id = campaign_id(&req.campaign, "campaign")?;
        self.campaigns.get(&req.campaign).await?;
        if req.state != 0 && pb::DeliveryState::try_from(req.state).is_err() {
            return Err(Error::invalid("state", "not a delivery state").into());
        }
        let size = page_size(req.page_size, 100, 1000)?;
        let fingerprint = format!("deliveries:{id}:{}", req.state);
        let after: Option<(String, i64)> = self.after(&fingerprint, &req.page_token)?;
        let mut rows = store::list_deliveries(
            self.campaigns.db(),
            id,
            after.as_ref().map(|(p, r)| (p.as_str(), *r)),
            (req.state != 0).then_some(req.state),
            u64::from(size) + 1,
        )
        .await?;
        let next_page_token = self
            .page_tokens
            .cut(&fingerprint, &mut rows, size, |d| Some((d.key.person_id.clone(), d.key.run)))?;
        Ok(Response::new(pb::ListCampaignDeliveriesResponse {
            deliveries: rows
                .into_iter()
                .map(|d| pb::Delivery {
                    customer: format!("customers/{}", d.key.person_id),
                    run: d.key.run,
                    state: d.state,
                    skip_reason: d.skip_reason,
                    due_time: time(d.due_us),
                    send_time: d.send_us.and_then(time),
                    attempts: d.attempts,
                    provider_message_id: d.provider_id,
                    error: d.error,
                    open_time: d.open_us.and_then(time),
                    click_time: d.click_us.and_then(time),
                    unsubscribe_time: d.unsubscribe_us.and_then(time),
                    conversion_order: d.conversion_order,
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn get_attribution_report(
        &self,
        req: Request<pb::GetAttributionReportRequest>,
    ) -> Result<Response<pb::AttributionReport>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.read").await?;
        Ok(Response::new(self.campaigns.attribution(req.get_ref()).await?))
    }
}
