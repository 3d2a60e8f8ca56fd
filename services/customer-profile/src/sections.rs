//! Sections of the 360 view owned by other services, fetched with a deadline. A slow,
//! failing or unconfigured owner yields an unavailable section with the reason, never
//! a failed call. Tickets are read as this service's account; the analysis section is
//! asked for with the caller's own credentials, so that each owner applies its rules
//! (roles, scope) to the caller and nothing the caller may not see there shows here.

use std::time::Duration;

use crm_platform::{Platform, authz::ServiceCredentials};
use crm_proto::crm::{
    analytics::v1::{GetCustomerScoreRequest, analytics_service_client::AnalyticsServiceClient},
    customer::v1 as pb,
    segmentation::v1::{
        GetCustomerRfmRequest, GetCustomerTraitsRequest, ListCustomerSegmentsRequest, ListCustomerTagsRequest, RfmGroup,
        TagSource, segmentation_service_client::SegmentationServiceClient,
    },
    ticketing::v1::{ListCommentsRequest, ListTicketsRequest, TicketStatus, ticketing_service_client::TicketingServiceClient},
};
use tonic::{
    Code,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

use crate::{
    SERVICE, SectionsConfig,
    service::view360::{TimelineCursor, TimelineItem},
};

/// Pages of open tickets counted at most (1000 each).
const MAX_TICKET_PAGES: usize = 10;

#[derive(Debug, Clone)]
pub struct Sections {
    tickets: Option<TicketingServiceClient<Channel>>,
    segmentation: Option<SegmentationServiceClient<Channel>>,
    analytics: Option<AnalyticsServiceClient<Channel>>,
    credentials: Option<ServiceCredentials>,
    deadline: Duration,
}

/// `call`'s answer, or why there is none when `owner` takes longer than `deadline`.
async fn within<T>(
    owner: &str,
    deadline: Duration,
    call: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(deadline, call)
        .await
        .unwrap_or_else(|_| Err(format!("{owner} did not answer within {} ms", deadline.as_millis())))
}

/// One page of `ListTickets` as this service's account; the failure in words.
async fn tickets_page(
    client: &TicketingServiceClient<Channel>,
    credentials: &ServiceCredentials,
    req: ListTicketsRequest,
) -> Result<crm_proto::crm::ticketing::v1::ListTicketsResponse, String> {
    let req = credentials.request(req).map_err(|e| e.to_string())?;
    Ok(client
        .clone()
        .list_tickets(req)
        .await
        .map_err(|s| format!("ticketing answered {:?}: {}", s.code(), s.message()))?
        .into_inner())
}

/// `msg` with the caller's `authorization` and the trace context.
fn as_caller<T>(msg: T, authorization: &MetadataValue<Ascii>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", authorization.clone());
    crm_platform::telemetry::inject_context(req.metadata_mut());
    req
}

/// An owner's refusal in words.
fn refusal(owner: &str, status: &tonic::Status) -> String {
    match status.code() {
        Code::PermissionDenied => format!("{owner}: the caller may not read it there ({})", status.message()),
        code => format!("{owner} answered {code:?}: {}", status.message()),
    }
}

/// `rfm_group`'s name as the section gives it: `champions`, `at_risk`, …
fn group_name(group: i32) -> String {
    RfmGroup::try_from(group)
        .ok()
        .filter(|g| *g != RfmGroup::Unspecified)
        .map(|g| g.as_str_name().trim_start_matches("RFM_GROUP_").to_lowercase())
        .unwrap_or_default()
}

pub fn available() -> pb::SectionStatus {
    pb::SectionStatus {
        state: pb::SectionState::Available as i32,
        reason: String::new(),
    }
}

pub fn unavailable(reason: impl Into<String>) -> pb::SectionStatus {
    pb::SectionStatus {
        state: pb::SectionState::Unavailable as i32,
        reason: reason.into(),
    }
}

/// Whether the caller may read a part of the analysis section.
#[derive(Debug, Clone)]
pub enum Permit {
    Granted,
    Refused,
    /// The permissions service could not decide (why).
    Undecided(String),
}

impl Permit {
    pub fn from_decision<E: std::fmt::Display>(decision: Result<bool, E>) -> Self {
        match decision {
            Ok(true) => Self::Granted,
            Ok(false) => Self::Refused,
            Err(e) => Self::Undecided(e.to_string()),
        }
    }

    /// `Ok` when granted; else why `owner` was not asked.
    fn check(&self, owner: &str, permission: &str) -> Result<(), String> {
        match self {
            Self::Granted => Ok(()),
            Self::Refused => Err(format!("{owner}: not asked, the caller may not read it there ({permission})")),
            Self::Undecided(why) => Err(format!(
                "{owner}: not asked, whether the caller may read it is undecided ({why})"
            )),
        }
    }
}

/// Which parts of the analysis section the caller may read.
#[derive(Debug, Clone)]
pub struct AnalysisPermits {
    /// `segment.read`: RFM scores and segments.
    pub segments: Permit,
    /// `analytics.customers` on the customer: churn risk and lifetime value.
    pub predictions: Permit,
}

/// A client of the service at `url` (`None` when not configured).
fn client<T>(url: &str, ca_path: &str, deadline: Duration, new: impl Fn(Channel) -> T) -> anyhow::Result<Option<T>> {
    if url.is_empty() {
        return Ok(None);
    }
    Ok(Some(new(crm_platform::authz::client_channel(url, ca_path, deadline)?)))
}

impl Sections {
    /// Clients of the configured owners (`customer_profile.sections`).
    pub fn connect(platform: &Platform, cfg: &SectionsConfig) -> anyhow::Result<Self> {
        let deadline = Duration::from_millis(cfg.deadline_ms);
        // Each call's own limit: an export's reads get ten times the 360 view's
        // deadline, which `within` enforces on the view's calls.
        let call_limit = deadline * 10;
        let tickets = client(
            &cfg.ticketing_url,
            &cfg.ticketing_ca_path,
            call_limit,
            TicketingServiceClient::new,
        )?;
        let segmentation = client(
            &cfg.segmentation_url,
            &cfg.segmentation_ca_path,
            call_limit,
            SegmentationServiceClient::new,
        )?;
        let analytics = client(
            &cfg.analytics_url,
            &cfg.analytics_ca_path,
            call_limit,
            AnalyticsServiceClient::new,
        )?;
        // This service's own account: tickets, and what the owners hold for an export.
        let credentials = if tickets.is_some() || segmentation.is_some() || analytics.is_some() {
            Some(ServiceCredentials::from_config(&platform.config, SERVICE)?)
        } else {
            None
        };
        Ok(Self {
            tickets,
            segmentation,
            analytics,
            credentials,
            deadline,
        })
    }

    /// The analysis section of `customer` (a survivor's name), asked for with the
    /// caller's `authorization`: RFM and segments from marketing-segmentation, churn
    /// risk and lifetime value from analytics, concurrently, each part with its status.
    /// A part the caller may not read (`may`, decided beforehand without auditing) is
    /// not asked for: the owner would refuse it and audit a denial the caller never
    /// asked for.
    pub async fn analysis(
        &self,
        customer: &str,
        authorization: Option<&MetadataValue<Ascii>>,
        may: AnalysisPermits,
    ) -> pb::AnalysisSection {
        let mut section = pb::AnalysisSection::default();
        let marketing = async {
            may.segments.check("marketing-segmentation", "segment.read")?;
            self.marketing(customer, authorization).await
        };
        let predictions = async {
            may.predictions.check("analytics", "analytics.customers")?;
            self.predictions(customer, authorization).await
        };
        let (marketing, predictions) = tokio::join!(marketing, predictions);
        match marketing {
            Ok((rfm, segments)) => {
                if let Some(rfm) = rfm {
                    section.rfm_group = group_name(rfm.group);
                    section.recency_score = rfm.recency_score;
                    section.frequency_score = rfm.frequency_score;
                    section.monetary_score = rfm.monetary_score;
                }
                section.segments = segments;
                section.segmentation_status = Some(available());
            }
            Err(why) => section.segmentation_status = Some(unavailable(why)),
        }
        match predictions {
            Ok(score) => {
                section.churn_probability = score.churn_risk;
                section.churn_at_risk = score.at_risk;
                // Millionths, rounded; a value beyond i64 (never stored) saturates.
                section.clv_micros = (score.lifetime_value * 1e6).round() as i64;
                section.clv_currency = score.currency;
                section.analytics_status = Some(available());
            }
            Err(why) => section.analytics_status = Some(unavailable(why)),
        }
        section
    }

    /// RFM scores (`None`: none computed, e.g. no orders in the window) and segments.
    async fn marketing(
        &self,
        customer: &str,
        authorization: Option<&MetadataValue<Ascii>>,
    ) -> Result<(Option<crm_proto::crm::segmentation::v1::Rfm>, Vec<String>), String> {
        const OWNER: &str = "marketing-segmentation";
        let Some(client) = &self.segmentation else {
            return Err(format!(
                "no {OWNER} service is configured (customer_profile.sections.segmentation_url)"
            ));
        };
        let Some(authorization) = authorization else {
            return Err("the caller's credentials cannot be passed on".into());
        };
        let call = async {
            let (mut rfm_client, mut segments_client) = (client.clone(), client.clone());
            let rfm = rfm_client.get_customer_rfm(as_caller(
                GetCustomerRfmRequest {
                    customer: customer.to_owned(),
                },
                authorization,
            ));
            let segments = segments_client.list_customer_segments(as_caller(
                ListCustomerSegmentsRequest {
                    customer: customer.to_owned(),
                },
                authorization,
            ));
            let (rfm, segments) = tokio::join!(rfm, segments);
            let rfm = match rfm {
                Ok(r) => Some(r.into_inner()),
                // Not scored: no orders in the window, or not projected yet.
                Err(s) if s.code() == Code::NotFound => None,
                Err(s) => return Err(refusal(OWNER, &s)),
            };
            let segments = match segments {
                Ok(r) => r.into_inner().segments.into_iter().map(|s| s.segment).collect(),
                Err(s) if s.code() == Code::NotFound => {
                    return Err(format!(
                        "{OWNER}: not known there yet (its projection follows customer-profile's changes)"
                    ));
                }
                Err(s) => return Err(refusal(OWNER, &s)),
            };
            Ok((rfm, segments))
        };
        within(OWNER, self.deadline, call).await
    }

    /// The customer's score under analytics' current models.
    async fn predictions(
        &self,
        customer: &str,
        authorization: Option<&MetadataValue<Ascii>>,
    ) -> Result<crm_proto::crm::analytics::v1::CustomerScore, String> {
        const OWNER: &str = "analytics";
        let Some(client) = &self.analytics else {
            return Err(format!(
                "no {OWNER} service is configured (customer_profile.sections.analytics_url)"
            ));
        };
        let Some(authorization) = authorization else {
            return Err("the caller's credentials cannot be passed on".into());
        };
        let call = async {
            match client
                .clone()
                .get_customer_score(as_caller(
                    GetCustomerScoreRequest {
                        name: format!("{customer}/score"),
                    },
                    authorization,
                ))
                .await
            {
                Ok(r) => Ok(r.into_inner()),
                Err(s) if s.code() == Code::NotFound => Err(format!(
                    "{OWNER}: not scored yet (customers with purchases are scored at each fit of the lifetime-value model)"
                )),
                Err(s) => Err(refusal(OWNER, &s)),
            }
        };
        within(OWNER, self.deadline, call).await
    }

    /// Tickets of `customer` not yet solved or closed, or why they could not be counted.
    pub async fn open_tickets(&self, customer: &str) -> Result<i64, String> {
        let (Some(client), Some(credentials)) = (&self.tickets, &self.credentials) else {
            return Err("no ticketing service is configured (customer_profile.sections.ticketing_url)".into());
        };
        let count = async {
            let mut total = 0i64;
            let mut token = String::new();
            for _ in 0..MAX_TICKET_PAGES {
                let page = tickets_page(
                    client,
                    credentials,
                    ListTicketsRequest {
                        page_size: 1000,
                        page_token: token.clone(),
                        statuses: [
                            TicketStatus::New,
                            TicketStatus::Open,
                            TicketStatus::PendingCustomer,
                            TicketStatus::OnHold,
                        ]
                        .map(|s| s as i32)
                        .to_vec(),
                        customer: customer.to_owned(),
                        ..Default::default()
                    },
                )
                .await?;
                total += page.tickets.len() as i64;
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            Ok(total)
        };
        within("ticketing", self.deadline, count).await
    }

    /// The customer's tickets as timeline entries strictly before `before`, newest
    /// first, at most `limit`; or why they could not be read.
    pub async fn ticket_timeline(
        &self,
        customer: &str,
        before: Option<&TimelineCursor>,
        limit: usize,
    ) -> Result<Vec<TimelineItem>, String> {
        let (Some(client), Some(credentials)) = (&self.tickets, &self.credentials) else {
            return Err("no ticketing service is configured (customer_profile.sections.ticketing_url)".into());
        };
        let collect = async {
            let mut out = Vec::new();
            let mut token = String::new();
            for _ in 0..MAX_TICKET_PAGES {
                let page = tickets_page(
                    client,
                    credentials,
                    ListTicketsRequest {
                        page_size: 200,
                        page_token: token.clone(),
                        customer: customer.to_owned(),
                        ..Default::default()
                    },
                )
                .await?;
                for t in page.tickets {
                    let Some(created) = t.create_time else { continue };
                    let item = TimelineItem {
                        time_us: created.seconds * 1_000_000 + i64::from(created.nanos / 1000),
                        kind: pb::TimelineKind::Ticket,
                        summary: format!(
                            "ticket \"{}\" ({}, {})",
                            t.subject,
                            t.category,
                            TicketStatus::try_from(t.status)
                                .map_or("?", |s| s.as_str_name())
                                .trim_start_matches("TICKET_STATUS_")
                                .to_lowercase()
                        ),
                        resource: t.name,
                    };
                    if before.is_none_or(|b| &item.cursor() < b) {
                        out.push(item);
                    }
                }
                if out.len() >= limit || page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            Ok(out)
        };
        within("ticketing", self.deadline, collect).await
    }

    /// The customer's tickets with their comments, as JSON for a data export; or why
    /// they could not be read.
    pub async fn tickets_for_export(&self, customer: &str) -> Result<Vec<serde_json::Value>, String> {
        use crate::service::export::time;
        let (Some(client), Some(credentials)) = (&self.tickets, &self.credentials) else {
            return Err("no ticketing service is configured (customer_profile.sections.ticketing_url)".into());
        };
        let collect = async {
            let mut out = Vec::new();
            let mut token = String::new();
            for _ in 0..MAX_TICKET_PAGES {
                let page = tickets_page(
                    client,
                    credentials,
                    ListTicketsRequest {
                        page_size: 200,
                        page_token: token.clone(),
                        customer: customer.to_owned(),
                        ..Default::default()
                    },
                )
                .await?;
                for t in page.tickets {
                    let req = credentials
                        .request(ListCommentsRequest {
                            parent: t.name.clone(),
                            page_size: 1000,
                            page_token: String::new(),
                        })
                        .map_err(|e| e.to_string())?;
                    let comments = client
                        .clone()
                        .list_comments(req)
                        .await
                        .map_err(|s| format!("ticketing answered {:?}: {}", s.code(), s.message()))?
                        .into_inner()
                        .comments;
                    out.push(serde_json::json!({
                        "name": t.name,
                        "channel": crm_proto::crm::common::v1::Channel::try_from(t.channel).map_or("?", |c| c.as_str_name()),
                        "category": t.category,
                        "subject": t.subject,
                        "description": t.description,
                        "status": TicketStatus::try_from(t.status).map_or("?", |s| s.as_str_name()),
                        "create_time": time(t.create_time.as_ref()),
                        "solve_time": time(t.solve_time.as_ref()),
                        "comments": comments.iter().map(|c| serde_json::json!({
                            "author": c.author,
                            "internal": c.internal,
                            "body": c.body,
                            "create_time": time(c.create_time.as_ref()),
                        })).collect::<Vec<_>>(),
                    }));
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            Ok(out)
        };
        // A larger history than the 360 view reads: ten times its deadline.
        within("ticketing", self.deadline * 10, collect).await
    }
}

/// `msg` as this service's account; the failure in words.
fn as_service<T>(credentials: &ServiceCredentials, msg: T) -> Result<tonic::Request<T>, String> {
    credentials.request(msg).map_err(|e| e.to_string())
}

/// An owner's answer, `None` when it knows nothing of the customer.
fn found<T>(owner: &str, answer: Result<tonic::Response<T>, tonic::Status>) -> Result<Option<T>, String> {
    match answer {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(refusal(owner, &s)),
    }
}

impl Sections {
    /// What marketing-segmentation holds about `customer` (RFM scores, segments, tags,
    /// computed traits), read as this service's account for a data export; or why it
    /// could not be read. Nothing known there is an empty answer, not a failure.
    pub async fn marketing_for_export(&self, customer: &str) -> Result<serde_json::Value, String> {
        use crate::service::export::time;
        const OWNER: &str = "marketing-segmentation";
        let (Some(client), Some(credentials)) = (&self.segmentation, &self.credentials) else {
            return Err(format!(
                "no {OWNER} service is configured (customer_profile.sections.segmentation_url)"
            ));
        };
        let customer = customer.to_owned();
        let collect = async {
            let mut c = client.clone();
            let rfm = c
                .get_customer_rfm(as_service(
                    credentials,
                    GetCustomerRfmRequest {
                        customer: customer.clone(),
                    },
                )?)
                .await;
            let rfm = found(OWNER, rfm)?;
            let segments = c
                .list_customer_segments(as_service(
                    credentials,
                    ListCustomerSegmentsRequest {
                        customer: customer.clone(),
                    },
                )?)
                .await;
            let segments = found(OWNER, segments)?.map(|s| s.segments).unwrap_or_default();
            let tags = c
                .list_customer_tags(as_service(
                    credentials,
                    ListCustomerTagsRequest {
                        customer: customer.clone(),
                    },
                )?)
                .await;
            let tags = found(OWNER, tags)?.map(|t| t.tags).unwrap_or_default();
            let traits = c
                .get_customer_traits(as_service(
                    credentials,
                    GetCustomerTraitsRequest {
                        customer: customer.clone(),
                    },
                )?)
                .await;
            let traits = found(OWNER, traits)?.map(|t| t.traits).unwrap_or_default();
            Ok(serde_json::json!({
                "rfm": rfm.map(|r| serde_json::json!({
                    "recency_days": r.recency_days,
                    "frequency": r.frequency,
                    "monetary_micros": r.monetary_micros,
                    "currency": r.currency,
                    "recency_score": r.recency_score,
                    "frequency_score": r.frequency_score,
                    "monetary_score": r.monetary_score,
                    "group": group_name(r.group),
                    "compute_time": time(r.compute_time.as_ref()),
                })),
                "segments": segments.iter().map(|s| serde_json::json!({
                    "segment": s.segment,
                    "enter_time": time(s.enter_time.as_ref()),
                })).collect::<Vec<_>>(),
                "tags": tags.iter().map(|t| serde_json::json!({
                    "tag": t.tag,
                    // Who set it (a colleague's id) is staff data, left out.
                    "source": TagSource::try_from(t.source).map_or("?", |s| s.as_str_name()),
                    "assign_time": time(t.assign_time.as_ref()),
                })).collect::<Vec<_>>(),
                "traits": traits.iter().map(|t| serde_json::json!({
                    "name": t.name,
                    "value": t.value,
                    "update_time": time(t.update_time.as_ref()),
                })).collect::<Vec<_>>(),
            }))
        };
        // A larger read than the 360 view's: ten times its deadline.
        within(OWNER, self.deadline * 10, collect).await
    }

    /// What analytics holds about `customer` (its score: lifetime value, churn risk),
    /// read as this service's account for a data export; or why it could not be read.
    pub async fn analytics_for_export(&self, customer: &str) -> Result<serde_json::Value, String> {
        use crate::service::export::time;
        const OWNER: &str = "analytics";
        let (Some(client), Some(credentials)) = (&self.analytics, &self.credentials) else {
            return Err(format!(
                "no {OWNER} service is configured (customer_profile.sections.analytics_url)"
            ));
        };
        let collect = async {
            let request = as_service(
                credentials,
                GetCustomerScoreRequest {
                    name: format!("{customer}/score"),
                },
            )?;
            let score = found(OWNER, client.clone().get_customer_score(request).await)?;
            Ok(serde_json::json!({
                "score": score.map(|s| serde_json::json!({
                    "p_alive": s.p_alive,
                    "expected_purchases": s.expected_purchases,
                    "expected_order_value": s.expected_order_value,
                    "lifetime_value": s.lifetime_value,
                    "currency": s.currency,
                    "frequency_drop": s.frequency_drop,
                    "churn_risk": s.churn_risk,
                    "at_risk": s.at_risk,
                    "orders": s.orders,
                    "model_version": s.model_version,
                    "score_time": time(s.score_time.as_ref()),
                })),
            }))
        };
        within(OWNER, self.deadline * 10, collect).await
    }
}

/// Audit entries exported per customer at most (the newest).
const MAX_AUDIT_ENTRIES: u32 = 10_000;

/// Assembles export job `job` in the background: tickets from ticketing, segments
/// and tags from marketing-segmentation, the score from analytics, the audit trail
/// from the permissions service, the rest from this service; the job records how it
/// ended.
pub async fn run_export(
    customers: crate::service::Customers,
    sections: Sections,
    authz: crm_platform::authz::Authz,
    job: crate::store::export::JobRow,
) {
    use crate::service::export::time;
    let customer = format!("customers/{}", job.customer_id);
    let Ok(id) = crate::domain::CustomerId::parse_name(&customer, "customer") else {
        return;
    };
    let (tickets, marketing, analytics) = tokio::join!(
        sections.tickets_for_export(&customer),
        sections.marketing_for_export(&customer),
        sections.analytics_for_export(&customer)
    );
    let audit = authz
        .audit_trail(&customer, MAX_AUDIT_ENTRIES)
        .await
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "time": time(e.time.as_ref()),
                        "actor": e.actor,
                        "action": e.action,
                        "outcome": crm_proto::crm::permissions::v1::audit_entry::Outcome::try_from(e.outcome)
                            .map_or("?", |o| o.as_str_name()),
                        "fields": e.fields,
                        "source": e.source,
                    })
                })
                .collect()
        })
        .map_err(|e| e.to_string());
    if let Err(err) = customers
        .complete_export(
            &job.id,
            id,
            crate::service::export::Gathered {
                tickets,
                audit,
                marketing,
                analytics,
            },
        )
        .await
    {
        tracing::warn!(%err, job = %job.id, "export job could not be finished; it resumes at the next start");
    }
}
