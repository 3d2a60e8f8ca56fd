//! Reports through the API: the funnel from customer-profile's customers and orders,
//! service trends from ticketing's tickets, campaign performance from touches, data
//! quality from daily snapshots; validation and permissions.

use crm_platform::testing::policy;
use crm_proto::crm::{
    analytics::v1::{self as pb, Granularity},
    common::v1::Channel,
    customer::v1::LifecycleStage,
    permissions::v1::Scope,
    ticketing::v1 as tpb,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::app::{TestApp, days_from_now, eventually};

fn find<'a>(report: &'a pb::Report, metric: &str, group: &str) -> &'a pb::Series {
    report
        .series
        .iter()
        .find(|s| s.metric == metric && s.group == group)
        .unwrap_or_else(|| panic!("no series {metric}/{group} in {report:?}"))
}

fn values(s: &pb::Series) -> Vec<f64> {
    s.points.iter().map(|p| p.value).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_funnel_follows_lifecycle_stages_and_purchases() {
    let app = TestApp::spawn().await;
    app.customer("Lead", LifecycleStage::Lead, Channel::Web as i32).await;
    app.customer("Prospect", LifecycleStage::Prospect, Channel::Web as i32).await;
    // A first purchase makes a customer of a lead; a second, a repeat buyer.
    let buyer = app.customer("Buyer", LifecycleStage::Lead, Channel::App as i32).await;
    app.order(&buyer, "b-1", 0, 100_000_000, &[]).await;
    let repeat = app.customer("Repeat", LifecycleStage::Customer, Channel::App as i32).await;
    app.order(&repeat, "r-1", 0, 100_000_000, &[]).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    app.order(&repeat, "r-2", 0, 50_000_000, &[]).await;

    let request = pb::GetFunnelReportRequest {
        start_time: days_from_now(-1),
        end_time: days_from_now(1),
        granularity: Granularity::Day as i32,
        ..Default::default()
    };
    let report = eventually("the funnel counts four leads and a repeat buyer", 30, async || {
        let r = app
            .analytics
            .clone()
            .get_funnel_report(TestApp::admin(request.clone()))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let funnel = values(find(&r, "funnel", "all"));
        if funnel == [4.0, 3.0, 2.0, 1.0] {
            Ok(r)
        } else {
            Err(format!("{funnel:?}"))
        }
    })
    .await;
    assert_eq!(report.report, "funnel");
    assert_eq!(report.granularity, Granularity::Day as i32);
    // One point per day of the range, labelled.
    let leads = find(&report, "entered", "lead");
    assert_eq!(leads.points.len(), 3);
    assert_eq!(values(leads).iter().sum::<f64>(), 4.0);
    assert!(leads.points.iter().all(|p| p.label.len() == 10 && p.time.is_some()));
    let today = leads.points.iter().position(|p| p.value == 4.0).unwrap();
    assert_eq!(find(&report, "conversion_rate", "lead→prospect").points[today].value, 0.75);
    assert_eq!(find(&report, "conversion_rate", "customer→repeat").points[today].value, 0.5);
    assert_eq!(find(&report, "entered", "lead").unit, "count");

    // By source channel, and filtered to one.
    let by_channel = app
        .analytics
        .clone()
        .get_funnel_report(TestApp::admin(pb::GetFunnelReportRequest {
            by_source_channel: true,
            ..request.clone()
        }))
        .await
        .unwrap()
        .into_inner();
    let leads = find(&by_channel, "entered", "lead");
    assert_eq!(
        leads.points.iter().map(|p| (p.label.as_str(), p.value)).collect::<Vec<_>>(),
        vec![("web", 2.0), ("app", 2.0)]
    );
    let app_only = app
        .analytics
        .clone()
        .get_funnel_report(TestApp::admin(pb::GetFunnelReportRequest {
            source_channels: vec![Channel::App as i32],
            ..request
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(values(find(&app_only, "funnel", "all")), vec![2.0, 2.0, 2.0, 1.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_trends_come_from_tickets_replies_solutions_and_ratings() {
    let app = TestApp::spawn().await;
    let customer = app.customer("Mei", LifecycleStage::Customer, Channel::Web as i32).await;
    let mut tickets = app.tickets.clone();
    let raise = |category: &str| tpb::CreateTicketRequest {
        ticket: Some(tpb::Ticket {
            customer: customer.clone(),
            channel: Channel::Phone as i32,
            category: category.into(),
            subject: "help".into(),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let complaint = tickets
        .create_ticket(TestApp::admin(raise("complaint")))
        .await
        .unwrap()
        .into_inner();
    tickets.create_ticket(TestApp::admin(raise("billing"))).await.unwrap();
    // An agent's public reply, then the solution and the customer's rating.
    tickets
        .create_comment(TestApp::admin(tpb::CreateCommentRequest {
            parent: complaint.name.clone(),
            comment: Some(tpb::Comment {
                body: "We are on it.".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }))
        .await
        .unwrap();
    let current = tickets
        .get_ticket(TestApp::admin(tpb::GetTicketRequest {
            name: complaint.name.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    tickets
        .update_ticket(TestApp::admin(tpb::UpdateTicketRequest {
            ticket: Some(tpb::Ticket {
                status: tpb::TicketStatus::Solved as i32,
                ..current
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["status".into()],
            }),
        }))
        .await
        .unwrap();
    tickets
        .submit_survey_response(TestApp::admin(tpb::SubmitSurveyResponseRequest {
            survey_response: Some(tpb::SurveyResponse {
                ticket: complaint.name.clone(),
                rating: 4,
                ..Default::default()
            }),
        }))
        .await
        .unwrap();

    let request = pb::GetServiceReportRequest {
        start_time: days_from_now(-1),
        end_time: days_from_now(1),
        granularity: Granularity::Week as i32,
        group_by: pb::ServiceGrouping::Category as i32,
        ..Default::default()
    };
    let report = eventually("the rating reaches the report", 30, async || {
        let r = app
            .analytics
            .clone()
            .get_service_report(TestApp::admin(request.clone()))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let rated = r
            .series
            .iter()
            .any(|s| s.metric == "csat" && s.group == "complaint" && s.points.iter().any(|p| p.value == 4.0));
        let both = r.series.iter().any(|s| s.metric == "volume" && s.group == "billing");
        if rated && both { Ok(r) } else { Err(format!("{r:?}")) }
    })
    .await;
    let at = |metric: &str, group: &str| -> pb::Point {
        find(&report, metric, group)
            .points
            .iter()
            .find(|p| !p.empty && p.value != 0.0)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(at("volume", "complaint").value, 1.0);
    assert_eq!(at("complaint_rate", "complaint").value, 1.0);
    // The report reads the period's tickets page by page: one per page, each once.
    let db = crm_platform::db::connect(&app.db.target, 1).await.unwrap();
    let (from_us, to_us) = (i64::MIN / 2, i64::MAX / 2);
    let mut after = None;
    let mut seen = Vec::new();
    loop {
        let (page, last) = crm_analytics::store::tickets(&db, from_us, to_us, after.as_ref(), 1)
            .await
            .unwrap();
        seen.extend(page.iter().map(|t| t.category.clone()));
        if page.is_empty() {
            break;
        }
        after = last;
    }
    seen.sort();
    assert_eq!(seen, ["billing", "complaint"]);
    assert_eq!(
        find(&report, "complaint_rate", "billing")
            .points
            .iter()
            .map(|p| p.value)
            .sum::<f64>(),
        0.0
    );
    assert!(
        !find(&report, "first_response_median", "complaint")
            .points
            .iter()
            .all(|p| p.empty)
    );
    assert!(!find(&report, "resolution_p90", "complaint").points.iter().all(|p| p.empty));
    assert!(
        find(&report, "resolution_median", "billing").points.iter().all(|p| p.empty),
        "an open ticket has no resolution time"
    );
    assert_eq!(find(&report, "first_response_median", "complaint").unit, "seconds");
    // Filtered to billing only.
    let billing = app
        .analytics
        .clone()
        .get_service_report(TestApp::admin(pb::GetServiceReportRequest {
            categories: vec!["billing".into()],
            group_by: pb::ServiceGrouping::Unspecified as i32,
            ..request
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(values(find(&billing, "volume", "")).iter().sum::<f64>(), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_touches_make_the_marketing_report() {
    use crm_platform::consumer::Apply;
    use crm_proto::crm::{
        events::v1::Event,
        segmentation::v1::{CampaignTouch, CampaignTouchesRecorded, TouchKind},
    };
    use prost::Message;

    let app = TestApp::spawn().await;
    // The segmentation feed's event, applied as the consumer applies it.
    let now = chrono::Utc::now().timestamp();
    let touch = |customer: &str, kind: TouchKind, control: bool, revenue: i64| CampaignTouch {
        campaign: "campaigns/spring".into(),
        run: 1,
        customer: format!("customers/{customer}"),
        kind: kind as i32,
        channel: 2,
        occur_time: Some(prost_types::Timestamp { seconds: now, nanos: 0 }),
        control,
        order: if kind == TouchKind::Converted {
            format!("customers/{customer}/orders/o1")
        } else {
            String::new()
        },
        revenue_micros: revenue,
        currency: if revenue > 0 { "CNY".into() } else { String::new() },
    };
    let mut touches = Vec::new();
    for c in ["a", "b", "c", "d"] {
        touches.push(touch(c, TouchKind::Sent, false, 0));
    }
    touches.push(touch("a", TouchKind::Opened, false, 0));
    touches.push(touch("b", TouchKind::Opened, false, 0));
    touches.push(touch("a", TouchKind::Clicked, false, 0));
    touches.push(touch("a", TouchKind::Converted, false, 88_000_000));
    touches.push(touch("e", TouchKind::Converted, true, 10_000_000));
    let event = Event {
        id: "e1".into(),
        r#type: "crm.segmentation.v1.CampaignTouchesRecorded".into(),
        data: Some(prost_types::Any {
            type_url: "type.googleapis.com/crm.segmentation.v1.CampaignTouchesRecorded".into(),
            value: CampaignTouchesRecorded { touches }.encode_to_vec(),
        }),
        ..Default::default()
    };
    let db = crm_platform::db::connect(&app.db.target, 2).await.unwrap();
    let txn = crm_platform::db::begin_write(&db).await.unwrap();
    crm_analytics::projection::Touches.apply(&txn, &event).await.unwrap();
    // Applied twice (a replay): counted once.
    crm_analytics::projection::Touches.apply(&txn, &event).await.unwrap();
    // And a product view in the app, from customer-profile's feed.
    let viewed = crm_proto::crm::customer::v1::InteractionRecorded {
        customer: "customers/a".into(),
        interaction: Some(crm_proto::crm::customer::v1::Interaction {
            name: "customers/a/interactions/i1".into(),
            kind: crm_proto::crm::customer::v1::InteractionKind::ProductView as i32,
            channel: Channel::App as i32,
            occur_time: Some(prost_types::Timestamp { seconds: now, nanos: 0 }),
            ..Default::default()
        }),
    };
    let event = Event {
        id: "e2".into(),
        r#type: "crm.customer.v1.InteractionRecorded".into(),
        data: Some(prost_types::Any {
            type_url: "type.googleapis.com/crm.customer.v1.InteractionRecorded".into(),
            value: viewed.encode_to_vec(),
        }),
        ..Default::default()
    };
    crm_analytics::projection::Customers.apply(&txn, &event).await.unwrap();
    txn.commit().await.unwrap();

    let report = app
        .analytics
        .clone()
        .get_marketing_report(TestApp::admin(pb::GetMarketingReportRequest {
            start_time: days_from_now(-1),
            end_time: days_from_now(1),
            granularity: Granularity::Month as i32,
            campaigns: vec!["campaigns/spring".into()],
            by_campaign: true,
        }))
        .await
        .unwrap()
        .into_inner();
    let total = |metric: &str| values(find(&report, metric, "campaigns/spring")).iter().sum::<f64>();
    assert_eq!(total("sent"), 4.0);
    assert_eq!(total("converted"), 1.0);
    assert_eq!(total("control_converted"), 1.0);
    assert_eq!(total("revenue"), 88.0);
    assert_eq!(find(&report, "revenue", "campaigns/spring").unit, "CNY");
    let rate = find(&report, "open_rate", "campaigns/spring");
    assert!(rate.points.iter().any(|p| p.value == 0.5), "{rate:?}");
    // Unfiltered, the totals and the engagement by channel.
    let all = app
        .analytics
        .clone()
        .get_marketing_report(TestApp::admin(pb::GetMarketingReportRequest {
            start_time: days_from_now(-1),
            end_time: days_from_now(1),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(values(find(&all, "sent", "")).iter().sum::<f64>(), 4.0);
    assert_eq!(values(find(&all, "interactions", "app")).iter().sum::<f64>(), 1.0);
    // Another campaign's filter sees nothing.
    let other = app
        .analytics
        .clone()
        .get_marketing_report(TestApp::admin(pb::GetMarketingReportRequest {
            start_time: days_from_now(-1),
            end_time: days_from_now(1),
            campaigns: vec!["campaigns/autumn".into()],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(other.series.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_quality_is_snapshotted_daily_with_targets_and_alerts() {
    let app = TestApp::spawn().await;
    app.customer("Bare", LifecycleStage::Lead, 0).await;
    let stored = app.api.snapshot_quality().await.unwrap();
    assert_eq!(stored, 5, "every KPI of customer-profile's report");
    let report = app
        .analytics
        .clone()
        .get_data_quality_report(TestApp::admin(pb::GetDataQualityReportRequest {
            start_time: days_from_now(-2),
            end_time: days_from_now(1),
        }))
        .await
        .unwrap()
        .into_inner();
    let completeness = find(&report, "completeness", "");
    assert_eq!(completeness.target, Some(0.95));
    assert!(completeness.target_is_minimum);
    assert!(!find(&report, "duplicate_rate", "").target_is_minimum);
    let measured: Vec<&pb::Point> = completeness.points.iter().filter(|p| !p.empty).collect();
    assert_eq!(measured.len(), 1, "one snapshot, today: {completeness:?}");
    // Each point's alert follows its target; each alert (the first snapshot after
    // none) is an event on the feed.
    let mut alerting = Vec::new();
    for s in &report.series {
        let p = s.points.iter().find(|p| !p.empty).unwrap();
        let target = s.target.unwrap();
        let misses = if s.target_is_minimum {
            p.value < target
        } else {
            p.value > target
        };
        assert!(p.alert == misses || !p.alert, "{s:?}");
        if p.alert {
            alerting.push(format!("dataQuality/{}", s.metric));
        }
    }
    alerting.sort();
    // On PostgreSQL a commit reaches feed readers a moment later.
    let events = eventually("the alerts on the feed", 30, async || {
        let stream = app
            .analytics
            .clone()
            .stream_events(TestApp::admin(crm_proto::crm::events::v1::StreamEventsRequest {
                event_types: vec!["crm.analytics.v1.DataQualityAlertChanged".into()],
                ..Default::default()
            }))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let events = crm_platform::testing::replay(stream).await.map_err(|e| e.to_string())?;
        let mut subjects: Vec<String> = events.iter().map(|e| e.subject.clone()).collect();
        subjects.sort();
        if subjects == alerting {
            Ok(events)
        } else {
            Err(format!("{subjects:?} against {alerting:?}"))
        }
    })
    .await;
    // Taken again the same day: replaced, and no second alert.
    app.api.snapshot_quality().await.unwrap();
    let stream = app
        .analytics
        .clone()
        .stream_events(TestApp::admin(crm_proto::crm::events::v1::StreamEventsRequest {
            event_types: vec!["crm.analytics.v1.DataQualityAlertChanged".into()],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let again = crm_platform::testing::replay(stream).await.unwrap();
    assert_eq!(again.len(), events.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_their_fields_and_roles_limit_what_is_seen() {
    let app = TestApp::spawn().await;
    let err = app
        .analytics
        .clone()
        .get_funnel_report(TestApp::admin(pb::GetFunnelReportRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = err
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, vec!["start_time", "end_time"]);
    let err = app
        .analytics
        .clone()
        .get_service_report(TestApp::admin(pb::GetServiceReportRequest {
            start_time: days_from_now(0),
            end_time: days_from_now(-1),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.get_details_bad_request().unwrap().field_violations[0].field, "end_time");
    for (name, code) in [
        ("models/unknown", Code::InvalidArgument),
        ("models/clv/versions/7", Code::NotFound),
    ] {
        let err = app
            .analytics
            .clone()
            .get_model_info(TestApp::admin(pb::GetModelInfoRequest { name: name.into() }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{name}");
    }
    // Nothing bought yet: nothing to fit.
    let err = app
        .analytics
        .clone()
        .refit_model(TestApp::admin(pb::RefitModelRequest {
            name: "models/clv".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.get_details_error_info().unwrap().reason, "NO_PURCHASES");
    let err = app
        .analytics
        .clone()
        .list_at_risk_customers(TestApp::admin(pb::ListAtRiskCustomersRequest {
            min_risk: 1.5,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.get_details_bad_request().unwrap().field_violations[0].field, "min_risk");

    // A service manager reads reports, not predictions about customers; an agent neither.
    let admin = TestApp::token("admin-1");
    policy::user(&app.permissions, &admin, "manager", &[], "service_manager", Scope::All)
        .await
        .unwrap();
    policy::user(&app.permissions, &admin, "agent", &[], "service_agent", Scope::All)
        .await
        .unwrap();
    let period = pb::GetServiceReportRequest {
        start_time: days_from_now(-1),
        end_time: days_from_now(1),
        ..Default::default()
    };
    let manager = TestApp::token("manager");
    eventually("the manager's role applies", 10, async || {
        app.analytics
            .clone()
            .get_service_report(TestApp::as_user(period.clone(), &manager))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    let err = app
        .analytics
        .clone()
        .list_at_risk_customers(TestApp::as_user(pb::ListAtRiskCustomersRequest::default(), &manager))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = app
        .analytics
        .clone()
        .get_service_report(TestApp::as_user(period, &TestApp::token("agent")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = app
        .analytics
        .clone()
        .refit_model(TestApp::as_user(
            pb::RefitModelRequest {
                name: "models/clv".into(),
            },
            &manager,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}
