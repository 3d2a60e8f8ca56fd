//! customer-profile through its real gRPC API, in-process on a random port, on SQLite
//! or (with CRM_TEST_DATABASE_URL / CRM_TEST_REDIS_URL) PostgreSQL and Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access;
mod activity;
mod app;
mod auth;
mod consent;
mod crud;
mod definitions;
mod duplicates;
mod encryption;
mod enrichment;
mod erasure;
mod export;
mod feed;
mod idempotency;
mod import;
mod ingest;
mod list;
mod merge;
mod quality;
mod retention;
mod self_service;
mod view360;
