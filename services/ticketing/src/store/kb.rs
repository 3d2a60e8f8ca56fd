//! Knowledge-base articles: the current text, its search terms, every revision, and
//! the deflections recorded against it. Search uses PostgreSQL full-text search
//! (a GIN index over the terms) or SQLite's FTS5, ranked by each engine.

use crm_platform::{Error, Result};
use sea_orm::{ConnectionTrait, DbBackend, Value};

use super::{Row, exec, query, row};

/// The columns of an article that queries filter on.
#[derive(Debug, Clone)]
pub struct ArticleColumns<'a> {
    pub state: i32,
    pub category: &'a str,
    pub language: &'a str,
    pub create_us: i64,
    /// Search terms, space-separated (see `domain::search::terms`).
    pub terms: &'a str,
}

const PUBLISHED: i32 = 2;

async fn index<C: ConnectionTrait>(c: &C, id: &str, terms: &str) -> Result<()> {
    if c.get_database_backend() == DbBackend::Sqlite {
        exec(c, "DELETE FROM article_search WHERE id = ?", vec![id.into()]).await?;
        exec(
            c,
            "INSERT INTO article_search (id, terms) VALUES (?, ?)",
            vec![id.into(), terms.into()],
        )
        .await?;
    }
    Ok(())
}

/// Inserts an article at revision 1, with its first text revision.
pub async fn insert<C: ConnectionTrait>(c: &C, id: &str, cols: &ArticleColumns<'_>, data: Vec<u8>) -> Result<()> {
    exec(
        c,
        "INSERT INTO articles (id, revision, state, category, language, create_us, terms, data) \
         VALUES (?, 1, ?, ?, ?, ?, ?, ?)",
        vec![
            id.into(),
            cols.state.into(),
            cols.category.into(),
            cols.language.into(),
            cols.create_us.into(),
            cols.terms.into(),
            data.clone().into(),
        ],
    )
    .await?;
    add_revision(c, id, 1, data).await?;
    index(c, id, cols.terms).await
}

/// Keeps the article's text as it is at `revision`.
pub async fn add_revision<C: ConnectionTrait>(c: &C, id: &str, revision: i32, data: Vec<u8>) -> Result<()> {
    exec(
        c,
        "INSERT INTO article_revisions (article_id, revision, data) VALUES (?, ?, ?)",
        vec![id.into(), revision.into(), data.into()],
    )
    .await?;
    Ok(())
}

/// Replaces an article read at `revision`; ABORTED when it changed meanwhile.
pub async fn update<C: ConnectionTrait>(
    c: &C,
    id: &str,
    name: &str,
    revision: i64,
    cols: &ArticleColumns<'_>,
    data: Vec<u8>,
) -> Result<i64> {
    let changed = exec(
        c,
        "UPDATE articles SET revision = ?, state = ?, category = ?, language = ?, terms = ?, data = ? \
         WHERE id = ? AND revision = ?",
        vec![
            (revision + 1).into(),
            cols.state.into(),
            cols.category.into(),
            cols.language.into(),
            cols.terms.into(),
            data.into(),
            id.into(),
            revision.into(),
        ],
    )
    .await?;
    if changed == 0 {
        return Err(Error::EtagMismatch { name: name.to_owned() });
    }
    index(c, id, cols.terms).await?;
    Ok(revision + 1)
}

/// An article and its deflection count.
pub async fn get<C: ConnectionTrait>(c: &C, id: &str) -> Result<Option<(Row, i64)>> {
    let rows = query(
        c,
        "SELECT id, revision, data, deflections FROM articles WHERE id = ?",
        vec![id.into()],
    )
    .await?;
    rows.first().map(|r| Ok((row(r)?, r.try_get("", "deflections")?))).transpose()
}

/// Deletes an article with its revisions and search entry.
pub async fn delete<C: ConnectionTrait>(c: &C, id: &str) -> Result<()> {
    for sql in [
        "DELETE FROM article_revisions WHERE article_id = ?",
        "DELETE FROM deflections WHERE article_id = ?",
        "DELETE FROM articles WHERE id = ?",
    ] {
        exec(c, sql, vec![id.into()]).await?;
    }
    if c.get_database_backend() == DbBackend::Sqlite {
        exec(c, "DELETE FROM article_search WHERE id = ?", vec![id.into()]).await?;
    }
    Ok(())
}

/// A page of articles in id order after `after`.
pub async fn list<C: ConnectionTrait>(
    c: &C,
    category: Option<&str>,
    state: Option<i32>,
    after: &str,
    limit: u64,
) -> Result<Vec<Row>> {
    let mut sql = String::from("SELECT id, revision, data FROM articles WHERE id > ?");
    let mut values: Vec<Value> = vec![after.into()];
    if let Some(category) = category {
        sql.push_str(" AND category = ?");
        values.push(category.into());
    }
    if let Some(state) = state {
        sql.push_str(" AND state = ?");
        values.push(state.into());
    }
    sql.push_str(" ORDER BY id LIMIT ?");
    values.push((limit as i64).into());
    query(c, &sql, values).await?.iter().map(row).collect()
}

/// Text revisions of an article, newest first, below `before`.
pub async fn revisions<C: ConnectionTrait>(c: &C, id: &str, before: i32, limit: u64) -> Result<Vec<(i32, Vec<u8>)>> {
    let rows = query(
        c,
        "SELECT revision, data FROM article_revisions WHERE article_id = ? AND revision < ? \
         ORDER BY revision DESC LIMIT ?",
        vec![id.into(), before.into(), (limit as i64).into()],
    )
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("", "revision")?, r.try_get("", "data")?)))
        .collect()
}

/// Published articles matching any of `terms`, best first: (row, score).
pub async fn search<C: ConnectionTrait>(
    c: &C,
    terms: &[String],
    category: Option<&str>,
    language: Option<&str>,
    limit: u64,
) -> Result<Vec<(Row, f64)>> {
    if terms.is_empty() {
        return Ok(Vec::new());
    }
    // Terms are letters and digits only (the tokenizer guarantees it); quoted anyway.
    let mut values: Vec<Value> = Vec::new();
    let mut sql = if c.get_database_backend() == DbBackend::Postgres {
        let q = terms
            .iter()
            .map(|t| format!("'{}'", t.replace('\'', "")))
            .collect::<Vec<_>>()
            .join(" | ");
        values.push(q.into());
        values.push(PUBLISHED.into());
        String::from(
            "SELECT a.id, a.revision, a.data, \
             CAST(ts_rank_cd(to_tsvector('simple', a.terms), q) AS DOUBLE PRECISION) AS score \
             FROM articles a, to_tsquery('simple', ?) q \
             WHERE to_tsvector('simple', a.terms) @@ q AND a.state = ?",
        )
    } else {
        let q = terms
            .iter()
            .map(|t| format!("\"{}\"", t.replace('"', "")))
            .collect::<Vec<_>>()
            .join(" OR ");
        values.push(q.into());
        values.push(PUBLISHED.into());
        // bm25 is lower for better matches.
        String::from(
            "SELECT a.id, a.revision, a.data, -bm25(article_search) AS score \
             FROM article_search JOIN articles a ON a.id = article_search.id \
             WHERE article_search MATCH ? AND a.state = ?",
        )
    };
    if let Some(category) = category {
        sql.push_str(" AND a.category = ?");
        values.push(category.into());
    }
    if let Some(language) = language {
        sql.push_str(" AND a.language = ?");
        values.push(language.into());
    }
    sql.push_str(" ORDER BY score DESC, a.id LIMIT ?");
    values.push((limit as i64).into());
    query(c, &sql, values)
        .await?
        .iter()
        .map(|r| Ok((row(r)?, r.try_get("", "score")?)))
        .collect()
}

/// Records a deflection and returns the article's count.
pub async fn add_deflection<C: ConnectionTrait>(
    c: &C,
    id: &str,
    article_id: &str,
    customer: &str,
    question: &str,
    at_us: i64,
) -> Result<i64> {
    exec(
        c,
        "INSERT INTO deflections (id, article_id, customer, query, at_us) VALUES (?, ?, ?, ?, ?)",
        vec![id.into(), article_id.into(), customer.into(), question.into(), at_us.into()],
    )
    .await?;
    exec(
        c,
        "UPDATE articles SET deflections = deflections + 1 WHERE id = ?",
        vec![article_id.into()],
    )
    .await?;
    Ok(get(c, article_id).await?.map_or(0, |(_, n)| n))
}
