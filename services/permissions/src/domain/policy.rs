//! Policy evaluation: whether a subject (a user's bindings and grants, or a
//! self-service customer) holds a permission over a record, which records it may
//! read, and how much of a record it may see. Pure: callers load the data.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

/// Classification levels, ordered: a clearance sees its own level and below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Level {
    #[default]
    Public = 1,
    Internal = 2,
    Sensitive = 3,
    Confidential = 4,
}

impl Level {
    /// From the proto enum value; unknown or unspecified is `None`.
    pub fn from_i32(v: i32) -> Option<Self> {
        match v {
            1 => Some(Self::Public),
            2 => Some(Self::Internal),
            3 => Some(Self::Sensitive),
            4 => Some(Self::Confidential),
            _ => None,
        }
    }
}

/// How far a binding reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Own,
    Team,
    TeamSubtree,
    All,
}

#[derive(Debug, Clone)]
pub struct Role {
    pub permissions: Vec<String>,
    pub clearance: Level,
}

/// Teams and roles: small, shared by every decision.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub roles: HashMap<String, Role>,
    children: HashMap<String, Vec<String>>,
}

impl Directory {
    /// `teams` are (id, parent id or empty).
    pub fn new(roles: HashMap<String, Role>, teams: &[(String, String)]) -> Self {
        let mut children: HashMap<String, Vec<String>> = HashMap::new();
        for (id, parent) in teams {
            if !parent.is_empty() {
                children.entry(parent.clone()).or_default().push(id.clone());
            }
        }
        Self { roles, children }
    }

    /// `roots` and every team below them.
    pub fn subtree<'a>(&self, roots: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut stack: Vec<&String> = roots.into_iter().collect();
        while let Some(team) = stack.pop() {
            if out.insert(team.clone()) {
                stack.extend(self.children.get(team).into_iter().flatten());
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub name: String,
    pub role: String,
    pub scope: Scope,
}

/// What an approved grant applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One resource (and its sub-resources).
    Resource(String),
    /// Every record of a team and the teams below it.
    Team(String),
}

impl Target {
    pub fn parse(resource: &str) -> Option<Self> {
        let (collection, id) = resource.split_once('/')?;
        if id.is_empty() {
            return None;
        }
        Some(if collection == "teams" {
            Self::Team(id.to_owned())
        } else {
            Self::Resource(resource.to_owned())
        })
    }
}

#[derive(Debug, Clone)]
pub struct GrantInForce {
    pub name: String,
    pub permissions: Vec<String>,
    pub target: Target,
    pub clearance: Option<Level>,
    pub expire_time: DateTime<Utc>,
}

/// Who is asking, with everything a decision needs about them.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub user_id: String,
    /// Known to the permissions service and not disabled.
    pub active: bool,
    pub teams: Vec<String>,
    pub bindings: Vec<Binding>,
    pub grants: Vec<GrantInForce>,
    /// The user's teams and every team below them (see [`Subject::resolve`]).
    pub subtree: BTreeSet<String>,
}

impl Subject {
    /// Computes the team subtree once, so TEAM_SUBTREE checks are a set lookup.
    pub fn resolve(mut self, dir: &Directory) -> Self {
        self.subtree = dir.subtree(&self.teams);
        self
    }
}

/// What a customer may do with its own record (self-service tokens).
#[derive(Debug, Clone)]
pub struct SelfService {
    pub permissions: Vec<String>,
    pub clearance: Level,
}

/// The record a check is about.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub name: &'a str,
    pub owner_user_id: &'a str,
    pub team_id: &'a str,
}

impl Record<'_> {
    /// A collection (`customers`) rather than one record.
    fn is_collection(&self) -> bool {
        !self.name.contains('/')
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
    /// The binding or grant that allows it.
    pub granted_by: String,
    /// A grant's expiry, when the decision rests on one.
    pub valid_until: Option<DateTime<Utc>>,
}

impl Decision {
    fn deny(reason: impl Into<String>) -> Self {
        Self {
            allowed: false,
            reason: reason.into(),
            granted_by: String::new(),
            valid_until: None,
        }
    }

    fn allow(reason: String, granted_by: &str, valid_until: Option<DateTime<Utc>>) -> Self {
        Self {
            allowed: true,
            reason,
            granted_by: granted_by.to_owned(),
            valid_until,
        }
    }
}

/// On a collection, most permissions act on every record (stream the feed, import,
/// administer): only a binding with scope ALL gives them. Reads are narrowed to the
/// caller's read scope afterwards, and a create makes a new record, so any scope
/// gives those.
pub fn filtered_per_record(permission: &str) -> bool {
    permission.ends_with(".read") || permission.ends_with(".create")
}

/// Does a role's permission pattern cover `permission`? `*`, `domain.*` or exact.
pub fn permits(pattern: &str, permission: &str) -> bool {
    pattern == "*"
        || pattern == permission
        || pattern
            .strip_suffix(".*")
            .is_some_and(|domain| permission.split_once('.').is_some_and(|(d, _)| d == domain))
}

/// A permission or pattern: `customer.read`, `customer.*`, `*`.
pub fn valid_permission(p: &str, allow_wildcard: bool) -> bool {
    if p == "*" {
        return allow_wildcard;
    }
    let parts: Vec<&str> = p.split('.').collect();
    parts.len() == 2
        && parts.iter().enumerate().all(|(i, part)| {
            (allow_wildcard && i == 1 && *part == "*")
                || (!part.is_empty()
                    && part.len() <= 64
                    && part.starts_with(|c: char| c.is_ascii_lowercase())
                    && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        })
}

/// A self-service principal's own record: `customers/{id}` and below.
fn own_record(customer_id: &str, name: &str) -> bool {
    let own = format!("customers/{customer_id}");
    name == own || name.strip_prefix(&own).is_some_and(|rest| rest.starts_with('/'))
}

/// Does `scope` reach `record` for `subject`?
fn reaches(subject: &Subject, scope: Scope, record: &Record<'_>) -> bool {
    let own = !record.owner_user_id.is_empty() && record.owner_user_id == subject.user_id;
    match scope {
        Scope::All => true,
        Scope::Own => own,
        Scope::Team => own || (!record.team_id.is_empty() && subject.teams.iter().any(|t| t == record.team_id)),
        Scope::TeamSubtree => own || (!record.team_id.is_empty() && subject.subtree.contains(record.team_id)),
    }
}

fn grant_reaches(dir: &Directory, grant: &GrantInForce, record: &Record<'_>) -> bool {
    match &grant.target {
        Target::Resource(name) => {
            record.name == name || record.name.strip_prefix(name.as_str()).is_some_and(|r| r.starts_with('/'))
        }
        Target::Team(team) => !record.team_id.is_empty() && dir.subtree([team]).contains(record.team_id),
    }
}

/// May `subject` (or the self-service `customer_id`) do `permission` on `record`?
/// A collection is allowed when any binding or grant holds the permission; the
/// records themselves are then filtered by [`read_scope`] or checked one by one.
pub fn check(
    dir: &Directory,
    subject: &Subject,
    customer_id: Option<&str>,
    self_service: &SelfService,
    permission: &str,
    record: &Record<'_>,
    now: DateTime<Utc>,
) -> Decision {
    if let Some(customer) = customer_id {
        let held = self_service.permissions.iter().any(|p| permits(p, permission));
        return if held && own_record(customer, record.name) {
            Decision::allow("self-service on the customer's own record".into(), "", None)
        } else {
            Decision::deny("a self-service token reaches only the customer's own record")
        };
    }
    if !subject.active {
        return Decision::deny(format!(
            "user `{}` is unknown to the permissions service or disabled",
            subject.user_id
        ));
    }
    let collection = record.is_collection();
    for b in &subject.bindings {
        let Some(role) = dir.roles.get(&b.role) else { continue };
        if !role.permissions.iter().any(|p| permits(p, permission)) {
            continue;
        }
        let allowed = if collection {
            b.scope == Scope::All || filtered_per_record(permission)
        } else {
            reaches(subject, b.scope, record)
        };
        if allowed {
            return Decision::allow(format!("role `{}` with scope {:?}", b.role, b.scope), &b.name, None);
        }
    }
    for g in &subject.grants {
        if g.expire_time <= now || !g.permissions.iter().any(|p| permits(p, permission)) {
            continue;
        }
        // A grant reaches its target only; on a collection it opens reads, which
        // the read scope then narrows to the target.
        let allowed = if collection {
            permission.ends_with(".read")
        } else {
            grant_reaches(dir, g, record)
        };
        if allowed {
            return Decision::allow("temporary grant".into(), &g.name, Some(g.expire_time));
        }
    }
    Decision::deny(format!("no role or grant gives `{permission}` on `{}`", record.name))
}

/// Which records a binding or grant reaches, as filter terms; and the earliest
/// grant expiry it rests on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scoped {
    pub all: bool,
    pub owner_user_ids: BTreeSet<String>,
    pub team_ids: BTreeSet<String>,
    pub resources: BTreeSet<String>,
    pub valid_until: Option<DateTime<Utc>>,
}

impl Scoped {
    pub fn reaches(&self, r: &Record<'_>) -> bool {
        self.all
            || (!r.owner_user_id.is_empty() && self.owner_user_ids.contains(r.owner_user_id))
            || (!r.team_id.is_empty() && self.team_ids.contains(r.team_id))
            || self.resources.contains(r.name)
    }

    fn absorb(&mut self, other: &Scoped) {
        self.all |= other.all;
        self.owner_user_ids.extend(other.owner_user_ids.iter().cloned());
        self.team_ids.extend(other.team_ids.iter().cloned());
        self.resources.extend(other.resources.iter().cloned());
        self.valid_until = match (self.valid_until, other.valid_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// A clearance and the records it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearanceRule {
    pub clearance: Level,
    pub reach: Scoped,
}

/// One rule per binding and grant that holds `permission`: what it reaches and
/// with which clearance. A grant without its own clearance carries the highest one
/// the user's roles give for the permission (at least internal).
pub fn rules(
    dir: &Directory,
    subject: &Subject,
    customer_id: Option<&str>,
    self_service: &SelfService,
    permission: &str,
    now: DateTime<Utc>,
) -> Vec<ClearanceRule> {
    if let Some(customer) = customer_id {
        if !self_service.permissions.iter().any(|p| permits(p, permission)) {
            return Vec::new();
        }
        let mut reach = Scoped::default();
        reach.resources.insert(format!("customers/{customer}"));
        return vec![ClearanceRule {
            clearance: self_service.clearance,
            reach,
        }];
    }
    if !subject.active {
        return Vec::new();
    }
    let mut out = Vec::new();
    for b in &subject.bindings {
        let Some(role) = dir.roles.get(&b.role) else { continue };
        if !role.permissions.iter().any(|p| permits(p, permission)) {
            continue;
        }
        let mut reach = Scoped::default();
        reach.owner_user_ids.insert(subject.user_id.clone());
        match b.scope {
            Scope::All => reach.all = true,
            Scope::Own => {}
            Scope::Team => reach.team_ids.extend(subject.teams.iter().cloned()),
            Scope::TeamSubtree => reach.team_ids.extend(subject.subtree.iter().cloned()),
        }
        out.push(ClearanceRule {
            clearance: role.clearance,
            reach,
        });
    }
    let from_roles = out
        .iter()
        .map(|r| r.clearance)
        .max()
        .unwrap_or(Level::Internal)
        .max(Level::Internal);
    for g in &subject.grants {
        if g.expire_time <= now || !g.permissions.iter().any(|p| permits(p, permission)) {
            continue;
        }
        let mut reach = Scoped {
            valid_until: Some(g.expire_time),
            ..Scoped::default()
        };
        match &g.target {
            Target::Resource(name) => {
                reach.resources.insert(name.clone());
            }
            Target::Team(team) => reach.team_ids.extend(dir.subtree([team])),
        }
        out.push(ClearanceRule {
            clearance: g.clearance.unwrap_or(from_roles),
            reach,
        });
    }
    out
}

/// Which records the rules reach, together.
pub fn read_scope(rules: &[ClearanceRule]) -> Scoped {
    let mut out = Scoped::default();
    for r in rules {
        out.absorb(&r.reach);
    }
    if out.all {
        out.owner_user_ids.clear();
        out.team_ids.clear();
        out.resources.clear();
    }
    out
}

/// The clearance for one record: the highest among the rules that reach it.
pub fn clearance_at(rules: &[ClearanceRule], record: &Record<'_>) -> Option<Level> {
    rules.iter().filter(|r| r.reach.reaches(record)).map(|r| r.clearance).max()
}

/// May `subject` give `permission` over `target` at `clearance` to someone else?
/// Only through its own role bindings (never through a temporary grant), with a
/// role clearance at least the one given, and a scope covering the whole target:
/// ALL for a single record (its owner and team are not known here), ALL or a
/// TEAM_SUBTREE above the team for a team.
pub fn may_give(dir: &Directory, subject: &Subject, permission: &str, target: &Target, clearance: Option<Level>) -> bool {
    subject.active
        && subject.bindings.iter().any(|b| {
            let Some(role) = dir.roles.get(&b.role) else { return false };
            role.permissions.iter().any(|p| permits(p, permission))
                && clearance.is_none_or(|c| role.clearance >= c)
                && match (b.scope, target) {
                    (Scope::All, _) => true,
                    (Scope::TeamSubtree, Target::Team(team)) => subject.subtree.contains(team),
                    _ => false,
                }
        })
}

/// What a field of `level` looks like to `clearance`: visible up to the clearance,
/// masked one level above, hidden beyond (and hidden to someone without access).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Visible,
    Masked,
    Hidden,
}

pub fn visibility(level: Level, clearance: Option<Level>) -> Visibility {
    match clearance {
        None => Visibility::Hidden,
        Some(c) if level <= c => Visibility::Visible,
        Some(c) if level as i32 == c as i32 + 1 => Visibility::Masked,
        Some(_) => Visibility::Hidden,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Directory {
        let roles = HashMap::from([
            (
                "sales_manager".to_owned(),
                Role {
                    permissions: vec!["customer.*".into()],
                    clearance: Level::Sensitive,
                },
            ),
            (
                "agent".to_owned(),
                Role {
                    permissions: vec!["customer.read".into()],
                    clearance: Level::Internal,
                },
            ),
        ]);
        let teams = [
            ("east".to_owned(), String::new()),
            ("shanghai".to_owned(), "east".to_owned()),
            ("pudong".to_owned(), "shanghai".to_owned()),
            ("west".to_owned(), String::new()),
        ];
        Directory::new(roles, &teams)
    }

    fn user(role: &str, scope: Scope, teams: &[&str]) -> Subject {
        Subject {
            user_id: "u1".into(),
            active: true,
            teams: teams.iter().map(|t| (*t).to_owned()).collect(),
            bindings: vec![Binding {
                name: "roleBindings/b1".into(),
                role: role.into(),
                scope,
            }],
            grants: vec![],
            subtree: BTreeSet::new(),
        }
        .resolve(&dir())
    }

    fn rec<'a>(name: &'a str, owner: &'a str, team: &'a str) -> Record<'a> {
        Record {
            name,
            owner_user_id: owner,
            team_id: team,
        }
    }

    const SS: SelfService = SelfService {
        permissions: Vec::new(),
        clearance: Level::Confidential,
    };

    #[test]
    fn scopes_reach_what_they_should() {
        let d = dir();
        let now = Utc::now();
        let manager = user("sales_manager", Scope::TeamSubtree, &["east"]);
        let team = user("sales_manager", Scope::Team, &["shanghai"]);
        let own = user("sales_manager", Scope::Own, &["east"]);
        let cases = [
            (&manager, rec("customers/1", "x", "pudong"), true),
            (&manager, rec("customers/1", "x", "west"), false),
            (&manager, rec("customers/1", "u1", "west"), true),
            (&team, rec("customers/1", "x", "shanghai"), true),
            (&team, rec("customers/1", "x", "pudong"), false),
            (&own, rec("customers/1", "u1", ""), true),
            (&own, rec("customers/1", "x", "east"), false),
            // On the collection only reads and creates pass with a narrow scope.
            (&own, rec("customers", "", ""), false),
        ];
        for (subject, record, expected) in cases {
            let d = check(&d, subject, None, &SS, "customer.update", &record, now);
            assert_eq!(d.allowed, expected, "{record:?}: {}", d.reason);
        }
        let agent = user("agent", Scope::All, &[]);
        assert!(!check(&d, &agent, None, &SS, "customer.update", &rec("customers/1", "", ""), now).allowed);
        assert!(check(&d, &agent, None, &SS, "customer.read", &rec("customers/1", "", ""), now).allowed);
    }

    #[test]
    fn disabled_and_unknown_users_are_denied() {
        let mut s = user("sales_manager", Scope::All, &[]);
        s.active = false;
        assert!(
            !check(
                &dir(),
                &s,
                None,
                &SS,
                "customer.read",
                &rec("customers/1", "", ""),
                Utc::now()
            )
            .allowed
        );
    }

    #[test]
    fn grants_work_until_they_expire() {
        let d = dir();
        let now = Utc::now();
        let mut s = user("agent", Scope::Own, &[]);
        s.grants.push(GrantInForce {
            name: "grants/g".into(),
            permissions: vec!["customer.update".into()],
            target: Target::parse("customers/7").unwrap(),
            clearance: Some(Level::Sensitive),
            expire_time: now + chrono::Duration::minutes(5),
        });
        let r = rec("customers/7", "x", "");
        let ok = check(&d, &s, None, &SS, "customer.update", &r, now);
        assert!(ok.allowed);
        assert_eq!(ok.valid_until, Some(now + chrono::Duration::minutes(5)));
        assert!(!check(&d, &s, None, &SS, "customer.update", &rec("customers/8", "x", ""), now).allowed);
        let later = now + chrono::Duration::minutes(6);
        assert!(!check(&d, &s, None, &SS, "customer.update", &r, later).allowed);
        let at = |t| clearance_at(&rules(&d, &s, None, &SS, "customer.update", t), &r);
        assert_eq!(at(now), Some(Level::Sensitive));
        assert_eq!(at(later), None);
    }

    #[test]
    fn clearance_follows_the_reach_of_each_role_and_grant() {
        let d = dir();
        let now = Utc::now();
        // An agent (internal, ALL) who is also a manager (sensitive) of shanghai.
        let mut s = user("agent", Scope::All, &["shanghai"]);
        s.bindings.push(Binding {
            name: "roleBindings/b2".into(),
            role: "sales_manager".into(),
            scope: Scope::TeamSubtree,
        });
        s.grants.push(GrantInForce {
            name: "grants/g".into(),
            permissions: vec!["customer.read".into()],
            target: Target::parse("customers/7").unwrap(),
            clearance: Some(Level::Confidential),
            expire_time: now + chrono::Duration::minutes(5),
        });
        let rules = rules(&d, &s.resolve(&d), None, &SS, "customer.read", now);
        assert_eq!(
            clearance_at(&rules, &rec("customers/1", "x", "pudong")),
            Some(Level::Sensitive)
        );
        assert_eq!(clearance_at(&rules, &rec("customers/2", "x", "west")), Some(Level::Internal));
        assert_eq!(
            clearance_at(&rules, &rec("customers/7", "x", "west")),
            Some(Level::Confidential)
        );
        assert!(read_scope(&rules).all);
    }

    #[test]
    fn collections_need_scope_all_except_reads_and_creates() {
        let d = dir();
        let now = Utc::now();
        let own = user("sales_manager", Scope::Own, &[]);
        let c = rec("customers", "", "");
        assert!(check(&d, &own, None, &SS, "customer.read", &c, now).allowed);
        assert!(check(&d, &own, None, &SS, "customer.create", &c, now).allowed);
        assert!(!check(&d, &own, None, &SS, "customer.import", &c, now).allowed);
        assert!(
            check(
                &d,
                &user("sales_manager", Scope::All, &[]),
                None,
                &SS,
                "customer.import",
                &c,
                now
            )
            .allowed
        );
        let mut granted = user("agent", Scope::Own, &[]);
        granted.grants.push(GrantInForce {
            name: "grants/g".into(),
            permissions: vec!["customer.events".into(), "customer.read".into()],
            target: Target::parse("customers/7").unwrap(),
            clearance: None,
            expire_time: now + chrono::Duration::minutes(5),
        });
        assert!(!check(&d, &granted, None, &SS, "customer.events", &c, now).allowed);
        assert!(check(&d, &granted, None, &SS, "customer.read", &c, now).allowed);
    }

    #[test]
    fn only_bindings_that_cover_the_target_may_give_it() {
        let d = dir();
        let manager = user("sales_manager", Scope::TeamSubtree, &["shanghai"]);
        let team = Target::parse("teams/pudong").unwrap();
        let record = Target::parse("customers/7").unwrap();
        assert!(may_give(&d, &manager, "customer.read", &team, Some(Level::Sensitive)));
        assert!(!may_give(&d, &manager, "customer.read", &team, Some(Level::Confidential)));
        assert!(!may_give(
            &d,
            &manager,
            "customer.read",
            &Target::parse("teams/east").unwrap(),
            None
        ));
        assert!(!may_give(&d, &manager, "customer.read", &record, None));
        let team_only = user("sales_manager", Scope::Team, &["shanghai"]);
        assert!(!may_give(&d, &team_only, "customer.read", &team, None));
    }

    #[test]
    fn read_scope_terms() {
        let d = dir();
        let now = Utc::now();
        let scope =
            |s: &Subject, ss: &SelfService, customer: Option<&str>, p: &str| read_scope(&rules(&d, s, customer, ss, p, now));
        let s = scope(&user("agent", Scope::TeamSubtree, &["shanghai"]), &SS, None, "customer.read");
        assert!(!s.all);
        assert_eq!(s.owner_user_ids, BTreeSet::from(["u1".to_owned()]));
        assert_eq!(s.team_ids, BTreeSet::from(["shanghai".to_owned(), "pudong".to_owned()]));
        let all = scope(&user("agent", Scope::All, &["east"]), &SS, None, "customer.read");
        assert!(all.all && all.team_ids.is_empty());
        let none = scope(&user("agent", Scope::All, &[]), &SS, None, "customer.update");
        assert_eq!(none, Scoped::default());
        let ss = SelfService {
            permissions: vec!["customer.read".into()],
            clearance: Level::Confidential,
        };
        let mine = scope(&Subject::default(), &ss, Some("c9"), "customer.read");
        assert_eq!(mine.resources, BTreeSet::from(["customers/c9".to_owned()]));
    }

    #[test]
    fn self_service_reaches_only_its_record() {
        let ss = SelfService {
            permissions: vec!["customer.read".into()],
            clearance: Level::Confidential,
        };
        let d = dir();
        let now = Utc::now();
        let s = Subject::default();
        assert!(check(&d, &s, Some("c1"), &ss, "customer.read", &rec("customers/c1", "", ""), now).allowed);
        assert!(
            check(
                &d,
                &s,
                Some("c1"),
                &ss,
                "customer.read",
                &rec("customers/c1/orders/o", "", ""),
                now
            )
            .allowed
        );
        assert!(!check(&d, &s, Some("c1"), &ss, "customer.read", &rec("customers/c10", "", ""), now).allowed);
        assert!(!check(&d, &s, Some("c1"), &ss, "customer.read", &rec("customers", "", ""), now).allowed);
        assert!(!check(&d, &s, Some("c1"), &ss, "customer.update", &rec("customers/c1", "", ""), now).allowed);
    }

    #[test]
    fn visibility_by_level() {
        use Level::*;
        assert_eq!(visibility(Internal, Some(Internal)), Visibility::Visible);
        assert_eq!(visibility(Sensitive, Some(Internal)), Visibility::Masked);
        assert_eq!(visibility(Confidential, Some(Internal)), Visibility::Hidden);
        assert_eq!(visibility(Public, None), Visibility::Hidden);
    }

    #[test]
    fn permission_patterns() {
        assert!(permits("*", "customer.read"));
        assert!(permits("customer.*", "customer.read"));
        assert!(!permits("customer.*", "customers.read"));
        assert!(!permits("customer.read", "customer.update"));
        for ok in ["customer.read", "customer.*", "*", "audit.write", "customer.define_fields"] {
            assert!(valid_permission(ok, true), "{ok}");
        }
        for bad in ["", "customer", "Customer.read", "*.read", "customer.", "a.b.c"] {
            assert!(!valid_permission(bad, true), "{bad}");
        }
        assert!(!valid_permission("customer.*", false));
    }
}
