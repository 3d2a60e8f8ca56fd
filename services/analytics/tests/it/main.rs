//! analytics through its real gRPC API, hosted with permissions, customer-profile and
//! ticketing on one in-process server (as `crm serve` does), following their feeds
//! through the server's own address; on SQLite or (with CRM_TEST_DATABASE_URL /
//! CRM_TEST_REDIS_URL) PostgreSQL and Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod app;
mod models;
mod reports;
