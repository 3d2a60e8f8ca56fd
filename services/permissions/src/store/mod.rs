//! Storage of the permissions service. Policy objects (users, teams, roles, role
//! bindings, grants) are small and read whole: each row holds the encoded proto
//! resource plus the columns queries filter on. The audit log is its own table,
//! one row per chain link.

pub mod audit;
mod migrations;

use crm_platform::{
    Error, Result,
    db::{exec, query},
    migrate::placeholders,
};
pub use migrations::MIGRATIONS;
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement, Value};

/// A policy object table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Team,
    Role,
    Binding,
    Grant,
}

impl Kind {
    fn table(self) -> &'static str {
        match self {
            Self::User => "users",
            Self::Team => "teams",
            Self::Role => "roles",
            Self::Binding => "role_bindings",
            Self::Grant => "grants",
        }
    }

    /// The resource type named in NOT_FOUND / ALREADY_EXISTS errors.
    pub fn resource_type(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Team => "team",
            Self::Role => "role",
            Self::Binding => "role binding",
            Self::Grant => "grant",
        }
    }

    fn has_usage(self) -> bool {
        matches!(self, Self::Binding | Self::Grant)
    }
}

/// A stored policy object.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub revision: i64,
    pub data: Vec<u8>,
    /// Bindings and grants: when a check last went through it (Unix µs).
    pub last_used_us: Option<i64>,
}

fn row(kind: Kind, r: &QueryResult) -> Result<Row> {
    Ok(Row {
        id: r.try_get("", "id")?,
        revision: r.try_get("", "revision")?,
        data: r.try_get("", "data")?,
        last_used_us: if kind.has_usage() {
            r.try_get("", "last_used_us")?
        } else {
            None
        },
    })
}

fn columns(kind: Kind) -> &'static str {
    if kind.has_usage() {
        "id, revision, data, last_used_us"
    } else {
        "id, revision, data"
    }
}

pub async fn get<C: ConnectionTrait>(c: &C, kind: Kind, id: &str) -> Result<Option<Row>> {
    let sql = format!("SELECT {} FROM {} WHERE id = ?", columns(kind), kind.table());
    query(c, &sql, vec![id.into()])
        .await?
        .first()
        .map(|r| row(kind, r))
        .transpose()
}

/// Like [`get`], NOT_FOUND when absent.
pub async fn require<C: ConnectionTrait>(c: &C, kind: Kind, id: &str, name: &str) -> Result<Row> {
    get(c, kind, id).await?.ok_or_else(|| Error::NotFound {
        resource_type: kind.resource_type(),
        name: name.to_owned(),
    })
}

/// Rows in id order after `after`, optionally where `column = value`.
pub async fn list<C: ConnectionTrait>(c: &C, kind: Kind, filter: &[(&str, Value)], after: &str, limit: u64) -> Result<Vec<Row>> {
    let mut sql = format!("SELECT {} FROM {} WHERE id > ?", columns(kind), kind.table());
    let mut values: Vec<Value> = vec![after.into()];
    for (column, value) in filter {
        sql.push_str(&format!(" AND {column} = ?"));
        values.push(value.clone());
    }
    sql.push_str(" ORDER BY id LIMIT ?");
    values.push((limit as i64).into());
    query(c, &sql, values).await?.iter().map(|r| row(kind, r)).collect()
}

/// Every row (teams and roles: the directory).
pub async fn all<C: ConnectionTrait>(c: &C, kind: Kind) -> Result<Vec<Row>> {
    list(c, kind, &[], "", i64::MAX as u64).await
}

/// Inserts a new object at revision 1; ALREADY_EXISTS when the id is taken.
pub async fn insert<C: ConnectionTrait>(
    c: &C,
    kind: Kind,
    id: &str,
    name: &str,
    data: Vec<u8>,
    extra: &[(&str, Value)],
) -> Result<()> {
    let mut cols = vec!["id", "revision", "data"];
    let mut values: Vec<Value> = vec![id.into(), 1i64.into(), data.into()];
    for (col, v) in extra {
        cols.push(col);
        values.push(v.clone());
    }
    let marks = vec!["?"; cols.len()].join(", ");
    let sql = format!("INSERT INTO {} ({}) VALUES ({marks})", kind.table(), cols.join(", "));
    let backend = c.get_database_backend();
    match c
        .execute_raw(Statement::from_sql_and_values(backend, placeholders(backend, &sql), values))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))) => Err(Error::AlreadyExists {
            resource_type: kind.resource_type(),
            name: name.to_owned(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Replaces an object read at `revision`; ABORTED when it changed meanwhile.
pub async fn update<C: ConnectionTrait>(
    c: &C,
    kind: Kind,
    id: &str,
    name: &str,
    revision: i64,
    data: Vec<u8>,
    extra: &[(&str, Value)],
) -> Result<i64> {
    let mut sets = String::from("revision = ?, data = ?");
    let mut values: Vec<Value> = vec![(revision + 1).into(), data.into()];
    for (col, v) in extra {
        sets.push_str(&format!(", {col} = ?"));
        values.push(v.clone());
    }
    values.push(id.into());
    values.push(revision.into());
    let sql = format!("UPDATE {} SET {sets} WHERE id = ? AND revision = ?", kind.table());
    if exec(c, &sql, values).await? == 0 {
        return Err(Error::EtagMismatch { name: name.to_owned() });
    }
    Ok(revision + 1)
}

pub async fn delete<C: ConnectionTrait>(c: &C, kind: Kind, id: &str) -> Result<u64> {
    exec(c, &format!("DELETE FROM {} WHERE id = ?", kind.table()), vec![id.into()]).await
}

/// Records when bindings or grants were last used (Unix µs), never moving back.
pub async fn set_last_used<C: ConnectionTrait>(c: &C, kind: Kind, used: &[(String, i64)]) -> Result<()> {
    for (id, us) in used {
        let sql = format!(
            "UPDATE {} SET last_used_us = ? WHERE id = ? AND (last_used_us IS NULL OR last_used_us < ?)",
            kind.table()
        );
        exec(c, &sql, vec![(*us).into(), id.clone().into(), (*us).into()]).await?;
    }
    Ok(())
}

/// Approved grants whose expiry has passed (ids), oldest first.
pub async fn expired_grants<C: ConnectionTrait>(c: &C, now_us: i64, state: i32, limit: u64) -> Result<Vec<String>> {
    let rows = query(
        c,
        "SELECT id FROM grants WHERE state = ? AND expire_us <= ? ORDER BY expire_us LIMIT ?",
        vec![state.into(), now_us.into(), (limit as i64).into()],
    )
    .await?;
    rows.iter().map(|r| Ok(r.try_get("", "id")?)).collect()
}

/// Moves the policy version on: every policy write does, in its transaction, so
/// other replicas notice the change and caches keyed by version fall away.
pub async fn bump_version<C: ConnectionTrait>(c: &C) -> Result<i64> {
    exec(
        c,
        "UPDATE permissions_meta SET value = value + 1 WHERE name = 'policy_version'",
        vec![],
    )
    .await?;
    version(c).await
}

pub async fn version<C: ConnectionTrait>(c: &C) -> Result<i64> {
    meta(c, "policy_version").await
}

/// Serialises moves in the team hierarchy (SQLite's write lock already does).
pub async fn lock_teams<C: ConnectionTrait>(c: &C) -> Result<()> {
    if c.get_database_backend() == DbBackend::Postgres {
        exec(c, "SELECT pg_advisory_xact_lock(7261002)", vec![]).await?;
    }
    Ok(())
}

/// Serialises writers of the audit chain (SQLite's write lock already does).
pub async fn lock_chain<C: ConnectionTrait>(c: &C) -> Result<()> {
    if c.get_database_backend() == DbBackend::Postgres {
        exec(c, "SELECT pg_advisory_xact_lock(7261001)", vec![]).await?;
    }
    Ok(())
}

/// A counter in `permissions_meta` (0 when absent).
pub async fn meta<C: ConnectionTrait>(c: &C, name: &str) -> Result<i64> {
    let rows = query(c, "SELECT value FROM permissions_meta WHERE name = ?", vec![name.into()]).await?;
    Ok(match rows.first() {
        Some(r) => r.try_get("", "value")?,
        None => 0,
    })
}

pub async fn set_meta<C: ConnectionTrait>(c: &C, name: &str, value: i64) -> Result<()> {
    exec(
        c,
        "INSERT INTO permissions_meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        vec![name.into(), value.into()],
    )
    .await?;
    Ok(())
}
