//! Database connections: PostgreSQL in production, an embedded SQLite file per service
//! by default. Also the one way to open a write transaction, so SQLite writers take
//! the write lock up front instead of failing on lock upgrade.

use std::{path::PathBuf, time::Duration};

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend, QueryResult,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait, Value,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};

use crate::{config::DatabaseConfig, error::Result, migrate::placeholders};

/// Where a service's data lives, resolved from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Sqlite { url: String },
    Postgres { url: String, schema: String },
}

impl Target {
    /// Resolves the configured URL for `service` (e.g. `customer-profile`): an empty URL
    /// means `<data_dir>/<service>.db`; on PostgreSQL the service gets its own schema.
    pub fn resolve(cfg: &DatabaseConfig, service: &str) -> Self {
        Self::resolve_hosted(cfg, service, false)
    }

    /// As [`Target::resolve`]; with `several` services in one process (`crm serve`)
    /// an explicit schema or SQLite file is suffixed with the service, so their
    /// tables (each has its own `outbox` and `schema_migrations`) never mix.
    pub fn resolve_hosted(cfg: &DatabaseConfig, service: &str, several: bool) -> Self {
        let suffix = service.replace('-', "_");
        if several && cfg.url.starts_with("postgres") && !cfg.schema.is_empty() {
            let mut own = cfg.clone();
            own.schema = format!("{}_{suffix}", cfg.schema);
            return Self::resolve_hosted(&own, service, false);
        }
        if several && cfg.url.starts_with("sqlite:") {
            let (path, query) = cfg.url.split_once('?').unwrap_or((cfg.url.as_str(), ""));
            let base = path.strip_suffix(".db").unwrap_or(path);
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            };
            return Target::Sqlite {
                url: format!("{base}_{suffix}.db{query}"),
            };
        }
        if cfg.url.starts_with("postgres") {
            let schema = if cfg.schema.is_empty() {
                service.replace('-', "_")
            } else {
                cfg.schema.clone()
            };
            Target::Postgres {
                url: cfg.url.clone(),
                schema,
            }
        } else if cfg.url.is_empty() {
            let path = PathBuf::from(&cfg.data_dir).join(format!("{service}.db"));
            Target::Sqlite {
                url: format!("sqlite://{}", path.display()),
            }
        } else {
            Target::Sqlite { url: cfg.url.clone() }
        }
    }

    /// A second store of the same service with a lifecycle of its own (e.g. a key
    /// store kept apart from the data and its backups): the SQLite file
    /// `<name>-<suffix>.db` beside the service's, or the PostgreSQL schema
    /// `<schema>_<suffix>`.
    pub fn companion(&self, suffix: &str) -> Self {
        match self {
            Target::Sqlite { url } => {
                let (path, query) = url.split_once('?').map_or((url.as_str(), ""), |(p, q)| (p, q));
                let base = path.strip_suffix(".db").unwrap_or(path);
                let query = if query.is_empty() {
                    String::new()
                } else {
                    format!("?{query}")
                };
                Target::Sqlite {
                    url: format!("{base}-{suffix}.db{query}"),
                }
            }
            Target::Postgres { url, schema } => Target::Postgres {
                url: url.clone(),
                schema: format!("{schema}_{}", suffix.replace('-', "_")),
            },
        }
    }

    /// The URL without credentials, for logs.
    pub fn redacted(&self) -> String {
        match self {
            Target::Sqlite { url } => url.clone(),
            Target::Postgres { url, schema } => {
                let without_credentials = match (url.find("://"), url.rfind('@')) {
                    (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
                    _ => url.clone(),
                };
                format!("{without_credentials} (schema {schema})")
            }
        }
    }
}

/// Opens a pool to `target`, creating the SQLite file (and its directory) or the
/// PostgreSQL schema when missing. Every statement is timed, and traced when spans
/// are exported.
pub async fn connect(target: &Target, max_connections: u32) -> Result<DatabaseConnection> {
    match target {
        Target::Sqlite { url } => {
            if let Some(path) = url.strip_prefix("sqlite://").and_then(|rest| rest.split('?').next())
                && let Some(dir) = PathBuf::from(path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .map_err(|e| crate::Error::Unavailable(format!("cannot create data directory {}: {e}", dir.display())))?;
            }
            let mut opts = ConnectOptions::new(url.clone());
            opts.max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .sqlx_logging(false)
                .map_sqlx_sqlite_opts(|o| {
                    o.create_if_missing(true)
                        .journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal)
                        .busy_timeout(Duration::from_secs(10))
                        .foreign_keys(true)
                        // Deleted rows are overwritten, not left in free pages: an
                        // erasure leaves nothing in the file, nor in a copy of it.
                        .pragma("secure_delete", "ON")
                });
            let mut db = Database::connect(opts).await?;
            db.set_metric_callback(|info| crate::telemetry::observe_statement("sqlite", info));
            Ok(db)
        }
        Target::Postgres { url, schema } => {
            validate_identifier(schema)?;
            // Create the schema with a plain connection first: the pool's connections set
            // their search_path to it.
            let bootstrap = Database::connect(url.clone()).await?;
            bootstrap
                .execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                .await?;
            bootstrap.close().await?;
            let mut opts = ConnectOptions::new(url.clone());
            opts.max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_timeout(Duration::from_secs(10))
                .sqlx_logging(false)
                .set_schema_search_path(schema.clone());
            let mut db = Database::connect(opts).await?;
            db.set_metric_callback(|info| crate::telemetry::observe_statement("postgresql", info));
            Ok(db)
        }
    }
}

fn validate_identifier(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(crate::Error::Unavailable(format!(
            "database schema name `{name}` must be lower-case letters, digits and underscores"
        )))
    }
}

/// Runs a query written with `?` placeholders (rewritten to `$n` for PostgreSQL).
pub async fn query<C: ConnectionTrait>(conn: &C, sql: &str, values: Vec<Value>) -> Result<Vec<QueryResult>> {
    let backend = conn.get_database_backend();
    Ok(conn
        .query_all_raw(Statement::from_sql_and_values(backend, placeholders(backend, sql), values))
        .await?)
}

/// After deleting data that must not survive (an erasure): on SQLite, moves the
/// write-ahead log into the database and truncates it, so old page images holding
/// the data are gone from the log file too (deleted rows are zeroed by
/// `secure_delete`). Waits up to the busy timeout for readers; a checkpoint left
/// incomplete is logged and done again by SQLite's own checkpoints later. PostgreSQL
/// keeps its own log and reclaims dead rows by vacuum: nothing to do here.
pub async fn truncate_log<C: ConnectionTrait>(conn: &C) -> Result<()> {
    if conn.get_database_backend() != DbBackend::Sqlite {
        return Ok(());
    }
    let rows = query(conn, "PRAGMA wal_checkpoint(TRUNCATE)", vec![]).await?;
    let busy: i64 = match rows.first() {
        Some(r) => r.try_get_by_index(0)?,
        None => 0,
    };
    if busy != 0 {
        tracing::warn!("write-ahead log not truncated (readers busy); SQLite checkpoints it later");
    }
    Ok(())
}

/// Runs a statement written with `?` placeholders; returns the rows it changed.
pub async fn exec<C: ConnectionTrait>(conn: &C, sql: &str, values: Vec<Value>) -> Result<u64> {
    let backend = conn.get_database_backend();
    Ok(conn
        .execute_raw(Statement::from_sql_and_values(backend, placeholders(backend, sql), values))
        .await?
        .rows_affected())
}

/// The rows of `table` matching `condition` (with `?` placeholders): counted with
/// `dry_run`, else deleted; returns how many. For retention runs and their dry runs.
pub async fn count_or_delete<C: ConnectionTrait>(
    conn: &C,
    table: &str,
    condition: &str,
    values: Vec<Value>,
    dry_run: bool,
) -> Result<i64> {
    if dry_run {
        let rows = query(conn, &format!("SELECT COUNT(*) AS n FROM {table} WHERE {condition}"), values).await?;
        return Ok(match rows.first() {
            Some(r) => r.try_get("", "n")?,
            None => 0,
        });
    }
    let n = exec(conn, &format!("DELETE FROM {table} WHERE {condition}"), values).await?;
    Ok(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Keyset paging on `(time_column, id)`: the condition for the rows after `after`
/// (every row when `None`) and its parameters. Order the query by `time_column, id`.
pub fn after_key(time_column: &str, after: Option<&(i64, String)>) -> (String, Vec<Value>) {
    match after {
        None => ("1 = 1".to_owned(), Vec::new()),
        Some((us, id)) => (
            format!("({time_column} > ? OR ({time_column} = ? AND id > ?))"),
            vec![(*us).into(), (*us).into(), id.as_str().into()],
        ),
    }
}

/// `n` comma-separated placeholders, for `IN (…)` lists and multi-row inserts.
pub fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Begins a transaction for a write. On SQLite it is `BEGIN IMMEDIATE`, which takes the
/// write lock at once: a deferred transaction that reads first and writes later can
/// fail with SQLITE_BUSY when another writer got in between.
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction> {
    let options = match db.get_database_backend() {
        DbBackend::Sqlite => TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        },
        _ => TransactionOptions::default(),
    };
    Ok(db.begin_with_options(options).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str, schema: &str) -> DatabaseConfig {
        DatabaseConfig {
            url: url.into(),
            data_dir: "/var/lib/crm".into(),
            max_connections: 5,
            schema: schema.into(),
            migrate_on_start: true,
        }
    }

    #[test]
    fn resolves_targets() {
        assert_eq!(
            Target::resolve(&cfg("", ""), "customer-profile"),
            Target::Sqlite {
                url: "sqlite:///var/lib/crm/customer-profile.db".into()
            }
        );
        assert_eq!(
            Target::resolve(&cfg("postgres://u:p@h/db", ""), "customer-profile"),
            Target::Postgres {
                url: "postgres://u:p@h/db".into(),
                schema: "customer_profile".into()
            }
        );
        assert_eq!(
            Target::resolve(&cfg("postgres://h/db", "custom"), "customer-profile"),
            Target::Postgres {
                url: "postgres://h/db".into(),
                schema: "custom".into()
            }
        );
    }

    #[test]
    fn services_sharing_a_process_never_share_an_explicit_schema_or_file() {
        assert_eq!(
            Target::resolve_hosted(&cfg("postgres://h/db", "crm"), "customer-profile", true),
            Target::Postgres {
                url: "postgres://h/db".into(),
                schema: "crm_customer_profile".into()
            }
        );
        assert_eq!(
            Target::resolve_hosted(&cfg("postgres://h/db", ""), "permissions", true),
            Target::Postgres {
                url: "postgres://h/db".into(),
                schema: "permissions".into()
            }
        );
        assert_eq!(
            Target::resolve_hosted(&cfg("sqlite:///d/crm.db?mode=rwc", ""), "permissions", true),
            Target::Sqlite {
                url: "sqlite:///d/crm_permissions.db?mode=rwc".into()
            }
        );
        assert_eq!(
            Target::resolve_hosted(&cfg("", ""), "permissions", true),
            Target::resolve(&cfg("", ""), "permissions")
        );
    }

    #[test]
    fn redacts_credentials() {
        let t = Target::Postgres {
            url: "postgres://user:pw@db:5432/crm".into(),
            schema: "s".into(),
        };
        assert_eq!(t.redacted(), "postgres://***@db:5432/crm (schema s)");
    }

    #[test]
    fn companions_live_beside_their_service() {
        let sqlite = Target::Sqlite {
            url: "sqlite:///var/lib/crm/customer-profile.db?mode=rwc".into(),
        };
        assert_eq!(
            sqlite.companion("keys"),
            Target::Sqlite {
                url: "sqlite:///var/lib/crm/customer-profile-keys.db?mode=rwc".into()
            }
        );
        let pg = Target::Postgres {
            url: "postgres://db/crm".into(),
            schema: "customer_profile".into(),
        };
        assert_eq!(
            pg.companion("keys"),
            Target::Postgres {
                url: "postgres://db/crm".into(),
                schema: "customer_profile_keys".into()
            }
        );
    }

    #[test]
    fn schema_names_are_checked() {
        assert!(validate_identifier("customer_profile").is_ok());
        assert!(validate_identifier("x\"; drop").is_err());
        assert!(validate_identifier("1abc").is_err());
    }

    #[tokio::test]
    async fn sqlite_file_is_created_in_a_new_directory() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/nested/svc.db", dir.path().display());
        let db = connect(&Target::Sqlite { url }, 2).await.unwrap();
        db.execute_unprepared("CREATE TABLE t (x INTEGER)").await.unwrap();
        assert!(dir.path().join("nested/svc.db").exists());
    }
}

/// Largest statement, in bytes of parameters, that bulk inserts build. sqlx 0.9.0
/// leaves Nagle's algorithm on (transact-rs/sqlx#4335, fixed upstream by #4336 but not
/// released): a statement written in several segments can wait ~40 ms for the
/// server's delayed ACK. Keeping multi-row statements small avoids that stall.
pub const MAX_STATEMENT_BYTES: usize = 6 * 1024;

/// Splits `items` into runs whose estimated `size` stays under
/// [`MAX_STATEMENT_BYTES`] and whose length stays under `max_rows` (each run holds at
/// least one item).
pub fn chunks_by_size<T>(items: &[T], max_rows: usize, size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    chunks_by_size_limit(items, max_rows, MAX_STATEMENT_BYTES, size)
}

/// As [`chunks_by_size`] with another byte limit (e.g. a message size).
pub fn chunks_by_size_limit<T>(items: &[T], max_rows: usize, max_bytes: usize, size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, item) in items.iter().enumerate() {
        let s = size(item);
        if i > start && (bytes + s > max_bytes || i - start >= max_rows) {
            out.push(&items[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += s;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// `{column} IN (values)` as a condition with its parameters, for a list of at most a
/// few thousand values. On PostgreSQL the list travels as one parameter (`= ANY(...)`;
/// see [`in_list`] for why), unless a value holds the separator (U+001F).
pub fn any_of(backend: DbBackend, column: &str, values: &[&str]) -> (String, Vec<Value>) {
    const SEPARATOR: char = '\u{1f}';
    if values.is_empty() {
        return ("1 = 0".to_owned(), Vec::new());
    }
    if backend == DbBackend::Postgres && !values.iter().any(|v| v.contains(SEPARATOR)) {
        return (
            format!("{column} = ANY(string_to_array(?, chr(31)))"),
            vec![values.join(&SEPARATOR.to_string()).into()],
        );
    }
    (
        format!("{column} IN ({})", marks(values.len())),
        values.iter().map(|v| Value::from(*v)).collect(),
    )
}

/// Runs `{prefix} IN (values)` with `first` bound as the prefix's one parameter
/// (`?` placeholders), and returns every row. On PostgreSQL the list travels as one
/// parameter (`= ANY(string_to_array(...))`): prepared statements are cached, and after
/// a few runs PostgreSQL may plan `IN ($2, …, $501)` generically, as a scan of the
/// whole table. A list holding the separator (U+001F) takes the plain path instead.
pub async fn in_list<C: ConnectionTrait>(conn: &C, prefix: &str, first: &str, values: &[&str]) -> Result<Vec<QueryResult>> {
    const SEPARATOR: char = '\u{1f}';
    let backend = conn.get_database_backend();
    let run = |sql: String, params: Vec<Value>| async move {
        conn.query_all_raw(Statement::from_sql_and_values(backend, placeholders(backend, &sql), params))
            .await
    };
    let mut out = Vec::new();
    if values.is_empty() {
        return Ok(out);
    }
    if backend == DbBackend::Postgres && !values.iter().any(|v| v.contains(SEPARATOR)) {
        let joined = values.join(&SEPARATOR.to_string());
        out.extend(
            run(
                format!("{prefix} = ANY(string_to_array(?, chr(31)))"),
                vec![first.into(), joined.into()],
            )
            .await?,
        );
    } else {
        for chunk in values.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let mut params: Vec<Value> = vec![first.into()];
            params.extend(chunk.iter().map(|k| Value::from(*k)));
            out.extend(run(format!("{prefix} IN ({marks})"), params).await?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod chunk_tests {
    use super::*;

    #[test]
    fn chunks_respect_size_and_rows() {
        let items = vec![1000usize; 20];
        let chunks = chunks_by_size(&items, 100, |s| *s);
        assert!(chunks.iter().all(|c| c.iter().sum::<usize>() <= MAX_STATEMENT_BYTES));
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 20);
        assert_eq!(
            chunks_by_size(&[10usize; 7], 3, |s| *s)
                .iter()
                .map(|c| c.len())
                .collect::<Vec<_>>(),
            vec![3, 3, 1]
        );
        assert_eq!(
            chunks_by_size(&[100_000usize], 3, |s| *s).len(),
            1,
            "an oversized item still goes alone"
        );
        assert!(chunks_by_size::<usize>(&[], 3, |s| *s).is_empty());
    }
}
