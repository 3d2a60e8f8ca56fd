//! The contacts and names a message needs, kept per customer from customer-profile's
//! feed and sealed at rest with the service's keyring. Only what the feed showed
//! this service in clear is kept: a masked contact is no contact.

use std::sync::Arc;

use crm_platform::{
    Error, Result,
    crypto::Keyring,
    db::{any_of, exec, query},
};
use crm_proto::crm::customer::v1 as cpb;
use sea_orm::ConnectionTrait;
use serde::{Deserialize, Serialize};

use super::Channel;

/// What a message may be addressed to and say about one customer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub display_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub given_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub family_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub email: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phone: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub wechat: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub push: String,
}

impl Contact {
    /// The address for `channel`, if known.
    pub fn address(&self, channel: Channel) -> Option<&str> {
        let a = match channel {
            Channel::Email => &self.email,
            Channel::Sms => &self.phone,
            Channel::Wechat => &self.wechat,
            Channel::Push => &self.push,
        };
        (!a.is_empty()).then_some(a.as_str())
    }

    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Reads contacts out of customers and keeps them sealed.
#[derive(Clone)]
pub struct Contacts {
    keyring: Arc<Keyring>,
    wechat_source: String,
    push_source: String,
}

impl std::fmt::Debug for Contacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contacts").finish_non_exhaustive()
    }
}

impl Contacts {
    pub fn new(keyring: Arc<Keyring>, wechat_source: &str, push_source: &str) -> Self {
        Self {
            keyring,
            wechat_source: wechat_source.to_owned(),
            push_source: push_source.to_owned(),
        }
    }

    /// The contact of a customer as the feed showed it.
    pub fn of(&self, c: &cpb::Customer) -> Contact {
        let shown = |path: &str| !c.redacted_fields.iter().any(|f| f == path);
        let primary_email = c
            .email_addresses
            .iter()
            .find(|e| e.primary)
            .or(c.email_addresses.first())
            .map(|e| e.address.clone());
        let mobile = c
            .phone_numbers
            .iter()
            .filter(|p| p.r#type == cpb::PhoneType::Mobile as i32 || p.r#type == cpb::PhoneType::Unspecified as i32)
            .max_by_key(|p| p.primary)
            .map(|p| p.number.clone());
        let external = |source: &str| {
            c.external_ids
                .iter()
                .find(|e| e.source == source)
                .map(|e| e.external_id.clone())
                .unwrap_or_default()
        };
        let name = c.person_name.clone().unwrap_or_default();
        Contact {
            display_name: if shown("display_name") {
                c.display_name.clone()
            } else {
                String::new()
            },
            given_name: if shown("person_name.given_name") {
                name.given_name
            } else {
                String::new()
            },
            family_name: if shown("person_name.family_name") {
                name.family_name
            } else {
                String::new()
            },
            email: primary_email.filter(|_| shown("email_addresses")).unwrap_or_default(),
            phone: mobile.filter(|_| shown("phone_numbers")).unwrap_or_default(),
            wechat: if shown("external_ids") {
                external(&self.wechat_source)
            } else {
                String::new()
            },
            push: if shown("external_ids") {
                external(&self.push_source)
            } else {
                String::new()
            },
        }
    }

    /// Stores (or, when there is nothing to keep, removes) a customer's contact.
    pub async fn save<C: ConnectionTrait>(&self, conn: &C, customer_id: &str, contact: &Contact, at_us: i64) -> Result<()> {
        if contact.is_empty() {
            exec(conn, "DELETE FROM contacts WHERE customer_id = ?", vec![customer_id.into()]).await?;
            return Ok(());
        }
        let json = serde_json::to_vec(contact).map_err(Error::internal)?;
        let sealed = self.keyring.seal(&json, customer_id.as_bytes())?;
        exec(
            conn,
            "INSERT INTO contacts (customer_id, sealed, update_us) VALUES (?, ?, ?) \
             ON CONFLICT (customer_id) DO UPDATE SET sealed = excluded.sealed, update_us = excluded.update_us",
            vec![customer_id.into(), sealed.into(), at_us.into()],
        )
        .await?;
        Ok(())
    }

    /// Stores many at once (the benchmark's fill); same effect as [`Contacts::save`].
    pub fn seal(&self, customer_id: &str, contact: &Contact) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(contact).map_err(Error::internal)?;
        self.keyring.seal(&json, customer_id.as_bytes())
    }

    /// The contacts of `ids` that are known.
    pub async fn load<C: ConnectionTrait>(&self, conn: &C, ids: &[&str]) -> Result<std::collections::HashMap<String, Contact>> {
        let (cond, values) = any_of(conn.get_database_backend(), "customer_id", ids);
        let rows = query(
            conn,
            &format!("SELECT customer_id, sealed FROM contacts WHERE {cond}"),
            values,
        )
        .await?;
        let mut out = std::collections::HashMap::new();
        for r in rows {
            let id: String = r.try_get("", "customer_id")?;
            let sealed: Vec<u8> = r.try_get("", "sealed")?;
            let json = self.keyring.open(&sealed, id.as_bytes())?;
            let contact: Contact = serde_json::from_slice(&json).map_err(Error::internal)?;
            out.insert(id, contact);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> Arc<Keyring> {
        let cfg = crm_platform::crypto::EncryptionConfig {
            active_key: "k1".into(),
            keys: [("k1".to_owned(), "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_owned())].into(),
            blind_index_key: "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
        };
        Arc::new(Keyring::from_config(&cfg).unwrap())
    }

    #[test]
    fn masked_contacts_are_not_kept() {
        let contacts = Contacts::new(keyring(), "wechat", "app");
        let mut c = cpb::Customer {
            display_name: "Li Na".into(),
            email_addresses: vec![
                cpb::EmailAddress {
                    address: "old@example.com".into(),
                    ..Default::default()
                },
                cpb::EmailAddress {
                    address: "li@example.com".into(),
                    primary: true,
                    ..Default::default()
                },
            ],
            phone_numbers: vec![cpb::PhoneNumber {
                number: "+8613800138000".into(),
                r#type: cpb::PhoneType::Mobile as i32,
                ..Default::default()
            }],
            external_ids: vec![cpb::ExternalId {
                source: "wechat".into(),
                external_id: "o6_bmjrPTlm6_2sgVt7hMZOPfL2M".into(),
            }],
            ..Default::default()
        };
        let all = contacts.of(&c);
        assert_eq!(all.email, "li@example.com");
        assert_eq!(all.address(Channel::Sms), Some("+8613800138000"));
        assert_eq!(all.address(Channel::Wechat), Some("o6_bmjrPTlm6_2sgVt7hMZOPfL2M"));
        assert_eq!(all.address(Channel::Push), None);
        c.redacted_fields = vec!["email_addresses".into(), "phone_numbers".into()];
        let masked = contacts.of(&c);
        assert_eq!((masked.email.as_str(), masked.phone.as_str()), ("", ""));
        assert_eq!(masked.display_name, "Li Na");
        let sealed = contacts.seal("c1", &all).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("li@example.com"));
    }
}
