//! Journeys, customers' positions in them, and the log of steps reached.

use crm_platform::{
    Error, Result,
    db::{exec, query},
    migrate::Dialect,
};
use crm_proto::crm::segmentation::v1 as pb;
use prost::Message;
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Value};

pub fn migration(d: Dialect) -> Vec<String> {
    let bytes = d.bytes();
    vec![
        format!(
            "CREATE TABLE journeys (id TEXT PRIMARY KEY, settings {bytes} NOT NULL, state INTEGER NOT NULL, \
             watermark_us BIGINT NOT NULL, watermark_person TEXT NOT NULL, revision BIGINT NOT NULL, \
             create_us BIGINT NOT NULL, update_us BIGINT NOT NULL)"
        ),
        // Where one enrolment of a customer stands.
        "CREATE TABLE journey_positions (person_id TEXT NOT NULL, journey_id TEXT NOT NULL, enrollment BIGINT NOT NULL, \
         step_id TEXT NOT NULL, state INTEGER NOT NULL, due_us BIGINT NOT NULL, wait_since_us BIGINT, \
         attempts INTEGER NOT NULL, enter_us BIGINT NOT NULL, update_us BIGINT NOT NULL, \
         PRIMARY KEY (person_id, journey_id, enrollment))"
            .into(),
        "CREATE INDEX journey_positions_due ON journey_positions (state, due_us)".into(),
        "CREATE INDEX journey_positions_journey ON journey_positions (journey_id, state, step_id)".into(),
        // Each step an enrolment reached, once.
        "CREATE TABLE journey_log (journey_id TEXT NOT NULL, step_id TEXT NOT NULL, person_id TEXT NOT NULL, \
         enrollment BIGINT NOT NULL, at_us BIGINT NOT NULL, PRIMARY KEY (journey_id, step_id, person_id, enrollment))"
            .into(),
    ]
}

/// A position's state.
pub const DUE: i32 = 1;
/// Waiting for an event (its timeout is `due_us`).
pub const WAITING: i32 = 2;
/// Left the journey.
pub const DONE: i32 = 3;

fn state(v: i32) -> pb::JourneyState {
    pb::JourneyState::try_from(v).unwrap_or(pb::JourneyState::Unspecified)
}

/// A stored journey.
#[derive(Debug, Clone, PartialEq)]
pub struct JourneyRow {
    pub id: String,
    pub settings: pb::Journey,
    pub state: pb::JourneyState,
    /// Segment triggers: members who entered after (this time, this person) were
    /// enrolled (a refresh gives many members one entry time).
    pub watermark_us: i64,
    pub watermark_person: String,
    pub revision: i64,
    pub create_us: i64,
    pub update_us: i64,
}

const COLUMNS: &str = "id, settings, state, watermark_us, watermark_person, revision, create_us, update_us";

fn journey(r: &QueryResult) -> Result<JourneyRow> {
    let bytes: Vec<u8> = r.try_get("", "settings")?;
    Ok(JourneyRow {
        id: r.try_get("", "id")?,
        settings: pb::Journey::decode(bytes.as_slice()).map_err(Error::internal)?,
        state: state(r.try_get("", "state")?),
        watermark_us: r.try_get("", "watermark_us")?,
        watermark_person: r.try_get("", "watermark_person")?,
        revision: r.try_get("", "revision")?,
        create_us: r.try_get("", "create_us")?,
        update_us: r.try_get("", "update_us")?,
    })
}

pub async fn insert<C: ConnectionTrait>(conn: &C, j: &JourneyRow) -> Result<()> {
    exec(
        conn,
        &format!("INSERT INTO journeys ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
        vec![
            j.id.clone().into(),
            j.settings.encode_to_vec().into(),
            (j.state as i32).into(),
            j.watermark_us.into(),
            j.watermark_person.clone().into(),
            j.revision.into(),
            j.create_us.into(),
            j.update_us.into(),
        ],
    )
    .await?;
    Ok(())
}

pub async fn save<C: ConnectionTrait>(conn: &C, j: &JourneyRow) -> Result<()> {
    exec(
        conn,
        "UPDATE journeys SET settings = ?, state = ?, watermark_us = ?, watermark_person = ?, revision = ?, update_us = ? \
         WHERE id = ?",
        vec![
            j.settings.encode_to_vec().into(),
            (j.state as i32).into(),
            j.watermark_us.into(),
            j.watermark_person.clone().into(),
            j.revision.into(),
            j.update_us.into(),
            j.id.clone().into(),
        ],
    )
    .await?;
    Ok(())
}

pub async fn get<C: ConnectionTrait>(conn: &C, id: &str, lock: bool) -> Result<Option<JourneyRow>> {
    let suffix = if lock && conn.get_database_backend() == DbBackend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let rows = query(
        conn,
        &format!("SELECT {COLUMNS} FROM journeys WHERE id = ?{suffix}"),
        vec![id.into()],
    )
    .await?;
    rows.first().map(journey).transpose()
}

pub async fn list<C: ConnectionTrait>(conn: &C, after: &str, limit: u64) -> Result<Vec<JourneyRow>> {
    let rows = query(
        conn,
        &format!("SELECT {COLUMNS} FROM journeys WHERE id > ? ORDER BY id LIMIT ?"),
        vec![after.into(), (limit as i64).into()],
    )
    .await?;
    rows.iter().map(journey).collect()
}

/// The active journeys.
pub async fn active<C: ConnectionTrait>(conn: &C) -> Result<Vec<JourneyRow>> {
    let rows = query(
        conn,
        &format!("SELECT {COLUMNS} FROM journeys WHERE state = ? ORDER BY id"),
        vec![(pb::JourneyState::Active as i32).into()],
    )
    .await?;
    rows.iter().map(journey).collect()
}

pub async fn delete<C: ConnectionTrait>(conn: &C, id: &str) -> Result<()> {
    exec(conn, "DELETE FROM journey_positions WHERE journey_id = ?", vec![id.into()]).await?;
    exec(conn, "DELETE FROM journey_log WHERE journey_id = ?", vec![id.into()]).await?;
    exec(conn, "DELETE FROM journeys WHERE id = ?", vec![id.into()]).await?;
    Ok(())
}

/// One enrolment's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub person_id: String,
    pub journey_id: String,
    pub enrollment: i64,
    pub step_id: String,
    pub state: i32,
    pub due_us: i64,
    pub wait_since_us: Option<i64>,
    pub attempts: i32,
    pub enter_us: i64,
}

const POSITION: &str = "person_id, journey_id, enrollment, step_id, state, due_us, wait_since_us, attempts, enter_us";

fn position(r: &QueryResult) -> Result<Position> {
    Ok(Position {
        person_id: r.try_get("", "person_id")?,
        journey_id: r.try_get("", "journey_id")?,
        enrollment: r.try_get("", "enrollment")?,
        step_id: r.try_get("", "step_id")?,
        state: r.try_get("", "state")?,
        due_us: r.try_get("", "due_us")?,
        wait_since_us: r.try_get("", "wait_since_us")?,
        attempts: r.try_get("", "attempts")?,
        enter_us: r.try_get("", "enter_us")?,
    })
}

/// The latest enrolment of a person in a journey.
pub async fn latest<C: ConnectionTrait>(conn: &C, journey: &str, person: &str) -> Result<Option<Position>> {
    let rows = query(
        conn,
        &format!(
            "SELECT {POSITION} FROM journey_positions WHERE person_id = ? AND journey_id = ? ORDER BY enrollment DESC LIMIT 1"
        ),
        vec![person.into(), journey.into()],
    )
    .await?;
    rows.first().map(position).transpose()
}

/// Inserts a new enrolment (none when that enrolment number exists).
pub async fn enroll<C: ConnectionTrait>(conn: &C, p: &Position, now_us: i64) -> Result<bool> {
    let n = exec(
        conn,
        &format!(
            "INSERT INTO journey_positions ({POSITION}, update_us) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?) \
             ON CONFLICT (person_id, journey_id, enrollment) DO NOTHING"
        ),
        vec![
            p.person_id.clone().into(),
            p.journey_id.clone().into(),
            p.enrollment.into(),
            p.step_id.clone().into(),
            p.state.into(),
            p.due_us.into(),
            p.wait_since_us.into(),
            p.enter_us.into(),
            now_us.into(),
        ],
    )
    .await?;
    Ok(n > 0)
}

/// Writes a position back.
pub async fn update<C: ConnectionTrait>(conn: &C, p: &Position, now_us: i64) -> Result<()> {
    exec(
        conn,
        "UPDATE journey_positions SET step_id = ?, state = ?, due_us = ?, wait_since_us = ?, attempts = ?, update_us = ? \
         WHERE person_id = ? AND journey_id = ? AND enrollment = ?",
        vec![
            p.step_id.clone().into(),
            p.state.into(),
            p.due_us.into(),
            p.wait_since_us.into(),
            p.attempts.into(),
            now_us.into(),
            p.person_id.clone().into(),
            p.journey_id.clone().into(),
            p.enrollment.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Records that an enrolment reached a step (once).
pub async fn log<C: ConnectionTrait>(conn: &C, p: &Position, step: &str, at_us: i64) -> Result<()> {
    exec(
        conn,
        "INSERT INTO journey_log (journey_id, step_id, person_id, enrollment, at_us) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (journey_id, step_id, person_id, enrollment) DO NOTHING",
        vec![
            p.journey_id.clone().into(),
            step.into(),
            p.person_id.clone().into(),
            p.enrollment.into(),
            at_us.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Claims up to `limit` due positions of active journeys (another replica skips
/// them until this transaction ends).
pub async fn claim_due<C: ConnectionTrait>(conn: &C, now_us: i64, limit: usize) -> Result<Vec<Position>> {
    let lock = if conn.get_database_backend() == DbBackend::Postgres {
        " FOR UPDATE OF p SKIP LOCKED"
    } else {
        ""
    };
    let rows = query(
        conn,
        &format!(
            "SELECT p.person_id, p.journey_id, p.enrollment, p.step_id, p.state, p.due_us, p.wait_since_us, p.attempts, \
             p.enter_us FROM journey_positions p JOIN journeys j ON j.id = p.journey_id AND j.state = ? \
             WHERE p.state IN (?, ?) AND p.due_us <= ? ORDER BY p.due_us LIMIT ?{lock}"
        ),
        vec![
            (pb::JourneyState::Active as i32).into(),
            DUE.into(),
            WAITING.into(),
            now_us.into(),
            (limit as i64).into(),
        ],
    )
    .await?;
    rows.iter().map(position).collect()
}

/// The positions of `person` waiting for an event in active journeys, locked.
pub async fn waiting_of<C: ConnectionTrait>(conn: &C, person: &str) -> Result<Vec<Position>> {
    let lock = if conn.get_database_backend() == DbBackend::Postgres {
        " FOR UPDATE OF p"
    } else {
        ""
    };
    let rows = query(
        conn,
        &format!(
            "SELECT p.person_id, p.journey_id, p.enrollment, p.step_id, p.state, p.due_us, p.wait_since_us, p.attempts, \
             p.enter_us FROM journey_positions p JOIN journeys j ON j.id = p.journey_id AND j.state = ? \
             WHERE p.person_id = ? AND p.state = ?{lock}"
        ),
        vec![(pb::JourneyState::Active as i32).into(), person.into(), WAITING.into()],
    )
    .await?;
    rows.iter().map(position).collect()
}

/// Persons who entered `segment` after (`after_us`, `after_person`), oldest first.
pub async fn entered_since<C: ConnectionTrait>(
    conn: &C,
    segment: &str,
    after_us: i64,
    after_person: &str,
    limit: usize,
) -> Result<Vec<(String, i64)>> {
    let rows = query(
        conn,
        "SELECT person_id, enter_us FROM segment_members WHERE segment_id = ? \
         AND (enter_us > ? OR (enter_us = ? AND person_id > ?)) ORDER BY enter_us, person_id LIMIT ?",
        vec![
            segment.into(),
            after_us.into(),
            after_us.into(),
            after_person.into(),
            (limit as i64).into(),
        ],
    )
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("", "person_id")?, r.try_get("", "enter_us")?)))
        .collect()
}

/// Persons whose attribute `key` holds a date on `month_day` (`MM-DD`), as
/// `YYYY-MM-DD` or `MM-DD`.
pub async fn dated<C: ConnectionTrait>(conn: &C, key: &str, month_day: &str) -> Result<Vec<String>> {
    let attr = match conn.get_database_backend() {
        DbBackend::Postgres => format!("(attributes::jsonb ->> '{key}')"),
        _ => format!("json_extract(attributes, '$.{key}')"),
    };
    let rows = query(
        conn,
        &format!("SELECT id FROM customers WHERE merged_into IS NULL AND deleted = 0 AND ({attr} = ? OR {attr} LIKE ?)"),
        vec![month_day.into(), format!("____-{month_day}").into()],
    )
    .await?;
    rows.iter().map(|r| Ok(r.try_get("", "id")?)).collect()
}

/// Per step: (reached, on it now).
pub async fn step_counts<C: ConnectionTrait>(
    conn: &C,
    journey: &str,
) -> Result<(std::collections::HashMap<String, i64>, std::collections::HashMap<String, i64>)> {
    let mut reached = std::collections::HashMap::new();
    for r in query(
        conn,
        "SELECT step_id, COUNT(*) AS n FROM journey_log WHERE journey_id = ? GROUP BY step_id",
        vec![journey.into()],
    )
    .await?
    {
        reached.insert(r.try_get("", "step_id")?, r.try_get::<i64>("", "n")?);
    }
    let mut on = std::collections::HashMap::new();
    for r in query(
        conn,
        "SELECT step_id, COUNT(*) AS n FROM journey_positions WHERE journey_id = ? AND state IN (?, ?) GROUP BY step_id",
        vec![journey.into(), DUE.into(), WAITING.into()],
    )
    .await?
    {
        on.insert(r.try_get("", "step_id")?, r.try_get::<i64>("", "n")?);
    }
    Ok((reached, on))
}

/// (enrolments, still on a step, left).
pub async fn totals<C: ConnectionTrait>(conn: &C, journey: &str) -> Result<(i64, i64, i64)> {
    let rows = query(
        conn,
        "SELECT state, COUNT(*) AS n FROM journey_positions WHERE journey_id = ? GROUP BY state",
        vec![journey.into()],
    )
    .await?;
    let (mut all, mut active, mut done) = (0, 0, 0);
    for r in rows {
        let (s, n): (i32, i64) = (r.try_get("", "state")?, r.try_get("", "n")?);
        all += n;
        if s == DONE {
            done += n;
        } else {
            active += n;
        }
    }
    Ok((all, active, done))
}

/// Positions on steps that no longer exist leave (after an update).
pub async fn drop_missing_steps<C: ConnectionTrait>(conn: &C, journey: &str, steps: &[String]) -> Result<u64> {
    let mut values: Vec<Value> = vec![DONE.into(), journey.into(), DONE.into()];
    values.extend(steps.iter().map(|s| Value::from(s.clone())));
    exec(
        conn,
        &format!(
            "UPDATE journey_positions SET state = ? WHERE journey_id = ? AND state <> ? AND step_id NOT IN ({})",
            vec!["?"; steps.len().max(1)].join(", ")
        ),
        if steps.is_empty() {
            let mut v = values;
            v.push("".into());
            v
        } else {
            values
        },
    )
    .await
}

/// Erased persons leave every journey, and their steps are forgotten.
pub async fn erase<C: ConnectionTrait>(conn: &C, ids: &[&str]) -> Result<()> {
    let (cond, values) = crm_platform::db::any_of(conn.get_database_backend(), "person_id", ids);
    exec(conn, &format!("DELETE FROM journey_positions WHERE {cond}"), values.clone()).await?;
    exec(conn, &format!("DELETE FROM journey_log WHERE {cond}"), values).await?;
    Ok(())
}
