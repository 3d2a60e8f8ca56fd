//! Fitting and scoring: the lifetime-value models (BG/NBD and Gamma-Gamma) with the
//! churn-risk score and its events, and the association rules. Each fit is one
//! versioned model; a scheduled fit runs once per period across replicas
//! (`crm_platform::schedule`), and its results, model row, scores, events and the
//! schedule's completion commit in one transaction.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use chrono::{DateTime, Utc};
use crm_platform::{Error, Result, feed, schedule};
use crm_proto::crm::analytics::v1 as pb;
use prost::Message;
use sea_orm::DatabaseConnection;
use serde::Deserialize;

use crate::{
    clv::{BgNbd, GammaGamma, History, Spend, lifetime_value},
    rules,
    store::{self, ModelRow, PurchaseSummary, RuleRow, ScoreRow},
};

/// The lifetime-value model's name.
pub const CLV: &str = "clv";
/// The association rules' name.
pub const RULES: &str = "association-rules";

const DAY_US: f64 = 86_400_000_000.0;

/// `[analytics.clv]`: the lifetime-value models and the churn-risk score.
#[derive(Debug, Clone, Deserialize)]
pub struct ClvConfig {
    /// Orders in this currency are modelled (others are left out).
    pub currency: String,
    /// Refit period.
    pub refit_interval_hours: u64,
    /// Horizon of `expected_purchases`.
    pub horizon_days: u32,
    /// Lifetime value: this many periods of `period_days`, discounted per period.
    pub clv_periods: u32,
    pub period_days: f64,
    pub discount_rate: f64,
    /// The drop signal: the purchase rate of the last `recent_days` against the rate
    /// of the `baseline_days` before, for customers with at least
    /// `min_baseline_orders` orders then.
    pub recent_days: u32,
    pub baseline_days: u32,
    pub min_baseline_orders: u32,
    /// Risk from which a customer is at risk (and `ChurnRiskRaised` is sent).
    pub risk_threshold: f64,
}

/// `[analytics.rules]`: association rules.
#[derive(Debug, Clone, Deserialize)]
pub struct RulesConfig {
    pub refit_interval_hours: u64,
    /// Baskets of the last this many days.
    pub window_days: u32,
    pub min_support: f64,
    pub min_confidence: f64,
    pub min_lift: f64,
    /// Items per itemset, at most.
    pub max_len: usize,
    /// Rules kept per level, strongest first.
    pub max_rules: usize,
}

/// One person's inputs to the models.
pub fn history(s: &PurchaseSummary, end_us: i64) -> (History, Spend) {
    let x = (s.days - 1).max(0) as f64;
    let h = History {
        x,
        t_x: (s.last_us - s.first_us) as f64 / DAY_US,
        t: ((end_us - s.first_us) as f64 / DAY_US).max(0.0),
    };
    let m = if x > 0.0 { s.repeat_micros as f64 / 1e6 / x } else { 0.0 };
    (h, Spend { x, m })
}

/// How far the recent purchase rate fell below the baseline's, 0 to 1 (0 without a
/// baseline of at least `min_baseline_orders`).
pub fn frequency_drop(s: &PurchaseSummary, cfg: &ClvConfig) -> f64 {
    if s.baseline < i64::from(cfg.min_baseline_orders.max(1)) {
        return 0.0;
    }
    let base = s.baseline as f64 / f64::from(cfg.baseline_days.max(1));
    let recent = s.recent as f64 / f64::from(cfg.recent_days.max(1));
    (1.0 - recent / base).clamp(0.0, 1.0)
}

/// Churn risk: the chance the customer is gone, or else the share of their habit they
/// lost.
pub fn churn_risk(p_alive: f64, drop: f64) -> f64 {
    (1.0 - p_alive * (1.0 - drop)).clamp(0.0, 1.0)
}

/// A fitted lifetime-value model. The spend model is left out when too few customers
/// bought twice to fit it, or its fit gives no finite mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClvModel {
    pub bgnbd: BgNbd,
    pub spend: Option<GammaGamma>,
}

/// Customers with repeat purchases needed to fit the spend model.
pub const MIN_REPEAT_BUYERS: usize = 10;

/// Zero for anything that is not a finite number (nothing non-finite is stored).
fn finite(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// Scores one person.
pub fn score(model: &ClvModel, cfg: &ClvConfig, s: &PurchaseSummary, end_us: i64) -> ScoreRow {
    let (h, spend) = history(s, end_us);
    let p_alive = finite(model.bgnbd.p_alive(&h));
    let drop = frequency_drop(s, cfg);
    let risk = churn_risk(p_alive, drop);
    // Without a spend model, the customer's own mean repeat purchase (0: unknown).
    let value = finite(match &model.spend {
        Some(g) => g.expected_average_value(spend.x, spend.m),
        None => spend.m,
    });
    ScoreRow {
        person: s.person.clone(),
        orders: s.orders,
        first_us: s.first_us,
        last_us: s.last_us,
        p_alive,
        expected: finite(model.bgnbd.expected_purchases(&h, f64::from(cfg.horizon_days))),
        order_value: value,
        clv: finite(lifetime_value(
            &model.bgnbd,
            &h,
            value,
            cfg.clv_periods,
            cfg.period_days,
            cfg.discount_rate,
        )),
        freq_drop: drop,
        risk,
        at_risk: risk >= cfg.risk_threshold,
        ..ScoreRow::default()
    }
}

/// Scores everyone, on all cores.
pub fn score_all(model: &ClvModel, cfg: &ClvConfig, summaries: &[PurchaseSummary], end_us: i64) -> Vec<ScoreRow> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(8);
    if summaries.len() < 10_000 || threads == 1 {
        return summaries.iter().map(|s| score(model, cfg, s, end_us)).collect();
    }
    let chunk = summaries.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = summaries
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|s| score(model, cfg, s, end_us)).collect::<Vec<_>>()))
            .collect();
        parts.into_iter().flat_map(|p| p.join().unwrap_or_default()).collect()
    })
}

/// Fits both models on the summaries.
pub fn fit_clv(summaries: &[PurchaseSummary], end_us: i64) -> (ClvModel, BTreeMap<String, f64>) {
    let (histories, spends): (Vec<History>, Vec<Spend>) = summaries.iter().map(|s| history(s, end_us)).unzip();
    let (bgnbd, ll) = BgNbd::fit(&histories);
    let repeat_buyers = spends.iter().filter(|s| s.x >= 1.0 && s.m > 0.0).count();
    let mut stats = BTreeMap::from([
        ("customers".to_owned(), histories.len() as f64),
        ("repeat_buyers".to_owned(), repeat_buyers as f64),
        ("log_likelihood".to_owned(), ll),
    ]);
    let spend = if repeat_buyers >= MIN_REPEAT_BUYERS {
        let (g, spend_ll) = GammaGamma::fit(&spends);
        stats.insert("spend_log_likelihood".to_owned(), spend_ll);
        g.usable().then_some(g)
    } else {
        None
    };
    stats.insert("spend_model".to_owned(), if spend.is_some() { 1.0 } else { 0.0 });
    (ClvModel { bgnbd, spend }, stats)
}

/// A model as the API shows it.
pub fn model_message(m: &ModelRow) -> pb::Model {
    pb::Model {
        name: format!("models/{}/versions/{}", m.model, m.version),
        version: m.version,
        fit_time: Some(feed::from_micros(m.fit_us)),
        fit_seconds: m.fit_seconds,
        parameters: m.parameters.clone(),
        statistics: m.statistics.clone(),
        data_end_time: Some(feed::from_micros(m.data_end_us)),
        time_unit: m.time_unit.clone(),
        trigger: m.trigger.clone(),
    }
}

/// A score as the API shows it.
pub fn score_message(s: &ScoreRow, currency: &str) -> pb::CustomerScore {
    let t = |us: i64| (us > 0).then(|| feed::from_micros(us));
    pb::CustomerScore {
        name: format!("customers/{}/score", s.person),
        customer: format!("customers/{}", s.person),
        p_alive: s.p_alive,
        expected_purchases: s.expected,
        expected_order_value: s.order_value,
        lifetime_value: s.clv,
        currency: currency.to_owned(),
        frequency_drop: s.freq_drop,
        churn_risk: s.risk,
        at_risk: s.at_risk,
        orders: s.orders,
        first_order_time: t(s.first_us),
        last_order_time: t(s.last_us),
        model_version: format!("models/{CLV}/versions/{}", s.model_version),
        score_time: t(s.score_us),
        at_risk_time: if s.at_risk { t(s.at_risk_us) } else { None },
    }
}

/// What a fit run came to.
enum Fitted {
    Model(ModelRow),
    /// Another replica took the lease over; nothing was committed.
    LeaseLost,
    NoData,
}

/// The most rules a fit keeps (`analytics.rules.max_rules` at most).
pub const MAX_RULES: u64 = 1_000_000;

/// The models' fitting jobs.
#[derive(Clone)]
pub struct Models {
    db: DatabaseConnection,
    feed: feed::Feed,
    pub clv: ClvConfig,
    pub rules: RulesConfig,
    owner: String,
}

/// A fit that did not run.
#[derive(Debug)]
pub enum NotRun {
    /// Another replica is fitting this model now.
    Running,
    /// The model's time has not come.
    NotDue,
    /// No purchases to fit on (in the modelled currency); the schedule waits for the
    /// next period.
    NoData,
}

impl Models {
    pub fn new(db: DatabaseConnection, feed: feed::Feed, clv: ClvConfig, rules: RulesConfig) -> Self {
        Self {
            db,
            feed,
            clv,
            rules,
            owner: uuid::Uuid::new_v4().to_string(),
        }
    }

    fn interval(&self, model: &str) -> Duration {
        let hours = if model == CLV {
            self.clv.refit_interval_hours
        } else {
            self.rules.refit_interval_hours
        };
        Duration::from_secs(hours.max(1) * 3600)
    }

    /// Fits `model` now, on the data as it is when called: a fit already running (the
    /// schedule's, or another caller's) began on older data, so this waits up to `wait`
    /// for it to end and then fits again. `NotRun::Running` when it is still running then.
    /// The fit runs in a task of its own: a caller that hangs up does not cut it short
    /// with its lease held (which would block every fit until the lease expired).
    pub async fn refit(&self, model: &str, trigger: &str, wait: Duration) -> Result<std::result::Result<ModelRow, NotRun>> {
        let (this, model, trigger) = (self.clone(), model.to_owned(), trigger.to_owned());
        let deadline = tokio::time::Instant::now() + wait;
        tokio::spawn(async move {
            loop {
                match this.fit(&model, true, &trigger).await? {
                    Err(NotRun::Running) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    outcome => return Ok(outcome),
                }
            }
        })
        .await
        .map_err(crm_platform::Error::internal)?
    }

    /// Fits `model` when due (or now, with `force`); `trigger` says who asked.
    pub async fn fit(&self, model: &str, force: bool, trigger: &str) -> Result<std::result::Result<ModelRow, NotRun>> {
        let now = Utc::now();
        let now_us = now.timestamp_micros();
        // The lease covers the longest fit we expect, with room.
        let lease = crm_platform::schedule::claim(
            &self.db,
            &format!("fit:{model}"),
            // Unique per attempt: two fits in one process never share a lease.
            &format!("{}/{}", self.owner, uuid::Uuid::new_v4()),
            now_us,
            Duration::from_secs(1800),
            force,
        )
        .await?;
        let Some(lease) = lease else {
            // A forced claim fails only while a lease is held.
            let running = force
                || schedule::status(&self.db, &format!("fit:{model}"))
                    .await?
                    .is_some_and(|s| s.running);
            return Ok(Err(if running { NotRun::Running } else { NotRun::NotDue }));
        };
        let next_due = now_us + i64::try_from(self.interval(model).as_micros()).unwrap_or(i64::MAX / 2);
        let result = match model {
            CLV => self.fit_clv(now, &lease, next_due, trigger).await,
            _ => self.fit_rules(now, &lease, next_due, trigger).await,
        };
        match result {
            Ok(Fitted::Model(m)) => {
                self.feed.committed();
                Ok(Ok(m))
            }
            Ok(Fitted::LeaseLost) => Ok(Err(NotRun::Running)),
            Ok(Fitted::NoData) => Ok(Err(NotRun::NoData)),
            Err(err) => {
                schedule::release(&self.db, &lease).await?;
                Err(err)
            }
        }
    }

    async fn fit_clv(&self, now: DateTime<Utc>, lease: &schedule::Lease, next_due: i64, trigger: &str) -> Result<Fitted> {
        let cfg = &self.clv;
        let end_us = now.timestamp_micros();
        let recent_from = end_us - i64::from(cfg.recent_days) * 86_400_000_000;
        let baseline_from = recent_from - i64::from(cfg.baseline_days) * 86_400_000_000;
        let summaries = store::purchase_summaries(&self.db, &cfg.currency, end_us, recent_from, baseline_from).await?;
        if summaries.is_empty() {
            // Nothing to fit yet (a new installation): the next period, not a retry loop.
            if let Some(txn) = schedule::completing(&self.db, lease, next_due, end_us).await? {
                txn.commit().await?;
            }
            return Ok(Fitted::NoData);
        }
        let started = std::time::Instant::now();
        let (model, statistics, scored) = {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || {
                let (model, statistics) = fit_clv(&summaries, end_us);
                let scored = score_all(&model, &cfg, &summaries, end_us);
                (model, statistics, scored)
            })
            .await
            .map_err(Error::internal)?
        };
        let fit_seconds = started.elapsed().as_secs_f64();
        let mut row = ModelRow {
            model: CLV.into(),
            version: 0,
            fit_us: Utc::now().timestamp_micros(),
            fit_seconds,
            parameters: BTreeMap::from([
                ("r".to_owned(), model.bgnbd.r),
                ("alpha".to_owned(), model.bgnbd.alpha),
                ("a".to_owned(), model.bgnbd.a),
                ("b".to_owned(), model.bgnbd.b),
            ])
            .into_iter()
            .chain(
                model
                    .spend
                    .iter()
                    .flat_map(|g| [("p".to_owned(), g.p), ("q".to_owned(), g.q), ("v".to_owned(), g.v)]),
            )
            .collect(),
            statistics,
            data_end_us: end_us,
            time_unit: "day".into(),
            trigger: trigger.into(),
        };
        let Some(txn) = schedule::completing(&self.db, lease, next_due, row.fit_us).await? else {
            return Ok(Fitted::LeaseLost);
        };
        row.version = store::insert_model(&txn, &row).await?;
        let before = store::at_risk_now(&txn).await?;
        let score_us = row.fit_us;
        let mut events = Vec::new();
        // Erasures, deletions and merges applied while the fit ran win.
        let live = store::live_people(&txn).await?;
        let scores: Vec<ScoreRow> = scored
            .into_iter()
            .filter(|sc| live.contains(&sc.person))
            .map(|mut sc| {
                sc.model_version = row.version;
                sc.score_us = score_us;
                if sc.at_risk {
                    match before.get(&sc.person) {
                        Some(since) => sc.at_risk_us = *since,
                        None => {
                            sc.at_risk_us = score_us;
                            events.push(feed::NewEvent {
                                event_type: "crm.analytics.v1.ChurnRiskRaised",
                                subject: format!("customers/{}", sc.person),
                                actor: crate::SERVICE.into(),
                                data: pb::ChurnRiskRaised {
                                    score: Some(score_message(&sc, &cfg.currency)),
                                    threshold: cfg.risk_threshold,
                                }
                                .encode_to_vec(),
                            });
                        }
                    }
                }
                sc
            })
            .collect();
        store::replace_scores(&txn, &scores).await?;
        events.push(fitted(&row));
        feed::append_many(&txn, events).await?;
        txn.commit().await?;
        tracing::info!(
            version = row.version,
            customers = scores.len(),
            fit_seconds,
            "lifetime-value models fitted"
        );
        Ok(Fitted::Model(row))
    }

    async fn fit_rules(&self, now: DateTime<Utc>, lease: &schedule::Lease, next_due: i64, trigger: &str) -> Result<Fitted> {
        let cfg = self.rules.clone();
        let end_us = now.timestamp_micros();
        let from_us = end_us - i64::from(cfg.window_days) * 86_400_000_000;
        let products = store::baskets(&self.db, false, from_us, end_us).await?;
        let categories = store::baskets(&self.db, true, from_us, end_us).await?;
        let started = std::time::Instant::now();
        let c = cfg.clone();
        let (mined, stats) = tokio::task::spawn_blocking(move || {
            let mut stats = BTreeMap::new();
            let mut out = Vec::new();
            for (level, pairs) in [(pb::RuleLevel::Product, products), (pb::RuleLevel::Category, categories)] {
                let (found, baskets, itemsets) = mine(&pairs, &c);
                let prefix = if level == pb::RuleLevel::Product {
                    "product"
                } else {
                    "category"
                };
                stats.insert(format!("{prefix}_baskets"), baskets as f64);
                stats.insert(format!("{prefix}_itemsets"), itemsets as f64);
                stats.insert(format!("{prefix}_rules"), found.len() as f64);
                out.extend(found.into_iter().enumerate().map(|(i, mut r)| {
                    r.level = level as i32;
                    r.rank = i as i64 + 1;
                    r
                }));
            }
            (out, stats)
        })
        .await
        .map_err(Error::internal)?;
        let mut row = ModelRow {
            model: RULES.into(),
            version: 0,
            fit_us: Utc::now().timestamp_micros(),
            fit_seconds: started.elapsed().as_secs_f64(),
            parameters: BTreeMap::from([
                ("min_support".to_owned(), cfg.min_support),
                ("min_confidence".to_owned(), cfg.min_confidence),
                ("min_lift".to_owned(), cfg.min_lift),
                ("max_len".to_owned(), cfg.max_len as f64),
            ]),
            statistics: stats,
            data_end_us: end_us,
            time_unit: "day".into(),
            trigger: trigger.into(),
        };
        let Some(txn) = schedule::completing(&self.db, lease, next_due, row.fit_us).await? else {
            return Ok(Fitted::LeaseLost);
        };
        row.version = store::insert_model(&txn, &row).await?;
        store::insert_rules(&txn, row.version, &mined).await?;
        feed::append_many(&txn, vec![fitted(&row)]).await?;
        txn.commit().await?;
        tracing::info!(version = row.version, rules = mined.len(), "association rules fitted");
        Ok(Fitted::Model(row))
    }

    /// Fits each model whenever due, until shutdown (checked every `check`).
    pub async fn run(self, check: Duration, mut shutdown: crm_platform::server::ShutdownSignal) {
        loop {
            for model in [CLV, RULES] {
                match self.fit(model, false, "schedule").await {
                    Ok(_) => {}
                    Err(err) => tracing::warn!(%err, model, "scheduled fit failed; retrying at the next check"),
                }
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(check) => {}
            }
        }
    }
}

fn fitted(row: &ModelRow) -> feed::NewEvent {
    feed::NewEvent {
        event_type: "crm.analytics.v1.ModelFitted",
        subject: format!("models/{}", row.model),
        actor: crate::SERVICE.into(),
        data: pb::ModelFitted {
            model: Some(model_message(row)),
        }
        .encode_to_vec(),
    }
}

/// Rules from `(basket, item)` pairs grouped by basket: the rules (level and rank
/// unset), the basket count and the frequent itemsets' count.
pub fn mine(pairs: &[(String, String)], cfg: &RulesConfig) -> (Vec<RuleRow>, u64, usize) {
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let mut names: Vec<&str> = Vec::new();
    let mut baskets: Vec<Vec<u32>> = Vec::new();
    let mut current: Option<&str> = None;
    for (basket, item) in pairs {
        if current != Some(basket.as_str()) {
            baskets.push(Vec::new());
            current = Some(basket);
        }
        let id = *ids.entry(item.as_str()).or_insert_with(|| {
            names.push(item);
            names.len() as u32 - 1
        });
        if let Some(b) = baskets.last_mut() {
            b.push(id);
        }
    }
    let n = baskets.len() as u64;
    if n == 0 {
        return (Vec::new(), 0, 0);
    }
    let sets = rules::frequent_itemsets(&baskets, rules::min_count(cfg.min_support, n), cfg.max_len);
    let found = rules::rules(&sets, n, cfg.min_confidence, cfg.min_lift);
    let named = |items: &[u32]| -> Vec<String> {
        let mut v: Vec<String> = items.iter().map(|i| names[*i as usize].to_owned()).collect();
        v.sort();
        v
    };
    let mut out: Vec<RuleRow> = found
        .iter()
        .map(|r| RuleRow {
            level: 0,
            rank: 0,
            antecedents: named(&r.antecedent),
            consequents: named(&r.consequent),
            support: r.support,
            confidence: r.confidence,
            lift: r.lift,
            baskets: r.count as i64,
        })
        .collect();
    // Ties broken by the items' names, not by their ids' arbitrary order.
    out.sort_by(|x, y| {
        y.lift
            .total_cmp(&x.lift)
            .then(y.confidence.total_cmp(&x.confidence))
            .then(y.support.total_cmp(&x.support))
            .then_with(|| x.antecedents.cmp(&y.antecedents))
            .then_with(|| x.consequents.cmp(&y.consequents))
    });
    out.truncate(cfg.max_rules);
    (out, n, sets.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ClvConfig {
        ClvConfig {
            currency: "CNY".into(),
            refit_interval_hours: 24,
            horizon_days: 90,
            clv_periods: 12,
            period_days: 30.0,
            discount_rate: 0.01,
            recent_days: 90,
            baseline_days: 360,
            min_baseline_orders: 2,
            risk_threshold: 0.5,
        }
    }

    #[test]
    fn a_customer_whose_frequency_halved_is_at_risk() {
        let cfg = cfg();
        // 8 orders in the 360 days before (2 per 90 days), 1 in the last 90 days.
        let halved = PurchaseSummary {
            baseline: 8,
            recent: 1,
            ..PurchaseSummary::default()
        };
        assert!((frequency_drop(&halved, &cfg) - 0.5).abs() < 1e-12);
        assert!(churn_risk(1.0, frequency_drop(&halved, &cfg)) >= cfg.risk_threshold);
        let steady = PurchaseSummary {
            baseline: 8,
            recent: 2,
            ..PurchaseSummary::default()
        };
        assert_eq!(frequency_drop(&steady, &cfg), 0.0);
        let more = PurchaseSummary {
            baseline: 8,
            recent: 5,
            ..PurchaseSummary::default()
        };
        assert_eq!(frequency_drop(&more, &cfg), 0.0);
        // One order in the baseline is no habit to drop from.
        let once = PurchaseSummary {
            baseline: 1,
            recent: 0,
            ..PurchaseSummary::default()
        };
        assert_eq!(frequency_drop(&once, &cfg), 0.0);
        // P(alive) alone: 0.3 alive is 0.7 risk.
        assert!((churn_risk(0.3, 0.0) - 0.7).abs() < 1e-12);
    }

    #[test]
    fn without_repeat_buyers_there_is_no_spend_model_and_values_stay_finite() {
        let day = 86_400_000_000i64;
        let summaries: Vec<PurchaseSummary> = (0..50)
            .map(|i| PurchaseSummary {
                person: format!("p{i}"),
                orders: 1,
                days: 1,
                first_us: (i as i64 % 30) * day,
                last_us: (i as i64 % 30) * day,
                ..PurchaseSummary::default()
            })
            .collect();
        let (model, stats) = fit_clv(&summaries, 100 * day);
        assert!(model.spend.is_none());
        assert_eq!(stats["spend_model"], 0.0);
        for s in score_all(&model, &cfg(), &summaries, 100 * day) {
            assert!(s.clv.is_finite() && s.order_value == 0.0 && s.p_alive.is_finite(), "{s:?}");
        }
        assert!(!GammaGamma { p: 1.0, q: 0.9, v: 1.0 }.usable());
    }

    #[test]
    fn histories_count_days_and_leave_the_first_purchase_out_of_spend() {
        let day = 86_400_000_000i64;
        let s = PurchaseSummary {
            person: "p".into(),
            orders: 4,
            days: 3,
            first_us: 10 * day,
            last_us: 40 * day,
            repeat_micros: 300_000_000,
            ..PurchaseSummary::default()
        };
        let (h, spend) = history(&s, 50 * day);
        assert_eq!((h.x, h.t_x, h.t), (2.0, 30.0, 40.0));
        assert_eq!((spend.x, spend.m), (2.0, 150.0));
        let single = PurchaseSummary { days: 1, ..s };
        assert_eq!(history(&single, 50 * day).1, Spend { x: 0.0, m: 0.0 });
    }

    #[test]
    fn mining_names_items_and_keeps_the_strongest() {
        let pairs: Vec<(String, String)> = [
            ("o1", "phone"),
            ("o1", "case"),
            ("o2", "phone"),
            ("o2", "case"),
            ("o3", "phone"),
            ("o4", "charger"),
        ]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
        let cfg = RulesConfig {
            refit_interval_hours: 24,
            window_days: 365,
            min_support: 0.4,
            min_confidence: 0.5,
            min_lift: 0.0,
            max_len: 3,
            max_rules: 10,
        };
        let (found, baskets, _) = mine(&pairs, &cfg);
        assert_eq!(baskets, 4);
        // case → phone (confidence 1, lift 4/3) before phone → case (2/3, 4/3).
        assert_eq!(found.len(), 2);
        assert_eq!(
            (found[0].antecedents.clone(), found[0].consequents.clone()),
            (vec!["case".to_owned()], vec!["phone".to_owned()])
        );
        assert!((found[0].confidence - 1.0).abs() < 1e-12 && (found[1].confidence - 2.0 / 3.0).abs() < 1e-12);
    }
}
