//! The rules of the permissions service, pure and unit-tested: policy evaluation
//! and the audit hash chain.

pub mod chain;
pub mod policy;
pub mod resources;
