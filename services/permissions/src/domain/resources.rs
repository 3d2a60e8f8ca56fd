//! Names and validation of the policy resources (users, teams, roles, bindings,
//! grants): every problem of a request is reported at once.

use crm_platform::{Error, FieldViolation, Result};
use crm_proto::crm::permissions::v1 as pb;

use super::policy::{Level, Scope, Target, valid_permission};

/// `{collection}/{id}` -> id, or a field violation.
pub fn parse_name<'a>(name: &'a str, collection: &str, field: &str) -> Result<&'a str> {
    name.strip_prefix(collection)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|id| valid_id(id))
        .ok_or_else(|| Error::invalid(field, format!("must be a resource name `{collection}/{{id}}`")))
}

/// User, team and binding ids: 1 to 128 of letters, digits, `-`, `_`, `.`, `@`.
pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':'))
}

fn valid_role_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn check_len(v: &mut Vec<FieldViolation>, field: &str, value: &str, max: usize) {
    if value.chars().count() > max {
        v.push(FieldViolation::new(field, format!("at most {max} characters")));
    }
    if value.chars().any(char::is_control) {
        v.push(FieldViolation::new(field, "no control characters"));
    }
}

fn finish(v: Vec<FieldViolation>) -> Result<()> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(v))
    }
}

pub fn scope_from_proto(v: i32) -> Option<Scope> {
    match pb::Scope::try_from(v).ok()? {
        pb::Scope::Own => Some(Scope::Own),
        pb::Scope::Team => Some(Scope::Team),
        pb::Scope::TeamSubtree => Some(Scope::TeamSubtree),
        pb::Scope::All => Some(Scope::All),
        pb::Scope::Unspecified => None,
    }
}

/// Checks a user; team references are checked against the store by the caller.
pub fn validate_user(u: &pb::User, prefix: &str) -> Result<()> {
    let mut v = Vec::new();
    if parse_name(&u.name, "users", "name").is_err() {
        v.push(FieldViolation::new(
            format!("{prefix}.name"),
            "must be `users/{user}`: 1 to 128 of letters, digits, - _ . @ :",
        ));
    }
    check_len(&mut v, &format!("{prefix}.display_name"), &u.display_name, 200);
    if u.teams.len() > 50 {
        v.push(FieldViolation::new(format!("{prefix}.teams"), "at most 50"));
    }
    for (i, t) in u.teams.iter().enumerate() {
        if parse_name(t, "teams", "").is_err() {
            v.push(FieldViolation::new(format!("{prefix}.teams[{i}]"), "must be `teams/{team}`"));
        }
    }
    finish(v)
}

pub fn validate_team(t: &pb::Team, prefix: &str) -> Result<()> {
    let mut v = Vec::new();
    if parse_name(&t.name, "teams", "name").is_err() {
        v.push(FieldViolation::new(format!("{prefix}.name"), "must be `teams/{team}`"));
    }
    check_len(&mut v, &format!("{prefix}.display_name"), &t.display_name, 200);
    if !t.parent.is_empty() && parse_name(&t.parent, "teams", "").is_err() {
        v.push(FieldViolation::new(
            format!("{prefix}.parent"),
            "must be `teams/{team}` or empty",
        ));
    }
    if !t.parent.is_empty() && t.parent == t.name {
        v.push(FieldViolation::new(
            format!("{prefix}.parent"),
            "a team cannot be its own parent",
        ));
    }
    finish(v)
}

pub fn validate_role(r: &pb::Role, prefix: &str) -> Result<()> {
    let mut v = Vec::new();
    if !r.name.strip_prefix("roles/").is_some_and(valid_role_id) {
        v.push(FieldViolation::new(
            format!("{prefix}.name"),
            "must be `roles/{role}` with `{role}` matching [a-z][a-z0-9_-]{0,62}",
        ));
    }
    check_len(&mut v, &format!("{prefix}.display_name"), &r.display_name, 200);
    check_len(&mut v, &format!("{prefix}.description"), &r.description, 1000);
    if r.permissions.is_empty() || r.permissions.len() > 200 {
        v.push(FieldViolation::new(
            format!("{prefix}.permissions"),
            "between 1 and 200 permissions",
        ));
    }
    for (i, p) in r.permissions.iter().enumerate() {
        if !valid_permission(p, true) {
            v.push(FieldViolation::new(
                format!("{prefix}.permissions[{i}]"),
                "a permission such as `customer.read`, a domain wildcard `customer.*`, or `*`",
            ));
        }
    }
    if r.clearance != 0 && Level::from_i32(r.clearance).is_none() {
        v.push(FieldViolation::new(
            format!("{prefix}.clearance"),
            "not a known classification",
        ));
    }
    finish(v)
}

pub fn validate_binding(b: &pb::RoleBinding) -> Result<()> {
    let mut v = Vec::new();
    if parse_name(&b.user, "users", "").is_err() {
        v.push(FieldViolation::new("role_binding.user", "required: `users/{user}`"));
    }
    if !b.role.strip_prefix("roles/").is_some_and(valid_role_id) {
        v.push(FieldViolation::new("role_binding.role", "required: `roles/{role}`"));
    }
    if scope_from_proto(b.scope).is_none() {
        v.push(FieldViolation::new(
            "role_binding.scope",
            "required: OWN, TEAM, TEAM_SUBTREE or ALL",
        ));
    }
    finish(v)
}

/// Checks a grant request; `max_secs` bounds its duration.
pub fn validate_grant(g: &pb::Grant, max_secs: i64) -> Result<()> {
    let mut v = Vec::new();
    if !g.user.is_empty() && parse_name(&g.user, "users", "").is_err() {
        v.push(FieldViolation::new(
            "grant.user",
            "must be `users/{user}` or empty (the requester)",
        ));
    }
    if g.permissions.is_empty() || g.permissions.len() > 20 {
        v.push(FieldViolation::new("grant.permissions", "between 1 and 20 permissions"));
    }
    for (i, p) in g.permissions.iter().enumerate() {
        if !valid_permission(p, false) {
            v.push(FieldViolation::new(
                format!("grant.permissions[{i}]"),
                "a permission such as `customer.read` (no wildcards in grants)",
            ));
        }
        if p.starts_with("permissions.") || p.starts_with("audit.") {
            v.push(FieldViolation::new(
                format!("grant.permissions[{i}]"),
                "administration and audit permissions cannot be granted temporarily",
            ));
        }
    }
    if Target::parse(&g.resource).is_none() || g.resource.len() > 300 {
        v.push(FieldViolation::new(
            "grant.resource",
            "required: a resource name such as `customers/{customer}`, or `teams/{team}`",
        ));
    }
    if g.clearance != 0 && Level::from_i32(g.clearance).is_none() {
        v.push(FieldViolation::new("grant.clearance", "not a known classification"));
    }
    if g.reason.trim().is_empty() {
        v.push(FieldViolation::new("grant.reason", "required: why the access is needed"));
    }
    check_len(&mut v, "grant.reason", &g.reason, 1000);
    match &g.duration {
        Some(d) if d.seconds > 0 && d.seconds <= max_secs && d.nanos >= 0 => {}
        _ => v.push(FieldViolation::new(
            "grant.duration",
            format!("required: more than 0 and at most {} hours", max_secs / 3600),
        )),
    }
    finish(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_name("users/alice@corp", "users", "name").unwrap(), "alice@corp");
        assert!(parse_name("users/", "users", "name").is_err());
        assert!(parse_name("teams/x", "users", "name").is_err());
        assert!(parse_name("users/a b", "users", "name").is_err());
    }

    #[test]
    fn grant_rules_report_every_problem() {
        let g = pb::Grant {
            permissions: vec!["customer.*".into(), "permissions.admin".into()],
            resource: "nothing".into(),
            ..pb::Grant::default()
        };
        let Err(Error::InvalidArgument(v)) = validate_grant(&g, 3600) else {
            panic!("must fail")
        };
        let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
        for f in [
            "grant.permissions[0]",
            "grant.permissions[1]",
            "grant.resource",
            "grant.reason",
            "grant.duration",
        ] {
            assert!(fields.contains(&f), "{f} in {fields:?}");
        }
    }

    #[test]
    fn role_rules() {
        let ok = pb::Role {
            name: "roles/sales_rep".into(),
            permissions: vec!["customer.read".into(), "ticket.*".into()],
            clearance: pb::Classification::Sensitive as i32,
            ..pb::Role::default()
        };
        assert!(validate_role(&ok, "role").is_ok());
        let bad = pb::Role {
            name: "roles/Sales".into(),
            permissions: vec!["read".into()],
            clearance: 9,
            ..pb::Role::default()
        };
        let Err(Error::InvalidArgument(v)) = validate_role(&bad, "role") else {
            panic!("must fail")
        };
        assert_eq!(v.len(), 3, "{v:?}");
    }
}
