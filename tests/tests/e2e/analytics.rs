//! Analytics inside `crm serve`: customers and orders go to customer-profile,
//! tickets to ticketing, and analytics (following both feeds) answers with the
//! funnel, the service trend and the at-risk list; `crm report` draws the funnel as
//! an SVG chart and a table.

use std::time::Duration;

use crm_e2e::{binary, serve_crm};
use crm_proto::crm::{
    analytics::v1::{self as apb, analytics_service_client::AnalyticsServiceClient},
    common::v1::Channel,
    customer::v1::{self as pb, customer_profile_service_client::CustomerProfileServiceClient},
    permissions::v1::permissions_service_client::PermissionsServiceClient,
    segmentation::v1::{
        self as spb, journey_service_client::JourneyServiceClient, segmentation_service_client::SegmentationServiceClient,
    },
    ticketing::v1::{self as tpb, ticketing_service_client::TicketingServiceClient},
};

use crate::services::{add_user, as_user, connect, exported, mint_signed};

/// `crm serve`'s built-in development secret (public; loopback only).
const DEV_SECRET: &str = "crm-dev-secret-not-for-production-use";

fn days_ago(days: i64) -> Option<prost_types::Timestamp> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    Some(prost_types::Timestamp {
        seconds: i64::try_from(now.as_secs()).unwrap() - days * 86_400,
        nanos: 0,
    })
}

async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) => assert!(std::time::Instant::now() < deadline, "never: {what}: {last}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn series<'a>(report: &'a apb::Report, metric: &str, group: &str) -> Option<&'a apb::Series> {
    report.series.iter().find(|s| s.metric == metric && s.group == group)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_and_tickets_reach_the_funnel_the_service_trend_and_the_at_risk_list() {
    let root = tempfile::tempdir().unwrap();
    let (server, addr) = serve_crm(root.path());
    let line = server.wait_for_line("development admin token", Duration::from_secs(5));
    let dev = line.rsplit(' ').next().unwrap().trim().to_owned();
    let channel = connect(&addr).await;
    let mut customers = CustomerProfileServiceClient::new(channel.clone());
    let mut tickets = TicketingServiceClient::new(channel.clone());
    let mut analytics = AnalyticsServiceClient::new(channel.clone());
    let mut segmentation = SegmentationServiceClient::new(channel.clone());
    let mut journeys = JourneyServiceClient::new(channel);

    // A win-back journey: a customer found at risk is tagged for the sales team.
    segmentation
        .create_tag(as_user(
            spb::CreateTagRequest {
                tag: Some(spb::Tag {
                    display_name: "Win back".into(),
                    ..Default::default()
                }),
                tag_id: "win-back".into(),
            },
            &dev,
        ))
        .await
        .unwrap();
    journeys
        .create_journey(as_user(
            spb::CreateJourneyRequest {
                journey: Some(spb::Journey {
                    display_name: "Win back".into(),
                    trigger: Some(spb::JourneyTrigger {
                        trigger: Some(spb::journey_trigger::Trigger::Event(spb::JourneyEvent {
                            event: Some(spb::journey_event::Event::ChurnRiskRaised(true)),
                            category: String::new(),
                        })),
                    }),
                    steps: vec![spb::JourneyStep {
                        id: "flag".into(),
                        action: Some(spb::journey_step::Action::Tag(spb::TagStep {
                            tag: "tags/win-back".into(),
                            remove: false,
                            next: String::new(),
                        })),
                    }],
                    ..Default::default()
                }),
                journey_id: "win-back".into(),
            },
            &dev,
        ))
        .await
        .unwrap();
    journeys
        .activate_journey(as_user(
            spb::ActivateJourneyRequest {
                name: "journeys/win-back".into(),
                etag: String::new(),
            },
            &dev,
        ))
        .await
        .unwrap();

    let mut create = async |given: &str, stage: pb::LifecycleStage| {
        customers
            .create_customer(as_user(
                pb::CreateCustomerRequest {
                    customer: Some(pb::Customer {
                        person_name: Some(pb::PersonName {
                            given_name: given.into(),
                            family_name: "Zhao".into(),
                            ..Default::default()
                        }),
                        lifecycle_stage: stage as i32,
                        source_channel: Channel::Ecommerce as i32,
                        ..Default::default()
                    }),
                    request_id: String::new(),
                },
                &dev,
            ))
            .await
            .unwrap()
            .into_inner()
            .name
    };
    let lead = create("Lead", pb::LifecycleStage::Lead).await;
    let fading = create("Fading", pb::LifecycleStage::Customer).await;
    let steady = create("Steady", pb::LifecycleStage::Customer).await;
    let _ = lead;
    // Fading bought every six weeks for a year and once in the last three months;
    // Steady buys more often than before.
    let history = [
        (&fading, vec![100, 145, 190, 235, 280, 325, 370, 415, 30]),
        (&steady, vec![5, 25, 45, 65, 85, 120, 210, 300, 390]),
    ];
    for (customer, days) in &history {
        for (i, d) in days.iter().enumerate() {
            customers
                .upsert_order(as_user(
                    pb::UpsertOrderRequest {
                        customer: Some(pb::CustomerReference {
                            reference: Some(pb::customer_reference::Reference::Customer((*customer).clone())),
                        }),
                        order: Some(pb::Order {
                            source: "shop".into(),
                            external_id: format!("{customer}-{i}"),
                            status: pb::OrderStatus::Completed as i32,
                            currency: "CNY".into(),
                            total_micros: 188_000_000,
                            place_time: days_ago(*d),
                            ..Default::default()
                        }),
                    },
                    &dev,
                ))
                .await
                .unwrap();
        }
    }
    // A complaint by phone, answered, solved and rated.
    let ticket = tickets
        .create_ticket(as_user(
            tpb::CreateTicketRequest {
                ticket: Some(tpb::Ticket {
                    customer: fading.clone(),
                    channel: Channel::Phone as i32,
                    category: "complaint".into(),
                    subject: "Late delivery".into(),
                    ..Default::default()
                }),
                request_id: "call-1".into(),
            },
            &dev,
        ))
        .await
        .unwrap()
        .into_inner();
    tickets
        .create_comment(as_user(
            tpb::CreateCommentRequest {
                parent: ticket.name.clone(),
                comment: Some(tpb::Comment {
                    body: "Sorry, a courier is on the way.".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            &dev,
        ))
        .await
        .unwrap();
    let current = tickets
        .get_ticket(as_user(
            tpb::GetTicketRequest {
                name: ticket.name.clone(),
            },
            &dev,
        ))
        .await
        .unwrap()
        .into_inner();
    tickets
        .update_ticket(as_user(
            tpb::UpdateTicketRequest {
                ticket: Some(tpb::Ticket {
                    status: tpb::TicketStatus::Solved as i32,
                    ..current
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["status".into()],
                }),
            },
            &dev,
        ))
        .await
        .unwrap();
    tickets
        .submit_survey_response(as_user(
            tpb::SubmitSurveyResponseRequest {
                survey_response: Some(tpb::SurveyResponse {
                    ticket: ticket.name.clone(),
                    rating: 2,
                    ..Default::default()
                }),
            },
            &dev,
        ))
        .await
        .unwrap();

    // The funnel: three leads today, two of them customers, both repeat buyers.
    let funnel_request = apb::GetFunnelReportRequest {
        start_time: days_ago(1),
        end_time: days_ago(-1),
        granularity: apb::Granularity::Day as i32,
        ..Default::default()
    };
    eventually("the funnel counts three leads and two repeat buyers", async || {
        let r = analytics
            .get_funnel_report(as_user(funnel_request.clone(), &dev))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let funnel: Vec<f64> = series(&r, "funnel", "all")
            .map(|s| s.points.iter().map(|p| p.value).collect())
            .unwrap_or_default();
        if funnel == [3.0, 2.0, 2.0, 2.0] {
            Ok(())
        } else {
            Err(format!("{funnel:?}"))
        }
    })
    .await;

    // The service trend: the complaint, its reply, solution and rating.
    let service = eventually("the rating reaches the service report", async || {
        let r = analytics
            .get_service_report(as_user(
                apb::GetServiceReportRequest {
                    start_time: days_ago(1),
                    end_time: days_ago(-1),
                    group_by: apb::ServiceGrouping::Channel as i32,
                    ..Default::default()
                },
                &dev,
            ))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let rated = series(&r, "csat", "phone").is_some_and(|s| s.points.iter().any(|p| p.value == 2.0));
        if rated { Ok(r) } else { Err(format!("{r:?}")) }
    })
    .await;
    let total = |metric: &str| -> f64 {
        series(&service, metric, "phone")
            .map(|s| s.points.iter().filter(|p| !p.empty).map(|p| p.value).sum())
            .unwrap_or(-1.0)
    };
    assert_eq!(total("volume"), 1.0);
    assert_eq!(total("complaint_rate"), 1.0);
    assert!(total("first_response_median") >= 0.0);

    // The lifetime-value model fitted on the order history; Fading is at risk.
    let model = analytics
        .refit_model(as_user(
            apb::RefitModelRequest {
                name: "models/clv".into(),
            },
            &dev,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(model.statistics["customers"], 2.0);
    let at_risk = analytics
        .list_at_risk_customers(as_user(apb::ListAtRiskCustomersRequest::default(), &dev))
        .await
        .unwrap()
        .into_inner()
        .customers;
    let names: Vec<&str> = at_risk.iter().map(|s| s.customer.as_str()).collect();
    assert!(names.contains(&fading.as_str()), "{at_risk:?}");
    assert!(!names.contains(&steady.as_str()), "{at_risk:?}");

    // ChurnRiskRaised, followed from analytics' feed, starts the win-back journey.
    eventually("the win-back journey tags the customer at risk", async || {
        let tags = segmentation
            .list_customer_tags(as_user(
                spb::ListCustomerTagsRequest {
                    customer: fading.clone(),
                },
                &dev,
            ))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let tagged = format!("{tags:?}");
        if tagged.contains("tags/win-back") {
            Ok(())
        } else {
            Err(tagged)
        }
    })
    .await;
    let stats = journeys
        .get_journey_stats(as_user(
            spb::GetJourneyStatsRequest {
                journey: "journeys/win-back".into(),
            },
            &dev,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.enrolled, 1, "only the customer at risk: {stats:?}");

    // customer-profile's 360 view shows the score in its analysis section, asked of
    // analytics and segmentation with the caller's credentials.
    let view = customers
        .get_customer360(as_user(
            pb::GetCustomer360Request {
                name: fading.clone(),
                read_mask: Some(prost_types::FieldMask {
                    paths: vec!["analysis".into()],
                }),
            },
            &dev,
        ))
        .await
        .unwrap()
        .into_inner();
    let analysis = view.analysis.unwrap();
    let available = pb::SectionState::Available as i32;
    assert_eq!(view.analysis_status.unwrap().state, available);
    assert_eq!(analysis.analytics_status.as_ref().unwrap().state, available, "{analysis:?}");
    assert_eq!(
        analysis.segmentation_status.as_ref().unwrap().state,
        available,
        "{analysis:?}"
    );
    assert!(analysis.churn_at_risk && analysis.churn_probability >= 0.5, "{analysis:?}");
    assert!(analysis.clv_micros >= 0 && analysis.clv_currency == "CNY", "{analysis:?}");

    // A data export holds what segmentation and analytics keep about the customer.
    let (job, document) = exported(&mut customers, &fading, &dev).await;
    assert!(job.unavailable_sections.is_empty(), "{job:?}");
    let document: serde_json::Value = serde_json::from_str(&document).unwrap();
    assert_eq!(document["analytics"]["score"]["at_risk"], true, "{}", document["analytics"]);
    let tags = document["marketing"]["tags"].as_array().cloned().unwrap_or_default();
    assert!(tags.iter().any(|t| t["tag"] == "tags/win-back"), "{}", document["marketing"]);

    // A service agent reads the customer, but neither scores nor segments: customer-profile
    // does not even ask the owners (who would audit a denial), and nothing of theirs shows.
    let mut permissions = PermissionsServiceClient::new(connect(&addr).await);
    add_user(&mut permissions, &dev, "agent", "service_agent").await;
    let agent = mint_signed(DEV_SECRET, &["--user", "agent"]);
    let view = eventually("the agent's binding in force", async || {
        customers
            .get_customer360(as_user(
                pb::GetCustomer360Request {
                    name: fading.clone(),
                    read_mask: Some(prost_types::FieldMask {
                        paths: vec!["analysis".into()],
                    }),
                },
                &agent,
            ))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| e.to_string())
    })
    .await;
    let analysis = view.analysis.unwrap();
    let unavailable = pb::SectionState::Unavailable as i32;
    assert_eq!(view.analysis_status.unwrap().state, unavailable);
    for part in [&analysis.analytics_status, &analysis.segmentation_status] {
        let part = part.as_ref().unwrap();
        assert_eq!(part.state, unavailable);
        assert!(
            part.reason.contains("not asked, the caller may not read it there"),
            "{analysis:?}"
        );
    }
    assert_eq!(
        pb::AnalysisSection {
            analytics_status: None,
            segmentation_status: None,
            ..analysis
        },
        pb::AnalysisSection::default(),
        "nothing leaks"
    );

    // `crm report`: the funnel as an SVG chart and as a table.
    let svg = root.path().join("funnel.svg");
    let from = chrono::Utc::now().date_naive().pred_opt().unwrap().to_string();
    let to = chrono::Utc::now()
        .date_naive()
        .succ_opt()
        .unwrap()
        .succ_opt()
        .unwrap()
        .to_string();
    let run = |format: &str, out: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(binary("crm"));
        cmd.args([
            "report", "funnel", "--from", &from, "--to", &to, "--format", format, "--target", &addr,
        ])
        .env("CRM_TOKEN", &dev);
        if let Some(out) = out {
            cmd.arg("--out").arg(out);
        }
        let output = cmd.output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    run("svg", Some(&svg));
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.contains("<polyline"), "{chart}");
    let table = run("table", None);
    let funnel_row = table.lines().find(|l| l.starts_with("funnel [all]")).unwrap_or_default();
    assert!(funnel_row.split_whitespace().skip(2).eq(["3", "2", "2", "2"]), "{table}");
}
