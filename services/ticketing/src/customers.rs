//! The customer's tier, read from customer-profile (the custom attribute
//! `ticketing.tier_attribute`) when a ticket arrives without one, so routing rules
//! and SLA policies can select on it. A slow or failing lookup never fails the
//! ticket: it is created without a tier and its history says why.

use std::time::Duration;

use crm_platform::{Platform, authz::ServiceCredentials};
use crm_proto::crm::customer::v1::{GetCustomerRequest, customer_profile_service_client::CustomerProfileServiceClient};
use tonic::transport::Channel;

use crate::SERVICE;

#[derive(Debug, Clone)]
pub struct CustomerTiers {
    client: CustomerProfileServiceClient<Channel>,
    credentials: ServiceCredentials,
    attribute: String,
}

/// What the lookup found, in words for the ticket's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tier {
    Found(String),
    /// The customer has no such attribute.
    None,
    /// customer-profile could not say (down, slow, refused, masked).
    Unknown(String),
}

impl CustomerTiers {
    /// Calls customer-profile at `url` as this service's account.
    pub fn connect(platform: &Platform, url: &str, ca_path: &str, attribute: &str, timeout: Duration) -> anyhow::Result<Self> {
        let channel = crm_platform::authz::client_channel(url, ca_path, timeout)?;
        Ok(Self {
            client: CustomerProfileServiceClient::new(channel),
            credentials: ServiceCredentials::from_config(&platform.config, SERVICE)?,
            attribute: attribute.to_owned(),
        })
    }

    pub async fn tier(&self, customer: &str) -> Tier {
        let req = match self.credentials.request(GetCustomerRequest {
            name: customer.to_owned(),
        }) {
            Ok(r) => r,
            Err(e) => return Tier::Unknown(e.to_string()),
        };
        match self.client.clone().get_customer(req).await {
            Ok(found) => {
                let c = found.into_inner();
                let path = format!("custom_attributes.{}", self.attribute);
                if c.redacted_fields.contains(&path) {
                    return Tier::Unknown(format!("{path} is classified above the {SERVICE} account's clearance"));
                }
                match c.custom_attributes.get(&self.attribute) {
                    Some(t) if !t.trim().is_empty() => Tier::Found(t.trim().to_lowercase()),
                    _ => Tier::None,
                }
            }
            Err(s) if s.code() == tonic::Code::NotFound => Tier::None,
            Err(s) => Tier::Unknown(format!("customer-profile answered {:?}: {}", s.code(), s.message())),
        }
    }
}
