//! Decisions: the directory and subjects, loaded once and cached until the policy
//! version moves, evaluated by the pure rules in `domain::policy`.

use std::{collections::HashMap, sync::Arc};

use chrono::Utc;
use crm_platform::{Error, Result, auth::Principal};
use crm_proto::crm::permissions::v1::{self as pb, grant::State};
use sea_orm::Value;

use super::{Permissions, decode, from_timestamp, level_or, now, timestamp};
use crate::{
    domain::policy::{self, Binding, Directory, GrantInForce, Level, Record, Role, Subject, Target, Visibility, visibility},
    domain::resources::scope_from_proto,
    store::{self, Kind},
};

/// A caller of this service's own API, with the decision helpers it needs.
pub type Caller = Principal;

impl Permissions {
    pub(crate) async fn directory(&self) -> Result<Arc<Directory>> {
        if let Ok(d) = self.inner.directory.read()
            && let Some(d) = d.as_ref()
        {
            return Ok(d.clone());
        }
        let version = store::version(self.db()).await?;
        let mut roles = HashMap::new();
        for row in store::all(self.db(), Kind::Role).await? {
            let r: pb::Role = decode(&row.data)?;
            roles.insert(
                row.id,
                Role {
                    permissions: r.permissions,
                    clearance: level_or(r.clearance, Level::Public),
                },
            );
        }
        let mut teams = Vec::new();
        for row in store::all(self.db(), Kind::Team).await? {
            let t: pb::Team = decode(&row.data)?;
            let parent = t.parent.strip_prefix("teams/").unwrap_or_default().to_owned();
            teams.push((row.id, parent));
        }
        let dir = Arc::new(Directory::new(roles, &teams));
        self.observe_version(version);
        // Install only if no newer version was observed while loading.
        if self.inner.version.load(std::sync::atomic::Ordering::SeqCst) == version
            && let Ok(mut d) = self.inner.directory.write()
        {
            *d = Some(dir.clone());
        }
        Ok(dir)
    }

    pub(crate) async fn subject(&self, user_id: &str) -> Result<Arc<Subject>> {
        if let Some(s) = self.inner.subjects.get(user_id).await {
            return Ok(s);
        }
        let dir = self.directory().await?;
        let version = self.inner.version.load(std::sync::atomic::Ordering::SeqCst);
        let subject = Arc::new(self.load_subject(user_id, &dir).await?);
        if self.inner.version.load(std::sync::atomic::Ordering::SeqCst) == version {
            self.inner.subjects.insert(user_id.to_owned(), subject.clone()).await;
        }
        Ok(subject)
    }

    async fn load_subject(&self, user_id: &str, dir: &Directory) -> Result<Subject> {
        let Some(row) = store::get(self.db(), Kind::User, user_id).await? else {
            return Ok(Subject {
                user_id: user_id.to_owned(),
                ..Subject::default()
            });
        };
        let user: pb::User = decode(&row.data)?;
        let mut bindings = Vec::new();
        for row in store::list(
            self.db(),
            Kind::Binding,
            &[("user_id", Value::from(user_id))],
            "",
            u64::MAX >> 1,
        )
        .await?
        {
            let b: pb::RoleBinding = decode(&row.data)?;
            let Some(scope) = scope_from_proto(b.scope) else { continue };
            bindings.push(Binding {
                name: b.name,
                role: b.role.strip_prefix("roles/").unwrap_or_default().to_owned(),
                scope,
            });
        }
        let mut grants = Vec::new();
        let filter = [
            ("user_id", Value::from(user_id)),
            ("state", Value::from(State::Approved as i32)),
        ];
        for row in store::list(self.db(), Kind::Grant, &filter, "", u64::MAX >> 1).await? {
            let g: pb::Grant = decode(&row.data)?;
            let (Some(target), Some(expire_time)) = (Target::parse(&g.resource), g.expire_time.as_ref().and_then(from_timestamp))
            else {
                continue;
            };
            grants.push(GrantInForce {
                name: g.name,
                permissions: g.permissions,
                target,
                clearance: Level::from_i32(g.clearance),
                expire_time,
            });
        }
        Ok(Subject {
            user_id: user_id.to_owned(),
            active: !user.disabled,
            teams: user
                .teams
                .iter()
                .filter_map(|t| t.strip_prefix("teams/"))
                .map(str::to_owned)
                .collect(),
            bindings,
            grants,
            subtree: Default::default(),
        }
        .resolve(dir))
    }

    fn valid_until(&self, grant_expiry: Option<chrono::DateTime<Utc>>) -> prost_types::Timestamp {
        let ttl = now() + self.settings().decision_ttl;
        timestamp(grant_expiry.map_or(ttl, |g| g.min(ttl)))
    }

    /// One decision.
    pub async fn decide(&self, principal: &pb::Principal, permission: &str, r: &pb::ResourceRef) -> Result<pb::CheckResponse> {
        let dir = self.directory().await?;
        let customer = (!principal.customer_id.is_empty()).then_some(principal.customer_id.as_str());
        let subject = self.subject(&principal.user_id).await?;
        let d = policy::check(
            &dir,
            &subject,
            customer,
            &self.settings().self_service,
            permission,
            &Record {
                name: &r.name,
                owner_user_id: &r.owner_user_id,
                team_id: &r.team_id,
            },
            Utc::now(),
        );
        if d.allowed {
            self.record_use(&d.granted_by);
        }
        Ok(pb::CheckResponse {
            allowed: d.allowed,
            reason: d.reason,
            granted_by: d.granted_by,
            valid_until: Some(self.valid_until(d.valid_until)),
        })
    }

    /// Validates and answers checks in order.
    pub async fn batch_check(&self, checks: Vec<pb::CheckRequest>) -> Result<Vec<pb::CheckResponse>> {
        let mut violations = Vec::new();
        for (i, c) in checks.iter().enumerate() {
            if c.principal.as_ref().is_none_or(|p| p.user_id.is_empty()) {
                violations.push(crm_platform::FieldViolation::new(
                    format!("checks[{i}].principal.user_id"),
                    "required",
                ));
            }
            if !policy::valid_permission(&c.permission, false) {
                violations.push(crm_platform::FieldViolation::new(
                    format!("checks[{i}].permission"),
                    "a permission such as `customer.read`",
                ));
            }
            if c.resource.as_ref().is_none_or(|r| r.name.is_empty()) {
                violations.push(crm_platform::FieldViolation::new(
                    format!("checks[{i}].resource.name"),
                    "required",
                ));
            }
        }
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        let mut out = Vec::with_capacity(checks.len());
        for c in checks {
            let (Some(p), Some(r)) = (c.principal, c.resource) else {
                continue;
            };
            out.push(self.decide(&p, &c.permission, &r).await?);
        }
        Ok(out)
    }

    async fn rules_of(&self, principal: &pb::Principal, permission: &str) -> Result<Vec<policy::ClearanceRule>> {
        check_subject(principal, permission)?;
        let dir = self.directory().await?;
        let subject = self.subject(&principal.user_id).await?;
        let customer = (!principal.customer_id.is_empty()).then_some(principal.customer_id.as_str());
        Ok(policy::rules(
            &dir,
            &subject,
            customer,
            &self.settings().self_service,
            permission,
            Utc::now(),
        ))
    }

    fn scope_to_proto(&self, s: policy::Scoped) -> pb::ReadScope {
        pb::ReadScope {
            all: s.all,
            owner_user_ids: s.owner_user_ids.into_iter().collect(),
            team_ids: s.team_ids.into_iter().collect(),
            resources: s.resources.into_iter().collect(),
            valid_until: Some(self.valid_until(s.valid_until)),
        }
    }

    pub async fn read_scope(&self, principal: &pb::Principal, permission: &str) -> Result<pb::ReadScope> {
        let rules = self.rules_of(principal, permission).await?;
        Ok(self.scope_to_proto(policy::read_scope(&rules)))
    }

    pub async fn field_policy(
        &self,
        principal: &pb::Principal,
        permission: &str,
        fields: &[pb::FieldClassification],
        resource: Option<&pb::ResourceRef>,
    ) -> Result<pb::FieldPolicy> {
        if fields.len() > 1000 {
            return Err(Error::invalid("fields", "at most 1000"));
        }
        let rules = self.rules_of(principal, permission).await?;
        let clearance = match resource {
            Some(r) => policy::clearance_at(
                &rules,
                &Record {
                    name: &r.name,
                    owner_user_id: &r.owner_user_id,
                    team_id: &r.team_id,
                },
            ),
            None => rules.iter().map(|r| r.clearance).max(),
        };
        let earliest = rules.iter().filter_map(|r| r.reach.valid_until).min();
        Ok(pb::FieldPolicy {
            clearance: clearance.map_or(0, |c| c as i32),
            fields: fields
                .iter()
                .map(|f| {
                    // An unclassified field counts as confidential: never shown by mistake.
                    let level = level_or(f.classification, Level::Confidential);
                    let v = match visibility(level, clearance) {
                        Visibility::Visible => pb::Visibility::Visible,
                        Visibility::Masked => pb::Visibility::Masked,
                        Visibility::Hidden => pb::Visibility::Hidden,
                    };
                    (f.path.clone(), v as i32)
                })
                .collect(),
            valid_until: Some(self.valid_until(earliest)),
            rules: rules
                .into_iter()
                .map(|r| pb::ClearanceRule {
                    clearance: r.clearance as i32,
                    reach: Some(self.scope_to_proto(r.reach)),
                })
                .collect(),
        })
    }

    /// Allows a call to this service's own API, or audits and refuses it.
    pub(crate) async fn require(&self, caller: &Caller, permission: &str, resource: &str) -> Result<()> {
        let me = pb::Principal {
            user_id: caller.user_id.clone(),
            customer_id: caller.customer_id.clone().unwrap_or_default(),
        };
        let d = self
            .decide(
                &me,
                permission,
                &pb::ResourceRef {
                    name: resource.into(),
                    ..pb::ResourceRef::default()
                },
            )
            .await?;
        if d.allowed {
            return Ok(());
        }
        self.audit_denial(caller, permission, resource, &d.reason).await?;
        Err(Error::PermissionDenied {
            permission: permission.into(),
            resource: resource.into(),
        })
    }

    /// Does `caller` hold `permission` (without auditing)?
    pub(crate) async fn holds(&self, caller: &Caller, permission: &str, r: &pb::ResourceRef) -> Result<bool> {
        let me = pb::Principal {
            user_id: caller.user_id.clone(),
            customer_id: caller.customer_id.clone().unwrap_or_default(),
        };
        Ok(self.decide(&me, permission, r).await?.allowed)
    }
}

fn check_subject(principal: &pb::Principal, permission: &str) -> Result<()> {
    let mut v = Vec::new();
    if principal.user_id.is_empty() {
        v.push(crm_platform::FieldViolation::new("principal.user_id", "required"));
    }
    if !policy::valid_permission(permission, false) {
        v.push(crm_platform::FieldViolation::new(
            "permission",
            "a permission such as `customer.read`",
        ));
    }
    if v.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(v))
    }
}
