//! The `JourneyService` handlers: authorize, translate, call the use cases.

use crm_platform::{
    Error, auth,
    auth::Principal,
    authz::{Authz, Resource},
    mask::update_paths,
    paging::{PageTokens, page_size},
};
use crm_proto::crm::segmentation::v1::{self as pb, journey_service_server::JourneyService};
use tonic::{Request, Response, Status};

use super::manage::{Journeys, journey_id, to_proto};

/// The handlers.
#[derive(Clone)]
pub struct Api {
    journeys: Journeys,
    authz: Authz,
    page_tokens: PageTokens,
}

impl Api {
    pub fn new(journeys: Journeys, authz: Authz, page_tokens: PageTokens) -> Self {
        Self {
            journeys,
            authz,
            page_tokens,
        }
    }

    async fn check(&self, p: &Principal, permission: &str) -> Result<(), Error> {
        self.authz.check(p, permission, Resource::named("journeys")).await
    }
}

#[tonic::async_trait]
impl JourneyService for Api {
    async fn create_journey(&self, req: Request<pb::CreateJourneyRequest>) -> Result<Response<pb::Journey>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.manage").await?;
        let req = req.into_inner();
        let journey = req.journey.ok_or_else(|| Error::invalid("journey", "required"))?;
        let row = self.journeys.create(&principal.user_id, &req.journey_id, &journey).await?;
        Ok(Response::new(to_proto(&row)))
    }

    async fn get_journey(&self, req: Request<pb::GetJourneyRequest>) -> Result<Response<pb::Journey>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.read").await?;
        Ok(Response::new(to_proto(&self.journeys.get(&req.get_ref().name).await?)))
    }

    async fn list_journeys(&self, req: Request<pb::ListJourneysRequest>) -> Result<Response<pb::ListJourneysResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.read").await?;
        let req = req.into_inner();
        let size = page_size(req.page_size, 100, 1000)?;
        let after: String = if req.page_token.is_empty() {
            String::new()
        } else {
            self.page_tokens.decode("journeys", &req.page_token)?
        };
        let mut rows = self.journeys.list(&after, u64::from(size) + 1).await?;
        let next_page_token = self.page_tokens.cut("journeys", &mut rows, size, |j| j.id.clone())?;
        Ok(Response::new(pb::ListJourneysResponse {
            journeys: rows.iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_journey(&self, req: Request<pb::UpdateJourneyRequest>) -> Result<Response<pb::Journey>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.manage").await?;
        let req = req.into_inner();
        let journey = req.journey.ok_or_else(|| Error::invalid("journey", "required"))?;
        let paths = update_paths(
            req.update_mask,
            &[
                ("display_name", !journey.display_name.is_empty()),
                ("description", !journey.description.is_empty()),
                ("trigger", journey.trigger.is_some()),
                ("steps", !journey.steps.is_empty()),
                ("reentry", journey.reentry != 0),
                ("reentry_cooldown", journey.reentry_cooldown.is_some()),
                ("purpose", journey.purpose != 0),
                ("time_zone", !journey.time_zone.is_empty()),
            ],
        );
        let row = self.journeys.update(&principal.user_id, &journey, &paths).await?;
        Ok(Response::new(to_proto(&row)))
    }

    async fn delete_journey(
        &self,
        req: Request<pb::DeleteJourneyRequest>,
    ) -> Result<Response<pb::DeleteJourneyResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.manage").await?;
        let req = req.into_inner();
        self.journeys.delete(&principal.user_id, &req.name, &req.etag).await?;
        Ok(Response::new(pb::DeleteJourneyResponse {}))
    }

    async fn activate_journey(&self, req: Request<pb::ActivateJourneyRequest>) -> Result<Response<pb::Journey>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.manage").await?;
        let req = req.into_inner();
        let row = self.journeys.activate(&principal.user_id, &req.name, &req.etag).await?;
        Ok(Response::new(to_proto(&row)))
    }

    async fn pause_journey(&self, req: Request<pb::PauseJourneyRequest>) -> Result<Response<pb::Journey>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.manage").await?;
        let req = req.into_inner();
        let row = self.journeys.pause(&principal.user_id, &req.name, &req.etag).await?;
        Ok(Response::new(to_proto(&row)))
    }

    async fn get_journey_stats(&self, req: Request<pb::GetJourneyStatsRequest>) -> Result<Response<pb::JourneyStats>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "campaign.read").await?;
        journey_id(&req.get_ref().journey, "journey")?;
        Ok(Response::new(self.journeys.stats(&req.get_ref().journey).await?))
    }
}
