//! The access review: every binding and approved grant with what needs attention.

use chrono::Utc;
use crm_platform::Result;
use crm_proto::crm::permissions::v1::{self as pb, Finding, access_review_item::Access, grant::State};
use sea_orm::Value;

use super::{Caller, Page, Permissions, decode, from_timestamp};
use crate::{
    domain::{policy::Level, resources},
    store::{self, Kind},
};

impl Permissions {
    /// Items of one page, ordered by user; `after` is the last user id of the
    /// previous page.
    pub async fn access_review(
        &self,
        caller: &Caller,
        user: &str,
        only_findings: bool,
        after: &str,
        size: u32,
    ) -> Result<Page<pb::AccessReviewItem>> {
        self.require(caller, "permissions.review", "accessReview").await?;
        let mut filter = Vec::new();
        if !user.is_empty() {
            filter.push(("id", Value::from(resources::parse_name(user, "users", "user")?)));
        }
        let now = Utc::now();
        let unused_before = now - self.settings().unused_after;
        let dir = self.directory().await?;
        let mut items = Vec::new();
        let mut cursor = after.to_owned();
        loop {
            let users = store::list(self.db(), Kind::User, &filter, &cursor, 200).await?;
            let Some(last) = users.last() else {
                return Ok(Page { items, next: None });
            };
            cursor = last.id.clone();
            for row in &users {
                let u: pb::User = decode(&row.data)?;
                let mut mine = Vec::new();
                for b in store::list(
                    self.db(),
                    Kind::Binding,
                    &[("user_id", Value::from(row.id.as_str()))],
                    "",
                    u64::MAX >> 1,
                )
                .await?
                {
                    let binding = self.binding_from(&b)?;
                    let mut findings = Vec::new();
                    let used = binding.last_used_time.as_ref().and_then(from_timestamp);
                    let created = binding.create_time.as_ref().and_then(from_timestamp);
                    if used.or(created).is_none_or(|t| t < unused_before) {
                        findings.push(Finding::Unused);
                    }
                    if binding
                        .review_due_time
                        .as_ref()
                        .and_then(from_timestamp)
                        .is_some_and(|t| t <= now)
                    {
                        findings.push(Finding::ReviewOverdue);
                    }
                    let role = dir.roles.get(binding.role.trim_start_matches("roles/"));
                    if binding.scope == pb::Scope::All as i32 || role.is_some_and(|r| r.clearance == Level::Confidential) {
                        findings.push(Finding::Privileged);
                    }
                    mine.push((Access::RoleBinding(binding), findings));
                }
                let approved = [
                    ("user_id", Value::from(row.id.as_str())),
                    ("state", Value::from(State::Approved as i32)),
                ];
                for g in store::list(self.db(), Kind::Grant, &approved, "", u64::MAX >> 1).await? {
                    let mut grant: pb::Grant = decode(&g.data)?;
                    grant.last_used_time = g
                        .last_used_us
                        .and_then(chrono::DateTime::from_timestamp_micros)
                        .map(super::timestamp);
                    let mut findings = Vec::new();
                    if grant.last_used_time.is_none() {
                        findings.push(Finding::Unused);
                    }
                    if grant.clearance == pb::Classification::Confidential as i32 {
                        findings.push(Finding::Privileged);
                    }
                    mine.push((Access::Grant(grant), findings));
                }
                for (access, mut findings) in mine {
                    if u.disabled {
                        findings.push(Finding::UserDisabled);
                    }
                    if only_findings && findings.is_empty() {
                        continue;
                    }
                    items.push(pb::AccessReviewItem {
                        user: u.name.clone(),
                        access: Some(access),
                        findings: findings.into_iter().map(|f| f as i32).collect(),
                    });
                }
                if items.len() >= size as usize {
                    return Ok(Page {
                        items,
                        next: Some(row.id.clone()),
                    });
                }
            }
        }
    }
}
