//! Erasure: removing a customer's personal data from this service's tables, and the
//! erasure records that remain. Runs inside one write transaction.

use std::collections::BTreeMap;

use crm_platform::{
    Error, Result,
    db::{exec, in_list, query},
    feed,
};
use crm_proto::crm::customer::v1 as pb;
use prost::Message;
use sea_orm::{ConnectionTrait, Value};

/// The erasure record of a customer id (any member of an erased family).
pub async fn find<C: ConnectionTrait>(conn: &C, customer_id: &str) -> Result<Option<pb::Erasure>> {
    let rows = query(
        conn,
        "SELECT data FROM erasures WHERE customer_id = ?",
        vec![customer_id.into()],
    )
    .await?;
    rows.first()
        .map(|r| {
            let data: Vec<u8> = r.try_get("", "data")?;
            pb::Erasure::decode(data.as_slice()).map_err(Error::internal)
        })
        .transpose()
}

/// Which of `ids` have an erasure record.
pub async fn recorded<C: ConnectionTrait>(conn: &C, ids: &[&str]) -> Result<std::collections::HashSet<String>> {
    let rows = in_list(
        conn,
        "SELECT customer_id FROM erasures WHERE customer_id > ? AND customer_id",
        "",
        ids,
    )
    .await?;
    rows.iter().map(|r| Ok(r.try_get("", "customer_id")?)).collect()
}

/// Claims the erasure of `customer_id`: false when it is recorded already.
pub async fn record<C: ConnectionTrait>(conn: &C, customer_id: &str, erase_us: i64, erasure: &pb::Erasure) -> Result<bool> {
    let n = exec(
        conn,
        "INSERT INTO erasures (customer_id, erase_us, data) VALUES (?, ?, ?) ON CONFLICT (customer_id) DO NOTHING",
        vec![customer_id.into(), erase_us.into(), erasure.encode_to_vec().into()],
    )
    .await?;
    Ok(n == 1)
}

/// Stores (or replaces) the erasure record of `customer_id`.
pub async fn save<C: ConnectionTrait>(conn: &C, customer_id: &str, erase_us: i64, erasure: &pb::Erasure) -> Result<()> {
    exec(
        conn,
        "INSERT INTO erasures (customer_id, erase_us, data) VALUES (?, ?, ?) \
         ON CONFLICT (customer_id) DO UPDATE SET data = excluded.data",
        vec![customer_id.into(), erase_us.into(), erasure.encode_to_vec().into()],
    )
    .await?;
    Ok(())
}

/// Erasure records older than `before_us`: how many, or (not `dry_run`) deleted.
pub async fn purge_records<C: ConnectionTrait>(conn: &C, before_us: i64, dry_run: bool) -> Result<i64> {
    crm_platform::db::count_or_delete(conn, "erasures", "erase_us < ?", vec![before_us.into()], dry_run).await
}

/// Removes the personal data of the customers `ids` (uuid text) and returns what went,
/// per data class. Orders stay: they hold no personal data, and their totals stay in
/// revenue figures. Interactions stay without their properties (free-form, they may
/// hold anything). Events about the customers keep their type, subject, time and
/// actor; their payloads are emptied.
pub async fn scrub<C: ConnectionTrait>(conn: &C, ids: &[&str]) -> Result<BTreeMap<String, i64>> {
    let mut removed = BTreeMap::new();
    let names: Vec<String> = ids.iter().map(|id| format!("customers/{id}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let mut delete = async |class: &str, sql: &str, values: &[&str]| -> Result<()> {
        let mut n = 0;
        for id in values {
            n += exec(conn, sql, vec![(*id).into()]).await?;
        }
        *removed.entry(class.to_owned()).or_insert(0) += count(n);
        Ok(())
    };
    delete("customers", "DELETE FROM customers WHERE id = ?", ids).await?;
    delete("tags", "DELETE FROM customer_tags WHERE customer_id = ?", ids).await?;
    delete("blind_indexes", "DELETE FROM customer_keys WHERE customer_id = ?", ids).await?;
    delete("external_ids", "DELETE FROM customer_external_ids WHERE customer_id = ?", ids).await?;
    delete(
        "duplicate_candidates",
        "DELETE FROM duplicate_candidates WHERE customer_id = ?",
        ids,
    )
    .await?;
    delete(
        "duplicate_candidates",
        "DELETE FROM duplicate_candidates WHERE other_customer_id = ?",
        ids,
    )
    .await?;
    // A merge's before-images hold every member: the whole merge goes.
    delete(
        "merges",
        "DELETE FROM merges WHERE id IN (SELECT merge_id FROM merge_members WHERE customer_id = ?)",
        ids,
    )
    .await?;
    delete("merges", "DELETE FROM merges WHERE survivor_id = ?", ids).await?;
    exec(
        conn,
        "DELETE FROM merge_members WHERE merge_id NOT IN (SELECT id FROM merges)",
        vec![],
    )
    .await?;
    delete("consents", "DELETE FROM consents WHERE customer_id = ?", ids).await?;
    delete("consent_history", "DELETE FROM consent_history WHERE customer_id = ?", ids).await?;
    delete("exports", "DELETE FROM export_jobs WHERE customer_id = ?", ids).await?;
    delete(
        "enrichment_requests",
        "DELETE FROM enrichment_requests WHERE customer_id = ?",
        ids,
    )
    .await?;
    delete("import_rows", "DELETE FROM import_rows WHERE customer = ?", &name_refs).await?;
    delete(
        "idempotency_keys",
        "DELETE FROM idempotency_keys WHERE resource_name = ?",
        &name_refs,
    )
    .await?;
    removed.insert("interactions".into(), scrub_interactions(conn, ids).await?);
    let mut events = 0;
    for name in &name_refs {
        events += feed::empty_payloads(conn, name).await?;
    }
    removed.insert("events".into(), count(events));
    removed.retain(|_, n| *n > 0);
    Ok(removed)
}

/// Empties the properties of the customers' interactions; returns how many changed.
async fn scrub_interactions<C: ConnectionTrait>(conn: &C, ids: &[&str]) -> Result<i64> {
    let mut changed = 0;
    for id in ids {
        let mut after = (i64::MIN, String::new());
        loop {
            let rows = query(
                conn,
                "SELECT id, occur_us, data FROM interactions WHERE customer_id = ? AND (occur_us > ? OR (occur_us = ? AND id > ?)) \
                 ORDER BY occur_us, id LIMIT 500",
                vec![(*id).into(), after.0.into(), after.0.into(), after.1.clone().into()],
            )
            .await?;
            let Some(last) = rows.last() else { break };
            after = (last.try_get("", "occur_us")?, last.try_get("", "id")?);
            for r in &rows {
                let data: Vec<u8> = r.try_get("", "data")?;
                let mut i = pb::Interaction::decode(data.as_slice()).map_err(Error::internal)?;
                if i.properties.is_empty() {
                    continue;
                }
                i.properties.clear();
                let row_id: String = r.try_get("", "id")?;
                let occur_us: i64 = r.try_get("", "occur_us")?;
                exec(
                    conn,
                    "UPDATE interactions SET data = ? WHERE id = ? AND occur_us = ?",
                    vec![Value::from(i.encode_to_vec()), row_id.into(), occur_us.into()],
                )
                .await?;
                changed += 1;
            }
        }
    }
    Ok(changed)
}

/// Leads and prospects never converted (no order) that were closed (deleted) before
/// `cutoff`: ids, up to `limit`.
pub async fn closed_leads<C: ConnectionTrait>(
    conn: &C,
    cutoff: chrono::DateTime<chrono::Utc>,
    limit: u64,
) -> Result<Vec<String>> {
    let rows = query(
        conn,
        "SELECT c.id FROM customers c WHERE c.lifecycle_stage IN ('lead', 'prospect') AND c.merged_into IS NULL \
         AND c.delete_time IS NOT NULL AND c.delete_time < ? \
         AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id) ORDER BY c.id LIMIT ?",
        vec![cutoff.into(), i64::try_from(limit).unwrap_or(i64::MAX).into()],
    )
    .await?;
    rows.iter().map(|r| Ok(r.try_get("", "id")?)).collect()
}
