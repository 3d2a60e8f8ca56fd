//! Tags: the taxonomy (levels through parents) and tags on customers, set by hand
//! with an optional expiry. Every change is an event on this service's feed, in the
//! change's transaction.

use std::collections::BTreeMap;

use crate::rule::deps::TAGS;
use chrono::Utc;
use crm_platform::{
    Error, FieldViolation, Result,
    db::begin_write,
    feed::{self, Feed, NewEvent},
};
use crm_proto::crm::segmentation::v1 as pb;
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection};

use crate::store::{
    self,
    tags::{self as tag_store, Assignment, TagRow},
};

/// Deepest level of the taxonomy.
pub const MAX_LEVEL: i32 = 5;
/// Customers per `TagCustomers` / `UntagCustomers` call.
pub const MAX_CUSTOMERS: usize = 1000;

pub fn etag(revision: i64) -> String {
    format!("\"{revision}\"")
}

/// A stored time (microseconds) as a protobuf timestamp; `None` for 0 (never).
pub fn time(us: i64) -> Option<prost_types::Timestamp> {
    (us > 0)
        .then(|| chrono::DateTime::from_timestamp_micros(us))
        .flatten()
        .map(feed::timestamp)
}

pub fn to_proto(t: &TagRow) -> pb::Tag {
    pb::Tag {
        name: format!("tags/{}", t.id),
        parent: if t.parent.is_empty() {
            String::new()
        } else {
            format!("tags/{}", t.parent)
        },
        level: t.level,
        display_name: t.display_name.clone(),
        description: t.description.clone(),
        create_time: time(t.create_us),
        update_time: time(t.update_us),
        etag: etag(t.revision),
    }
}

pub fn assignment_to_proto(a: &Assignment) -> pb::CustomerTag {
    pb::CustomerTag {
        tag: format!("tags/{}", a.tag_id),
        customer: format!("customers/{}", a.customer_id),
        source: a.source,
        actor: a.actor.clone(),
        assign_time: time(a.assign_us),
        expire_time: a.expire_us.and_then(time),
    }
}

/// A tag id: 1 to 63 of [a-z0-9_-], starting with a letter.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// `tags/{tag}` → `tag`.
pub fn tag_id<'a>(name: &'a str, field: &str) -> Result<&'a str> {
    name.strip_prefix("tags/")
        .filter(|id| valid_id(id))
        .ok_or_else(|| Error::invalid(field, "must be a tag name `tags/{tag}`"))
}

pub(crate) fn check_text(v: &mut Vec<FieldViolation>, field: &str, value: &str, max: usize, required: bool) {
    let n = value.chars().count();
    if required && value.trim().is_empty() {
        v.push(FieldViolation::new(field, "required"));
    } else if n > max {
        v.push(FieldViolation::new(field, format!("at most {max} characters")));
    }
}

fn changed(t: &TagRow, deleted: bool, actor: &str) -> NewEvent {
    NewEvent {
        event_type: "crm.segmentation.v1.TagChanged",
        subject: format!("tags/{}", t.id),
        actor: actor.to_owned(),
        data: pb::TagChanged {
            tag: Some(to_proto(t)),
            deleted,
        }
        .encode_to_vec(),
    }
}

/// The event of customers untagged (in the caller's transaction).
pub async fn untagged<C: ConnectionTrait>(
    conn: &C,
    tag: &str,
    customers: Vec<String>,
    reason: pb::UntagReason,
    actor: &str,
) -> Result<()> {
    if customers.is_empty() {
        return Ok(());
    }
    feed::append(
        conn,
        NewEvent {
            event_type: "crm.segmentation.v1.CustomersUntagged",
            subject: format!("tags/{tag}"),
            actor: actor.to_owned(),
            data: pb::CustomersUntagged {
                tag: format!("tags/{tag}"),
                customers: customers.into_iter().map(|c| format!("customers/{c}")).collect(),
                reason: reason as i32,
            }
            .encode_to_vec(),
        },
    )
    .await
}

/// Removes the tags of erased customers, with their events (in the projection's
/// transaction).
pub async fn remove_erased<C: ConnectionTrait>(conn: &C, ids: &[String]) -> Result<()> {
    let mut by_tag: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in tag_store::on_customers(conn, ids).await? {
        if tag_store::unassign(conn, &a.tag_id, &a.customer_id).await? {
            by_tag.entry(a.tag_id).or_default().push(a.customer_id);
        }
    }
    for (tag, customers) in by_tag {
        untagged(conn, &tag, customers, pb::UntagReason::Erased, crate::SERVICE).await?;
    }
    Ok(())
}

/// The tag use cases.
#[derive(Clone, Debug)]
pub struct Tags {
    db: DatabaseConnection,
    feed: Feed,
    segments: crate::segments::Evaluator,
}

impl Tags {
    pub fn new(db: DatabaseConnection, feed: Feed, segments: crate::segments::Evaluator) -> Self {
        Self { db, feed, segments }
    }

    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    async fn found(&self, conn: &impl ConnectionTrait, id: &str) -> Result<TagRow> {
        tag_store::get(conn, id).await?.ok_or_else(|| Error::NotFound {
            resource_type: "crm.segmentation.v1.Tag",
            name: format!("tags/{id}"),
        })
    }

    pub async fn get(&self, id: &str) -> Result<TagRow> {
        self.found(&self.db, id).await
    }

    pub async fn create(&self, actor: &str, tag_id: &str, tag: &pb::Tag) -> Result<TagRow> {
        let mut v = Vec::new();
        if !valid_id(tag_id) {
            v.push(FieldViolation::new("tag_id", "1 to 63 of [a-z0-9_-], starting with a letter"));
        }
        check_text(&mut v, "tag.display_name", &tag.display_name, 100, true);
        check_text(&mut v, "tag.description", &tag.description, 1000, false);
        let parent = if tag.parent.is_empty() {
            None
        } else {
            match tag_id_of(&tag.parent) {
                Some(p) => Some(p.to_owned()),
                None => {
                    v.push(FieldViolation::new("tag.parent", "must be a tag name `tags/{tag}`"));
                    None
                }
            }
        };
        if !v.is_empty() {
            return Err(Error::InvalidArgument(v));
        }
        let txn = begin_write(&self.db).await?;
        let level = match &parent {
            Some(p) => {
                let parent_row = tag_store::get(&txn, p)
                    .await?
                    .ok_or_else(|| Error::invalid("tag.parent", format!("tags/{p} does not exist")))?;
                if parent_row.level >= MAX_LEVEL {
                    return Err(Error::invalid(
                        "tag.parent",
                        format!("tags/{p} is at level {MAX_LEVEL}, the deepest"),
                    ));
                }
                parent_row.level + 1
            }
            None => 1,
        };
        let now = Utc::now().timestamp_micros();
        let row = TagRow {
            id: tag_id.to_owned(),
            parent: parent.unwrap_or_default(),
            level,
            display_name: tag.display_name.trim().to_owned(),
            description: tag.description.trim().to_owned(),
            revision: 1,
            create_us: now,
            update_us: now,
        };
        if !tag_store::insert(&txn, &row).await? {
            return Err(Error::AlreadyExists {
                resource_type: "crm.segmentation.v1.Tag",
                name: format!("tags/{tag_id}"),
            });
        }
        feed::append(&txn, changed(&row, false, actor)).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(row)
    }

    pub async fn update(&self, actor: &str, patch: &pb::Tag, paths: &[String]) -> Result<TagRow> {
        let id = tag_id(&patch.name, "tag.name")?;
        let mut v = Vec::new();
        crm_platform::mask::check_paths(paths, &["display_name", "description"], &mut v);
        let wants = |f: &str| paths.iter().any(|p| p == f);
        if wants("display_name") {
            check_text(&mut v, "tag.display_name", &patch.display_name, 100, true);
        }
        if wants("description") {
            check_text(&mut v, "tag.description", &patch.description, 1000, false);
        }
        if !v.is_empty() {
            return Err(Error::InvalidArgument(v));
        }
        let txn = begin_write(&self.db).await?;
        let current = self.found(&txn, id).await?;
        if !patch.etag.is_empty() && patch.etag != etag(current.revision) {
            return Err(Error::EtagMismatch {
                name: patch.name.clone(),
            });
        }
        let mut next = current.clone();
        if wants("display_name") {
            next.display_name = patch.display_name.trim().to_owned();
        }
        if wants("description") {
            next.description = patch.description.trim().to_owned();
        }
        if next == current {
            return Ok(current);
        }
        next.revision += 1;
        next.update_us = Utc::now().timestamp_micros();
        if !tag_store::update(&txn, &next, current.revision).await? {
            return Err(Error::EtagMismatch {
                name: patch.name.clone(),
            });
        }
        feed::append(&txn, changed(&next, false, actor)).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(next)
    }

    pub async fn delete(&self, actor: &str, name: &str, etag_value: &str) -> Result<()> {
        let id = tag_id(name, "name")?;
        let txn = begin_write(&self.db).await?;
        let current = self.found(&txn, id).await?;
        if !etag_value.is_empty() && etag_value != etag(current.revision) {
            return Err(Error::EtagMismatch { name: name.to_owned() });
        }
        if let Some(user) = tag_store::first_use(&txn, id).await? {
            return Err(Error::FailedPrecondition {
                reason: "RESOURCE_IN_USE",
                subject: name.to_owned(),
                message: format!("{user} still has this tag: remove it first"),
            });
        }
        if let Some(segment) = crate::store::segments::tagging(&txn, id).await?.first() {
            return Err(Error::FailedPrecondition {
                reason: "RESOURCE_IN_USE",
                subject: name.to_owned(),
                message: format!("segments/{segment} puts this tag on its members: change it first"),
            });
        }
        crate::segments::refuse_if_read(&txn, name, "tag", |rule| rule.tags().iter().any(|t| t == id)).await?;
        tag_store::delete(&txn, id).await?;
        feed::append(&txn, changed(&current, true, actor)).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(())
    }

    pub async fn list(&self, parent: Option<&str>, after: &str, limit: u64) -> Result<Vec<TagRow>> {
        tag_store::list(&self.db, parent, after, limit).await
    }

    /// The customers of `names` (field `customers`), checked: each a customer name,
    /// known to the projection; returned as (customer id, person id).
    async fn resolve(&self, conn: &impl ConnectionTrait, names: &[String]) -> Result<Vec<(String, String)>> {
        if names.is_empty() || names.len() > MAX_CUSTOMERS {
            return Err(Error::invalid("customers", format!("1 to {MAX_CUSTOMERS} customers")));
        }
        let mut v = Vec::new();
        let mut ids = Vec::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            match n.strip_prefix("customers/").filter(|id| !id.is_empty() && !id.contains('/')) {
                Some(id) => ids.push(id.to_owned()),
                None => v.push(FieldViolation::new(
                    format!("customers[{i}]"),
                    "must be `customers/{customer}`",
                )),
            }
        }
        if !v.is_empty() {
            return Err(Error::InvalidArgument(v));
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let people = store::people_of(conn, &refs).await?;
        for (i, id) in ids.iter().enumerate() {
            if !people.contains_key(id) {
                v.push(FieldViolation::new(
                    format!("customers[{i}]"),
                    "not a customer this service knows (unknown, erased, or not yet in its projection)",
                ));
            }
        }
        if !v.is_empty() {
            return Err(Error::InvalidArgument(v));
        }
        Ok(ids
            .into_iter()
            .map(|id| {
                let person = people.get(&id).cloned().unwrap_or_else(|| id.clone());
                (id, person)
            })
            .collect())
    }

    /// Tags the customers (their persons); returns (newly tagged, tagged again).
    pub async fn tag(
        &self,
        actor: &str,
        tag_name: &str,
        customers: &[String],
        expire: Option<&prost_types::Timestamp>,
    ) -> Result<(usize, usize)> {
        let id = tag_id(tag_name, "tag")?;
        let now = Utc::now();
        let expire_us = match expire {
            Some(t) => {
                let at = crm_platform::feed::datetime(t).ok_or_else(|| Error::invalid("expire_time", "not a valid timestamp"))?;
                if at <= now {
                    return Err(Error::invalid("expire_time", "must be in the future"));
                }
                Some(at.timestamp_micros())
            }
            None => None,
        };
        let txn = begin_write(&self.db).await?;
        self.found(&txn, id).await?;
        let mut people: Vec<String> = self.resolve(&txn, customers).await?.into_iter().map(|(_, p)| p).collect();
        people.sort();
        people.dedup();
        let (mut fresh, mut again) = (0, 0);
        for person in &people {
            let new = tag_store::assign(
                &txn,
                &Assignment {
                    tag_id: id.to_owned(),
                    customer_id: person.clone(),
                    source: pb::TagSource::Manual as i32,
                    actor: actor.to_owned(),
                    assign_us: now.timestamp_micros(),
                    expire_us,
                },
            )
            .await?;
            if new { fresh += 1 } else { again += 1 }
        }
        feed::append(
            &txn,
            NewEvent {
                event_type: "crm.segmentation.v1.CustomersTagged",
                subject: format!("tags/{id}"),
                actor: actor.to_owned(),
                data: pb::CustomersTagged {
                    tag: format!("tags/{id}"),
                    customers: people.iter().map(|p| format!("customers/{p}")).collect(),
                    source: pb::TagSource::Manual as i32,
                    expire_time: expire.cloned(),
                }
                .encode_to_vec(),
            },
        )
        .await?;
        self.segments.on_change(&txn, &people, TAGS).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok((fresh, again))
    }

    /// Takes the tag off the customers (their persons); returns how many had it.
    pub async fn untag(&self, actor: &str, tag_name: &str, customers: &[String]) -> Result<usize> {
        let id = tag_id(tag_name, "tag")?;
        let txn = begin_write(&self.db).await?;
        self.found(&txn, id).await?;
        let mut removed = Vec::new();
        for (_, person) in self.resolve(&txn, customers).await? {
            if tag_store::unassign(&txn, id, &person).await? {
                removed.push(person);
            }
        }
        let n = removed.len();
        self.segments.on_change(&txn, &removed, TAGS).await?;
        untagged(&txn, id, removed, pb::UntagReason::Manual, actor).await?;
        txn.commit().await?;
        self.feed.committed();
        Ok(n)
    }

    /// The tags on a customer's person (a merged customer's are its survivor's).
    pub async fn of_customer(&self, name: &str) -> Result<Vec<Assignment>> {
        let (_, person) = self
            .resolve(&self.db, std::slice::from_ref(&name.to_owned()))
            .await
            .map_err(|e| match e {
                // Not a customer name, or none this service knows.
                Error::InvalidArgument(_) => Error::NotFound {
                    resource_type: "crm.customer.v1.Customer",
                    name: name.to_owned(),
                },
                // A database failure stays one: a caller must not take it for "no tags".
                other => other,
            })?
            .remove(0);
        tag_store::of_person(&self.db, &person).await
    }

    /// Removes the tags whose expiry passed, with their events; returns how many.
    pub async fn expire(&self, limit: u64) -> Result<usize> {
        let txn = begin_write(&self.db).await?;
        let due = tag_store::expired(&txn, Utc::now().timestamp_micros(), limit).await?;
        let mut by_tag: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for a in &due {
            if tag_store::unassign(&txn, &a.tag_id, &a.customer_id).await? {
                by_tag.entry(a.tag_id.clone()).or_default().push(a.customer_id.clone());
            }
        }
        let people: Vec<String> = due.iter().map(|a| a.customer_id.clone()).collect();
        self.segments.on_change(&txn, &people, TAGS).await?;
        for (tag, customers) in by_tag {
            untagged(&txn, &tag, customers, pb::UntagReason::Expired, crate::SERVICE).await?;
        }
        txn.commit().await?;
        self.feed.committed();
        Ok(due.len())
    }

    /// Expires tags every `every` until shutdown.
    pub async fn run_expiry(self, every: std::time::Duration, mut shutdown: crm_platform::server::ShutdownSignal) {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(every) => {}
            }
            loop {
                match self.expire(500).await {
                    Ok(n) if n >= 500 => continue,
                    Ok(_) => break,
                    Err(err) => {
                        tracing::warn!(%err, "tag expiry failed; retrying later");
                        break;
                    }
                }
            }
        }
    }
}

fn tag_id_of(name: &str) -> Option<&str> {
    name.strip_prefix("tags/").filter(|id| valid_id(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_ids_are_checked() {
        assert!(valid_id("high-value"));
        assert!(valid_id("value_2"));
        for bad in ["", "High", "1st", "a b", "a/b", &"x".repeat(64)] {
            assert!(!valid_id(bad), "{bad}");
        }
        assert_eq!(tag_id("tags/dormant", "tag").unwrap(), "dormant");
        assert!(tag_id("segments/x", "tag").is_err());
    }
}
