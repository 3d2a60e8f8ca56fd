//! The permissions service through its real gRPC API, in-process on a random port,
//! on SQLite or (with CRM_TEST_DATABASE_URL / CRM_TEST_REDIS_URL) PostgreSQL and Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod app;
mod audit;
mod decisions;
mod remote;
mod review;
