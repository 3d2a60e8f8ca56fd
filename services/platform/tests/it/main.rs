//! crm-platform integration tests against a real database: SQLite by default,
//! PostgreSQL when CRM_TEST_DATABASE_URL is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod feed;
mod people;
mod schedule;
mod server;
mod tls;
