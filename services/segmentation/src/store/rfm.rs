//! Stored RFM: per person, and the boundaries of the last full computation.

use std::collections::BTreeMap;

use crm_platform::{
    Result,
    db::{exec, query},
    migrate::Dialect,
};
use crm_proto::crm::segmentation::v1 as pb;
use sea_orm::{ConnectionTrait, Value};

use crate::rfm::Boundaries;

pub fn migration(_: Dialect) -> Vec<String> {
    vec![
        "CREATE TABLE rfm (person_id TEXT PRIMARY KEY, recency_days BIGINT NOT NULL, frequency BIGINT NOT NULL, \
         monetary_micros BIGINT NOT NULL, r_score INTEGER NOT NULL, f_score INTEGER NOT NULL, m_score INTEGER NOT NULL, \
         rfm_group INTEGER NOT NULL, compute_us BIGINT NOT NULL)"
            .into(),
        "CREATE INDEX rfm_group ON rfm (rfm_group, person_id)".into(),
        "CREATE TABLE rfm_boundaries (singleton INTEGER PRIMARY KEY CHECK (singleton = 1), data TEXT NOT NULL)".into(),
    ]
}

/// A person's measures over the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw {
    pub person: String,
    pub recency_days: i64,
    pub frequency: i64,
    pub monetary_micros: i64,
}

/// A person's measures with their scores and group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scored {
    pub raw: Raw,
    pub recency_score: i32,
    pub frequency_score: i32,
    pub monetary_score: i32,
    pub group: pb::RfmGroup,
}

/// Orders that count: placed in the window, not cancelled or refunded.
const COUNTED: &str = "place_us >= ? AND place_us <= ? AND status NOT IN (5, 6)";

fn raw(r: &sea_orm::QueryResult, now_us: i64) -> Result<Raw> {
    let last: i64 = r.try_get("", "last_us")?;
    Ok(Raw {
        person: r.try_get("", "person_id")?,
        recency_days: (now_us - last).max(0) / 86_400_000_000,
        frequency: r.try_get("", "n")?,
        monetary_micros: r.try_get("", "m")?,
    })
}

fn aggregate(filter: &str) -> String {
    format!(
        "SELECT person_id, MAX(place_us) AS last_us, COUNT(*) AS n, \
         CAST(COALESCE(SUM(CASE WHEN currency = ? THEN total_micros ELSE 0 END), 0) AS BIGINT) AS m \
         FROM orders WHERE {COUNTED}{filter} GROUP BY person_id"
    )
}

/// Every active person's measures.
pub async fn raw_all<C: ConnectionTrait>(conn: &C, currency: &str, since_us: i64, now_us: i64) -> Result<Vec<Raw>> {
    query(conn, &aggregate(""), vec![currency.into(), since_us.into(), now_us.into()])
        .await?
        .iter()
        .map(|r| raw(r, now_us))
        .collect()
}

/// One person's measures; `None` without an order that counts.
pub async fn raw_of<C: ConnectionTrait>(
    conn: &C,
    person: &str,
    currency: &str,
    since_us: i64,
    now_us: i64,
) -> Result<Option<Raw>> {
    query(
        conn,
        &aggregate(" AND person_id = ?"),
        vec![currency.into(), since_us.into(), now_us.into(), person.into()],
    )
    .await?
    .first()
    .map(|r| raw(r, now_us))
    .transpose()
}

const UPSERT_SET: &str = "ON CONFLICT (person_id) DO UPDATE SET recency_days = excluded.recency_days, \
     frequency = excluded.frequency, monetary_micros = excluded.monetary_micros, r_score = excluded.r_score, \
     f_score = excluded.f_score, m_score = excluded.m_score, rfm_group = excluded.rfm_group, \
     compute_us = excluded.compute_us";

/// Scores in bulk: on PostgreSQL each column travels as one text parameter split
/// into an array (`unnest`), tens of thousands of rows per statement.
pub async fn upsert_all<C: ConnectionTrait>(conn: &C, scored: &[Scored], compute_us: i64) -> Result<()> {
    if conn.get_database_backend() != sea_orm::DbBackend::Postgres {
        for chunk in scored.chunks(500) {
            upsert(conn, chunk, compute_us).await?;
        }
        return Ok(());
    }
    for chunk in scored.chunks(20_000) {
        if chunk.len() < 2 {
            // An empty text splits into no element: one row goes the plain way.
            upsert(conn, chunk, compute_us).await?;
            continue;
        }
        let col = |f: &dyn Fn(&Scored) -> String| chunk.iter().map(f).collect::<Vec<_>>().join("\u{1f}");
        // In the order the statement reads them: the scalar, then the columns.
        let values: Vec<Value> = vec![
            compute_us.into(),
            col(&|s| s.raw.person.clone()).into(),
            col(&|s| s.raw.recency_days.to_string()).into(),
            col(&|s| s.raw.frequency.to_string()).into(),
            col(&|s| s.raw.monetary_micros.to_string()).into(),
            col(&|s| s.recency_score.to_string()).into(),
            col(&|s| s.frequency_score.to_string()).into(),
            col(&|s| s.monetary_score.to_string()).into(),
            col(&|s| (s.group as i32).to_string()).into(),
        ];
        let arr = |cast: &str| format!("CAST(string_to_array(?, chr(31)) AS {cast}[])");
        exec(
            conn,
            &format!(
                "INSERT INTO rfm (person_id, recency_days, frequency, monetary_micros, r_score, f_score, m_score, rfm_group, compute_us) \
                 SELECT u.p, u.r, u.f, u.m, u.rs, u.fs, u.ms, u.g, ? FROM unnest({}, {}, {}, {}, {}, {}, {}, {}) \
                 AS u(p, r, f, m, rs, fs, ms, g) {UPSERT_SET}",
                arr("text"),
                arr("bigint"),
                arr("bigint"),
                arr("bigint"),
                arr("integer"),
                arr("integer"),
                arr("integer"),
                arr("integer"),
            ),
            values,
        )
        .await?;
    }
    Ok(())
}

pub async fn upsert<C: ConnectionTrait>(conn: &C, scored: &[Scored], compute_us: i64) -> Result<()> {
    if scored.is_empty() {
        return Ok(());
    }
    let rows = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; scored.len()].join(", ");
    let mut values: Vec<Value> = Vec::with_capacity(scored.len() * 9);
    for s in scored {
        values.extend([
            Value::from(s.raw.person.as_str()),
            s.raw.recency_days.into(),
            s.raw.frequency.into(),
            s.raw.monetary_micros.into(),
            s.recency_score.into(),
            s.frequency_score.into(),
            s.monetary_score.into(),
            (s.group as i32).into(),
            compute_us.into(),
        ]);
    }
    exec(
        conn,
        &format!(
            "INSERT INTO rfm (person_id, recency_days, frequency, monetary_micros, r_score, f_score, m_score, rfm_group, compute_us) \
             VALUES {rows} ON CONFLICT (person_id) DO UPDATE SET recency_days = excluded.recency_days, \
             frequency = excluded.frequency, monetary_micros = excluded.monetary_micros, r_score = excluded.r_score, \
             f_score = excluded.f_score, m_score = excluded.m_score, rfm_group = excluded.rfm_group, \
             compute_us = excluded.compute_us"
        ),
        values,
    )
    .await?;
    Ok(())
}

/// Drops the RFM of `people`.
pub async fn remove_all<C: ConnectionTrait>(conn: &C, people: &[String]) -> Result<()> {
    for chunk in people.chunks(500) {
        exec(
            conn,
            &format!(
                "DELETE FROM rfm WHERE person_id IN ({})",
                crm_platform::db::marks(chunk.len())
            ),
            chunk.iter().map(|p| Value::from(p.as_str())).collect(),
        )
        .await?;
    }
    Ok(())
}

pub async fn remove<C: ConnectionTrait>(conn: &C, person: &str) -> Result<()> {
    exec(conn, "DELETE FROM rfm WHERE person_id = ?", vec![person.into()]).await?;
    Ok(())
}

fn group_from(n: i32) -> pb::RfmGroup {
    pb::RfmGroup::try_from(n).unwrap_or(pb::RfmGroup::Unspecified)
}

pub async fn group_of<C: ConnectionTrait>(conn: &C, person: &str) -> Result<pb::RfmGroup> {
    let rows = query(conn, "SELECT rfm_group FROM rfm WHERE person_id = ?", vec![person.into()]).await?;
    Ok(match rows.first() {
        Some(r) => group_from(r.try_get("", "rfm_group")?),
        None => pb::RfmGroup::Unspecified,
    })
}

/// Every person's group.
pub async fn groups<C: ConnectionTrait>(conn: &C) -> Result<BTreeMap<String, pb::RfmGroup>> {
    query(conn, "SELECT person_id, rfm_group FROM rfm", vec![])
        .await?
        .iter()
        .map(|r| Ok((r.try_get("", "person_id")?, group_from(r.try_get("", "rfm_group")?))))
        .collect()
}

/// A person's stored RFM with its time.
pub async fn get<C: ConnectionTrait>(conn: &C, person: &str) -> Result<Option<(Scored, i64)>> {
    let rows = query(
        conn,
        "SELECT person_id, recency_days, frequency, monetary_micros, r_score, f_score, m_score, rfm_group, compute_us \
         FROM rfm WHERE person_id = ?",
        vec![person.into()],
    )
    .await?;
    rows.first()
        .map(|r| {
            Ok((
                Scored {
                    raw: Raw {
                        person: r.try_get("", "person_id")?,
                        recency_days: r.try_get("", "recency_days")?,
                        frequency: r.try_get("", "frequency")?,
                        monetary_micros: r.try_get("", "monetary_micros")?,
                    },
                    recency_score: r.try_get("", "r_score")?,
                    frequency_score: r.try_get("", "f_score")?,
                    monetary_score: r.try_get("", "m_score")?,
                    group: group_from(r.try_get("", "rfm_group")?),
                },
                r.try_get("", "compute_us")?,
            ))
        })
        .transpose()
}

/// Customers per group.
pub async fn group_counts<C: ConnectionTrait>(conn: &C) -> Result<Vec<(pb::RfmGroup, i64)>> {
    query(
        conn,
        "SELECT rfm_group, COUNT(*) AS n FROM rfm GROUP BY rfm_group ORDER BY rfm_group",
        vec![],
    )
    .await?
    .iter()
    .map(|r| Ok((group_from(r.try_get("", "rfm_group")?), r.try_get("", "n")?)))
    .collect()
}

pub async fn boundaries<C: ConnectionTrait>(conn: &C) -> Result<Option<Boundaries>> {
    let rows = query(conn, "SELECT data FROM rfm_boundaries WHERE singleton = 1", vec![]).await?;
    rows.first()
        .map(|r| {
            let text: String = r.try_get("", "data")?;
            serde_json::from_str(&text).map_err(crm_platform::Error::internal)
        })
        .transpose()
}

pub async fn save_boundaries<C: ConnectionTrait>(conn: &C, b: &Boundaries) -> Result<()> {
    let data = serde_json::to_string(b).map_err(crm_platform::Error::internal)?;
    exec(
        conn,
        "INSERT INTO rfm_boundaries (singleton, data) VALUES (1, ?) ON CONFLICT (singleton) DO UPDATE SET data = excluded.data",
        vec![data.into()],
    )
    .await?;
    Ok(())
}

/// People with an order that counts in the window.
pub async fn active<C: ConnectionTrait>(conn: &C, since_us: i64, now_us: i64) -> Result<i64> {
    let rows = query(
        conn,
        &format!("SELECT COUNT(DISTINCT person_id) AS n FROM orders WHERE {COUNTED}"),
        vec![since_us.into(), now_us.into()],
    )
    .await?;
    Ok(match rows.first() {
        Some(r) => r.try_get("", "n")?,
        None => 0,
    })
}
