//! gRPC handlers: decode, call the use case (which authorizes the caller), encode.

use crm_platform::{
    Error,
    auth::{self, Principal},
    error::Validation,
    idempotency,
    paging::{self, PageTokens},
};
use crm_proto::crm::{
    events::v1::{StreamEventsRequest, StreamEventsResponse},
    permissions::v1::{self as pb, permissions_service_server::PermissionsService},
};
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    service::{Page, Permissions},
    store::audit::AuditQuery,
};

const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 1000;

#[derive(Debug, Clone)]
pub struct Api {
    permissions: Permissions,
    page_tokens: PageTokens,
}

impl Api {
    pub fn new(permissions: Permissions, page_tokens: PageTokens) -> Self {
        Self {
            permissions,
            page_tokens,
        }
    }

    /// Page size and the id to continue after, for a list whose filter is `parts`.
    fn paging(&self, method: &str, parts: &[&str], size: i32, token: &str, default: u32) -> Result<(u32, String, String), Error> {
        let mut all = vec![method];
        all.extend_from_slice(parts);
        let fingerprint = paging::fingerprint(&all);
        let mut v = Validation::default();
        let size = v.check(paging::page_size(size, default, MAX_PAGE_SIZE));
        let after = v.check(if token.is_empty() {
            Ok(String::new())
        } else {
            self.page_tokens.decode::<String>(&fingerprint, token)
        });
        let (size, after) = v.finish(size.zip(after))?;
        Ok((size, after, fingerprint))
    }

    fn next_token<T>(&self, fingerprint: &str, page: &Page<T>) -> Result<String, Error> {
        match &page.next {
            Some(after) => self.page_tokens.encode(fingerprint, after),
            None => Ok(String::new()),
        }
    }
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, Error> {
    value.ok_or_else(|| Error::invalid(field, "required"))
}

fn caller<T>(req: &Request<T>) -> Result<Principal, Status> {
    Ok(auth::principal(req)?)
}

fn mask(m: Option<prost_types::FieldMask>) -> Vec<String> {
    m.map(|m| m.paths).unwrap_or_default()
}

/// Decision calls about someone else need `permissions.check`.
async fn may_ask_about(p: &Permissions, caller: &Principal, about: Option<&pb::Principal>) -> Result<(), Status> {
    let own =
        about.is_some_and(|a| a.user_id == caller.user_id && a.customer_id == caller.customer_id.clone().unwrap_or_default());
    if !own {
        p.require(caller, "permissions.check", "decisions").await?;
    }
    Ok(())
}

#[tonic::async_trait]
impl PermissionsService for Api {
    async fn check(&self, req: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        may_ask_about(&self.permissions, &caller, req.principal.as_ref()).await?;
        let mut answers = self.permissions.batch_check(vec![req]).await.map_err(strip_index)?;
        Ok(Response::new(answers.pop().unwrap_or_default()))
    }

    async fn batch_check(&self, req: Request<pb::BatchCheckRequest>) -> Result<Response<pb::BatchCheckResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        if req.checks.is_empty() || req.checks.len() > 1000 {
            return Err(Error::invalid("checks", "between 1 and 1000 checks").into());
        }
        let about_self_only = req.checks.iter().all(|c| {
            c.principal
                .as_ref()
                .is_some_and(|p| p.user_id == caller.user_id && p.customer_id == caller.customer_id.clone().unwrap_or_default())
        });
        if !about_self_only {
            self.permissions.require(&caller, "permissions.check", "decisions").await?;
        }
        let results = self.permissions.batch_check(req.checks).await?;
        Ok(Response::new(pb::BatchCheckResponse { results }))
    }

    async fn get_read_scope(&self, req: Request<pb::GetReadScopeRequest>) -> Result<Response<pb::ReadScope>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        may_ask_about(&self.permissions, &caller, req.principal.as_ref()).await?;
        let principal = required(req.principal, "principal")?;
        Ok(Response::new(self.permissions.read_scope(&principal, &req.permission).await?))
    }

    async fn get_field_policy(&self, req: Request<pb::GetFieldPolicyRequest>) -> Result<Response<pb::FieldPolicy>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        may_ask_about(&self.permissions, &caller, req.principal.as_ref()).await?;
        let principal = required(req.principal, "principal")?;
        Ok(Response::new(
            self.permissions
                .field_policy(&principal, &req.permission, &req.fields, req.resource.as_ref())
                .await?,
        ))
    }

    async fn create_user(&self, req: Request<pb::CreateUserRequest>) -> Result<Response<pb::User>, Status> {
        let caller = caller(&req)?;
        let user = required(req.into_inner().user, "user")?;
        Ok(Response::new(self.permissions.create_user(&caller, user).await?))
    }

    async fn get_user(&self, req: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        let caller = caller(&req)?;
        Ok(Response::new(
            self.permissions.get_user(&caller, &req.into_inner().name).await?,
        ))
    }

    async fn list_users(&self, req: Request<pb::ListUsersRequest>) -> Result<Response<pb::ListUsersResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let (size, after, fp) = self.paging("users", &[&req.team], req.page_size, &req.page_token, DEFAULT_PAGE_SIZE)?;
        let page = self.permissions.list_users(&caller, &req.team, &after, size).await?;
        Ok(Response::new(pb::ListUsersResponse {
            next_page_token: self.next_token(&fp, &page)?,
            users: page.items,
        }))
    }

    async fn update_user(&self, req: Request<pb::UpdateUserRequest>) -> Result<Response<pb::User>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let user = required(req.user, "user")?;
        Ok(Response::new(
            self.permissions.update_user(&caller, user, &mask(req.update_mask)).await?,
        ))
    }

    async fn delete_user(&self, req: Request<pb::DeleteUserRequest>) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        self.permissions.delete_user(&caller, &req.name, &req.etag).await?;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn create_team(&self, req: Request<pb::CreateTeamRequest>) -> Result<Response<pb::Team>, Status> {
        let caller = caller(&req)?;
        let team = required(req.into_inner().team, "team")?;
        Ok(Response::new(self.permissions.create_team(&caller, team).await?))
    }

    async fn get_team(&self, req: Request<pb::GetTeamRequest>) -> Result<Response<pb::Team>, Status> {
        let caller = caller(&req)?;
        Ok(Response::new(
            self.permissions.get_team(&caller, &req.into_inner().name).await?,
        ))
    }

    async fn list_teams(&self, req: Request<pb::ListTeamsRequest>) -> Result<Response<pb::ListTeamsResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let (size, after, fp) = self.paging("teams", &[&req.parent], req.page_size, &req.page_token, DEFAULT_PAGE_SIZE)?;
        let page = self.permissions.list_teams(&caller, &req.parent, &after, size).await?;
        Ok(Response::new(pb::ListTeamsResponse {
            next_page_token: self.next_token(&fp, &page)?,
            teams: page.items,
        }))
    }

    async fn update_team(&self, req: Request<pb::UpdateTeamRequest>) -> Result<Response<pb::Team>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let team = required(req.team, "team")?;
        Ok(Response::new(
            self.permissions.update_team(&caller, team, &mask(req.update_mask)).await?,
        ))
    }

    async fn delete_team(&self, req: Request<pb::DeleteTeamRequest>) -> Result<Response<pb::DeleteTeamResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        self.permissions.delete_team(&caller, &req.name, &req.etag).await?;
        Ok(Response::new(pb::DeleteTeamResponse {}))
    }

    async fn create_role(&self, req: Request<pb::CreateRoleRequest>) -> Result<Response<pb::Role>, Status> {
        let caller = caller(&req)?;
        let role = required(req.into_inner().role, "role")?;
        Ok(Response::new(self.permissions.create_role(&caller, role).await?))
    }

    async fn get_role(&self, req: Request<pb::GetRoleRequest>) -> Result<Response<pb::Role>, Status> {
        let caller = caller(&req)?;
        Ok(Response::new(
            self.permissions.get_role(&caller, &req.into_inner().name).await?,
        ))
    }

    async fn list_roles(&self, req: Request<pb::ListRolesRequest>) -> Result<Response<pb::ListRolesResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let (size, after, fp) = self.paging("roles", &[], req.page_size, &req.page_token, DEFAULT_PAGE_SIZE)?;
        let page = self.permissions.list_roles(&caller, &after, size).await?;
        Ok(Response::new(pb::ListRolesResponse {
            next_page_token: self.next_token(&fp, &page)?,
            roles: page.items,
        }))
    }

    async fn update_role(&self, req: Request<pb::UpdateRoleRequest>) -> Result<Response<pb::Role>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let role = required(req.role, "role")?;
        Ok(Response::new(
            self.permissions.update_role(&caller, role, &mask(req.update_mask)).await?,
        ))
    }

    async fn delete_role(&self, req: Request<pb::DeleteRoleRequest>) -> Result<Response<pb::DeleteRoleResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        self.permissions.delete_role(&caller, &req.name, &req.etag).await?;
        Ok(Response::new(pb::DeleteRoleResponse {}))
    }

    async fn create_role_binding(&self, req: Request<pb::CreateRoleBindingRequest>) -> Result<Response<pb::RoleBinding>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let key = idempotency::Key::new("CreateRoleBinding", &caller.user_id, &req.request_id, &req.encode_to_vec())?;
        let binding = required(req.role_binding, "role_binding")?;
        Ok(Response::new(self.permissions.create_binding(&caller, binding, key).await?))
    }

    async fn get_role_binding(&self, req: Request<pb::GetRoleBindingRequest>) -> Result<Response<pb::RoleBinding>, Status> {
        let caller = caller(&req)?;
        Ok(Response::new(
            self.permissions.get_binding(&caller, &req.into_inner().name).await?,
        ))
    }

    async fn list_role_bindings(
        &self,
        req: Request<pb::ListRoleBindingsRequest>,
    ) -> Result<Response<pb::ListRoleBindingsResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let (size, after, fp) = self.paging(
            "roleBindings",
            &[&req.user, &req.role],
            req.page_size,
            &req.page_token,
            DEFAULT_PAGE_SIZE,
        )?;
        let page = self
            .permissions
            .list_bindings(&caller, &req.user, &req.role, &after, size)
            .await?;
        Ok(Response::new(pb::ListRoleBindingsResponse {
            next_page_token: self.next_token(&fp, &page)?,
            role_bindings: page.items,
        }))
    }

    async fn delete_role_binding(
        &self,
        req: Request<pb::DeleteRoleBindingRequest>,
    ) -> Result<Response<pb::DeleteRoleBindingResponse>, Status> {
        let caller = caller(&req)?;
        self.permissions.delete_binding(&caller, &req.into_inner().name).await?;
        Ok(Response::new(pb::DeleteRoleBindingResponse {}))
    }

    async fn confirm_role_binding(
        &self,
        req: Request<pb::ConfirmRoleBindingRequest>,
    ) -> Result<Response<pb::RoleBinding>, Status> {
        let caller = caller(&req)?;
        Ok(Response::new(
            self.permissions.confirm_binding(&caller, &req.into_inner().name).await?,
        ))
    }

    async fn create_grant(&self, req: Request<pb::CreateGrantRequest>) -> Result<Response<pb::Grant>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let key = idempotency::Key::new("CreateGrant", &caller.user_id, &req.request_id, &req.encode_to_vec())?;
        let grant = required(req.grant, "grant")?;
        Ok(Response::new(self.permissions.create_grant(&caller, grant, key).await?))
    }

    async fn get_grant(&self, req: Request<pb::GetGrantRequest>) -> Result<Response<pb::Grant>, Status> {
        let caller = caller(&req)?;
        Ok(Response::new(
            self.permissions.get_grant(&caller, &req.into_inner().name).await?,
        ))
    }

    async fn list_grants(&self, req: Request<pb::ListGrantsRequest>) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let state = req.state.to_string();
        let (size, after, fp) = self.paging(
            "grants",
            &[&req.user, &state],
            req.page_size,
            &req.page_token,
            DEFAULT_PAGE_SIZE,
        )?;
        let page = self
            .permissions
            .list_grants(&caller, &req.user, req.state, &after, size)
            .await?;
        Ok(Response::new(pb::ListGrantsResponse {
            next_page_token: self.next_token(&fp, &page)?,
            grants: page.items,
        }))
    }

    async fn approve_grant(&self, req: Request<pb::ApproveGrantRequest>) -> Result<Response<pb::Grant>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        Ok(Response::new(
            self.permissions.approve_grant(&caller, &r.name, &r.etag, &r.comment).await?,
        ))
    }

    async fn reject_grant(&self, req: Request<pb::RejectGrantRequest>) -> Result<Response<pb::Grant>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        Ok(Response::new(
            self.permissions.reject_grant(&caller, &r.name, &r.etag, &r.comment).await?,
        ))
    }

    async fn revoke_grant(&self, req: Request<pb::RevokeGrantRequest>) -> Result<Response<pb::Grant>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        Ok(Response::new(
            self.permissions.revoke_grant(&caller, &r.name, &r.etag, &r.comment).await?,
        ))
    }

    async fn get_access_review(&self, req: Request<pb::GetAccessReviewRequest>) -> Result<Response<pb::AccessReview>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let flag = if req.only_findings { "findings" } else { "" };
        let (size, after, fp) = self.paging("accessReview", &[&req.user, flag], req.page_size, &req.page_token, 100)?;
        let page = self
            .permissions
            .access_review(&caller, &req.user, req.only_findings, &after, size)
            .await?;
        Ok(Response::new(pb::AccessReview {
            next_page_token: self.next_token(&fp, &page)?,
            items: page.items,
            generate_time: Some(crm_platform::feed::timestamp(chrono::Utc::now())),
        }))
    }

    async fn write_audit_entries(
        &self,
        req: Request<pb::WriteAuditEntriesRequest>,
    ) -> Result<Response<pb::WriteAuditEntriesResponse>, Status> {
        let caller = caller(&req)?;
        let (appended, duplicates) = self
            .permissions
            .write_audit_entries(&caller, req.into_inner().entries)
            .await?;
        Ok(Response::new(pb::WriteAuditEntriesResponse {
            appended: appended as i32,
            duplicates: duplicates as i32,
        }))
    }

    async fn list_audit_entries(
        &self,
        req: Request<pb::ListAuditEntriesRequest>,
    ) -> Result<Response<pb::ListAuditEntriesResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let filter = format!(
            "{}|{}|{}|{:?}|{:?}",
            req.actor, req.resource, req.outcome, req.start_time, req.end_time
        );
        let (size, after, fp) = self.paging("auditEntries", &[&filter], req.page_size, &req.page_token, DEFAULT_PAGE_SIZE)?;
        let micros = |t: &Option<prost_types::Timestamp>| t.as_ref().map(crate::store::audit::micros);
        let query = AuditQuery {
            actor: req.actor,
            resource: req.resource,
            outcome: req.outcome,
            start_us: micros(&req.start_time),
            end_us: micros(&req.end_time),
            before_seq: after.parse().unwrap_or(0),
            limit: u64::from(size),
        };
        let page = self.permissions.list_audit(&caller, query).await?;
        Ok(Response::new(pb::ListAuditEntriesResponse {
            next_page_token: self.next_token(&fp, &page)?,
            audit_entries: page.items,
        }))
    }

    async fn verify_audit_chain(
        &self,
        req: Request<pb::VerifyAuditChainRequest>,
    ) -> Result<Response<pb::VerifyAuditChainResponse>, Status> {
        let caller = caller(&req)?;
        let v = self.permissions.verify_audit(&caller).await?;
        Ok(Response::new(pb::VerifyAuditChainResponse {
            intact: v.intact,
            entries_checked: v.checked,
            first_broken_entry: v.first_broken.map(|s| format!("auditEntries/{s}")).unwrap_or_default(),
            problem: v.problem,
            head_hash: v.head_hash,
            head_sequence: v.head_sequence,
            anchor_sequence: v.anchor_sequence,
        }))
    }

    type StreamEventsStream = ReceiverStream<Result<StreamEventsResponse, Status>>;

    async fn stream_events(&self, req: Request<StreamEventsRequest>) -> Result<Response<Self::StreamEventsStream>, Status> {
        let caller = caller(&req)?;
        self.permissions.require(&caller, "permissions.events", "events").await?;
        let stream = self
            .permissions
            .feed()
            .stream(&req.get_ref().after_cursor, &req.get_ref().event_types, caller.expires_at)
            .await?;
        Ok(Response::new(stream))
    }
}

/// A single Check reports field paths without the batch index.
fn strip_index(e: Error) -> Error {
    match e {
        Error::InvalidArgument(v) => Error::InvalidArgument(
            v.into_iter()
                .map(|f| crm_platform::FieldViolation::new(f.field.trim_start_matches("checks[0]."), f.description))
                .collect(),
        ),
        other => other,
    }
}
