//! `GetCustomer360`: the four layers in one call, the sections fetched concurrently;
//! a section whose owner fails is marked unavailable, the call still answers.

use crm_platform::{Error, FieldViolation, auth, authz::Resource};
use crm_proto::crm::customer::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{Api, Purpose};
use crate::{
    domain::CustomerId,
    sections::{AnalysisPermits, Permit, available, unavailable},
    service::view360::{TimelineCursor, merge_page},
};

const SECTIONS: [&str; 4] = ["basic", "business", "behaviour", "analysis"];

fn not_requested() -> Option<pb::SectionStatus> {
    Some(pb::SectionStatus {
        state: pb::SectionState::NotRequested as i32,
        reason: String::new(),
    })
}

impl Api {
    pub(super) async fn get_customer360_call(
        &self,
        req: Request<pb::GetCustomer360Request>,
    ) -> Result<Response<pb::Customer360>, Status> {
        let principal = auth::principal(&req)?;
        // Passed on to the analysis section's owners, who apply their rules to the caller.
        let authorization = req.metadata().get("authorization").cloned();
        let req = req.into_inner();
        let id = CustomerId::parse_name(&req.name, "name")?;
        let paths = req.read_mask.map(|m| m.paths).unwrap_or_default();
        let bad: Vec<FieldViolation> = paths
            .iter()
            .enumerate()
            .filter(|(_, p)| !SECTIONS.contains(&p.as_str()))
            .map(|(i, p)| {
                FieldViolation::new(
                    format!("read_mask.paths[{i}]"),
                    format!("`{p}` is not one of {}", SECTIONS.join(", ")),
                )
            })
            .collect();
        if !bad.is_empty() {
            return Err(Error::InvalidArgument(bad).into());
        }
        let wants = |s: &str| paths.is_empty() || paths.iter().any(|p| p == s);
        let customer = self.load_for(&principal, "customer.read", id).await?;
        let family = self.customers.merged_family(&customer).await?;
        let name = customer.name();
        let mut view = pb::Customer360 {
            name: name.clone(),
            basic_status: not_requested(),
            business_status: not_requested(),
            behaviour_status: not_requested(),
            analysis_status: not_requested(),
            ..Default::default()
        };
        if wants("basic") {
            view.basic = Some(self.present_one(&principal, &customer, Purpose::Read).await?);
            view.basic_status = Some(available());
        }
        let now = chrono::Utc::now();
        let business = async {
            if !wants("business") {
                return None;
            }
            let (summary, tickets) = tokio::join!(
                self.customers.business_summary(&family),
                self.sections
                    .open_tickets(&name)
                    .instrument(tracing::info_span!("section.open_tickets"))
            );
            Some(summary.map(|mut s| {
                match tickets {
                    Ok(n) => {
                        s.open_tickets = n;
                        s.tickets = Some(available());
                    }
                    Err(why) => s.tickets = Some(unavailable(why)),
                }
                s
            }))
        };
        let behaviour = async {
            if !wants("behaviour") {
                return None;
            }
            Some(
                self.customers
                    .behaviour_summary(&family, self.behaviour_window_days, now)
                    .await,
            )
        };
        let analysis = async {
            if !wants("analysis") {
                return None;
            }
            // As the owners decide (the same decision point), without auditing.
            let (rfm, segments, predictions) = tokio::join!(
                self.authz.allows(&principal, "segment.read", Resource::named("rfm")),
                self.authz.allows(&principal, "segment.read", Resource::named("segments")),
                self.authz.allows(
                    &principal,
                    "analytics.customers",
                    Resource::record(&name, &customer.profile.owner_user_id, &customer.profile.team_id)
                )
            );
            let may = AnalysisPermits {
                // Both reads, RFM and segments, or neither.
                segments: Permit::from_decision(rfm.and_then(|r| segments.map(|s| r && s))),
                predictions: Permit::from_decision(predictions),
            };
            Some(
                self.sections
                    .analysis(&name, authorization.as_ref(), may)
                    .instrument(tracing::info_span!("section.analysis"))
                    .await,
            )
        };
        let (business, behaviour, analysis) = tokio::join!(business, behaviour, analysis);
        match business {
            Some(Ok(b)) => {
                view.business = Some(b);
                view.business_status = Some(available());
            }
            Some(Err(e)) => {
                tracing::warn!(%e, "360: business section failed");
                view.business_status = Some(unavailable("orders could not be read now"));
            }
            None => {}
        }
        match behaviour {
            Some(Ok(b)) => {
                view.behaviour = Some(b);
                view.behaviour_status = Some(available());
            }
            Some(Err(e)) => {
                tracing::warn!(%e, "360: behaviour section failed");
                view.behaviour_status = Some(unavailable("interactions could not be read now"));
            }
            None => {}
        }
        if let Some(analysis) = analysis {
            // Available when either part is; the parts' statuses say which.
            let parts = [&analysis.segmentation_status, &analysis.analytics_status];
            let reasons: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.as_ref().filter(|p| p.state != pb::SectionState::Available as i32))
                .map(|p| p.reason.as_str())
                .collect();
            view.analysis_status = Some(if reasons.len() == parts.len() {
                unavailable(reasons.join("; "))
            } else {
                available()
            });
            view.analysis = Some(analysis);
        }
        Ok(Response::new(view))
    }

    pub(super) async fn list_timeline_call(
        &self,
        req: Request<pb::ListTimelineRequest>,
    ) -> Result<Response<pb::ListTimelineResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let id = CustomerId::parse_name(&req.parent, "parent")?;
        let customer = self.load_for(&principal, "customer.read", id).await?;
        let family = self.customers.merged_family(&customer).await?;
        let kinds_key = req.kinds.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        let fingerprint = crm_platform::paging::fingerprint(&["timeline", &req.parent, &kinds_key]);
        let mut v = crm_platform::error::Validation::default();
        let size = v.check(crm_platform::paging::page_size(req.page_size, 50, 500));
        let before = v.check(if req.page_token.is_empty() {
            Ok(None)
        } else {
            self.page_tokens
                .decode::<TimelineCursor>(&fingerprint, &req.page_token)
                .map(Some)
        });
        let kinds = v.check(
            req.kinds
                .iter()
                .enumerate()
                .map(|(i, k)| match pb::TimelineKind::try_from(*k) {
                    Ok(k) if k != pb::TimelineKind::Unspecified => Ok(k),
                    _ => Err(Error::invalid(format!("kinds[{i}]"), "unknown kind")),
                })
                .collect::<Result<Vec<_>, Error>>(),
        );
        let ((size, before), kinds) = v.finish(size.zip(before).zip(kinds))?;
        let limit = size as usize + 1;
        let name = customer.name();
        let wants_tickets = kinds.is_empty() || kinds.contains(&pb::TimelineKind::Ticket);
        let (local, tickets) = tokio::join!(
            self.customers.timeline(customer.id, &family, &kinds, before.as_ref(), limit),
            async {
                if wants_tickets {
                    Some(
                        self.sections
                            .ticket_timeline(&name, before.as_ref(), limit)
                            .instrument(tracing::info_span!("section.tickets"))
                            .await,
                    )
                } else {
                    None
                }
            }
        );
        let mut items = local?;
        let tickets_status = match tickets {
            None => not_requested(),
            Some(Ok(t)) => {
                items.extend(t);
                Some(available())
            }
            Some(Err(why)) => Some(unavailable(why)),
        };
        let mut page = merge_page(items, before.as_ref(), limit);
        let next_page_token = self.page_tokens.cut(&fingerprint, &mut page, size, |last| last.cursor())?;
        Ok(Response::new(pb::ListTimelineResponse {
            entries: page.iter().map(|i| i.to_proto()).collect(),
            next_page_token,
            tickets: tickets_status,
        }))
    }
}
