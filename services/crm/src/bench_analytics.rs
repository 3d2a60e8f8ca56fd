//! `crm bench analytics`: the analytics service at scale. Opens its database on a
//! temporary SQLite file or a scratch PostgreSQL schema and fills the projection
//! directly with generated customers (lifecycle stages and their times), orders and
//! order lines (set-based SQL, as `crm bench segments` does: the feed path is
//! measured by the services that write it). Then, timed:
//!
//! - the purchase summaries of every person (one aggregate query over the orders);
//! - the BG/NBD and Gamma-Gamma fit on them;
//! - scoring every person (P(alive), expected purchases, CLV, churn risk), in
//!   customers per second, and storing the scores;
//! - FP-Growth and rules over the baskets (the order lines of the last orders);
//! - the funnel report (its query and the series), repeated: p50 and p95;
//! - with `--python`, the CDNOW fit against `lifetimes` in the same run.
//!
//! Prints JSON.

use std::time::Instant;

use crm_analytics::{SERVICE, models, reports, store};
use crm_platform::{Platform, db::begin_write, server::shutdown_channel};
use crm_proto::crm::analytics::v1::Granularity;
use sea_orm::DatabaseConnection;

use crate::bench_segments::{Load, bulk_load, h, id, percentile};

#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub customers: usize,
    pub orders: usize,
    /// Orders with lines (the baskets).
    pub baskets: usize,
    /// Funnel report runs.
    pub reports: usize,
    pub keep: bool,
}

const DAY: i64 = 86_400;

/// Fills the projection with generated rows (see `bench_segments::bulk_load`).
///
/// Customers joined over three years; each reaches the next stage with falling
/// chances (prospect 60 %, customer 40 %, repeat buyer 25 %), days apart. Orders go
/// to customers at random over the last two years (skewed toward some, each buyer
/// stopping at a time of its own), 5 % cancelled; the last `baskets` orders get two
/// lines from 200 products in 12 categories, 30 % of them a planted pair (product
/// 2k with 2k + 1).
async fn load(db: &DatabaseConnection, shape: Shape, now_us: i64) -> anyhow::Result<()> {
    let b = db.get_database_backend();
    let n = shape.customers.max(1) as u64;
    let created = format!("({now_us} - {} * 1000000)", h(1, 3 * 365 * DAY as u64));
    let step = |salt: u32, days: u64| format!("{} * 1000000", h(salt, days * DAY as u64));
    let prospect = format!("CASE WHEN {} < 60 THEN {created} + {} ELSE 0 END", h(2, 100), step(3, 30));
    let customer = format!(
        "CASE WHEN {} < 40 THEN {created} + {} + {} ELSE 0 END",
        h(2, 100),
        step(3, 30),
        step(4, 60)
    );
    let repeat = format!(
        "CASE WHEN {} < 25 THEN {created} + {} + {} + {} ELSE 0 END",
        h(2, 100),
        step(3, 30),
        step(4, 60),
        step(5, 90)
    );
    let product = |salt: u32| format!("'p' || CAST({} AS TEXT)", h(salt, 200));
    let first_line = format!(
        "CASE WHEN {} < 30 THEN 'p' || CAST(2 * {} AS TEXT) ELSE {} END",
        h(30, 100),
        h(31, 20),
        product(32)
    );
    let second_line = format!(
        "CASE WHEN {} < 30 THEN 'p' || CAST(2 * {} + 1 AS TEXT) ELSE {} END",
        h(30, 100),
        h(31, 20),
        product(33)
    );
    let first_order = shape.orders.saturating_sub(shape.baskets) + 1;
    // Buyers differ: low numbers buy far more often (the square of a uniform draw),
    // and each stopped buying some time in the last 600 days (a fixed draw of its
    // number), so rates and dropouts vary as the models assume.
    let uniform = h(7, n);
    let customer_number = format!("(1 + {uniform} * {uniform} / {n})");
    let loads = [
        Load {
            into: "customers (id, person_id, merged_into, owner_user_id, team_id, source_channel, stage, create_us, \
                   stage_prospect_us, stage_customer_us, stage_churned_us, first_order_us, second_order_us, deleted)",
            from: 1,
            to: shape.customers,
            select: format!(
                "{cid}, {cid}, NULL, '', '', 1 + {channel}, 1, {created}, {prospect}, {customer}, 0, {customer}, {repeat}, 0",
                cid = id(b, "c", "i"),
                channel = h(6, 6),
            ),
        },
        Load {
            into: "orders (id, customer_id, person_id, status, currency, total_micros, place_us)",
            from: 1,
            to: shape.orders,
            select: format!(
                "{oid}, {cid}, {cid}, CASE {cancel} WHEN 0 THEN 5 ELSE 4 END, 'CNY', (10 + {amount}) * 1000000, \
                 {now_us} - (({stop} + {day} * (730 - {stop}) / 730) * 86400 + {second}) * 1000000",
                oid = id(b, "o", "i"),
                cid = id(b, "c", &customer_number),
                stop = format!("({customer_number} * 7919 % 600)"),
                cancel = h(8, 20),
                amount = h(9, 490),
                day = h(10, 730),
                second = h(11, DAY as u64),
            ),
        },
        Load {
            into: "order_lines (order_id, line, product, category, quantity)",
            from: first_order,
            to: shape.orders,
            select: format!("{}, 0, {first_line}, 'c' || CAST({} AS TEXT), 1", id(b, "o", "i"), h(34, 12)),
        },
        Load {
            into: "order_lines (order_id, line, product, category, quantity)",
            from: first_order,
            to: shape.orders,
            select: format!("{}, 1, {second_line}, 'c' || CAST({} AS TEXT), 1", id(b, "o", "i"), h(35, 12)),
        },
    ];
    bulk_load(db, &["customers", "orders", "order_lines"], &loads).await
}

pub async fn run(
    cfg: &crate::Config,
    database_url: Option<&str>,
    shape: Shape,
    python: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    let mut platform_cfg = cfg.platform.clone();
    let scratch = crate::embedded::Scratch::new(&mut platform_cfg, database_url)?;
    let (_shutdown, signal) = shutdown_channel();
    let platform = Platform::new(platform_cfg, signal)?;
    let db = platform.database(SERVICE, store::MIGRATIONS).await?;
    let now_us = chrono::Utc::now().timestamp_micros();
    let started = Instant::now();
    load(&db, shape, now_us).await?;
    let load_secs = started.elapsed().as_secs_f64();

    let clv = &cfg.analytics.clv;
    let recent_from = now_us - i64::from(clv.recent_days) * DAY * 1_000_000;
    let baseline_from = recent_from - i64::from(clv.baseline_days) * DAY * 1_000_000;
    let started = Instant::now();
    let summaries = store::purchase_summaries(&db, &clv.currency, now_us, recent_from, baseline_from).await?;
    let summaries_secs = started.elapsed().as_secs_f64();
    eprintln!("{} purchase summaries in {summaries_secs:.1} s", summaries.len());

    let started = Instant::now();
    let (model, statistics) = models::fit_clv(&summaries, now_us);
    let fit_secs = started.elapsed().as_secs_f64();
    eprintln!("fitted in {fit_secs:.1} s: {model:?}");

    let started = Instant::now();
    let scores = models::score_all(&model, clv, &summaries, now_us);
    let score_secs = started.elapsed().as_secs_f64();
    let at_risk = scores.iter().filter(|s| s.at_risk).count();
    let started = Instant::now();
    let txn = begin_write(&db).await?;
    store::replace_scores(&txn, &scores).await?;
    txn.commit().await?;
    let store_secs = started.elapsed().as_secs_f64();
    eprintln!("scored in {score_secs:.2} s, stored in {store_secs:.1} s");

    let rules_cfg = models::RulesConfig {
        min_support: 0.001,
        min_confidence: 0.1,
        ..cfg.analytics.rules.clone()
    };
    let started = Instant::now();
    let pairs = store::baskets(&db, false, 0, now_us + 1).await?;
    let baskets_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (found, basket_count, itemsets) = models::mine(&pairs, &rules_cfg);
    let mine_secs = started.elapsed().as_secs_f64();
    eprintln!("{} rules from {basket_count} baskets in {mine_secs:.1} s", found.len());

    let from_us = now_us - 365 * DAY * 1_000_000;
    let mut report_ms = Vec::new();
    let mut leads = 0.0;
    for _ in 0..shape.reports.max(1) {
        let at = Instant::now();
        let rows = store::funnel_counts(&db, from_us, now_us, &[]).await?;
        let series = reports::funnel(&rows, from_us, now_us, Granularity::Month, false);
        report_ms.push(at.elapsed().as_secs_f64() * 1000.0);
        leads = series
            .iter()
            .find(|s| s.metric == "funnel")
            .and_then(|s| s.points.first())
            .map_or(0.0, |p| p.value);
    }
    report_ms.sort_by(f64::total_cmp);

    let cdnow = match python {
        Some(python) => {
            let r = crate::eval_analytics::clv(python, 1e-3)?;
            serde_json::json!({
                "ours_fit_seconds": r["ours"]["fit_seconds"],
                "lifetimes_fit_seconds": r["lifetimes"]["fit_seconds"],
                "ratio_ours_to_lifetimes": r["fit_time_ratio_ours_to_lifetimes"],
            })
        }
        None => serde_json::Value::Null,
    };
    let report = serde_json::json!({
        "backend": scratch.backend,
        "customers": shape.customers,
        "orders": shape.orders,
        "load_seconds": load_secs,
        "lifetime_value": {
            "people": summaries.len(),
            "summaries_seconds": summaries_secs,
            "fit_seconds": fit_secs,
            "parameters": {
                "r": model.bgnbd.r, "alpha": model.bgnbd.alpha, "a": model.bgnbd.a, "b": model.bgnbd.b,
                "p": model.spend.map(|g| g.p), "q": model.spend.map(|g| g.q), "v": model.spend.map(|g| g.v),
            },
            "statistics": statistics,
            "scoring_seconds": score_secs,
            "scored_per_second": summaries.len() as f64 / score_secs,
            "at_risk": at_risk,
            "store_scores_seconds": store_secs,
        },
        "association_rules": {
            "baskets": basket_count,
            "baskets_query_seconds": baskets_secs,
            "fp_growth_seconds": mine_secs,
            "itemsets": itemsets,
            "rules": found.len(),
            "min_support": rules_cfg.min_support,
        },
        "funnel_report": {
            "runs": report_ms.len(),
            "leads_in_last_year": leads,
            "p50_ms": percentile(&report_ms, 50.0),
            "p95_ms": percentile(&report_ms, 95.0),
        },
        "cdnow": cdnow,
    });
    if !shape.keep {
        scratch.drop(&[]).await?;
    }
    Ok(serde_json::to_string_pretty(&report)?)
}
