//! Data-quality KPIs, stale-profile reminders and re-encryption, over gRPC and the
//! raw tables.

use std::time::Duration;

use crm_platform::db::connect;
use crm_proto::crm::{
    customer::v1 as pb,
    events::v1::{StreamEventsRequest, stream_events_response::Kind},
};
use prost::Message;
use sea_orm::{ConnectionTrait, Statement};
use tokio_stream::StreamExt;

use crate::app::{TestApp, person};

async fn report(app: &TestApp) -> pb::DataQualityReport {
    app.client
        .clone()
        .get_data_quality_report(TestApp::admin(pb::GetDataQualityReportRequest {}))
        .await
        .unwrap()
        .into_inner()
}

async fn sql(app: &TestApp, statement: &str) {
    let db = connect(&app.db.target, 1).await.unwrap();
    let backend = db.get_database_backend();
    db.execute_raw(Statement::from_string(backend, statement)).await.unwrap();
}

fn complete(given: &str, family: &str, phone: &str, email: &str) -> pb::Customer {
    pb::Customer {
        phone_numbers: vec![pb::PhoneNumber {
            number: phone.into(),
            ..Default::default()
        }],
        email_addresses: vec![pb::EmailAddress {
            address: email.into(),
            ..Default::default()
        }],
        addresses: vec![pb::Address {
            postal_address: Some(crm_proto::crm::common::v1::PostalAddress {
                region_code: "CN".into(),
                locality: "Shanghai".into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        birth_date: "1991-01-01".into(),
        ..person(given, family)
    }
}

#[tokio::test]
async fn kpis_measure_the_customer_base() {
    let app = TestApp::spawn().await;
    let empty = report(&app).await;
    assert_eq!(empty.customers, 0);
    assert_eq!(
        empty.completeness.unwrap().status,
        pb::KpiStatus::Ok as i32,
        "nothing measured is no alert"
    );

    app.create(complete("Wei", "Zhang", "13800138000", "wz@example.com")).await;
    app.create(complete("Ann", "Lee", "13900139000", "ann@example.com")).await;
    app.create(person("Bo", "Li")).await; // 3 of 9
    // The same phone and family name as Wei Zhang: an open candidate.
    app.create(pb::Customer {
        phone_numbers: vec![pb::PhoneNumber {
            number: "13800138000".into(),
            ..Default::default()
        }],
        ..person("Hong", "Zhang")
    })
    .await;
    // One refused write.
    let mut bad = person("X", "Y");
    bad.birth_date = "not a date".into();
    app.try_create(bad).await.unwrap_err();

    let r = report(&app).await;
    assert_eq!(r.customers, 4);
    let completeness = r.completeness.unwrap();
    let want = (1.0 + 1.0 + 3.0 / 9.0 + 5.0 / 9.0) / 4.0;
    assert!((completeness.value - want).abs() < 1e-9, "{completeness:?}");
    assert_eq!(completeness.status, pb::KpiStatus::Alert as i32);
    let dup = r.duplicate_rate.unwrap();
    assert_eq!((dup.numerator, dup.denominator), (1, 4));
    assert_eq!(dup.status, pb::KpiStatus::Alert as i32);
    let entry = r.entry_error_rate.unwrap();
    assert_eq!((entry.numerator, entry.denominator), (1, 5));
    let fresh = r.freshness.unwrap();
    assert_eq!(
        (fresh.numerator, fresh.denominator, fresh.status),
        (4, 4, pb::KpiStatus::Ok as i32)
    );
    let phones = r.fields.iter().find(|f| f.field == "phone_numbers").unwrap();
    assert_eq!((phones.filled, phones.applicable), (0.75, 4));
}

#[tokio::test]
async fn stale_profiles_get_one_reminder_and_count_against_freshness() {
    let app = TestApp::spawn().await;
    let old = app.create(person("Old", "Timer")).await;
    app.create(person("New", "Comer")).await;
    let id = old.name.trim_start_matches("customers/");
    let past = if app.db.is_postgres() {
        "now() - interval '400 days'"
    } else {
        "datetime('now', '-400 days')"
    };
    sql(&app, &format!("UPDATE customers SET confirm_time = {past} WHERE id = '{id}'")).await;

    let mut stream = app
        .client
        .clone()
        .stream_events(TestApp::admin(StreamEventsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let stale = loop {
        let msg = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("a reminder in time")
            .unwrap()
            .unwrap();
        if let Some(Kind::Event(e)) = msg.kind
            && e.r#type == "crm.customer.v1.CustomerStale"
        {
            break pb::CustomerStale::decode(e.data.unwrap().value.as_slice()).unwrap();
        }
    };
    assert_eq!(stale.customer, old.name);
    assert!(stale.days_since_confirmed >= 399, "{stale:?}");
    let fresh = report(&app).await.freshness.unwrap();
    assert_eq!((fresh.numerator, fresh.denominator), (1, 2));

    // Confirming (writing) the customer makes it fresh again.
    app.client
        .clone()
        .update_customer(TestApp::admin(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                name: old.name.clone(),
                team_id: "t".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["team_id".into()],
            }),
        }))
        .await
        .unwrap();
    let fresh = report(&app).await.freshness.unwrap();
    assert_eq!(fresh.numerator, 2);
}

/// A row sealed otherwise than under its data key (the keyring's retired key, or
/// marked for a re-seal) is re-sealed under the customer's data key, which is
/// wrapped by the active keyring key in the key store.
#[tokio::test]
async fn rows_sealed_with_a_retired_key_are_resealed() {
    let app = TestApp::spawn().await;
    let mut c = person("Key", "Rotation");
    c.national_id = "078-05-1120".into();
    let created = app.create(c).await;
    sql(&app, "UPDATE customers SET key_id = 'retired'").await;
    let db = connect(&app.db.target, 1).await.unwrap();
    let backend = db.get_database_backend();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let row = db
            .query_one_raw(Statement::from_string(backend, "SELECT key_id FROM customers"))
            .await
            .unwrap()
            .unwrap();
        if row.try_get::<String>("", "key_id").unwrap() == crm_platform::crypto::DATA_KEY_ID {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never re-sealed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = app.get(&created.name).await;
    assert_eq!(got.etag, created.etag, "re-sealing changes no data");
    assert_eq!(got.national_id, created.national_id);
    let keys = connect(&app.db.target.companion("keys"), 1).await.unwrap();
    let row = keys
        .query_one_raw(Statement::from_string(
            keys.get_database_backend(),
            "SELECT wrap_key, wrapped FROM data_keys",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<String>("", "wrap_key").unwrap(), "test");
    let wrapped: Vec<u8> = row.try_get("", "wrapped").unwrap();
    assert_eq!(crm_platform::crypto::key_id(&wrapped), Some("test"));
}

/// Reports are measured once per `report_cache_secs`, whatever the number of callers.
#[tokio::test]
async fn reports_are_shared_within_their_cache_period() {
    let app = TestApp::spawn_with(|cfg| cfg.customer_profile.quality.report_cache_secs = 3600).await;
    assert_eq!(report(&app).await.customers, 0);
    app.create(person("Cached", "Report")).await;
    for _ in 0..3 {
        assert_eq!(report(&app).await.customers, 0, "served from the first measurement");
    }
}
