//! Temporary grants: request, approve or reject, revoke, expire. Every step is an
//! event and an audit entry.

use chrono::Utc;
use crm_platform::{
    Error, Result,
    db::begin_write,
    idempotency::{self, Recorded},
};
use crm_proto::crm::permissions::v1::{self as pb, grant::State};
use sea_orm::{DatabaseTransaction, Value};

use super::{Caller, Change, Page, Permissions, decode, encode, etag, expect_revision, micros, now, timestamp};
use crate::{
    domain::{
        policy::{self, Level, Target},
        resources,
    },
    store::{self, Kind, Row},
};

fn grant_change(g: &pb::Grant, action: &'static str, before: Option<Vec<u8>>) -> Change {
    let data = encode(g);
    Change {
        event_type: "crm.permissions.v1.GrantChanged",
        subject: g.name.clone(),
        data: encode(&pb::GrantChanged { grant: Some(g.clone()) }),
        action,
        fields: vec!["state".into()],
        before,
        after: Some(data),
    }
}

impl Permissions {
    fn grant_from(&self, row: &Row) -> Result<pb::Grant> {
        let mut g: pb::Grant = decode(&row.data)?;
        g.etag = etag(row.revision);
        g.last_used_time = row
            .last_used_us
            .and_then(chrono::DateTime::from_timestamp_micros)
            .map(timestamp);
        Ok(g)
    }

    pub async fn create_grant(&self, caller: &Caller, mut grant: pb::Grant, key: Option<idempotency::Key>) -> Result<pb::Grant> {
        if caller.customer_id.is_some() {
            return Err(Error::PermissionDenied {
                permission: "permissions.request".into(),
                resource: "grants".into(),
            });
        }
        resources::validate_grant(&grant, self.settings().max_grant_secs)?;
        let me = format!("users/{}", caller.user_id);
        if grant.user.is_empty() {
            grant.user = me.clone();
        }
        if grant.user != me {
            self.require(caller, "permissions.admin", "grants").await?;
        }
        if let Some(k) = &key
            && let Some(name) = idempotency::lookup(self.db(), k).await?
        {
            return self.get_grant(caller, &name).await;
        }
        let user_id = grant.user.trim_start_matches("users/").to_owned();
        if store::get(self.db(), Kind::User, &user_id).await?.is_none() {
            return Err(Error::invalid("grant.user", format!("user `{}` does not exist", grant.user)));
        }
        let id = uuid::Uuid::now_v7().to_string();
        grant.name = format!("grants/{id}");
        grant.state = State::Requested as i32;
        grant.requester = caller.user_id.clone();
        grant.decider = String::new();
        grant.decision_comment = String::new();
        grant.create_time = Some(timestamp(now()));
        grant.decide_time = None;
        grant.expire_time = None;
        grant.last_used_time = None;
        grant.etag = String::new();
        let txn = begin_write(self.db()).await?;
        store::insert(
            &txn,
            Kind::Grant,
            &id,
            &grant.name,
            encode(&grant),
            &[("user_id", user_id.into()), ("state", (State::Requested as i32).into())],
        )
        .await?;
        if let Some(k) = &key
            && matches!(idempotency::record(&txn, k, &grant.name).await?, Recorded::Duplicate)
        {
            drop(txn);
            let name = idempotency::lookup(self.db(), k).await?.unwrap_or_default();
            return self.get_grant(caller, &name).await;
        }
        let change = grant_change(&grant, "permissions.grants.request", None);
        self.commit(txn, caller, vec![change]).await?;
        grant.etag = etag(1);
        Ok(grant)
    }

    pub async fn get_grant(&self, caller: &Caller, name: &str) -> Result<pb::Grant> {
        let id = resources::parse_name(name, "grants", "name")?;
        let g = self.grant_from(&store::require(self.db(), Kind::Grant, id, name).await?)?;
        let me = format!("users/{}", caller.user_id);
        if g.user != me && g.requester != caller.user_id && g.decider != caller.user_id {
            self.require(caller, "permissions.read", name).await?;
        }
        Ok(g)
    }

    pub async fn list_grants(&self, caller: &Caller, user: &str, state: i32, after: &str, size: u32) -> Result<Page<pb::Grant>> {
        let mut filter = Vec::new();
        if !user.is_empty() {
            filter.push(("user_id", Value::from(resources::parse_name(user, "users", "user")?)));
        }
        if state != 0 {
            State::try_from(state).map_err(|_| Error::invalid("state", "not a known state"))?;
            filter.push(("state", Value::from(state)));
        }
        if user != format!("users/{}", caller.user_id) {
            // Approvers need to see what waits for them.
            if !self
                .holds(
                    caller,
                    "permissions.approve",
                    &pb::ResourceRef {
                        name: "grants".into(),
                        ..Default::default()
                    },
                )
                .await?
            {
                self.require(caller, "permissions.read", "grants").await?;
            }
        }
        let mut rows = store::list(self.db(), Kind::Grant, &filter, after, u64::from(size) + 1).await?;
        let next = if rows.len() > size as usize {
            rows.truncate(size as usize);
            rows.last().map(|r| r.id.clone())
        } else {
            None
        };
        Ok(Page {
            items: rows.iter().map(|r| self.grant_from(r)).collect::<Result<_>>()?,
            next,
        })
    }

    /// Can `caller` give what `grant` asks for? Through its own role bindings:
    /// `permissions.approve`, and every requested permission over the whole
    /// target at the requested clearance (see `policy::may_give`).
    async fn may_approve(&self, caller: &Caller, grant: &pb::Grant) -> Result<bool> {
        if caller.customer_id.is_some() {
            return Ok(false);
        }
        let Some(target) = Target::parse(&grant.resource) else {
            return Ok(false);
        };
        let dir = self.directory().await?;
        let subject = self.subject(&caller.user_id).await?;
        let approver = subject.active
            && subject.bindings.iter().any(|b| {
                dir.roles
                    .get(&b.role)
                    .is_some_and(|r| r.permissions.iter().any(|p| policy::permits(p, "permissions.approve")))
            });
        let clearance = Level::from_i32(grant.clearance);
        Ok(approver
            && grant
                .permissions
                .iter()
                .all(|p| policy::may_give(&dir, &subject, p, &target, clearance)))
    }

    async fn decide_grant(&self, caller: &Caller, name: &str, etag_in: &str, comment: &str, to: State) -> Result<pb::Grant> {
        let id = resources::parse_name(name, "grants", "name")?.to_owned();
        if comment.chars().count() > 1000 {
            return Err(Error::invalid("comment", "at most 1000 characters"));
        }
        let row = store::require(self.db(), Kind::Grant, &id, name).await?;
        let grant = self.grant_from(&row)?;
        let me = format!("users/{}", caller.user_id);
        let allowed = match to {
            State::Approved | State::Rejected => {
                grant.requester != caller.user_id && grant.user != me && self.may_approve(caller, &grant).await?
            }
            // Its user may give access up; approvers and admins may take it away.
            _ => {
                grant.user == me
                    || self.may_approve(caller, &grant).await?
                    || self
                        .holds(
                            caller,
                            "permissions.admin",
                            &pb::ResourceRef {
                                name: name.into(),
                                ..Default::default()
                            },
                        )
                        .await?
            }
        };
        let action = match to {
            State::Approved => "permissions.grants.approve",
            State::Rejected => "permissions.grants.reject",
            _ => "permissions.grants.revoke",
        };
        if !allowed {
            let why = "only someone else with `permissions.approve` and the requested access may decide a grant";
            self.audit_denial(caller, action, name, why).await?;
            return Err(Error::PermissionDenied {
                permission: action.into(),
                resource: name.into(),
            });
        }
        let from = State::try_from(grant.state).unwrap_or(State::Unspecified);
        let ok = match to {
            State::Approved | State::Rejected => from == State::Requested,
            _ => matches!(from, State::Requested | State::Approved),
        };
        if !ok {
            return Err(Error::FailedPrecondition {
                reason: "GRANT_STATE",
                subject: name.into(),
                message: format!(
                    "the grant is {}",
                    from.as_str_name().trim_start_matches("STATE_").to_lowercase()
                ),
            });
        }
        let txn = begin_write(self.db()).await?;
        let row = store::require(&txn, Kind::Grant, &id, name).await?;
        expect_revision(etag_in, row.revision, name)?;
        // Decided on the row as locked now: a concurrent decision that committed
        // since the read above fails the state check instead of being overwritten.
        let mut grant = self.grant_from(&row)?;
        let current = State::try_from(grant.state).unwrap_or(State::Unspecified);
        if current != from {
            return Err(Error::EtagMismatch { name: name.into() });
        }
        let t = now();
        grant.state = to as i32;
        grant.decider = caller.user_id.clone();
        grant.decision_comment = comment.to_owned();
        grant.decide_time = Some(timestamp(t));
        let mut expire_us = None;
        if to == State::Approved {
            let d = grant.duration.unwrap_or_default();
            let expires = t + chrono::Duration::seconds(d.seconds);
            grant.expire_time = Some(timestamp(expires));
            expire_us = Some(micros(expires));
        }
        let revision = self.store_grant(&txn, &id, &grant, row.revision, expire_us).await?;
        let change = grant_change(&grant, action, Some(row.data));
        self.commit(txn, caller, vec![change]).await?;
        grant.etag = etag(revision);
        Ok(grant)
    }

    async fn store_grant(
        &self,
        txn: &DatabaseTransaction,
        id: &str,
        grant: &pb::Grant,
        revision: i64,
        expire_us: Option<i64>,
    ) -> Result<i64> {
        let mut stored = grant.clone();
        stored.etag = String::new();
        stored.last_used_time = None;
        let mut extra = vec![("state", Value::from(grant.state))];
        if let Some(us) = expire_us {
            extra.push(("expire_us", us.into()));
        }
        store::update(txn, Kind::Grant, id, &grant.name, revision, encode(&stored), &extra).await
    }

    pub async fn approve_grant(&self, caller: &Caller, name: &str, etag: &str, comment: &str) -> Result<pb::Grant> {
        self.decide_grant(caller, name, etag, comment, State::Approved).await
    }

    pub async fn reject_grant(&self, caller: &Caller, name: &str, etag: &str, comment: &str) -> Result<pb::Grant> {
        self.decide_grant(caller, name, etag, comment, State::Rejected).await
    }

    pub async fn revoke_grant(&self, caller: &Caller, name: &str, etag: &str, comment: &str) -> Result<pb::Grant> {
        self.decide_grant(caller, name, etag, comment, State::Revoked).await
    }

    /// Revokes a deleted user's open grants inside the caller's transaction.
    pub(super) async fn revoke_all_grants(
        &self,
        txn: &DatabaseTransaction,
        user_id: &str,
        caller: &Caller,
    ) -> Result<Vec<Change>> {
        let mut changes = Vec::new();
        for row in store::list(txn, Kind::Grant, &[("user_id", Value::from(user_id))], "", u64::MAX >> 1).await? {
            let mut g = self.grant_from(&row)?;
            if !matches!(State::try_from(g.state), Ok(State::Requested | State::Approved)) {
                continue;
            }
            g.state = State::Revoked as i32;
            g.decider = caller.user_id.clone();
            g.decision_comment = "user deleted".into();
            g.decide_time = Some(timestamp(now()));
            self.store_grant(txn, &row.id, &g, row.revision, None).await?;
            changes.push(grant_change(&g, "permissions.grants.revoke", Some(row.data)));
        }
        Ok(changes)
    }

    /// Marks approved grants past their expiry as expired (decisions already
    /// ignore them; this records it, with an event and an audit entry). Several
    /// replicas may run it: the revision check lets only one win per grant.
    pub(super) async fn expire_grants(&self) -> Result<usize> {
        let ids = store::expired_grants(self.db(), micros(Utc::now()), State::Approved as i32, 100).await?;
        let system = Caller::default();
        let mut done = 0;
        for id in ids {
            let txn = begin_write(self.db()).await?;
            let Some(row) = store::get(&txn, Kind::Grant, &id).await? else {
                continue;
            };
            let mut g = self.grant_from(&row)?;
            if g.state != State::Approved as i32 {
                continue;
            }
            g.state = State::Expired as i32;
            g.decide_time = Some(timestamp(now()));
            match self.store_grant(&txn, &id, &g, row.revision, None).await {
                Ok(_) => {}
                Err(Error::EtagMismatch { .. }) => continue,
                Err(e) => return Err(e),
            }
            let change = grant_change(&g, "permissions.grants.expire", Some(row.data));
            self.commit(txn, &system, vec![change]).await?;
            done += 1;
        }
        Ok(done)
    }
}
