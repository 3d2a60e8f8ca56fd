//! Administration of users, teams, roles and role bindings.

use std::collections::BTreeSet;

use crm_platform::{
    Error, Result,
    db::begin_write,
    idempotency::{self, Recorded},
};
use crm_proto::crm::permissions::v1::{self as pb};
use sea_orm::{DatabaseTransaction, Value};

use super::{Caller, Change, Permissions, decode, encode, etag, expect_revision, now, timestamp};
use crate::{
    domain::resources::{self, parse_name},
    store::{self, Kind, Row},
};

const ADMIN: &str = "permissions.admin";

/// A page of `kind` after `after` (an id), at most `size`; the id to continue after.
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// The paths to update: the requested ones, all of which must be in `allowed`; an
/// empty mask means the fields the patch sets (AIP-134), never "clear the rest".
fn mask<'a>(requested: &'a [String], allowed: &[&'a str], populated: Vec<&'a str>, prefix: &str) -> Result<Vec<&'a str>> {
    let bad: Vec<_> = requested
        .iter()
        .filter(|p| !allowed.contains(&p.as_str()))
        .map(|p| crm_platform::FieldViolation::new("update_mask", format!("`{p}` cannot be updated on a {prefix}")))
        .collect();
    if bad.is_empty() {
        Ok(if requested.is_empty() {
            populated
        } else {
            requested.iter().map(String::as_str).collect()
        })
    } else {
        Err(Error::InvalidArgument(bad))
    }
}

/// Users, teams and roles: stored whole, updated the same way.
trait Versioned: prost::Message + Default + Clone + PartialEq {
    const KIND: Kind;
    const UPDATE: &'static str;
    fn name(&self) -> &str;
    fn stamp(&mut self, t: prost_types::Timestamp);
    fn set_etag(&mut self, etag: String);
    fn change(
        &self,
        deleted: bool,
        action: &'static str,
        fields: Vec<String>,
        before: Option<Vec<u8>>,
        after: Option<Vec<u8>>,
    ) -> Change;
}

impl Versioned for pb::User {
    const KIND: Kind = Kind::User;
    const UPDATE: &'static str = "permissions.users.update";
    fn name(&self) -> &str {
        &self.name
    }
    fn stamp(&mut self, t: prost_types::Timestamp) {
        self.update_time = Some(t);
    }
    fn set_etag(&mut self, etag: String) {
        self.etag = etag;
    }
    fn change(
        &self,
        deleted: bool,
        action: &'static str,
        fields: Vec<String>,
        before: Option<Vec<u8>>,
        after: Option<Vec<u8>>,
    ) -> Change {
        user_change(self, deleted, action, fields, before, after)
    }
}

impl Versioned for pb::Team {
    const KIND: Kind = Kind::Team;
    const UPDATE: &'static str = "permissions.teams.update";
    fn name(&self) -> &str {
        &self.name
    }
    fn stamp(&mut self, t: prost_types::Timestamp) {
        self.update_time = Some(t);
    }
    fn set_etag(&mut self, etag: String) {
        self.etag = etag;
    }
    fn change(
        &self,
        deleted: bool,
        action: &'static str,
        fields: Vec<String>,
        before: Option<Vec<u8>>,
        after: Option<Vec<u8>>,
    ) -> Change {
        team_change(self, deleted, action, fields, before, after)
    }
}

impl Versioned for pb::Role {
    const KIND: Kind = Kind::Role;
    const UPDATE: &'static str = "permissions.roles.update";
    fn name(&self) -> &str {
        &self.name
    }
    fn stamp(&mut self, t: prost_types::Timestamp) {
        self.update_time = Some(t);
    }
    fn set_etag(&mut self, etag: String) {
        self.etag = etag;
    }
    fn change(
        &self,
        deleted: bool,
        action: &'static str,
        fields: Vec<String>,
        before: Option<Vec<u8>>,
        after: Option<Vec<u8>>,
    ) -> Change {
        role_change(self, deleted, action, fields, before, after)
    }
}

/// An object read for update inside its write transaction.
struct Editing<M> {
    txn: DatabaseTransaction,
    id: String,
    row: Row,
    before: M,
}

impl Permissions {
    /// Reads `id` for update and checks the caller's etag.
    async fn edit<M: Versioned>(&self, id: &str, name: &str, etag_in: &str) -> Result<Editing<M>> {
        let txn = begin_write(self.db()).await?;
        let row = store::require(&txn, M::KIND, id, name).await?;
        expect_revision(etag_in, row.revision, name)?;
        let before = decode(&row.data)?;
        Ok(Editing {
            txn,
            id: id.to_owned(),
            row,
            before,
        })
    }

    /// Stores `after` (unless nothing changed) with its event and audit entry.
    async fn save<M: Versioned>(&self, caller: &Caller, e: Editing<M>, mut after: M, paths: &[&str]) -> Result<M> {
        if after == e.before {
            e.txn.commit().await?;
            after.set_etag(etag(e.row.revision));
            return Ok(after);
        }
        after.stamp(timestamp(now()));
        let data = encode(&after);
        let revision = store::update(&e.txn, M::KIND, &e.id, after.name(), e.row.revision, data.clone(), &[]).await?;
        let fields = paths.iter().map(|p| (*p).to_owned()).collect();
        let change = after.change(false, M::UPDATE, fields, Some(e.row.data), Some(data));
        self.commit(e.txn, caller, vec![change]).await?;
        after.set_etag(etag(revision));
        Ok(after)
    }

    fn user_from(&self, row: &Row) -> Result<pb::User> {
        let mut u: pb::User = decode(&row.data)?;
        u.etag = etag(row.revision);
        Ok(u)
    }

    fn team_from(&self, row: &Row) -> Result<pb::Team> {
        let mut t: pb::Team = decode(&row.data)?;
        t.etag = etag(row.revision);
        Ok(t)
    }

    fn role_from(&self, row: &Row) -> Result<pb::Role> {
        let mut r: pb::Role = decode(&row.data)?;
        r.etag = etag(row.revision);
        Ok(r)
    }

    pub(crate) fn binding_from(&self, row: &Row) -> Result<pb::RoleBinding> {
        let mut b: pb::RoleBinding = decode(&row.data)?;
        b.last_used_time = row
            .last_used_us
            .and_then(chrono::DateTime::from_timestamp_micros)
            .map(timestamp);
        Ok(b)
    }

    async fn page<T>(
        &self,
        kind: Kind,
        filter: &[(&str, Value)],
        after: &str,
        size: u32,
        map: impl Fn(&Self, &Row) -> Result<T>,
    ) -> Result<Page<T>> {
        let mut rows = store::list(self.db(), kind, filter, after, u64::from(size) + 1).await?;
        let next = if rows.len() > size as usize {
            rows.truncate(size as usize);
            rows.last().map(|r| r.id.clone())
        } else {
            None
        };
        Ok(Page {
            items: rows.iter().map(|r| map(self, r)).collect::<Result<_>>()?,
            next,
        })
    }

    async fn teams_exist(&self, teams: &[String], field: &str) -> Result<()> {
        let mut bad = Vec::new();
        for (i, t) in teams.iter().enumerate() {
            let id = parse_name(t, "teams", field)?;
            if store::get(self.db(), Kind::Team, id).await?.is_none() {
                bad.push(crm_platform::FieldViolation::new(
                    format!("{field}[{i}]"),
                    format!("team `{t}` does not exist"),
                ));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(bad))
        }
    }

    // ---- users ----------------------------------------------------------------

    pub async fn create_user(&self, caller: &Caller, mut user: pb::User) -> Result<pb::User> {
        self.require(caller, ADMIN, "users").await?;
        resources::validate_user(&user, "user")?;
        self.teams_exist(&user.teams, "user.teams").await?;
        let id = parse_name(&user.name, "users", "user.name")?.to_owned();
        let t = timestamp(now());
        user.teams = user.teams.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
        user.create_time = Some(t);
        user.update_time = Some(t);
        user.etag = String::new();
        let data = encode(&user);
        let txn = begin_write(self.db()).await?;
        store::insert(&txn, Kind::User, &id, &user.name, data.clone(), &[]).await?;
        let change = user_change(&user, false, "permissions.users.create", vec![], None, Some(data));
        self.commit(txn, caller, vec![change]).await?;
        user.etag = etag(1);
        Ok(user)
    }

    pub async fn get_user(&self, caller: &Caller, name: &str) -> Result<pb::User> {
        let id = parse_name(name, "users", "name")?;
        if caller.user_id != id {
            self.require(caller, "permissions.read", name).await?;
        }
        self.user_from(&store::require(self.db(), Kind::User, id, name).await?)
    }

    pub async fn list_users(&self, caller: &Caller, team: &str, after: &str, size: u32) -> Result<Page<pb::User>> {
        self.require(caller, "permissions.read", "users").await?;
        if team.is_empty() {
            return self.page(Kind::User, &[], after, size, Self::user_from).await;
        }
        parse_name(team, "teams", "team")?;
        // Membership lives in the user record: scan in id order and keep members.
        let mut items = Vec::new();
        let mut cursor = after.to_owned();
        loop {
            let rows = store::list(self.db(), Kind::User, &[], &cursor, 500).await?;
            let Some(last) = rows.last() else {
                return Ok(Page { items, next: None });
            };
            cursor = last.id.clone();
            for row in &rows {
                let u = self.user_from(row)?;
                if u.teams.iter().any(|t| t == team) {
                    items.push(u);
                    if items.len() == size as usize {
                        return Ok(Page {
                            items,
                            next: Some(row.id.clone()),
                        });
                    }
                }
            }
        }
    }

    pub async fn update_user(&self, caller: &Caller, patch: pb::User, paths: &[String]) -> Result<pb::User> {
        let id = parse_name(&patch.name, "users", "user.name")?.to_owned();
        self.require(caller, ADMIN, &patch.name).await?;
        let set = [
            (!patch.display_name.is_empty()).then_some("display_name"),
            (!patch.teams.is_empty()).then_some("teams"),
            patch.disabled.then_some("disabled"),
        ];
        let paths = mask(
            paths,
            &["display_name", "teams", "disabled"],
            set.into_iter().flatten().collect(),
            "user",
        )?;
        let e = self.edit::<pb::User>(&id, &patch.name, &patch.etag).await?;
        let mut user = e.before.clone();
        for p in &paths {
            match *p {
                "display_name" => user.display_name = patch.display_name.clone(),
                "teams" => user.teams = patch.teams.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect(),
                _ => user.disabled = patch.disabled,
            }
        }
        resources::validate_user(&user, "user")?;
        self.teams_exist(&user.teams, "user.teams").await?;
        self.save(caller, e, user, &paths).await
    }

    /// Deletes a user with its bindings; its grants are revoked.
    pub async fn delete_user(&self, caller: &Caller, name: &str, etag_in: &str) -> Result<()> {
        let id = parse_name(name, "users", "name")?.to_owned();
        self.require(caller, ADMIN, name).await?;
        let txn = begin_write(self.db()).await?;
        let row = store::require(&txn, Kind::User, &id, name).await?;
        expect_revision(etag_in, row.revision, name)?;
        let user: pb::User = decode(&row.data)?;
        let mut changes = Vec::new();
        for b in store::list(
            &txn,
            Kind::Binding,
            &[("user_id", Value::from(id.as_str()))],
            "",
            u64::MAX >> 1,
        )
        .await?
        {
            let binding = self.binding_from(&b)?;
            store::delete(&txn, Kind::Binding, &b.id).await?;
            changes.push(binding_change(&binding, true, "permissions.role_bindings.delete"));
        }
        changes.extend(self.revoke_all_grants(&txn, &id, caller).await?);
        store::delete(&txn, Kind::User, &id).await?;
        changes.push(user_change(
            &user,
            true,
            "permissions.users.delete",
            vec![],
            Some(row.data),
            None,
        ));
        self.commit(txn, caller, changes).await
    }

    // ---- teams ----------------------------------------------------------------

    pub async fn create_team(&self, caller: &Caller, mut team: pb::Team) -> Result<pb::Team> {
        self.require(caller, ADMIN, "teams").await?;
        resources::validate_team(&team, "team")?;
        let id = parse_name(&team.name, "teams", "team.name")?.to_owned();
        if !team.parent.is_empty() {
            self.teams_exist(std::slice::from_ref(&team.parent), "team.parent").await?;
        }
        let t = timestamp(now());
        team.create_time = Some(t);
        team.update_time = Some(t);
        team.etag = String::new();
        let data = encode(&team);
        let txn = begin_write(self.db()).await?;
        store::insert(&txn, Kind::Team, &id, &team.name, data.clone(), &[]).await?;
        let change = team_change(&team, false, "permissions.teams.create", vec![], None, Some(data));
        self.commit(txn, caller, vec![change]).await?;
        team.etag = etag(1);
        Ok(team)
    }

    pub async fn get_team(&self, caller: &Caller, name: &str) -> Result<pb::Team> {
        let id = parse_name(name, "teams", "name")?;
        self.require(caller, "permissions.read", name).await?;
        self.team_from(&store::require(self.db(), Kind::Team, id, name).await?)
    }

    pub async fn list_teams(&self, caller: &Caller, parent: &str, after: &str, size: u32) -> Result<Page<pb::Team>> {
        self.require(caller, "permissions.read", "teams").await?;
        let mut page = self.page(Kind::Team, &[], after, u32::MAX >> 1, Self::team_from).await?;
        if !parent.is_empty() {
            page.items.retain(|t| t.parent == parent);
        }
        let next = (page.items.len() > size as usize).then(|| page.items[size as usize - 1].name.clone());
        page.items.truncate(size as usize);
        Ok(Page {
            items: page.items,
            next: next.and_then(|n| n.strip_prefix("teams/").map(str::to_owned)),
        })
    }

    pub async fn update_team(&self, caller: &Caller, patch: pb::Team, paths: &[String]) -> Result<pb::Team> {
        let id = parse_name(&patch.name, "teams", "team.name")?.to_owned();
        self.require(caller, ADMIN, &patch.name).await?;
        let set = [
            (!patch.display_name.is_empty()).then_some("display_name"),
            (!patch.parent.is_empty()).then_some("parent"),
        ];
        let paths = mask(
            paths,
            &["display_name", "parent"],
            set.into_iter().flatten().collect(),
            "team",
        )?;
        let e = self.edit::<pb::Team>(&id, &patch.name, &patch.etag).await?;
        let mut team = e.before.clone();
        for p in &paths {
            match *p {
                "display_name" => team.display_name = patch.display_name.clone(),
                _ => team.parent = patch.parent.clone(),
            }
        }
        resources::validate_team(&team, "team")?;
        if team.parent != e.before.parent && !team.parent.is_empty() {
            self.teams_exist(std::slice::from_ref(&team.parent), "team.parent").await?;
            let parent_id = parse_name(&team.parent, "teams", "team.parent")?.to_owned();
            // Against the hierarchy as stored now, with other moves held off: two
            // concurrent moves must not close a cycle between them.
            store::lock_teams(&e.txn).await?;
            let mut tree = Vec::new();
            for row in store::all(&e.txn, Kind::Team).await? {
                let t: pb::Team = decode(&row.data)?;
                tree.push((row.id, t.parent.trim_start_matches("teams/").to_owned()));
            }
            let tree = crate::domain::policy::Directory::new(Default::default(), &tree);
            if tree.subtree([&id]).contains(&parent_id) {
                return Err(Error::invalid(
                    "team.parent",
                    "a team cannot move below one of its own sub-teams",
                ));
            }
        }
        self.save(caller, e, team, &paths).await
    }

    pub async fn delete_team(&self, caller: &Caller, name: &str, etag_in: &str) -> Result<()> {
        let id = parse_name(name, "teams", "name")?.to_owned();
        self.require(caller, ADMIN, name).await?;
        let txn = begin_write(self.db()).await?;
        let row = store::require(&txn, Kind::Team, &id, name).await?;
        expect_revision(etag_in, row.revision, name)?;
        for t in store::all(&txn, Kind::Team).await? {
            let team: pb::Team = decode(&t.data)?;
            if team.parent == name {
                return Err(Error::FailedPrecondition {
                    reason: "TEAM_HAS_SUBTEAMS",
                    subject: name.into(),
                    message: format!("`{name}` still has sub-teams (e.g. {}): move or delete them first", team.name),
                });
            }
        }
        for u in store::all(&txn, Kind::User).await? {
            let user: pb::User = decode(&u.data)?;
            if user.teams.iter().any(|t| t == name) {
                return Err(Error::FailedPrecondition {
                    reason: "TEAM_HAS_MEMBERS",
                    subject: name.into(),
                    message: format!("`{name}` still has members (e.g. {}): remove them first", user.name),
                });
            }
        }
        let team: pb::Team = decode(&row.data)?;
        store::delete(&txn, Kind::Team, &id).await?;
        let change = team_change(&team, true, "permissions.teams.delete", vec![], Some(row.data), None);
        self.commit(txn, caller, vec![change]).await
    }

    // ---- roles ----------------------------------------------------------------

    pub async fn create_role(&self, caller: &Caller, role: pb::Role) -> Result<pb::Role> {
        self.require(caller, ADMIN, "roles").await?;
        let txn = begin_write(self.db()).await?;
        let (role, change) = self.insert_role(&txn, role).await?;
        self.commit(txn, caller, vec![change]).await?;
        Ok(role)
    }

    async fn insert_role(&self, txn: &DatabaseTransaction, mut role: pb::Role) -> Result<(pb::Role, Change)> {
        resources::validate_role(&role, "role")?;
        let id = role.name.trim_start_matches("roles/").to_owned();
        if role.clearance == 0 {
            role.clearance = pb::Classification::Public as i32;
        }
        let t = timestamp(now());
        role.create_time = Some(t);
        role.update_time = Some(t);
        role.etag = String::new();
        let data = encode(&role);
        store::insert(txn, Kind::Role, &id, &role.name, data.clone(), &[]).await?;
        let change = role_change(&role, false, "permissions.roles.create", vec![], None, Some(data));
        role.etag = etag(1);
        Ok((role, change))
    }

    pub async fn get_role(&self, caller: &Caller, name: &str) -> Result<pb::Role> {
        self.require(caller, "permissions.read", name).await?;
        let id = name
            .strip_prefix("roles/")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Error::invalid("name", "must be `roles/{role}`"))?;
        self.role_from(&store::require(self.db(), Kind::Role, id, name).await?)
    }

    pub async fn list_roles(&self, caller: &Caller, after: &str, size: u32) -> Result<Page<pb::Role>> {
        self.require(caller, "permissions.read", "roles").await?;
        self.page(Kind::Role, &[], after, size, Self::role_from).await
    }

    pub async fn update_role(&self, caller: &Caller, patch: pb::Role, paths: &[String]) -> Result<pb::Role> {
        self.require(caller, ADMIN, &patch.name).await?;
        let id = patch
            .name
            .strip_prefix("roles/")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Error::invalid("role.name", "must be `roles/{role}`"))?
            .to_owned();
        let set = [
            (!patch.display_name.is_empty()).then_some("display_name"),
            (!patch.description.is_empty()).then_some("description"),
            (!patch.permissions.is_empty()).then_some("permissions"),
            (patch.clearance != 0).then_some("clearance"),
        ];
        let paths = mask(
            paths,
            &["display_name", "description", "permissions", "clearance"],
            set.into_iter().flatten().collect(),
            "role",
        )?;
        let e = self.edit::<pb::Role>(&id, &patch.name, &patch.etag).await?;
        let mut role = e.before.clone();
        for p in &paths {
            match *p {
                "display_name" => role.display_name = patch.display_name.clone(),
                "description" => role.description = patch.description.clone(),
                "permissions" => role.permissions = patch.permissions.clone(),
                _ => role.clearance = patch.clearance,
            }
        }
        resources::validate_role(&role, "role")?;
        self.save(caller, e, role, &paths).await
    }

    pub async fn delete_role(&self, caller: &Caller, name: &str, etag_in: &str) -> Result<()> {
        self.require(caller, ADMIN, name).await?;
        let id = name
            .strip_prefix("roles/")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Error::invalid("name", "must be `roles/{role}`"))?
            .to_owned();
        let txn = begin_write(self.db()).await?;
        let row = store::require(&txn, Kind::Role, &id, name).await?;
        expect_revision(etag_in, row.revision, name)?;
        if !store::list(&txn, Kind::Binding, &[("role_id", Value::from(id.as_str()))], "", 1)
            .await?
            .is_empty()
        {
            return Err(Error::FailedPrecondition {
                reason: "ROLE_IN_USE",
                subject: name.into(),
                message: format!("`{name}` is still bound to users: delete those role bindings first"),
            });
        }
        let role: pb::Role = decode(&row.data)?;
        store::delete(&txn, Kind::Role, &id).await?;
        let change = role_change(&role, true, "permissions.roles.delete", vec![], Some(row.data), None);
        self.commit(txn, caller, vec![change]).await
    }

    // ---- role bindings ----------------------------------------------------------

    pub async fn create_binding(
        &self,
        caller: &Caller,
        binding: pb::RoleBinding,
        key: Option<idempotency::Key>,
    ) -> Result<pb::RoleBinding> {
        self.require(caller, ADMIN, "roleBindings").await?;
        resources::validate_binding(&binding)?;
        if let Some(k) = &key
            && let Some(name) = idempotency::lookup(self.db(), k).await?
        {
            return self.get_binding(caller, &name).await;
        }
        let txn = begin_write(self.db()).await?;
        let (binding, change) = self.insert_binding(&txn, binding, &caller.user_id, None).await?;
        if let Some(k) = &key
            && matches!(idempotency::record(&txn, k, &binding.name).await?, Recorded::Duplicate)
        {
            drop(txn);
            let name = idempotency::lookup(self.db(), k).await?.unwrap_or_default();
            return self.get_binding(caller, &name).await;
        }
        self.commit(txn, caller, vec![change]).await?;
        Ok(binding)
    }

    /// Inserts a binding after checking its user and role exist. `id` is chosen
    /// by bootstrap (deterministic), otherwise a new UUID.
    async fn insert_binding(
        &self,
        txn: &DatabaseTransaction,
        mut binding: pb::RoleBinding,
        creator: &str,
        id: Option<String>,
    ) -> Result<(pb::RoleBinding, Change)> {
        let user_id = parse_name(&binding.user, "users", "role_binding.user")?.to_owned();
        let role_id = binding.role.trim_start_matches("roles/").to_owned();
        let mut missing = Vec::new();
        if store::get(txn, Kind::User, &user_id).await?.is_none() {
            missing.push(crm_platform::FieldViolation::new(
                "role_binding.user",
                format!("user `{}` does not exist", binding.user),
            ));
        }
        if store::get(txn, Kind::Role, &role_id).await?.is_none() {
            missing.push(crm_platform::FieldViolation::new(
                "role_binding.role",
                format!("role `{}` does not exist", binding.role),
            ));
        }
        if !missing.is_empty() {
            return Err(Error::InvalidArgument(missing));
        }
        let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let t = now();
        binding.name = format!("roleBindings/{id}");
        binding.creator = creator.to_owned();
        binding.create_time = Some(timestamp(t));
        binding.review_due_time = Some(timestamp(t + self.settings().review_interval));
        binding.review_time = None;
        binding.reviewer = String::new();
        binding.last_used_time = None;
        let data = encode(&binding);
        store::insert(
            txn,
            Kind::Binding,
            &id,
            &binding.name,
            data,
            &[("user_id", user_id.into()), ("role_id", role_id.into())],
        )
        .await?;
        let change = binding_change(&binding, false, "permissions.role_bindings.create");
        Ok((binding, change))
    }

    pub async fn get_binding(&self, caller: &Caller, name: &str) -> Result<pb::RoleBinding> {
        let id = parse_name(name, "roleBindings", "name")?;
        let row = store::require(self.db(), Kind::Binding, id, name).await?;
        let b = self.binding_from(&row)?;
        if b.user != format!("users/{}", caller.user_id) {
            self.require(caller, "permissions.read", name).await?;
        }
        Ok(b)
    }

    pub async fn list_bindings(
        &self,
        caller: &Caller,
        user: &str,
        role: &str,
        after: &str,
        size: u32,
    ) -> Result<Page<pb::RoleBinding>> {
        let mut filter = Vec::new();
        if !user.is_empty() {
            filter.push(("user_id", Value::from(parse_name(user, "users", "user")?)));
        }
        if !role.is_empty() {
            let id = role
                .strip_prefix("roles/")
                .filter(|id| !id.is_empty())
                .ok_or_else(|| Error::invalid("role", "must be `roles/{role}`"))?;
            filter.push(("role_id", Value::from(id)));
        }
        if user != format!("users/{}", caller.user_id) {
            self.require(caller, "permissions.read", "roleBindings").await?;
        }
        self.page(Kind::Binding, &filter, after, size, Self::binding_from).await
    }

    pub async fn delete_binding(&self, caller: &Caller, name: &str) -> Result<()> {
        let id = parse_name(name, "roleBindings", "name")?.to_owned();
        self.require(caller, ADMIN, name).await?;
        let txn = begin_write(self.db()).await?;
        let row = store::require(&txn, Kind::Binding, &id, name).await?;
        let binding = self.binding_from(&row)?;
        store::delete(&txn, Kind::Binding, &id).await?;
        let change = binding_change(&binding, true, "permissions.role_bindings.delete");
        self.commit(txn, caller, vec![change]).await
    }

    /// An access review's "still needed": the next review falls due later.
    pub async fn confirm_binding(&self, caller: &Caller, name: &str) -> Result<pb::RoleBinding> {
        let id = parse_name(name, "roleBindings", "name")?.to_owned();
        self.require(caller, "permissions.review", name).await?;
        let txn = begin_write(self.db()).await?;
        let row = store::require(&txn, Kind::Binding, &id, name).await?;
        let mut binding = self.binding_from(&row)?;
        if binding.user == format!("users/{}", caller.user_id) {
            return Err(Error::FailedPrecondition {
                reason: "SELF_REVIEW",
                subject: name.into(),
                message: "nobody confirms their own access: ask another reviewer".into(),
            });
        }
        let t = now();
        binding.review_time = Some(timestamp(t));
        binding.reviewer = caller.user_id.clone();
        binding.review_due_time = Some(timestamp(t + self.settings().review_interval));
        let mut stored = binding.clone();
        stored.last_used_time = None;
        store::update(&txn, Kind::Binding, &id, name, row.revision, encode(&stored), &[]).await?;
        let change = binding_change(&binding, false, "permissions.role_bindings.confirm");
        self.commit(txn, caller, vec![change]).await?;
        Ok(binding)
    }
}

/// Every start: the default roles this database has not seen yet, the `service`
/// role's default permissions, then the configured administrators (role `admin`,
/// scope ALL) and service accounts (role `service`, scope ALL).
pub(super) async fn bootstrap(
    p: &Permissions,
    defaults: &[pb::Role],
    admins: &[String],
    services: &[String],
    senders: &[String],
    exporters: &[String],
) -> Result<()> {
    let system = Caller {
        user_id: String::new(),
        ..Caller::default()
    };
    let txn = begin_write(p.db()).await?;
    let mut changes = Vec::new();
    // Each default role is created once, the first time this version knows it (so
    // a role added by an upgrade appears; one an administrator deleted stays gone).
    for role in defaults {
        let id = role.name.trim_start_matches("roles/");
        let marker = format!("role_seeded:{id}");
        if store::meta(&txn, &marker).await? != 0 {
            continue;
        }
        if store::get(&txn, Kind::Role, id).await?.is_none() {
            let (_, change) = p.insert_role(&txn, role.clone()).await?;
            changes.push(change);
        }
        store::set_meta(&txn, &marker, 1).await?;
    }
    // The `service` role is the system's own: it keeps at least its default
    // permissions and clearance, which an upgrade may have widened.
    if let Some(default) = defaults.iter().find(|r| r.name == "roles/service")
        && let Some(row) = store::get(&txn, Kind::Role, "service").await?
    {
        let mut role: pb::Role = decode(&row.data)?;
        let before = role.clone();
        for perm in &default.permissions {
            if !role.permissions.contains(perm) {
                role.permissions.push(perm.clone());
            }
        }
        role.clearance = role.clearance.max(default.clearance);
        if role != before {
            role.update_time = Some(timestamp(now()));
            let data = encode(&role);
            store::update(&txn, Kind::Role, "service", &role.name, row.revision, data.clone(), &[]).await?;
            changes.push(role_change(
                &role,
                false,
                "permissions.roles.update",
                vec!["permissions".into(), "clearance".into()],
                Some(row.data),
                Some(data),
            ));
        }
    }
    for (users, role) in [
        (admins, "admin"),
        (services, "service"),
        (senders, "campaign_sender"),
        (exporters, "data_exporter"),
    ] {
        for user in users {
            let name = format!("users/{user}");
            if store::get(&txn, Kind::User, user).await?.is_none() {
                let t = timestamp(now());
                let record = pb::User {
                    name: name.clone(),
                    display_name: user.clone(),
                    create_time: Some(t),
                    update_time: Some(t),
                    ..pb::User::default()
                };
                resources::validate_user(&record, "permissions_service.bootstrap")?;
                let data = encode(&record);
                store::insert(&txn, Kind::User, user, &name, data.clone(), &[]).await?;
                changes.push(user_change(
                    &record,
                    false,
                    "permissions.users.create",
                    vec![],
                    None,
                    Some(data),
                ));
            }
            let id = format!("bootstrap-{role}-{user}");
            if store::get(&txn, Kind::Binding, &id).await?.is_none() && store::get(&txn, Kind::Role, role).await?.is_some() {
                let binding = pb::RoleBinding {
                    user: name,
                    role: format!("roles/{role}"),
                    scope: pb::Scope::All as i32,
                    ..pb::RoleBinding::default()
                };
                let (_, change) = p.insert_binding(&txn, binding, "bootstrap", Some(id)).await?;
                changes.push(change);
            }
        }
    }
    if changes.is_empty() {
        txn.commit().await?;
        return Ok(());
    }
    p.commit(txn, &system, changes).await
}

pub(super) fn user_change(
    user: &pb::User,
    deleted: bool,
    action: &'static str,
    fields: Vec<String>,
    before: Option<Vec<u8>>,
    after: Option<Vec<u8>>,
) -> Change {
    Change {
        event_type: "crm.permissions.v1.UserChanged",
        subject: user.name.clone(),
        data: encode(&pb::UserChanged {
            user: Some(user.clone()),
            deleted,
        }),
        action,
        fields,
        before,
        after,
    }
}

fn team_change(
    team: &pb::Team,
    deleted: bool,
    action: &'static str,
    fields: Vec<String>,
    before: Option<Vec<u8>>,
    after: Option<Vec<u8>>,
) -> Change {
    Change {
        event_type: "crm.permissions.v1.TeamChanged",
        subject: team.name.clone(),
        data: encode(&pb::TeamChanged {
            team: Some(team.clone()),
            deleted,
        }),
        action,
        fields,
        before,
        after,
    }
}

fn role_change(
    role: &pb::Role,
    deleted: bool,
    action: &'static str,
    fields: Vec<String>,
    before: Option<Vec<u8>>,
    after: Option<Vec<u8>>,
) -> Change {
    Change {
        event_type: "crm.permissions.v1.RoleChanged",
        subject: role.name.clone(),
        data: encode(&pb::RoleChanged {
            role: Some(role.clone()),
            deleted,
        }),
        action,
        fields,
        before,
        after,
    }
}

pub(super) fn binding_change(binding: &pb::RoleBinding, deleted: bool, action: &'static str) -> Change {
    let data = encode(binding);
    Change {
        event_type: "crm.permissions.v1.RoleBindingChanged",
        subject: binding.name.clone(),
        data: encode(&pb::RoleBindingChanged {
            role_binding: Some(binding.clone()),
            deleted,
        }),
        action,
        fields: vec![],
        before: deleted.then(|| data.clone()),
        after: (!deleted).then_some(data),
    }
}
