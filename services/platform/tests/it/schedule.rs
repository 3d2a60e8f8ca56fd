//! Periodic jobs: one claimant per period; a lost lease cannot complete.

use std::time::Duration;

use crm_platform::{
    db::connect,
    migrate::{self, Migration},
    schedule::{claim, completing, release, status},
    testing::TestDatabase,
};

const SCHEDULES_ONLY: &[Migration] = &[Migration {
    version: 1,
    name: "schedules",
    up: crm_platform::schedule::migration_sql,
}];

#[tokio::test]
async fn one_claimant_per_period_and_a_lost_lease_cannot_complete() {
    let tdb = TestDatabase::new("schedule-test").unwrap();
    let db = connect(&tdb.target, 4).await.expect("test database must be reachable");
    migrate::run(&db, SCHEDULES_ONLY).await.unwrap();
    let minute = Duration::from_secs(60);
    let a = claim(&db, "fit", "a", 1_000, minute, false)
        .await
        .unwrap()
        .expect("due at once");
    assert!(
        claim(&db, "fit", "b", 2_000, minute, false).await.unwrap().is_none(),
        "a holds the lease"
    );
    assert!(
        claim(&db, "fit", "b", 2_000, minute, true).await.unwrap().is_none(),
        "forcing respects a live lease"
    );
    // a stalls past its lease; b takes over and completes; a may not.
    let b = claim(&db, "fit", "b", 1_000 + 61_000_000, minute, false)
        .await
        .unwrap()
        .expect("lease expired");
    let txn = completing(&db, &b, 500_000_000, 62_000_000).await.unwrap();
    txn.expect("b holds the lease").commit().await.unwrap();
    assert!(completing(&db, &a, 500_000_000, 63_000_000).await.unwrap().is_none());
    let s = status(&db, "fit").await.unwrap().unwrap();
    assert_eq!((s.runs, s.due_us, s.running), (1, 500_000_000, false));
    // Not due before its time, unless forced; due after.
    assert!(claim(&db, "fit", "c", 100_000_000, minute, false).await.unwrap().is_none());
    let c = claim(&db, "fit", "c", 100_000_000, minute, true)
        .await
        .unwrap()
        .expect("forced");
    release(&db, &c).await.unwrap();
    assert!(claim(&db, "fit", "d", 500_000_000, minute, false).await.unwrap().is_some());
}
