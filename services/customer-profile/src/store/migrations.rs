//! Schema of the customer-profile database, one step per release. Never edit a
//! released step; add a new one.

use crm_platform::{
    feed, idempotency,
    migrate::{Dialect, Migration},
};

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "customers, tags, outbox, idempotency keys",
    up: v1,
}];

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
