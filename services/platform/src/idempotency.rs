//! `request_id` idempotency (AIP-155): the first call with a key records which
//! resource it produced, in the same transaction; a retry gets that resource back.
//! The key is scoped to the method and the caller, and bound to a hash of the
//! request so a reused key with a different request is refused, not silently merged.

use sea_orm::{ConnectionTrait, Statement};
use sha2::{Digest, Sha256};

use crate::{
    error::{Error, Result},
    migrate::{Dialect, placeholders},
};

pub fn migration_sql(d: Dialect) -> Vec<String> {
    vec![format!(
        "CREATE TABLE idempotency_keys (scope TEXT NOT NULL, request_id TEXT NOT NULL, request_hash TEXT NOT NULL, \
         resource_name TEXT NOT NULL, create_time {} NOT NULL, PRIMARY KEY (scope, request_id))",
        d.timestamp()
    )]
}

/// What a `request_id` is bound to.
#[derive(Debug, Clone)]
pub struct Key {
    pub scope: String,
    pub request_id: String,
    pub request_hash: String,
}

impl Key {
    /// `None` when the caller sent no `request_id`. `request` is the encoded request
    /// (deterministic: maps are generated as BTreeMap).
    pub fn new(method: &str, caller: &str, request_id: &str, request: &[u8]) -> Result<Option<Self>> {
        if request_id.is_empty() {
            return Ok(None);
        }
        if request_id.len() > 128 || request_id.chars().any(char::is_control) {
            return Err(Error::invalid("request_id", "at most 128 printable characters"));
        }
        Ok(Some(Self {
            scope: format!("{method}:{caller}"),
            request_id: request_id.to_owned(),
            request_hash: hex(&Sha256::digest(request)),
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The resource name a previous call with `key` produced, if any. Fails when the key
/// was used for a different request.
pub async fn lookup<C: ConnectionTrait>(conn: &C, key: &Key) -> Result<Option<String>> {
    let backend = conn.get_database_backend();
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            placeholders(
                backend,
                "SELECT request_hash, resource_name FROM idempotency_keys WHERE scope = ? AND request_id = ?",
            ),
            [key.scope.clone().into(), key.request_id.clone().into()],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    let hash: String = row.try_get("", "request_hash")?;
    if hash != key.request_hash {
        return Err(Error::invalid(
            "request_id",
            "this request_id was already used for a different request; use a new request_id",
        ));
    }
    Ok(Some(row.try_get("", "resource_name")?))
}

/// Outcome of [`record`].
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    Fresh,
    /// Another call with the same key committed first: roll back and [`lookup`].
    Duplicate,
}

/// Records `key` -> `resource_name` inside the caller's transaction.
pub async fn record<C: ConnectionTrait>(txn: &C, key: &Key, resource_name: &str) -> Result<Recorded> {
    let backend = txn.get_database_backend();
    let outcome = txn
        .execute_raw(Statement::from_sql_and_values(
            backend,
            placeholders(
                backend,
                "INSERT INTO idempotency_keys (scope, request_id, request_hash, resource_name, create_time) VALUES (?, ?, ?, ?, ?)",
            ),
            [
                key.scope.clone().into(),
                key.request_id.clone().into(),
                key.request_hash.clone().into(),
                resource_name.into(),
                chrono::Utc::now().into(),
            ],
        ))
        .await;
    match outcome {
        Ok(_) => Ok(Recorded::Fresh),
        Err(err) if matches!(err.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))) => Ok(Recorded::Duplicate),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rules() {
        assert!(Key::new("m", "u", "", b"x").unwrap().is_none());
        assert!(Key::new("m", "u", &"x".repeat(129), b"x").is_err());
        let a = Key::new("m", "u", "r1", b"x").unwrap().unwrap();
        let b = Key::new("m", "u", "r1", b"y").unwrap().unwrap();
        assert_ne!(a.request_hash, b.request_hash);
        assert_eq!(a.scope, "m:u");
    }
}
