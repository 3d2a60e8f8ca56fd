//! Pure decisions of the ticketing service: no I/O, no clock reads (times are passed in).

pub mod calendar;
pub mod escalation;
pub mod routing;
pub mod search;
pub mod sla;
pub mod ticket;
