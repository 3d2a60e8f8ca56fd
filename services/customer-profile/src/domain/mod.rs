//! The rules of a customer profile: what a valid customer is, how input is normalised,
//! how a field-mask update merges, and how list queries are expressed. Pure code: no
//! database, no gRPC.

pub mod customer;
pub mod filter;
pub mod normalize;
pub mod update;

pub use customer::{Customer, CustomerId, Profile};
