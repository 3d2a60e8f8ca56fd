//! Campaigns, their deliveries (one per recipient and run: the durable send jobs),
//! channel suppressions and the queue of calls forwarded to customer-profile.

use crm_platform::{
    Error, Result,
    db::{any_of, exec, query},
    migrate::Dialect,
};
use crm_proto::crm::segmentation::v1 as pb;
use prost::Message;
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Value};

pub fn migration(d: Dialect) -> Vec<String> {
    let bytes = d.bytes();
    vec![
        // A customer's contacts and names, sealed with the service's keyring.
        format!("CREATE TABLE contacts (customer_id TEXT PRIMARY KEY, sealed {bytes} NOT NULL, update_us BIGINT NOT NULL)"),
        format!(
            "CREATE TABLE campaigns (id TEXT PRIMARY KEY, settings {bytes} NOT NULL, state INTEGER NOT NULL, \
             runs BIGINT NOT NULL, next_run_us BIGINT, run_start_us BIGINT NOT NULL, enqueue_cursor TEXT NOT NULL, \
             enqueue_done INTEGER NOT NULL, resume_state INTEGER NOT NULL, conversion_window_us BIGINT NOT NULL, \
             revision BIGINT NOT NULL, create_us BIGINT NOT NULL, update_us BIGINT NOT NULL, journey_id TEXT NOT NULL)"
        ),
        "CREATE INDEX campaigns_due ON campaigns (state, next_run_us)".into(),
        // One message to one person in one run of a campaign.
        "CREATE TABLE deliveries (person_id TEXT NOT NULL, campaign_id TEXT NOT NULL, run BIGINT NOT NULL, \
         channel INTEGER NOT NULL, state INTEGER NOT NULL, skip_reason INTEGER NOT NULL, due_us BIGINT NOT NULL, \
         attempts INTEGER NOT NULL, lease_us BIGINT NOT NULL, send_us BIGINT, provider_id TEXT NOT NULL, \
         error TEXT NOT NULL, open_us BIGINT, click_us BIGINT, unsubscribe_us BIGINT, conversion_order TEXT NOT NULL, \
         conversion_us BIGINT, revenue_micros BIGINT NOT NULL, currency TEXT NOT NULL, \
         PRIMARY KEY (person_id, campaign_id, run))"
            .into(),
        // Claiming: a campaign's queued deliveries in due order.
        "CREATE INDEX deliveries_due ON deliveries (campaign_id, state, due_us)".into(),
        "CREATE INDEX deliveries_campaign ON deliveries (campaign_id, person_id, run)".into(),
        // Unsubscribed (or bounced) on a channel: never contacted there again.
        "CREATE TABLE suppressions (person_id TEXT NOT NULL, channel INTEGER NOT NULL, reason TEXT NOT NULL, \
         create_us BIGINT NOT NULL, PRIMARY KEY (person_id, channel))"
            .into(),
        // Calls to customer-profile waiting to be made (interactions, consent).
        format!(
            "CREATE TABLE forwards (seq {}, kind INTEGER NOT NULL, payload {bytes} NOT NULL, \
             due_us BIGINT NOT NULL, attempts INTEGER NOT NULL)",
            d.serial_primary_key()
        ),
        "CREATE INDEX forwards_due ON forwards (due_us, seq)".into(),
    ]
}

/// `FOR UPDATE [SKIP LOCKED]` where the backend has row locks (SQLite's write lock
/// covers it).
fn lock<C: ConnectionTrait>(conn: &C, skip: bool) -> &'static str {
    match (conn.get_database_backend(), skip) {
        (DbBackend::Postgres, true) => " FOR UPDATE SKIP LOCKED",
        (DbBackend::Postgres, false) => " FOR UPDATE",
        _ => "",
    }
}

// ---------------------------------------------------------------- campaigns

/// A stored campaign.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignRow {
    pub id: String,
    /// What was given (output-only fields cleared).
    pub settings: pb::Campaign,
    pub state: pb::CampaignState,
    pub runs: i64,
    pub next_run_us: Option<i64>,
    pub run_start_us: i64,
    /// The last person queued in the current run.
    pub enqueue_cursor: String,
    pub enqueue_done: bool,
    /// The state a paused campaign resumes to.
    pub resume_state: pb::CampaignState,
    pub conversion_window_us: i64,
    pub revision: i64,
    pub create_us: i64,
    pub update_us: i64,
    /// The journey whose send step this is (`{journey}.{step}` ids); empty for a
    /// campaign.
    pub journey_id: String,
}

const COLUMNS: &str = "id, settings, state, runs, next_run_us, run_start_us, enqueue_cursor, enqueue_done, resume_state, \
                       conversion_window_us, revision, create_us, update_us, journey_id";

fn state(v: i32) -> pb::CampaignState {
    pb::CampaignState::try_from(v).unwrap_or(pb::CampaignState::Unspecified)
}

fn campaign(r: &QueryResult) -> Result<CampaignRow> {
    let bytes: Vec<u8> = r.try_get("", "settings")?;
    Ok(CampaignRow {
        id: r.try_get("", "id")?,
        settings: pb::Campaign::decode(bytes.as_slice()).map_err(Error::internal)?,
        state: state(r.try_get("", "state")?),
        runs: r.try_get("", "runs")?,
        next_run_us: r.try_get("", "next_run_us")?,
        run_start_us: r.try_get("", "run_start_us")?,
        enqueue_cursor: r.try_get("", "enqueue_cursor")?,
        enqueue_done: r.try_get::<i32>("", "enqueue_done")? != 0,
        resume_state: state(r.try_get("", "resume_state")?),
        conversion_window_us: r.try_get("", "conversion_window_us")?,
        revision: r.try_get("", "revision")?,
        create_us: r.try_get("", "create_us")?,
        update_us: r.try_get("", "update_us")?,
        journey_id: r.try_get("", "journey_id")?,
    })
}

pub async fn insert<C: ConnectionTrait>(conn: &C, c: &CampaignRow) -> Result<()> {
    exec(
        conn,
        &format!("INSERT INTO campaigns ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
        vec![
            c.id.clone().into(),
            c.settings.encode_to_vec().into(),
            (c.state as i32).into(),
            c.runs.into(),
            c.next_run_us.into(),
            c.run_start_us.into(),
            c.enqueue_cursor.clone().into(),
            i32::from(c.enqueue_done).into(),
            (c.resume_state as i32).into(),
            c.conversion_window_us.into(),
            c.revision.into(),
            c.create_us.into(),
            c.update_us.into(),
            c.journey_id.clone().into(),
        ],
    )
    .await?;
    Ok(())
}

/// Writes every column of a stored campaign back.
pub async fn save<C: ConnectionTrait>(conn: &C, c: &CampaignRow) -> Result<()> {
    exec(
        conn,
        "UPDATE campaigns SET settings = ?, state = ?, runs = ?, next_run_us = ?, run_start_us = ?, enqueue_cursor = ?, \
         enqueue_done = ?, resume_state = ?, conversion_window_us = ?, revision = ?, update_us = ? WHERE id = ?",
        vec![
            c.settings.encode_to_vec().into(),
            (c.state as i32).into(),
            c.runs.into(),
            c.next_run_us.into(),
            c.run_start_us.into(),
            c.enqueue_cursor.clone().into(),
            i32::from(c.enqueue_done).into(),
            (c.resume_state as i32).into(),
            c.conversion_window_us.into(),
            c.revision.into(),
            c.update_us.into(),
            c.id.clone().into(),
        ],
    )
    .await?;
    Ok(())
}

pub async fn get<C: ConnectionTrait>(conn: &C, id: &str) -> Result<Option<CampaignRow>> {
    let rows = query(
        conn,
        &format!("SELECT {COLUMNS} FROM campaigns WHERE id = ?"),
        vec![id.into()],
    )
    .await?;
    rows.first().map(campaign).transpose()
}

/// The campaign, locked for a change.
pub async fn get_for_update<C: ConnectionTrait>(conn: &C, id: &str) -> Result<Option<CampaignRow>> {
    let sql = format!("SELECT {COLUMNS} FROM campaigns WHERE id = ?{}", lock(conn, false));
    let rows = query(conn, &sql, vec![id.into()]).await?;
    rows.first().map(campaign).transpose()
}

pub async fn list<C: ConnectionTrait>(conn: &C, after: &str, limit: u64) -> Result<Vec<CampaignRow>> {
    let rows = query(
        conn,
        &format!("SELECT {COLUMNS} FROM campaigns WHERE id > ? AND journey_id = '' ORDER BY id LIMIT ?"),
        vec![after.into(), (limit as i64).into()],
    )
    .await?;
    rows.iter().map(campaign).collect()
}

/// Deletes a campaign with its deliveries.
pub async fn delete<C: ConnectionTrait>(conn: &C, id: &str) -> Result<()> {
    exec(conn, "DELETE FROM deliveries WHERE campaign_id = ?", vec![id.into()]).await?;
    exec(conn, "DELETE FROM campaigns WHERE id = ?", vec![id.into()]).await?;
    Ok(())
}

/// One campaign whose next run is due or whose current run is still being queued,
/// claimed (another replica skips it).
pub async fn claim_due_run<C: ConnectionTrait>(conn: &C, now_us: i64) -> Result<Option<CampaignRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM campaigns WHERE journey_id = '' AND ((state = ? AND next_run_us <= ?) \
         OR (state = ? AND enqueue_done = 0)) ORDER BY id LIMIT 1{}",
        lock(conn, true)
    );
    let rows = query(
        conn,
        &sql,
        vec![
            (pb::CampaignState::Scheduled as i32).into(),
            now_us.into(),
            (pb::CampaignState::Running as i32).into(),
        ],
    )
    .await?;
    rows.first().map(campaign).transpose()
}

/// Running campaigns whose current run is fully queued: candidates to finish.
pub async fn running_queued<C: ConnectionTrait>(conn: &C) -> Result<Vec<String>> {
    let rows = query(
        conn,
        "SELECT id FROM campaigns WHERE state = ? AND enqueue_done = 1 AND journey_id = '' ORDER BY id",
        vec![(pb::CampaignState::Running as i32).into()],
    )
    .await?;
    rows.iter().map(|r| Ok(r.try_get("", "id")?)).collect()
}

// ------------------------------------------------------------ audience

/// The next `limit` persons after `after` in the audience: members of any of
/// `segments` who are in none of `exclude`, in person id order.
pub async fn audience_page<C: ConnectionTrait>(
    conn: &C,
    segments: &[String],
    exclude: &[String],
    after: &str,
    limit: usize,
) -> Result<Vec<String>> {
    let marks = |n: usize| vec!["?"; n].join(", ");
    let mut sql = format!(
        "SELECT DISTINCT m.person_id FROM segment_members m WHERE m.segment_id IN ({}) AND m.person_id > ?",
        marks(segments.len())
    );
    let mut values: Vec<Value> = segments.iter().map(|s| Value::from(s.clone())).collect();
    values.push(after.into());
    if !exclude.is_empty() {
        sql.push_str(&format!(
            " AND NOT EXISTS (SELECT 1 FROM segment_members x WHERE x.person_id = m.person_id AND x.segment_id IN ({}))",
            marks(exclude.len())
        ));
        values.extend(exclude.iter().map(|s| Value::from(s.clone())));
    }
    sql.push_str(" ORDER BY m.person_id LIMIT ?");
    values.push((limit as i64).into());
    let rows = query(conn, &sql, values).await?;
    rows.iter().map(|r| Ok(r.try_get("", "person_id")?)).collect()
}

/// The `time_zone` attribute of each of `persons` that has one.
pub async fn time_zones<C: ConnectionTrait>(conn: &C, persons: &[&str]) -> Result<Vec<(String, String)>> {
    let attr = match conn.get_database_backend() {
        DbBackend::Postgres => "(attributes::jsonb ->> 'time_zone')",
        _ => "json_extract(attributes, '$.time_zone')",
    };
    let (cond, values) = any_of(conn.get_database_backend(), "id", persons);
    let rows = query(
        conn,
        &format!("SELECT id, {attr} AS tz FROM customers WHERE {cond} AND {attr} IS NOT NULL"),
        values,
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("", "id")?,
                r.try_get::<Option<String>>("", "tz")?.unwrap_or_default(),
            ))
        })
        .collect()
}

/// The opens and clicks (times) of `persons`' messages since `since_us`.
pub async fn engagement<C: ConnectionTrait>(
    conn: &C,
    persons: &[&str],
    since_us: i64,
) -> Result<std::collections::HashMap<String, Vec<i64>>> {
    let (cond, mut values) = any_of(conn.get_database_backend(), "person_id", persons);
    values.extend([since_us.into(), since_us.into()]);
    let rows = query(
        conn,
        &format!("SELECT person_id, open_us, click_us FROM deliveries WHERE {cond} AND (open_us >= ? OR click_us >= ?)"),
        values,
    )
    .await?;
    let mut out: std::collections::HashMap<String, Vec<i64>> = std::collections::HashMap::new();
    for r in rows {
        let times = out.entry(r.try_get("", "person_id")?).or_default();
        // A click counts for itself; its open (set with it) is the same moment.
        match (
            r.try_get::<Option<i64>>("", "open_us")?,
            r.try_get::<Option<i64>>("", "click_us")?,
        ) {
            (Some(o), Some(c)) if o == c => times.push(c),
            (o, c) => times.extend(o.into_iter().chain(c)),
        }
    }
    Ok(out)
}

/// The most recent opens and clicks of everyone since `since_us` (at most `limit`
/// of each): the population's habits.
pub async fn population_engagement<C: ConnectionTrait>(conn: &C, since_us: i64, limit: u64) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for column in ["open_us", "click_us"] {
        let rows = query(
            conn,
            &format!("SELECT {column} AS t FROM deliveries WHERE {column} >= ? ORDER BY {column} DESC LIMIT ?"),
            vec![since_us.into(), (limit as i64).into()],
        )
        .await?;
        for r in rows {
            out.push(r.try_get("", "t")?);
        }
    }
    Ok(out)
}

// ------------------------------------------------------------ deliveries

/// A delivery as queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub person_id: String,
    pub state: pb::DeliveryState,
    pub due_us: i64,
}

/// Queues deliveries of one run; one already there (a retried chunk) is left as it is.
pub async fn insert_deliveries<C: ConnectionTrait>(
    conn: &C,
    campaign_id: &str,
    run: i64,
    channel: i32,
    rows: &[NewDelivery],
) -> Result<()> {
    if conn.get_database_backend() == DbBackend::Postgres {
        // One statement per chunk, the columns as arrays.
        for chunk in rows.chunks(5000) {
            let persons: Vec<String> = chunk.iter().map(|d| d.person_id.clone()).collect();
            let states: Vec<i32> = chunk.iter().map(|d| d.state as i32).collect();
            let dues: Vec<i64> = chunk.iter().map(|d| d.due_us).collect();
            exec(
                conn,
                "INSERT INTO deliveries (person_id, campaign_id, run, channel, state, skip_reason, due_us, attempts, \
                 lease_us, provider_id, error, conversion_order, revenue_micros, currency) \
                 SELECT p, ?, ?, ?, s, 0, d, 0, 0, '', '', '', 0, '' \
                 FROM unnest(CAST(? AS TEXT[]), CAST(? AS INTEGER[]), CAST(? AS BIGINT[])) AS t(p, s, d) \
                 ON CONFLICT (person_id, campaign_id, run) DO NOTHING",
                vec![
                    campaign_id.into(),
                    run.into(),
                    channel.into(),
                    Value::Array(
                        sea_orm::sea_query::ArrayType::String,
                        Some(Box::new(persons.into_iter().map(|p| Value::String(Some(p))).collect())),
                    ),
                    Value::Array(
                        sea_orm::sea_query::ArrayType::Int,
                        Some(Box::new(states.into_iter().map(|s| Value::Int(Some(s))).collect())),
                    ),
                    Value::Array(
                        sea_orm::sea_query::ArrayType::BigInt,
                        Some(Box::new(dues.into_iter().map(|d| Value::BigInt(Some(d))).collect())),
                    ),
                ],
            )
            .await?;
        }
        return Ok(());
    }
    for chunk in rows.chunks(300) {
        let marks = vec!["(?, ?, ?, ?, ?, 0, ?, 0, 0, '', '', '', 0, '')"; chunk.len()].join(", ");
        let mut values = Vec::with_capacity(chunk.len() * 6);
        for d in chunk {
            values.extend([
                Value::from(d.person_id.clone()),
                campaign_id.into(),
                run.into(),
                channel.into(),
                (d.state as i32).into(),
                d.due_us.into(),
            ]);
        }
        exec(
            conn,
            &format!(
                "INSERT INTO deliveries (person_id, campaign_id, run, channel, state, skip_reason, due_us, attempts, \
                 lease_us, provider_id, error, conversion_order, revenue_micros, currency) VALUES {marks} \
                 ON CONFLICT (person_id, campaign_id, run) DO NOTHING"
            ),
            values,
        )
        .await?;
    }
    Ok(())
}

/// The key of one delivery.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub person_id: String,
    pub campaign_id: String,
    pub run: i64,
}

/// A delivery claimed for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub key: Key,
    pub due_us: i64,
    /// Tries before this one.
    pub attempts: i32,
}

/// Claims up to `limit` due deliveries of running campaigns: marks them SENDING
/// with a lease and one more attempt. Another replica skips rows being claimed.
pub async fn claim_due<C: ConnectionTrait>(conn: &C, now_us: i64, lease_us: i64, limit: usize) -> Result<Vec<Claimed>> {
    // Campaign by campaign, each an exact range of `deliveries_due` read in due
    // order: PostgreSQL's generic plans of one query over every campaign read whole
    // campaigns per batch.
    let running = query(
        conn,
        "SELECT id FROM campaigns WHERE state = ? ORDER BY id",
        vec![(pb::CampaignState::Running as i32).into()],
    )
    .await?;
    // An equal share each first (a large campaign does not starve the others, journey
    // steps among them), then what is left to whoever still has due deliveries.
    let ids: Vec<String> = running
        .iter()
        .map(|r| r.try_get("", "id"))
        .collect::<std::result::Result<_, _>>()?;
    let share = limit.div_ceil(ids.len().max(1)).max(1);
    let mut out = Vec::new();
    let mut more = Vec::new();
    for campaign in &ids {
        let take = share.min(limit - out.len());
        if take == 0 {
            break;
        }
        let got = claim_campaign(conn, campaign, now_us, lease_us, take).await?;
        if got.len() == take {
            more.push(campaign);
        }
        out.extend(got);
    }
    for campaign in more {
        if out.len() >= limit {
            break;
        }
        out.extend(claim_campaign(conn, campaign, now_us, lease_us, limit - out.len()).await?);
    }
    Ok(out)
}

async fn claim_campaign<C: ConnectionTrait>(
    conn: &C,
    campaign: &str,
    now_us: i64,
    lease_us: i64,
    limit: usize,
) -> Result<Vec<Claimed>> {
    let values = vec![
        campaign.into(),
        (pb::DeliveryState::Queued as i32).into(),
        now_us.into(),
        (limit as i64).into(),
    ];
    let due = "SELECT d.person_id, d.campaign_id, d.run, d.due_us, d.attempts FROM deliveries d \
               WHERE d.campaign_id = ? AND d.state = ? AND d.due_us <= ? ORDER BY d.due_us LIMIT ?";
    let claimed = |rows: Vec<QueryResult>| {
        rows.iter()
            .map(|r| {
                Ok(Claimed {
                    key: Key {
                        person_id: r.try_get("", "person_id")?,
                        campaign_id: r.try_get("", "campaign_id")?,
                        run: r.try_get("", "run")?,
                    },
                    due_us: r.try_get("", "due_us")?,
                    attempts: r.try_get("", "attempts")?,
                })
            })
            .collect::<Result<Vec<_>>>()
    };
    if conn.get_database_backend() == DbBackend::Postgres {
        // One statement: lock the due rows (skipping those another replica holds)
        // and mark them, returning what they were.
        let mut v = values;
        v.extend([Value::from(SENDING), Value::from(now_us + lease_us)]);
        let rows = query(
            conn,
            &format!(
                "WITH due AS ({due} FOR UPDATE OF d SKIP LOCKED) \
                 UPDATE deliveries SET state = ?, lease_us = ?, attempts = deliveries.attempts + 1 FROM due \
                 WHERE deliveries.person_id = due.person_id AND deliveries.campaign_id = due.campaign_id \
                 AND deliveries.run = due.run \
                 RETURNING due.person_id, due.campaign_id, due.run, due.due_us, due.attempts"
            ),
            v,
        )
        .await?;
        return claimed(rows);
    }
    let claimed = claimed(query(conn, due, values).await?)?;
    set_many(
        conn,
        &claimed.iter().map(|c| c.key.clone()).collect::<Vec<_>>(),
        "state = ?, lease_us = ?, attempts = attempts + 1",
        vec![(SENDING).into(), (now_us + lease_us).into()],
    )
    .await?;
    Ok(claimed)
}

/// Gives claimed deliveries back to the queue untried (nothing was sent).
pub async fn release<C: ConnectionTrait>(conn: &C, keys: &[Key]) -> Result<()> {
    set_outcome(
        conn,
        keys,
        "state = ?, attempts = attempts - 1",
        vec![(pb::DeliveryState::Queued as i32).into()],
    )
    .await
}

/// The state of a delivery while its message is with the provider. Not in the
/// contract: a reader sees it as QUEUED.
pub const SENDING: i32 = 100;

/// Applies `assignments` (with its `values`) to the deliveries `keys`.
async fn set_many<C: ConnectionTrait>(conn: &C, keys: &[Key], assignments: &str, values: Vec<Value>) -> Result<()> {
    set_where(conn, keys, assignments, values, "").await
}

/// An outcome: only on deliveries still being sent (a batch that outlived its
/// lease must not overwrite what recovery or another sender did meanwhile).
async fn set_outcome<C: ConnectionTrait>(conn: &C, keys: &[Key], assignments: &str, values: Vec<Value>) -> Result<()> {
    let only = format!(" AND deliveries.state = {SENDING}");
    set_where(conn, keys, assignments, values, &only).await
}

/// [`set_many`], with an extra condition `only` (on `deliveries.`).
async fn set_where<C: ConnectionTrait>(conn: &C, keys: &[Key], assignments: &str, values: Vec<Value>, only: &str) -> Result<()> {
    if conn.get_database_backend() == DbBackend::Postgres {
        // The whole keys as arrays, joined on the primary key: with `campaign_id = ?`
        // as a condition of its own, a generic plan reads the campaign's every row.
        for chunk in keys.chunks(5000) {
            let mut v = values.clone();
            v.push(text_array(chunk.iter().map(|k| k.person_id.clone())));
            v.push(text_array(chunk.iter().map(|k| k.campaign_id.clone())));
            v.push(Value::Array(
                sea_orm::sea_query::ArrayType::BigInt,
                Some(Box::new(chunk.iter().map(|k| Value::BigInt(Some(k.run))).collect())),
            ));
            exec(
                conn,
                &format!(
                    "UPDATE deliveries SET {assignments} \
                     FROM unnest(CAST(? AS TEXT[]), CAST(? AS TEXT[]), CAST(? AS BIGINT[])) AS k(p, c, r) \
                     WHERE deliveries.person_id = k.p AND deliveries.campaign_id = k.c AND deliveries.run = k.r{only}"
                ),
                v,
            )
            .await?;
        }
        return Ok(());
    }
    // SQLite plans each statement with its values: group by (campaign, run).
    let mut groups: std::collections::BTreeMap<(&str, i64), Vec<&str>> = std::collections::BTreeMap::new();
    for k in keys {
        groups.entry((&k.campaign_id, k.run)).or_default().push(&k.person_id);
    }
    for ((campaign, run), persons) in groups {
        for chunk in persons.chunks(5000) {
            let mut v = values.clone();
            let (cond, persons) = any_of(DbBackend::Sqlite, "person_id", chunk);
            v.extend(persons);
            v.push(campaign.into());
            v.push(run.into());
            exec(
                conn,
                &format!("UPDATE deliveries SET {assignments} WHERE {cond} AND campaign_id = ? AND run = ?{only}"),
                v,
            )
            .await?;
        }
    }
    Ok(())
}

/// A PostgreSQL `TEXT[]` parameter.
fn text_array(items: impl Iterator<Item = String>) -> Value {
    Value::Array(
        sea_orm::sea_query::ArrayType::String,
        Some(Box::new(items.map(|s| Value::String(Some(s))).collect())),
    )
}

/// What became of a claimed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent {
        send_us: i64,
        provider_id: String,
    },
    Skipped(pb::SkipReason),
    /// A retry, due at this time.
    Again {
        due_us: i64,
        error: String,
    },
    /// Not sent yet (quiet hours): due at this time, the claim not counted as a try.
    Deferred {
        due_us: i64,
    },
    Failed(String),
}

/// Records the outcomes of a batch.
pub async fn finish<C: ConnectionTrait>(conn: &C, outcomes: &[(Key, Outcome)]) -> Result<()> {
    let mut skipped: std::collections::BTreeMap<i32, Vec<Key>> = std::collections::BTreeMap::new();
    let mut sent: std::collections::BTreeMap<i64, Vec<(&Key, &str)>> = std::collections::BTreeMap::new();
    for (key, outcome) in outcomes {
        match outcome {
            Outcome::Skipped(reason) => skipped.entry(*reason as i32).or_default().push(key.clone()),
            Outcome::Sent { send_us, provider_id } => sent.entry(*send_us).or_default().push((key, provider_id)),
            Outcome::Again { due_us, error } => {
                set_outcome(
                    conn,
                    std::slice::from_ref(key),
                    "state = ?, due_us = ?, error = ?",
                    vec![
                        (pb::DeliveryState::Queued as i32).into(),
                        (*due_us).into(),
                        error.clone().into(),
                    ],
                )
                .await?;
            }
            Outcome::Deferred { due_us } => {
                set_outcome(
                    conn,
                    std::slice::from_ref(key),
                    "state = ?, due_us = ?, attempts = attempts - 1",
                    vec![(pb::DeliveryState::Queued as i32).into(), (*due_us).into()],
                )
                .await?;
            }
            Outcome::Failed(error) => {
                set_outcome(
                    conn,
                    std::slice::from_ref(key),
                    "state = ?, error = ?",
                    vec![(pb::DeliveryState::Failed as i32).into(), error.clone().into()],
                )
                .await?;
            }
        }
    }
    for (reason, keys) in skipped {
        set_outcome(
            conn,
            &keys,
            "state = ?, skip_reason = ?",
            vec![(pb::DeliveryState::Skipped as i32).into(), reason.into()],
        )
        .await?;
    }
    for (send_us, keys) in sent {
        mark_sent(conn, &keys, send_us).await?;
    }
    Ok(())
}

/// Marks deliveries sent at `send_us` with their provider message ids.
async fn mark_sent<C: ConnectionTrait>(conn: &C, keys: &[(&Key, &str)], send_us: i64) -> Result<()> {
    let sent = pb::DeliveryState::Sent as i32;
    if conn.get_database_backend() != DbBackend::Postgres {
        // In-process: a statement per row costs microseconds.
        for (key, provider_id) in keys {
            exec(
                conn,
                &format!(
                    "UPDATE deliveries SET state = ?, send_us = ?, provider_id = ?, error = '' \
                     WHERE person_id = ? AND campaign_id = ? AND run = ? AND state = {SENDING}"
                ),
                vec![
                    sent.into(),
                    send_us.into(),
                    (*provider_id).into(),
                    key.person_id.clone().into(),
                    key.campaign_id.clone().into(),
                    key.run.into(),
                ],
            )
            .await?;
        }
        return Ok(());
    }
    // One statement per chunk, the keys and provider ids as arrays.
    for chunk in keys.chunks(5000) {
        let text = |f: &dyn Fn(&(&Key, &str)) -> String| {
            Value::Array(
                sea_orm::sea_query::ArrayType::String,
                Some(Box::new(chunk.iter().map(|k| Value::String(Some(f(k)))).collect())),
            )
        };
        let runs = Value::Array(
            sea_orm::sea_query::ArrayType::BigInt,
            Some(Box::new(chunk.iter().map(|(k, _)| Value::BigInt(Some(k.run))).collect())),
        );
        exec(
            conn,
            "UPDATE deliveries d SET state = ?, send_us = ?, provider_id = t.provider_id, error = '' \
             FROM unnest(CAST(? AS TEXT[]), CAST(? AS TEXT[]), CAST(? AS BIGINT[]), CAST(? AS TEXT[])) \
             AS t(person_id, campaign_id, run, provider_id) \
             WHERE d.person_id = t.person_id AND d.campaign_id = t.campaign_id AND d.run = t.run AND d.state = 100",
            vec![
                sent.into(),
                send_us.into(),
                text(&|(k, _)| k.person_id.clone()),
                text(&|(k, _)| k.campaign_id.clone()),
                runs,
                text(&|(_, p)| (*p).to_owned()),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Deliveries left SENDING past their lease (the process sending them stopped):
/// `retry` ones go back to the queue, the others fail (their outcome is unknown and
/// a second try could send twice).
pub async fn recover_abandoned<C: ConnectionTrait>(conn: &C, now_us: i64, retry: &[i32]) -> Result<u64> {
    let mut n = 0;
    if !retry.is_empty() {
        let mut v: Vec<Value> = vec![(pb::DeliveryState::Queued as i32).into(), SENDING.into(), now_us.into()];
        v.extend(retry.iter().map(|c| Value::from(*c)));
        n += exec(
            conn,
            &format!(
                "UPDATE deliveries SET state = ?, error = 'abandoned by a stopped sender; retried (the provider deduplicates by idempotency key)' \
                 WHERE campaign_id IN (SELECT id FROM campaigns) AND state = ? AND lease_us < ? AND channel IN ({})",
                vec!["?"; retry.len()].join(", ")
            ),
            v,
        )
        .await?;
    }
    let mut v: Vec<Value> = vec![(pb::DeliveryState::Failed as i32).into(), SENDING.into(), now_us.into()];
    let mut not_in = String::new();
    if !retry.is_empty() {
        not_in = format!(" AND channel NOT IN ({})", vec!["?"; retry.len()].join(", "));
        v.extend(retry.iter().map(|c| Value::from(*c)));
    }
    n += exec(
        conn,
        &format!(
            "UPDATE deliveries SET state = ?, error = 'abandoned by a stopped sender; outcome unknown, not retried so it cannot arrive twice' \
             WHERE campaign_id IN (SELECT id FROM campaigns) AND state = ? AND lease_us < ?{not_in}"
        ),
        v,
    )
    .await?;
    Ok(n)
}

/// Drops the queued deliveries of a cancelled campaign.
pub async fn cancel_queued<C: ConnectionTrait>(conn: &C, campaign_id: &str) -> Result<u64> {
    exec(
        conn,
        "UPDATE deliveries SET state = ? WHERE campaign_id = ? AND state = ?",
        vec![
            (pb::DeliveryState::Cancelled as i32).into(),
            campaign_id.into(),
            (pb::DeliveryState::Queued as i32).into(),
        ],
    )
    .await
}

/// Whether a run still has deliveries queued or being sent.
pub async fn run_pending<C: ConnectionTrait>(conn: &C, campaign_id: &str, run: i64) -> Result<bool> {
    let rows = query(
        conn,
        "SELECT 1 AS one FROM deliveries WHERE campaign_id = ? AND run = ? AND state IN (?, ?) LIMIT 1",
        vec![
            campaign_id.into(),
            run.into(),
            (pb::DeliveryState::Queued as i32).into(),
            SENDING.into(),
        ],
    )
    .await?;
    Ok(!rows.is_empty())
}

/// Messages sent to each of `persons` on `channel` since `since_us` (all campaigns).
pub async fn sent_since<C: ConnectionTrait>(
    conn: &C,
    channel: i32,
    since_us: i64,
    persons: &[&str],
) -> Result<std::collections::HashMap<String, i64>> {
    let sent = pb::DeliveryState::Sent as i32;
    let rows = if conn.get_database_backend() == DbBackend::Postgres {
        // Joined from the persons, so the plan looks each one up by the primary key.
        query(
            conn,
            "SELECT d.person_id, COUNT(*) AS n FROM unnest(CAST(? AS TEXT[])) AS k(p) \
             JOIN deliveries d ON d.person_id = k.p \
             WHERE d.channel = ? AND d.state = ? AND d.send_us >= ? GROUP BY d.person_id",
            vec![
                text_array(persons.iter().map(|p| (*p).to_owned())),
                channel.into(),
                sent.into(),
                since_us.into(),
            ],
        )
        .await?
    } else {
        let (cond, persons) = any_of(DbBackend::Sqlite, "person_id", persons);
        let mut values: Vec<Value> = vec![channel.into(), sent.into(), since_us.into()];
        values.extend(persons);
        query(
            conn,
            &format!(
                "SELECT person_id, COUNT(*) AS n FROM deliveries WHERE channel = ? AND state = ? AND send_us >= ? AND {cond} \
                 GROUP BY person_id"
            ),
            values,
        )
        .await?
    };
    let mut out = std::collections::HashMap::new();
    for r in rows {
        out.insert(r.try_get("", "person_id")?, r.try_get::<i64>("", "n")?);
    }
    Ok(out)
}

/// Counts of a campaign's deliveries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// (state, skip reason) → deliveries.
    pub by_state: Vec<(i32, i32, i64)>,
    pub opened: i64,
    pub clicked: i64,
    pub unsubscribed: i64,
    pub converted: i64,
    pub control_converted: i64,
    pub revenue_micros: i64,
}

pub async fn counts<C: ConnectionTrait>(conn: &C, campaign_id: &str, currency: &str) -> Result<Counts> {
    let rows = query(
        conn,
        "SELECT state, skip_reason, COUNT(*) AS n FROM deliveries WHERE campaign_id = ? GROUP BY state, skip_reason",
        vec![campaign_id.into()],
    )
    .await?;
    let mut c = Counts::default();
    for r in rows {
        c.by_state
            .push((r.try_get("", "state")?, r.try_get("", "skip_reason")?, r.try_get("", "n")?));
    }
    let sent = pb::DeliveryState::Sent as i32;
    let control = pb::DeliveryState::Control as i32;
    let rows = query(
        conn,
        &format!(
            "SELECT COUNT(open_us) AS opened, COUNT(click_us) AS clicked, COUNT(unsubscribe_us) AS unsubscribed, \
             CAST(COALESCE(SUM(CASE WHEN state = {sent} AND conversion_us IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS converted, \
             CAST(COALESCE(SUM(CASE WHEN state = {control} AND conversion_us IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS control_converted, \
             CAST(COALESCE(SUM(CASE WHEN state = {sent} AND currency = ? THEN revenue_micros ELSE 0 END), 0) AS BIGINT) AS revenue \
             FROM deliveries WHERE campaign_id = ?"
        ),
        vec![currency.into(), campaign_id.into()],
    )
    .await?;
    if let Some(r) = rows.first() {
        c.opened = r.try_get("", "opened")?;
        c.clicked = r.try_get("", "clicked")?;
        c.unsubscribed = r.try_get("", "unsubscribed")?;
        c.converted = r.try_get("", "converted")?;
        c.control_converted = r.try_get("", "control_converted")?;
        c.revenue_micros = r.try_get("", "revenue")?;
    }
    Ok(c)
}

/// A stored delivery, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    pub key: Key,
    pub state: i32,
    pub skip_reason: i32,
    pub due_us: i64,
    pub send_us: Option<i64>,
    pub attempts: i32,
    pub provider_id: String,
    pub error: String,
    pub open_us: Option<i64>,
    pub click_us: Option<i64>,
    pub unsubscribe_us: Option<i64>,
    pub conversion_order: String,
}

/// A campaign's deliveries after (person, run) `after`, optionally in one state.
pub async fn list_deliveries<C: ConnectionTrait>(
    conn: &C,
    campaign_id: &str,
    after: Option<(&str, i64)>,
    state: Option<i32>,
    limit: u64,
) -> Result<Vec<DeliveryRow>> {
    let mut sql = "SELECT person_id, campaign_id, run, state, skip_reason, due_us, send_us, attempts, provider_id, error, \
                   open_us, click_us, unsubscribe_us, conversion_order FROM deliveries WHERE campaign_id = ?"
        .to_owned();
    let mut values: Vec<Value> = vec![campaign_id.into()];
    if let Some((person, run)) = after {
        sql.push_str(" AND (person_id > ? OR (person_id = ? AND run > ?))");
        values.extend([person.into(), person.into(), run.into()]);
    }
    match state {
        // A delivery with its provider reads as still queued.
        Some(s) if s == pb::DeliveryState::Queued as i32 => {
            sql.push_str(" AND state IN (?, ?)");
            values.extend([s.into(), SENDING.into()]);
        }
        Some(s) => {
            sql.push_str(" AND state = ?");
            values.push(s.into());
        }
        None => {}
    }
    sql.push_str(" ORDER BY person_id, run LIMIT ?");
    values.push((limit as i64).into());
    let rows = query(conn, &sql, values).await?;
    rows.iter()
        .map(|r| {
            let state: i32 = r.try_get("", "state")?;
            Ok(DeliveryRow {
                key: Key {
                    person_id: r.try_get("", "person_id")?,
                    campaign_id: r.try_get("", "campaign_id")?,
                    run: r.try_get("", "run")?,
                },
                state: if state == SENDING {
                    pb::DeliveryState::Queued as i32
                } else {
                    state
                },
                skip_reason: r.try_get("", "skip_reason")?,
                due_us: r.try_get("", "due_us")?,
                send_us: r.try_get("", "send_us")?,
                attempts: r.try_get("", "attempts")?,
                provider_id: r.try_get("", "provider_id")?,
                error: r.try_get("", "error")?,
                open_us: r.try_get("", "open_us")?,
                click_us: r.try_get("", "click_us")?,
                unsubscribe_us: r.try_get("", "unsubscribe_us")?,
                conversion_order: r.try_get("", "conversion_order")?,
            })
        })
        .collect()
}

/// A sent delivery, for tracking: its channel, or `None` when there is no sent
/// delivery with that key.
pub async fn sent_channel<C: ConnectionTrait>(conn: &C, key: &Key) -> Result<Option<i32>> {
    let rows = query(
        conn,
        "SELECT channel FROM deliveries WHERE person_id = ? AND campaign_id = ? AND run = ? AND state = ?",
        vec![
            key.person_id.clone().into(),
            key.campaign_id.clone().into(),
            key.run.into(),
            (pb::DeliveryState::Sent as i32).into(),
        ],
    )
    .await?;
    rows.first().map(|r| Ok(r.try_get("", "channel")?)).transpose()
}

/// The channel of a delivery in any state, if it exists.
pub async fn delivery_channel<C: ConnectionTrait>(conn: &C, key: &Key) -> Result<Option<i32>> {
    let rows = query(
        conn,
        "SELECT channel FROM deliveries WHERE person_id = ? AND campaign_id = ? AND run = ?",
        vec![key.person_id.clone().into(), key.campaign_id.clone().into(), key.run.into()],
    )
    .await?;
    rows.first().map(|r| Ok(r.try_get("", "channel")?)).transpose()
}

/// Sets `column` (open_us, click_us, unsubscribe_us) of a sent delivery the first
/// time; true when this call set it.
pub async fn first_touch<C: ConnectionTrait>(conn: &C, key: &Key, column: &str, at_us: i64) -> Result<bool> {
    debug_assert!(["open_us", "click_us", "unsubscribe_us"].contains(&column));
    let n = exec(
        conn,
        &format!(
            "UPDATE deliveries SET {column} = ? WHERE person_id = ? AND campaign_id = ? AND run = ? AND state = ? \
             AND {column} IS NULL"
        ),
        vec![
            at_us.into(),
            key.person_id.clone().into(),
            key.campaign_id.clone().into(),
            key.run.into(),
            (pb::DeliveryState::Sent as i32).into(),
        ],
    )
    .await?;
    Ok(n > 0)
}

/// A delivery converted by an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    pub key: Key,
    pub channel: i32,
    pub control: bool,
}

/// Credits an order placed at `place_us` to every sent (or control) delivery of
/// `persons` within its campaign's conversion window before it that has no
/// conversion yet.
pub async fn convert<C: ConnectionTrait>(
    conn: &C,
    persons: &[&str],
    order: &str,
    place_us: i64,
    total_micros: i64,
    currency: &str,
) -> Result<Vec<Conversion>> {
    let (cond, people) = any_of(conn.get_database_backend(), "d.person_id", persons);
    let sent = pb::DeliveryState::Sent as i32;
    let control = pb::DeliveryState::Control as i32;
    let mut values = people;
    values.extend([place_us.into(), place_us.into()]);
    let candidates = query(
        conn,
        &format!(
            "SELECT d.person_id, d.campaign_id, d.run, d.channel, d.state FROM deliveries d \
             JOIN campaigns c ON c.id = d.campaign_id \
             WHERE {cond} AND d.conversion_us IS NULL AND d.state IN ({sent}, {control}) \
             AND COALESCE(d.send_us, d.due_us) <= ? AND ? - COALESCE(d.send_us, d.due_us) <= c.conversion_window_us"
        ),
        values,
    )
    .await?;
    let mut out = Vec::new();
    for r in candidates {
        let key = Key {
            person_id: r.try_get("", "person_id")?,
            campaign_id: r.try_get("", "campaign_id")?,
            run: r.try_get("", "run")?,
        };
        let n = exec(
            conn,
            "UPDATE deliveries SET conversion_order = ?, conversion_us = ?, revenue_micros = ?, currency = ? \
             WHERE person_id = ? AND campaign_id = ? AND run = ? AND conversion_us IS NULL",
            vec![
                order.into(),
                place_us.into(),
                total_micros.into(),
                currency.into(),
                key.person_id.clone().into(),
                key.campaign_id.clone().into(),
                key.run.into(),
            ],
        )
        .await?;
        if n > 0 {
            out.push(Conversion {
                key,
                channel: r.try_get("", "channel")?,
                control: r.try_get::<i32>("", "state")? == control,
            });
        }
    }
    Ok(out)
}

/// Erased persons: their deliveries stay for the counts, but lose the order they
/// name.
pub async fn erase<C: ConnectionTrait>(conn: &C, ids: &[&str]) -> Result<()> {
    let backend = conn.get_database_backend();
    let (cond, values) = any_of(backend, "customer_id", ids);
    exec(conn, &format!("DELETE FROM contacts WHERE {cond}"), values).await?;
    let (cond, values) = any_of(backend, "person_id", ids);
    exec(conn, &format!("DELETE FROM suppressions WHERE {cond}"), values.clone()).await?;
    exec(
        conn,
        &format!("UPDATE deliveries SET conversion_order = '', provider_id = '' WHERE {cond}"),
        values,
    )
    .await?;
    Ok(())
}

// ------------------------------------------------------------ suppressions

/// Suppresses a person on a channel (idempotent).
pub async fn suppress<C: ConnectionTrait>(conn: &C, person: &str, channel: i32, reason: &str, at_us: i64) -> Result<()> {
    exec(
        conn,
        "INSERT INTO suppressions (person_id, channel, reason, create_us) VALUES (?, ?, ?, ?) \
         ON CONFLICT (person_id, channel) DO NOTHING",
        vec![person.into(), channel.into(), reason.into(), at_us.into()],
    )
    .await?;
    Ok(())
}

/// Which of `persons` are suppressed on `channel`, or carry one of `tags`.
pub async fn suppressed<C: ConnectionTrait>(
    conn: &C,
    persons: &[&str],
    channel: i32,
    tags: &[String],
) -> Result<std::collections::HashSet<String>> {
    let backend = conn.get_database_backend();
    let (cond, mut values) = any_of(backend, "person_id", persons);
    values.push(channel.into());
    let rows = query(
        conn,
        &format!("SELECT person_id FROM suppressions WHERE {cond} AND channel = ?"),
        values,
    )
    .await?;
    let mut out = std::collections::HashSet::new();
    for r in rows {
        out.insert(r.try_get("", "person_id")?);
    }
    if !tags.is_empty() {
        let marks = vec!["?"; tags.len()].join(", ");
        let (sql, mut values) = if backend == DbBackend::Postgres {
            // Joined from the persons: each looked up with the tags by the primary key.
            (
                format!(
                    "SELECT DISTINCT t.customer_id FROM unnest(CAST(? AS TEXT[])) AS k(p) \
                     JOIN customer_tags t ON t.customer_id = k.p WHERE t.tag_id IN ({marks})"
                ),
                vec![text_array(persons.iter().map(|p| (*p).to_owned()))],
            )
        } else {
            let (cond, values) = any_of(backend, "customer_id", persons);
            (
                format!("SELECT DISTINCT customer_id FROM customer_tags WHERE {cond} AND tag_id IN ({marks})"),
                values,
            )
        };
        values.extend(tags.iter().map(|t| Value::from(t.clone())));
        let rows = query(conn, &sql, values).await?;
        for r in rows {
            out.insert(r.try_get("", "customer_id")?);
        }
    }
    Ok(out)
}

/// Which of `persons` are still persons of the projection (not merged away, deleted
/// or erased).
pub async fn live<C: ConnectionTrait>(conn: &C, persons: &[&str]) -> Result<std::collections::HashSet<String>> {
    let (cond, values) = any_of(conn.get_database_backend(), "id", persons);
    let rows = query(
        conn,
        &format!("SELECT id FROM customers WHERE {cond} AND merged_into IS NULL AND deleted = 0"),
        values,
    )
    .await?;
    rows.iter().map(|r| Ok(r.try_get("", "id")?)).collect()
}

/// The consent statements of `persons` for `purpose` (all channels).
pub async fn consents<C: ConnectionTrait>(
    conn: &C,
    persons: &[&str],
    purpose: i32,
) -> Result<std::collections::HashMap<String, Vec<crm_proto::crm::customer::v1::ConsentRecord>>> {
    let (cond, mut values) = any_of(conn.get_database_backend(), "customer_id", persons);
    values.push(purpose.into());
    let rows = query(
        conn,
        &format!("SELECT customer_id, channel, status, effective_us, expire_us FROM consents WHERE {cond} AND purpose = ?"),
        values,
    )
    .await?;
    let mut out: std::collections::HashMap<String, Vec<_>> = std::collections::HashMap::new();
    for r in rows {
        let time = crm_platform::feed::from_micros;
        out.entry(r.try_get("", "customer_id")?)
            .or_default()
            .push(crm_proto::crm::customer::v1::ConsentRecord {
                purpose,
                channel: r.try_get("", "channel")?,
                status: r.try_get("", "status")?,
                effective_time: Some(time(r.try_get("", "effective_us")?)),
                expire_time: r.try_get::<Option<i64>>("", "expire_us")?.map(time),
                ..Default::default()
            });
    }
    Ok(out)
}

/// What a message may say about each of `persons`: region, locality, lifecycle
/// stage, attributes (JSON) and RFM group.
pub async fn profile_facts<C: ConnectionTrait>(
    conn: &C,
    persons: &[&str],
) -> Result<std::collections::HashMap<String, (String, String, i32, String, i32)>> {
    let (cond, values) = any_of(conn.get_database_backend(), "c.id", persons);
    let rows = query(
        conn,
        &format!(
            "SELECT c.id, c.region, c.locality, c.lifecycle_stage, c.attributes, COALESCE(r.rfm_group, 0) AS rfm_group \
             FROM customers c LEFT JOIN rfm r ON r.person_id = c.id WHERE {cond}"
        ),
        values,
    )
    .await?;
    let mut out = std::collections::HashMap::new();
    for r in rows {
        out.insert(
            r.try_get("", "id")?,
            (
                r.try_get("", "region")?,
                r.try_get("", "locality")?,
                r.try_get("", "lifecycle_stage")?,
                r.try_get("", "attributes")?,
                r.try_get("", "rfm_group")?,
            ),
        );
    }
    Ok(out)
}

/// The traits of `persons`: person → name → value.
pub async fn traits_of<C: ConnectionTrait>(
    conn: &C,
    persons: &[&str],
) -> Result<std::collections::HashMap<String, std::collections::HashMap<String, String>>> {
    let (cond, values) = any_of(conn.get_database_backend(), "person_id", persons);
    let rows = query(
        conn,
        &format!("SELECT person_id, name, value FROM traits WHERE {cond}"),
        values,
    )
    .await?;
    let mut out: std::collections::HashMap<String, std::collections::HashMap<String, String>> = std::collections::HashMap::new();
    for r in rows {
        out.entry(r.try_get("", "person_id")?)
            .or_default()
            .insert(r.try_get("", "name")?, r.try_get("", "value")?);
    }
    Ok(out)
}

// ------------------------------------------------------------ forwards

/// A call waiting to be made to customer-profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub seq: i64,
    pub kind: i32,
    pub payload: Vec<u8>,
    pub attempts: i32,
}

/// Queues calls of one `kind`.
pub async fn push_forwards<C: ConnectionTrait>(conn: &C, kind: i32, payloads: &[Vec<u8>], due_us: i64) -> Result<()> {
    for chunk in payloads.chunks(500) {
        let marks = vec!["(?, ?, ?, 0)"; chunk.len()].join(", ");
        let mut values = Vec::with_capacity(chunk.len() * 3);
        for p in chunk {
            values.extend([Value::from(kind), Value::from(p.clone()), Value::from(due_us)]);
        }
        exec(
            conn,
            &format!("INSERT INTO forwards (kind, payload, due_us, attempts) VALUES {marks}"),
            values,
        )
        .await?;
    }
    Ok(())
}

/// The oldest due calls, claimed (another replica skips them).
pub async fn due_forwards<C: ConnectionTrait>(conn: &C, now_us: i64, limit: usize) -> Result<Vec<Forward>> {
    let rows = query(
        conn,
        &format!(
            "SELECT seq, kind, payload, attempts FROM forwards WHERE due_us <= ? ORDER BY due_us, seq LIMIT ?{}",
            lock(conn, true)
        ),
        vec![now_us.into(), (limit as i64).into()],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Forward {
                seq: r.try_get("", "seq")?,
                kind: r.try_get("", "kind")?,
                payload: r.try_get("", "payload")?,
                attempts: r.try_get("", "attempts")?,
            })
        })
        .collect()
}

pub async fn delete_forwards<C: ConnectionTrait>(conn: &C, seqs: &[i64]) -> Result<()> {
    for chunk in seqs.chunks(500) {
        let values: Vec<Value> = chunk.iter().map(|s| Value::from(*s)).collect();
        exec(
            conn,
            &format!("DELETE FROM forwards WHERE seq IN ({})", vec!["?"; chunk.len()].join(", ")),
            values,
        )
        .await?;
    }
    Ok(())
}

pub async fn retry_forward<C: ConnectionTrait>(conn: &C, seq: i64, due_us: i64) -> Result<()> {
    exec(
        conn,
        "UPDATE forwards SET due_us = ?, attempts = attempts + 1 WHERE seq = ?",
        vec![due_us.into(), seq.into()],
    )
    .await?;
    Ok(())
}

/// Calls waiting, for the status and the tests.
pub async fn forwards_waiting<C: ConnectionTrait>(conn: &C) -> Result<i64> {
    let rows = query(conn, "SELECT COUNT(*) AS n FROM forwards", vec![]).await?;
    Ok(match rows.first() {
        Some(r) => r.try_get("", "n")?,
        None => 0,
    })
}

// ------------------------------------------------------------ attribution

/// A touch for attribution: person, campaign id, group key of its channel, time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TouchRow {
    pub person_id: String,
    pub campaign_id: String,
    pub channel_key: String,
    pub at_us: i64,
}

/// Campaign messages sent and interactions naming a campaign (other than the ones
/// this service records for its own messages) between `from_us` and `to_us`.
pub async fn touches_between<C: ConnectionTrait>(conn: &C, from_us: i64, to_us: i64) -> Result<Vec<TouchRow>> {
    let mut out = Vec::new();
    let rows = query(
        conn,
        "SELECT person_id, campaign_id, channel, send_us FROM deliveries WHERE state = ? AND send_us >= ? AND send_us < ?",
        vec![(pb::DeliveryState::Sent as i32).into(), from_us.into(), to_us.into()],
    )
    .await?;
    for r in rows {
        let channel: i32 = r.try_get("", "channel")?;
        out.push(TouchRow {
            person_id: r.try_get("", "person_id")?,
            campaign_id: r.try_get("", "campaign_id")?,
            channel_key: super::Channel::from_proto(channel).map_or("other", |c| c.key()).to_owned(),
            at_us: r.try_get("", "send_us")?,
        });
    }
    use crm_proto::crm::customer::v1::InteractionKind as K;
    let rows = query(
        conn,
        "SELECT person_id, campaign, channel, occur_us FROM interactions WHERE campaign <> '' AND occur_us >= ? \
         AND occur_us < ? AND kind NOT IN (?, ?, ?)",
        vec![
            from_us.into(),
            to_us.into(),
            (K::CampaignDelivered as i32).into(),
            (K::CampaignOpened as i32).into(),
            (K::CampaignClicked as i32).into(),
        ],
    )
    .await?;
    for r in rows {
        let channel: i32 = r.try_get("", "channel")?;
        let campaign: String = r.try_get("", "campaign")?;
        out.push(TouchRow {
            person_id: r.try_get("", "person_id")?,
            campaign_id: campaign.strip_prefix("campaigns/").unwrap_or(&campaign).to_owned(),
            channel_key: crm_proto::crm::common::v1::Channel::try_from(channel).map_or("other".to_owned(), |c| {
                c.as_str_name().trim_start_matches("CHANNEL_").to_ascii_lowercase()
            }),
            at_us: r.try_get("", "occur_us")?,
        });
    }
    Ok(out)
}

/// An order for attribution: person, place time, total, currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    pub person_id: String,
    pub place_us: i64,
    pub total_micros: i64,
    pub currency: String,
}

/// Orders placed (not cancelled or refunded) between `from_us` and `to_us`.
pub async fn orders_between<C: ConnectionTrait>(conn: &C, from_us: i64, to_us: i64) -> Result<Vec<OrderRow>> {
    use crm_proto::crm::customer::v1::OrderStatus as S;
    let rows = query(
        conn,
        "SELECT person_id, place_us, total_micros, currency FROM orders WHERE place_us >= ? AND place_us < ? \
         AND status NOT IN (?, ?, ?)",
        vec![
            from_us.into(),
            to_us.into(),
            (S::Cancelled as i32).into(),
            (S::Refunded as i32).into(),
            (S::Unspecified as i32).into(),
        ],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(OrderRow {
                person_id: r.try_get("", "person_id")?,
                place_us: r.try_get("", "place_us")?,
                total_micros: r.try_get("", "total_micros")?,
                currency: r.try_get("", "currency")?,
            })
        })
        .collect()
}
