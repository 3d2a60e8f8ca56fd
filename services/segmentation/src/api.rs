//! The gRPC handlers: authorize, translate, call the use cases.

use chrono::Utc;
use crm_platform::{
    Error, auth,
    auth::Principal,
    authz::{Authz, Resource},
    consumer,
    mask::update_paths,
    paging::{PageTokens, page_size},
};
use crm_proto::crm::{
    events::v1::{StreamEventsRequest, StreamEventsResponse},
    segmentation::v1::{self as pb, segmentation_service_server::SegmentationService},
};
use sea_orm::DatabaseConnection;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    projection, rule,
    segments::{self, Segments, segment_id},
    store,
    tags::{self, Tags, assignment_to_proto, time, to_proto},
};

#[derive(Clone)]
pub struct Api {
    db: DatabaseConnection,
    authz: Authz,
    tags: Tags,
    segments: Segments,
    traits: crate::traits::Registry,
    page_tokens: PageTokens,
    rfm: crate::rfm::RfmConfig,
}

impl Api {
    pub fn new(
        db: DatabaseConnection,
        authz: Authz,
        tags: Tags,
        segments: Segments,
        traits: crate::traits::Registry,
        page_tokens: PageTokens,
        rfm: crate::rfm::RfmConfig,
    ) -> Self {
        Self {
            db,
            authz,
            tags,
            segments,
            traits,
            page_tokens,
            rfm,
        }
    }

    async fn check(&self, p: &Principal, permission: &str, name: &str) -> Result<(), Error> {
        self.authz.check(p, permission, Resource::named(name)).await
    }

    /// The page after `token` (for the request `fingerprint`).
    fn after(&self, fingerprint: &str, token: &str) -> Result<String, Error> {
        if token.is_empty() {
            Ok(String::new())
        } else {
            self.page_tokens.decode(fingerprint, token)
        }
    }

    /// The person a customer name (field `customer`) counts for in the projection.
    async fn person(&self, name: &str) -> Result<String, Error> {
        let id = name
            .strip_prefix("customers/")
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .ok_or_else(|| Error::invalid("customer", "must be `customers/{customer}`"))?;
        store::people_of(&self.db, &[id])
            .await?
            .remove(id)
            .ok_or_else(|| Error::NotFound {
                resource_type: "crm.customer.v1.Customer",
                name: name.to_owned(),
            })
    }
}

fn definition_to_proto(d: &crate::traits::Definition) -> pb::ComputedTraitDefinition {
    pb::ComputedTraitDefinition {
        name: format!("computedTraits/{}", d.name),
        source: pb::TraitSource::Api as i32,
        actor: d.actor.clone(),
        create_time: time(d.create_us),
        backfill_time: time(d.backfill_us),
    }
}

#[tonic::async_trait]
impl SegmentationService for Api {
    async fn get_projection_status(
        &self,
        req: Request<pb::GetProjectionStatusRequest>,
    ) -> Result<Response<pb::ProjectionStatus>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.read", "projectionStatus").await?;
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

    async fn create_tag(&self, req: Request<pb::CreateTagRequest>) -> Result<Response<pb::Tag>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.manage", "tags").await?;
        let req = req.into_inner();
        let tag = req.tag.ok_or_else(|| Error::invalid("tag", "required"))?;
        let row = self.tags.create(&principal.user_id, &req.tag_id, &tag).await?;
        Ok(Response::new(to_proto(&row)))
    }

    async fn get_tag(&self, req: Request<pb::GetTagRequest>) -> Result<Response<pb::Tag>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.read", "tags").await?;
        let id = tags::tag_id(&req.get_ref().name, "name")?;
        Ok(Response::new(to_proto(&self.tags.get(id).await?)))
    }

    async fn list_tags(&self, req: Request<pb::ListTagsRequest>) -> Result<Response<pb::ListTagsResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.read", "tags").await?;
        let req = req.into_inner();
        let parent = if req.parent.is_empty() {
            None
        } else {
            Some(tags::tag_id(&req.parent, "parent")?)
        };
        let size = page_size(req.page_size, 100, 1000)?;
        let fingerprint = format!("tags:{}", req.parent);
        let after = self.after(&fingerprint, &req.page_token)?;
        let mut rows = self.tags.list(parent, &after, u64::from(size) + 1).await?;
        let next_page_token = self.page_tokens.cut(&fingerprint, &mut rows, size, |t| t.id.clone())?;
        Ok(Response::new(pb::ListTagsResponse {
            tags: rows.iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_tag(&self, req: Request<pb::UpdateTagRequest>) -> Result<Response<pb::Tag>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.manage", "tags").await?;
        let req = req.into_inner();
        let tag = req.tag.ok_or_else(|| Error::invalid("tag", "required"))?;
        let paths = update_paths(
            req.update_mask,
            &[
                ("display_name", !tag.display_name.is_empty()),
                ("description", !tag.description.is_empty()),
            ],
        );
        let row = self.tags.update(&principal.user_id, &tag, &paths).await?;
        Ok(Response::new(to_proto(&row)))
    }

    async fn delete_tag(&self, req: Request<pb::DeleteTagRequest>) -> Result<Response<pb::DeleteTagResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.manage", "tags").await?;
        let req = req.into_inner();
        self.tags.delete(&principal.user_id, &req.name, &req.etag).await?;
        Ok(Response::new(pb::DeleteTagResponse {}))
    }

    async fn tag_customers(&self, req: Request<pb::TagCustomersRequest>) -> Result<Response<pb::TagCustomersResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.manage", "tags").await?;
        let req = req.into_inner();
        let (tagged, again) = self
            .tags
            .tag(&principal.user_id, &req.tag, &req.customers, req.expire_time.as_ref())
            .await?;
        Ok(Response::new(pb::TagCustomersResponse {
            tagged: i32::try_from(tagged).unwrap_or(i32::MAX),
            already_tagged: i32::try_from(again).unwrap_or(i32::MAX),
        }))
    }

    async fn untag_customers(
        &self,
        req: Request<pb::UntagCustomersRequest>,
    ) -> Result<Response<pb::UntagCustomersResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.manage", "tags").await?;
        let req = req.into_inner();
        let n = self.tags.untag(&principal.user_id, &req.tag, &req.customers).await?;
        Ok(Response::new(pb::UntagCustomersResponse {
            untagged: i32::try_from(n).unwrap_or(i32::MAX),
        }))
    }

    async fn list_customer_tags(
        &self,
        req: Request<pb::ListCustomerTagsRequest>,
    ) -> Result<Response<pb::ListCustomerTagsResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.read", "tags").await?;
        let found = self.tags.of_customer(&req.get_ref().customer).await?;
        Ok(Response::new(pb::ListCustomerTagsResponse {
            tags: found.iter().map(assignment_to_proto).collect(),
        }))
    }

    async fn get_customer_rfm(&self, req: Request<pb::GetCustomerRfmRequest>) -> Result<Response<pb::Rfm>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.read", "rfm").await?;
        let name = &req.get_ref().customer;
        let person = self.person(name).await?;
        let (s, compute_us) = store::rfm::get(&self.db, &person).await?.ok_or_else(|| Error::NotFound {
            resource_type: "crm.segmentation.v1.Rfm",
            name: name.clone(),
        })?;
        Ok(Response::new(pb::Rfm {
            customer: format!("customers/{person}"),
            recency_days: s.raw.recency_days,
            frequency: s.raw.frequency,
            monetary_micros: s.raw.monetary_micros,
            currency: self.rfm.currency.clone(),
            recency_score: s.recency_score,
            frequency_score: s.frequency_score,
            monetary_score: s.monetary_score,
            group: s.group as i32,
            compute_time: time(compute_us),
        }))
    }

    async fn get_rfm_summary(&self, req: Request<pb::GetRfmSummaryRequest>) -> Result<Response<pb::RfmSummary>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.read", "rfm").await?;
        let bounds = store::rfm::boundaries(&self.db).await?.unwrap_or_default();
        let groups = store::rfm::group_counts(&self.db).await?;
        Ok(Response::new(pb::RfmSummary {
            window_days: i32::try_from(self.rfm.window_days).unwrap_or(i32::MAX),
            currency: self.rfm.currency.clone(),
            population: bounds.population,
            recency_boundaries: bounds.recency.to_vec(),
            frequency_boundaries: bounds.frequency.to_vec(),
            monetary_boundaries: bounds.monetary.to_vec(),
            compute_time: time(bounds.compute_us),
            groups: groups
                .into_iter()
                .map(|(g, n)| pb::RfmGroupCount {
                    group: g as i32,
                    customers: n,
                })
                .collect(),
        }))
    }

    async fn get_customer_traits(
        &self,
        req: Request<pb::GetCustomerTraitsRequest>,
    ) -> Result<Response<pb::CustomerTraits>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.read", "traits").await?;
        let person = self.person(&req.get_ref().customer).await?;
        let traits = crate::traits::of_person(&self.db, &person).await?;
        Ok(Response::new(pb::CustomerTraits {
            customer: format!("customers/{person}"),
            traits: traits
                .into_iter()
                .map(|(name, value, at)| pb::ComputedTrait {
                    name,
                    value,
                    update_time: time(at),
                })
                .collect(),
        }))
    }

    async fn list_computed_traits(
        &self,
        req: Request<pb::ListComputedTraitsRequest>,
    ) -> Result<Response<pb::ListComputedTraitsResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.read", "computedTraits").await?;
        let declared = crate::traits::declared(&self.db).await?;
        let mut traits: Vec<pb::ComputedTraitDefinition> = self
            .traits
            .current()
            .traits
            .iter()
            .filter(|(n, _)| self.traits.is_configured(n))
            .map(|(n, _)| pb::ComputedTraitDefinition {
                name: format!("computedTraits/{n}"),
                source: pb::TraitSource::Config as i32,
                ..Default::default()
            })
            .collect();
        traits.extend(declared.into_iter().map(|d| definition_to_proto(&d)));
        Ok(Response::new(pb::ListComputedTraitsResponse { traits }))
    }

    async fn create_computed_trait(
        &self,
        req: Request<pb::CreateComputedTraitRequest>,
    ) -> Result<Response<pb::ComputedTraitDefinition>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.manage", "computedTraits").await?;
        let d = self
            .traits
            .declare(&self.db, &principal.user_id, req.get_ref().computed_trait_id.trim())
            .await?;
        Ok(Response::new(definition_to_proto(&d)))
    }

    async fn delete_computed_trait(
        &self,
        req: Request<pb::DeleteComputedTraitRequest>,
    ) -> Result<Response<pb::DeleteComputedTraitResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.manage", "computedTraits").await?;
        let name = req
            .get_ref()
            .name
            .strip_prefix("computedTraits/")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::invalid("name", "must be `computedTraits/{trait}`"))?;
        self.traits.remove(&self.db, name).await?;
        Ok(Response::new(pb::DeleteComputedTraitResponse {}))
    }

    async fn list_segment_templates(
        &self,
        req: Request<pb::ListSegmentTemplatesRequest>,
    ) -> Result<Response<pb::ListSegmentTemplatesResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.read", "segmentTemplates").await?;
        Ok(Response::new(pb::ListSegmentTemplatesResponse {
            templates: segments::TEMPLATES.iter().map(segments::template_to_proto).collect(),
        }))
    }

    async fn preview_segment(
        &self,
        req: Request<pb::PreviewSegmentRequest>,
    ) -> Result<Response<pb::PreviewSegmentResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.read", "segments").await?;
        let req = req.into_inner();
        let p = self.segments.preview(req.rule.as_ref(), &req.filter, req.sample_size).await?;
        Ok(Response::new(pb::PreviewSegmentResponse {
            count: p.count,
            sample: p.sample.iter().map(|c| format!("customers/{c}")).collect(),
            filter: rule::print(&p.rule),
            rule: Some(rule::to_proto(&p.rule)),
        }))
    }

    async fn create_segment(&self, req: Request<pb::CreateSegmentRequest>) -> Result<Response<pb::Segment>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.manage", "segments").await?;
        let req = req.into_inner();
        let segment = req.segment.ok_or_else(|| Error::invalid("segment", "required"))?;
        let row = self.segments.create(&principal.user_id, &req.segment_id, &segment).await?;
        Ok(Response::new(segments::to_proto(&row)))
    }

    async fn get_segment(&self, req: Request<pb::GetSegmentRequest>) -> Result<Response<pb::Segment>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.read", "segments").await?;
        let id = segment_id(&req.get_ref().name, "name")?;
        Ok(Response::new(segments::to_proto(&self.segments.get(id).await?)))
    }

    async fn list_segments(&self, req: Request<pb::ListSegmentsRequest>) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.read", "segments").await?;
        let req = req.into_inner();
        let size = page_size(req.page_size, 100, 1000)?;
        let after = self.after("segments", &req.page_token)?;
        let mut rows = self.segments.list(&after, u64::from(size) + 1).await?;
        let next_page_token = self.page_tokens.cut("segments", &mut rows, size, |s| s.id.clone())?;
        Ok(Response::new(pb::ListSegmentsResponse {
            segments: rows.iter().map(segments::to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_segment(&self, req: Request<pb::UpdateSegmentRequest>) -> Result<Response<pb::Segment>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.manage", "segments").await?;
        let req = req.into_inner();
        let segment = req.segment.ok_or_else(|| Error::invalid("segment", "required"))?;
        let paths = update_paths(
            req.update_mask,
            &[
                ("display_name", !segment.display_name.is_empty()),
                ("description", !segment.description.is_empty()),
                ("strategy", !segment.strategy.is_empty()),
                ("rule", segment.rule.is_some() || !segment.filter.is_empty()),
                ("tag", !segment.tag.is_empty()),
            ],
        );
        let row = self.segments.update(&principal.user_id, &segment, &paths).await?;
        Ok(Response::new(segments::to_proto(&row)))
    }

    async fn delete_segment(
        &self,
        req: Request<pb::DeleteSegmentRequest>,
    ) -> Result<Response<pb::DeleteSegmentResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.manage", "segments").await?;
        let req = req.into_inner();
        self.segments.delete(&principal.user_id, &req.name, &req.etag).await?;
        Ok(Response::new(pb::DeleteSegmentResponse {}))
    }

    async fn list_segment_versions(
        &self,
        req: Request<pb::ListSegmentVersionsRequest>,
    ) -> Result<Response<pb::ListSegmentVersionsResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.read", "segments").await?;
        let id = segment_id(&req.get_ref().segment, "segment")?;
        let versions = self.segments.versions(id).await?;
        Ok(Response::new(pb::ListSegmentVersionsResponse {
            versions: versions
                .into_iter()
                .map(|v| pb::SegmentVersion {
                    version: v.version,
                    filter: v.filter,
                    actor: v.actor,
                    create_time: time(v.create_us),
                })
                .collect(),
        }))
    }

    async fn list_segment_members(
        &self,
        req: Request<pb::ListSegmentMembersRequest>,
    ) -> Result<Response<pb::ListSegmentMembersResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.read", "segments").await?;
        let req = req.into_inner();
        let id = segment_id(&req.segment, "segment")?;
        let size = page_size(req.page_size, 100, 1000)?;
        let fingerprint = format!("members:{id}");
        let after = self.after(&fingerprint, &req.page_token)?;
        let (segment, mut rows) = self.segments.members(id, &after, u64::from(size) + 1).await?;
        let next_page_token = self.page_tokens.cut(&fingerprint, &mut rows, size, |(p, _)| p.clone())?;
        Ok(Response::new(pb::ListSegmentMembersResponse {
            members: rows
                .into_iter()
                .map(|(p, at)| pb::SegmentMember {
                    customer: format!("customers/{p}"),
                    enter_time: time(at),
                })
                .collect(),
            next_page_token,
            version: segment.evaluated_version,
        }))
    }

    async fn check_membership(
        &self,
        req: Request<pb::CheckMembershipRequest>,
    ) -> Result<Response<pb::CheckMembershipResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.read", "segments").await?;
        let id = segment_id(&req.get_ref().segment, "segment")?;
        let person = self.person(&req.get_ref().customer).await?;
        let (segment, entered) = self.segments.check(id, &person).await?;
        Ok(Response::new(pb::CheckMembershipResponse {
            member: entered.is_some(),
            enter_time: entered.and_then(time),
            customer: format!("customers/{person}"),
            version: segment.evaluated_version,
        }))
    }

    async fn list_customer_segments(
        &self,
        req: Request<pb::ListCustomerSegmentsRequest>,
    ) -> Result<Response<pb::ListCustomerSegmentsResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.read", "segments").await?;
        let person = self.person(&req.get_ref().customer).await?;
        let found = self.segments.of_person(&person).await?;
        Ok(Response::new(pb::ListCustomerSegmentsResponse {
            customer: format!("customers/{person}"),
            segments: found
                .into_iter()
                .map(|(s, at)| pb::CustomerSegment {
                    segment: format!("segments/{s}"),
                    enter_time: time(at),
                })
                .collect(),
        }))
    }

    type StreamEventsStream = ReceiverStream<Result<StreamEventsResponse, Status>>;

    async fn stream_events(&self, req: Request<StreamEventsRequest>) -> Result<Response<Self::StreamEventsStream>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "segment.events", "events").await?;
        let stream = self
            .tags
            .feed()
            .stream(&req.get_ref().after_cursor, &req.get_ref().event_types, principal.expires_at)
            .await?;
        Ok(Response::new(stream))
    }
}
