//! marketing-segmentation through its real gRPC API, hosted with permissions and
//! customer-profile on one in-process server (as `crm serve` does), on SQLite or
//! (with CRM_TEST_DATABASE_URL / CRM_TEST_REDIS_URL) PostgreSQL and Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod app;
mod campaigns;
mod journeys;
mod projection;
mod rfm;
mod segments;
mod segments_property;
mod stubs;
mod tags;
mod traits;
