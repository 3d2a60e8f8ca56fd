//! gRPC handlers: decode the request, authorize, call the use case, encode the answer.
//!
//! Staff are authorized by the permissions service on each ticket as a record: its
//! owner is the assigned agent's user and its team the queue's team. A customer's
//! self-service token reaches the tickets of its own customer only
//! (`customers/{customer}/tickets`), sees public comments only, and never the
//! routing, SLA or configuration.

mod config;
mod kb;

use chrono::Utc;
use crm_platform::{
    Error,
    auth::{self, Principal},
    authz::{Authz, Resource},
    error::Validation,
    idempotency,
    paging::{self, PageTokens},
};
use crm_proto::crm::{
    events::v1::{StreamEventsRequest, StreamEventsResponse},
    ticketing::v1::{self as pb, ticketing_service_server::TicketingService},
};
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    customers::{CustomerTiers, Tier},
    service::{AuthorType, NewComment, Ticketing, config::status, micros_of, update_paths},
    store::{TicketFilter, TicketScope},
};

/// The ticket collection, as permission checks name it.
pub const COLLECTION: &str = "tickets";

const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 1000;

#[derive(Debug, Clone)]
pub struct Api {
    ticketing: Ticketing,
    authz: Authz,
    page_tokens: PageTokens,
    tiers: Option<CustomerTiers>,
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, Error> {
    value.ok_or_else(|| Error::invalid(field, "required"))
}

/// The user id of `agents/{user}`.
fn agent_user(assignee: &str) -> &str {
    assignee.strip_prefix("agents/").unwrap_or("")
}

/// What a customer sees of their ticket: no routing reasons, SLA policy, queue,
/// internal tags or custom fields.
fn customer_view(mut t: pb::Ticket) -> pb::Ticket {
    t.routing = None;
    t.sla_policy.clear();
    t.queue.clear();
    t.tags.clear();
    t.custom_fields.clear();
    t
}

fn denied(permission: &str, resource: &str) -> Error {
    Error::PermissionDenied {
        permission: permission.to_owned(),
        resource: resource.to_owned(),
    }
}

/// A page of `items` (read one past `size`) and the token of its last item.
fn page<T, P: serde::Serialize>(
    tokens: &PageTokens,
    fingerprint: &str,
    mut items: Vec<T>,
    size: u32,
    position: impl Fn(&T) -> P,
) -> Result<(Vec<T>, String), Error> {
    let next = tokens.cut(fingerprint, &mut items, size, position)?;
    Ok((items, next))
}

/// The page size and decoded position of a list request, every problem reported.
fn paging_of<P: serde::de::DeserializeOwned>(
    tokens: &PageTokens,
    fingerprint: &str,
    page_size: i32,
    page_token: &str,
    default: u32,
) -> Result<(u32, Option<P>), Error> {
    let mut v = Validation::default();
    let size = v.check(paging::page_size(page_size, default, MAX_PAGE_SIZE));
    let after = v.check(if page_token.is_empty() {
        Ok(None)
    } else {
        tokens.decode::<P>(fingerprint, page_token).map(Some)
    });
    v.finish(size.zip(after))
}

/// A ticket use case's violations as request fields: `ticket.…`, except the
/// request's own `request_id`.
fn in_ticket(e: Error) -> Error {
    match e {
        Error::InvalidArgument(v) if v.iter().any(|f| f.field == "request_id") => Error::InvalidArgument(v),
        e => e.in_field("ticket"),
    }
}

impl Api {
    pub fn new(ticketing: Ticketing, authz: Authz, page_tokens: PageTokens, tiers: Option<CustomerTiers>) -> Self {
        Self {
            ticketing,
            authz,
            page_tokens,
            tiers,
        }
    }

    /// Fills a ticket's missing tier from customer-profile; returns the note for its
    /// history (what was found, or why nothing could be).
    async fn look_up_tier(&self, ticket: &mut pb::Ticket) -> Option<String> {
        let tiers = self.tiers.as_ref()?;
        if !ticket.customer_tier.is_empty() || !ticket.customer.starts_with("customers/") {
            return None;
        }
        match tiers.tier(&ticket.customer).await {
            Tier::Found(t) => {
                let note = format!("customer tier {t} from customer-profile");
                ticket.customer_tier = t;
                Some(note)
            }
            Tier::None => None,
            Tier::Unknown(why) => Some(format!("customer tier unknown: {why}")),
        }
    }

    async fn check(&self, p: &Principal, permission: &str, name: &str) -> Result<(), Error> {
        self.authz.check(p, permission, Resource::named(name)).await
    }

    /// `permission` on a stored ticket: for staff the record (owner: the assigned
    /// agent, team: the queue's team); for a customer, their own tickets.
    async fn check_ticket(&self, p: &Principal, permission: &str, t: &pb::Ticket) -> Result<(), Error> {
        if p.customer_id.is_some() {
            return self.check(p, permission, &format!("{}/tickets", t.customer)).await;
        }
        let dir = self.ticketing.directory(self.ticketing.db()).await?;
        self.authz
            .check(
                p,
                permission,
                Resource::record(&t.name, agent_user(&t.assignee), dir.queue_team(&t.queue)),
            )
            .await
    }

    /// Loads a ticket the caller may act on. A caller who may read no ticket at all
    /// learns nothing, not even whether it exists.
    async fn load_for(&self, p: &Principal, permission: &str, name: &str) -> Result<pb::Ticket, Error> {
        if p.customer_id.is_none() {
            self.check(p, "ticket.read", COLLECTION).await?;
        }
        let t = self.ticketing.get_ticket(name).await?;
        if let Some(own) = &p.customer_id
            && t.customer != format!("customers/{own}")
        {
            // Not the customer's: answered as if it did not exist.
            return Err(Error::NotFound {
                resource_type: "ticket",
                name: name.to_owned(),
            });
        }
        self.check_ticket(p, permission, &t).await?;
        Ok(t)
    }

    fn staff_only(p: &Principal, permission: &str) -> Result<(), Error> {
        if p.customer_id.is_some() {
            return Err(denied(permission, "self-service tokens cannot do this"));
        }
        Ok(())
    }

    fn present(p: &Principal, t: pb::Ticket) -> pb::Ticket {
        if p.customer_id.is_some() { customer_view(t) } else { t }
    }

    /// The read scope of a staff caller as a ticket filter (`None`: everything).
    async fn ticket_scope(&self, p: &Principal) -> Result<Option<TicketScope>, Error> {
        let scope = self.authz.read_scope(p, "ticket.read").await?;
        if scope.all {
            return Ok(None);
        }
        let dir = self.ticketing.directory(self.ticketing.db()).await?;
        Ok(Some(TicketScope {
            assignees: scope.owner_user_ids.iter().map(|u| format!("agents/{u}")).collect(),
            queues: dir.queues_of_teams(&scope.team_ids),
            ids: scope
                .resources
                .iter()
                .filter_map(|r| r.strip_prefix("tickets/"))
                .map(str::to_owned)
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl TicketingService for Api {
    async fn create_ticket(&self, req: Request<pb::CreateTicketRequest>) -> Result<Response<pb::Ticket>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let key = idempotency::Key::new("CreateTicket", &principal.user_id, &req.request_id, &req.encode_to_vec())?;
        let mut ticket = required(req.ticket, "ticket")?;
        if let Some(own) = &principal.customer_id {
            let mut bad = Vec::new();
            for (field, set) in [
                ("ticket.assignee", !ticket.assignee.is_empty()),
                ("ticket.queue", !ticket.queue.is_empty()),
                ("ticket.customer_tier", !ticket.customer_tier.is_empty()),
                ("ticket.priority", ticket.priority != 0),
                ("ticket.status", ticket.status != 0),
                ("ticket.tags", !ticket.tags.is_empty()),
                ("ticket.custom_fields", !ticket.custom_fields.is_empty()),
            ] {
                if set {
                    bad.push(crm_platform::FieldViolation::new(field, "set by staff, not by the customer"));
                }
            }
            if !bad.is_empty() {
                return Err(Error::InvalidArgument(bad).into());
            }
            if ticket.customer != format!("customers/{own}") {
                return Err(denied("ticket.create", "a customer raises tickets for itself only").into());
            }
            self.check(&principal, "ticket.create", &format!("{}/tickets", ticket.customer))
                .await?;
        } else {
            self.check(&principal, "ticket.create", COLLECTION).await?;
            if !ticket.assignee.is_empty() && agent_user(&ticket.assignee) != principal.user_id {
                self.check(&principal, "ticket.assign", COLLECTION).await?;
            }
        }
        let tier_note = self.look_up_tier(&mut ticket).await;
        let created = self
            .ticketing
            .create_ticket_once(&principal.user_id, ticket, key, tier_note, Utc::now())
            .await
            .map_err(in_ticket)?;
        Ok(Response::new(Self::present(&principal, created)))
    }

    async fn get_ticket(&self, req: Request<pb::GetTicketRequest>) -> Result<Response<pb::Ticket>, Status> {
        let principal = auth::principal(&req)?;
        let t = self.load_for(&principal, "ticket.read", &req.get_ref().name).await?;
        Ok(Response::new(Self::present(&principal, t)))
    }

    async fn list_tickets(&self, req: Request<pb::ListTicketsRequest>) -> Result<Response<pb::ListTicketsResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let mut customer = (!req.customer.is_empty()).then(|| req.customer.clone());
        let scope = match &principal.customer_id {
            Some(own) => {
                let mine = format!("customers/{own}");
                if customer.as_ref().is_some_and(|c| *c != mine) {
                    return Err(denied("ticket.read", "a customer lists its own tickets only").into());
                }
                self.check(&principal, "ticket.read", &format!("{mine}/tickets")).await?;
                customer = Some(mine);
                None
            }
            None => {
                self.check(&principal, "ticket.read", COLLECTION).await?;
                self.ticket_scope(&principal).await?
            }
        };
        let mut bad = Vec::new();
        let mut statuses = Vec::new();
        for (i, s) in req.statuses.iter().enumerate() {
            match status(*s) {
                Some(_) => statuses.push(*s),
                None => bad.push(crm_platform::FieldViolation::new(format!("statuses[{i}]"), "unknown status")),
            }
        }
        if !bad.is_empty() {
            return Err(Error::InvalidArgument(bad).into());
        }
        let statuses_key = statuses.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        let fingerprint = paging::fingerprint(&[
            "tickets",
            &statuses_key,
            &req.queue,
            &req.assignee,
            customer.as_deref().unwrap_or(""),
            &req.category,
        ]);
        let (size, after) = paging_of::<(i64, String)>(
            &self.page_tokens,
            &fingerprint,
            req.page_size,
            &req.page_token,
            DEFAULT_PAGE_SIZE,
        )?;
        let filter = TicketFilter {
            statuses,
            queue: (!req.queue.is_empty()).then_some(req.queue),
            assignee: match req.assignee.as_str() {
                "" => None,
                "-" => Some(String::new()),
                a => Some(a.to_owned()),
            },
            customer,
            category: (!req.category.is_empty()).then_some(req.category),
            scope,
        };
        let tickets = self
            .ticketing
            .list_tickets(&filter, after.as_ref(), u64::from(size) + 1)
            .await?;
        let (tickets, next_page_token) = page(&self.page_tokens, &fingerprint, tickets, size, |t: &pb::Ticket| {
            (
                micros_of(t.create_time.as_ref()),
                t.name.trim_start_matches("tickets/").to_owned(),
            )
        })?;
        Ok(Response::new(pb::ListTicketsResponse {
            tickets: tickets.into_iter().map(|t| Self::present(&principal, t)).collect(),
            next_page_token,
        }))
    }

    async fn update_ticket(&self, req: Request<pb::UpdateTicketRequest>) -> Result<Response<pb::Ticket>, Status> {
        let principal = auth::principal(&req)?;
        Self::staff_only(&principal, "ticket.update")?;
        let req = req.into_inner();
        let patch = required(req.ticket, "ticket")?;
        let current = self.load_for(&principal, "ticket.update", &patch.name).await?;
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let paths = update_paths(&mask, &patch)?;
        let reassigns = paths
            .iter()
            .any(|p| (p == "assignee" && patch.assignee != current.assignee) || (p == "queue" && patch.queue != current.queue));
        if reassigns {
            self.check_ticket(&principal, "ticket.assign", &current).await?;
        }
        let updated = self
            .ticketing
            .update_ticket(&principal.user_id, patch, &paths, Utc::now())
            .await
            .map_err(|e| e.in_field("ticket"))?;
        Ok(Response::new(updated))
    }

    async fn route_ticket(&self, req: Request<pb::RouteTicketRequest>) -> Result<Response<pb::Ticket>, Status> {
        let principal = auth::principal(&req)?;
        Self::staff_only(&principal, "ticket.assign")?;
        let req = req.into_inner();
        self.load_for(&principal, "ticket.assign", &req.name).await?;
        let routed = self
            .ticketing
            .reroute(&principal.user_id, &req.name, &req.etag, Utc::now())
            .await?;
        Ok(Response::new(routed))
    }

    async fn create_comment(&self, req: Request<pb::CreateCommentRequest>) -> Result<Response<pb::Comment>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let key = idempotency::Key::new("CreateComment", &principal.user_id, &req.request_id, &req.encode_to_vec())?;
        let customer = principal.customer_id.is_some();
        let permission = if customer { "ticket.comment" } else { "ticket.update" };
        let ticket = self.load_for(&principal, permission, &req.parent).await?;
        let comment = required(req.comment, "comment")?;
        let new = NewComment {
            author: if customer {
                ticket.customer.clone()
            } else {
                principal.user_id.clone()
            },
            author_type: if customer { AuthorType::Customer } else { AuthorType::Agent },
            internal: comment.internal,
            body: comment.body,
            attachments: comment.attachments,
        };
        let saved = self.ticketing.add_comment_once(&req.parent, new, key, Utc::now()).await?;
        Ok(Response::new(saved))
    }

    async fn list_comments(&self, req: Request<pb::ListCommentsRequest>) -> Result<Response<pb::ListCommentsResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        self.load_for(&principal, "ticket.read", &req.parent).await?;
        let public_only = principal.customer_id.is_some();
        let fingerprint = paging::fingerprint(&["comments", &req.parent, if public_only { "public" } else { "" }]);
        let (size, after) = paging_of::<i64>(
            &self.page_tokens,
            &fingerprint,
            req.page_size,
            &req.page_token,
            DEFAULT_PAGE_SIZE,
        )?;
        let found = self
            .ticketing
            .comments(&req.parent, after.unwrap_or(0), u64::from(size) + 1, public_only)
            .await?;
        let (found, next_page_token) = page(&self.page_tokens, &fingerprint, found, size, |(seq, _)| *seq)?;
        Ok(Response::new(pb::ListCommentsResponse {
            comments: found.into_iter().map(|(_, c)| c).collect(),
            next_page_token,
        }))
    }

    async fn list_ticket_history(
        &self,
        req: Request<pb::ListTicketHistoryRequest>,
    ) -> Result<Response<pb::ListTicketHistoryResponse>, Status> {
        let principal = auth::principal(&req)?;
        Self::staff_only(&principal, "ticket.read")?;
        let req = req.into_inner();
        self.load_for(&principal, "ticket.read", &req.parent).await?;
        let fingerprint = paging::fingerprint(&["history", &req.parent]);
        let (size, after) = paging_of::<i64>(&self.page_tokens, &fingerprint, req.page_size, &req.page_token, 100)?;
        let found = self
            .ticketing
            .history(&req.parent, after.unwrap_or(0), u64::from(size) + 1)
            .await?;
        let (found, next_page_token) = page(&self.page_tokens, &fingerprint, found, size, |(seq, _)| *seq)?;
        Ok(Response::new(pb::ListTicketHistoryResponse {
            entries: found.into_iter().map(|(_, e)| e).collect(),
            next_page_token,
        }))
    }

    async fn get_sla_status(&self, req: Request<pb::GetSlaStatusRequest>) -> Result<Response<pb::SlaStatus>, Status> {
        let principal = auth::principal(&req)?;
        Self::staff_only(&principal, "ticket.read")?;
        let name = &req.get_ref().ticket;
        self.load_for(&principal, "ticket.read", name)
            .await
            .map_err(|e| e.in_field("ticket"))?;
        Ok(Response::new(self.ticketing.sla_status(name, Utc::now()).await?))
    }

    async fn create_agent(&self, req: Request<pb::CreateAgentRequest>) -> Result<Response<pb::Agent>, Status> {
        let principal = auth::principal(&req)?;
        let created = self.create_config(&principal, req.into_inner().agent, "agent").await?;
        Ok(Response::new(created))
    }

    async fn get_agent(&self, req: Request<pb::GetAgentRequest>) -> Result<Response<pb::Agent>, Status> {
        let principal = auth::principal(&req)?;
        let found: pb::Agent = self.get_config(&principal, &req.get_ref().name).await?;
        let found = self.with_loads(vec![found]).await?.remove(0);
        Ok(Response::new(found))
    }

    async fn list_agents(&self, req: Request<pb::ListAgentsRequest>) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.get_ref();
        let (items, next_page_token) = self.list_config(&principal, req.page_size, &req.page_token).await?;
        let items = self.with_loads(items).await?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: items,
            next_page_token,
        }))
    }

    async fn update_agent(&self, req: Request<pb::UpdateAgentRequest>) -> Result<Response<pb::Agent>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let updated = self.update_config(&principal, req.agent, req.update_mask, "agent").await?;
        Ok(Response::new(updated))
    }

    async fn delete_agent(&self, req: Request<pb::DeleteAgentRequest>) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.get_ref();
        self.delete_config::<pb::Agent>(&principal, &req.name, &req.etag).await?;
        Ok(Response::new(pb::DeleteAgentResponse {}))
    }

    async fn create_queue(&self, req: Request<pb::CreateQueueRequest>) -> Result<Response<pb::Queue>, Status> {
        let principal = auth::principal(&req)?;
        let created = self.create_config(&principal, req.into_inner().queue, "queue").await?;
        Ok(Response::new(created))
    }

    async fn get_queue(&self, req: Request<pb::GetQueueRequest>) -> Result<Response<pb::Queue>, Status> {
        let principal = auth::principal(&req)?;
        let found: pb::Queue = self.get_config(&principal, &req.get_ref().name).await?;

        Ok(Response::new(found))
    }

    async fn list_queues(&self, req: Request<pb::ListQueuesRequest>) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.get_ref();
        let (items, next_page_token) = self.list_config(&principal, req.page_size, &req.page_token).await?;
        Ok(Response::new(pb::ListQueuesResponse {
            queues: items,
            next_page_token,
        }))
    }

    async fn update_queue(&self, req: Request<pb::UpdateQueueRequest>) -> Result<Response<pb::Queue>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let updated = self.update_config(&principal, req.queue, req.update_mask, "queue").await?;
        Ok(Response::new(updated))
    }

    async fn delete_queue(&self, req: Request<pb::DeleteQueueRequest>) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.get_ref();
        self.delete_config::<pb::Queue>(&principal, &req.name, &req.etag).await?;
        Ok(Response::new(pb::DeleteQueueResponse {}))
    }

    async fn create_routing_rule(&self, req: Request<pb::CreateRoutingRuleRequest>) -> Result<Response<pb::RoutingRule>, Status> {
        let principal = auth::principal(&req)?;
        let created = self
            .create_config(&principal, req.into_inner().routing_rule, "routing_rule")
            .await?;
        Ok(Response::new(created))
    }

    async fn get_routing_rule(&self, req: Request<pb::GetRoutingRuleRequest>) -> Result<Response<pb::RoutingRule>, Status> {
        let principal = auth::principal(&req)?;
        let found: pb::RoutingRule = self.get_config(&principal, &req.get_ref().name).await?;

        Ok(Response::new(found))
    }

    async fn list_routing_rules(
        &self,
        req: Request<pb::ListRoutingRulesRequest>,
    ) -> Result<Response<pb::ListRoutingRulesResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.get_ref();
        let (items, next_page_token) = self.list_config(&principal, req.page_size, &req.page_token).await?;
        Ok(Response::new(pb::ListRoutingRulesResponse {
            routing_rules: items,
            next_page_token,
        }))
    }

    async fn update_routing_rule(&self, req: Request<pb::UpdateRoutingRuleRequest>) -> Result<Response<pb::RoutingRule>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let updated = self
            .update_config(&principal, req.routing_rule, req.update_mask, "routing_rule")
            .await?;
        Ok(Response::new(updated))
    }

    async fn delete_routing_rule(
        &self,
        req: Request<pb::DeleteRoutingRuleRequest>,
    ) -> Result<Response<pb::DeleteRoutingRuleResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.get_ref();
        self.delete_config::<pb::RoutingRule>(&principal, &req.name, &req.etag)
            .await?;
        Ok(Response::new(pb::DeleteRoutingRuleResponse {}))
    }

    async fn create_calendar(&self, req: Request<pb::CreateCalendarRequest>) -> Result<Response<pb::Calendar>, Status> {
        let principal = auth::principal(&req)?;
        let created = self.create_config(&principal, req.into_inner().calendar, "calendar").await?;
        Ok(Response::new(created))
    }

    async fn get_calendar(&self, req: Request<pb::GetCalendarRequest>) -> Result<Response<pb::Calendar>, Status> {
        let principal = auth::principal(&req)?;
        let found: pb::Calendar = self.get_config(&principal, &req.get_ref().name).await?;

        Ok(Response::new(found))
    }

    async fn list_calendars(
        &self,
        req: Request<pb::ListCalendarsRequest>,
    ) -> Result<Response<pb::ListCalendarsResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.get_ref();
        let (items, next_page_token) = self.list_config(&principal, req.page_size, &req.page_token).await?;
        Ok(Response::new(pb::ListCalendarsResponse {
            calendars: items,
            next_page_token,
        }))
    }

    async fn update_calendar(&self, req: Request<pb::UpdateCalendarRequest>) -> Result<Response<pb::Calendar>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let updated = self
            .update_config(&principal, req.calendar, req.update_mask, "calendar")
            .await?;
        Ok(Response::new(updated))
    }

    async fn delete_calendar(
        &self,
        req: Request<pb::DeleteCalendarRequest>,
    ) -> Result<Response<pb::DeleteCalendarResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.get_ref();
        self.delete_config::<pb::Calendar>(&principal, &req.name, &req.etag).await?;
        Ok(Response::new(pb::DeleteCalendarResponse {}))
    }

    async fn create_sla_policy(&self, req: Request<pb::CreateSlaPolicyRequest>) -> Result<Response<pb::SlaPolicy>, Status> {
        let principal = auth::principal(&req)?;
        let created = self
            .create_config(&principal, req.into_inner().sla_policy, "sla_policy")
            .await?;
        Ok(Response::new(created))
    }

    async fn get_sla_policy(&self, req: Request<pb::GetSlaPolicyRequest>) -> Result<Response<pb::SlaPolicy>, Status> {
        let principal = auth::principal(&req)?;
        let found: pb::SlaPolicy = self.get_config(&principal, &req.get_ref().name).await?;

        Ok(Response::new(found))
    }

    async fn list_sla_policies(
        &self,
        req: Request<pb::ListSlaPoliciesRequest>,
    ) -> Result<Response<pb::ListSlaPoliciesResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.get_ref();
        let (items, next_page_token) = self.list_config(&principal, req.page_size, &req.page_token).await?;
        Ok(Response::new(pb::ListSlaPoliciesResponse {
            sla_policies: items,
            next_page_token,
        }))
    }

    async fn update_sla_policy(&self, req: Request<pb::UpdateSlaPolicyRequest>) -> Result<Response<pb::SlaPolicy>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let updated = self
            .update_config(&principal, req.sla_policy, req.update_mask, "sla_policy")
            .await?;
        Ok(Response::new(updated))
    }

    async fn delete_sla_policy(
        &self,
        req: Request<pb::DeleteSlaPolicyRequest>,
    ) -> Result<Response<pb::DeleteSlaPolicyResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.get_ref();
        self.delete_config::<pb::SlaPolicy>(&principal, &req.name, &req.etag).await?;
        Ok(Response::new(pb::DeleteSlaPolicyResponse {}))
    }

    async fn create_escalation_policy(
        &self,
        req: Request<pb::CreateEscalationPolicyRequest>,
    ) -> Result<Response<pb::EscalationPolicy>, Status> {
        let principal = auth::principal(&req)?;
        let created = self
            .create_config(&principal, req.into_inner().escalation_policy, "escalation_policy")
            .await?;
        Ok(Response::new(created))
    }

    async fn get_escalation_policy(
        &self,
        req: Request<pb::GetEscalationPolicyRequest>,
    ) -> Result<Response<pb::EscalationPolicy>, Status> {
        let principal = auth::principal(&req)?;
        let found: pb::EscalationPolicy = self.get_config(&principal, &req.get_ref().name).await?;

        Ok(Response::new(found))
    }

    async fn list_escalation_policies(
        &self,
        req: Request<pb::ListEscalationPoliciesRequest>,
    ) -> Result<Response<pb::ListEscalationPoliciesResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.get_ref();
        let (items, next_page_token) = self.list_config(&principal, req.page_size, &req.page_token).await?;
        Ok(Response::new(pb::ListEscalationPoliciesResponse {
            escalation_policies: items,
            next_page_token,
        }))
    }

    async fn update_escalation_policy(
        &self,
        req: Request<pb::UpdateEscalationPolicyRequest>,
    ) -> Result<Response<pb::EscalationPolicy>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let updated = self
            .update_config(&principal, req.escalation_policy, req.update_mask, "escalation_policy")
            .await?;
        Ok(Response::new(updated))
    }

    async fn delete_escalation_policy(
        &self,
        req: Request<pb::DeleteEscalationPolicyRequest>,
    ) -> Result<Response<pb::DeleteEscalationPolicyResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.get_ref();
        self.delete_config::<pb::EscalationPolicy>(&principal, &req.name, &req.etag)
            .await?;
        Ok(Response::new(pb::DeleteEscalationPolicyResponse {}))
    }

    async fn submit_survey_response(
        &self,
        req: Request<pb::SubmitSurveyResponseRequest>,
    ) -> Result<Response<pb::SurveyResponse>, Status> {
        let principal = auth::principal(&req)?;
        let response = required(req.into_inner().survey_response, "survey_response")?;
        let permission = if principal.customer_id.is_some() {
            "ticket.rate"
        } else {
            "ticket.update"
        };
        self.load_for(&principal, permission, &response.ticket)
            .await
            .map_err(|e| e.in_field("survey_response.ticket"))?;
        let actor = principal
            .customer_id
            .as_ref()
            .map_or(principal.user_id.clone(), |c| format!("customers/{c}"));
        Ok(Response::new(
            self.ticketing.submit_survey(&actor, response, Utc::now()).await?,
        ))
    }

    async fn get_service_report(&self, req: Request<pb::GetServiceReportRequest>) -> Result<Response<pb::ServiceReport>, Status> {
        let principal = auth::principal(&req)?;
        Self::staff_only(&principal, "ticket.report")?;
        self.check(&principal, "ticket.report", COLLECTION).await?;
        let req = req.into_inner();
        let time = |t: Option<prost_types::Timestamp>, field: &str| {
            let t = required(t, field)?;
            chrono::DateTime::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999) as u32)
                .ok_or_else(|| Error::invalid(field, "out of range"))
        };
        let mut v = Validation::default();
        let start = v.check(time(req.start_time, "start_time"));
        let end = v.check(time(req.end_time, "end_time"));
        let group =
            v.check(pb::ReportGrouping::try_from(req.group_by).map_err(|_| Error::invalid("group_by", "unknown grouping")));
        let ((start, end), group) = v.finish(start.zip(end).zip(group))?;
        Ok(Response::new(
            self.ticketing.service_report(start, end, group, Utc::now()).await?,
        ))
    }

    type StreamEventsStream = ReceiverStream<Result<StreamEventsResponse, Status>>;

    async fn stream_events(&self, req: Request<StreamEventsRequest>) -> Result<Response<Self::StreamEventsStream>, Status> {
        let principal = auth::principal(&req)?;
        Self::staff_only(&principal, "ticket.events")?;
        self.check(&principal, "ticket.events", COLLECTION).await?;
        let stream = self
            .ticketing
            .feed()
            .stream(&req.get_ref().after_cursor, &req.get_ref().event_types, principal.expires_at)
            .await?;
        Ok(Response::new(stream))
    }
}

pub use kb::KnowledgeBase;
