//! Segments, their rule versions and their materialised membership.

use crm_platform::{
    Result,
    db::{exec, marks, query},
    migrate::Dialect,
};
use sea_orm::{ConnectionTrait, DbBackend, Value};

pub fn migration(_: Dialect) -> Vec<String> {
    vec![
        "CREATE TABLE segments (id TEXT PRIMARY KEY, display_name TEXT NOT NULL, description TEXT NOT NULL, \
         strategy TEXT NOT NULL, filter TEXT NOT NULL, version BIGINT NOT NULL, deps BIGINT NOT NULL, \
         time_dependent INTEGER NOT NULL, evaluated_version BIGINT NOT NULL, stale INTEGER NOT NULL, \
         evaluate_us BIGINT NOT NULL, member_count BIGINT NOT NULL, revision BIGINT NOT NULL, \
         create_us BIGINT NOT NULL, update_us BIGINT NOT NULL, rule_tag TEXT NOT NULL)"
            .into(),
        "CREATE TABLE segment_versions (segment_id TEXT NOT NULL, version BIGINT NOT NULL, filter TEXT NOT NULL, \
         actor TEXT NOT NULL, create_us BIGINT NOT NULL, PRIMARY KEY (segment_id, version))"
            .into(),
        // A person in a segment (the survivor of a merge).
        "CREATE TABLE segment_members (segment_id TEXT NOT NULL, person_id TEXT NOT NULL, enter_us BIGINT NOT NULL, \
         PRIMARY KEY (segment_id, person_id))"
            .into(),
        "CREATE INDEX segment_members_person ON segment_members (person_id, segment_id)".into(),
        // Activity conditions and RFM over the whole population read orders and
        // interactions by time: covering indexes answer them without the tables.
        "CREATE INDEX orders_time ON orders (place_us, person_id, status, currency, total_micros)".into(),
        "CREATE INDEX interactions_kind_time ON interactions (kind, occur_us, person_id, category)".into(),
    ]
}

/// A stored segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRow {
    pub id: String,
    pub display_name: String,
    pub description: String,
    pub strategy: String,
    pub filter: String,
    pub version: i64,
    pub deps: i64,
    pub time_dependent: bool,
    pub evaluated_version: i64,
    pub stale: bool,
    pub evaluate_us: i64,
    pub member_count: i64,
    pub revision: i64,
    pub create_us: i64,
    pub update_us: i64,
    /// The tag put on members; empty for none.
    pub rule_tag: String,
}

const COLUMNS: &str = "id, display_name, description, strategy, filter, version, deps, time_dependent, evaluated_version, \
                       stale, evaluate_us, member_count, revision, create_us, update_us, rule_tag";

fn row(r: &sea_orm::QueryResult) -> Result<SegmentRow> {
    Ok(SegmentRow {
        id: r.try_get("", "id")?,
        display_name: r.try_get("", "display_name")?,
        description: r.try_get("", "description")?,
        strategy: r.try_get("", "strategy")?,
        filter: r.try_get("", "filter")?,
        version: r.try_get("", "version")?,
        deps: r.try_get("", "deps")?,
        time_dependent: r.try_get::<i32>("", "time_dependent")? != 0,
        evaluated_version: r.try_get("", "evaluated_version")?,
        stale: r.try_get::<i32>("", "stale")? != 0,
        evaluate_us: r.try_get("", "evaluate_us")?,
        member_count: r.try_get("", "member_count")?,
        revision: r.try_get("", "revision")?,
        create_us: r.try_get("", "create_us")?,
        update_us: r.try_get("", "update_us")?,
        rule_tag: r.try_get("", "rule_tag")?,
    })
}

/// `FOR UPDATE` where the backend has row locks (SQLite's write lock covers it).
fn for_update<C: ConnectionTrait>(conn: &C) -> &'static str {
    if conn.get_database_backend() == DbBackend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    }
}

pub async fn get<C: ConnectionTrait>(conn: &C, id: &str) -> Result<Option<SegmentRow>> {
    let rows = query(conn, &format!("SELECT {COLUMNS} FROM segments WHERE id = ?"), vec![id.into()]).await?;
    rows.first().map(row).transpose()
}

/// The segment, locked until the transaction ends (evaluations of one segment run one
/// at a time).
pub async fn lock<C: ConnectionTrait>(conn: &C, id: &str) -> Result<Option<SegmentRow>> {
    let sql = format!("SELECT {COLUMNS} FROM segments WHERE id = ?{}", for_update(conn));
    query(conn, &sql, vec![id.into()]).await?.first().map(row).transpose()
}

/// The segments that read any of `deps`, locked in id order. Those still being
/// computed are included: a change that commits while a full evaluation runs waits
/// for it (the lock) and is then applied on top, never lost between the two.
pub async fn lock_reading<C: ConnectionTrait>(conn: &C, deps: i64) -> Result<Vec<SegmentRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM segments WHERE (deps & ?) <> 0 ORDER BY id{}",
        for_update(conn)
    );
    query(conn, &sql, vec![deps.into()]).await?.iter().map(row).collect()
}

/// Segments due a full evaluation: a new rule version, marked stale, or reading time
/// and last evaluated before `refresh_before_us`.
pub async fn due<C: ConnectionTrait>(conn: &C, refresh_before_us: i64) -> Result<Vec<String>> {
    texts(
        conn,
        "SELECT id FROM segments WHERE evaluated_version < version OR stale <> 0 \
         OR (time_dependent <> 0 AND evaluate_us < ?) ORDER BY id",
        vec![refresh_before_us.into()],
        "id",
    )
    .await
}

/// Marks the segments reading any of `deps` for a full evaluation.
pub async fn mark_stale<C: ConnectionTrait>(conn: &C, deps: i64) -> Result<()> {
    exec(
        conn,
        "UPDATE segments SET stale = 1 WHERE (deps & ?) <> 0 AND stale = 0",
        vec![deps.into()],
    )
    .await?;
    Ok(())
}

pub async fn insert<C: ConnectionTrait>(conn: &C, s: &SegmentRow) -> Result<bool> {
    let n = exec(
        conn,
        &format!(
            "INSERT INTO segments ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
        ),
        vec![
            s.id.as_str().into(),
            s.display_name.as_str().into(),
            s.description.as_str().into(),
            s.strategy.as_str().into(),
            s.filter.as_str().into(),
            s.version.into(),
            s.deps.into(),
            i32::from(s.time_dependent).into(),
            s.evaluated_version.into(),
            i32::from(s.stale).into(),
            s.evaluate_us.into(),
            s.member_count.into(),
            s.revision.into(),
            s.create_us.into(),
            s.update_us.into(),
            s.rule_tag.as_str().into(),
        ],
    )
    .await?;
    Ok(n == 1)
}

/// Writes the definition of a segment read at revision `expected`; false when it
/// changed since.
pub async fn update<C: ConnectionTrait>(conn: &C, s: &SegmentRow, expected: i64) -> Result<bool> {
    let n = exec(
        conn,
        "UPDATE segments SET display_name = ?, description = ?, strategy = ?, filter = ?, version = ?, deps = ?, \
         time_dependent = ?, revision = ?, update_us = ?, rule_tag = ? WHERE id = ? AND revision = ?",
        vec![
            s.display_name.as_str().into(),
            s.description.as_str().into(),
            s.strategy.as_str().into(),
            s.filter.as_str().into(),
            s.version.into(),
            s.deps.into(),
            i32::from(s.time_dependent).into(),
            s.revision.into(),
            s.update_us.into(),
            s.rule_tag.as_str().into(),
            s.id.as_str().into(),
            expected.into(),
        ],
    )
    .await?;
    Ok(n == 1)
}

/// Records a full evaluation of `version`.
pub async fn evaluated<C: ConnectionTrait>(conn: &C, id: &str, version: i64, now_us: i64, members: i64) -> Result<()> {
    exec(
        conn,
        "UPDATE segments SET evaluated_version = ?, stale = 0, evaluate_us = ?, member_count = ?, revision = revision + 1 \
         WHERE id = ?",
        vec![version.into(), now_us.into(), members.into(), id.into()],
    )
    .await?;
    Ok(())
}

pub async fn add_members_count<C: ConnectionTrait>(conn: &C, id: &str, delta: i64) -> Result<()> {
    exec(
        conn,
        "UPDATE segments SET member_count = member_count + ? WHERE id = ?",
        vec![delta.into(), id.into()],
    )
    .await?;
    Ok(())
}

pub async fn delete<C: ConnectionTrait>(conn: &C, id: &str) -> Result<()> {
    for sql in [
        "DELETE FROM segment_members WHERE segment_id = ?",
        "DELETE FROM segment_versions WHERE segment_id = ?",
        "DELETE FROM segments WHERE id = ?",
    ] {
        exec(conn, sql, vec![id.into()]).await?;
    }
    Ok(())
}

pub async fn list<C: ConnectionTrait>(conn: &C, after: &str, limit: u64) -> Result<Vec<SegmentRow>> {
    query(
        conn,
        &format!("SELECT {COLUMNS} FROM segments WHERE id > ? ORDER BY id LIMIT ?"),
        vec![after.into(), i64::try_from(limit).unwrap_or(i64::MAX).into()],
    )
    .await?
    .iter()
    .map(row)
    .collect()
}

/// The segments that put `tag` on their members.
pub async fn tagging<C: ConnectionTrait>(conn: &C, tag: &str) -> Result<Vec<String>> {
    texts(
        conn,
        "SELECT id FROM segments WHERE rule_tag = ? ORDER BY id",
        vec![tag.into()],
        "id",
    )
    .await
}

/// One text column of every row of a query.
async fn texts<C: ConnectionTrait>(conn: &C, sql: &str, values: Vec<Value>, column: &str) -> Result<Vec<String>> {
    query(conn, sql, values)
        .await?
        .iter()
        .map(|r| Ok(r.try_get("", column)?))
        .collect()
}

/// Every stored rule (the tags they name are in use).
pub async fn filters<C: ConnectionTrait>(conn: &C) -> Result<Vec<(String, String)>> {
    query(conn, "SELECT id, filter FROM segments ORDER BY id", vec![])
        .await?
        .iter()
        .map(|r| Ok((r.try_get("", "id")?, r.try_get("", "filter")?)))
        .collect()
}

/// A rule version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    pub version: i64,
    pub filter: String,
    pub actor: String,
    pub create_us: i64,
}

pub async fn add_version<C: ConnectionTrait>(conn: &C, id: &str, v: &VersionRow) -> Result<()> {
    exec(
        conn,
        "INSERT INTO segment_versions (segment_id, version, filter, actor, create_us) VALUES (?, ?, ?, ?, ?)",
        vec![
            id.into(),
            v.version.into(),
            v.filter.as_str().into(),
            v.actor.as_str().into(),
            v.create_us.into(),
        ],
    )
    .await?;
    Ok(())
}

pub async fn versions<C: ConnectionTrait>(conn: &C, id: &str) -> Result<Vec<VersionRow>> {
    query(
        conn,
        "SELECT version, filter, actor, create_us FROM segment_versions WHERE segment_id = ? ORDER BY version DESC",
        vec![id.into()],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(VersionRow {
            version: r.try_get("", "version")?,
            filter: r.try_get("", "filter")?,
            actor: r.try_get("", "actor")?,
            create_us: r.try_get("", "create_us")?,
        })
    })
    .collect()
}

/// Members of a segment after `after`, in person order: (person, entered).
pub async fn members<C: ConnectionTrait>(conn: &C, id: &str, after: &str, limit: u64) -> Result<Vec<(String, i64)>> {
    query(
        conn,
        "SELECT person_id, enter_us FROM segment_members WHERE segment_id = ? AND person_id > ? ORDER BY person_id LIMIT ?",
        vec![id.into(), after.into(), i64::try_from(limit).unwrap_or(i64::MAX).into()],
    )
    .await?
    .iter()
    .map(|r| Ok((r.try_get("", "person_id")?, r.try_get("", "enter_us")?)))
    .collect()
}

/// Every member of a segment.
pub async fn all_members<C: ConnectionTrait>(conn: &C, id: &str) -> Result<Vec<String>> {
    texts(
        conn,
        "SELECT person_id FROM segment_members WHERE segment_id = ?",
        vec![id.into()],
        "person_id",
    )
    .await
}

/// Which of `people` are members of a segment.
pub async fn members_among<C: ConnectionTrait>(conn: &C, id: &str, people: &[String]) -> Result<Vec<String>> {
    let refs: Vec<&str> = people.iter().map(String::as_str).collect();
    crm_platform::db::in_list(
        conn,
        "SELECT person_id FROM segment_members WHERE segment_id = ? AND person_id",
        id,
        &refs,
    )
    .await?
    .iter()
    .map(|r| Ok(r.try_get("", "person_id")?))
    .collect()
}

/// The segments a person is in: (segment, entered).
pub async fn of_person<C: ConnectionTrait>(conn: &C, person: &str) -> Result<Vec<(String, i64)>> {
    query(
        conn,
        "SELECT segment_id, enter_us FROM segment_members WHERE person_id = ? ORDER BY segment_id",
        vec![person.into()],
    )
    .await?
    .iter()
    .map(|r| Ok((r.try_get("", "segment_id")?, r.try_get("", "enter_us")?)))
    .collect()
}

pub async fn add_members<C: ConnectionTrait>(conn: &C, id: &str, people: &[String], now_us: i64) -> Result<()> {
    for chunk in people.chunks(300) {
        let rows = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 3);
        for p in chunk {
            values.extend([id.into(), p.as_str().into(), now_us.into()]);
        }
        exec(
            conn,
            &format!("INSERT INTO segment_members (segment_id, person_id, enter_us) VALUES {rows} ON CONFLICT DO NOTHING"),
            values,
        )
        .await?;
    }
    Ok(())
}

pub async fn remove_members<C: ConnectionTrait>(conn: &C, id: &str, people: &[String]) -> Result<()> {
    for chunk in people.chunks(500) {
        let mut values: Vec<Value> = vec![id.into()];
        values.extend(chunk.iter().map(|p| Value::from(p.as_str())));
        exec(
            conn,
            &format!(
                "DELETE FROM segment_members WHERE segment_id = ? AND person_id IN ({})",
                marks(chunk.len())
            ),
            values,
        )
        .await?;
    }
    Ok(())
}
