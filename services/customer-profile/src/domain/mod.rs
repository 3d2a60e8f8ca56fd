//! The rules of a customer profile: what a valid customer is, how input is normalised,
//! how a field-mask update merges, and how list queries are expressed. Pure code: no
//! database, no gRPC.

pub mod combine;
pub mod customer;
pub mod definitions;
pub mod enrichment;
pub mod filter;
pub mod import;
pub mod matching;
pub mod normalize;
pub mod update;

pub use customer::{Customer, CustomerId, Profile};
