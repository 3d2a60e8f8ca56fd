//! The analytics database: narrow, mostly numeric projections of the other services'
//! feeds (what reports aggregate), the daily KPI snapshots, fitted models, scores
//! and rules. Projection writes run in the caller's transaction, the one that also
//! moves the feed cursor.
//!
//! Merges: a customer row keeps the person it counts for now (`person_id`: the
//! survivor it was merged into, followed to the end); orders carry their customer's
//! person, so models see one history per person and an unmerge gives rows back.

use crm_platform::{
    Result, audit, consumer,
    db::{exec, query},
    feed, idempotency,
    migrate::{Dialect, Migration},
    schedule,
};
use sea_orm::{ConnectionTrait, Value};

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "projections (customers, orders and lines, tickets, campaign touches), KPI snapshots, models, scores, rules, feed cursors, outbox, schedules",
    up: v1,
}];

/// Order statuses that count as a purchase (placed and not cancelled or fully refunded).
pub const PURCHASE_STATUSES: &str = "2, 3, 4, 7";

fn v1(d: Dialect) -> Vec<String> {
    let mut sql = vec![
        // Stage times (µs, 0: not reached): each stage counts as reached when a later
        // one is, so a customer created as CUSTOMER passed lead and prospect then.
        "CREATE TABLE customers (id TEXT PRIMARY KEY, person_id TEXT NOT NULL, merged_into TEXT, \
         owner_user_id TEXT NOT NULL, team_id TEXT NOT NULL, \
         source_channel INTEGER NOT NULL, stage INTEGER NOT NULL, create_us BIGINT NOT NULL, \
         stage_prospect_us BIGINT NOT NULL, stage_customer_us BIGINT NOT NULL, stage_churned_us BIGINT NOT NULL, \
         first_order_us BIGINT NOT NULL, second_order_us BIGINT NOT NULL, deleted INTEGER NOT NULL)"
            .into(),
        "CREATE INDEX customers_created ON customers (create_us)".into(),
        "CREATE INDEX customers_merged_into ON customers (merged_into)".into(),
        "CREATE TABLE orders (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, person_id TEXT NOT NULL, \
         status INTEGER NOT NULL, currency TEXT NOT NULL, total_micros BIGINT NOT NULL, place_us BIGINT NOT NULL)"
            .into(),
        "CREATE INDEX orders_customer ON orders (customer_id, place_us)".into(),
        "CREATE INDEX orders_person ON orders (person_id, place_us)".into(),
        "CREATE TABLE order_lines (order_id TEXT NOT NULL, line INTEGER NOT NULL, product TEXT NOT NULL, \
         category TEXT NOT NULL, quantity BIGINT NOT NULL, PRIMARY KEY (order_id, line))"
            .into(),
        // SLA outcome per metric: 0 no target, 1 met, 2 breached; 3 pending (target
        // running). Rating 0: none.
        "CREATE TABLE tickets (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, channel INTEGER NOT NULL, \
         category TEXT NOT NULL, queue TEXT NOT NULL, complaint INTEGER NOT NULL, create_us BIGINT NOT NULL, \
         first_response_us BIGINT NOT NULL, solve_us BIGINT NOT NULL, has_sla INTEGER NOT NULL, \
         response_breached INTEGER NOT NULL, resolution_breached INTEGER NOT NULL, rating INTEGER NOT NULL, \
         rating_us BIGINT NOT NULL)"
            .into(),
        "CREATE INDEX tickets_created ON tickets (create_us)".into(),
        "CREATE TABLE interactions (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, kind INTEGER NOT NULL, \
         channel INTEGER NOT NULL, occur_us BIGINT NOT NULL)"
            .into(),
        "CREATE INDEX interactions_time ON interactions (occur_us)".into(),
        "CREATE INDEX interactions_customer ON interactions (customer_id)".into(),
        "CREATE TABLE touches (campaign TEXT NOT NULL, run BIGINT NOT NULL, customer_id TEXT NOT NULL, \
         kind INTEGER NOT NULL, channel INTEGER NOT NULL, occur_us BIGINT NOT NULL, control INTEGER NOT NULL, \
         order_id TEXT NOT NULL, revenue_micros BIGINT NOT NULL, currency TEXT NOT NULL, \
         PRIMARY KEY (campaign, run, customer_id, kind, order_id))"
            .into(),
        "CREATE INDEX touches_time ON touches (occur_us)".into(),
        // One row per day and KPI.
        "CREATE TABLE quality_points (day_us BIGINT NOT NULL, kpi TEXT NOT NULL, value DOUBLE PRECISION NOT NULL, \
         target DOUBLE PRECISION NOT NULL, minimum INTEGER NOT NULL, alert INTEGER NOT NULL, \
         numerator BIGINT NOT NULL, denominator BIGINT NOT NULL, compute_us BIGINT NOT NULL, PRIMARY KEY (day_us, kpi))"
            .into(),
        // Parameters and statistics as `name=value` lines.
        "CREATE TABLE models (model TEXT NOT NULL, version BIGINT NOT NULL, fit_us BIGINT NOT NULL, \
         fit_seconds DOUBLE PRECISION NOT NULL, parameters TEXT NOT NULL, statistics TEXT NOT NULL, \
         data_end_us BIGINT NOT NULL, time_unit TEXT NOT NULL, trigger TEXT NOT NULL, PRIMARY KEY (model, version))"
            .into(),
        "CREATE TABLE scores (person_id TEXT PRIMARY KEY, orders BIGINT NOT NULL, first_us BIGINT NOT NULL, \
         last_us BIGINT NOT NULL, p_alive DOUBLE PRECISION NOT NULL, expected DOUBLE PRECISION NOT NULL, \
         order_value DOUBLE PRECISION NOT NULL, clv DOUBLE PRECISION NOT NULL, freq_drop DOUBLE PRECISION NOT NULL, \
         risk DOUBLE PRECISION NOT NULL, at_risk INTEGER NOT NULL, at_risk_us BIGINT NOT NULL, \
         model_version BIGINT NOT NULL, score_us BIGINT NOT NULL)"
            .into(),
        "CREATE INDEX scores_risk ON scores (risk, person_id)".into(),
        // Items as JSON arrays of strings.
        "CREATE TABLE rules (version BIGINT NOT NULL, level INTEGER NOT NULL, rank BIGINT NOT NULL, \
         antecedents TEXT NOT NULL, consequents TEXT NOT NULL, support DOUBLE PRECISION NOT NULL, \
         confidence DOUBLE PRECISION NOT NULL, lift DOUBLE PRECISION NOT NULL, baskets BIGINT NOT NULL, \
         PRIMARY KEY (version, level, rank))"
            .into(),
    ];
    sql.extend(consumer::migration_sql(d));
    sql.extend(feed::migration_sql(d));
    sql.extend(idempotency::migration_sql(d));
    sql.extend(audit::migration_sql(d));
    sql.extend(schedule::migration_sql(d));
    sql
}

fn one_i64(rows: &[sea_orm::QueryResult], column: &str) -> Result<Option<i64>> {
    Ok(rows
        .first()
        .map(|r| r.try_get::<Option<i64>>("", column))
        .transpose()?
        .flatten())
}

// ---------------------------------------------------------------- customers

/// A customer as the feed showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerRow {
    pub id: String,
    /// Who owns the record and its team (what read scopes are decided on).
    pub owner_user_id: String,
    pub team_id: String,
    pub source_channel: i32,
    /// `crm.customer.v1.LifecycleStage`.
    pub stage: i32,
    pub create_us: i64,
    /// When the change was made (the stage's entry time when it moved).
    pub update_us: i64,
    pub deleted: bool,
}

const PROSPECT: i32 = 2;
const CUSTOMER: i32 = 3;
const CHURNED: i32 = 4;

/// Inserts or updates a customer, recording when it first reached each stage.
pub async fn upsert_customer<C: ConnectionTrait>(conn: &C, c: &CustomerRow) -> Result<()> {
    let at = if c.update_us > 0 { c.update_us } else { c.create_us };
    // Reached now: this stage and every one before it (churned follows customer).
    let reached = |stage: i32| -> i64 {
        let reached = match stage {
            PROSPECT => c.stage >= PROSPECT,
            CUSTOMER => c.stage >= CUSTOMER,
            _ => c.stage == CHURNED,
        };
        if reached { at } else { 0 }
    };
    let (p, cu, ch) = (reached(PROSPECT), reached(CUSTOMER), reached(CHURNED));
    exec(
        conn,
        "INSERT INTO customers (id, person_id, merged_into, owner_user_id, team_id, source_channel, stage, create_us, \
         stage_prospect_us, stage_customer_us, stage_churned_us, first_order_us, second_order_us, deleted) \
         VALUES (?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?) \
         ON CONFLICT (id) DO UPDATE SET owner_user_id = excluded.owner_user_id, team_id = excluded.team_id, \
         source_channel = excluded.source_channel, stage = excluded.stage, \
         create_us = excluded.create_us, deleted = excluded.deleted, \
         stage_prospect_us = CASE WHEN customers.stage_prospect_us = 0 THEN excluded.stage_prospect_us ELSE customers.stage_prospect_us END, \
         stage_customer_us = CASE WHEN customers.stage_customer_us = 0 THEN excluded.stage_customer_us ELSE customers.stage_customer_us END, \
         stage_churned_us = CASE WHEN excluded.stage_churned_us = 0 THEN 0 \
           WHEN customers.stage_churned_us = 0 THEN excluded.stage_churned_us ELSE customers.stage_churned_us END",
        vec![
            c.id.as_str().into(),
            c.id.as_str().into(),
            c.owner_user_id.as_str().into(),
            c.team_id.as_str().into(),
            c.source_channel.into(),
            c.stage.into(),
            c.create_us.into(),
            p.into(),
            cu.into(),
            ch.into(),
            i32::from(c.deleted).into(),
        ],
    )
    .await?;
    Ok(())
}

/// Who may read a customer's predictions: its owner and team (the person's record,
/// for a merged customer). `None`: not in the projection.
pub async fn ownership<C: ConnectionTrait>(conn: &C, person: &str) -> Result<Option<(String, String)>> {
    let rows = query(
        conn,
        "SELECT owner_user_id, team_id FROM customers WHERE id = ?",
        vec![person.into()],
    )
    .await?;
    rows.first()
        .map(|r| Ok((r.try_get("", "owner_user_id")?, r.try_get("", "team_id")?)))
        .transpose()
}

/// The person a customer counts for now.
pub async fn person_of<C: ConnectionTrait>(conn: &C, customer_id: &str) -> Result<String> {
    let rows = query(conn, "SELECT person_id FROM customers WHERE id = ?", vec![customer_id.into()]).await?;
    Ok(rows
        .first()
        .map(|r| r.try_get::<String>("", "person_id"))
        .transpose()?
        .unwrap_or_else(|| customer_id.to_owned()))
}

/// Records that `merged` now live on in `survivor` (or, with `None`, stand alone again).
pub async fn set_merged_into<C: ConnectionTrait>(conn: &C, merged: &[String], survivor: Option<&str>) -> Result<()> {
    for id in merged {
        // A customer first seen in a merge is known by id only until its own event.
        exec(
            conn,
            "INSERT INTO customers (id, person_id, merged_into, owner_user_id, team_id, source_channel, stage, create_us, \
             stage_prospect_us, stage_customer_us, stage_churned_us, first_order_us, second_order_us, deleted) \
             VALUES (?, ?, ?, '', '', 0, 0, 0, 0, 0, 0, 0, 0, 0) ON CONFLICT (id) DO UPDATE SET merged_into = excluded.merged_into",
            vec![id.as_str().into(), id.as_str().into(), survivor.map(str::to_owned).into()],
        )
        .await?;
    }
    Ok(())
}

/// Removes every row recorded for the erased customers.
pub async fn erase<C: ConnectionTrait>(conn: &C, ids: &[String]) -> Result<()> {
    for id in ids {
        let v = || vec![Value::from(id.as_str())];
        exec(
            conn,
            "DELETE FROM order_lines WHERE order_id IN (SELECT id FROM orders WHERE customer_id = ?)",
            v(),
        )
        .await?;
        for sql in [
            "DELETE FROM orders WHERE customer_id = ?",
            "DELETE FROM tickets WHERE customer_id = ?",
            "DELETE FROM interactions WHERE customer_id = ?",
            "DELETE FROM touches WHERE customer_id = ?",
            "DELETE FROM scores WHERE person_id = ?",
            "DELETE FROM customers WHERE id = ?",
        ] {
            exec(conn, sql, v()).await?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- orders

/// An order as the feed showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    pub id: String,
    pub customer_id: String,
    pub status: i32,
    pub currency: String,
    pub total_micros: i64,
    pub place_us: i64,
    pub lines: Vec<LineRow>,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRow {
    pub product: String,
    pub category: String,
    pub quantity: i64,
}

/// Inserts or replaces an order and its lines; refreshes its customer's first and
/// second purchase times.
pub async fn upsert_order<C: ConnectionTrait>(conn: &C, o: &OrderRow) -> Result<()> {
    let person = person_of(conn, &o.customer_id).await?;
    exec(
        conn,
        "INSERT INTO orders (id, customer_id, person_id, status, currency, total_micros, place_us) VALUES (?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id, person_id = excluded.person_id, \
         status = excluded.status, currency = excluded.currency, total_micros = excluded.total_micros, place_us = excluded.place_us",
        vec![
            o.id.as_str().into(),
            o.customer_id.as_str().into(),
            person.into(),
            o.status.into(),
            o.currency.as_str().into(),
            o.total_micros.into(),
            o.place_us.into(),
        ],
    )
    .await?;
    exec(conn, "DELETE FROM order_lines WHERE order_id = ?", vec![o.id.as_str().into()]).await?;
    for (i, l) in o.lines.iter().enumerate() {
        exec(
            conn,
            "INSERT INTO order_lines (order_id, line, product, category, quantity) VALUES (?, ?, ?, ?, ?)",
            vec![
                o.id.as_str().into(),
                (i as i64).into(),
                l.product.as_str().into(),
                l.category.as_str().into(),
                l.quantity.into(),
            ],
        )
        .await?;
    }
    let times = query(
        conn,
        &format!(
            "SELECT place_us FROM orders WHERE customer_id = ? AND status IN ({PURCHASE_STATUSES}) ORDER BY place_us LIMIT 2"
        ),
        vec![o.customer_id.as_str().into()],
    )
    .await?;
    let at = |i: usize| -> Result<i64> {
        Ok(times
            .get(i)
            .map(|r| r.try_get::<i64>("", "place_us"))
            .transpose()?
            .unwrap_or(0))
    };
    exec(
        conn,
        "UPDATE customers SET first_order_us = ?, second_order_us = ? WHERE id = ?",
        vec![at(0)?.into(), at(1)?.into(), o.customer_id.as_str().into()],
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------- tickets

/// A ticket as the feed showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRow {
    pub id: String,
    pub customer_id: String,
    pub channel: i32,
    pub category: String,
    pub queue: String,
    pub complaint: bool,
    pub create_us: i64,
    pub first_response_us: i64,
    pub solve_us: i64,
    pub has_sla: bool,
}

/// Inserts or updates a ticket; breaches and ratings already recorded stay.
pub async fn upsert_ticket<C: ConnectionTrait>(conn: &C, t: &TicketRow) -> Result<()> {
    exec(
        conn,
        "INSERT INTO tickets (id, customer_id, channel, category, queue, complaint, create_us, first_response_us, solve_us, \
         has_sla, response_breached, resolution_breached, rating, rating_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, 0) \
         ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id, channel = excluded.channel, \
         category = excluded.category, queue = excluded.queue, complaint = excluded.complaint, create_us = excluded.create_us, \
         first_response_us = excluded.first_response_us, solve_us = excluded.solve_us, has_sla = excluded.has_sla",
        vec![
            t.id.as_str().into(),
            t.customer_id.as_str().into(),
            t.channel.into(),
            t.category.as_str().into(),
            t.queue.as_str().into(),
            i32::from(t.complaint).into(),
            t.create_us.into(),
            t.first_response_us.into(),
            t.solve_us.into(),
            i32::from(t.has_sla).into(),
        ],
    )
    .await?;
    Ok(())
}

/// Records a breached SLA target (`resolution`: the resolution target, else the
/// response target).
pub async fn breach<C: ConnectionTrait>(conn: &C, ticket: &str, resolution: bool) -> Result<()> {
    let column = if resolution {
        "resolution_breached"
    } else {
        "response_breached"
    };
    exec(
        conn,
        &format!("UPDATE tickets SET {column} = 1, has_sla = 1 WHERE id = ?"),
        vec![ticket.into()],
    )
    .await?;
    Ok(())
}

/// Records a satisfaction rating (1 to 5).
pub async fn rate<C: ConnectionTrait>(conn: &C, ticket: &str, rating: i32, at_us: i64) -> Result<()> {
    exec(
        conn,
        "UPDATE tickets SET rating = ?, rating_us = ? WHERE id = ?",
        vec![rating.into(), at_us.into(), ticket.into()],
    )
    .await?;
    Ok(())
}

/// A ticket as reports read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TicketFacts {
    pub channel: i32,
    pub category: String,
    pub queue: String,
    pub complaint: bool,
    pub create_us: i64,
    pub first_response_us: i64,
    pub solve_us: i64,
    pub has_sla: bool,
    pub response_breached: bool,
    pub resolution_breached: bool,
    pub rating: i32,
}

/// A page of the tickets created in `[from, to)`, in (creation time, id) order after
/// `after` (`None`: from the start), at most `limit`; with the last one's key.
pub async fn tickets<C: ConnectionTrait>(
    conn: &C,
    from_us: i64,
    to_us: i64,
    after: Option<&(i64, String)>,
    limit: u64,
) -> Result<(Vec<TicketFacts>, Option<(i64, String)>)> {
    let (after, mut values) = crm_platform::db::after_key("create_us", after);
    values.splice(0..0, [from_us.into(), to_us.into()]);
    let rows = query(
        conn,
        &format!(
            "SELECT id, channel, category, queue, complaint, create_us, first_response_us, solve_us, has_sla, \
             response_breached, resolution_breached, rating FROM tickets WHERE create_us >= ? AND create_us < ? \
             AND {after} ORDER BY create_us, id LIMIT {limit}"
        ),
        values,
    )
    .await?;
    let last = rows
        .last()
        .map(|r| -> Result<(i64, String)> { Ok((r.try_get("", "create_us")?, r.try_get("", "id")?)) })
        .transpose()?;
    let facts = rows
        .iter()
        .map(|r| {
            Ok(TicketFacts {
                channel: r.try_get("", "channel")?,
                category: r.try_get("", "category")?,
                queue: r.try_get("", "queue")?,
                complaint: r.try_get::<i32>("", "complaint")? != 0,
                create_us: r.try_get("", "create_us")?,
                first_response_us: r.try_get("", "first_response_us")?,
                solve_us: r.try_get("", "solve_us")?,
                has_sla: r.try_get::<i32>("", "has_sla")? != 0,
                response_breached: r.try_get::<i32>("", "response_breached")? != 0,
                resolution_breached: r.try_get::<i32>("", "resolution_breached")? != 0,
                rating: r.try_get("", "rating")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((facts, last))
}

// ---------------------------------------------------------------- interactions

/// Records an interaction (once: the feed's id is the key).
pub async fn insert_interaction<C: ConnectionTrait>(
    conn: &C,
    id: &str,
    customer_id: &str,
    kind: i32,
    channel: i32,
    occur_us: i64,
) -> Result<()> {
    exec(
        conn,
        "INSERT INTO interactions (id, customer_id, kind, channel, occur_us) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (id) DO NOTHING",
        vec![id.into(), customer_id.into(), kind.into(), channel.into(), occur_us.into()],
    )
    .await?;
    Ok(())
}

/// Forgets interactions before `cutoff_us` (customer-profile purged them).
pub async fn delete_interactions_before<C: ConnectionTrait>(conn: &C, cutoff_us: i64) -> Result<()> {
    exec(conn, "DELETE FROM interactions WHERE occur_us < ?", vec![cutoff_us.into()]).await?;
    Ok(())
}

/// Interactions counted per day and channel in `[from, to)`.
pub async fn interaction_counts<C: ConnectionTrait>(conn: &C, from_us: i64, to_us: i64) -> Result<Vec<(i64, i32, i64)>> {
    let rows = query(
        conn,
        "SELECT occur_us / 86400000000 AS day, channel, COUNT(*) AS n FROM interactions \
         WHERE occur_us >= ? AND occur_us < ? GROUP BY occur_us / 86400000000, channel",
        vec![from_us.into(), to_us.into()],
    )
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("", "day")?, r.try_get("", "channel")?, r.try_get("", "n")?)))
        .collect()
}

// ---------------------------------------------------------------- touches

/// One campaign touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TouchRow {
    pub campaign: String,
    pub run: i64,
    pub customer_id: String,
    pub kind: i32,
    pub channel: i32,
    pub occur_us: i64,
    pub control: bool,
    pub order_id: String,
    pub revenue_micros: i64,
    pub currency: String,
}

pub async fn insert_touches<C: ConnectionTrait>(conn: &C, touches: &[TouchRow]) -> Result<()> {
    for t in touches {
        exec(
            conn,
            "INSERT INTO touches (campaign, run, customer_id, kind, channel, occur_us, control, order_id, revenue_micros, currency) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            vec![
                t.campaign.as_str().into(),
                t.run.into(),
                t.customer_id.as_str().into(),
                t.kind.into(),
                t.channel.into(),
                t.occur_us.into(),
                i32::from(t.control).into(),
                t.order_id.as_str().into(),
                t.revenue_micros.into(),
                t.currency.as_str().into(),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Touches counted per day, campaign, kind and channel (control deliveries'
/// conversions apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TouchCount {
    pub day: i64,
    pub campaign: String,
    pub kind: i32,
    pub channel: i32,
    pub control: bool,
    pub currency: String,
    pub count: i64,
    pub revenue_micros: i64,
}

pub async fn touch_counts<C: ConnectionTrait>(
    conn: &C,
    from_us: i64,
    to_us: i64,
    campaigns: &[String],
) -> Result<Vec<TouchCount>> {
    let mut sql = "SELECT occur_us / 86400000000 AS day, campaign, kind, channel, control, currency, COUNT(*) AS n, \
                   CAST(SUM(revenue_micros) AS BIGINT) AS revenue FROM touches WHERE occur_us >= ? AND occur_us < ?"
        .to_owned();
    let mut values: Vec<Value> = vec![from_us.into(), to_us.into()];
    if !campaigns.is_empty() {
        sql.push_str(&format!(" AND campaign IN ({})", crm_platform::db::marks(campaigns.len())));
        values.extend(campaigns.iter().map(|c| Value::from(c.as_str())));
    }
    sql.push_str(" GROUP BY occur_us / 86400000000, campaign, kind, channel, control, currency");
    let rows = query(conn, &sql, values).await?;
    rows.iter()
        .map(|r| {
            Ok(TouchCount {
                day: r.try_get("", "day")?,
                campaign: r.try_get("", "campaign")?,
                kind: r.try_get("", "kind")?,
                channel: r.try_get("", "channel")?,
                control: r.try_get::<i32>("", "control")? != 0,
                currency: r.try_get("", "currency")?,
                count: r.try_get("", "n")?,
                revenue_micros: r.try_get::<Option<i64>>("", "revenue")?.unwrap_or(0),
            })
        })
        .collect()
}

// ---------------------------------------------------------------- funnel

/// Customers who became leads on one day, from one source channel: how many reached
/// each later stage, and the summed seconds spent in each stage before the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunnelCount {
    pub day: i64,
    pub source_channel: i32,
    pub leads: i64,
    pub prospects: i64,
    pub customers: i64,
    pub repeats: i64,
    pub lead_secs: i64,
    pub prospect_secs: i64,
    pub customer_secs: i64,
}

/// Per day and channel for customers (not merged away, not deleted) created in
/// `[from, to)`. A first purchase makes a customer (and a prospect before) even
/// when the lifecycle stage was never moved; the second makes a repeat buyer. A stage
/// reached before the record was created (orders imported with it) spent no time.
pub async fn funnel_counts<C: ConnectionTrait>(conn: &C, from_us: i64, to_us: i64, channels: &[i32]) -> Result<Vec<FunnelCount>> {
    // Entry times of prospect and customer: the earliest evidence (0: not reached).
    let customer = "(CASE WHEN first_order_us > 0 AND (stage_customer_us = 0 OR first_order_us < stage_customer_us) \
                    THEN first_order_us ELSE stage_customer_us END)";
    let prospect = format!(
        "(CASE WHEN {customer} > 0 AND (stage_prospect_us = 0 OR {customer} < stage_prospect_us) \
         THEN {customer} ELSE stage_prospect_us END)"
    );
    let mut sql = format!(
        "SELECT create_us / 86400000000 AS day, source_channel, COUNT(*) AS leads, \
         SUM(CASE WHEN {prospect} > 0 THEN 1 ELSE 0 END) AS prospects, \
         SUM(CASE WHEN {customer} > 0 THEN 1 ELSE 0 END) AS customers, \
         SUM(CASE WHEN second_order_us > 0 THEN 1 ELSE 0 END) AS repeats, \
         CAST(SUM(CASE WHEN {prospect} > create_us THEN ({prospect} - create_us) / 1000000 ELSE 0 END) AS BIGINT) AS lead_secs, \
         CAST(SUM(CASE WHEN {customer} > {prospect} THEN ({customer} - {prospect}) / 1000000 ELSE 0 END) AS BIGINT) AS prospect_secs, \
         CAST(SUM(CASE WHEN second_order_us > {customer} THEN (second_order_us - {customer}) / 1000000 ELSE 0 END) AS BIGINT) AS customer_secs \
         FROM customers WHERE create_us >= ? AND create_us < ? AND merged_into IS NULL AND deleted = 0"
    );
    let mut values: Vec<Value> = vec![from_us.into(), to_us.into()];
    if !channels.is_empty() {
        sql.push_str(&format!(
            " AND source_channel IN ({})",
            crm_platform::db::marks(channels.len())
        ));
        values.extend(channels.iter().map(|c| Value::from(*c)));
    }
    sql.push_str(" GROUP BY create_us / 86400000000, source_channel");
    let rows = query(conn, &sql, values).await?;
    let get = |r: &sea_orm::QueryResult, c: &str| -> Result<i64> { Ok(r.try_get::<Option<i64>>("", c)?.unwrap_or(0)) };
    rows.iter()
        .map(|r| {
            Ok(FunnelCount {
                day: get(r, "day")?,
                source_channel: r.try_get("", "source_channel")?,
                leads: get(r, "leads")?,
                prospects: get(r, "prospects")?,
                customers: get(r, "customers")?,
                repeats: get(r, "repeats")?,
                lead_secs: get(r, "lead_secs")?,
                prospect_secs: get(r, "prospect_secs")?,
                customer_secs: get(r, "customer_secs")?,
            })
        })
        .collect()
}

// ---------------------------------------------------------------- purchase histories

/// One person's purchase history, summarised for the lifetime-value models: days
/// with a purchase (several orders on a day are one transaction), the first and
/// last, value of the repeat days, and purchase counts in the recent and baseline
/// windows of the drop signal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PurchaseSummary {
    pub person: String,
    pub orders: i64,
    pub days: i64,
    pub first_us: i64,
    pub last_us: i64,
    pub repeat_micros: i64,
    pub recent: i64,
    pub baseline: i64,
}

/// Every person's summary from purchases before `end_us` in `currency`, in person
/// order. `recent_from` and `baseline_from` bound the drop signal's windows
/// (`[baseline_from, recent_from)` and `[recent_from, end)`).
pub async fn purchase_summaries<C: ConnectionTrait>(
    conn: &C,
    currency: &str,
    end_us: i64,
    recent_from: i64,
    baseline_from: i64,
) -> Result<Vec<PurchaseSummary>> {
    let sql = format!(
        "WITH p AS (SELECT person_id, place_us / 86400000000 AS day, total_micros FROM orders \
           WHERE status IN ({PURCHASE_STATUSES}) AND currency = ? AND place_us < ?), \
         f AS (SELECT person_id, MIN(day) AS first_day FROM p GROUP BY person_id) \
         SELECT p.person_id AS person, COUNT(*) AS orders, COUNT(DISTINCT p.day) AS days, \
           MIN(p.day) AS first_day, MAX(p.day) AS last_day, \
           CAST(SUM(CASE WHEN p.day > f.first_day THEN p.total_micros ELSE 0 END) AS BIGINT) AS repeat_micros, \
           SUM(CASE WHEN p.day >= ? THEN 1 ELSE 0 END) AS recent, \
           SUM(CASE WHEN p.day >= ? AND p.day < ? THEN 1 ELSE 0 END) AS baseline \
         FROM p JOIN f ON f.person_id = p.person_id GROUP BY p.person_id ORDER BY p.person_id"
    );
    let day = |us: i64| us.div_euclid(86_400_000_000);
    let rows = query(
        conn,
        &sql,
        vec![
            currency.into(),
            end_us.into(),
            day(recent_from).into(),
            day(baseline_from).into(),
            day(recent_from).into(),
        ],
    )
    .await?;
    let get = |r: &sea_orm::QueryResult, c: &str| -> Result<i64> { Ok(r.try_get::<Option<i64>>("", c)?.unwrap_or(0)) };
    rows.iter()
        .map(|r| {
            Ok(PurchaseSummary {
                person: r.try_get("", "person")?,
                orders: get(r, "orders")?,
                days: get(r, "days")?,
                first_us: get(r, "first_day")? * 86_400_000_000,
                last_us: get(r, "last_day")? * 86_400_000_000,
                repeat_micros: get(r, "repeat_micros")?,
                recent: get(r, "recent")?,
                baseline: get(r, "baseline")?,
            })
        })
        .collect()
}

/// Baskets for association rules: the distinct products (or categories) of each
/// purchase placed in `[from, to)`, in order id order.
pub async fn baskets<C: ConnectionTrait>(conn: &C, categories: bool, from_us: i64, to_us: i64) -> Result<Vec<(String, String)>> {
    let column = if categories { "l.category" } else { "l.product" };
    let rows = query(
        conn,
        &format!(
            "SELECT DISTINCT o.id AS order_id, {column} AS item FROM orders o JOIN order_lines l ON l.order_id = o.id \
             WHERE o.status IN ({PURCHASE_STATUSES}) AND o.place_us >= ? AND o.place_us < ? AND {column} <> '' \
             ORDER BY o.id"
        ),
        vec![from_us.into(), to_us.into()],
    )
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("", "order_id")?, r.try_get("", "item")?)))
        .collect()
}

/// What a person bought: distinct products or categories.
pub async fn bought<C: ConnectionTrait>(conn: &C, person: &str, categories: bool) -> Result<Vec<String>> {
    let column = if categories { "l.category" } else { "l.product" };
    let rows = query(
        conn,
        &format!(
            "SELECT DISTINCT {column} AS item FROM orders o JOIN order_lines l ON l.order_id = o.id \
             WHERE o.person_id = ? AND o.status IN ({PURCHASE_STATUSES}) AND {column} <> ''"
        ),
        vec![person.into()],
    )
    .await?;
    rows.iter().map(|r| Ok(r.try_get("", "item")?)).collect()
}

// ---------------------------------------------------------------- models

/// A stored model version.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRow {
    pub model: String,
    pub version: i64,
    pub fit_us: i64,
    pub fit_seconds: f64,
    pub parameters: std::collections::BTreeMap<String, f64>,
    pub statistics: std::collections::BTreeMap<String, f64>,
    pub data_end_us: i64,
    pub time_unit: String,
    pub trigger: String,
}

/// Named numbers as `name=value` lines, each value printed so it parses back to the
/// same bits.
fn numbers_text(m: &std::collections::BTreeMap<String, f64>) -> String {
    m.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

fn numbers_parse(text: &str) -> Result<std::collections::BTreeMap<String, f64>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| crm_platform::Error::internal(anyhow::anyhow!("model numbers: {l}")))?;
            let v: f64 = v
                .parse()
                .map_err(|e| crm_platform::Error::internal(anyhow::anyhow!("model numbers: {l}: {e}")))?;
            Ok((k.to_owned(), v))
        })
        .collect()
}

/// Stores the next version of `m.model`; returns it.
pub async fn insert_model<C: ConnectionTrait>(conn: &C, m: &ModelRow) -> Result<i64> {
    let rows = query(
        conn,
        "SELECT MAX(version) AS v FROM models WHERE model = ?",
        vec![m.model.as_str().into()],
    )
    .await?;
    let version = one_i64(&rows, "v")?.unwrap_or(0) + 1;
    exec(
        conn,
        "INSERT INTO models (model, version, fit_us, fit_seconds, parameters, statistics, data_end_us, time_unit, trigger) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            m.model.as_str().into(),
            version.into(),
            m.fit_us.into(),
            m.fit_seconds.into(),
            numbers_text(&m.parameters).into(),
            numbers_text(&m.statistics).into(),
            m.data_end_us.into(),
            m.time_unit.as_str().into(),
            m.trigger.as_str().into(),
        ],
    )
    .await?;
    Ok(version)
}

/// A model's version `version`, or its latest.
pub async fn model<C: ConnectionTrait>(conn: &C, model: &str, version: Option<i64>) -> Result<Option<ModelRow>> {
    let rows = match version {
        Some(v) => {
            query(
                conn,
                "SELECT * FROM models WHERE model = ? AND version = ?",
                vec![model.into(), v.into()],
            )
            .await?
        }
        None => {
            query(
                conn,
                "SELECT * FROM models WHERE model = ? ORDER BY version DESC LIMIT 1",
                vec![model.into()],
            )
            .await?
        }
    };
    rows.first()
        .map(|r| {
            Ok(ModelRow {
                model: r.try_get("", "model")?,
                version: r.try_get("", "version")?,
                fit_us: r.try_get("", "fit_us")?,
                fit_seconds: r.try_get("", "fit_seconds")?,
                parameters: numbers_parse(&r.try_get::<String>("", "parameters")?)?,
                statistics: numbers_parse(&r.try_get::<String>("", "statistics")?)?,
                data_end_us: r.try_get("", "data_end_us")?,
                time_unit: r.try_get("", "time_unit")?,
                trigger: r.try_get("", "trigger")?,
            })
        })
        .transpose()
}

// ---------------------------------------------------------------- scores

/// A person's stored score.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoreRow {
    pub person: String,
    pub orders: i64,
    pub first_us: i64,
    pub last_us: i64,
    pub p_alive: f64,
    pub expected: f64,
    pub order_value: f64,
    pub clv: f64,
    pub freq_drop: f64,
    pub risk: f64,
    pub at_risk: bool,
    pub at_risk_us: i64,
    pub model_version: i64,
    pub score_us: i64,
}

const SCORE_COLUMNS: &str = "person_id, orders, first_us, last_us, p_alive, expected, order_value, clv, freq_drop, risk, \
                             at_risk, at_risk_us, model_version, score_us";

fn score_row(r: &sea_orm::QueryResult) -> Result<ScoreRow> {
    Ok(ScoreRow {
        person: r.try_get("", "person_id")?,
        orders: r.try_get("", "orders")?,
        first_us: r.try_get("", "first_us")?,
        last_us: r.try_get("", "last_us")?,
        p_alive: r.try_get("", "p_alive")?,
        expected: r.try_get("", "expected")?,
        order_value: r.try_get("", "order_value")?,
        clv: r.try_get("", "clv")?,
        freq_drop: r.try_get("", "freq_drop")?,
        risk: r.try_get("", "risk")?,
        at_risk: r.try_get::<i32>("", "at_risk")? != 0,
        at_risk_us: r.try_get("", "at_risk_us")?,
        model_version: r.try_get("", "model_version")?,
        score_us: r.try_get("", "score_us")?,
    })
}

/// The people scores may be kept for: customers neither deleted nor merged away (an
/// erasure applied while a fit ran removed its row).
pub async fn live_people<C: ConnectionTrait>(conn: &C) -> Result<std::collections::HashSet<String>> {
    let rows = query(
        conn,
        "SELECT id FROM customers WHERE deleted = 0 AND merged_into IS NULL",
        vec![],
    )
    .await?;
    rows.iter().map(|r| Ok(r.try_get("", "id")?)).collect()
}

/// Whether each of `people` was at risk at the last scoring (absent: never scored).
pub async fn at_risk_now<C: ConnectionTrait>(conn: &C) -> Result<std::collections::HashMap<String, i64>> {
    let rows = query(conn, "SELECT person_id, at_risk_us FROM scores WHERE at_risk = 1", vec![]).await?;
    rows.iter()
        .map(|r| Ok((r.try_get("", "person_id")?, r.try_get("", "at_risk_us")?)))
        .collect()
}

/// Inserts `rows` into `into` (`table (columns)`, `width` of them) with multi-row
/// statements kept under the platform's statement size (`db::chunks_by_size`);
/// `size` estimates a row's bytes, `values` gives its parameters.
async fn insert_many<C: ConnectionTrait, T>(
    conn: &C,
    into: &str,
    width: usize,
    rows: &[T],
    size: impl Fn(&T) -> usize,
    values: impl Fn(&T) -> Result<Vec<Value>>,
) -> Result<()> {
    let row = format!("({})", crm_platform::db::marks(width));
    for chunk in crm_platform::db::chunks_by_size(rows, 500, size) {
        let sql = format!("INSERT INTO {into} VALUES {}", vec![row.as_str(); chunk.len()].join(", "));
        let mut params: Vec<Value> = Vec::with_capacity(chunk.len() * width);
        for r in chunk {
            params.extend(values(r)?);
        }
        exec(conn, &sql, params).await?;
    }
    Ok(())
}

/// Replaces every score (one scoring run).
pub async fn replace_scores<C: ConnectionTrait>(conn: &C, scores: &[ScoreRow]) -> Result<()> {
    exec(conn, "DELETE FROM scores", vec![]).await?;
    insert_many(
        conn,
        &format!("scores ({SCORE_COLUMNS})"),
        14,
        scores,
        |s| s.person.len() + 13 * 8,
        |s| {
            Ok(vec![
                Value::from(s.person.as_str()),
                s.orders.into(),
                s.first_us.into(),
                s.last_us.into(),
                s.p_alive.into(),
                s.expected.into(),
                s.order_value.into(),
                s.clv.into(),
                s.freq_drop.into(),
                s.risk.into(),
                i32::from(s.at_risk).into(),
                s.at_risk_us.into(),
                s.model_version.into(),
                s.score_us.into(),
            ])
        },
    )
    .await
}

pub async fn score<C: ConnectionTrait>(conn: &C, person: &str) -> Result<Option<ScoreRow>> {
    let rows = query(
        conn,
        &format!("SELECT {SCORE_COLUMNS} FROM scores WHERE person_id = ?"),
        vec![person.into()],
    )
    .await?;
    rows.first().map(score_row).transpose()
}

/// At-risk scores with risk ≥ `min_risk` of the customers `scope` may read,
/// riskiest first, after `(risk, person)`.
pub async fn at_risk_page<C: ConnectionTrait>(
    conn: &C,
    min_risk: f64,
    scope: &crm_platform::authz::ReadScope,
    after: Option<(f64, &str)>,
    limit: u64,
) -> Result<Vec<ScoreRow>> {
    let columns = SCORE_COLUMNS
        .split(", ")
        .map(|c| format!("s.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sql = format!(
        "SELECT {columns} FROM scores s JOIN customers c ON c.id = s.person_id \
         WHERE c.deleted = 0 AND c.merged_into IS NULL AND s.at_risk = 1 AND s.risk >= ?"
    );
    let mut values: Vec<Value> = vec![min_risk.into()];
    if !scope.all {
        // The scope's owners, teams and single records; nothing matches an empty one.
        let mut any = vec!["1 = 0".to_owned()];
        for (column, list) in [("c.owner_user_id", &scope.owner_user_ids), ("c.team_id", &scope.team_ids)] {
            if !list.is_empty() {
                any.push(format!("{column} IN ({})", crm_platform::db::marks(list.len())));
                values.extend(list.iter().map(|v| Value::from(v.as_str())));
            }
        }
        let ids: Vec<&str> = scope.resources.iter().filter_map(|r| r.strip_prefix("customers/")).collect();
        if !ids.is_empty() {
            any.push(format!("c.id IN ({})", crm_platform::db::marks(ids.len())));
            values.extend(ids.iter().map(|v| Value::from(*v)));
        }
        sql.push_str(&format!(" AND ({})", any.join(" OR ")));
    }
    if let Some((risk, person)) = after {
        sql.push_str(" AND (s.risk < ? OR (s.risk = ? AND s.person_id > ?))");
        values.extend([Value::from(risk), risk.into(), person.into()]);
    }
    sql.push_str(&format!(" ORDER BY s.risk DESC, s.person_id LIMIT {limit}"));
    let rows = query(conn, &sql, values).await?;
    rows.iter().map(score_row).collect()
}

// ---------------------------------------------------------------- rules

/// A stored rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleRow {
    pub level: i32,
    pub rank: i64,
    pub antecedents: Vec<String>,
    pub consequents: Vec<String>,
    pub support: f64,
    pub confidence: f64,
    pub lift: f64,
    pub baskets: i64,
}

pub async fn insert_rules<C: ConnectionTrait>(conn: &C, version: i64, rules: &[RuleRow]) -> Result<()> {
    let items = |v: &[String]| serde_json::to_string(v).map_err(crm_platform::Error::internal);
    insert_many(
        conn,
        "rules (version, level, rank, antecedents, consequents, support, confidence, lift, baskets)",
        9,
        rules,
        |r| r.antecedents.iter().chain(&r.consequents).map(|i| i.len() + 3).sum::<usize>() + 7 * 8,
        |r| {
            Ok(vec![
                Value::from(version),
                r.level.into(),
                r.rank.into(),
                items(&r.antecedents)?.into(),
                items(&r.consequents)?.into(),
                r.support.into(),
                r.confidence.into(),
                r.lift.into(),
                r.baskets.into(),
            ])
        },
    )
    .await?;
    // Older versions' rules are not served.
    exec(conn, "DELETE FROM rules WHERE version < ?", vec![version.into()]).await?;
    Ok(())
}

/// The rules of `version` at `level`, in rank order, from `after_rank` on.
pub async fn rules<C: ConnectionTrait>(conn: &C, version: i64, level: i32, after_rank: i64, limit: u64) -> Result<Vec<RuleRow>> {
    let rows = query(
        conn,
        &format!(
            "SELECT level, rank, antecedents, consequents, support, confidence, lift, baskets FROM rules \
             WHERE version = ? AND level = ? AND rank > ? ORDER BY rank LIMIT {limit}"
        ),
        vec![version.into(), level.into(), after_rank.into()],
    )
    .await?;
    let list = |text: String| -> Result<Vec<String>> { serde_json::from_str(&text).map_err(crm_platform::Error::internal) };
    rows.iter()
        .map(|r| {
            Ok(RuleRow {
                level: r.try_get("", "level")?,
                rank: r.try_get("", "rank")?,
                antecedents: list(r.try_get("", "antecedents")?)?,
                consequents: list(r.try_get("", "consequents")?)?,
                support: r.try_get("", "support")?,
                confidence: r.try_get("", "confidence")?,
                lift: r.try_get("", "lift")?,
                baskets: r.try_get("", "baskets")?,
            })
        })
        .collect()
}

// ---------------------------------------------------------------- data quality

/// One KPI's value on one day.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityPoint {
    pub day_us: i64,
    pub kpi: String,
    pub value: f64,
    pub target: f64,
    pub minimum: bool,
    pub alert: bool,
    pub numerator: i64,
    pub denominator: i64,
    pub compute_us: i64,
}

/// Stores (or, the same day again, replaces) a day's KPI value.
pub async fn upsert_quality<C: ConnectionTrait>(conn: &C, p: &QualityPoint) -> Result<()> {
    exec(
        conn,
        "INSERT INTO quality_points (day_us, kpi, value, target, minimum, alert, numerator, denominator, compute_us) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day_us, kpi) DO UPDATE SET value = excluded.value, \
         target = excluded.target, minimum = excluded.minimum, alert = excluded.alert, numerator = excluded.numerator, \
         denominator = excluded.denominator, compute_us = excluded.compute_us",
        vec![
            p.day_us.into(),
            p.kpi.as_str().into(),
            p.value.into(),
            p.target.into(),
            i32::from(p.minimum).into(),
            i32::from(p.alert).into(),
            p.numerator.into(),
            p.denominator.into(),
            p.compute_us.into(),
        ],
    )
    .await?;
    Ok(())
}

/// The KPI points of days in `[from, to)`, by day.
pub async fn quality_points<C: ConnectionTrait>(conn: &C, from_us: i64, to_us: i64) -> Result<Vec<QualityPoint>> {
    let rows = query(
        conn,
        "SELECT * FROM quality_points WHERE day_us >= ? AND day_us < ? ORDER BY day_us, kpi",
        vec![from_us.into(), to_us.into()],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(QualityPoint {
                day_us: r.try_get("", "day_us")?,
                kpi: r.try_get("", "kpi")?,
                value: r.try_get("", "value")?,
                target: r.try_get("", "target")?,
                minimum: r.try_get::<i32>("", "minimum")? != 0,
                alert: r.try_get::<i32>("", "alert")? != 0,
                numerator: r.try_get("", "numerator")?,
                denominator: r.try_get("", "denominator")?,
                compute_us: r.try_get("", "compute_us")?,
            })
        })
        .collect()
}

/// The alert state of `kpi` at the latest snapshot up to `day_us` (that day's own,
/// when it is taken again), `None` without one.
pub async fn last_alert<C: ConnectionTrait>(conn: &C, kpi: &str, day_us: i64) -> Result<Option<bool>> {
    let rows = query(
        conn,
        "SELECT alert FROM quality_points WHERE kpi = ? AND day_us <= ? ORDER BY day_us DESC LIMIT 1",
        vec![kpi.into(), day_us.into()],
    )
    .await?;
    Ok(rows
        .first()
        .map(|r| r.try_get::<i32>("", "alert"))
        .transpose()?
        .map(|a| a != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_numbers_keep_every_bit() {
        let m: std::collections::BTreeMap<String, f64> = [
            ("alpha".to_owned(), 22_026.465_794_806_718),
            ("b".to_owned(), 21_882.527_308_359_986),
            ("ll".to_owned(), -9_582.429_206_6),
            ("tiny".to_owned(), 4.549_738_082_913_45e-5),
        ]
        .into();
        assert_eq!(numbers_parse(&numbers_text(&m)).unwrap(), m);
        assert!(numbers_parse("x").is_err());
    }
}
