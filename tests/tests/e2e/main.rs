//! End-to-end: the real `crm` binary, driven over gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod analytics;
mod backup;
mod bench;
mod erasure;
mod import;
mod journeys;
mod segmentation;
mod serve;
mod services;
mod telemetry;
mod ticketing;
