//! The knowledge-base service. Staff read with `ticket.read` and edit with
//! `ticket.admin`; customers (self-service tokens with `ticket.read`) get, search
//! and are suggested published articles, and record deflections for themselves.

use chrono::Utc;
use crm_platform::{Error, auth, auth::Principal, idempotency, paging};
use crm_proto::crm::ticketing::v1::{self as pb, knowledge_base_service_server::KnowledgeBaseService};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{Api, DEFAULT_PAGE_SIZE, denied, page, paging_of, required};
use crate::service::kb::ARTICLE_FIELDS;

/// The article collection, as permission checks name it.
const ARTICLES: &str = "articles";

#[derive(Debug, Clone)]
pub struct KnowledgeBase(pub Api);

impl KnowledgeBase {
    /// Reading published articles: staff with `ticket.read`, or a customer who may
    /// use self-service tickets.
    async fn check_reader(&self, p: &Principal) -> Result<(), Error> {
        match &p.customer_id {
            Some(own) => self.0.check(p, "ticket.read", &format!("customers/{own}/tickets")).await,
            None => self.0.check(p, "ticket.read", ARTICLES).await,
        }
    }

    async fn check_editor(&self, p: &Principal) -> Result<(), Error> {
        Api::staff_only(p, "ticket.admin")?;
        self.0.check(p, "ticket.admin", ARTICLES).await
    }

    fn search_size(requested: i32, default: u32, max: u32) -> Result<u64, Error> {
        Ok(u64::from(paging::page_size(requested, default, max)?))
    }
}

fn article_paths(mask: Option<prost_types::FieldMask>, patch: &pb::Article) -> Result<Vec<String>, Error> {
    let mask = mask.map(|m| m.paths).unwrap_or_default();
    if mask.is_empty() {
        let set = [
            ("title", !patch.title.is_empty()),
            ("body", !patch.body.is_empty()),
            ("category", !patch.category.is_empty()),
            ("tags", !patch.tags.is_empty()),
            ("language", !patch.language.is_empty()),
            ("state", patch.state != 0),
        ];
        return Ok(set.iter().filter(|(_, on)| *on).map(|(f, _)| (*f).to_owned()).collect());
    }
    let bad: Vec<_> = mask
        .iter()
        .enumerate()
        .filter(|(_, p)| !ARTICLE_FIELDS.contains(&p.as_str()))
        .map(|(i, p)| {
            crm_platform::FieldViolation::new(
                format!("update_mask.paths[{i}]"),
                format!("`{p}` cannot be changed; one of {}", ARTICLE_FIELDS.join(", ")),
            )
        })
        .collect();
    if bad.is_empty() {
        Ok(mask)
    } else {
        Err(Error::InvalidArgument(bad))
    }
}

#[tonic::async_trait]
impl KnowledgeBaseService for KnowledgeBase {
    async fn create_article(&self, req: Request<pb::CreateArticleRequest>) -> Result<Response<pb::Article>, Status> {
        let principal = auth::principal(&req)?;
        self.check_editor(&principal).await?;
        let req = req.into_inner();
        let key = idempotency::Key::new("CreateArticle", &principal.user_id, &req.request_id, &req.encode_to_vec())?;
        let article = required(req.article, "article")?;
        let created = self
            .0
            .ticketing
            .create_article(&principal.user_id, article, key, Utc::now())
            .await
            .map_err(|e| e.in_field("article"))?;
        Ok(Response::new(created))
    }

    async fn get_article(&self, req: Request<pb::GetArticleRequest>) -> Result<Response<pb::Article>, Status> {
        let principal = auth::principal(&req)?;
        self.check_reader(&principal).await?;
        let a = self.0.ticketing.get_article(&req.get_ref().name).await?;
        if principal.customer_id.is_some() && a.state != pb::ArticleState::Published as i32 {
            return Err(Error::NotFound {
                resource_type: "article",
                name: a.name,
            }
            .into());
        }
        Ok(Response::new(a))
    }

    async fn list_articles(&self, req: Request<pb::ListArticlesRequest>) -> Result<Response<pb::ListArticlesResponse>, Status> {
        let principal = auth::principal(&req)?;
        Api::staff_only(&principal, "ticket.read")?;
        self.check_reader(&principal).await?;
        let req = req.into_inner();
        let state = pb::ArticleState::try_from(req.state).map_err(|_| Error::invalid("state", "unknown state"))?;
        let fingerprint = paging::fingerprint(&[ARTICLES, &req.category, state.as_str_name()]);
        let (size, after) = paging_of::<String>(
            &self.0.page_tokens,
            &fingerprint,
            req.page_size,
            &req.page_token,
            DEFAULT_PAGE_SIZE,
        )?;
        let found = self
            .0
            .ticketing
            .list_articles(
                (!req.category.is_empty()).then_some(req.category.as_str()),
                (req.state != 0).then_some(req.state),
                after.as_deref().unwrap_or(""),
                u64::from(size) + 1,
            )
            .await?;
        let (articles, next_page_token) = page(&self.0.page_tokens, &fingerprint, found, size, |a: &pb::Article| {
            a.name.clone()
        })?;
        Ok(Response::new(pb::ListArticlesResponse {
            articles,
            next_page_token,
        }))
    }

    async fn update_article(&self, req: Request<pb::UpdateArticleRequest>) -> Result<Response<pb::Article>, Status> {
        let principal = auth::principal(&req)?;
        self.check_editor(&principal).await?;
        let req = req.into_inner();
        let patch = required(req.article, "article")?;
        let paths = article_paths(req.update_mask, &patch)?;
        let updated = self
            .0
            .ticketing
            .update_article(&principal.user_id, patch, &paths, Utc::now())
            .await?;
        Ok(Response::new(updated))
    }

    async fn delete_article(
        &self,
        req: Request<pb::DeleteArticleRequest>,
    ) -> Result<Response<pb::DeleteArticleResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check_editor(&principal).await?;
        let req = req.get_ref();
        self.0
            .ticketing
            .delete_article(&principal.user_id, &req.name, &req.etag)
            .await?;
        Ok(Response::new(pb::DeleteArticleResponse {}))
    }

    async fn list_article_revisions(
        &self,
        req: Request<pb::ListArticleRevisionsRequest>,
    ) -> Result<Response<pb::ListArticleRevisionsResponse>, Status> {
        let principal = auth::principal(&req)?;
        Api::staff_only(&principal, "ticket.read")?;
        self.check_reader(&principal).await?;
        let req = req.into_inner();
        let fingerprint = paging::fingerprint(&["revisions", &req.name]);
        let (size, before) = paging_of::<i32>(
            &self.0.page_tokens,
            &fingerprint,
            req.page_size,
            &req.page_token,
            DEFAULT_PAGE_SIZE,
        )?;
        let found = self
            .0
            .ticketing
            .article_revisions(&req.name, before.unwrap_or(0), u64::from(size) + 1)
            .await?;
        let (revisions, next_page_token) = page(&self.0.page_tokens, &fingerprint, found, size, |a: &pb::Article| a.revision)?;
        Ok(Response::new(pb::ListArticleRevisionsResponse {
            revisions,
            next_page_token,
        }))
    }

    async fn search_articles(
        &self,
        req: Request<pb::SearchArticlesRequest>,
    ) -> Result<Response<pb::SearchArticlesResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check_reader(&principal).await?;
        let req = req.into_inner();
        let chars = req.query.trim().chars().count();
        if chars == 0 || chars > 500 {
            return Err(Error::invalid("query", "1 to 500 characters").into());
        }
        let limit = Self::search_size(req.page_size, 10, 50)?;
        let matches = self
            .0
            .ticketing
            .search_articles(
                &req.query,
                (!req.category.is_empty()).then_some(req.category.as_str()),
                (!req.language.is_empty()).then_some(req.language.as_str()),
                limit,
            )
            .await?;
        Ok(Response::new(pb::SearchArticlesResponse { matches }))
    }

    async fn suggest_articles(
        &self,
        req: Request<pb::SuggestArticlesRequest>,
    ) -> Result<Response<pb::SearchArticlesResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let limit = Self::search_size(req.page_size, 5, 20)?;
        let (text, category) = match (req.ticket.is_empty(), req.text.trim().is_empty()) {
            (false, true) => {
                let t = self
                    .0
                    .load_for(&principal, "ticket.read", &req.ticket)
                    .await
                    .map_err(|e| e.in_field("ticket"))?;
                (format!("{} {}", t.subject, t.description), t.category)
            }
            (true, false) => {
                self.check_reader(&principal).await?;
                if req.text.chars().count() > 5000 {
                    return Err(Error::invalid("text", "at most 5000 characters").into());
                }
                (req.text, req.category)
            }
            _ => return Err(Error::invalid("ticket", "give either a ticket or the text of a question").into()),
        };
        let matches = self.0.ticketing.suggest_articles(&text, &category, limit).await?;
        Ok(Response::new(pb::SearchArticlesResponse { matches }))
    }

    async fn record_deflection(
        &self,
        req: Request<pb::RecordDeflectionRequest>,
    ) -> Result<Response<pb::RecordDeflectionResponse>, Status> {
        let principal = auth::principal(&req)?;
        let req = req.into_inner();
        let key = idempotency::Key::new("RecordDeflection", &principal.user_id, &req.request_id, &req.encode_to_vec())?;
        let customer = match &principal.customer_id {
            Some(own) => {
                let mine = format!("customers/{own}");
                if !req.customer.is_empty() && req.customer != mine {
                    return Err(denied("ticket.read", "a customer records deflections for itself only").into());
                }
                self.check_reader(&principal).await?;
                mine
            }
            None => {
                self.0.check(&principal, "ticket.create", super::COLLECTION).await?;
                req.customer.clone()
            }
        };
        let n = self
            .0
            .ticketing
            .record_deflection(&req.article, &customer, &req.query, key, Utc::now())
            .await?;
        Ok(Response::new(pb::RecordDeflectionResponse { article_deflections: n }))
    }
}
