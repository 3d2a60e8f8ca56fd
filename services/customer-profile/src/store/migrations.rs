//! Schema of the customer-profile database, one step per release. Never edit a
//! released step; add a new one.

use crm_platform::{
    feed, idempotency,
    migrate::{Dialect, Migration},
};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "customers, tags, outbox, idempotency keys",
        up: v1,
    },
    Migration {
        version: 2,
        name: "sealed sensitive fields, blocking keys, external ids, duplicate candidates, field definitions, imports",
        up: v2,
    },
    Migration {
        version: 3,
        name: "merges (undo snapshots)",
        up: v3,
    },
    Migration {
        version: 4,
        name: "entry statistics, stale-profile reminders",
        up: v4,
    },
    Migration {
        version: 5,
        name: "audit spool (reads and denials waiting for the permissions service)",
        up: crm_platform::audit::migration_sql,
    },
    Migration {
        version: 6,
        name: "orders, interactions (PostgreSQL: partitioned by month)",
        up: v6,
    },
    Migration {
        version: 7,
        name: "consent in force and its history",
        up: v7,
    },
    Migration {
        version: 8,
        name: "feed events by subject (the customer timeline)",
        up: v8,
    },
    Migration {
        version: 9,
        name: "data export jobs",
        up: v9,
    },
    Migration {
        version: 10,
        name: "erasure records",
        up: v10,
    },
    Migration {
        version: 11,
        name: "enrichment requests",
        up: v11,
    },
];

fn v1(d: Dialect) -> Vec<String> {
    let ts = d.timestamp();
    let mut sql = vec![
        format!(
            "CREATE TABLE customers (id TEXT PRIMARY KEY, kind TEXT NOT NULL, display_name TEXT NOT NULL, \
             lifecycle_stage TEXT NOT NULL, owner_user_id TEXT NOT NULL, team_id TEXT NOT NULL, source_channel TEXT NOT NULL, \
             profile TEXT NOT NULL, revision BIGINT NOT NULL, create_time {ts} NOT NULL, update_time {ts} NOT NULL, delete_time {ts})"
        ),
        "CREATE INDEX customers_create_time ON customers (create_time, id)".into(),
        "CREATE INDEX customers_update_time ON customers (update_time, id)".into(),
        "CREATE INDEX customers_display_name ON customers (display_name, id)".into(),
        // Owner, team and stage lists in the default order (create_time) read one index
        // range instead of sorting every matching row.
        "CREATE INDEX customers_owner ON customers (owner_user_id, create_time, id)".into(),
        "CREATE INDEX customers_team ON customers (team_id, create_time, id)".into(),
        "CREATE INDEX customers_lifecycle ON customers (lifecycle_stage, create_time, id)".into(),
        "CREATE TABLE customer_tags (customer_id TEXT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (customer_id, tag))".into(),
        "CREATE INDEX customer_tags_tag ON customer_tags (tag, customer_id)".into(),
    ];
    sql.extend(feed::migration_sql(d));
    sql.extend(idempotency::migration_sql(d));
    sql
}

fn v2(d: Dialect) -> Vec<String> {
    let ts = d.timestamp();
    let bytes = d.bytes();
    vec![
        // Sensitive fields, sealed (AES-256-GCM) under `key_id`; NULL for rows written
        // before this step, which the re-encryption job seals.
        format!("ALTER TABLE customers ADD COLUMN sealed {bytes}"),
        "ALTER TABLE customers ADD COLUMN key_id TEXT NOT NULL DEFAULT ''".into(),
        format!("ALTER TABLE customers ADD COLUMN confirm_time {ts}"),
        "ALTER TABLE customers ADD COLUMN merged_into TEXT".into(),
        "CREATE INDEX customers_key_id ON customers (key_id, id)".into(),
        // Blocking keys: blind indexes (HMAC) of normalised values, never plaintext.
        "CREATE TABLE customer_keys (customer_id TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL, \
         PRIMARY KEY (customer_id, kind, value))"
            .into(),
        "CREATE INDEX customer_keys_lookup ON customer_keys (kind, value, customer_id)".into(),
        "CREATE TABLE customer_external_ids (source TEXT NOT NULL, external_id TEXT NOT NULL, customer_id TEXT NOT NULL, \
         PRIMARY KEY (source, external_id))"
            .into(),
        "CREATE INDEX customer_external_ids_customer ON customer_external_ids (customer_id)".into(),
        format!(
            "CREATE TABLE duplicate_candidates (id TEXT PRIMARY KEY, pair_key TEXT NOT NULL UNIQUE, customer_id TEXT NOT NULL, \
             other_customer_id TEXT NOT NULL, probability DOUBLE PRECISION NOT NULL, comparisons TEXT NOT NULL, state TEXT NOT NULL, \
             create_time {ts} NOT NULL, update_time {ts} NOT NULL)"
        ),
        "CREATE INDEX duplicate_candidates_state ON duplicate_candidates (state, probability, id)".into(),
        "CREATE INDEX duplicate_candidates_customer ON duplicate_candidates (customer_id)".into(),
        "CREATE INDEX duplicate_candidates_other ON duplicate_candidates (other_customer_id)".into(),
        format!(
            "CREATE TABLE field_definitions (path TEXT PRIMARY KEY, body TEXT NOT NULL, revision BIGINT NOT NULL, update_time {ts} NOT NULL)"
        ),
        format!(
            "CREATE TABLE import_jobs (id TEXT PRIMARY KEY, body TEXT NOT NULL, create_time {ts} NOT NULL, update_time {ts} NOT NULL)"
        ),
        "CREATE TABLE import_rows (job_id TEXT NOT NULL, row_key TEXT NOT NULL, seq BIGINT NOT NULL, outcome TEXT NOT NULL, \
         customer TEXT NOT NULL, errors TEXT NOT NULL, probability DOUBLE PRECISION NOT NULL, PRIMARY KEY (job_id, row_key))"
            .into(),
        "CREATE INDEX import_rows_seq ON import_rows (job_id, seq)".into(),
    ]
}

fn v3(d: Dialect) -> Vec<String> {
    let ts = d.timestamp();
    let bytes = d.bytes();
    vec![
        // One row per MergeCustomers call: the sealed before-images that undo it.
        format!(
            "CREATE TABLE merges (id TEXT PRIMARY KEY, survivor_id TEXT NOT NULL, survivor_revision BIGINT NOT NULL, \
             sealed {bytes} NOT NULL, merge_time {ts} NOT NULL)"
        ),
        "CREATE TABLE merge_members (customer_id TEXT PRIMARY KEY, merge_id TEXT NOT NULL)".into(),
        "CREATE INDEX merge_members_merge ON merge_members (merge_id)".into(),
    ]
}

fn v4(d: Dialect) -> Vec<String> {
    let ts = d.timestamp();
    vec![
        // Writes accepted and refused by validation, per UTC day (entry error rate).
        "CREATE TABLE entry_stats (day TEXT PRIMARY KEY, accepted BIGINT NOT NULL, rejected BIGINT NOT NULL)".into(),
        // When a stale-profile reminder was last sent.
        format!("ALTER TABLE customers ADD COLUMN reminder_time {ts}"),
        "CREATE INDEX customers_confirm_time ON customers (confirm_time, id)".into(),
    ]
}

fn v6(d: Dialect) -> Vec<String> {
    let bytes = d.bytes();
    let mut sql = vec![
        // Orders, keyed by the source's id; the encoded proto plus what lists and
        // summaries read.
        format!(
            "CREATE TABLE orders (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, source TEXT NOT NULL, \
             external_id TEXT NOT NULL, status INTEGER NOT NULL, currency TEXT NOT NULL, total_micros BIGINT NOT NULL, \
             place_us BIGINT NOT NULL, source_update_us BIGINT NOT NULL, revision BIGINT NOT NULL, data {bytes} NOT NULL, \
             UNIQUE (source, external_id))"
        ),
        "CREATE INDEX orders_customer ON orders (customer_id, place_us)".into(),
    ];
    // Interactions are the largest table: on PostgreSQL, monthly range partitions on
    // the occurrence time (created ahead by the service, see `store::activity`), so
    // retention drops whole partitions and per-customer reads touch recent ones. The
    // (source, external_id) key carries the occurrence time because unique indexes
    // on a partitioned table must include the partition key; a retried event has the
    // same time, so duplicates are still caught.
    let columns = format!(
        "(id TEXT NOT NULL, customer_id TEXT NOT NULL, kind INTEGER NOT NULL, channel INTEGER NOT NULL, \
         occur_us BIGINT NOT NULL, source TEXT NOT NULL, external_id TEXT NOT NULL, record_us BIGINT NOT NULL, \
         data {bytes} NOT NULL, PRIMARY KEY (id, occur_us), UNIQUE (source, external_id, occur_us))"
    );
    if d.is_postgres() {
        sql.push(format!("CREATE TABLE interactions {columns} PARTITION BY RANGE (occur_us)"));
        // Rows outside every monthly partition (far past or future) land here.
        sql.push("CREATE TABLE interactions_default PARTITION OF interactions DEFAULT".into());
    } else {
        sql.push(format!("CREATE TABLE interactions {columns}"));
    }
    sql.push("CREATE INDEX interactions_customer ON interactions (customer_id, occur_us)".into());
    sql
}

fn v7(d: Dialect) -> Vec<String> {
    let bytes = d.bytes();
    vec![
        // The latest statement per customer, purpose and channel.
        format!(
            "CREATE TABLE consents (customer_id TEXT NOT NULL, purpose INTEGER NOT NULL, channel INTEGER NOT NULL, \
             effective_us BIGINT NOT NULL, data {bytes} NOT NULL, PRIMARY KEY (customer_id, purpose, channel))"
        ),
        // Every statement, in the order recorded.
        format!(
            "CREATE TABLE consent_history (customer_id TEXT NOT NULL, seq BIGINT NOT NULL, purpose INTEGER NOT NULL, \
             data {bytes} NOT NULL, PRIMARY KEY (customer_id, seq))"
        ),
    ]
}

fn v8(_: Dialect) -> Vec<String> {
    vec!["CREATE INDEX outbox_subject ON outbox (subject, occur_time)".into()]
}

fn v9(d: Dialect) -> Vec<String> {
    let bytes = d.bytes();
    vec![
        format!(
            "CREATE TABLE export_jobs (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, state INTEGER NOT NULL, \
             requested_by TEXT NOT NULL, create_us BIGINT NOT NULL, finish_us BIGINT, sha256 TEXT NOT NULL, \
             unavailable TEXT NOT NULL, error TEXT NOT NULL, document {bytes})"
        ),
        "CREATE INDEX export_jobs_state ON export_jobs (state, create_us)".into(),
    ]
}

fn v10(d: Dialect) -> Vec<String> {
    let bytes = d.bytes();
    vec![
        // One row per erased customer: the erasure record (no personal data).
        format!("CREATE TABLE erasures (customer_id TEXT PRIMARY KEY, erase_us BIGINT NOT NULL, data {bytes} NOT NULL)"),
        "CREATE INDEX erasures_time ON erasures (erase_us)".into(),
    ]
}

fn v11(_: Dialect) -> Vec<String> {
    vec![
        // At most one request per customer: a newer trigger resets it (and bumps
        // `generation`, so an answer to the older one is discarded). `due_us` is when
        // the next attempt may start; a claimed row's is pushed past the attempt's
        // lease, so a replica that dies mid-call leaves it to be claimed again.
        "CREATE TABLE enrichment_requests (customer_id TEXT PRIMARY KEY, reason TEXT NOT NULL, state TEXT NOT NULL, \
         generation BIGINT NOT NULL, attempts BIGINT NOT NULL, due_us BIGINT NOT NULL, request_us BIGINT NOT NULL, \
         last_error TEXT NOT NULL)"
            .into(),
        "CREATE INDEX enrichment_requests_due ON enrichment_requests (state, due_us)".into(),
    ]
}
