//! crm-ticketing: tickets from every channel, routed by rules to a queue and assigned to
//! a fitting agent, with SLA clocks on business-hours calendars that escalate on
//! warning and breach.
//!
//! `domain` decides and is pure (table-tested): calendar arithmetic, SLA clocks,
//! routing and assignment.

pub mod domain;
