//! Sensitive fields are encrypted at rest: the raw tables hold no plaintext phone,
//! e-mail, national id, birth date or street line, and key rotation keeps old rows
//! readable.

use crm_platform::db::connect;
use crm_proto::crm::customer::v1 as pb;
use sea_orm::{ConnectionTrait, Statement};

use crate::app::{TestApp, person};

/// Every text and byte value of every row of `table`, as lossy UTF-8.
async fn dump(db: &sea_orm::DatabaseConnection, table: &str) -> String {
    let backend = db.get_database_backend();
    let sql = match backend {
        sea_orm::DbBackend::Postgres => format!("SELECT row_to_json(t)::text AS j FROM {table} t"),
        _ => format!("SELECT * FROM {table}"),
    };
    let rows = db.query_all_raw(Statement::from_string(backend, sql)).await.unwrap();
    let mut out = String::new();
    for row in rows {
        for col in row.column_names() {
            if let Ok(s) = row.try_get::<String>("", &col) {
                out.push_str(&s);
            } else if let Ok(b) = row.try_get::<Vec<u8>>("", &col) {
                out.push_str(&String::from_utf8_lossy(&b));
            } else if let Ok(Some(s)) = row.try_get::<Option<String>>("", &col) {
                out.push_str(&s);
            } else if let Ok(Some(b)) = row.try_get::<Option<Vec<u8>>>("", &col) {
                out.push_str(&String::from_utf8_lossy(&b));
            }
            out.push('\n');
        }
    }
    out
}

#[tokio::test]
async fn raw_tables_hold_no_plaintext() {
    let app = TestApp::spawn().await;
    let mut c = person("Secret", "Keeper");
    c.phone_numbers = vec![pb::PhoneNumber {
        number: "13812345678".into(),
        ..Default::default()
    }];
    c.email_addresses = vec![pb::EmailAddress {
        address: "hidden.mail@example.org".into(),
        ..Default::default()
    }];
    c.national_id = "11010519491231002X".into();
    c.birth_date = "1949-12-31".into();
    c.addresses = vec![pb::Address {
        postal_address: Some(crm_proto::crm::common::v1::PostalAddress {
            region_code: "CN".into(),
            address_lines: vec!["88 Hidden Lane".into()],
            ..Default::default()
        }),
        ..Default::default()
    }];
    let created = app.create(c).await;
    assert_eq!(created.phone_numbers[0].number, "+8613812345678");
    // Read back through the API: decrypted.
    let got = app.get(&created.name).await;
    assert_eq!(got.national_id, "11010519491231002X");
    assert_eq!(
        got.addresses[0].postal_address.as_ref().unwrap().address_lines,
        vec!["88 Hidden Lane"]
    );

    let db = connect(&app.db.target, 1).await.unwrap();
    let mut everything = String::new();
    for table in ["customers", "customer_keys", "outbox", "duplicate_candidates"] {
        everything.push_str(&dump(&db, table).await);
    }
    assert!(
        everything.contains("Keeper"),
        "the dump reads the rows (names are not sensitive)"
    );
    for secret in [
        "13812345678",
        "hidden.mail",
        "example.org",
        "11010519491231002X",
        "1949-12-31",
        "Hidden Lane",
    ] {
        assert!(!everything.contains(secret), "plaintext `{secret}` found at rest");
    }
}

/// A custom attribute reclassified as sensitive moves under the seal in rows already
/// stored.
#[tokio::test]
async fn reclassified_attributes_are_resealed() {
    let app = TestApp::spawn().await;
    app.define_text("vip_code").await;
    let mut c = person("Re", "Classified");
    c.custom_attributes.insert("vip_code".into(), "zebra-7731-omega".into());
    app.create(c).await;
    let db = connect(&app.db.target, 1).await.unwrap();
    assert!(
        dump(&db, "customers").await.contains("zebra-7731-omega"),
        "internal values are plain"
    );
    app.client
        .clone()
        .update_field_definition(TestApp::admin(pb::UpdateFieldDefinitionRequest {
            field_definition: Some(pb::FieldDefinition {
                name: "fieldDefinitions/custom_attributes.vip_code".into(),
                r#type: pb::FieldType::String as i32,
                classification: crm_proto::crm::common::v1::Classification::Sensitive as i32,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["classification".into()],
            }),
            allow_missing: false,
        }))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while dump(&db, "customers").await.contains("zebra-7731-omega") {
        assert!(tokio::time::Instant::now() < deadline, "never re-sealed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
