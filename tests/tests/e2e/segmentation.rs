//! marketing-segmentation inside `crm serve`: customers and orders written to
//! customer-profile reach its projection through the feed, RFM groups appear, and
//! segments (one from a built-in template) publish who entered them.

use std::time::Duration;

use crm_e2e::serve_crm_with;
use crm_proto::crm::{
    customer::v1::{self as pb, customer_profile_service_client::CustomerProfileServiceClient, customer_reference::Reference},
    segmentation::v1::{self as spb, RfmGroup, segmentation_service_client::SegmentationServiceClient},
};

use crate::services::{as_user, connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_written_to_customer_profile_become_rfm_groups_and_segment_members() {
    let root = tempfile::tempdir().unwrap();
    let (server, addr) = serve_crm_with(root.path(), &[("CRM__SEGMENTATION__RFM__DRIFT_CHECK_SECS", "1")]);
    let line = server.wait_for_line("development admin token", Duration::from_secs(5));
    let dev = line.rsplit(' ').next().unwrap().trim().to_owned();
    let channel = connect(&addr).await;
    let mut customers = CustomerProfileServiceClient::new(channel.clone());
    let mut segmentation = SegmentationServiceClient::new(channel);
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    // Two segments before any data: the seeds' high-value template, and every buyer.
    for (id, template, filter) in [
        ("high-value", "segmentTemplates/high-value-repeat-buyers", ""),
        ("buyers", "", "orders(365d) >= 1"),
    ] {
        segmentation
            .create_segment(as_user(
                spb::CreateSegmentRequest {
                    segment: Some(spb::Segment {
                        display_name: id.into(),
                        template: template.into(),
                        filter: filter.into(),
                        ..Default::default()
                    }),
                    segment_id: id.into(),
                },
                &dev,
            ))
            .await
            .unwrap();
    }
    let mut membership = segmentation
        .stream_events(as_user(
            crm_proto::crm::events::v1::StreamEventsRequest {
                after_cursor: String::new(),
                event_types: vec!["crm.segmentation.v1.SegmentMembershipChanged".into()],
            },
            &dev,
        ))
        .await
        .unwrap()
        .into_inner();
    // Five buyers: the first bought often and lately, the last once, long ago.
    let mut names = Vec::new();
    for (i, orders) in [5i64, 4, 3, 2, 1].iter().enumerate() {
        let c = customers
            .create_customer(as_user(
                pb::CreateCustomerRequest {
                    customer: Some(pb::Customer {
                        display_name: format!("买家 {i}"),
                        ..Default::default()
                    }),
                    request_id: String::new(),
                },
                &dev,
            ))
            .await
            .unwrap()
            .into_inner();
        for k in 0..*orders {
            let days_ago = (i as i64) * 60 + k + 1;
            customers
                .upsert_order(as_user(
                    pb::UpsertOrderRequest {
                        customer: Some(pb::CustomerReference {
                            reference: Some(Reference::Customer(c.name.clone())),
                        }),
                        order: Some(pb::Order {
                            source: "shop".into(),
                            external_id: format!("{i}-{k}"),
                            status: pb::OrderStatus::Completed as i32,
                            currency: "CNY".into(),
                            total_micros: 50_000_000,
                            place_time: Some(prost_types::Timestamp {
                                seconds: now - days_ago * 86_400,
                                nanos: 0,
                            }),
                            ..Default::default()
                        }),
                    },
                    &dev,
                ))
                .await
                .unwrap();
        }
        names.push(c.name);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let first = segmentation
            .get_customer_rfm(as_user(
                spb::GetCustomerRfmRequest {
                    customer: names[0].clone(),
                },
                &dev,
            ))
            .await;
        let last = segmentation
            .get_customer_rfm(as_user(
                spb::GetCustomerRfmRequest {
                    customer: names[4].clone(),
                },
                &dev,
            ))
            .await;
        let seen = (first.map(|r| r.into_inner()), last.map(|r| r.into_inner()));
        if let (Ok(first), Ok(last)) = &seen
            && first.group == RfmGroup::Champions as i32
            && last.group == RfmGroup::Lost as i32
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "RFM groups never appeared: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = segmentation
        .get_projection_status(as_user(spb::GetProjectionStatusRequest {}, &dev))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((status.customers, status.orders), (5, 15));

    // Membership events: every buyer entered `buyers` as its first order arrived; the
    // champion entered `high-value` once the RFM computation ran.
    let mut entered: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(entered.get("segments/buyers").is_some_and(|m| m.len() == 5)
        && entered.get("segments/high-value").is_some_and(|m| m.contains(&names[0])))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "membership events never came: {entered:?}");
        let Ok(msg) = tokio::time::timeout(left, membership.message()).await else {
            continue;
        };
        if let Some(crm_proto::crm::events::v1::stream_events_response::Kind::Event(e)) = msg.unwrap().unwrap().kind {
            let m = <spb::SegmentMembershipChanged as prost::Message>::decode(e.data.unwrap().value.as_slice()).unwrap();
            entered.entry(m.segment).or_default().extend(m.entered);
        }
    }
    assert!(
        !entered["segments/high-value"].contains(&names[4]),
        "the lost customer is not high-value"
    );
    let member = segmentation
        .check_membership(as_user(
            spb::CheckMembershipRequest {
                segment: "segments/high-value".into(),
                customer: names[0].clone(),
            },
            &dev,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(member.member);
}
