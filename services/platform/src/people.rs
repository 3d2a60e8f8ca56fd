//! Merge chains in a projection of customer-profile's customers.
//!
//! A customer merged into another lives on in it: its history counts for the end of
//! its chain, the *person*. A projection that follows merges keeps a `customers` table
//! with `id`, `merged_into` (NULL when not merged) and `person_id`, and, in each table
//! of rows recorded per customer, `customer_id` and `person_id`. These helpers keep
//! `person_id` right as merges and unmerges arrive, in the caller's transaction.

use std::collections::BTreeSet;

use sea_orm::ConnectionTrait;

use crate::{
    Result,
    db::{exec, in_list, query},
};

/// Merges chain a few levels at most; the bound guards against a cycle.
const MAX_CHAIN: usize = 16;

/// The end of `customer_id`'s merge chain: itself when not merged or unknown.
pub async fn chain_end<C: ConnectionTrait>(conn: &C, customer_id: &str) -> Result<String> {
    let mut current = customer_id.to_owned();
    for _ in 0..MAX_CHAIN {
        let rows = query(
            conn,
            "SELECT merged_into FROM customers WHERE id = ?",
            vec![current.as_str().into()],
        )
        .await?;
        match rows
            .first()
            .map(|r| r.try_get::<Option<String>>("", "merged_into"))
            .transpose()?
        {
            Some(Some(next)) if next != current => current = next,
            _ => break,
        }
    }
    Ok(current)
}

/// After a merge or an unmerge touching `roots`: every customer merged (directly or
/// not) into one of them, and its rows in each of `tables`, count for the end of its
/// chain again. Rows already right are left untouched.
pub async fn reassign<C: ConnectionTrait>(conn: &C, roots: &[String], tables: &[&str]) -> Result<()> {
    let mut family: BTreeSet<String> = roots.iter().cloned().collect();
    let mut frontier: Vec<String> = roots.to_vec();
    while !frontier.is_empty() {
        let refs: Vec<&str> = frontier.iter().map(String::as_str).collect();
        let rows = in_list(conn, "SELECT id FROM customers WHERE id <> ? AND merged_into", "", &refs).await?;
        frontier = Vec::new();
        for r in &rows {
            let id: String = r.try_get("", "id")?;
            if family.insert(id.clone()) {
                frontier.push(id);
            }
        }
    }
    for id in &family {
        let person = chain_end(conn, id).await?;
        for (table, column) in std::iter::once(("customers", "id")).chain(tables.iter().map(|t| (*t, "customer_id"))) {
            exec(
                conn,
                &format!("UPDATE {table} SET person_id = ? WHERE {column} = ? AND person_id <> ?"),
                vec![person.as_str().into(), id.as_str().into(), person.as_str().into()],
            )
            .await?;
        }
    }
    Ok(())
}
