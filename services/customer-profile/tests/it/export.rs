//! Data-subject access: an export job assembles everything held about a customer into
//! one JSON document, downloadable by the customer itself.

use std::time::Duration;

use crm_proto::crm::customer::v1::{self as pb, customer_reference::Reference};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::app::{TestApp, person};

#[tokio::test]
async fn a_customer_exports_everything_held_about_it() {
    let app = TestApp::spawn().await;
    let mut c = person("Wei", "Zhang");
    c.phone_numbers = vec![pb::PhoneNumber {
        number: "13800138000".into(),
        ..Default::default()
    }];
    let c = app.create(c).await;
    let now = chrono::Utc::now().timestamp();
    app.client
        .clone()
        .upsert_order(TestApp::admin(pb::UpsertOrderRequest {
            customer: Some(pb::CustomerReference {
                reference: Some(Reference::Customer(c.name.clone())),
            }),
            order: Some(pb::Order {
                source: "erp".into(),
                external_id: "SO-9".into(),
                status: pb::OrderStatus::Completed as i32,
                currency: "CNY".into(),
                total_micros: 88_000_000,
                place_time: Some(prost_types::Timestamp {
                    seconds: now - 60,
                    nanos: 0,
                }),
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
    let me = TestApp::customer_token(&c.name);
    let request = |request_id: &str, token: &str| {
        let mut client = app.client.clone();
        let (name, token, request_id) = (c.name.clone(), token.to_owned(), request_id.to_owned());
        async move {
            client
                .export_customer_data(TestApp::as_user(pb::ExportCustomerDataRequest { name, request_id }, &token))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let job = request("dsr-1", &me).await.unwrap();
    assert_eq!(job.customer, c.name);
    assert_eq!(job.requested_by, c.name);
    assert_eq!(request("dsr-1", &me).await.unwrap().name, job.name, "a retry is the same job");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let done = loop {
        let j = app
            .client
            .clone()
            .get_export_job(TestApp::as_user(pb::GetExportJobRequest { name: job.name.clone() }, &me))
            .await
            .unwrap()
            .into_inner();
        if j.state != pb::ExportState::Running as i32 {
            break j;
        }
        assert!(std::time::Instant::now() < deadline, "the export never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done.state, pb::ExportState::Succeeded as i32, "{done:?}");
    // No ticketing, segmentation or analytics here: each part says why it is missing.
    let missing: Vec<&str> = done
        .unavailable_sections
        .iter()
        .map(|s| s.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(missing, ["tickets", "marketing", "analytics"], "{done:?}");
    let chunks: Vec<pb::ExportChunk> = app
        .client
        .clone()
        .download_export(TestApp::as_user(pb::DownloadExportRequest { name: job.name.clone() }, &me))
        .await
        .unwrap()
        .into_inner()
        .map(|c| c.unwrap())
        .collect()
        .await;
    let document: Vec<u8> = chunks.into_iter().flat_map(|c| c.data).collect();
    assert_eq!(document.len() as i64, done.size_bytes);
    let doc: serde_json::Value = serde_json::from_slice(&document).unwrap();
    assert_eq!(doc["customer"], c.name);
    let text = String::from_utf8(document).unwrap();
    assert!(text.contains("+8613800138000"), "the record in clear, for its subject");
    assert_eq!(doc["orders"][0]["external_id"], "SO-9");
    assert!(doc["tickets"].is_null() && doc["marketing"].is_null() && doc["analytics"].is_null());
    assert_eq!(doc["unavailable_sections"].as_array().map(Vec::len), Some(3));
    assert!(
        doc["audit_trail"].is_array(),
        "the permissions service answered: {}",
        doc["audit_trail"]
    );

    // Nobody else reaches it.
    let other = app.create(person("Fang", "Li")).await;
    let stranger = TestApp::customer_token(&other.name);
    let err = app
        .client
        .clone()
        .get_export_job(TestApp::as_user(
            pb::GetExportJobRequest { name: job.name.clone() },
            &stranger,
        ))
        .await
        .unwrap_err();
    assert!(matches!(err.code(), Code::PermissionDenied | Code::NotFound), "{err:?}");
    let err = request("dsr-2", &stranger).await.unwrap_err();
    assert!(matches!(err.code(), Code::PermissionDenied | Code::NotFound), "{err:?}");
}
