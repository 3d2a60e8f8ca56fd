//! Orders and interactions through the gRPC API.

use std::time::Duration;

use crm_proto::crm::{
    common::v1::Channel,
    customer::v1::{self as pb, customer_reference::Reference},
    events::v1::{StreamEventsRequest, stream_events_response::Kind},
};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::app::{TestApp, person, violations};

fn by_name(name: &str) -> Option<pb::CustomerReference> {
    Some(pb::CustomerReference {
        reference: Some(Reference::Customer(name.into())),
    })
}

fn by_external(source: &str, id: &str) -> Option<pb::CustomerReference> {
    Some(pb::CustomerReference {
        reference: Some(Reference::ExternalId(pb::ExternalId {
            source: source.into(),
            external_id: id.into(),
        })),
    })
}

fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

fn order(id: &str, status: pb::OrderStatus, placed: i64, updated: i64) -> pb::Order {
    pb::Order {
        source: "erp".into(),
        external_id: id.into(),
        status: status as i32,
        currency: "CNY".into(),
        lines: vec![
            pb::OrderLine {
                sku: "PHONE-1".into(),
                product_name: "Phone".into(),
                category: "phones".into(),
                quantity: 1,
                unit_price_micros: 3_999_000_000,
            },
            pb::OrderLine {
                sku: "CASE-1".into(),
                product_name: "Case".into(),
                category: "accessories".into(),
                quantity: 2,
                unit_price_micros: 49_000_000,
            },
        ],
        channel: Channel::Ecommerce as i32,
        place_time: ts(placed),
        source_update_time: ts(updated),
        ..Default::default()
    }
}

async fn upsert(
    app: &TestApp,
    customer: Option<pb::CustomerReference>,
    o: pb::Order,
) -> Result<pb::UpsertOrderResponse, tonic::Status> {
    app.client
        .clone()
        .upsert_order(TestApp::admin(pb::UpsertOrderRequest {
            customer,
            order: Some(o),
        }))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn orders_upsert_by_source_key_and_ignore_stale_updates() {
    let app = TestApp::spawn().await;
    let c = app.create(person("Wei", "Zhang")).await;
    let t0 = 1_790_000_000;
    let first = upsert(&app, by_name(&c.name), order("SO-1", pb::OrderStatus::Paid, t0, t0))
        .await
        .unwrap();
    assert!(first.created && !first.stale);
    let o = first.order.unwrap();
    assert!(o.name.starts_with(&format!("{}/orders/", c.name)));
    assert_eq!(o.total_micros, 3_999_000_000 + 98_000_000);
    // The same message again: not a new order.
    let again = upsert(&app, by_name(&c.name), order("SO-1", pb::OrderStatus::Paid, t0, t0))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.order.unwrap().name, o.name);
    // Newer: applied. Older (delivered late): ignored.
    let refunded = upsert(&app, by_name(&c.name), order("SO-1", pb::OrderStatus::Refunded, t0, t0 + 60))
        .await
        .unwrap();
    assert_eq!(refunded.order.unwrap().status, pb::OrderStatus::Refunded as i32);
    let late = upsert(&app, by_name(&c.name), order("SO-1", pb::OrderStatus::Shipped, t0, t0 + 30))
        .await
        .unwrap();
    assert!(late.stale);
    assert_eq!(late.order.unwrap().status, pb::OrderStatus::Refunded as i32);
    let got = app
        .client
        .clone()
        .get_order(TestApp::admin(pb::GetOrderRequest { name: o.name.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status, pb::OrderStatus::Refunded as i32);

    // By the customer's id in a source system, as ingestion linked it.
    let linked = app
        .try_ingest("tmall", Channel::Ecommerce, "buyer-77", person("Li", "Na"), None)
        .await
        .unwrap()
        .customer
        .unwrap();
    let via_link = upsert(
        &app,
        by_external("tmall", "buyer-77"),
        order("SO-2", pb::OrderStatus::Paid, t0 + 10, t0),
    )
    .await
    .unwrap();
    assert!(via_link.order.unwrap().name.starts_with(&linked.name));
    let err = upsert(
        &app,
        by_external("tmall", "nobody"),
        order("SO-3", pb::OrderStatus::Paid, t0, t0),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = upsert(
        &app,
        None,
        pb::Order {
            currency: "rmb".into(),
            ..order("SO-4", pb::OrderStatus::Unspecified, t0, t0)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violations(&err), vec!["customer", "order.status", "order.currency"]);
}

#[tokio::test]
async fn orders_list_newest_first_with_filters_and_pages() {
    let app = TestApp::spawn().await;
    let c = app.create(person("Wei", "Zhang")).await;
    let t0 = 1_790_000_000;
    for i in 0..5 {
        let status = if i == 2 {
            pb::OrderStatus::Cancelled
        } else {
            pb::OrderStatus::Completed
        };
        upsert(&app, by_name(&c.name), order(&format!("SO-{i}"), status, t0 + i * 86_400, t0))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .clone()
            .list_orders(TestApp::admin(pb::ListOrdersRequest {
                parent: c.name.clone(),
                page_size: 2,
                page_token: token.clone(),
                statuses: vec![pb::OrderStatus::Completed as i32],
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.orders.into_iter().map(|o| o.external_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, vec!["SO-4", "SO-3", "SO-1", "SO-0"]);
}

fn interaction(id: &str, kind: pb::InteractionKind, at: i64) -> pb::Interaction {
    pb::Interaction {
        kind: kind as i32,
        channel: Channel::App as i32,
        occur_time: ts(at),
        properties: [("sku".to_owned(), "PHONE-1".to_owned())].into(),
        source: "app".into(),
        external_id: id.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn interactions_stream_in_batches_acknowledged_when_durable() {
    let app = TestApp::spawn().await;
    let c = app.create(person("Wei", "Zhang")).await;
    let t0 = chrono::Utc::now().timestamp() - 3600;
    let input = |i: pb::Interaction| pb::InteractionInput {
        customer: by_name(&c.name),
        interaction: Some(i),
    };
    let batches = vec![
        pb::RecordInteractionsRequest {
            batch_id: "b1".into(),
            interactions: vec![
                input(interaction("e1", pb::InteractionKind::ProductView, t0)),
                input(interaction("e2", pb::InteractionKind::Cart, t0 + 60)),
                input(pb::Interaction {
                    kind: 0,
                    ..interaction("bad", pb::InteractionKind::Search, t0)
                }),
            ],
        },
        pb::RecordInteractionsRequest {
            batch_id: "b2".into(),
            interactions: vec![
                // A retry of e1: acknowledged, not stored twice.
                input(interaction("e1", pb::InteractionKind::ProductView, t0)),
                input(interaction("e3", pb::InteractionKind::ProductView, t0 + 120)),
            ],
        },
    ];
    let acks: Vec<pb::RecordInteractionsResponse> = app
        .client
        .clone()
        .record_interactions(TestApp::admin(tokio_stream::iter(batches)))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(acks.len(), 2);
    assert_eq!((acks[0].batch_id.as_str(), acks[0].recorded), ("b1", 2));
    assert_eq!(acks[0].results[2].errors[0].field, "interaction.kind");
    assert_eq!(acks[1].recorded, 1);
    assert!(acks[1].results[0].duplicate);
    assert_eq!(acks[1].results[0].interaction, acks[0].results[0].interaction);

    let list = |kinds: Vec<i32>, start: Option<i64>| {
        let mut client = app.client.clone();
        let parent = c.name.clone();
        async move {
            client
                .list_interactions(TestApp::admin(pb::ListInteractionsRequest {
                    parent,
                    kinds,
                    start_time: start.and_then(ts),
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner()
                .interactions
                .into_iter()
                .map(|i| i.external_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(vec![], None).await, vec!["e3", "e2", "e1"]);
    assert_eq!(
        list(vec![pb::InteractionKind::ProductView as i32], None).await,
        vec!["e3", "e1"]
    );
    assert_eq!(list(vec![], Some(t0 + 60)).await, vec!["e3", "e2"]);

    // Each stored interaction is one event on the feed, after the order events.
    let mut stream = app
        .client
        .clone()
        .stream_events(TestApp::admin(StreamEventsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let mut recorded = 0;
    while recorded < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        if let Some(Kind::Event(e)) = msg.kind
            && e.r#type == "crm.customer.v1.InteractionRecorded"
        {
            recorded += 1;
        }
    }
}

#[tokio::test]
async fn unknown_external_ids_can_create_leads() {
    let app = TestApp::spawn_with(|cfg| {
        cfg.customer_profile.activity.unknown_customer = crm_customer_profile::service::activity::UnknownCustomer::CreateLead;
    })
    .await;
    let t0 = 1_790_000_000;
    let done = upsert(
        &app,
        by_external("pos", "card-9"),
        order("P-1", pb::OrderStatus::Completed, t0, t0),
    )
    .await
    .unwrap();
    assert!(done.lead_created);
    let again = upsert(
        &app,
        by_external("pos", "card-9"),
        order("P-2", pb::OrderStatus::Completed, t0, t0),
    )
    .await
    .unwrap();
    assert!(!again.lead_created);
    let customer = |o: &pb::Order| o.name.split("/orders/").next().unwrap().to_owned();
    assert_eq!(customer(&done.order.unwrap()), customer(&again.order.unwrap()));
}

#[tokio::test]
async fn a_survivor_shows_the_orders_and_interactions_of_customers_merged_into_it() {
    let app = TestApp::spawn().await;
    let survivor = app.create(person("Wei", "Zhang")).await;
    let merged = app.create(person("Wei", "Zhang")).await;
    let t0 = chrono::Utc::now().timestamp() - 3600;
    upsert(
        &app,
        by_name(&survivor.name),
        order("A-1", pb::OrderStatus::Completed, t0, t0),
    )
    .await
    .unwrap();
    upsert(
        &app,
        by_name(&merged.name),
        order("B-1", pb::OrderStatus::Completed, t0 + 60, t0),
    )
    .await
    .unwrap();
    let orders = |name: String| {
        let mut client = app.client.clone();
        async move {
            client
                .list_orders(TestApp::admin(pb::ListOrdersRequest {
                    parent: name,
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner()
                .orders
                .into_iter()
                .map(|o| o.external_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(orders(survivor.name.clone()).await, vec!["A-1"]);
    app.client
        .clone()
        .merge_customers(TestApp::admin(pb::MergeCustomersRequest {
            survivor: survivor.name.clone(),
            survivor_etag: String::new(),
            merged: vec![merged.name.clone()],
        }))
        .await
        .unwrap();
    assert_eq!(orders(survivor.name.clone()).await, vec!["B-1", "A-1"]);
    app.client
        .clone()
        .unmerge_customer(TestApp::admin(pb::UnmergeCustomerRequest {
            name: merged.name.clone(),
        }))
        .await
        .unwrap();
    assert_eq!(orders(survivor.name.clone()).await, vec!["A-1"]);
    assert_eq!(orders(merged.name.clone()).await, vec!["B-1"]);
}
