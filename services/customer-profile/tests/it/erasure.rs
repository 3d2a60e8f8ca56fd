//! The right to erasure with crypto-shredding: after `EraseCustomer` nothing personal
//! about the customer (or the record merged into it) is left to any RPC, in the
//! database's raw contents, in the key store, in the feed or in the cache; orders
//! stay, without personal data. An erasure interrupted after the keys went is
//! finished by the service itself.

use std::time::Duration;

use crm_platform::{cache::Cache, db::connect, testing::TestDatabase};
use crm_proto::crm::{
    customer::v1::{self as pb, ConsentPurpose, ConsentStatus, ContactChannel, customer_reference::Reference},
    events::v1::StreamEventsRequest,
};
use sea_orm::{ConnectionTrait, Statement};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::app::{TestApp, person};

/// Written into every personal field the test fills; searched for afterwards.
const NEEDLE: &str = "quixote";

fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

/// Everything a database holds, as text: on SQLite the file itself (write-ahead log
/// checkpointed first), on PostgreSQL every row of every table of the schema.
async fn raw_contents(db: &TestDatabase) -> String {
    raw_of(&db.target).await
}

async fn raw_of(target: &crm_platform::db::Target) -> String {
    let conn = connect(target, 1).await.unwrap();
    let backend = conn.get_database_backend();
    match target {
        crm_platform::db::Target::Sqlite { url } => {
            conn.execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)").await.unwrap();
            let path = url.trim_start_matches("sqlite://").split('?').next().unwrap().to_owned();
            conn.close().await.unwrap();
            let mut bytes = std::fs::read(&path).unwrap();
            if let Ok(wal) = std::fs::read(format!("{path}-wal")) {
                bytes.extend(wal);
            }
            String::from_utf8_lossy(&bytes).to_lowercase()
        }
        crm_platform::db::Target::Postgres { schema, .. } => {
            let tables = conn
                .query_all_raw(Statement::from_string(
                    backend,
                    format!(
                        "SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}' \
                         AND table_type = 'BASE TABLE'"
                    ),
                ))
                .await
                .unwrap();
            let mut out = String::new();
            for t in tables {
                let table: String = t.try_get("", "table_name").unwrap();
                let rows = conn
                    .query_all_raw(Statement::from_string(
                        backend,
                        format!("SELECT CAST(t AS TEXT) AS r FROM \"{schema}\".\"{table}\" t"),
                    ))
                    .await
                    .unwrap();
                for r in rows {
                    let text: String = r.try_get("", "r").unwrap();
                    out.push_str(&text.to_lowercase());
                    out.push('\n');
                }
            }
            out
        }
    }
}

/// Whether `haystack` holds the needle as text or as PostgreSQL's hex of bytes.
fn holds_needle(haystack: &str) -> bool {
    let hex: String = NEEDLE.bytes().map(|b| format!("{b:02x}")).collect();
    haystack.contains(NEEDLE) || haystack.contains(&hex)
}

async fn feed_payloads(app: &TestApp) -> Vec<(String, Vec<u8>)> {
    let stream = app
        .client
        .clone()
        .stream_events(TestApp::admin(StreamEventsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    crm_platform::testing::replay(stream)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.r#type, e.data.map(|d| d.value).unwrap_or_default()))
        .collect()
}

/// A customer with the needle in every kind of personal field, an order, an
/// interaction, a consent statement and a finished export.
async fn seed(app: &TestApp, given: &str) -> pb::Customer {
    let mut c = person(given, "Quixote");
    c.email_addresses = vec![pb::EmailAddress {
        address: format!("{}.quixote@example.com", given.to_lowercase()),
        ..Default::default()
    }];
    c.addresses = vec![pb::Address {
        postal_address: Some(postal_address(&format!("{given} Quixote"))),
        ..Default::default()
    }];
    let c = app.create(c).await;
    let now = chrono::Utc::now().timestamp();
    let reference = || {
        Some(pb::CustomerReference {
            reference: Some(Reference::Customer(c.name.clone())),
        })
    };
    app.client
        .clone()
        .upsert_order(TestApp::admin(pb::UpsertOrderRequest {
            customer: reference(),
            order: Some(pb::Order {
                source: "erp".into(),
                external_id: format!("SO-{given}"),
                status: pb::OrderStatus::Completed as i32,
                currency: "CNY".into(),
                total_micros: 88_000_000,
                place_time: ts(now - 60),
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
    let acks: Vec<_> = app
        .client
        .clone()
        .record_interactions(TestApp::admin(tokio_stream::iter(vec![pb::RecordInteractionsRequest {
            batch_id: "b".into(),
            interactions: vec![pb::InteractionInput {
                customer: reference(),
                interaction: Some(pb::Interaction {
                    kind: pb::InteractionKind::Search as i32,
                    channel: crm_proto::crm::common::v1::Channel::Web as i32,
                    occur_time: ts(now - 30),
                    properties: [("query".to_owned(), "quixote windmills".to_owned())].into(),
                    source: "web".into(),
                    external_id: format!("ev-{given}"),
                    ..Default::default()
                }),
            }],
        }])))
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(acks[0].as_ref().unwrap().recorded, 1);
    app.client
        .clone()
        .update_consent(TestApp::admin(pb::UpdateConsentRequest {
            name: format!("{}/consent", c.name),
            changes: vec![pb::ConsentRecord {
                purpose: ConsentPurpose::Marketing as i32,
                channel: ContactChannel::Email as i32,
                status: ConsentStatus::Granted as i32,
                legal_basis: pb::LegalBasis::Consent as i32,
                source: "web-form".into(),
                effective_time: ts(now - 10),
                proof_reference: "signed-form-quixote".into(),
                ..Default::default()
            }],
            ..Default::default()
        }))
        .await
        .unwrap();
    c
}

fn postal_address(recipient: &str) -> crm_proto::crm::common::v1::PostalAddress {
    crm_proto::crm::common::v1::PostalAddress {
        region_code: "CN".into(),
        locality: "Shanghai".into(),
        address_lines: vec!["42 Quixote Lane".into()],
        recipients: vec![recipient.into()],
        ..Default::default()
    }
}

async fn export_and_wait(app: &TestApp, name: &str) -> pb::ExportJob {
    let job = app
        .client
        .clone()
        .export_customer_data(TestApp::admin(pb::ExportCustomerDataRequest {
            name: name.into(),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let j = app
            .client
            .clone()
            .get_export_job(TestApp::admin(pb::GetExportJobRequest { name: job.name.clone() }))
            .await
            .unwrap()
            .into_inner();
        if j.state == pb::ExportState::Succeeded as i32 {
            return j;
        }
        assert!(std::time::Instant::now() < deadline, "export never finished: {j:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn erase(app: &TestApp, name: &str) -> Result<pb::Erasure, tonic::Status> {
    app.client
        .clone()
        .erase_customer(TestApp::admin(pb::EraseCustomerRequest {
            name: name.into(),
            reason: "DSR-2026-0042".into(),
            etag: String::new(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_customer_leaves_no_trace() {
    let app = TestApp::spawn().await;
    let survivor = seed(&app, "Zelda").await;
    let merged = seed(&app, "Alonso").await;
    app.client
        .clone()
        .merge_customers(TestApp::admin(pb::MergeCustomersRequest {
            survivor: survivor.name.clone(),
            survivor_etag: String::new(),
            merged: vec![merged.name.clone()],
        }))
        .await
        .unwrap();
    let job = export_and_wait(&app, &survivor.name).await;
    app.get(&survivor.name).await; // cached now
    let bystander = app.create(person("Sancho", "Panza")).await;
    assert!(holds_needle(&raw_contents(&app.db).await), "the test data is findable before");

    // Erasing the merged record erases the person: both records.
    let erasure = erase(&app, &merged.name).await.unwrap();
    let mut erased = erasure.erased_customers.clone();
    erased.sort();
    let mut expected = vec![survivor.name.clone(), merged.name.clone()];
    expected.sort();
    assert_eq!(erased, expected);
    assert_eq!(erasure.reason, "DSR-2026-0042");
    assert_eq!(erasure.actor, "admin-1");
    assert_eq!(erasure.removed.get("customers"), Some(&2));
    assert_eq!(erasure.removed.get("interactions"), Some(&2));
    assert!(erasure.removed.get("consents").is_some_and(|n| *n >= 2));
    assert!(erasure.removed.get("events").is_some_and(|n| *n > 0));
    let again = erase(&app, &survivor.name).await.unwrap();
    assert_eq!(again.erase_time, erasure.erase_time, "erasing again answers the erasure");

    // No RPC knows them.
    for name in [&survivor.name, &merged.name] {
        let got = app
            .client
            .clone()
            .get_customer(TestApp::admin(pb::GetCustomerRequest { name: name.clone() }))
            .await
            .unwrap_err();
        assert_eq!(got.code(), Code::NotFound);
        let view = app
            .client
            .clone()
            .get_customer360(TestApp::admin(pb::GetCustomer360Request {
                name: name.clone(),
                read_mask: None,
            }))
            .await
            .unwrap_err();
        assert_eq!(view.code(), Code::NotFound);
        let orders = app
            .client
            .clone()
            .list_orders(TestApp::admin(pb::ListOrdersRequest {
                parent: name.clone(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(orders.code(), Code::NotFound);
        let consent = app
            .client
            .clone()
            .get_consent(TestApp::admin(pb::GetConsentRequest {
                name: format!("{name}/consent"),
            }))
            .await
            .unwrap_err();
        assert_eq!(consent.code(), Code::NotFound);
    }
    let export = app
        .client
        .clone()
        .get_export_job(TestApp::admin(pb::GetExportJobRequest { name: job.name.clone() }))
        .await
        .unwrap_err();
    assert_eq!(export.code(), Code::NotFound, "the export document went too");
    let listed = app.list_first_page().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, bystander.name, "others are untouched");
    let record = app
        .client
        .clone()
        .get_erasure(TestApp::admin(pb::GetErasureRequest {
            name: survivor.name.replace("customers/", "erasures/"),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.erase_time, erasure.erase_time);

    // The feed: every event about them is still there, emptied; the erasure is announced.
    let events = feed_payloads(&app).await;
    assert!(
        events
            .iter()
            .all(|(_, data)| !String::from_utf8_lossy(data).to_lowercase().contains(NEEDLE)),
        "no event payload holds their data"
    );
    let (last_type, last) = events.last().unwrap();
    assert_eq!(last_type, "crm.customer.v1.CustomerErased");
    let announced = <pb::CustomerErased as prost::Message>::decode(last.as_slice()).unwrap();
    assert_eq!(announced.erasure.unwrap().customer, merged.name);

    // Raw contents: nothing in the database, the key store holds tombstones only.
    assert!(!holds_needle(&raw_contents(&app.db).await), "a trace is left in the database");
    let keys = connect(&app.db.target.companion("keys"), 1).await.unwrap();
    let rows = keys
        .query_all_raw(Statement::from_string(
            keys.get_database_backend(),
            "SELECT customer_id, wrapped, erase_us FROM data_keys ORDER BY customer_id",
        ))
        .await
        .unwrap();
    let mut tombstones = 0;
    for r in &rows {
        let id: String = r.try_get("", "customer_id").unwrap();
        let wrapped: Option<Vec<u8>> = r.try_get("", "wrapped").unwrap();
        let erased_at: Option<i64> = r.try_get("", "erase_us").unwrap();
        if erased.contains(&format!("customers/{id}")) {
            assert!(wrapped.is_none() && erased_at.is_some(), "the key of {id} is destroyed");
            tombstones += 1;
        } else {
            assert!(wrapped.is_some(), "a bystander's key stays");
        }
    }
    assert_eq!(tombstones, 2);

    // Non-personal aggregates stay: the orders still count in revenue.
    let db = connect(&app.db.target, 1).await.unwrap();
    let totals = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT CAST(SUM(total_micros) AS BIGINT) AS total, COUNT(*) AS n FROM orders",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(totals.try_get::<i64>("", "total").unwrap(), 176_000_000);

    // The cache: no entry left (on Redis, checked directly).
    if let Some(redis) = &app.redis {
        let cache = crm_platform::cache::RedisCache::new(redis, Duration::from_secs(60)).unwrap();
        for name in [&survivor.name, &merged.name] {
            let key = format!("customer-profile:customer:{}", name.trim_start_matches("customers/"));
            assert!(cache.get(&key).await.is_none(), "{key} is still cached");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_is_refused_without_permission_or_reason() {
    let app = TestApp::spawn().await;
    let c = app.create(person("Rocinante", "Quixote")).await;
    let missing = app
        .client
        .clone()
        .erase_customer(TestApp::admin(pb::EraseCustomerRequest {
            name: c.name.clone(),
            reason: "  ".into(),
            etag: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert_eq!(crate::app::violations(&missing), vec!["reason".to_owned()]);
    let stale = app
        .client
        .clone()
        .erase_customer(TestApp::admin(pb::EraseCustomerRequest {
            name: c.name.clone(),
            reason: "DSR-1".into(),
            etag: "W/\"0\"".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    let rep = app
        .user("rep-1", &[], "sales_rep", crm_proto::crm::permissions::v1::Scope::All)
        .await;
    let denied = app
        .client
        .clone()
        .erase_customer(TestApp::as_user(
            pb::EraseCustomerRequest {
                name: c.name.clone(),
                reason: "DSR-1".into(),
                etag: String::new(),
            },
            &rep,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    app.get(&c.name).await;
}

/// Keys destroyed, data not scrubbed (a crash between the two steps, or data
/// restored from a backup taken before the erasure): the service finishes the
/// erasure on its own, from the key store's tombstone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_without_its_erasure_is_finished() {
    let app = TestApp::spawn().await;
    let c = seed(&app, "Dulcinea").await;
    let id = c.name.trim_start_matches("customers/").to_owned();
    let keys = connect(&app.db.target.companion("keys"), 1).await.unwrap();
    let backend = keys.get_database_backend();
    let sql = match backend {
        sea_orm::DbBackend::Postgres => "UPDATE data_keys SET wrapped = NULL, erase_us = 1 WHERE customer_id = $1",
        _ => "UPDATE data_keys SET wrapped = NULL, erase_us = 1 WHERE customer_id = ?",
    };
    keys.execute_raw(Statement::from_sql_and_values(backend, sql, [id.clone().into()]))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let record = loop {
        match app
            .client
            .clone()
            .get_erasure(TestApp::admin(pb::GetErasureRequest {
                name: format!("erasures/{id}"),
            }))
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(s) => assert_eq!(s.code(), Code::NotFound),
        }
        assert!(std::time::Instant::now() < deadline, "the erasure was never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(record.actor, "customer-profile");
    let got = app
        .client
        .clone()
        .get_customer(TestApp::admin(pb::GetCustomerRequest { name: c.name.clone() }))
        .await
        .unwrap_err();
    assert_eq!(got.code(), Code::NotFound);
    assert!(!holds_needle(&raw_contents(&app.db).await));
}
