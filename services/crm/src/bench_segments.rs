//! `crm bench segments`: marketing-segmentation at scale. Opens the service's
//! database on a temporary SQLite file or a scratch PostgreSQL schema and fills its
//! projection directly with generated customers, orders and interactions (set-based
//! SQL: going through customer-profile's feed would measure customer-profile's
//! ingest, which `crm bench interactions` covers). Then, timed:
//!
//! - the full RFM computation over the whole population;
//! - `PreviewSegment` of a five-condition rule (count and sample), repeated;
//! - the full evaluation that materialises the segment;
//! - the incremental path: order events applied as the feed consumer applies them
//!   (projection, RFM, traits, segment membership and its event, one transaction),
//!   from the start of the apply to the commit of the membership event.
//!
//! Prints JSON.

use std::time::Instant;

use crm_platform::{Platform, consumer::Apply, db::begin_write, feed::Feed, server::shutdown_channel};
use crm_proto::crm::{customer::v1 as cpb, events::v1::Event};
use crm_segmentation::{
    SERVICE,
    projection::Projection,
    rfm::RfmConfig,
    rule::{Context, Scope},
    segments::{Evaluator, Segments, SegmentsConfig},
    store,
};
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};

use crate::seed::Rng;

#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub customers: usize,
    pub orders: usize,
    pub interactions: usize,
    /// Preview runs.
    pub previews: usize,
    /// Order events applied for the incremental lag.
    pub events: usize,
    /// Leave the scratch schema (PostgreSQL) in place, to inspect plans.
    pub keep: bool,
}

/// The five-condition rule previewed and materialised.
pub const RULE: &str = "lifecycle_stage = CUSTOMER AND region = \"CN\" AND orders(90d) >= 2 \
                        AND interactions(product_view, 30d) >= 1 AND rfm.monetary_score >= 3";

/// Customers one order away from the rule: half the order events go to them, so
/// the lag of an order that changes membership is measured too.
const ONE_ORDER_AWAY: &str = "lifecycle_stage = CUSTOMER AND region = \"CN\" AND orders(90d) = 1 \
                              AND interactions(product_view, 30d) >= 1 AND rfm.monetary_score >= 4";

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A deterministic pseudo-random integer in 0..m from the row number `i` and a salt,
/// in SQL both backends run alike.
pub(crate) fn h(salt: u32, m: u64) -> String {
    format!(
        "((CAST(i AS BIGINT) * 2654435761 + {}) % 2147483647 % {m})",
        u64::from(salt) * 40_503
    )
}

/// `INSERT INTO {into} SELECT {select} FROM` the numbers `lo..=hi` as `i`.
pub(crate) fn series_insert(backend: DbBackend, into: &str, select: &str, lo: usize, hi: usize) -> String {
    match backend {
        DbBackend::Postgres => format!("INSERT INTO {into} SELECT {select} FROM generate_series({lo}, {hi}) AS s(i)"),
        _ => format!(
            "WITH RECURSIVE s(i) AS (SELECT {lo} UNION ALL SELECT i + 1 FROM s WHERE i < {hi}) INSERT INTO {into} SELECT {select} FROM s"
        ),
    }
}

/// `{prefix}` followed by the number `expr` in eight digits.
pub(crate) fn id(backend: DbBackend, prefix: &str, expr: &str) -> String {
    match backend {
        DbBackend::Postgres => format!("'{prefix}' || lpad(CAST({expr} AS TEXT), 8, '0')"),
        _ => format!("printf('{prefix}%08d', {expr})"),
    }
}

const CATEGORY: &str = "CASE {h} WHEN 0 THEN 'shoes' WHEN 1 THEN 'bags' WHEN 2 THEN 'hats' WHEN 3 THEN 'phones' ELSE 'books' END";

/// The secondary indexes of `tables`: (name, definition).
async fn indexes(db: &DatabaseConnection, tables: &[&str]) -> anyhow::Result<Vec<(String, String)>> {
    let list = tables.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => format!(
            "SELECT indexname AS name, indexdef AS def FROM pg_indexes WHERE schemaname = current_schema() \
             AND tablename IN ({list}) AND indexname NOT LIKE '%_pkey'"
        ),
        _ => format!(
            "SELECT name, sql AS def FROM sqlite_master WHERE type = 'index' \
             AND tbl_name IN ({list}) AND sql IS NOT NULL"
        ),
    };
    crm_platform::db::query(db, &sql, vec![])
        .await?
        .iter()
        .map(|r| Ok((r.try_get("", "name")?, r.try_get("", "def")?)))
        .collect()
}

/// One generated load: `INSERT INTO {into} SELECT {select}` over the row numbers
/// `from..=to` (as `i`).
pub(crate) struct Load {
    pub into: &'static str,
    pub from: usize,
    pub to: usize,
    pub select: String,
}

/// Runs `loads` in chunks of a million rows (progress on stderr), with the secondary
/// indexes of `tables` dropped meanwhile and built again after (as a bulk load
/// would), then refreshes the planner's statistics.
pub(crate) async fn bulk_load(db: &DatabaseConnection, tables: &[&str], loads: &[Load]) -> anyhow::Result<()> {
    let b = db.get_database_backend();
    let secondary = indexes(db, tables).await?;
    for (name, _) in &secondary {
        db.execute_unprepared(&format!("DROP INDEX {name}")).await?;
    }
    for load in loads {
        let started = Instant::now();
        let mut lo = load.from;
        while lo <= load.to {
            let hi = (lo + 999_999).min(load.to);
            let txn = begin_write(db).await?;
            txn.execute_unprepared(&series_insert(b, load.into, &load.select, lo, hi))
                .await?;
            txn.commit().await?;
            eprintln!(
                "loaded {hi} of {} into {} ({:.0} s)",
                load.to,
                load.into.split(' ').next().unwrap_or(""),
                started.elapsed().as_secs_f64()
            );
            lo = hi + 1;
        }
    }
    let started = Instant::now();
    for (_, def) in &secondary {
        db.execute_unprepared(def).await?;
    }
    eprintln!("indexes built ({:.0} s)", started.elapsed().as_secs_f64());
    // Statistics for the planner and the visibility map (index-only scans), as
    // autovacuum would leave them after a load.
    let analyze = if b == DbBackend::Postgres {
        format!("VACUUM ANALYZE {}", tables.join(", "))
    } else {
        "ANALYZE".to_owned()
    };
    db.execute_unprepared(&analyze).await?;
    Ok(())
}

/// Fills the projection with generated rows (see [`bulk_load`]).
async fn load(db: &DatabaseConnection, shape: Shape, now_us: i64) -> anyhow::Result<()> {
    let b = db.get_database_backend();
    let n = shape.customers.max(1);
    let category = |salt| CATEGORY.replace("{h}", &h(salt, 5));
    let loads = [
        Load {
            into: "customers (id, person_id, merged_into, kind, lifecycle_stage, source_channel, owner_user_id, team_id, region, \
                   locality, tags, attributes, create_us, update_us, deleted)",
            from: 1,
            to: shape.customers,
            select: format!(
                "{cid}, {cid}, NULL, 1, 1 + {stage}, 1 + {channel}, '', '', CASE {region} WHEN 0 THEN 'HK' WHEN 1 THEN 'SG' ELSE 'CN' END, \
                 '', '[]', CASE {tier} WHEN 0 THEN '{{\"tier\":\"gold\"}}' ELSE '{{}}' END, {now_us} - {age} * 1000000, {now_us}, 0",
                cid = id(b, "c", "i"),
                stage = h(1, 4),
                channel = h(2, 6),
                region = h(3, 5),
                tier = h(4, 3),
                age = h(5, 3 * 365 * 86_400),
            ),
        },
        Load {
            into: "orders (id, customer_id, person_id, status, currency, total_micros, place_us, categories)",
            from: 1,
            to: shape.orders,
            select: format!(
                "{oid}, {cid}, {cid}, CASE {cancel} WHEN 0 THEN 5 ELSE 4 END, 'CNY', (10 + {amount}) * 1000000, \
                 {now_us} - {ago} * 1000000, '[\"' || {cat} || '\"]'",
                oid = id(b, "o", "i"),
                cid = id(b, "c", &format!("1 + {}", h(7, n as u64))),
                cancel = h(8, 20),
                amount = h(9, 990),
                ago = h(10, 730 * 86_400),
                cat = category(11),
            ),
        },
        Load {
            into: "interactions (id, customer_id, person_id, kind, channel, occur_us, category, campaign)",
            from: 1,
            to: shape.interactions,
            select: format!(
                "{iid}, {cid}, {cid}, 1 + {kind}, 1 + {channel}, {now_us} - {ago} * 1000000, {cat}, ''",
                iid = id(b, "i", "i"),
                cid = id(b, "c", &format!("1 + {}", h(12, n as u64))),
                kind = h(13, 6),
                channel = h(14, 3),
                ago = h(15, 180 * 86_400),
                cat = category(16),
            ),
        },
    ];
    bulk_load(db, &["customers", "orders", "interactions"], &loads).await
}

fn order_event(i: usize, customer: &str, rng: &mut Rng) -> Event {
    let e = cpb::OrderChanged {
        customer: format!("customers/{customer}"),
        order: Some(cpb::Order {
            name: format!("customers/{customer}/orders/bench-{i}"),
            status: cpb::OrderStatus::Completed as i32,
            currency: "CNY".into(),
            total_micros: i64::try_from(10 + rng.below(990)).unwrap_or(10) * 1_000_000,
            place_time: Some(prost_types::Timestamp {
                seconds: chrono::Utc::now().timestamp() - 60,
                nanos: 0,
            }),
            ..Default::default()
        }),
        created: true,
        previous_status: 0,
    };
    Event {
        id: format!("bench-{i}"),
        r#type: "crm.customer.v1.OrderChanged".into(),
        data: Some(prost_types::Any {
            type_url: "type.googleapis.com/crm.customer.v1.OrderChanged".into(),
            value: e.encode_to_vec(),
        }),
        ..Default::default()
    }
}

async fn membership_events(db: &DatabaseConnection) -> anyhow::Result<i64> {
    let rows = crm_platform::db::query(
        db,
        "SELECT COUNT(*) AS n FROM outbox WHERE event_type = 'crm.segmentation.v1.SegmentMembershipChanged'",
        vec![],
    )
    .await?;
    Ok(rows.first().map(|r| r.try_get::<i64>("", "n")).transpose()?.unwrap_or(0))
}

pub async fn run(cfg: &crate::Config, database_url: Option<&str>, shape: Shape) -> anyhow::Result<String> {
    let mut platform_cfg = cfg.platform.clone();
    let scratch = crate::embedded::Scratch::new(&mut platform_cfg, database_url)?;
    let (_shutdown, signal) = shutdown_channel();
    let platform = Platform::new(platform_cfg, signal.clone())?;
    let db = platform.database(SERVICE, store::MIGRATIONS).await?;
    let seg_cfg = &cfg.segmentation;
    let now_us = chrono::Utc::now().timestamp_micros();

    let started = Instant::now();
    load(&db, shape, now_us).await?;
    let load_secs = started.elapsed().as_secs_f64();

    let rfm = RfmConfig {
        recompute_interval_secs: 3600,
        ..seg_cfg.rfm.clone()
    };
    let started = Instant::now();
    let population = crm_segmentation::rfm::recompute(&db, &rfm, chrono::Utc::now()).await?;
    let rfm_secs = started.elapsed().as_secs_f64();
    eprintln!("RFM of {population} customers in {rfm_secs:.1} s");

    let feed = Feed::new(db.clone(), SERVICE, platform.config.feed.clone(), signal);
    let evaluator = Evaluator {
        currency: rfm.currency.clone(),
    };
    let registry = crm_segmentation::traits::Registry::new(seg_cfg.traits());
    let segments = Segments::new(
        db.clone(),
        feed.clone(),
        registry.clone(),
        evaluator.clone(),
        SegmentsConfig {
            refresh_interval_secs: 86_400,
            poll_interval_ms: 1000,
        },
    );
    let mut preview_ms = Vec::new();
    let mut count = 0;
    for _ in 0..shape.previews.max(1) {
        let at = Instant::now();
        count = segments.preview(None, RULE, 10).await?.count;
        preview_ms.push(at.elapsed().as_secs_f64() * 1000.0);
    }
    preview_ms.sort_by(f64::total_cmp);
    eprintln!("preview: {count} customers, p50 {:.0} ms", percentile(&preview_ms, 50.0));

    segments
        .create(
            "bench",
            "bench",
            &crm_proto::crm::segmentation::v1::Segment {
                display_name: "bench".into(),
                filter: RULE.into(),
                ..Default::default()
            },
        )
        .await?;
    let started = Instant::now();
    segments.evaluate_due().await?;
    let evaluate_secs = started.elapsed().as_secs_f64();
    let members = segments.get("bench").await?.member_count;

    let ctx = Context::new(&seg_cfg.traits());
    let near = crm_segmentation::segments::resolve(None, ONE_ORDER_AWAY, &ctx, "")?;
    let near: Vec<String> = evaluator.matching(&db, &near, Scope::All).await?.into_iter().collect();
    let projection = Projection::new(rfm.clone(), registry, evaluator);
    let mut rng = Rng::new(0x5E6);
    let (mut lag_ms, mut entering_ms) = (Vec::new(), Vec::new());
    let mut changed = 0;
    for i in 0..shape.events {
        let customer = match near.get(i / 2) {
            Some(c) if i % 2 == 0 => c.clone(),
            _ => format!("c{:08}", 1 + rng.below(shape.customers.max(1) as u64)),
        };
        let event = order_event(i, &customer, &mut rng);
        let before = membership_events(&db).await?;
        let at = Instant::now();
        let txn = begin_write(&db).await?;
        projection.apply(&txn, &event).await?;
        txn.commit().await?;
        let ms = at.elapsed().as_secs_f64() * 1000.0;
        lag_ms.push(ms);
        if membership_events(&db).await? > before {
            changed += 1;
            entering_ms.push(ms);
        }
    }
    lag_ms.sort_by(f64::total_cmp);
    entering_ms.sort_by(f64::total_cmp);
    let backend = scratch.backend;
    if shape.keep {
        eprintln!("kept the scratch storage: {}", platform.config.database.schema);
    } else {
        scratch.drop(&[]).await?;
    }
    Ok(format!(
        r#"{{"bench":"segments","backend":"{}","customers":{},"orders":{},"interactions":{},"load_seconds":{load_secs:.1},"rfm":{{"population":{population},"seconds":{rfm_secs:.2}}},"preview":{{"rule":{},"count":{count},"runs":{},"ms":{{"p50":{:.1},"p99":{:.1}}}}},"full_evaluation":{{"members":{members},"seconds":{evaluate_secs:.2}}},"incremental":{{"order_events":{},"apply_to_commit_ms":{{"p50":{:.1},"p99":{:.1},"max":{:.1}}},"changing_membership":{changed},"changing_apply_to_commit_ms":{{"p50":{:.1},"p99":{:.1}}}}}}}"#,
        backend,
        shape.customers,
        shape.orders,
        shape.interactions,
        serde_json::to_string(RULE)?,
        preview_ms.len(),
        percentile(&preview_ms, 50.0),
        percentile(&preview_ms, 99.0),
        shape.events,
        percentile(&lag_ms, 50.0),
        percentile(&lag_ms, 99.0),
        lag_ms.last().copied().unwrap_or(0.0),
        percentile(&entering_ms, 50.0),
        percentile(&entering_ms, 99.0),
    ))
}
