//! Sections of the 360 view owned by other services, fetched with a deadline as this
//! service's account. A slow, failing or unconfigured owner yields an unavailable
//! section with the reason, never a failed call.

use std::time::Duration;

use crm_platform::{Platform, authz::ServiceCredentials};
use crm_proto::crm::{
    customer::v1 as pb,
    ticketing::v1::{ListCommentsRequest, ListTicketsRequest, TicketStatus, ticketing_service_client::TicketingServiceClient},
};
use tonic::transport::Channel;

use crate::{
    SERVICE,
    service::view360::{TimelineCursor, TimelineItem},
};

/// Pages of open tickets counted at most (1000 each).
const MAX_TICKET_PAGES: usize = 10;

#[derive(Debug, Clone)]
pub struct Sections {
    tickets: Option<TicketingServiceClient<Channel>>,
    credentials: Option<ServiceCredentials>,
    deadline: Duration,
}

/// `call`'s answer, or why there is none when ticketing takes longer than `deadline`.
async fn within<T>(deadline: Duration, call: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(deadline, call)
        .await
        .unwrap_or_else(|_| Err(format!("ticketing did not answer within {} ms", deadline.as_millis())))
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

impl Sections {
    /// Clients of the configured owners (`customer_profile.sections`).
    pub fn connect(platform: &Platform, ticketing_url: &str, ca_path: &str, deadline: Duration) -> anyhow::Result<Self> {
        if ticketing_url.is_empty() {
            return Ok(Self {
                tickets: None,
                credentials: None,
                deadline,
            });
        }
        let channel = crm_platform::authz::client_channel(ticketing_url, ca_path, deadline)?;
        Ok(Self {
            tickets: Some(TicketingServiceClient::new(channel)),
            credentials: Some(ServiceCredentials::from_config(&platform.config, SERVICE)?),
            deadline,
        })
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
        within(self.deadline, count).await
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
        within(self.deadline, collect).await
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
        within(self.deadline * 10, collect).await
    }
}

/// Audit entries exported per customer at most (the newest).
const MAX_AUDIT_ENTRIES: u32 = 10_000;

/// Assembles export job `job` in the background: tickets from ticketing, the audit
/// trail from the permissions service, the rest from this service; the job records
/// how it ended.
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
    let tickets = sections.tickets_for_export(&customer).await;
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
    if let Err(err) = customers.complete_export(&job.id, id, tickets, audit).await {
        tracing::warn!(%err, job = %job.id, "export job could not be finished; it resumes at the next start");
    }
}
