//! marketing-segmentation inside `crm serve`: customers and orders written to
//! customer-profile reach its projection through the feed, and RFM groups appear.

use std::time::Duration;

use crm_e2e::serve_crm_with;
use crm_proto::crm::{
    customer::v1::{self as pb, customer_profile_service_client::CustomerProfileServiceClient, customer_reference::Reference},
    segmentation::v1::{self as spb, RfmGroup, segmentation_service_client::SegmentationServiceClient},
};

use crate::services::{as_user, connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_written_to_customer_profile_become_rfm_groups() {
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
}
