//! The gRPC handlers: authorize, validate, translate, call the store and the models.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use chrono::Utc;
use crm_platform::{
    Error, FieldViolation, auth,
    auth::Principal,
    authz::{Authz, Resource},
    consumer,
    feed::{Feed, from_micros, micros},
    paging::{PageTokens, fingerprint, page_size},
};
use crm_proto::crm::{
    analytics::v1::{self as pb, Granularity, analytics_service_server::AnalyticsService},
    events::v1::{StreamEventsRequest, StreamEventsResponse},
};
use sea_orm::DatabaseConnection;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    models::{self, Models, NotRun},
    projection, quality, reports, store,
};

/// The longest period a report covers.
const MAX_REPORT_DAYS: i64 = 3660;
/// Tickets read per query for the service report.
const TICKET_PAGE: u64 = 10_000;
/// How long `RefitModel` waits for a fit already running to end before fitting again.
const REFIT_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Clone)]
pub struct Api {
    db: DatabaseConnection,
    authz: Authz,
    feed: Feed,
    models: Models,
    snapshots: Option<quality::Snapshots>,
    page_tokens: PageTokens,
    /// The latest fit's rules per level, read once: a fit's rules never change.
    rules_cache: Arc<Mutex<HashMap<i32, (i64, Rules)>>>,
}

/// A fit's rules at one level, strongest first.
type Rules = Arc<Vec<store::RuleRow>>;

/// A report's validated period.
struct Period {
    from_us: i64,
    to_us: i64,
}

/// Checks a report's period: both ends set, the end after the start, at most
/// [`MAX_REPORT_DAYS`] apart. Every problem is listed.
fn period(start: Option<&prost_types::Timestamp>, end: Option<&prost_types::Timestamp>) -> Result<Period, Error> {
    let mut bad = Vec::new();
    let mut at = |t: Option<&prost_types::Timestamp>, field: &str| match t {
        None => {
            bad.push(FieldViolation::new(field, "required"));
            None
        }
        Some(t) if !(0..1_000_000_000).contains(&t.nanos) || t.seconds.unsigned_abs() > 253_402_300_799 => {
            bad.push(FieldViolation::new(field, "not a valid timestamp"));
            None
        }
        Some(t) => Some(micros(t)),
    };
    let (from, to) = (at(start, "start_time"), at(end, "end_time"));
    if let (Some(f), Some(t)) = (from, to) {
        if t <= f {
            bad.push(FieldViolation::new("end_time", "must be after start_time"));
        } else if t - f > MAX_REPORT_DAYS * 86_400_000_000 {
            bad.push(FieldViolation::new(
                "end_time",
                format!("at most {MAX_REPORT_DAYS} days after start_time"),
            ));
        }
    }
    match (from, to) {
        (Some(from_us), Some(to_us)) if bad.is_empty() => Ok(Period { from_us, to_us }),
        _ => Err(Error::InvalidArgument(bad)),
    }
}

fn granularity(value: i32, default: Granularity) -> Result<Granularity, Error> {
    match Granularity::try_from(value) {
        Ok(Granularity::Unspecified) => Ok(default),
        Ok(g) => Ok(g),
        Err(_) => Err(Error::invalid("granularity", "unknown value")),
    }
}

fn report(name: &str, p: &Period, g: Granularity, series: Vec<pb::Series>) -> pb::Report {
    pb::Report {
        report: name.into(),
        start_time: Some(from_micros(p.from_us)),
        end_time: Some(from_micros(p.to_us)),
        granularity: g as i32,
        series,
        compute_time: Some(from_micros(Utc::now().timestamp_micros())),
    }
}

/// The model named by `models/{m}` or `models/{m}/versions/{n}`.
fn model_name(name: &str, field: &str) -> Result<(String, Option<i64>), Error> {
    let bad = || {
        Error::invalid(
            field,
            format!(
                "must be `models/{}` or `models/{}`, optionally with `/versions/{{n}}`",
                models::CLV,
                models::RULES
            ),
        )
    };
    let rest = name.strip_prefix("models/").ok_or_else(bad)?;
    let (model, version) = match rest.split_once("/versions/") {
        Some((m, v)) => (m, Some(v.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(bad)?)),
        None => (rest, None),
    };
    if model != models::CLV && model != models::RULES {
        return Err(bad());
    }
    Ok((model.to_owned(), version))
}

fn customer_id<'a>(name: &'a str, field: &str, suffix: &str) -> Result<&'a str, Error> {
    name.strip_prefix("customers/")
        .and_then(|rest| rest.strip_suffix(suffix))
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or_else(|| Error::invalid(field, format!("must be `customers/{{customer}}{suffix}`")))
}

fn level(value: i32) -> Result<pb::RuleLevel, Error> {
    match pb::RuleLevel::try_from(value) {
        Ok(pb::RuleLevel::Unspecified) => Ok(pb::RuleLevel::Product),
        Ok(l) => Ok(l),
        Err(_) => Err(Error::invalid("level", "unknown value")),
    }
}

fn share(value: f64, field: &str) -> Result<f64, Error> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(Error::invalid(field, "from 0 to 1"))
    }
}

fn rule_message(r: &store::RuleRow) -> pb::AssociationRule {
    pb::AssociationRule {
        level: r.level,
        antecedents: r.antecedents.clone(),
        consequents: r.consequents.clone(),
        support: r.support,
        confidence: r.confidence,
        lift: r.lift,
        baskets: r.baskets,
    }
}

impl Api {
    pub fn new(
        db: DatabaseConnection,
        authz: Authz,
        feed: Feed,
        models: Models,
        snapshots: Option<quality::Snapshots>,
        page_tokens: PageTokens,
    ) -> Self {
        Self {
            db,
            authz,
            feed,
            models,
            snapshots,
            page_tokens,
            rules_cache: Arc::default(),
        }
    }

    /// Every rule of fit `version` at `level`, strongest first.
    async fn rules_of(&self, version: i64, level: i32) -> Result<Rules, Error> {
        let cached = self.rules_cache.lock().ok().and_then(|c| c.get(&level).cloned());
        if let Some((v, rules)) = cached
            && v == version
        {
            return Ok(rules);
        }
        let rules = Arc::new(store::rules(&self.db, version, level, 0, models::MAX_RULES).await?);
        if let Ok(mut cache) = self.rules_cache.lock() {
            // A reader of an older version must not replace a newer one.
            if cache.get(&level).is_none_or(|(v, _)| *v < version) {
                cache.insert(level, (version, Arc::clone(&rules)));
            }
        }
        Ok(rules)
    }

    async fn check(&self, p: &Principal, permission: &str, name: &str) -> Result<(), Error> {
        self.authz.check(p, permission, Resource::named(name)).await
    }

    /// The person customer `id` counts for, when the caller may read predictions
    /// about it: `analytics.customers` on its record (owner and team decide).
    async fn readable_person(&self, principal: &Principal, id: &str) -> Result<String, Error> {
        let person = store::person_of(&self.db, id).await?;
        let name = format!("customers/{id}");
        let Some((owner, team)) = store::ownership(&self.db, &person).await? else {
            // Whether a customer exists is for those who may read some customers.
            if self.authz.read_scope(principal, "analytics.customers").await?.is_empty() {
                return Err(Error::PermissionDenied {
                    permission: "analytics.customers".into(),
                    resource: name,
                });
            }
            return Err(Error::NotFound {
                resource_type: "customer",
                name,
            });
        };
        self.authz
            .check(principal, "analytics.customers", Resource::record(&name, &owner, &team))
            .await?;
        Ok(person)
    }

    async fn latest_rules(&self) -> Result<Option<store::ModelRow>, Error> {
        store::model(&self.db, models::RULES, None).await
    }
}

#[tonic::async_trait]
impl AnalyticsService for Api {
    async fn get_funnel_report(&self, req: Request<pb::GetFunnelReportRequest>) -> Result<Response<pb::Report>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "analytics.read", "reports/funnel").await?;
        let r = req.into_inner();
        let p = period(r.start_time.as_ref(), r.end_time.as_ref())?;
        let g = granularity(r.granularity, Granularity::Month)?;
        for (i, c) in r.source_channels.iter().enumerate() {
            if crm_proto::crm::common::v1::Channel::try_from(*c).is_err() {
                return Err(Error::invalid(format!("source_channels[{i}]"), "unknown channel").into());
            }
        }
        let rows = store::funnel_counts(&self.db, p.from_us, p.to_us, &r.source_channels).await?;
        let series = reports::funnel(&rows, p.from_us, p.to_us, g, r.by_source_channel);
        Ok(Response::new(report("funnel", &p, g, series)))
    }

    async fn get_service_report(&self, req: Request<pb::GetServiceReportRequest>) -> Result<Response<pb::Report>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "analytics.read", "reports/service").await?;
        let r = req.into_inner();
        let p = period(r.start_time.as_ref(), r.end_time.as_ref())?;
        let g = granularity(r.granularity, Granularity::Day)?;
        let grouping = pb::ServiceGrouping::try_from(r.group_by).map_err(|_| Error::invalid("group_by", "unknown value"))?;
        // Page by page: only the durations stay in memory, not the period's tickets.
        let mut trends = reports::ServiceTrends::new(p.from_us, p.to_us, g, grouping);
        let mut after = None;
        loop {
            let (page, last) = store::tickets(&self.db, p.from_us, p.to_us, after.as_ref(), TICKET_PAGE).await?;
            for t in page.iter().filter(|t| {
                (r.categories.is_empty() || r.categories.contains(&t.category))
                    && (r.queues.is_empty() || r.queues.contains(&t.queue))
                    && (r.channels.is_empty() || r.channels.contains(&t.channel))
            }) {
                trends.add(t);
            }
            if (page.len() as u64) < TICKET_PAGE {
                break;
            }
            after = last;
        }
        let series = trends.finish();
        Ok(Response::new(report("service", &p, g, series)))
    }

    async fn get_marketing_report(&self, req: Request<pb::GetMarketingReportRequest>) -> Result<Response<pb::Report>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "analytics.read", "reports/marketing").await?;
        let r = req.into_inner();
        let p = period(r.start_time.as_ref(), r.end_time.as_ref())?;
        let g = granularity(r.granularity, Granularity::Day)?;
        for (i, c) in r.campaigns.iter().enumerate() {
            if !c
                .strip_prefix("campaigns/")
                .is_some_and(|id| !id.is_empty() && !id.contains('/'))
            {
                return Err(Error::invalid(format!("campaigns[{i}]"), "must be `campaigns/{campaign}`").into());
            }
        }
        if r.campaigns.len() > 100 {
            return Err(Error::invalid("campaigns", "at most 100").into());
        }
        let counts = store::touch_counts(&self.db, p.from_us, p.to_us, &r.campaigns).await?;
        let mut series = reports::marketing(&counts, p.from_us, p.to_us, g, r.by_campaign);
        if r.campaigns.is_empty() {
            let interactions = store::interaction_counts(&self.db, p.from_us, p.to_us).await?;
            series.extend(reports::engagement(&interactions, p.from_us, p.to_us, g));
        }
        Ok(Response::new(report("marketing", &p, g, series)))
    }

    async fn get_data_quality_report(
        &self,
        req: Request<pb::GetDataQualityReportRequest>,
    ) -> Result<Response<pb::Report>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "analytics.read", "reports/dataQuality").await?;
        let r = req.into_inner();
        let p = period(r.start_time.as_ref(), r.end_time.as_ref())?;
        let points = store::quality_points(&self.db, p.from_us, p.to_us).await?;
        let series = reports::quality(&points, p.from_us, p.to_us);
        Ok(Response::new(report("data-quality", &p, Granularity::Day, series)))
    }

    async fn list_at_risk_customers(
        &self,
        req: Request<pb::ListAtRiskCustomersRequest>,
    ) -> Result<Response<pb::ListAtRiskCustomersResponse>, Status> {
        let principal = auth::principal(&req)?;
        // Only the customers the caller may read (a team's manager: the team's).
        let scope = self.authz.read_scope(&principal, "analytics.customers").await?;
        if scope.is_empty() {
            return Err(Error::PermissionDenied {
                permission: "analytics.customers".into(),
                resource: "customers".into(),
            }
            .into());
        }
        let r = req.into_inner();
        let size = page_size(r.page_size, 50, 1000)?;
        let min_risk = if r.min_risk == 0.0 {
            self.models.clv.risk_threshold
        } else {
            share(r.min_risk, "min_risk")?
        };
        let fp = fingerprint(&["at-risk", &min_risk.to_string()]);
        // The risk travels as its bits, so the next page starts exactly after it.
        let after: Option<(f64, String)> = if r.page_token.is_empty() {
            None
        } else {
            let (bits, person): (u64, String) = self.page_tokens.decode(&fp, &r.page_token)?;
            Some((f64::from_bits(bits), person))
        };
        let mut rows = store::at_risk_page(
            &self.db,
            min_risk,
            &scope,
            after.as_ref().map(|(risk, p)| (*risk, p.as_str())),
            u64::from(size) + 1,
        )
        .await?;
        let next_page_token = self
            .page_tokens
            .cut(&fp, &mut rows, size, |s| (s.risk.to_bits(), s.person.clone()))?;
        Ok(Response::new(pb::ListAtRiskCustomersResponse {
            customers: rows
                .iter()
                .map(|s| models::score_message(s, &self.models.clv.currency))
                .collect(),
            next_page_token,
        }))
    }

    async fn get_customer_score(&self, req: Request<pb::GetCustomerScoreRequest>) -> Result<Response<pb::CustomerScore>, Status> {
        let principal = auth::principal(&req)?;
        let r = req.into_inner();
        let id = customer_id(&r.name, "name", "/score")?;
        let person = self.readable_person(&principal, id).await?;
        let score = store::score(&self.db, &person).await?.ok_or_else(|| Error::NotFound {
            resource_type: "customer score",
            name: r.name.clone(),
        })?;
        Ok(Response::new(models::score_message(&score, &self.models.clv.currency)))
    }

    async fn get_model_info(&self, req: Request<pb::GetModelInfoRequest>) -> Result<Response<pb::Model>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "analytics.read", "models").await?;
        let r = req.into_inner();
        let (model, version) = model_name(&r.name, "name")?;
        let row = store::model(&self.db, &model, version)
            .await?
            .ok_or_else(|| Error::NotFound {
                resource_type: "model",
                name: r.name.clone(),
            })?;
        Ok(Response::new(models::model_message(&row)))
    }

    async fn refit_model(&self, req: Request<pb::RefitModelRequest>) -> Result<Response<pb::Model>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "analytics.manage", "models").await?;
        let r = req.into_inner();
        let (model, version) = model_name(&r.name, "name")?;
        if version.is_some() {
            return Err(Error::invalid("name", "a model, not a version: `models/{model}`").into());
        }
        match self.models.refit(&model, &principal.user_id, REFIT_WAIT).await? {
            Ok(row) => Ok(Response::new(models::model_message(&row))),
            Err(NotRun::NoData) => Err(Error::FailedPrecondition {
                reason: "NO_PURCHASES",
                subject: r.name,
                message: format!(
                    "no purchases in {} to fit the lifetime-value models on",
                    self.models.clv.currency
                ),
            }
            .into()),
            Err(NotRun::Running | NotRun::NotDue) => Err(Error::FailedPrecondition {
                reason: "FIT_RUNNING",
                subject: r.name,
                message: format!(
                    "the model has been fitting for over {} s (by the schedule or another caller); try again when it is done",
                    REFIT_WAIT.as_secs()
                ),
            }
            .into()),
        }
    }

    async fn list_association_rules(
        &self,
        req: Request<pb::ListAssociationRulesRequest>,
    ) -> Result<Response<pb::ListAssociationRulesResponse>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "analytics.read", "models").await?;
        let r = req.into_inner();
        let level = level(r.level)?;
        let size = page_size(r.page_size, 50, 1000)?;
        let min_confidence = share(r.min_confidence, "min_confidence")?;
        if !(r.min_lift >= 0.0 && r.min_lift.is_finite()) {
            return Err(Error::invalid("min_lift", "zero or more").into());
        }
        let Some(model) = self.latest_rules().await? else {
            return Ok(Response::new(pb::ListAssociationRulesResponse::default()));
        };
        let fp = fingerprint(&[
            "rules",
            &model.version.to_string(),
            &(level as i32).to_string(),
            &r.antecedent,
            &min_confidence.to_string(),
            &r.min_lift.to_string(),
        ]);
        let mut after: i64 = if r.page_token.is_empty() {
            0
        } else {
            self.page_tokens.decode(&fp, &r.page_token)?
        };
        // Filters apply to the ranked rules; read on until a page is full.
        let mut rows = Vec::new();
        loop {
            let batch = store::rules(&self.db, model.version, level as i32, after, 1000).await?;
            let done = batch.len() < 1000;
            for rule in batch {
                after = rule.rank;
                if (r.antecedent.is_empty() || rule.antecedents.contains(&r.antecedent))
                    && rule.confidence >= min_confidence
                    && rule.lift >= r.min_lift
                {
                    rows.push(rule);
                }
                if rows.len() > size as usize {
                    break;
                }
            }
            if done || rows.len() > size as usize {
                break;
            }
        }
        let next_page_token = self.page_tokens.cut(&fp, &mut rows, size, |rule| rule.rank)?;
        Ok(Response::new(pb::ListAssociationRulesResponse {
            rules: rows.iter().map(rule_message).collect(),
            next_page_token,
            model_version: format!("models/{}/versions/{}", models::RULES, model.version),
        }))
    }

    async fn get_recommendations(
        &self,
        req: Request<pb::GetRecommendationsRequest>,
    ) -> Result<Response<pb::GetRecommendationsResponse>, Status> {
        let principal = auth::principal(&req)?;
        let r = req.into_inner();
        let id = customer_id(&r.customer, "customer", "")?;
        let person = self.readable_person(&principal, id).await?;
        let level = level(r.level)?;
        let max = match r.max_results {
            n if n < 0 => return Err(Error::invalid("max_results", "must not be negative").into()),
            0 => 10,
            n => n.min(100) as usize,
        };
        let Some(model) = self.latest_rules().await? else {
            return Ok(Response::new(pb::GetRecommendationsResponse::default()));
        };
        let bought = store::bought(&self.db, &person, level == pb::RuleLevel::Category).await?;
        let rules = self.rules_of(model.version, level as i32).await?;
        let recommendations = crate::recommend::recommend(&bought, &rules, max);
        Ok(Response::new(pb::GetRecommendationsResponse {
            recommendations,
            model_version: format!("models/{}/versions/{}", models::RULES, model.version),
        }))
    }

    async fn get_projection_status(
        &self,
        req: Request<pb::GetProjectionStatusRequest>,
    ) -> Result<Response<pb::ProjectionStatus>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "analytics.read", "projectionStatus").await?;
        let now = Utc::now().timestamp_micros();
        let mut sources = Vec::new();
        for source in [projection::CUSTOMER_PROFILE, projection::TICKETING, projection::SEGMENTATION] {
            let s = consumer::status(&self.db, source.source).await?.unwrap_or_default();
            sources.push(pb::SourceStatus {
                source: source.source.into(),
                cursor: s.cursor.clone(),
                applied: s.applied,
                lag_seconds: s.lag_us(now) as f64 / 1e6,
                update_time: (s.update_us > 0).then(|| from_micros(s.update_us)),
            });
        }
        Ok(Response::new(pb::ProjectionStatus { sources }))
    }

    type StreamEventsStream = ReceiverStream<Result<StreamEventsResponse, Status>>;

    async fn stream_events(&self, req: Request<StreamEventsRequest>) -> Result<Response<Self::StreamEventsStream>, Status> {
        let principal = auth::principal(&req)?;
        self.check(&principal, "analytics.events", "events").await?;
        let stream = self
            .feed
            .stream(&req.get_ref().after_cursor, &req.get_ref().event_types, principal.expires_at)
            .await?;
        Ok(Response::new(stream))
    }
}

impl Api {
    /// Takes today's data-quality snapshot now, waiting up to ten seconds for one
    /// being taken elsewhere to finish (tests and operators; the schedule takes one a
    /// day). Returns the KPI points stored.
    pub async fn snapshot_quality(&self) -> Result<usize, Error> {
        let Some(s) = &self.snapshots else { return Ok(0) };
        for _ in 0..100 {
            if let Some(points) = s.take(true).await? {
                return Ok(points.len());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Err(Error::Unavailable("a data-quality snapshot is being taken elsewhere".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos: 0 }
    }

    #[test]
    fn a_period_names_each_bad_end() {
        let Err(Error::InvalidArgument(v)) = period(None, None) else {
            panic!()
        };
        assert_eq!(
            v.iter().map(|v| v.field.as_str()).collect::<Vec<_>>(),
            vec!["start_time", "end_time"]
        );
        let Err(Error::InvalidArgument(v)) = period(Some(&ts(100)), Some(&ts(100))) else {
            panic!()
        };
        assert_eq!(v[0].field, "end_time");
        assert!(period(Some(&ts(0)), Some(&ts(3661 * 86_400))).is_err());
        let p = period(Some(&ts(0)), Some(&ts(86_400))).unwrap();
        assert_eq!((p.from_us, p.to_us), (0, 86_400_000_000));
    }

    #[test]
    fn model_names_are_checked() {
        assert_eq!(model_name("models/clv", "name").unwrap(), ("clv".into(), None));
        assert_eq!(
            model_name("models/association-rules/versions/3", "name").unwrap(),
            ("association-rules".into(), Some(3))
        );
        for bad in ["clv", "models/other", "models/clv/versions/0", "models/clv/versions/x"] {
            assert!(model_name(bad, "name").is_err(), "{bad}");
        }
        assert_eq!(customer_id("customers/a/score", "name", "/score").unwrap(), "a");
        assert!(customer_id("customers/a/b/score", "name", "/score").is_err());
    }
}
