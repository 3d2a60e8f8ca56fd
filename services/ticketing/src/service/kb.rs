//! The knowledge base: articles with revisions, full-text search, suggestions for a
//! ticket or a customer's question, and deflections (a question answered without a
//! ticket).

use chrono::{DateTime, Utc};
use crm_platform::{
    Error, FieldViolation, Result,
    db::begin_write,
    feed::{self, NewEvent},
    idempotency::{self, Recorded},
};
use crm_proto::crm::ticketing::v1 as pb;
use prost::Message;

use super::{
    Ticketing, decode, etag, micros,
    tickets::{is_category, is_token},
    timestamp,
};
use crate::{
    domain::search::{query_terms, snippet, terms},
    store::kb::{self, ArticleColumns},
};

/// Article fields an update mask may name.
pub const ARTICLE_FIELDS: &[&str] = &["title", "body", "category", "tags", "language", "state"];

/// Query terms used at most (longer questions are cut).
const MAX_QUERY_TERMS: usize = 32;
/// Characters of body shown around a match.
const SNIPPET_CHARS: usize = 160;

/// `articles/{id}` → `id`.
pub fn article_id<'a>(name: &'a str, field: &str) -> Result<&'a str> {
    name.strip_prefix("articles/")
        .filter(|id| !id.is_empty() && !id.contains('/') && id.len() <= 128)
        .ok_or_else(|| Error::invalid(field, "must be articles/{article}"))
}

fn validate(a: &pb::Article) -> Result<()> {
    let mut bad = Vec::new();
    let title = a.title.trim().chars().count();
    if title == 0 || title > 300 {
        bad.push(FieldViolation::new("title", "required, at most 300 characters"));
    }
    let body = a.body.trim().chars().count();
    if body == 0 || body > 100_000 {
        bad.push(FieldViolation::new("body", "required, at most 100000 characters"));
    }
    if !a.category.is_empty() && !is_category(&a.category) {
        bad.push(FieldViolation::new("category", "[a-z][a-z0-9_]{0,62}"));
    }
    if a.tags.len() > 20 {
        bad.push(FieldViolation::new("tags", "at most 20"));
    }
    for (i, t) in a.tags.iter().enumerate() {
        if !is_token(t, 63, &['-']) {
            bad.push(FieldViolation::new(format!("tags[{i}]"), "[a-z0-9][a-z0-9_-]{0,62}"));
        }
    }
    if a.language.len() > 35 || a.language.contains(char::is_whitespace) {
        bad.push(FieldViolation::new("language", "a BCP 47 tag"));
    }
    if pb::ArticleState::try_from(a.state).is_err() {
        bad.push(FieldViolation::new("state", "unknown state"));
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(bad))
    }
}

/// Title (twice: it weighs more), tags and body as search terms.
fn article_terms(a: &pb::Article) -> String {
    let mut t = terms(&a.title);
    t.extend(terms(&a.title));
    t.extend(a.tags.iter().flat_map(|tag| terms(tag)));
    t.extend(terms(&a.body));
    t.join(" ")
}

fn columns<'a>(a: &'a pb::Article, terms: &'a str) -> ArticleColumns<'a> {
    ArticleColumns {
        state: a.state,
        category: &a.category,
        language: &a.language,
        create_us: super::micros_of(a.create_time.as_ref()),
        terms,
    }
}

fn article_event(a: &pb::Article, actor: &str, deleted: bool) -> NewEvent {
    NewEvent {
        event_type: "crm.ticketing.v1.ArticleChanged",
        subject: a.name.clone(),
        actor: actor.to_owned(),
        data: pb::ArticleChanged {
            article: Some(a.clone()),
            deleted,
        }
        .encode_to_vec(),
    }
}

impl Ticketing {
    /// Creates an article (a draft unless a state is given). Idempotent per `key`.
    pub async fn create_article(
        &self,
        actor: &str,
        mut a: pb::Article,
        key: Option<idempotency::Key>,
        now: DateTime<Utc>,
    ) -> Result<pb::Article> {
        if a.state == 0 {
            a.state = pb::ArticleState::Draft as i32;
        }
        validate(&a)?;
        if let Some(key) = &key
            && let Some(name) = idempotency::lookup(&self.db, key).await?
        {
            return self.get_article(&name).await;
        }
        let id = uuid::Uuid::now_v7().simple().to_string();
        a.name = format!("articles/{id}");
        a.title = a.title.trim().to_owned();
        a.revision = 1;
        a.create_time = Some(timestamp(now));
        a.update_time = Some(timestamp(now));
        a.etag.clear();
        let txn = begin_write(&self.db).await?;
        if let Some(key) = &key
            && idempotency::record(&txn, key, &a.name).await? == Recorded::Duplicate
        {
            txn.rollback().await?;
            let name = idempotency::lookup(&self.db, key)
                .await?
                .ok_or_else(|| Error::internal(anyhow::anyhow!("idempotency key vanished after a conflict")))?;
            return self.get_article(&name).await;
        }
        let terms = article_terms(&a);
        kb::insert(&txn, &id, &columns(&a, &terms), a.encode_to_vec()).await?;
        feed::append(&txn, article_event(&a, actor, false)).await?;
        txn.commit().await?;
        self.feed.committed();
        a.etag = etag(1);
        Ok(a)
    }

    pub async fn get_article(&self, name: &str) -> Result<pb::Article> {
        let id = article_id(name, "name")?;
        let (row, _) = kb::get(&self.db, id).await?.ok_or_else(|| Error::NotFound {
            resource_type: "article",
            name: name.to_owned(),
        })?;
        let mut a: pb::Article = decode(&row.data)?;
        a.etag = etag(row.revision);
        Ok(a)
    }

    /// Changes the fields `paths` of `patch.name`; a new title or body is a new revision.
    pub async fn update_article(
        &self,
        actor: &str,
        patch: pb::Article,
        paths: &[String],
        now: DateTime<Utc>,
    ) -> Result<pb::Article> {
        let id = article_id(&patch.name, "article.name")?.to_owned();
        let txn = begin_write(&self.db).await?;
        let (row, _) = kb::get(&txn, &id).await?.ok_or_else(|| Error::NotFound {
            resource_type: "article",
            name: patch.name.clone(),
        })?;
        if !patch.etag.is_empty() && patch.etag != etag(row.revision) {
            return Err(Error::EtagMismatch { name: patch.name });
        }
        let before: pb::Article = decode(&row.data)?;
        let mut a = before.clone();
        for path in paths {
            match path.as_str() {
                "title" => a.title = patch.title.trim().to_owned(),
                "body" => a.body.clone_from(&patch.body),
                "category" => a.category.clone_from(&patch.category),
                "tags" => a.tags.clone_from(&patch.tags),
                "language" => a.language.clone_from(&patch.language),
                "state" => a.state = patch.state,
                _ => {}
            }
        }
        if a.state == 0 {
            a.state = pb::ArticleState::Draft as i32;
        }
        validate(&a).map_err(|e| e.in_field("article"))?;
        let new_text = a.title != before.title || a.body != before.body;
        if new_text {
            a.revision += 1;
        }
        a.update_time = Some(timestamp(now));
        let terms = article_terms(&a);
        let revision = kb::update(&txn, &id, &a.name, row.revision, &columns(&a, &terms), a.encode_to_vec()).await?;
        if new_text {
            kb::add_revision(&txn, &id, a.revision, a.encode_to_vec()).await?;
        }
        feed::append(&txn, article_event(&a, actor, false)).await?;
        txn.commit().await?;
        self.feed.committed();
        a.etag = etag(revision);
        Ok(a)
    }

    pub async fn delete_article(&self, actor: &str, name: &str, given_etag: &str) -> Result<()> {
        let id = article_id(name, "name")?.to_owned();
        let txn = begin_write(&self.db).await?;
        let (row, _) = kb::get(&txn, &id).await?.ok_or_else(|| Error::NotFound {
            resource_type: "article",
            name: name.to_owned(),
        })?;
        if !given_etag.is_empty() && given_etag != etag(row.revision) {
            return Err(Error::EtagMismatch { name: name.to_owned() });
        }
        let a: pb::Article = decode(&row.data)?;
        kb::delete(&txn, &id).await?;
        feed::append(&txn, article_event(&a, actor, true)).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(())
    }

    /// A page of articles in name order after `after` (an article name).
    pub async fn list_articles(
        &self,
        category: Option<&str>,
        state: Option<i32>,
        after: &str,
        limit: u64,
    ) -> Result<Vec<pb::Article>> {
        let after_id = after.strip_prefix("articles/").unwrap_or("");
        kb::list(&self.db, category, state, after_id, limit)
            .await?
            .into_iter()
            .map(|row| {
                let mut a: pb::Article = decode(&row.data)?;
                a.etag = etag(row.revision);
                Ok(a)
            })
            .collect()
    }

    /// Text revisions, newest first, below revision `before` (0: from the newest).
    pub async fn article_revisions(&self, name: &str, before: i32, limit: u64) -> Result<Vec<pb::Article>> {
        let id = article_id(name, "name")?;
        if kb::get(&self.db, id).await?.is_none() {
            return Err(Error::NotFound {
                resource_type: "article",
                name: name.to_owned(),
            });
        }
        let before = if before <= 0 { i32::MAX } else { before };
        kb::revisions(&self.db, id, before, limit)
            .await?
            .into_iter()
            .map(|(_, data)| decode(&data))
            .collect()
    }

    /// Published articles matching `text`, best first.
    pub async fn search_articles(
        &self,
        text: &str,
        category: Option<&str>,
        language: Option<&str>,
        limit: u64,
    ) -> Result<Vec<pb::ArticleMatch>> {
        let words = query_terms(text, MAX_QUERY_TERMS);
        let found = kb::search(&self.db, &words, category, language, limit).await?;
        found
            .into_iter()
            .map(|(row, score)| {
                let mut a: pb::Article = decode(&row.data)?;
                a.etag = etag(row.revision);
                let snippet = snippet(&a.body, &words, SNIPPET_CHARS);
                Ok(pb::ArticleMatch {
                    article: Some(a),
                    score,
                    snippet,
                })
            })
            .collect()
    }

    /// Articles for a question: those of its category first, then any others.
    pub async fn suggest_articles(&self, text: &str, category: &str, limit: u64) -> Result<Vec<pb::ArticleMatch>> {
        let mut out = if category.is_empty() {
            Vec::new()
        } else {
            self.search_articles(text, Some(category), None, limit).await?
        };
        if (out.len() as u64) < limit {
            for m in self.search_articles(text, None, None, limit).await? {
                let name = m.article.as_ref().map(|a| a.name.clone());
                if !out.iter().any(|o| o.article.as_ref().map(|a| a.name.clone()) == name) && (out.len() as u64) < limit {
                    out.push(m);
                }
            }
        }
        Ok(out)
    }

    /// Records that `article` answered a question without a ticket; returns the
    /// article's deflections so far. Idempotent per `key`.
    pub async fn record_deflection(
        &self,
        article: &str,
        customer: &str,
        question: &str,
        key: Option<idempotency::Key>,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        let id = article_id(article, "article")?.to_owned();
        let mut bad = Vec::new();
        if !customer.is_empty()
            && !customer
                .strip_prefix("customers/")
                .is_some_and(|c| !c.is_empty() && !c.contains('/') && c.len() <= 128)
        {
            bad.push(FieldViolation::new("customer", "customers/{customer}"));
        }
        if question.chars().count() > 500 {
            bad.push(FieldViolation::new("query", "at most 500 characters"));
        }
        if !bad.is_empty() {
            return Err(Error::InvalidArgument(bad));
        }
        let count = |this: &Self| {
            let id = id.clone();
            let db = this.db.clone();
            async move { Ok::<_, Error>(kb::get(&db, &id).await?.map_or(0, |(_, n)| n)) }
        };
        if let Some(key) = &key
            && idempotency::lookup(&self.db, key).await?.is_some()
        {
            return count(self).await;
        }
        let txn = begin_write(&self.db).await?;
        let Some((row, _)) = kb::get(&txn, &id).await? else {
            return Err(Error::NotFound {
                resource_type: "article",
                name: article.to_owned(),
            });
        };
        let a: pb::Article = decode(&row.data)?;
        if a.state != pb::ArticleState::Published as i32 {
            return Err(Error::FailedPrecondition {
                reason: "ARTICLE_NOT_PUBLISHED",
                subject: article.to_owned(),
                message: "only a published article answers customers".into(),
            });
        }
        let deflection = uuid::Uuid::now_v7().simple().to_string();
        if let Some(key) = &key
            && idempotency::record(&txn, key, &format!("deflections/{deflection}")).await? == Recorded::Duplicate
        {
            txn.rollback().await?;
            return count(self).await;
        }
        let n = kb::add_deflection(&txn, &deflection, &id, customer, question.trim(), micros(now)).await?;
        txn.commit().await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn article_rules_name_every_field() {
        let a = pb::Article {
            title: " ".into(),
            body: String::new(),
            category: "How To".into(),
            tags: vec!["ok".into(), "No!".into()],
            state: 9,
            ..Default::default()
        };
        let Err(Error::InvalidArgument(v)) = validate(&a) else {
            panic!("accepted")
        };
        let fields: Vec<&str> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, vec!["title", "body", "category", "tags[1]", "state"]);
    }

    #[test]
    fn titles_weigh_twice() {
        let a = pb::Article {
            title: "Refund".into(),
            body: "Money back in 7 days".into(),
            tags: vec!["billing".into()],
            ..Default::default()
        };
        assert_eq!(article_terms(&a), "refund refund billing money back 7 days");
    }
}
