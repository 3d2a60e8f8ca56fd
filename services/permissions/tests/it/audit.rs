use crm_proto::crm::permissions::v1::{self as pb, audit_entry::Outcome};
use sea_orm::ConnectionTrait;
use tonic::Code;

use crate::app::TestApp;

fn entry(i: usize) -> pb::AuditEntry {
    pb::AuditEntry {
        id: format!("test-{i}"),
        time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + i as i64,
            nanos: 0,
        }),
        source: "test".into(),
        actor: format!("user-{i}"),
        action: "customer.read".into(),
        resource: format!("customers/{i}"),
        fields: vec!["phone_numbers".into()],
        outcome: Outcome::Success as i32,
        ..Default::default()
    }
}

async fn verify(app: &TestApp) -> pb::VerifyAuditChainResponse {
    app.client
        .clone()
        .verify_audit_chain(TestApp::root(pb::VerifyAuditChainRequest {}))
        .await
        .unwrap()
        .into_inner()
}

async fn write(app: &TestApp, entries: Vec<pb::AuditEntry>) -> pb::WriteAuditEntriesResponse {
    app.client
        .clone()
        .write_audit_entries(TestApp::as_user(pb::WriteAuditEntriesRequest { entries }, "svc"))
        .await
        .unwrap()
        .into_inner()
}

async fn seq_of(app: &TestApp, id: &str) -> i64 {
    let db = crm_platform::db::connect(&app.db.target, 1).await.unwrap();
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT seq FROM audit_log WHERE entry_id = '{id}'"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "seq").unwrap()
}

async fn tamper(app: &TestApp, sql: &str) {
    let db = crm_platform::db::connect(&app.db.target, 1).await.unwrap();
    db.execute_unprepared(sql).await.unwrap();
}

#[tokio::test]
async fn submissions_are_idempotent_and_need_audit_write() {
    let app = TestApp::spawn().await;
    let first = write(&app, (0..5).map(entry).collect()).await;
    assert_eq!((first.appended, first.duplicates), (5, 0));
    let again = write(&app, (3..8).map(entry).collect()).await;
    assert_eq!((again.appended, again.duplicates), (3, 2));
    app.user("rep", &[], "sales_rep", pb::Scope::Own).await;
    let err = app
        .client
        .clone()
        .write_audit_entries(TestApp::as_user(
            pb::WriteAuditEntriesRequest {
                entries: vec![entry(99)],
            },
            "rep",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = app
        .client
        .clone()
        .write_audit_entries(TestApp::as_user(
            pb::WriteAuditEntriesRequest {
                entries: vec![pb::AuditEntry::default()],
            },
            "svc",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let v = verify(&app).await;
    assert!(v.intact, "{v:?}");
    assert!(v.entries_checked >= 8);
    assert_eq!(v.head_hash.len(), 64);
}

#[tokio::test]
async fn an_edited_entry_fails_verification() {
    let app = TestApp::spawn().await;
    write(&app, (0..6).map(entry).collect()).await;
    assert!(verify(&app).await.intact);
    let seq = seq_of(&app, "test-2").await;
    let other = seq_of(&app, "test-4").await;
    // Swap in another entry's content: a well-formed entry that was never there.
    tamper(
        &app,
        &format!("UPDATE audit_log SET content = (SELECT content FROM audit_log WHERE seq = {other}) WHERE seq = {seq}"),
    )
    .await;
    let v = verify(&app).await;
    assert!(!v.intact);
    assert_eq!(v.first_broken_entry, format!("auditEntries/{seq}"));
    assert!(v.problem.contains("edited"), "{}", v.problem);
}

#[tokio::test]
async fn a_deleted_entry_or_an_edited_search_column_fails_verification() {
    let app = TestApp::spawn().await;
    write(&app, (0..6).map(entry).collect()).await;
    let seq = seq_of(&app, "test-3").await;
    tamper(
        &app,
        &format!("UPDATE audit_log SET actor = 'someone-else' WHERE seq = {seq}"),
    )
    .await;
    let v = verify(&app).await;
    assert_eq!(v.first_broken_entry, format!("auditEntries/{seq}"), "{v:?}");
    tamper(&app, &format!("UPDATE audit_log SET actor = 'user-3' WHERE seq = {seq}")).await;
    assert!(verify(&app).await.intact);
    tamper(&app, &format!("DELETE FROM audit_log WHERE seq = {seq}")).await;
    let v = verify(&app).await;
    assert!(!v.intact);
    assert_eq!(v.first_broken_entry, format!("auditEntries/{seq}"));
    assert!(v.problem.contains("missing"), "{}", v.problem);
}

#[tokio::test]
async fn entries_are_listed_newest_first_with_filters() {
    let app = TestApp::spawn().await;
    write(&app, (0..5).map(entry).collect()).await;
    let mut client = app.client.clone();
    let page = client
        .list_audit_entries(TestApp::root(pb::ListAuditEntriesRequest {
            resource: "customers/3".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.audit_entries.len(), 1);
    assert_eq!(page.audit_entries[0].actor, "user-3");
    assert_eq!(page.audit_entries[0].hash.len(), 64);
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_audit_entries(TestApp::root(pb::ListAuditEntriesRequest {
                page_size: 2,
                page_token: token.clone(),
                start_time: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                end_time: Some(prost_types::Timestamp {
                    seconds: 1_700_000_010,
                    nanos: 0,
                }),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.audit_entries.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, vec!["test-4", "test-3", "test-2", "test-1", "test-0"]);
}

/// Retention removes the entries past their period, a prefix of the chain; the chain
/// stays verifiable from the last removed entry's hash, the purge is itself an entry,
/// and moving the anchor afterwards shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_retention_purges_a_prefix_and_the_chain_still_verifies() {
    let app = TestApp::spawn().await;
    write(&app, (0..5).map(entry).collect()).await;
    let before = verify(&app).await;
    assert!(before.intact && before.anchor_sequence == 0);
    // A year and a month from now, with a year's retention, all of it is past.
    let later = chrono::Utc::now() + chrono::Duration::days(400);
    let dry = app.service.purge_audit(365, later, true).await.unwrap();
    assert_eq!(dry, before.head_sequence);
    assert_eq!(verify(&app).await.anchor_sequence, 0, "a dry run removes nothing");
    assert_eq!(app.service.purge_audit(365, later, false).await.unwrap(), dry);
    assert_eq!(
        app.service.purge_audit(365, later, false).await.unwrap(),
        0,
        "nothing left to purge"
    );
    write(&app, (5..7).map(entry).collect()).await;
    let v = verify(&app).await;
    assert!(v.intact, "{v:?}");
    assert_eq!(v.anchor_sequence, before.head_sequence);
    assert_eq!(v.entries_checked, 3, "the purge entry and the two new ones");
    let listed = app
        .client
        .clone()
        .list_audit_entries(TestApp::root(pb::ListAuditEntriesRequest {
            page_size: 100,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .audit_entries;
    let ids: Vec<&str> = listed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.contains(&"test-5") && ids.contains(&"test-6"), "{ids:?}");
    let purge = listed
        .iter()
        .find(|e| e.action == "audit.purge")
        .expect("the purge is an entry");
    assert!(
        purge.reason.contains(&format!("auditEntries/{}", before.head_sequence)),
        "{}",
        purge.reason
    );
    tamper(&app, "UPDATE audit_anchor SET hash = 'forged'").await;
    assert!(!verify(&app).await.intact, "a moved anchor breaks the chain");
}
