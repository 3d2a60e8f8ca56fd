//! Storage of the ticketing service: configuration objects and tickets as encoded
//! protos with the columns queries filter on, SLA clocks as JSON beside their ticket,
//! each ticket's history, and the SLA points the scheduler claims.

pub mod erasure;
pub mod kb;
mod migrations;
pub mod sla;

use crm_platform::{
    Error, Result,
    db::{exec, marks, query},
    migrate::placeholders,
};
pub use migrations::MIGRATIONS;
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement, Value};

/// A kind of configuration object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Agent,
    Queue,
    RoutingRule,
    Calendar,
    SlaPolicy,
    EscalationPolicy,
}

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::Agent => "agent",
            Kind::Queue => "queue",
            Kind::RoutingRule => "routing_rule",
            Kind::Calendar => "calendar",
            Kind::SlaPolicy => "sla_policy",
            Kind::EscalationPolicy => "escalation_policy",
        }
    }

    /// The resource type named in NOT_FOUND / ALREADY_EXISTS errors.
    pub fn resource_type(self) -> &'static str {
        match self {
            Kind::Agent => "agent",
            Kind::Queue => "queue",
            Kind::RoutingRule => "routing rule",
            Kind::Calendar => "calendar",
            Kind::SlaPolicy => "SLA policy",
            Kind::EscalationPolicy => "escalation policy",
        }
    }
}

/// A stored object or ticket: its id, revision (the etag) and encoded proto.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub revision: i64,
    pub data: Vec<u8>,
}

fn row(r: &QueryResult) -> Result<Row> {
    Ok(Row {
        id: r.try_get("", "id")?,
        revision: r.try_get("", "revision")?,
        data: r.try_get("", "data")?,
    })
}

pub async fn get_object<C: ConnectionTrait>(c: &C, kind: Kind, id: &str) -> Result<Option<Row>> {
    let rows = query(
        c,
        "SELECT id, revision, data FROM objects WHERE kind = ? AND id = ?",
        vec![kind.key().into(), id.into()],
    )
    .await?;
    rows.first().map(row).transpose()
}

/// Every object of a kind, in id order (configuration is small).
pub async fn all_objects<C: ConnectionTrait>(c: &C, kind: Kind) -> Result<Vec<Row>> {
    let rows = query(
        c,
        "SELECT id, revision, data FROM objects WHERE kind = ? ORDER BY id",
        vec![kind.key().into()],
    )
    .await?;
    rows.iter().map(row).collect()
}

/// Inserts at revision 1; ALREADY_EXISTS when the id is taken.
pub async fn insert_object<C: ConnectionTrait>(c: &C, kind: Kind, id: &str, name: &str, data: Vec<u8>) -> Result<()> {
    let backend = c.get_database_backend();
    let sql = "INSERT INTO objects (kind, id, revision, data) VALUES (?, ?, 1, ?)";
    match c
        .execute_raw(Statement::from_sql_and_values(
            backend,
            placeholders(backend, sql),
            vec![kind.key().into(), id.into(), data.into()],
        ))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))) => Err(Error::AlreadyExists {
            resource_type: kind.resource_type(),
            name: name.to_owned(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Replaces an object read at `revision`; ABORTED (etag mismatch) when it changed.
pub async fn update_object<C: ConnectionTrait>(
    c: &C,
    kind: Kind,
    id: &str,
    name: &str,
    revision: i64,
    data: Vec<u8>,
) -> Result<i64> {
    let changed = exec(
        c,
        "UPDATE objects SET revision = ?, data = ? WHERE kind = ? AND id = ? AND revision = ?",
        vec![
            (revision + 1).into(),
            data.into(),
            kind.key().into(),
            id.into(),
            revision.into(),
        ],
    )
    .await?;
    if changed == 0 {
        return Err(Error::EtagMismatch { name: name.to_owned() });
    }
    Ok(revision + 1)
}

pub async fn delete_object<C: ConnectionTrait>(c: &C, kind: Kind, id: &str) -> Result<u64> {
    exec(
        c,
        "DELETE FROM objects WHERE kind = ? AND id = ?",
        vec![kind.key().into(), id.into()],
    )
    .await
}

/// A ticket row with its SLA clocks.
#[derive(Debug, Clone)]
pub struct TicketRow {
    pub row: Row,
    pub sla: String,
}

/// The columns of a ticket that queries filter on.
#[derive(Debug, Clone)]
pub struct TicketColumns<'a> {
    pub status: i32,
    pub queue: &'a str,
    pub assignee: &'a str,
    pub customer: &'a str,
    pub category: &'a str,
    pub sla_policy: &'a str,
    pub create_us: i64,
}

/// How a ticket is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// A plain read.
    None,
    /// Locked until the transaction ends (PostgreSQL; SQLite's write lock already is).
    Update,
    /// Locked, or `None` at once when another transaction holds it (PostgreSQL).
    SkipLocked,
}

/// Reads a ticket. Writers and the scheduler lock its row first, then touch its
/// points, so they never deadlock on each other.
pub async fn get_ticket<C: ConnectionTrait>(c: &C, id: &str, lock: Lock) -> Result<Option<TicketRow>> {
    let lock = match (lock, c.get_database_backend()) {
        (Lock::Update, DbBackend::Postgres) => " FOR UPDATE",
        (Lock::SkipLocked, DbBackend::Postgres) => " FOR UPDATE SKIP LOCKED",
        _ => "",
    };
    let rows = query(
        c,
        &format!("SELECT id, revision, data, sla FROM tickets WHERE id = ?{lock}"),
        vec![id.into()],
    )
    .await?;
    rows.first()
        .map(|r| {
            Ok(TicketRow {
                row: row(r)?,
                sla: r.try_get("", "sla")?,
            })
        })
        .transpose()
}

pub async fn insert_ticket<C: ConnectionTrait>(
    c: &C,
    id: &str,
    cols: &TicketColumns<'_>,
    data: Vec<u8>,
    sla: String,
) -> Result<()> {
    exec(
        c,
        "INSERT INTO tickets (id, revision, status, queue, assignee, customer, category, sla_policy, create_us, data, sla) \
         VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            id.into(),
            cols.status.into(),
            cols.queue.into(),
            cols.assignee.into(),
            cols.customer.into(),
            cols.category.into(),
            cols.sla_policy.into(),
            cols.create_us.into(),
            data.into(),
            sla.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Replaces a ticket read at `revision`; ABORTED when it changed meanwhile.
pub async fn update_ticket<C: ConnectionTrait>(
    c: &C,
    id: &str,
    name: &str,
    revision: i64,
    cols: &TicketColumns<'_>,
    data: Vec<u8>,
    sla: String,
) -> Result<i64> {
    let changed = exec(
        c,
        "UPDATE tickets SET revision = ?, status = ?, queue = ?, assignee = ?, customer = ?, category = ?, \
         sla_policy = ?, data = ?, sla = ? WHERE id = ? AND revision = ?",
        vec![
            (revision + 1).into(),
            cols.status.into(),
            cols.queue.into(),
            cols.assignee.into(),
            cols.customer.into(),
            cols.category.into(),
            cols.sla_policy.into(),
            data.into(),
            sla.into(),
            id.into(),
            revision.into(),
        ],
    )
    .await?;
    if changed == 0 {
        return Err(Error::EtagMismatch { name: name.to_owned() });
    }
    Ok(revision + 1)
}

/// Which tickets a list returns: every condition set must hold.
#[derive(Debug, Clone, Default)]
pub struct TicketFilter {
    pub statuses: Vec<i32>,
    pub queue: Option<String>,
    pub assignee: Option<String>,
    pub customer: Option<String>,
    pub category: Option<String>,
    /// Read scope: `None` reads all; else tickets assigned to one of `assignees`,
    /// in one of `queues`, or named in `ids`.
    pub scope: Option<TicketScope>,
}

#[derive(Debug, Clone, Default)]
pub struct TicketScope {
    pub assignees: Vec<String>,
    pub queues: Vec<String>,
    pub ids: Vec<String>,
}

/// A page of tickets, newest first, after `(create_us, id)`.
pub async fn list_tickets<C: ConnectionTrait>(
    c: &C,
    filter: &TicketFilter,
    after: Option<&(i64, String)>,
    limit: u64,
) -> Result<Vec<Row>> {
    let mut sql = String::from("SELECT id, revision, data FROM tickets WHERE 1 = 1");
    let mut values: Vec<Value> = Vec::new();
    if !filter.statuses.is_empty() {
        sql.push_str(&format!(" AND status IN ({})", marks(filter.statuses.len())));
        values.extend(filter.statuses.iter().map(|s| Value::from(*s)));
    }
    for (column, value) in [
        ("queue", &filter.queue),
        ("assignee", &filter.assignee),
        ("customer", &filter.customer),
        ("category", &filter.category),
    ] {
        if let Some(v) = value {
            sql.push_str(&format!(" AND {column} = ?"));
            values.push(v.clone().into());
        }
    }
    if let Some(scope) = &filter.scope {
        let mut any = Vec::new();
        for (column, list) in [("assignee", &scope.assignees), ("queue", &scope.queues), ("id", &scope.ids)] {
            if !list.is_empty() {
                any.push(format!("{column} IN ({})", marks(list.len())));
                values.extend(list.iter().map(|v| Value::from(v.clone())));
            }
        }
        if any.is_empty() {
            return Ok(Vec::new());
        }
        sql.push_str(&format!(" AND ({})", any.join(" OR ")));
    }
    if let Some((create_us, id)) = after {
        sql.push_str(" AND (create_us < ? OR (create_us = ? AND id < ?))");
        values.extend([Value::from(*create_us), Value::from(*create_us), Value::from(id.clone())]);
    }
    sql.push_str(" ORDER BY create_us DESC, id DESC LIMIT ?");
    values.push((limit as i64).into());
    query(c, &sql, values).await?.iter().map(row).collect()
}

/// Active (not solved or closed) tickets whose `column` is `value`.
pub async fn count_active<C: ConnectionTrait>(c: &C, column: ReferenceColumn, value: &str) -> Result<i64> {
    let column = match column {
        ReferenceColumn::Queue => "queue",
        ReferenceColumn::Assignee => "assignee",
        ReferenceColumn::SlaPolicy => "sla_policy",
    };
    let rows = query(
        c,
        &format!("SELECT COUNT(*) AS n FROM tickets WHERE {column} = ? AND status IN (1, 2, 3, 4)"),
        vec![value.into()],
    )
    .await?;
    Ok(match rows.first() {
        Some(r) => r.try_get("", "n")?,
        None => 0,
    })
}

/// A ticket column naming a configuration object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceColumn {
    Queue,
    Assignee,
    SlaPolicy,
}

/// Tickets created in `[from_us, to_us)`, a page after `(create_us, id)`, oldest
/// first: (create_us, id, data, sla).
pub async fn tickets_created<C: ConnectionTrait>(
    c: &C,
    from_us: i64,
    to_us: i64,
    after: Option<&(i64, String)>,
    limit: u64,
) -> Result<Vec<(i64, String, Vec<u8>, String)>> {
    let (after, mut values) = crm_platform::db::after_key("create_us", after);
    values.splice(0..0, [from_us.into(), to_us.into()]);
    values.push((limit as i64).into());
    let rows = query(
        c,
        &format!(
            "SELECT create_us, id, data, sla FROM tickets WHERE create_us >= ? AND create_us < ? \
             AND {after} ORDER BY create_us, id LIMIT ?"
        ),
        values,
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("", "create_us")?,
                r.try_get("", "id")?,
                r.try_get("", "data")?,
                r.try_get("", "sla")?,
            ))
        })
        .collect()
}

/// Per agent: (active tickets held, when the last one was assigned in µs).
pub async fn agent_stats<C: ConnectionTrait>(c: &C) -> Result<std::collections::HashMap<String, (i64, i64)>> {
    let rows = query(c, "SELECT agent, load, last_assigned_us FROM agent_stats", vec![]).await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("", "agent")?,
                (r.try_get("", "load")?, r.try_get("", "last_assigned_us")?),
            ))
        })
        .collect()
}

/// Adds `delta` to an agent's load; `assigned_us` records a new assignment.
pub async fn adjust_agent<C: ConnectionTrait>(c: &C, agent: &str, delta: i64, assigned_us: Option<i64>) -> Result<()> {
    let stamp = assigned_us.unwrap_or(0);
    exec(
        c,
        "INSERT INTO agent_stats (agent, load, last_assigned_us) VALUES (?, ?, ?) \
         ON CONFLICT (agent) DO UPDATE SET load = agent_stats.load + ?, \
         last_assigned_us = CASE WHEN ? > agent_stats.last_assigned_us THEN ? ELSE agent_stats.last_assigned_us END",
        vec![
            agent.into(),
            delta.max(0).into(),
            stamp.into(),
            delta.into(),
            stamp.into(),
            stamp.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Agents who had this customer's tickets, most recent ticket first.
pub async fn previous_agents<C: ConnectionTrait>(c: &C, customer: &str, limit: u64) -> Result<Vec<String>> {
    let rows = query(
        c,
        "SELECT assignee FROM tickets WHERE customer = ? AND assignee <> '' ORDER BY create_us DESC LIMIT ?",
        vec![customer.into(), (limit as i64).into()],
    )
    .await?;
    let mut agents: Vec<String> = Vec::new();
    for r in &rows {
        let a: String = r.try_get("", "assignee")?;
        if !agents.contains(&a) {
            agents.push(a);
        }
    }
    Ok(agents)
}

/// A ticket's log: its history or its comments, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    History,
    Comments,
}

impl Log {
    fn table(self) -> &'static str {
        match self {
            Log::History => "history",
            Log::Comments => "comments",
        }
    }
}

/// Appends entries to a ticket's log at the next sequence numbers (one multi-row
/// insert) and returns the first. Callers hold the ticket row (its revision check),
/// so appends to one ticket never race.
pub async fn append<C: ConnectionTrait>(c: &C, log: Log, ticket_id: &str, entries: Vec<Vec<u8>>) -> Result<i64> {
    let table = log.table();
    let rows = query(
        c,
        &format!("SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM {table} WHERE ticket_id = ?"),
        vec![ticket_id.into()],
    )
    .await?;
    let first: i64 = match rows.first() {
        Some(r) => r.try_get("", "seq")?,
        None => 1,
    };
    if entries.is_empty() {
        return Ok(first);
    }
    let marks = vec!["(?, ?, ?)"; entries.len()].join(", ");
    let mut values: Vec<Value> = Vec::with_capacity(entries.len() * 3);
    for (i, data) in entries.into_iter().enumerate() {
        values.push(ticket_id.into());
        values.push((first + i as i64).into());
        values.push(data.into());
    }
    exec(
        c,
        &format!("INSERT INTO {table} (ticket_id, seq, data) VALUES {marks}"),
        values,
    )
    .await?;
    Ok(first)
}

/// A page of a ticket's log after `after_seq`: (seq, data).
pub async fn read_log<C: ConnectionTrait>(
    c: &C,
    log: Log,
    ticket_id: &str,
    after_seq: i64,
    limit: u64,
) -> Result<Vec<(i64, Vec<u8>)>> {
    let rows = query(
        c,
        &format!(
            "SELECT seq, data FROM {} WHERE ticket_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            log.table()
        ),
        vec![ticket_id.into(), after_seq.into(), (limit as i64).into()],
    )
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("", "seq")?, r.try_get("", "data")?)))
        .collect()
}

/// A survey response: inserted, or replacing the stored one. (ticket_id, agent,
/// rating, submit_us, data).
pub async fn put_survey<C: ConnectionTrait>(
    c: &C,
    ticket_id: &str,
    agent: &str,
    rating: i32,
    submit_us: i64,
    data: Vec<u8>,
) -> Result<()> {
    exec(c, "DELETE FROM surveys WHERE ticket_id = ?", vec![ticket_id.into()]).await?;
    exec(
        c,
        "INSERT INTO surveys (ticket_id, agent, rating, submit_us, data) VALUES (?, ?, ?, ?, ?)",
        vec![ticket_id.into(), agent.into(), rating.into(), submit_us.into(), data.into()],
    )
    .await?;
    Ok(())
}

/// The survey response of a ticket, encoded.
pub async fn get_survey<C: ConnectionTrait>(c: &C, ticket_id: &str) -> Result<Option<Vec<u8>>> {
    let rows = query(c, "SELECT data FROM surveys WHERE ticket_id = ?", vec![ticket_id.into()]).await?;
    rows.first().map(|r| Ok(r.try_get("", "data")?)).transpose()
}

/// Ratings of the given tickets: ticket id → rating.
pub async fn ratings<C: ConnectionTrait>(c: &C, ticket_ids: &[String]) -> Result<std::collections::HashMap<String, i32>> {
    let ids: Vec<&str> = ticket_ids.iter().map(String::as_str).collect();
    let prefix = "SELECT ticket_id, rating FROM surveys WHERE ticket_id <> ? AND ticket_id";
    crm_platform::db::in_list(c, prefix, "", &ids)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("", "ticket_id")?, r.try_get("", "rating")?)))
        .collect()
}

/// The configuration version (see `ticketing_meta`).
pub async fn config_version<C: ConnectionTrait>(c: &C) -> Result<i64> {
    let rows = query(c, "SELECT value FROM ticketing_meta WHERE name = 'config_version'", vec![]).await?;
    Ok(match rows.first() {
        Some(r) => r.try_get("", "value")?,
        None => 0,
    })
}

/// Moves the configuration version on, in the transaction of a configuration write.
pub async fn bump_config_version<C: ConnectionTrait>(c: &C) -> Result<()> {
    exec(
        c,
        "UPDATE ticketing_meta SET value = value + 1 WHERE name = 'config_version'",
        vec![],
    )
    .await?;
    Ok(())
}
