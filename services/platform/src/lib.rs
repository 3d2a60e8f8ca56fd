//! crm-platform: what every CRM service stands on.
//!
//! One module per shared concern, so a service crate only wires them together:
//! configuration, telemetry and metrics, database and migrations, cache, authentication and
//! authorization, errors, paging, encryption at rest, the outbox change feed and the gRPC server bootstrap.

pub mod audit;
pub mod auth;
pub mod authz;
pub mod cache;
pub mod cli;
pub mod config;
pub mod consent;
pub mod consumer;
pub mod context;
pub mod crypto;
pub mod db;
pub mod error;
pub mod feed;
pub mod http;
pub mod idempotency;
pub mod mask;
pub mod metrics;
pub mod migrate;
pub mod paging;
pub mod people;
pub mod schedule;
pub mod server;
pub mod stats;
pub mod telemetry;
pub mod testing;

pub use context::Platform;
pub use error::{Error, FieldViolation, Result};
