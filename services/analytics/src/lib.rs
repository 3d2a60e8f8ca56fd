//! crm-analytics: the analytics service's domain code. So far the customer-base models
//! behind churn and lifetime value ([`clv`]); the service around them follows.

pub mod clv;
