//! RFM through the API: five customers whose order histories span the quintiles get
//! the five expected groups after the full computation; a new order rescores its
//! customer at once against the same boundaries, with an event.

use std::time::Duration;

use crm_proto::crm::{
    events::v1::StreamEventsRequest,
    segmentation::v1::{self as pb, RfmGroup},
};
use prost::Message;

use crate::app::TestApp;

async fn rfm(app: &TestApp, customer: &str) -> Option<pb::Rfm> {
    app.segmentation
        .clone()
        .get_customer_rfm(TestApp::admin(pb::GetCustomerRfmRequest {
            customer: customer.into(),
        }))
        .await
        .ok()
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_follow_the_quintiles_and_a_new_order_rescores_at_once() {
    let app = TestApp::spawn().await;
    // (name, days ago of each order): recency 1/10/60/150/300 days, frequency 5..1.
    let histories: [(&str, &[i64]); 5] = [
        ("Champion", &[1, 2, 3, 4, 5]),
        ("Loyal", &[10, 20, 30, 40]),
        ("Attention", &[60, 70, 80]),
        ("Sleepy", &[150, 160]),
        ("Gone", &[300]),
    ];
    let mut names = Vec::new();
    for (given, days) in histories {
        let c = app.customer(given).await;
        for (i, d) in days.iter().enumerate() {
            app.order(&c, &format!("{given}-{i}"), *d * 86_400 + 60, 100_000_000).await;
        }
        names.push(c);
    }
    let expected = [
        RfmGroup::Champions,
        RfmGroup::Loyal,
        RfmGroup::NeedAttention,
        RfmGroup::Hibernating,
        RfmGroup::Lost,
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut got = Vec::new();
        for n in &names {
            got.push(rfm(&app, n).await.map(|r| r.group));
        }
        if got == expected.iter().map(|g| Some(*g as i32)).collect::<Vec<_>>() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "groups never settled: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let champion = rfm(&app, &names[0]).await.unwrap();
    assert_eq!(
        (
            champion.recency_days,
            champion.frequency,
            champion.monetary_micros,
            champion.currency.as_str()
        ),
        (1, 5, 500_000_000, "CNY")
    );
    assert_eq!((champion.recency_score, champion.frequency_score), (5, 5));
    let summary = app
        .segmentation
        .clone()
        .get_rfm_summary(TestApp::admin(pb::GetRfmSummaryRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.population, 5);
    assert_eq!(summary.frequency_boundaries, vec![2, 3, 4, 5]);
    assert_eq!(summary.groups.len(), 5);

    // The lost customer buys today: rescored at once (recency 0, two orders).
    app.order(&names[4], "Gone-back", 60, 100_000_000).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = rfm(&app, &names[4]).await;
        if let Some(r) = &got
            && r.group == RfmGroup::PotentialLoyalist as i32
        {
            assert_eq!((r.recency_days, r.frequency), (0, 2));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new order never rescored its customer: {got:?}, {:?}",
            app.status().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every group change is on the feed; the last one for this customer says where it went.
    let stream = app
        .segmentation
        .clone()
        .stream_events(TestApp::admin(StreamEventsRequest {
            after_cursor: String::new(),
            event_types: vec!["crm.segmentation.v1.RfmGroupChanged".into()],
        }))
        .await
        .unwrap()
        .into_inner();
    let last = crm_platform::testing::replay(stream)
        .await
        .unwrap()
        .into_iter()
        .map(|e| pb::RfmGroupChanged::decode(e.data.unwrap().value.as_slice()).unwrap())
        .rfind(|change| change.customer == names[4])
        .expect("an event for the customer");
    assert_eq!(last.group, RfmGroup::PotentialLoyalist as i32);
    assert_eq!(last.previous, RfmGroup::Lost as i32);
}
