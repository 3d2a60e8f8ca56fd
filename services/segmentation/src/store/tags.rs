//! The tag taxonomy and the tags on customers.

use crm_platform::{
    Result,
    db::{exec, query},
    migrate::Dialect,
};
use sea_orm::{ConnectionTrait, Value};

pub fn migration(_: Dialect) -> Vec<String> {
    vec![
        "CREATE TABLE tags (id TEXT PRIMARY KEY, parent TEXT NOT NULL, level INTEGER NOT NULL, display_name TEXT NOT NULL, \
         description TEXT NOT NULL, revision BIGINT NOT NULL, create_us BIGINT NOT NULL, update_us BIGINT NOT NULL)"
            .into(),
        "CREATE INDEX tags_parent ON tags (parent, id)".into(),
        // A tag on a customer (the person: a merged customer's tags are its survivor's).
        "CREATE TABLE customer_tags (tag_id TEXT NOT NULL, customer_id TEXT NOT NULL, source INTEGER NOT NULL, \
         actor TEXT NOT NULL, assign_us BIGINT NOT NULL, expire_us BIGINT, PRIMARY KEY (tag_id, customer_id))"
            .into(),
        "CREATE INDEX customer_tags_customer ON customer_tags (customer_id, tag_id)".into(),
        "CREATE INDEX customer_tags_expiry ON customer_tags (expire_us)".into(),
    ]
}

/// A stored tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRow {
    pub id: String,
    pub parent: String,
    pub level: i32,
    pub display_name: String,
    pub description: String,
    pub revision: i64,
    pub create_us: i64,
    pub update_us: i64,
}

const COLUMNS: &str = "id, parent, level, display_name, description, revision, create_us, update_us";

fn row(r: &sea_orm::QueryResult) -> Result<TagRow> {
    Ok(TagRow {
        id: r.try_get("", "id")?,
        parent: r.try_get("", "parent")?,
        level: r.try_get("", "level")?,
        display_name: r.try_get("", "display_name")?,
        description: r.try_get("", "description")?,
        revision: r.try_get("", "revision")?,
        create_us: r.try_get("", "create_us")?,
        update_us: r.try_get("", "update_us")?,
    })
}

pub async fn get<C: ConnectionTrait>(conn: &C, id: &str) -> Result<Option<TagRow>> {
    let rows = query(conn, &format!("SELECT {COLUMNS} FROM tags WHERE id = ?"), vec![id.into()]).await?;
    rows.first().map(row).transpose()
}

/// Inserts a new tag; false when the id is taken.
pub async fn insert<C: ConnectionTrait>(conn: &C, t: &TagRow) -> Result<bool> {
    let n = exec(
        conn,
        &format!("INSERT INTO tags ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"),
        vec![
            t.id.as_str().into(),
            t.parent.as_str().into(),
            t.level.into(),
            t.display_name.as_str().into(),
            t.description.as_str().into(),
            t.revision.into(),
            t.create_us.into(),
            t.update_us.into(),
        ],
    )
    .await?;
    Ok(n == 1)
}

/// Writes a changed tag if its revision is still `expected`.
pub async fn update<C: ConnectionTrait>(conn: &C, t: &TagRow, expected: i64) -> Result<bool> {
    let n = exec(
        conn,
        "UPDATE tags SET display_name = ?, description = ?, revision = ?, update_us = ? WHERE id = ? AND revision = ?",
        vec![
            t.display_name.as_str().into(),
            t.description.as_str().into(),
            t.revision.into(),
            t.update_us.into(),
            t.id.as_str().into(),
            expected.into(),
        ],
    )
    .await?;
    Ok(n == 1)
}

pub async fn delete<C: ConnectionTrait>(conn: &C, id: &str) -> Result<()> {
    exec(conn, "DELETE FROM tags WHERE id = ?", vec![id.into()]).await?;
    Ok(())
}

/// Tags after `after` in id order (children of `parent` when given), up to `limit`.
pub async fn list<C: ConnectionTrait>(conn: &C, parent: Option<&str>, after: &str, limit: u64) -> Result<Vec<TagRow>> {
    let mut sql = format!("SELECT {COLUMNS} FROM tags WHERE id > ?");
    let mut values: Vec<Value> = vec![after.into()];
    if let Some(p) = parent {
        sql.push_str(" AND parent = ?");
        values.push(p.into());
    }
    sql.push_str(" ORDER BY id LIMIT ?");
    values.push(i64::try_from(limit).unwrap_or(i64::MAX).into());
    query(conn, &sql, values).await?.iter().map(row).collect()
}

/// What still uses a tag: a child tag or a customer, if any.
pub async fn first_use<C: ConnectionTrait>(conn: &C, id: &str) -> Result<Option<String>> {
    let child = query(
        conn,
        "SELECT id FROM tags WHERE parent = ? ORDER BY id LIMIT 1",
        vec![id.into()],
    )
    .await?;
    if let Some(r) = child.first() {
        return Ok(Some(format!("tags/{}", r.try_get::<String>("", "id")?)));
    }
    let tagged = query(
        conn,
        "SELECT customer_id FROM customer_tags WHERE tag_id = ? ORDER BY customer_id LIMIT 1",
        vec![id.into()],
    )
    .await?;
    tagged
        .first()
        .map(|r| Ok(format!("customers/{}", r.try_get::<String>("", "customer_id")?)))
        .transpose()
}

/// A tag on a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub tag_id: String,
    pub customer_id: String,
    pub source: i32,
    pub actor: String,
    pub assign_us: i64,
    pub expire_us: Option<i64>,
}

/// Sets the tag on the customer (or sets it again); true when it is new.
pub async fn assign<C: ConnectionTrait>(conn: &C, a: &Assignment) -> Result<bool> {
    let existed = !query(
        conn,
        "SELECT 1 AS x FROM customer_tags WHERE tag_id = ? AND customer_id = ?",
        vec![a.tag_id.as_str().into(), a.customer_id.as_str().into()],
    )
    .await?
    .is_empty();
    exec(
        conn,
        "INSERT INTO customer_tags (tag_id, customer_id, source, actor, assign_us, expire_us) VALUES (?, ?, ?, ?, ?, ?) \
         ON CONFLICT (tag_id, customer_id) DO UPDATE SET source = excluded.source, actor = excluded.actor, \
         assign_us = excluded.assign_us, expire_us = excluded.expire_us",
        vec![
            a.tag_id.as_str().into(),
            a.customer_id.as_str().into(),
            a.source.into(),
            a.actor.as_str().into(),
            a.assign_us.into(),
            a.expire_us.into(),
        ],
    )
    .await?;
    Ok(!existed)
}

/// Puts a rule's tag on the customers that do not have it yet (a tag already on, by
/// hand or by another rule, stays as it is); returns those newly tagged.
pub async fn assign_by_rule<C: ConnectionTrait>(
    conn: &C,
    tag_id: &str,
    actor: &str,
    people: &[String],
    now_us: i64,
) -> Result<Vec<String>> {
    let mut fresh = Vec::new();
    for p in people {
        let n = exec(
            conn,
            "INSERT INTO customer_tags (tag_id, customer_id, source, actor, assign_us, expire_us) VALUES (?, ?, ?, ?, ?, NULL) \
             ON CONFLICT (tag_id, customer_id) DO NOTHING",
            vec![tag_id.into(), p.as_str().into(), RULE.into(), actor.into(), now_us.into()],
        )
        .await?;
        if n == 1 {
            fresh.push(p.clone());
        }
    }
    Ok(fresh)
}

/// Takes a rule's tag off the customers it put it on; returns those untagged.
pub async fn unassign_by_rule<C: ConnectionTrait>(conn: &C, tag_id: &str, actor: &str, people: &[String]) -> Result<Vec<String>> {
    let mut gone = Vec::new();
    for p in people {
        let n = exec(
            conn,
            "DELETE FROM customer_tags WHERE tag_id = ? AND customer_id = ? AND source = ? AND actor = ?",
            vec![tag_id.into(), p.as_str().into(), RULE.into(), actor.into()],
        )
        .await?;
        if n == 1 {
            gone.push(p.clone());
        }
    }
    Ok(gone)
}

/// `TagSource::Rule`.
const RULE: i32 = 2;

/// Takes the tag off the customer; true when it was on.
pub async fn unassign<C: ConnectionTrait>(conn: &C, tag_id: &str, customer_id: &str) -> Result<bool> {
    let n = exec(
        conn,
        "DELETE FROM customer_tags WHERE tag_id = ? AND customer_id = ?",
        vec![tag_id.into(), customer_id.into()],
    )
    .await?;
    Ok(n == 1)
}

fn assignment(r: &sea_orm::QueryResult) -> Result<Assignment> {
    Ok(Assignment {
        tag_id: r.try_get("", "tag_id")?,
        customer_id: r.try_get("", "customer_id")?,
        source: r.try_get("", "source")?,
        actor: r.try_get("", "actor")?,
        assign_us: r.try_get("", "assign_us")?,
        expire_us: r.try_get("", "expire_us")?,
    })
}

/// The tags on a customer, in tag order.
pub async fn of_customer<C: ConnectionTrait>(conn: &C, customer_id: &str) -> Result<Vec<Assignment>> {
    query(
        conn,
        "SELECT tag_id, customer_id, source, actor, assign_us, expire_us FROM customer_tags WHERE customer_id = ? ORDER BY tag_id",
        vec![customer_id.into()],
    )
    .await?
    .iter()
    .map(assignment)
    .collect()
}

/// Tags on customers whose expiry passed at `now_us`, up to `limit`, locked for
/// removal (PostgreSQL skips rows another replica holds).
pub async fn expired<C: ConnectionTrait>(conn: &C, now_us: i64, limit: u64) -> Result<Vec<Assignment>> {
    let lock = if conn.get_database_backend() == sea_orm::DbBackend::Postgres {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    query(
        conn,
        &format!(
            "SELECT tag_id, customer_id, source, actor, assign_us, expire_us FROM customer_tags \
             WHERE expire_us IS NOT NULL AND expire_us <= ? ORDER BY expire_us, tag_id, customer_id LIMIT ?{lock}"
        ),
        vec![now_us.into(), i64::try_from(limit).unwrap_or(i64::MAX).into()],
    )
    .await?
    .iter()
    .map(assignment)
    .collect()
}

/// Every tag on the customers `ids`.
pub async fn on_customers<C: ConnectionTrait>(conn: &C, ids: &[String]) -> Result<Vec<Assignment>> {
    let mut out = Vec::new();
    for id in ids {
        out.extend(of_customer(conn, id).await?);
    }
    Ok(out)
}

/// The tags on a person: on the customer and on every customer merged into it.
pub async fn of_person<C: ConnectionTrait>(conn: &C, person_id: &str) -> Result<Vec<Assignment>> {
    query(
        conn,
        "SELECT tag_id, customer_id, source, actor, assign_us, expire_us FROM customer_tags \
         WHERE customer_id IN (SELECT id FROM customers WHERE person_id = ?) ORDER BY tag_id, customer_id",
        vec![person_id.into()],
    )
    .await?
    .iter()
    .map(assignment)
    .collect()
}
