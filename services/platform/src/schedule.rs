//! Periodic jobs that run exactly once per period across replicas.
//!
//! A replica claims a due job by taking its lease in one conditional update (only one
//! claimant can match), runs it, and commits the job's results in the transaction
//! [`completing`] begins. Completing checks the lease is still its own: a
//! replica that stalled past its lease while another took the job over rolls back,
//! so each period's results are committed once. A replica that dies mid-run leaves
//! the lease to expire; the next claim after that runs the job again.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction};

use crate::{
    Result,
    db::{begin_write, exec, query},
    migrate::Dialect,
};

/// The schedules table; a service's migration includes it.
pub fn migration_sql(_: Dialect) -> Vec<String> {
    // `due_us`: when the job is next due; `owner`, `lease_until_us`: who runs it now and
    // until when the claim holds; `last_run_us`, `runs`: completed runs.
    vec![
        "CREATE TABLE schedules (job TEXT PRIMARY KEY, due_us BIGINT NOT NULL, owner TEXT NOT NULL, \
         lease_until_us BIGINT NOT NULL, last_run_us BIGINT NOT NULL, runs BIGINT NOT NULL)"
            .into(),
    ]
}

/// A claimed run of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub job: String,
    pub owner: String,
    /// When the run was due.
    pub due_us: i64,
}

/// Where a job stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobStatus {
    pub due_us: i64,
    pub last_run_us: i64,
    pub runs: i64,
    /// Someone holds a live lease.
    pub running: bool,
}

/// Takes `job`'s lease for `lease` when it is due at `now_us` (a job never run is due
/// at once) — or, with `force`, whenever no live lease is held. `owner` names this
/// replica's run (unique per process and attempt). `None`: not due, or running elsewhere.
pub async fn claim(
    db: &DatabaseConnection,
    job: &str,
    owner: &str,
    now_us: i64,
    lease: Duration,
    force: bool,
) -> Result<Option<Lease>> {
    exec(
        db,
        "INSERT INTO schedules (job, due_us, owner, lease_until_us, last_run_us, runs) VALUES (?, 0, '', 0, 0, 0) \
         ON CONFLICT (job) DO NOTHING",
        vec![job.into()],
    )
    .await?;
    let until = now_us.saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
    let due_check = if force { "" } else { " AND due_us <= ?" };
    let mut values = vec![owner.into(), until.into(), job.into(), now_us.into()];
    if !force {
        values.push(now_us.into());
    }
    let claimed = exec(
        db,
        &format!("UPDATE schedules SET owner = ?, lease_until_us = ? WHERE job = ? AND lease_until_us < ?{due_check}"),
        values,
    )
    .await?;
    if claimed != 1 {
        return Ok(None);
    }
    let status = status(db, job).await?.unwrap_or_default();
    Ok(Some(Lease {
        job: job.to_owned(),
        owner: owner.to_owned(),
        due_us: status.due_us,
    }))
}

/// Begins the write transaction that will hold the run's results, with the run
/// already recorded as done in it, next due at `next_due_us`: the caller adds the
/// results and commits. `None` (rolled back): the lease was lost to another replica,
/// and the results must not be written.
pub async fn completing(
    db: &DatabaseConnection,
    lease: &Lease,
    next_due_us: i64,
    now_us: i64,
) -> Result<Option<DatabaseTransaction>> {
    let txn = begin_write(db).await?;
    let done = exec(
        &txn,
        "UPDATE schedules SET due_us = ?, owner = '', lease_until_us = 0, last_run_us = ?, runs = runs + 1 \
         WHERE job = ? AND owner = ?",
        vec![
            next_due_us.into(),
            now_us.into(),
            lease.job.as_str().into(),
            lease.owner.as_str().into(),
        ],
    )
    .await?;
    if done == 1 {
        Ok(Some(txn))
    } else {
        txn.rollback().await?;
        Ok(None)
    }
}

/// Gives the lease back without a run (the job failed; it is due again at once).
pub async fn release(db: &DatabaseConnection, lease: &Lease) -> Result<()> {
    exec(
        db,
        "UPDATE schedules SET owner = '', lease_until_us = 0 WHERE job = ? AND owner = ?",
        vec![lease.job.as_str().into(), lease.owner.as_str().into()],
    )
    .await?;
    Ok(())
}

/// A job's state (`None`: never claimed).
pub async fn status<C: ConnectionTrait>(conn: &C, job: &str) -> Result<Option<JobStatus>> {
    let now_us = chrono::Utc::now().timestamp_micros();
    let rows = query(
        conn,
        "SELECT due_us, last_run_us, runs, lease_until_us FROM schedules WHERE job = ?",
        vec![job.into()],
    )
    .await?;
    rows.first()
        .map(|r| {
            Ok(JobStatus {
                due_us: r.try_get("", "due_us")?,
                last_run_us: r.try_get("", "last_run_us")?,
                runs: r.try_get("", "runs")?,
                running: r.try_get::<i64>("", "lease_until_us")? >= now_us,
            })
        })
        .transpose()
}
