//! Schema of the ticketing database, one step per release. Never edit a released
//! step; add a new one.

use crm_platform::{
    feed, idempotency,
    migrate::{Dialect, Migration},
};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "configuration objects, tickets with SLA clocks, comments, history, SLA points, outbox",
        up: v1,
    },
    Migration {
        version: 2,
        name: "ticket SLA policy column, surveys, knowledge base with search index, deflections",
        up: v2,
    },
    Migration {
        version: 3,
        name: "audit spool (reads and denials waiting for the permissions service)",
        up: crm_platform::audit::migration_sql,
    },
    Migration {
        version: 4,
        name: "feed cursors (customer-profile's erasures)",
        up: crm_platform::consumer::migration_sql,
    },
];

fn v1(d: Dialect) -> Vec<String> {
    let bytes = d.bytes();
    let mut sql = vec![
        // Agents, queues, routing rules, calendars, SLA and escalation policies: small,
        // read whole, encoded protos.
        format!(
            "CREATE TABLE objects (kind TEXT NOT NULL, id TEXT NOT NULL, revision BIGINT NOT NULL, \
             data {bytes} NOT NULL, PRIMARY KEY (kind, id))"
        ),
        // A ticket: the encoded proto, its SLA clocks (JSON), and the columns lists filter on.
        format!(
            "CREATE TABLE tickets (id TEXT PRIMARY KEY, revision BIGINT NOT NULL, status INTEGER NOT NULL, \
             queue TEXT NOT NULL, assignee TEXT NOT NULL, customer TEXT NOT NULL, category TEXT NOT NULL, \
             create_us BIGINT NOT NULL, data {bytes} NOT NULL, sla TEXT NOT NULL)"
        ),
        "CREATE INDEX tickets_queue ON tickets (queue, status)".into(),
        "CREATE INDEX tickets_assignee ON tickets (assignee, status)".into(),
        "CREATE INDEX tickets_customer ON tickets (customer, create_us)".into(),
        "CREATE INDEX tickets_created ON tickets (create_us)".into(),
        // Per agent: active tickets held, and when the last one was assigned (round-robin).
        "CREATE TABLE agent_stats (agent TEXT PRIMARY KEY, load BIGINT NOT NULL, last_assigned_us BIGINT NOT NULL)".into(),
        format!(
            "CREATE TABLE comments (ticket_id TEXT NOT NULL, seq BIGINT NOT NULL, data {bytes} NOT NULL, \
             PRIMARY KEY (ticket_id, seq))"
        ),
        format!(
            "CREATE TABLE history (ticket_id TEXT NOT NULL, seq BIGINT NOT NULL, data {bytes} NOT NULL, \
             PRIMARY KEY (ticket_id, seq))"
        ),
        // One row per escalation point of an SLA clock cycle: due until fired, then
        // kept, so the same point never fires twice.
        "CREATE TABLE sla_points (ticket_id TEXT NOT NULL, metric INTEGER NOT NULL, clock_start_us BIGINT NOT NULL, \
         percent INTEGER NOT NULL, due_us BIGINT NOT NULL, scheduled_us BIGINT NOT NULL, fired_us BIGINT, \
         PRIMARY KEY (ticket_id, metric, clock_start_us, percent))"
            .into(),
        "CREATE INDEX sla_points_due ON sla_points (due_us) WHERE fired_us IS NULL".into(),
        // Moves on with every configuration write, so replicas know when their cached
        // configuration is stale.
        "CREATE TABLE ticketing_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL)".into(),
        "INSERT INTO ticketing_meta (name, value) VALUES ('config_version', 1)".into(),
    ];
    sql.extend(feed::migration_sql(d));
    sql.extend(idempotency::migration_sql(d));
    sql
}

fn v2(d: Dialect) -> Vec<String> {
    let bytes = d.bytes();
    let mut sql = vec![
        // Which tickets an SLA policy governs (a policy in use cannot be deleted).
        "ALTER TABLE tickets ADD COLUMN sla_policy TEXT NOT NULL DEFAULT ''".into(),
        "CREATE INDEX tickets_sla_policy ON tickets (sla_policy, status)".into(),
        // One rating per ticket, with the agent it is credited to.
        format!(
            "CREATE TABLE surveys (ticket_id TEXT PRIMARY KEY, agent TEXT NOT NULL, rating INTEGER NOT NULL, \
             submit_us BIGINT NOT NULL, data {bytes} NOT NULL)"
        ),
        // Articles: the current revision, its search terms, and every revision kept.
        format!(
            "CREATE TABLE articles (id TEXT PRIMARY KEY, revision BIGINT NOT NULL, state INTEGER NOT NULL, \
             category TEXT NOT NULL, language TEXT NOT NULL, create_us BIGINT NOT NULL, \
             deflections BIGINT NOT NULL DEFAULT 0, terms TEXT NOT NULL, data {bytes} NOT NULL)"
        ),
        "CREATE INDEX articles_category ON articles (category, id)".into(),
        format!(
            "CREATE TABLE article_revisions (article_id TEXT NOT NULL, revision INTEGER NOT NULL, \
             data {bytes} NOT NULL, PRIMARY KEY (article_id, revision))"
        ),
        "CREATE TABLE deflections (id TEXT PRIMARY KEY, article_id TEXT NOT NULL, customer TEXT NOT NULL, \
         query TEXT NOT NULL, at_us BIGINT NOT NULL)"
            .into(),
        "CREATE INDEX deflections_article ON deflections (article_id, at_us)".into(),
    ];
    // Full-text search: PostgreSQL's own over the terms; SQLite's FTS5 table beside.
    if d.is_postgres() {
        sql.push("CREATE INDEX articles_search ON articles USING GIN (to_tsvector('simple', terms))".into());
    } else {
        sql.push("CREATE VIRTUAL TABLE article_search USING fts5(id UNINDEXED, terms)".into());
    }
    sql
}
