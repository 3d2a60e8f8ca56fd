//! Scrubbing an erased customer's personal data from tickets: what they wrote and
//! what was written about them goes; the ticket's shape stays (category, channel,
//! priority, queue, assignee, status and every time), so service reports and SLA
//! figures keep counting it.

use std::collections::BTreeMap;

use crm_platform::{
    Error, Result,
    db::{exec, query},
    feed,
};
use crm_proto::crm::ticketing::v1 as pb;
use prost::Message;
use sea_orm::{ConnectionTrait, Value};

/// Empties the personal parts of the tickets of `customers` (resource names), their
/// comments, survey comments and feed payloads, and deletes their knowledge-base
/// deflection queries. Returns the ids of the tickets changed and counts per class;
/// a ticket with nothing personal left is not changed again.
pub async fn scrub_customers<C: ConnectionTrait>(conn: &C, customers: &[String]) -> Result<(Vec<String>, BTreeMap<String, i64>)> {
    let mut counts = BTreeMap::new();
    let mut tickets = Vec::new();
    for customer in customers {
        let rows = query(
            conn,
            "SELECT id, revision, data FROM tickets WHERE customer = ?",
            vec![customer.as_str().into()],
        )
        .await?;
        for r in &rows {
            let id: String = r.try_get("", "id")?;
            let revision: i64 = r.try_get("", "revision")?;
            let data: Vec<u8> = r.try_get("", "data")?;
            let mut t = pb::Ticket::decode(data.as_slice()).map_err(Error::internal)?;
            let personal =
                !(t.subject.is_empty() && t.description.is_empty() && t.custom_fields.is_empty() && t.attachments.is_empty());
            t.subject.clear();
            t.description.clear();
            t.custom_fields.clear();
            t.attachments.clear();
            let comments = scrub_comments(conn, &id).await?;
            let surveys = scrub_survey(conn, &id).await?;
            let events = i64::try_from(feed::empty_payloads(conn, &format!("tickets/{id}")).await?).unwrap_or(i64::MAX);
            if !personal && comments == 0 && surveys == 0 && events == 0 {
                continue;
            }
            exec(
                conn,
                "UPDATE tickets SET data = ?, revision = ? WHERE id = ?",
                vec![Value::from(t.encode_to_vec()), (revision + 1).into(), id.as_str().into()],
            )
            .await?;
            *counts.entry("tickets".into()).or_insert(0) += 1;
            *counts.entry("comments".into()).or_insert(0) += comments;
            *counts.entry("surveys".into()).or_insert(0) += surveys;
            *counts.entry("events".into()).or_insert(0) += events;
            tickets.push(id);
        }
        let n = exec(
            conn,
            "DELETE FROM deflections WHERE customer = ?",
            vec![customer.as_str().into()],
        )
        .await?;
        *counts.entry("deflections".into()).or_insert(0) += i64::try_from(n).unwrap_or(i64::MAX);
    }
    counts.retain(|_, n| *n > 0);
    Ok((tickets, counts))
}

async fn scrub_comments<C: ConnectionTrait>(conn: &C, ticket: &str) -> Result<i64> {
    let rows = query(
        conn,
        "SELECT seq, data FROM comments WHERE ticket_id = ?",
        vec![ticket.into()],
    )
    .await?;
    let mut n = 0;
    for r in &rows {
        let seq: i64 = r.try_get("", "seq")?;
        let data: Vec<u8> = r.try_get("", "data")?;
        let mut c = pb::Comment::decode(data.as_slice()).map_err(Error::internal)?;
        if c.body.is_empty() && c.attachments.is_empty() {
            continue;
        }
        c.body.clear();
        c.attachments.clear();
        exec(
            conn,
            "UPDATE comments SET data = ? WHERE ticket_id = ? AND seq = ?",
            vec![Value::from(c.encode_to_vec()), ticket.into(), seq.into()],
        )
        .await?;
        n += 1;
    }
    Ok(n)
}

async fn scrub_survey<C: ConnectionTrait>(conn: &C, ticket: &str) -> Result<i64> {
    let rows = query(conn, "SELECT data FROM surveys WHERE ticket_id = ?", vec![ticket.into()]).await?;
    let Some(r) = rows.first() else { return Ok(0) };
    let data: Vec<u8> = r.try_get("", "data")?;
    let mut s = pb::SurveyResponse::decode(data.as_slice()).map_err(Error::internal)?;
    if s.comment.is_empty() {
        return Ok(0);
    }
    s.comment.clear();
    exec(
        conn,
        "UPDATE surveys SET data = ? WHERE ticket_id = ?",
        vec![Value::from(s.encode_to_vec()), ticket.into()],
    )
    .await?;
    Ok(1)
}
