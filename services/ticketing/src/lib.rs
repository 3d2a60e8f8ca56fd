//! crm-ticketing: tickets from every channel, routed by rules to a queue and assigned to
//! a fitting agent, with SLA clocks on business-hours calendars that escalate on
//! warning and breach.
//!
//! `domain` decides and is pure (table-tested): calendar arithmetic, SLA clocks,
//! routing, assignment and escalation. `service` runs the use cases in transactions;
//! `store` persists.

pub mod domain;
pub mod service;
pub mod store;

use crm_platform::{Platform, feed::Feed, migrate};

pub use service::{Settings, Ticketing};

/// Name of the service: binary, database file, schema, event source.
pub const SERVICE: &str = "ticketing";

/// Opens (and migrates, if configured) the database and returns the use cases.
pub async fn open(platform: &Platform, settings: Settings) -> anyhow::Result<Ticketing> {
    let db = platform.database(SERVICE, store::MIGRATIONS).await?;
    let feed = Feed::new(db.clone(), SERVICE, platform.config.feed.clone(), platform.shutdown.clone());
    Ok(Ticketing::new(db, feed, settings))
}

/// Applies pending migrations and reports what it did.
pub async fn migrate(platform: &Platform) -> anyhow::Result<Vec<i64>> {
    let target = platform.database_target(SERVICE);
    let db = crm_platform::db::connect(&target, 2).await?;
    Ok(migrate::run(&db, store::MIGRATIONS).await?)
}
