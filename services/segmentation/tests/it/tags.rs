//! Tags through the API: a taxonomy in levels, tags on customers known to the
//! projection (with expiry), every change on this service's feed, erasure taking
//! tags off, and the permissions each call needs.

use std::time::Duration;

use crm_proto::crm::{
    customer::v1 as cpb,
    events::v1::{Event, StreamEventsRequest},
    segmentation::v1::{self as pb, UntagReason},
};
use prost::Message;
use tonic::Code;

use crate::app::TestApp;

fn violations(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

async fn tags_of(app: &TestApp, customer: &str) -> Vec<String> {
    app.segmentation
        .clone()
        .list_customer_tags(TestApp::admin(pb::ListCustomerTagsRequest {
            customer: customer.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .tags
        .into_iter()
        .map(|t| t.tag)
        .collect()
}

async fn tag(
    app: &TestApp,
    tag: &str,
    customers: &[&str],
    expire: Option<i64>,
) -> Result<pb::TagCustomersResponse, tonic::Status> {
    app.segmentation
        .clone()
        .tag_customers(TestApp::admin(pb::TagCustomersRequest {
            tag: tag.into(),
            customers: customers.iter().map(|c| (*c).to_owned()).collect(),
            expire_time: expire.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        }))
        .await
        .map(tonic::Response::into_inner)
}

/// This service's feed from the start until it is caught up.
async fn feed(app: &TestApp) -> Vec<Event> {
    let stream = app
        .segmentation
        .clone()
        .stream_events(TestApp::admin(StreamEventsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    crm_platform::testing::replay(stream).await.unwrap()
}

async fn until_projected(app: &TestApp, customers: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while app.status().await.customers < customers {
        assert!(
            std::time::Instant::now() < deadline,
            "the projection never got {customers} customers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taxonomy_in_levels_with_checked_input() {
    let app = TestApp::spawn().await;
    let value = app.tag("value", "", "Value").await.unwrap();
    assert_eq!((value.name.as_str(), value.level), ("tags/value", 1));
    let high = app.tag("high-value", "tags/value", "High-value customer").await.unwrap();
    assert_eq!((high.parent.as_str(), high.level), ("tags/value", 2));
    assert_eq!(app.tag("value", "", "Again").await.unwrap_err().code(), Code::AlreadyExists);
    let bad = app.tag("Bad Id", "tags/nope", "").await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(violations(&bad), vec!["tag_id", "tag.display_name"]);
    let orphan = app.tag("orphan", "tags/nope", "Orphan").await.unwrap_err();
    assert_eq!(violations(&orphan), vec!["tag.parent"]);
    let children = app
        .segmentation
        .clone()
        .list_tags(TestApp::admin(pb::ListTagsRequest {
            parent: "tags/value".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(children.tags.len(), 1);
    // Paging: one per page, two pages.
    let first = app
        .segmentation
        .clone()
        .list_tags(TestApp::admin(pb::ListTagsRequest {
            page_size: 1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.tags[0].name, "tags/high-value");
    let second = app
        .segmentation
        .clone()
        .list_tags(TestApp::admin(pb::ListTagsRequest {
            page_size: 1,
            page_token: first.next_page_token,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.tags[0].name, "tags/value");
    assert!(second.next_page_token.is_empty());
    let renamed = app
        .segmentation
        .clone()
        .update_tag(TestApp::admin(pb::UpdateTagRequest {
            tag: Some(pb::Tag {
                name: high.name.clone(),
                display_name: "High value".into(),
                etag: high.etag.clone(),
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.display_name, "High value");
    assert_ne!(renamed.etag, high.etag);
    let in_use = app
        .segmentation
        .clone()
        .delete_tag(TestApp::admin(pb::DeleteTagRequest {
            name: "tags/value".into(),
            etag: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(in_use.code(), Code::FailedPrecondition, "a parent of another tag stays");
    let rep = crm_platform::testing::policy::user(
        &app.permissions,
        &TestApp::token("admin-1"),
        "rep-1",
        &[],
        "sales_rep",
        crm_proto::crm::permissions::v1::Scope::All,
    )
    .await
    .unwrap();
    assert!(!rep.name.is_empty());
    let denied = app
        .segmentation
        .clone()
        .create_tag(TestApp::as_user(
            pb::CreateTagRequest {
                tag: Some(pb::Tag {
                    display_name: "X".into(),
                    ..Default::default()
                }),
                tag_id: "x".into(),
            },
            &TestApp::token("rep-1"),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_are_tagged_untagged_expired_and_erased_on_the_feed() {
    let app = TestApp::spawn().await;
    app.tag("dormant", "", "Dormant customer").await.unwrap();
    let a = app.customer("Ming").await;
    let b = app.customer("Hua").await;
    until_projected(&app, 2).await;
    let unknown = tag(&app, "tags/dormant", &[&a, "customers/no-such"], None).await.unwrap_err();
    assert_eq!(violations(&unknown), vec!["customers[1]"]);
    let done = tag(&app, "tags/dormant", &[&a, &b], None).await.unwrap();
    assert_eq!((done.tagged, done.already_tagged), (2, 0));
    let again = tag(&app, "tags/dormant", &[&a], None).await.unwrap();
    assert_eq!((again.tagged, again.already_tagged), (0, 1));
    assert_eq!(tags_of(&app, &a).await, vec!["tags/dormant"]);

    // An expiry: the tag comes off by itself.
    app.tag("trial", "", "On trial").await.unwrap();
    let soon = chrono::Utc::now().timestamp() + 2;
    tag(&app, "tags/trial", &[&b], Some(soon)).await.unwrap();
    assert_eq!(tags_of(&app, &b).await, vec!["tags/dormant", "tags/trial"]);
    let past = tag(&app, "tags/trial", &[&b], Some(1)).await.unwrap_err();
    assert_eq!(violations(&past), vec!["expire_time"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while tags_of(&app, &b).await.contains(&"tags/trial".to_owned()) {
        assert!(std::time::Instant::now() < deadline, "the trial tag never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // By hand, then by erasure.
    let off = app
        .segmentation
        .clone()
        .untag_customers(TestApp::admin(pb::UntagCustomersRequest {
            tag: "tags/dormant".into(),
            customers: vec![a.clone()],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(off.untagged, 1);
    app.customers
        .clone()
        .erase_customer(TestApp::admin(cpb::EraseCustomerRequest {
            name: b.clone(),
            reason: "DSR-5".into(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while app.status().await.customers > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the erasure never reached the projection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone = app
        .segmentation
        .clone()
        .list_customer_tags(TestApp::admin(pb::ListCustomerTagsRequest { customer: b.clone() }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // The erasure's event is committed; a feed read serves it once no transaction
    // that began before it is still open (the feed's safe horizon), so read again until
    // it is there.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = feed(&app).await;
        if events.len() >= 8 || std::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e.r#type.trim_start_matches("crm.segmentation.v1."))
        .collect();
    assert_eq!(
        kinds,
        vec![
            "TagChanged",
            "CustomersTagged",
            "CustomersTagged",
            "TagChanged",
            "CustomersTagged",
            "CustomersUntagged",
            "CustomersUntagged",
            "CustomersUntagged"
        ]
    );
    let reasons: Vec<i32> = events
        .iter()
        .filter(|e| e.r#type.ends_with("CustomersUntagged"))
        .map(|e| {
            pb::CustomersUntagged::decode(e.data.as_ref().unwrap().value.as_slice())
                .unwrap()
                .reason
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            UntagReason::Expired as i32,
            UntagReason::Manual as i32,
            UntagReason::Erased as i32
        ]
    );
}
