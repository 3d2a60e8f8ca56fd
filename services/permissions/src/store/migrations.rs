//! Schema of the permissions database, one step per release. Never edit a released
//! step; add a new one.

use crm_platform::{
    feed, idempotency,
    migrate::{Dialect, Migration},
};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "users, teams, roles, role bindings, grants, audit log, outbox",
        up: v1,
    },
    Migration {
        version: 2,
        name: "audit retention: the anchor the chain continues from, entries by time",
        up: v2,
    },
];

fn v1(d: Dialect) -> Vec<String> {
    let bytes = d.bytes();
    let mut sql = vec![
        format!("CREATE TABLE users (id TEXT PRIMARY KEY, revision BIGINT NOT NULL, data {bytes} NOT NULL)"),
        format!("CREATE TABLE teams (id TEXT PRIMARY KEY, revision BIGINT NOT NULL, data {bytes} NOT NULL)"),
        format!("CREATE TABLE roles (id TEXT PRIMARY KEY, revision BIGINT NOT NULL, data {bytes} NOT NULL)"),
        format!(
            "CREATE TABLE role_bindings (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, role_id TEXT NOT NULL, \
             revision BIGINT NOT NULL, last_used_us BIGINT, data {bytes} NOT NULL)"
        ),
        "CREATE INDEX role_bindings_user ON role_bindings (user_id, id)".into(),
        "CREATE INDEX role_bindings_role ON role_bindings (role_id, id)".into(),
        format!(
            "CREATE TABLE grants (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, state INTEGER NOT NULL, expire_us BIGINT, \
             revision BIGINT NOT NULL, last_used_us BIGINT, data {bytes} NOT NULL)"
        ),
        "CREATE INDEX grants_user ON grants (user_id, id)".into(),
        "CREATE INDEX grants_expiry ON grants (state, expire_us)".into(),
        // One row per chain link. `content` is what the hash covers; the other
        // columns are copies for filtering, checked against it on verification.
        format!(
            "CREATE TABLE audit_log (seq BIGINT PRIMARY KEY, entry_id TEXT NOT NULL UNIQUE, actor TEXT NOT NULL, \
             resource TEXT NOT NULL, outcome INTEGER NOT NULL, time_us BIGINT NOT NULL, content {bytes} NOT NULL, \
             previous_hash TEXT NOT NULL, hash TEXT NOT NULL)"
        ),
        "CREATE INDEX audit_log_actor ON audit_log (actor, seq)".into(),
        "CREATE INDEX audit_log_resource ON audit_log (resource, seq)".into(),
        "CREATE TABLE permissions_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL)".into(),
        "INSERT INTO permissions_meta (name, value) VALUES ('policy_version', 1)".into(),
        "INSERT INTO permissions_meta (name, value) VALUES ('roles_seeded', 0)".into(),
    ];
    sql.extend(feed::migration_sql(d));
    sql.extend(idempotency::migration_sql(d));
    sql
}

fn v2(_: Dialect) -> Vec<String> {
    vec![
        // The last entry purged by retention: verification starts from its hash.
        "CREATE TABLE audit_anchor (singleton INTEGER PRIMARY KEY CHECK (singleton = 1), seq BIGINT NOT NULL, \
         hash TEXT NOT NULL, purge_us BIGINT NOT NULL)"
            .into(),
        "CREATE INDEX audit_log_time ON audit_log (time_us, seq)".into(),
    ]
}
