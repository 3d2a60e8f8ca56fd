//! Computed traits: the configured aggregates of a customer's orders and
//! interactions, kept up to date as the feed brings them.

use std::time::Duration;

use crm_proto::crm::{
    common::v1::Channel,
    customer::v1::{self as cpb, customer_reference::Reference},
    segmentation::v1 as pb,
};
use tokio_stream::StreamExt;

use crate::app::TestApp;

fn reference(name: &str) -> Option<cpb::CustomerReference> {
    Some(cpb::CustomerReference {
        reference: Some(Reference::Customer(name.into())),
    })
}

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
