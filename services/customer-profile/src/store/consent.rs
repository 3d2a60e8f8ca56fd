//! Consent: the statement in force per (customer, purpose, channel) and every
//! statement in the order recorded.

use crm_platform::Result;
use sea_orm::{ConnectionTrait, Value};

use super::{exec, query};
use crate::domain::CustomerId;

fn key(c: CustomerId) -> Value {
    c.uuid().to_string().into()
}

/// The statements in force (encoded), by purpose then channel.
pub async fn current<C: ConnectionTrait>(conn: &C, customer: CustomerId) -> Result<Vec<Vec<u8>>> {
    query(
        conn,
        "SELECT data FROM consents WHERE customer_id = ? ORDER BY purpose, channel",
        vec![key(customer)],
    )
    .await?
    .iter()
    .map(|r| Ok(r.try_get("", "data")?))
    .collect()
}

/// The last history sequence number (0 when none): the consent's version.
pub async fn version<C: ConnectionTrait>(conn: &C, customer: CustomerId) -> Result<i64> {
    let rows = query(
        conn,
        "SELECT COALESCE(MAX(seq), 0) AS seq FROM consent_history WHERE customer_id = ?",
        vec![key(customer)],
    )
    .await?;
    Ok(match rows.first() {
        Some(r) => r.try_get("", "seq")?,
        None => 0,
    })
}

/// Appends a statement to the history at `seq`.
pub async fn append<C: ConnectionTrait>(conn: &C, customer: CustomerId, seq: i64, purpose: i32, data: Vec<u8>) -> Result<()> {
    exec(
        conn,
        "INSERT INTO consent_history (customer_id, seq, purpose, data) VALUES (?, ?, ?, ?)",
        vec![key(customer), seq.into(), purpose.into(), data.into()],
    )
    .await?;
    Ok(())
}

/// Puts a statement in force unless the one in force was stated later.
pub async fn put_current<C: ConnectionTrait>(
    conn: &C,
    customer: CustomerId,
    purpose: i32,
    channel: i32,
    effective_us: i64,
    data: Vec<u8>,
) -> Result<()> {
    exec(
        conn,
        "INSERT INTO consents (customer_id, purpose, channel, effective_us, data) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (customer_id, purpose, channel) DO UPDATE SET effective_us = excluded.effective_us, \
         data = excluded.data WHERE consents.effective_us <= excluded.effective_us",
        vec![
            key(customer),
            purpose.into(),
            channel.into(),
            effective_us.into(),
            data.into(),
        ],
    )
    .await?;
    Ok(())
}

/// History newest first below `before_seq`: (seq, data).
pub async fn history<C: ConnectionTrait>(
    conn: &C,
    customer: CustomerId,
    purpose: Option<i32>,
    before_seq: i64,
    limit: u64,
) -> Result<Vec<(i64, Vec<u8>)>> {
    let mut sql = String::from("SELECT seq, data FROM consent_history WHERE customer_id = ? AND seq < ?");
    let mut values = vec![key(customer), before_seq.into()];
    if let Some(p) = purpose {
        sql.push_str(" AND purpose = ?");
        values.push(p.into());
    }
    sql.push_str(" ORDER BY seq DESC LIMIT ?");
    values.push((limit as i64).into());
    query(conn, &sql, values)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("", "seq")?, r.try_get("", "data")?)))
        .collect()
}

/// Serialises consent writes of one customer (PostgreSQL: the customer's row lock;
/// SQLite's single writer already does).
pub async fn lock_customer<C: ConnectionTrait>(conn: &C, customer: CustomerId) -> Result<()> {
    if conn.get_database_backend() == sea_orm::DbBackend::Postgres {
        query(conn, "SELECT id FROM customers WHERE id = ? FOR UPDATE", vec![key(customer)]).await?;
    }
    Ok(())
}
