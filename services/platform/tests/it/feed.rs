use std::{collections::HashSet, sync::Arc, time::Duration};

use crm_platform::{
    config::FeedConfig,
    db::{begin_write, connect},
    feed::{self, Cursor, Feed, NewEvent},
    migrate::{self, Migration},
    server::{Shutdown, shutdown_channel},
    testing::TestDatabase,
};
use sea_orm::{DatabaseConnection, TransactionTrait};

const FEED_ONLY: &[Migration] = &[Migration {
    version: 1,
    name: "feed",
    up: feed::migration_sql,
}];

async fn setup() -> (TestDatabase, DatabaseConnection, Feed, Shutdown) {
    let tdb = TestDatabase::new("feed-test").unwrap();
    let db = connect(&tdb.target, 24).await.expect("test database must be reachable");
    migrate::run(&db, FEED_ONLY).await.unwrap();
    let (shutdown, signal) = shutdown_channel();
    let cfg = FeedConfig {
        retention_days: 30,
        poll_interval_ms: 20,
        heartbeat_secs: 1,
        batch_size: 64,
    };
    let feed = Feed::new(db.clone(), "test", cfg, signal);
    (tdb, db, feed, shutdown)
}

fn event(subject: String) -> NewEvent {
    NewEvent {
        event_type: "crm.test.v1.Thing",
        subject,
        actor: "tester".into(),
        data: vec![1, 2, 3],
    }
}

/// Reads until `n` events are visible (or fails after 30 s). On PostgreSQL events become
/// visible once every older transaction in the cluster has ended, so tests running
/// alongside can delay them briefly; they never reorder or drop them.
async fn read_n(feed: &Feed, after: Cursor, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got: Vec<_> = feed.read(after, 100).await.unwrap().into_iter().map(|e| e.subject).collect();
        if got.len() >= n || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Appends one event per subject, each in its own committed transaction.
async fn commit_events(db: &DatabaseConnection, subjects: &[&str]) {
    for s in subjects {
        let txn = begin_write(db).await.unwrap();
        feed::append(&txn, event((*s).into())).await.unwrap();
        txn.commit().await.unwrap();
    }
}

/// Many writers commit concurrently and out of order (random pauses between insert and
/// commit) while a reader tails the feed: the reader must see every event exactly once,
/// and each writer's events in the order that writer committed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_never_lose_or_repeat_an_event() {
    const WRITERS: usize = 16;
    const PER_WRITER: usize = 40;
    let (_tdb, db, feed, _shutdown) = setup().await;
    let db = Arc::new(db);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let db = db.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let txn = begin_write(&db).await.unwrap();
                feed::append(&txn, event(format!("w{w}/{i:03}"))).await.unwrap();
                // Hold some transactions open so later ones commit first.
                let pause = (w * 7 + i * 13) % 5;
                tokio::time::sleep(Duration::from_millis(pause as u64)).await;
                txn.commit().await.unwrap();
            }
        }));
    }
    let mut seen = Vec::new();
    let mut after = Cursor::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < WRITERS * PER_WRITER {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} events arrived",
            seen.len(),
            WRITERS * PER_WRITER
        );
        let batch = feed.read(after, 64).await.unwrap();
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for e in batch {
            let cursor = Cursor::parse(&e.cursor).unwrap();
            assert!(cursor > after, "cursor went backwards");
            after = cursor;
            seen.push(e.subject);
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    // Nothing more arrives after everything was read.
    assert!(feed.read(after, 64).await.unwrap().is_empty());
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an event was delivered twice");
    assert_eq!(seen.len(), WRITERS * PER_WRITER);
    for w in 0..WRITERS {
        let mine: Vec<_> = seen.iter().filter(|s| s.starts_with(&format!("w{w}/"))).cloned().collect();
        let mut sorted = mine.clone();
        sorted.sort();
        assert_eq!(mine, sorted, "writer {w}'s events out of order");
    }
}

/// The exact interleaving that breaks a plain auto-increment cursor: A writes first,
/// B writes later but commits first. A reader must not move past A while A is open.
#[tokio::test]
async fn a_late_commit_is_not_skipped() {
    let (tdb, db, feed, _shutdown) = setup().await;
    let a = begin_write(&db).await.unwrap();
    feed::append(&a, event("a".into())).await.unwrap();
    if tdb.is_postgres() {
        let b = db.begin().await.unwrap();
        feed::append(&b, event("b".into())).await.unwrap();
        b.commit().await.unwrap();
        assert!(
            feed.read(Cursor::default(), 10).await.unwrap().is_empty(),
            "B must wait for the older open transaction A"
        );
        a.commit().await.unwrap();
        assert_eq!(read_n(&feed, Cursor::default(), 2).await, vec!["a", "b"]);
    } else {
        // SQLite: the write lock serialises writers, so B cannot even start writing.
        a.commit().await.unwrap();
        assert_eq!(read_n(&feed, Cursor::default(), 1).await, vec!["a"]);
    }
}

#[tokio::test]
async fn stream_replays_then_tails_then_heartbeats() {
    use crm_proto::crm::events::v1::stream_events_response::Kind;
    use tokio_stream::StreamExt;
    let (_tdb, db, feed, _shutdown) = setup().await;
    commit_events(&db, &["one", "two"]).await;
    let mut stream = feed.stream("", &[], 0).await.unwrap();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    };
    let Some(Kind::Event(first)) = next().await.kind else {
        panic!("expected an event")
    };
    assert_eq!(first.subject, "one");
    assert_eq!(first.r#type, "crm.test.v1.Thing");
    assert_eq!(first.data.unwrap().type_url, "type.googleapis.com/crm.test.v1.Thing");
    let Some(Kind::Event(second)) = next().await.kind else {
        panic!("expected an event")
    };
    let Some(Kind::Heartbeat(beat)) = next().await.kind else {
        panic!("expected a heartbeat once caught up")
    };
    assert_eq!(beat.cursor, second.cursor);
    commit_events(&db, &["three"]).await;
    feed.committed();
    let Some(Kind::Event(third)) = next().await.kind else {
        panic!("expected the tailed event")
    };
    assert_eq!(third.subject, "three");
}

/// A stream asked for some event types sends only those; its heartbeat carries the
/// cursor past the others, and the payloads of an erased subject come out empty.
#[tokio::test]
async fn stream_filters_by_type_and_heartbeats_past_the_rest() {
    use crm_proto::crm::events::v1::stream_events_response::Kind;
    use tokio_stream::StreamExt;
    let (_tdb, db, feed, _shutdown) = setup().await;
    let txn = begin_write(&db).await.unwrap();
    feed::append(
        &txn,
        NewEvent {
            event_type: "crm.test.v1.Wanted",
            ..event("customers/1".into())
        },
    )
    .await
    .unwrap();
    feed::append(&txn, event("customers/1/orders/9".into())).await.unwrap();
    feed::append(&txn, event("customers/10".into())).await.unwrap();
    assert_eq!(feed::empty_payloads(&txn, "customers/1").await.unwrap(), 2);
    txn.commit().await.unwrap();
    let all = read_n(&feed, Cursor::default(), 3).await;
    assert_eq!(all.len(), 3);
    let events = feed.read(Cursor::default(), 10).await.unwrap();
    let payloads: Vec<usize> = events.iter().map(|e| e.data.as_ref().unwrap().value.len()).collect();
    assert_eq!(payloads, vec![0, 0, 3], "only the subject and what is under it are emptied");
    let mut stream = feed.stream("", &["crm.test.v1.Wanted".into()], 0).await.unwrap();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    };
    let Some(Kind::Event(wanted)) = next().await.kind else {
        panic!("expected the wanted event")
    };
    assert_eq!(wanted.r#type, "crm.test.v1.Wanted");
    let Some(Kind::Heartbeat(beat)) = next().await.kind else {
        panic!("the others are skipped, then a heartbeat")
    };
    assert_eq!(beat.cursor, events[2].cursor, "the heartbeat moves past the skipped events");
}

#[tokio::test]
async fn purged_cursor_fails_with_failed_precondition() {
    let (_tdb, db, feed, _shutdown) = setup().await;
    commit_events(&db, &["old-1", "old-2"]).await;
    assert_eq!(read_n(&feed, Cursor::default(), 2).await.len(), 2);
    let first = feed.read(Cursor::default(), 1).await.unwrap().remove(0);
    let deleted = feed.purge(chrono::Utc::now() + chrono::Duration::days(31)).await.unwrap();
    assert_eq!(deleted, 2, "both events are visible, so both are purged");
    let err = feed.read(Cursor::parse(&first.cursor).unwrap(), 10).await.unwrap_err();
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    // Starting over from an empty cursor is allowed and sees what is retained.
    commit_events(&db, &["new"]).await;
    assert_eq!(read_n(&feed, Cursor::default(), 1).await, vec!["new"]);
}

#[tokio::test]
async fn retention_keeps_what_the_audit_forwarder_has_not_shipped() {
    let (_tdb, db, feed, _shutdown) = setup().await;
    let hold = Migration {
        version: 2,
        name: "audit spool",
        up: crm_platform::audit::migration_sql,
    };
    migrate::run(&db, &[FEED_ONLY[0], hold]).await.unwrap();
    let feed = feed.with_audit_hold();
    commit_events(&db, &["a", "b", "c"]).await;
    assert_eq!(read_n(&feed, Cursor::default(), 3).await.len(), 3);
    let events = feed.read(Cursor::default(), 10).await.unwrap();
    let later = chrono::Utc::now() + chrono::Duration::days(31);
    assert_eq!(feed.purge(later).await.unwrap(), 0, "nothing shipped yet: nothing purged");
    use sea_orm::ConnectionTrait;
    db.execute_unprepared(&format!(
        "INSERT INTO audit_feed_position (id, cursor) VALUES (1, '{}')",
        events[1].cursor
    ))
    .await
    .unwrap();
    assert_eq!(feed.purge(later).await.unwrap(), 2, "only what was shipped");
    assert_eq!(read_n(&feed, Cursor::parse(&events[1].cursor).unwrap(), 1).await, vec!["c"]);
}

/// Skips the stream's messages until it ends with an error status, and returns that.
async fn final_status<S>(stream: &mut S) -> tonic::Status
where
    S: tokio_stream::Stream<Item = Result<crm_proto::crm::events::v1::StreamEventsResponse, tonic::Status>> + Unpin,
{
    use tokio_stream::StreamExt;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap();
        if let Err(status) = next.expect("the stream ends with a status, not silently") {
            return status;
        }
    }
}

#[tokio::test]
async fn a_stream_ends_when_the_token_expires_or_the_server_stops() {
    let (_tdb, _db, feed, shutdown) = setup().await;
    let soon = u64::try_from(chrono::Utc::now().timestamp()).unwrap() + 1;
    let mut expiring = feed.stream("", &[], soon).await.unwrap();
    let mut open = feed.stream("", &[], 0).await.unwrap();
    let status = final_status(&mut expiring).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    shutdown.trigger();
    let status = final_status(&mut open).await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "tells the consumer to reconnect");
}

#[tokio::test]
async fn a_cursor_beyond_the_head_is_refused() {
    let (_tdb, db, feed, _shutdown) = setup().await;
    commit_events(&db, &["one"]).await;
    let real = read_n(&feed, Cursor::default(), 1).await;
    assert_eq!(real, vec!["one"]);
    let last = feed.read(Cursor::default(), 1).await.unwrap().remove(0).cursor;
    assert!(feed.stream(&last, &[], 0).await.is_ok(), "the newest real cursor is fine");
    let bogus = Cursor {
        tx_id: i64::MAX / 2,
        id: i64::MAX / 2,
    }
    .encode();
    let err = feed.stream(&bogus, &[], 0).await.unwrap_err();
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
}
