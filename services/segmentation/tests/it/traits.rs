//! Computed traits: the configured aggregates of a customer's orders and
//! interactions, kept up to date as the feed brings them.

use std::time::Duration;

use crm_proto::crm::{common::v1::Channel, customer::v1 as cpb, segmentation::v1 as pb};
use tokio_stream::StreamExt;

use crate::app::{TestApp, reference};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traits_follow_orders_and_interactions() {
    let app = TestApp::spawn().await;
    let c = app
        .customers
        .clone()
        .create_customer(TestApp::admin(cpb::CreateCustomerRequest {
            customer: Some(cpb::Customer {
                display_name: "Fang".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .name;
    let now = chrono::Utc::now().timestamp();
    for (i, (category, days_ago, total)) in [
        ("phones", 3, 2_000_000_000),
        ("cases", 20, 50_000_000),
        ("phones", 200, 1_000_000_000),
    ]
    .iter()
    .enumerate()
    {
        app.customers
            .clone()
            .upsert_order(TestApp::admin(cpb::UpsertOrderRequest {
                customer: reference(&c),
                order: Some(cpb::Order {
                    source: "shop".into(),
                    external_id: format!("o-{i}"),
                    status: cpb::OrderStatus::Completed as i32,
                    currency: "CNY".into(),
                    total_micros: *total,
                    lines: vec![cpb::OrderLine {
                        sku: format!("{category}-{i}"),
                        product_name: (*category).into(),
                        category: (*category).into(),
                        quantity: 1,
                        unit_price_micros: *total,
                    }],
                    place_time: Some(prost_types::Timestamp {
                        seconds: now - days_ago * 86_400,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap();
    }
    let interaction = |id: &str, kind: cpb::InteractionKind, channel: Channel, ago: i64| cpb::InteractionInput {
        customer: reference(&c),
        interaction: Some(cpb::Interaction {
            kind: kind as i32,
            channel: channel as i32,
            occur_time: Some(prost_types::Timestamp {
                seconds: now - ago,
                nanos: 0,
            }),
            source: "app".into(),
            external_id: id.into(),
            ..Default::default()
        }),
    };
    let _: Vec<_> = app
        .customers
        .clone()
        .record_interactions(TestApp::admin(tokio_stream::iter(vec![cpb::RecordInteractionsRequest {
            batch_id: "b".into(),
            interactions: vec![
                interaction("e1", cpb::InteractionKind::ProductView, Channel::App, 3600),
                interaction("e2", cpb::InteractionKind::ProductView, Channel::App, 7200),
                interaction("e3", cpb::InteractionKind::ProductView, Channel::Web, 10 * 86_400),
                interaction("e4", cpb::InteractionKind::PageView, Channel::App, 60),
            ],
        }])))
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    let expected = [
        ("events.product_view.count_7d", "2"),
        ("favourite_category", "phones"),
        ("orders.count_90d", "2"),
        ("orders.total_365d", "3050000000"),
        ("preferred_channel", "app"),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = app
            .segmentation
            .clone()
            .get_customer_traits(TestApp::admin(pb::GetCustomerTraitsRequest { customer: c.clone() }))
            .await
            .map(|r| r.into_inner().traits);
        if let Ok(traits) = &got
            && expected
                .iter()
                .all(|(n, v)| traits.iter().any(|t| t.name == *n && t.value == *v))
            && traits.iter().any(|t| t.name == "last_order_at")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "traits never settled: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traits_declared_over_the_api_are_backfilled_and_guarded() {
    let app = TestApp::spawn().await;
    let c = app.customer("Li").await;
    app.order(&c, "o-1", 86_400, 5_000_000).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while app.status().await.orders < 1 {
        assert!(std::time::Instant::now() < deadline, "the order never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut seg = app.segmentation.clone();
    // A trait not in force is not usable in a rule yet.
    let err = seg
        .preview_segment(TestApp::admin(pb::PreviewSegmentRequest {
            rule: None,
            filter: "traits.orders.count_2d >= 1".into(),
            sample_size: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let declared = seg
        .create_computed_trait(TestApp::admin(pb::CreateComputedTraitRequest {
            computed_trait_id: "orders.count_2d".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(declared.name, "computedTraits/orders.count_2d");
    assert_eq!(declared.source, pb::TraitSource::Api as i32);
    // Existing customers get it without any new event (the backfill).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let traits = seg
            .get_customer_traits(TestApp::admin(pb::GetCustomerTraitsRequest { customer: c.clone() }))
            .await
            .unwrap()
            .into_inner()
            .traits;
        if traits.iter().any(|t| t.name == "orders.count_2d" && t.value == "1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never backfilled: {traits:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = seg
        .list_computed_traits(TestApp::admin(pb::ListComputedTraitsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .traits;
    let api: Vec<_> = listed.iter().filter(|t| t.source == pb::TraitSource::Api as i32).collect();
    assert_eq!(api.len(), 1);
    assert!(api[0].backfill_time.is_some());
    assert!(
        listed
            .iter()
            .any(|t| t.name == "computedTraits/orders.count_90d" && t.source == pb::TraitSource::Config as i32)
    );

    // Usable in rules now, and then guarded against removal.
    let preview = seg
        .preview_segment(TestApp::admin(pb::PreviewSegmentRequest {
            rule: None,
            filter: "traits.orders.count_2d >= 1".into(),
            sample_size: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.sample, vec![c.clone()]);
    seg.create_segment(TestApp::admin(pb::CreateSegmentRequest {
        segment: Some(pb::Segment {
            display_name: "recent".into(),
            filter: "traits.orders.count_2d >= 1".into(),
            ..Default::default()
        }),
        segment_id: "recent".into(),
    }))
    .await
    .unwrap();
    let delete = |name: &str| pb::DeleteComputedTraitRequest { name: name.into() };
    let in_use = seg
        .delete_computed_trait(TestApp::admin(delete("computedTraits/orders.count_2d")))
        .await
        .unwrap_err();
    assert_eq!(in_use.code(), tonic::Code::FailedPrecondition);
    let configured = seg
        .delete_computed_trait(TestApp::admin(delete("computedTraits/orders.count_90d")))
        .await
        .unwrap_err();
    assert_eq!(configured.code(), tonic::Code::FailedPrecondition);
    let again = seg
        .create_computed_trait(TestApp::admin(pb::CreateComputedTraitRequest {
            computed_trait_id: "orders.count_90d".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists);
    let bad = seg
        .create_computed_trait(TestApp::admin(pb::CreateComputedTraitRequest {
            computed_trait_id: "shoe_size".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    seg.delete_segment(TestApp::admin(pb::DeleteSegmentRequest {
        name: "segments/recent".into(),
        etag: String::new(),
    }))
    .await
    .unwrap();
    seg.delete_computed_trait(TestApp::admin(delete("computedTraits/orders.count_2d")))
        .await
        .unwrap();
    let traits = seg
        .get_customer_traits(TestApp::admin(pb::GetCustomerTraitsRequest { customer: c.clone() }))
        .await
        .unwrap()
        .into_inner()
        .traits;
    assert!(!traits.iter().any(|t| t.name == "orders.count_2d"), "its values went with it");
}
