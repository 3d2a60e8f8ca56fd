//! Merge chains: a customer's rows count for the end of its chain, after merges and
//! unmerges.

use crm_platform::{
    db::{connect, exec, query},
    people::{chain_end, reassign},
    testing::TestDatabase,
};

async fn persons(db: &sea_orm::DatabaseConnection, table: &str, key: &str) -> Vec<(String, String)> {
    query(
        db,
        &format!("SELECT {key} AS k, person_id FROM {table} ORDER BY {key}"),
        vec![],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.try_get("", "k").unwrap(), r.try_get("", "person_id").unwrap()))
    .collect()
}

async fn merge(db: &sea_orm::DatabaseConnection, id: &str, into: Option<&str>) {
    exec(
        db,
        "UPDATE customers SET merged_into = ? WHERE id = ?",
        vec![into.map(str::to_owned).into(), id.into()],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn rows_follow_their_customers_chain_through_merges_and_unmerges() {
    let tdb = TestDatabase::new("people-test").unwrap();
    let db = connect(&tdb.target, 2).await.expect("test database must be reachable");
    for sql in [
        "CREATE TABLE customers (id TEXT PRIMARY KEY, merged_into TEXT, person_id TEXT NOT NULL)",
        "CREATE TABLE orders (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, person_id TEXT NOT NULL)",
        "INSERT INTO customers (id, merged_into, person_id) VALUES ('a', NULL, 'a'), ('b', NULL, 'b'), ('c', NULL, 'c'), ('d', NULL, 'd')",
        "INSERT INTO orders (id, customer_id, person_id) VALUES ('o1', 'a', 'a'), ('o2', 'b', 'b'), ('o3', 'c', 'c'), ('o4', 'd', 'd')",
    ] {
        exec(&db, sql, vec![]).await.unwrap();
    }
    // a into b, then b into c: a's chain ends at c.
    merge(&db, "a", Some("b")).await;
    reassign(&db, &["a".into()], &["orders"]).await.unwrap();
    merge(&db, "b", Some("c")).await;
    reassign(&db, &["b".into()], &["orders"]).await.unwrap();
    assert_eq!(chain_end(&db, "a").await.unwrap(), "c");
    assert_eq!(chain_end(&db, "unknown").await.unwrap(), "unknown");
    let merged = |rows: &[(&str, &str)]| {
        rows.iter()
            .map(|(k, p)| ((*k).to_owned(), (*p).to_owned()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        persons(&db, "customers", "id").await,
        merged(&[("a", "c"), ("b", "c"), ("c", "c"), ("d", "d")])
    );
    assert_eq!(
        persons(&db, "orders", "id").await,
        merged(&[("o1", "c"), ("o2", "c"), ("o3", "c"), ("o4", "d")])
    );
    // b stands alone again: a, merged into it, goes with it.
    merge(&db, "b", None).await;
    reassign(&db, &["b".into()], &["orders"]).await.unwrap();
    assert_eq!(
        persons(&db, "orders", "id").await,
        merged(&[("o1", "b"), ("o2", "b"), ("o3", "c"), ("o4", "d")])
    );
    // A cycle (never sent, but guarded) ends.
    merge(&db, "c", Some("d")).await;
    merge(&db, "d", Some("c")).await;
    reassign(&db, &["c".into()], &["orders"]).await.unwrap();
    let end = chain_end(&db, "c").await.unwrap();
    assert!(end == "c" || end == "d", "{end}");
    let rows = persons(&db, "orders", "id").await;
    assert!(rows.iter().all(|(_, p)| p == "b" || p == "c" || p == "d"), "{rows:?}");
}
