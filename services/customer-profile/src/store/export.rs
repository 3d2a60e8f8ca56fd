//! Export jobs: the request, its state, and the finished document.

use crm_platform::Result;
use sea_orm::{ConnectionTrait, QueryResult, Value};

use super::{exec, query};

/// An export job as stored (without its document).
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: String,
    pub customer_id: String,
    pub state: i32,
    pub requested_by: String,
    pub create_us: i64,
    pub finish_us: Option<i64>,
    pub sha256: String,
    /// Newline-separated.
    pub unavailable: String,
    pub error: String,
    pub size: i64,
}

fn job(r: &QueryResult) -> Result<JobRow> {
    Ok(JobRow {
        id: r.try_get("", "id")?,
        customer_id: r.try_get("", "customer_id")?,
        state: r.try_get("", "state")?,
        requested_by: r.try_get("", "requested_by")?,
        create_us: r.try_get("", "create_us")?,
        finish_us: r.try_get("", "finish_us")?,
        sha256: r.try_get("", "sha256")?,
        unavailable: r.try_get("", "unavailable")?,
        error: r.try_get("", "error")?,
        size: r.try_get::<Option<i64>>("", "size")?.unwrap_or(0),
    })
}

const COLUMNS: &str = "id, customer_id, state, requested_by, create_us, finish_us, sha256, unavailable, error, \
                       CAST(LENGTH(document) AS BIGINT) AS size";

pub async fn insert<C: ConnectionTrait>(
    conn: &C,
    id: &str,
    customer_id: &str,
    requested_by: &str,
    create_us: i64,
    state: i32,
) -> Result<()> {
    exec(
        conn,
        "INSERT INTO export_jobs (id, customer_id, state, requested_by, create_us, sha256, unavailable, error) \
         VALUES (?, ?, ?, ?, ?, '', '', '')",
        vec![
            id.into(),
            customer_id.into(),
            state.into(),
            requested_by.into(),
            create_us.into(),
        ],
    )
    .await?;
    Ok(())
}

pub async fn get<C: ConnectionTrait>(conn: &C, id: &str) -> Result<Option<JobRow>> {
    let rows = query(
        conn,
        &format!("SELECT {COLUMNS} FROM export_jobs WHERE id = ?"),
        vec![id.into()],
    )
    .await?;
    rows.first().map(job).transpose()
}

/// Jobs still in `state` (those a restart left running).
pub async fn in_state<C: ConnectionTrait>(conn: &C, state: i32) -> Result<Vec<JobRow>> {
    query(
        conn,
        &format!("SELECT {COLUMNS} FROM export_jobs WHERE state = ? ORDER BY create_us"),
        vec![state.into()],
    )
    .await?
    .iter()
    .map(job)
    .collect()
}

/// Finishes a job still `running`: its state, document (when it succeeded), digest,
/// unavailable sections and error. False when it was finished already.
#[allow(clippy::too_many_arguments)]
pub async fn finish<C: ConnectionTrait>(
    conn: &C,
    id: &str,
    running: i32,
    state: i32,
    finish_us: i64,
    document: Option<Vec<u8>>,
    sha256: &str,
    unavailable: &str,
    error: &str,
) -> Result<bool> {
    let n = exec(
        conn,
        "UPDATE export_jobs SET state = ?, finish_us = ?, document = ?, sha256 = ?, unavailable = ?, error = ? \
         WHERE id = ? AND state = ?",
        vec![
            state.into(),
            finish_us.into(),
            Value::Bytes(document),
            sha256.into(),
            unavailable.into(),
            error.into(),
            id.into(),
            running.into(),
        ],
    )
    .await?;
    Ok(n == 1)
}

/// The document of a job.
pub async fn document<C: ConnectionTrait>(conn: &C, id: &str) -> Result<Option<Vec<u8>>> {
    let rows = query(conn, "SELECT document FROM export_jobs WHERE id = ?", vec![id.into()]).await?;
    Ok(match rows.first() {
        Some(r) => r.try_get::<Option<Vec<u8>>>("", "document")?,
        None => None,
    })
}
