//! Per-service schema migrations: an ordered list of SQL steps per backend, each
//! applied once, in its own transaction, recorded in `schema_migrations`.
//!
//! Plain SQL through sea-orm's `ConnectionTrait` instead of sea-orm-migration: that
//! crate forces sea-orm's default features (and schema-sync) on the whole workspace,
//! roughly doubling its build cost, for nothing a list of statements does not do.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use crate::{db::begin_write, error::Result};

/// One migration. `version`s are unique and increasing; never edit a released one.
#[derive(Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    /// The statements for a backend, run in order in one transaction.
    pub up: fn(Dialect) -> Vec<String>,
}

/// Column types that differ between PostgreSQL and SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect(pub DbBackend);

impl Dialect {
    pub fn is_postgres(self) -> bool {
        self.0 == DbBackend::Postgres
    }
    /// A UTC timestamp as sea-orm's `DateTimeUtc` stores it.
    pub fn timestamp(self) -> &'static str {
        if self.is_postgres() { "TIMESTAMPTZ" } else { "TEXT" }
    }
    pub fn bytes(self) -> &'static str {
        if self.is_postgres() { "BYTEA" } else { "BLOB" }
    }
    /// An auto-assigned 64-bit primary key.
    pub fn serial_primary_key(self) -> &'static str {
        if self.is_postgres() {
            "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
        } else {
            "INTEGER PRIMARY KEY AUTOINCREMENT"
        }
    }
}

/// Applies the migrations not applied yet; returns the versions applied now.
/// Safe to run from several processes at once (PostgreSQL advisory lock; SQLite's
/// write lock).
pub async fn run(db: &DatabaseConnection, migrations: &[Migration]) -> Result<Vec<i64>> {
    let backend = db.get_database_backend();
    let dialect = Dialect(backend);
    db.execute_unprepared(&format!(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at {} NOT NULL)",
        dialect.timestamp()
    ))
    .await?;
    let mut applied = Vec::new();
    for migration in migrations {
        let txn = begin_write(db).await?;
        if dialect.is_postgres() {
            txn.execute_unprepared("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.schema_migrations'))")
                .await?;
        }
        let done = txn
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                placeholders(backend, "SELECT version FROM schema_migrations WHERE version = ?"),
                [migration.version.into()],
            ))
            .await?
            .is_some();
        if done {
            txn.rollback().await?;
            continue;
        }
        for sql in (migration.up)(dialect) {
            txn.execute_unprepared(&sql).await?;
        }
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            placeholders(
                backend,
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            ),
            [migration.version.into(), migration.name.into(), chrono::Utc::now().into()],
        ))
        .await?;
        txn.commit().await?;
        tracing::info!(version = migration.version, name = migration.name, "migration applied");
        applied.push(migration.version);
    }
    Ok(applied)
}

/// Versions recorded as applied, ascending.
pub async fn applied_versions(db: &DatabaseConnection) -> Result<Vec<i64>> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT version FROM schema_migrations ORDER BY version",
        ))
        .await?;
    rows.iter()
        .map(|row| row.try_get::<i64>("", "version").map_err(Into::into))
        .collect()
}

/// Rewrites `?` placeholders as `$1, $2, ...` for PostgreSQL. The SQL passed here is
/// ours, never user input, and has no `?` inside string literals.
pub fn placeholders(backend: DbBackend, sql: &str) -> String {
    if backend != DbBackend::Postgres {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Target, connect};

    const STEPS: &[Migration] = &[
        Migration {
            version: 1,
            name: "create things",
            up: |d| {
                vec![format!(
                    "CREATE TABLE things (id {}, at {})",
                    d.serial_primary_key(),
                    d.timestamp()
                )]
            },
        },
        Migration {
            version: 2,
            name: "add label",
            up: |_| vec!["ALTER TABLE things ADD COLUMN label TEXT".into()],
        },
    ];

    #[tokio::test]
    async fn applies_each_migration_once() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::Sqlite {
            url: format!("sqlite://{}/m.db", dir.path().display()),
        };
        let db = connect(&target, 2).await.unwrap();
        assert_eq!(run(&db, &STEPS[..1]).await.unwrap(), vec![1]);
        assert_eq!(run(&db, STEPS).await.unwrap(), vec![2]);
        assert!(run(&db, STEPS).await.unwrap().is_empty());
        assert_eq!(applied_versions(&db).await.unwrap(), vec![1, 2]);
        db.execute_unprepared("INSERT INTO things (at, label) VALUES ('2026-01-01T00:00:00Z', 'x')")
            .await
            .unwrap();
    }

    #[test]
    fn rewrites_placeholders_for_postgres() {
        assert_eq!(placeholders(DbBackend::Postgres, "a = ? AND b = ?"), "a = $1 AND b = $2");
        assert_eq!(placeholders(DbBackend::Sqlite, "a = ?"), "a = ?");
    }
}
