//! Persistence of customers: sea-orm entities, queries and migrations. Takes and
//! returns domain types; the profile body is stored as JSON beside the columns that
//! lists filter and sort on.

pub mod activity;
pub mod consent;
mod entity;
pub mod erasure;
pub mod export;
pub mod keys;
mod migrations;
pub mod records;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use crm_platform::{Error, Result, crypto::Keyring};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, Order, QueryFilter, QueryOrder,
    QuerySelect, sea_query::Query,
};
use serde::{Deserialize, Serialize};

use crate::domain::{
    Customer, CustomerId, Profile,
    customer::{Channel, Email, ExternalId, Phone, Provenance},
    definitions::Definitions,
    filter::{Comparison, Filter, OrderBy, OrderField},
};
use entity::{customer, customer_tag};
pub use keys::{DataKeys, KeySet};
pub use migrations::MIGRATIONS;

pub(crate) use crm_platform::db::{exec, query};

/// Where the previous page ended: the sort value and id of its last row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Position {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    id: String,
}

impl Position {
    pub fn after(customer: &Customer, order: OrderBy) -> Self {
        let (time, text) = match order.field {
            OrderField::CreateTime => (Some(customer.create_time), None),
            OrderField::UpdateTime => (Some(customer.update_time), None),
            OrderField::DisplayName => (None, Some(customer.profile.display_name.clone())),
        };
        Self {
            time,
            text,
            id: customer.id.uuid().to_string(),
        }
    }
}

/// Query parameters of a list.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub filter: Filter,
    pub order: OrderBy,
    pub show_deleted: bool,
    pub after: Option<Position>,
    pub limit: u64,
    /// Only the records the caller may read (in the query, so pages stay full).
    pub scope: crm_platform::authz::ReadScope,
}

/// Seals the sensitive part of a customer on write and opens it on read, under the
/// customer's own data key. Which custom attributes are sensitive comes from the
/// field definitions. Rows sealed under the keyring (before data keys) still open.
#[derive(Clone, Copy)]
pub struct Sealer<'a> {
    pub keyring: &'a Keyring,
    pub definitions: &'a Definitions,
    pub keys: &'a DataKeys,
}

impl Sealer<'_> {
    /// Decodes stored rows, with their customers' keys loaded in one batch.
    async fn decode_all(self, rows: Vec<customer::Model>) -> Result<Vec<Customer>> {
        let sealed: Vec<&str> = rows
            .iter()
            .filter(|m| under_data_key(m.sealed.as_deref()))
            .map(|m| m.id.as_str())
            .collect();
        let keys = self.keys.for_read(&sealed).await?;
        rows.into_iter().map(|m| decode(m, self, &keys)).collect()
    }

    async fn decode_one(self, row: Option<customer::Model>) -> Result<Option<Customer>> {
        Ok(self.decode_all(row.into_iter().collect()).await?.pop())
    }

    /// Encodes customers for writing, creating the data keys of new ones.
    async fn encode_all(self, customers: &[&Customer]) -> Result<Vec<customer::ActiveModel>> {
        let ids: Vec<String> = customers.iter().map(|c| c.id.uuid().to_string()).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let keys = self.keys.for_write(&refs).await?;
        customers.iter().map(|c| encode(c, self, &keys)).collect()
    }
}

/// The columns-and-JSON part of a stored customer.
#[derive(Serialize, Deserialize)]
struct Plain {
    #[serde(flatten)]
    profile: Profile,
    #[serde(default)]
    provenance: BTreeMap<String, Provenance>,
    #[serde(default)]
    external_ids: Vec<ExternalId>,
    #[serde(default)]
    merged_customers: Vec<CustomerId>,
}

/// The sealed part: contacts, street lines, recipients, birth date, national id,
/// sensitive custom attributes, and raw input (which may hold any of them).
#[derive(Serialize, Deserialize, Default)]
struct Secret {
    phones: Vec<Phone>,
    emails: Vec<Email>,
    address_lines: Vec<Vec<String>>,
    recipients: Vec<Vec<String>>,
    birth_date: String,
    national_id: String,
    custom_attributes: BTreeMap<String, String>,
    raw_values: BTreeMap<String, String>,
}

fn split(c: &Customer, defs: &Definitions) -> (Plain, Secret) {
    let mut profile = c.profile.clone();
    let (custom_secret, custom_plain): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut profile.custom_attributes)
        .into_iter()
        .partition(|(k, _)| defs.is_protected_custom(k));
    profile.custom_attributes = custom_plain;
    let secret = Secret {
        phones: std::mem::take(&mut profile.phones),
        emails: std::mem::take(&mut profile.emails),
        address_lines: profile
            .addresses
            .iter_mut()
            .map(|a| std::mem::take(&mut a.postal.address_lines))
            .collect(),
        recipients: profile
            .addresses
            .iter_mut()
            .map(|a| std::mem::take(&mut a.postal.recipients))
            .collect(),
        birth_date: std::mem::take(&mut profile.birth_date),
        national_id: std::mem::take(&mut profile.national_id),
        custom_attributes: custom_secret,
        raw_values: c.raw_values.clone(),
    };
    let plain = Plain {
        profile,
        provenance: c.provenance.clone(),
        external_ids: c.external_ids.clone(),
        merged_customers: c.merged_customers.clone(),
    };
    (plain, secret)
}

pub async fn find<C: ConnectionTrait>(conn: &C, sealer: Sealer<'_>, id: CustomerId) -> Result<Option<Customer>> {
    let row = customer::Entity::find_by_id(id.uuid().to_string()).one(conn).await?;
    sealer.decode_one(row).await
}

/// Customers by id (any order; missing ids left out).
pub async fn find_many<C: ConnectionTrait>(conn: &C, sealer: Sealer<'_>, ids: &[CustomerId]) -> Result<Vec<Customer>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = customer::Entity::find()
        .filter(customer::Column::Id.is_in(ids.iter().map(|id| id.uuid().to_string())))
        .all(conn)
        .await?;
    sealer.decode_all(rows).await
}

/// Reads a customer for a write and locks its row until the transaction ends
/// (PostgreSQL `FOR UPDATE`; on SQLite the write transaction's lock already excludes
/// other writers).
/// Active customers (not deleted, not merged) after id `after`, in id order.
pub async fn scan_active<C: ConnectionTrait>(
    conn: &C,
    sealer: Sealer<'_>,
    after: Option<CustomerId>,
    limit: u64,
) -> Result<Vec<Customer>> {
    let mut select = customer::Entity::find()
        .filter(customer::Column::DeleteTime.is_null())
        .filter(customer::Column::MergedInto.is_null());
    if let Some(after) = after {
        select = select.filter(customer::Column::Id.gt(after.uuid().to_string()));
    }
    let rows = select
        .order_by(customer::Column::Id, Order::Asc)
        .limit(limit)
        .all(conn)
        .await?;
    sealer.decode_all(rows).await
}

pub async fn find_for_update<C: ConnectionTrait>(conn: &C, sealer: Sealer<'_>, id: CustomerId) -> Result<Option<Customer>> {
    let row = customer::Entity::find_by_id(id.uuid().to_string())
        .lock_exclusive()
        .one(conn)
        .await?;
    sealer.decode_one(row).await
}

pub async fn insert<C: ConnectionTrait>(conn: &C, sealer: Sealer<'_>, c: &Customer) -> Result<()> {
    let model = sealer.encode_all(&[c]).await?.pop();
    customer::Entity::insert(model.ok_or_else(|| Error::internal(anyhow::anyhow!("nothing encoded")))?)
        .exec_without_returning(conn)
        .await?;
    insert_tags(conn, c).await
}

/// Inserts new customers with multi-row statements.
pub async fn insert_many<C: ConnectionTrait>(conn: &C, sealer: Sealer<'_>, customers: &[Customer]) -> Result<()> {
    let models = sealer.encode_all(&customers.iter().collect::<Vec<_>>()).await?;
    let size = |m: &customer::ActiveModel| {
        let profile = match &m.profile {
            sea_orm::ActiveValue::Set(p) | sea_orm::ActiveValue::Unchanged(p) => p.len(),
            sea_orm::ActiveValue::NotSet => 0,
        };
        let sealed = match &m.sealed {
            sea_orm::ActiveValue::Set(Some(b)) | sea_orm::ActiveValue::Unchanged(Some(b)) => b.len(),
            _ => 0,
        };
        profile + sealed + 300
    };
    for chunk in crm_platform::db::chunks_by_size(&models, 200, size) {
        customer::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(conn)
            .await?;
    }
    let tags: Vec<customer_tag::ActiveModel> = customers
        .iter()
        .flat_map(|c| {
            let id = c.id.uuid().to_string();
            c.profile.tags.iter().map(move |tag| customer_tag::ActiveModel {
                customer_id: Set(id.clone()),
                tag: Set(tag.clone()),
            })
        })
        .collect();
    for chunk in crm_platform::db::chunks_by_size(&tags, 1000, |_| 100) {
        customer_tag::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(conn)
            .await?;
    }
    Ok(())
}

/// Writes `c` if the stored revision is still `expected_revision`; false when another
/// writer got there first.
pub async fn update<C: ConnectionTrait>(conn: &C, sealer: Sealer<'_>, c: &Customer, expected_revision: i64) -> Result<bool> {
    let model = sealer
        .encode_all(&[c])
        .await?
        .pop()
        .ok_or_else(|| Error::internal(anyhow::anyhow!("nothing encoded")))?;
    let result = customer::Entity::update_many()
        .set(model)
        .filter(customer::Column::Id.eq(c.id.uuid().to_string()))
        .filter(customer::Column::Revision.eq(expected_revision))
        .exec(conn)
        .await?;
    if result.rows_affected == 0 {
        return Ok(false);
    }
    replace_tags(conn, c).await?;
    Ok(true)
}

async fn replace_tags<C: ConnectionTrait>(conn: &C, c: &Customer) -> Result<()> {
    customer_tag::Entity::delete_many()
        .filter(customer_tag::Column::CustomerId.eq(c.id.uuid().to_string()))
        .exec(conn)
        .await?;
    insert_tags(conn, c).await
}

async fn insert_tags<C: ConnectionTrait>(conn: &C, c: &Customer) -> Result<()> {
    let id = c.id.uuid().to_string();
    if c.profile.tags.is_empty() {
        return Ok(());
    }
    let rows = c.profile.tags.iter().map(|tag| customer_tag::ActiveModel {
        customer_id: Set(id.clone()),
        tag: Set(tag.clone()),
    });
    customer_tag::Entity::insert_many(rows).exec_without_returning(conn).await?;
    Ok(())
}

pub async fn list(db: &DatabaseConnection, sealer: Sealer<'_>, q: &ListQuery) -> Result<Vec<Customer>> {
    let mut select = customer::Entity::find().filter(customer::Column::MergedInto.is_null());
    if !q.show_deleted {
        select = select.filter(customer::Column::DeleteTime.is_null());
    }
    if !q.scope.all {
        let s = &q.scope;
        let ids: Vec<&str> = s.resources.iter().filter_map(|r| r.strip_prefix("customers/")).collect();
        select = select.filter(
            Condition::any()
                .add(customer::Column::OwnerUserId.is_in(s.owner_user_ids.iter().map(String::as_str)))
                .add(customer::Column::TeamId.is_in(s.team_ids.iter().map(String::as_str)))
                .add(customer::Column::Id.is_in(ids)),
        );
    }
    let f = &q.filter;
    if let Some(stage) = f.lifecycle_stage {
        select = select.filter(customer::Column::LifecycleStage.eq(stage.as_str()));
    }
    if let Some(owner) = &f.owner_user_id {
        select = select.filter(customer::Column::OwnerUserId.eq(owner.as_str()));
    }
    if let Some(team) = &f.team_id {
        select = select.filter(customer::Column::TeamId.eq(team.as_str()));
    }
    for tag in &f.tags {
        select = select.filter(
            customer::Column::Id.in_subquery(
                Query::select()
                    .column(customer_tag::Column::CustomerId)
                    .from(customer_tag::Entity)
                    .and_where(customer_tag::Column::Tag.eq(tag.as_str()))
                    .to_owned(),
            ),
        );
    }
    for (cmp, at) in &f.update_time {
        let col = customer::Column::UpdateTime;
        select = select.filter(match cmp {
            Comparison::Lt => col.lt(*at),
            Comparison::Le => col.lte(*at),
            Comparison::Gt => col.gt(*at),
            Comparison::Ge => col.gte(*at),
            Comparison::Eq => col.eq(*at),
        });
    }
    let column = match q.order.field {
        OrderField::CreateTime => customer::Column::CreateTime,
        OrderField::UpdateTime => customer::Column::UpdateTime,
        OrderField::DisplayName => customer::Column::DisplayName,
    };
    if let Some(after) = &q.after {
        let value: sea_orm::Value = match (&after.time, &after.text) {
            (Some(t), _) => (*t).into(),
            (None, Some(s)) => s.clone().into(),
            (None, None) => return Err(Error::invalid("page_token", "not a page token issued for this query")),
        };
        let id = customer::Column::Id;
        let keyset = if q.order.descending {
            Condition::any()
                .add(column.lt(value.clone()))
                .add(Condition::all().add(column.eq(value)).add(id.lt(after.id.as_str())))
        } else {
            Condition::any()
                .add(column.gt(value.clone()))
                .add(Condition::all().add(column.eq(value)).add(id.gt(after.id.as_str())))
        };
        select = select.filter(keyset);
    }
    let order = if q.order.descending { Order::Desc } else { Order::Asc };
    let rows = select
        .order_by(column, order.clone())
        .order_by(customer::Column::Id, order)
        .limit(q.limit)
        .all(db)
        .await?;
    sealer.decode_all(rows).await
}

fn under_data_key(sealed: Option<&[u8]>) -> bool {
    sealed.and_then(crm_platform::crypto::key_id) == Some(crm_platform::crypto::DATA_KEY_ID)
}

fn encode(c: &Customer, sealer: Sealer<'_>, keys: &KeySet) -> Result<customer::ActiveModel> {
    let (plain, secret) = split(c, sealer.definitions);
    let profile = serde_json::to_string(&plain).map_err(Error::internal)?;
    let secret = serde_json::to_vec(&secret).map_err(Error::internal)?;
    let id = c.id.uuid().to_string();
    let key = keys
        .get(&id)
        .ok_or_else(|| Error::internal(anyhow::anyhow!("customer {id}: no data key to seal with")))?;
    let sealed = key.seal(&secret, id.as_bytes())?;
    Ok(customer::ActiveModel {
        sealed: Set(Some(sealed)),
        key_id: Set(crm_platform::crypto::DATA_KEY_ID.to_owned()),
        confirm_time: Set(Some(c.confirm_time)),
        merged_into: Set(c.merged_into.map(|m| m.uuid().to_string())),
        reminder_time: sea_orm::ActiveValue::NotSet,
        id: Set(c.id.uuid().to_string()),
        kind: Set(label(&c.profile.kind)?),
        display_name: Set(c.profile.display_name.clone()),
        lifecycle_stage: Set(c.profile.lifecycle_stage.as_str().to_owned()),
        owner_user_id: Set(c.profile.owner_user_id.clone()),
        team_id: Set(c.profile.team_id.clone()),
        source_channel: Set(label(&c.source_channel)?),
        profile: Set(profile),
        revision: Set(c.revision),
        create_time: Set(c.create_time),
        update_time: Set(c.update_time),
        delete_time: Set(c.delete_time),
    })
}

/// The serde name of a unit enum variant, for text columns.
fn label<T: Serialize>(value: &T) -> Result<String> {
    match serde_json::to_value(value).map_err(Error::internal)? {
        serde_json::Value::String(s) => Ok(s),
        other => Err(Error::internal(anyhow::anyhow!("not a unit variant: {other}"))),
    }
}

fn decode(m: customer::Model, sealer: Sealer<'_>, keys: &KeySet) -> Result<Customer> {
    let plain: Plain =
        serde_json::from_str(&m.profile).map_err(|e| Error::internal(anyhow::anyhow!("customer {}: profile: {e}", m.id)))?;
    let mut profile = plain.profile;
    let mut raw_values = BTreeMap::new();
    // Rows written before encryption (schema v1) have no sealed part yet: their
    // sensitive fields are still in the JSON until the re-encryption job runs.
    if let Some(sealed) = &m.sealed {
        // The value names its key (the `key_id` column may be blanked to ask for a re-seal).
        let bytes = if under_data_key(Some(sealed)) {
            let key = keys.get(&m.id).ok_or_else(|| {
                Error::internal(anyhow::anyhow!(
                    "customer {}: its data key is not in the key store (erased, or the key store is not this data's)",
                    m.id
                ))
            })?;
            key.open(sealed, m.id.as_bytes())?
        } else {
            sealer.keyring.open(sealed, m.id.as_bytes())?
        };
        let secret: Secret = serde_json::from_slice(&bytes)
            .map_err(|e| Error::internal(anyhow::anyhow!("customer {}: sealed part: {e}", m.id)))?;
        profile.phones = secret.phones;
        profile.emails = secret.emails;
        for ((a, lines), recipients) in profile.addresses.iter_mut().zip(secret.address_lines).zip(secret.recipients) {
            a.postal.address_lines = lines;
            a.postal.recipients = recipients;
        }
        profile.birth_date = secret.birth_date;
        profile.national_id = secret.national_id;
        profile.custom_attributes.extend(secret.custom_attributes);
        raw_values = secret.raw_values;
    }
    let parse_id = |text: &str| {
        uuid::Uuid::parse_str(text)
            .map(CustomerId::from_uuid)
            .map_err(|e| Error::internal(anyhow::anyhow!("customer id {text}: {e}")))
    };
    let id = uuid::Uuid::parse_str(&m.id).map_err(|e| Error::internal(anyhow::anyhow!("customer id {}: {e}", m.id)))?;
    let source_channel: Channel = serde_json::from_value(serde_json::Value::String(m.source_channel.clone()))
        .map_err(|e| Error::internal(anyhow::anyhow!("customer {}: source_channel: {e}", m.id)))?;
    Ok(Customer {
        id: CustomerId::from_uuid(id),
        profile,
        source_channel,
        external_ids: plain.external_ids,
        provenance: plain.provenance,
        raw_values,
        confirm_time: m.confirm_time.unwrap_or(m.update_time),
        merged_customers: plain.merged_customers,
        merged_into: m.merged_into.as_deref().map(parse_id).transpose()?,
        completeness: 0.0,
        revision: m.revision,
        create_time: m.create_time,
        update_time: m.update_time,
        delete_time: m.delete_time,
    })
}
