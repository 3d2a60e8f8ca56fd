//! The seeds' flow inside `crm serve`: a customer views shoes in the app → an SMS
//! coupon goes out (to a provider stub run by this test) → the customer clicks its
//! tracked link and orders within the day → the order ends the journey's wait, is
//! counted as the coupon's conversion, and the attribution report credits it to the
//! journey's SMS step.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use crm_e2e::serve_crm_with;
use crm_proto::crm::{
    common::v1::Channel,
    customer::v1::{self as pb, customer_profile_service_client::CustomerProfileServiceClient},
    segmentation::v1::{
        self as spb, campaign_service_client::CampaignServiceClient, journey_service_client::JourneyServiceClient,
    },
};
use http_body_util::{BodyExt, Full};

use crate::services::{as_user, connect};

/// An HTTP provider that records every JSON body it is sent.
async fn provider() -> (u16, Arc<Mutex<Vec<(String, serde_json::Value)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    let seen = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        seen.lock()
                            .unwrap()
                            .push((path, serde_json::from_slice(&body).unwrap_or_default()));
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"{\"message_id\":\"sms-1\"}",
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, got)
}

/// GET `url`; the status and `Location`.
async fn get(url: &str) -> (u16, String) {
    let uri: http::Uri = url.parse().unwrap();
    let authority = uri.authority().unwrap().to_string();
    let stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            http::Request::get(uri.path())
                .header(http::header::HOST, authority)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let location = response
        .headers()
        .get(http::header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (response.status().as_u16(), location)
}

fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap(),
        nanos: i32::try_from(d.subsec_nanos()).unwrap(),
    }
}

async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_view_leads_through_an_sms_coupon_to_an_attributed_order() {
    let (port, provider_got) = provider().await;
    let root = tempfile::tempdir().unwrap();
    let sms = format!("http://127.0.0.1:{port}/sms");
    let (server, addr) = serve_crm_with(
        root.path(),
        &[
            ("CRM__SEGMENTATION__CHANNELS__SMS__URL", &sms),
            ("CRM__SEGMENTATION__CAMPAIGNS__POLL_INTERVAL_MS", "100"),
        ],
    );
    let line = server.wait_for_line("development admin token", Duration::from_secs(5));
    let dev = line.rsplit(' ').next().unwrap().trim().to_owned();
    let channel = connect(&addr).await;
    let mut customers = CustomerProfileServiceClient::new(channel.clone());
    let mut journeys = JourneyServiceClient::new(channel.clone());
    let mut campaigns = CampaignServiceClient::new(channel);

    // The journey of the seeds: view → SMS coupon → wait a day for an order.
    use spb::journey_step::Action;
    let journey = spb::Journey {
        display_name: "Viewed shoes".into(),
        trigger: Some(spb::JourneyTrigger {
            trigger: Some(spb::journey_trigger::Trigger::Event(spb::JourneyEvent {
                event: Some(spb::journey_event::Event::Interaction(
                    pb::InteractionKind::ProductView as i32,
                )),
                category: "shoes".into(),
            })),
        }),
        steps: vec![
            spb::JourneyStep {
                id: "coupon".into(),
                action: Some(Action::Send(spb::SendStep {
                    channel: pb::ContactChannel::Sms as i32,
                    message: Some(spb::MessageTemplate {
                        body: "{{given_name}}, 10% off shoes today: {{link_url}}".into(),
                        link: "https://shop.example/shoes".into(),
                        ..Default::default()
                    }),
                    next: "wait".into(),
                })),
            },
            spb::JourneyStep {
                id: "wait".into(),
                action: Some(Action::Wait(spb::WaitStep {
                    duration: Some(prost_types::Duration {
                        seconds: 86_400,
                        nanos: 0,
                    }),
                    until: Some(spb::JourneyEvent {
                        event: Some(spb::journey_event::Event::OrderPlaced(true)),
                        category: String::new(),
                    }),
                    next: String::new(),
                    timeout_next: "reminder".into(),
                })),
            },
            spb::JourneyStep {
                id: "reminder".into(),
                action: Some(Action::Send(spb::SendStep {
                    channel: pb::ContactChannel::Sms as i32,
                    message: Some(spb::MessageTemplate {
                        body: "Your shoes are still waiting".into(),
                        ..Default::default()
                    }),
                    next: String::new(),
                })),
            },
        ],
        ..Default::default()
    };
    journeys
        .create_journey(as_user(
            spb::CreateJourneyRequest {
                journey: Some(journey),
                journey_id: "viewed".into(),
            },
            &dev,
        ))
        .await
        .unwrap();
    journeys
        .activate_journey(as_user(
            spb::ActivateJourneyRequest {
                name: "journeys/viewed".into(),
                etag: String::new(),
            },
            &dev,
        ))
        .await
        .unwrap();

    // A customer of the app, who agreed to marketing texts.
    let ann = customers
        .create_customer(as_user(
            pb::CreateCustomerRequest {
                customer: Some(pb::Customer {
                    person_name: Some(pb::PersonName {
                        given_name: "Ann".into(),
                        family_name: "Wang".into(),
                        ..Default::default()
                    }),
                    phone_numbers: vec![pb::PhoneNumber {
                        number: "+8613800138000".into(),
                        r#type: pb::PhoneType::Mobile as i32,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            &dev,
        ))
        .await
        .unwrap()
        .into_inner()
        .name;
    customers
        .update_consent(as_user(
            pb::UpdateConsentRequest {
                name: format!("{ann}/consent"),
                changes: vec![pb::ConsentRecord {
                    purpose: pb::ConsentPurpose::Marketing as i32,
                    channel: pb::ContactChannel::Sms as i32,
                    status: pb::ConsentStatus::Granted as i32,
                    legal_basis: pb::LegalBasis::Consent as i32,
                    source: "app-signup".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            &dev,
        ))
        .await
        .unwrap();
    // She views shoes in the app.
    let reference = Some(pb::CustomerReference {
        reference: Some(pb::customer_reference::Reference::Customer(ann.clone())),
    });
    let _: Vec<_> = tokio_stream::StreamExt::collect(
        customers
            .record_interactions(as_user(
                tokio_stream::iter(vec![pb::RecordInteractionsRequest {
                    batch_id: "app-1".into(),
                    interactions: vec![pb::InteractionInput {
                        customer: reference.clone(),
                        interaction: Some(pb::Interaction {
                            kind: pb::InteractionKind::ProductView as i32,
                            channel: Channel::App as i32,
                            occur_time: Some(now()),
                            source: "app".into(),
                            external_id: "view-1".into(),
                            properties: [("category".to_owned(), "shoes".to_owned())].into(),
                            ..Default::default()
                        }),
                    }],
                }]),
                &dev,
            ))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;

    // The coupon reaches the SMS provider, with her name and a tracked link.
    let coupon = eventually("the SMS coupon is sent", async || {
        provider_got
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| p == "/sms")
            .map(|(_, b)| b.clone())
    })
    .await;
    assert_eq!(coupon["to"], "+8613800138000");
    let text = coupon["body"].as_str().unwrap();
    assert!(text.starts_with("Ann, 10% off shoes today: http://"), "{text}");
    let link = text.rsplit(' ').next().unwrap();
    let (status, location) = get(link).await;
    assert_eq!((status, location.as_str()), (302, "https://shop.example/shoes"));

    // She orders: the wait ends, no reminder goes out.
    customers
        .upsert_order(as_user(
            pb::UpsertOrderRequest {
                customer: reference,
                order: Some(pb::Order {
                    source: "app".into(),
                    external_id: "order-1".into(),
                    status: pb::OrderStatus::Paid as i32,
                    currency: "CNY".into(),
                    total_micros: 399_000_000,
                    place_time: Some(now()),
                    ..Default::default()
                }),
            },
            &dev,
        ))
        .await
        .unwrap();
    let stats = eventually("the order ends the wait and converts the coupon", async || {
        let s = journeys
            .get_journey_stats(as_user(
                spb::GetJourneyStatsRequest {
                    journey: "journeys/viewed".into(),
                },
                &dev,
            ))
            .await
            .unwrap()
            .into_inner();
        let coupon = s.steps.iter().find(|x| x.step == "coupon")?.delivery.clone()?;
        (s.exited == 1 && coupon.converted == 1).then_some((s, coupon))
    })
    .await;
    let (journey_stats, coupon_stats) = stats;
    assert_eq!((journey_stats.enrolled, journey_stats.active), (1, 0), "{journey_stats:?}");
    assert_eq!((coupon_stats.sent, coupon_stats.clicked), (1, 1), "{coupon_stats:?}");
    assert_eq!(coupon_stats.revenue_micros, 399_000_000);
    let reminder = journey_stats.steps.iter().find(|x| x.step == "reminder").unwrap();
    assert_eq!(reminder.entered, 0, "no reminder after an order");

    // The order is credited to the journey's SMS step.
    let report = campaigns
        .get_attribution_report(as_user(
            spb::GetAttributionReportRequest {
                start_time: Some(prost_types::Timestamp {
                    seconds: now().seconds - 3600,
                    nanos: 0,
                }),
                end_time: Some(prost_types::Timestamp {
                    seconds: now().seconds + 3600,
                    nanos: 0,
                }),
                model: spb::AttributionModel::LastTouch as i32,
                group_by: spb::AttributionGrouping::Campaign as i32,
                ..Default::default()
            },
            &dev,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.attributed_conversions, 1, "{report:?}");
    assert_eq!(report.rows[0].key, "journeys/viewed/steps/coupon");
    assert_eq!(report.rows[0].revenue_micros, 399_000_000);
    assert_eq!(provider_got.lock().unwrap().len(), 1, "one message in all");
    drop(server);
}
