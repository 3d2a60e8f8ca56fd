//! Models through the API: the lifetime-value fit with churn risk and its events,
//! versioned, seen within the caller's scope; association rules and recommendations.

use crm_platform::testing::policy;
use crm_proto::crm::{
    analytics::v1 as pb, common::v1::Channel, customer::v1::LifecycleStage, events::v1::StreamEventsRequest,
    permissions::v1::Scope,
};
use prost::Message;
use tonic::Code;

use crate::app::TestApp;

async fn refit(app: &TestApp, name: &str) -> pb::Model {
    app.analytics
        .clone()
        .refit_model(TestApp::admin(pb::RefitModelRequest { name: name.into() }))
        .await
        .unwrap()
        .into_inner()
}

/// The `ChurnRiskRaised` events on the feed, as stored, once the feed shows the fit
/// of `models/clv` version `version` (appended in the same transaction as the
/// events it raised; on PostgreSQL a commit becomes visible to readers a moment later).
async fn raised_events(app: &TestApp, version: i64) -> Vec<crm_proto::crm::events::v1::Event> {
    crate::app::eventually("the fit's events on the feed", 30, async || {
        let stream = app
            .analytics
            .clone()
            .stream_events(TestApp::admin(StreamEventsRequest {
                event_types: vec![
                    "crm.analytics.v1.ChurnRiskRaised".into(),
                    "crm.analytics.v1.ModelFitted".into(),
                ],
                ..Default::default()
            }))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let events = crm_platform::testing::replay(stream).await.map_err(|e| e.to_string())?;
        let fitted = events.iter().any(|e| {
            e.r#type == "crm.analytics.v1.ModelFitted"
                && pb::ModelFitted::decode(e.data.as_ref().map_or(&[][..], |d| d.value.as_slice()))
                    .ok()
                    .and_then(|m| m.model)
                    .is_some_and(|m| m.name == format!("models/clv/versions/{version}"))
        });
        if fitted {
            Ok(events
                .into_iter()
                .filter(|e| e.r#type == "crm.analytics.v1.ChurnRiskRaised")
                .collect())
        } else {
            Err(format!("{} events, version {version} not yet", events.len()))
        }
    })
    .await
}

async fn raised(app: &TestApp, version: i64) -> Vec<pb::ChurnRiskRaised> {
    raised_events(app, version)
        .await
        .iter()
        .map(|e| pb::ChurnRiskRaised::decode(e.data.as_ref().unwrap().value.as_slice()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_whose_purchases_halved_is_at_risk_once() {
    let app = TestApp::spawn().await;
    // Fading bought every 45 days for a year, then once in the last three months.
    let fading = app.customer("Fading", LifecycleStage::Customer, Channel::Web as i32).await;
    for (i, days) in [100, 145, 190, 235, 280, 325, 370, 415, 30].iter().enumerate() {
        app.order(&fading, &format!("f-{i}"), *days, 200_000_000, &[]).await;
    }
    // Steady buys more often lately; others buy now and then.
    let steady = app.customer("Steady", LifecycleStage::Customer, Channel::Web as i32).await;
    for (i, days) in [5, 25, 45, 65, 85, 120, 210, 300, 390].iter().enumerate() {
        app.order(&steady, &format!("s-{i}"), *days, 150_000_000, &[]).await;
    }
    for c in 0..6 {
        let other = app
            .customer(&format!("Other{c}"), LifecycleStage::Customer, Channel::App as i32)
            .await;
        for k in 0..=c {
            app.order(
                &other,
                &format!("o-{c}-{k}"),
                20 + 60 * k + 7 * c,
                80_000_000 + c * 10_000_000,
                &[],
            )
            .await;
        }
    }
    let orders = 9 + 9 + (1..=6).sum::<i64>();
    // Customers and orders, each an event.
    app.caught_up("customer-profile", 8 + orders).await;

    let model = refit(&app, "models/clv").await;
    assert_eq!((model.name.as_str(), model.version), ("models/clv/versions/1", 1));
    for p in ["r", "alpha", "a", "b"] {
        let v = model.parameters[p];
        assert!(v.is_finite() && v > 0.0, "{p} = {v}");
    }
    assert_eq!(model.statistics["customers"], 8.0);
    // Seven repeat buyers are too few for the spend model: each customer's own mean.
    assert_eq!(model.statistics["repeat_buyers"], 7.0);
    assert_eq!(model.statistics["spend_model"], 0.0);
    assert!(!model.parameters.contains_key("p"));
    assert_eq!(model.time_unit, "day");
    assert_eq!(model.trigger, "admin-1");

    let at_risk = app
        .analytics
        .clone()
        .list_at_risk_customers(TestApp::admin(pb::ListAtRiskCustomersRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .customers;
    let fading_score = at_risk
        .iter()
        .find(|s| s.customer == fading)
        .unwrap_or_else(|| panic!("{fading} is at risk: {at_risk:?}"));
    assert!(fading_score.frequency_drop >= 0.5, "{fading_score:?}");
    assert!(fading_score.at_risk && fading_score.churn_risk >= 0.5);
    assert!(
        at_risk.windows(2).all(|w| w[0].churn_risk >= w[1].churn_risk),
        "riskiest first"
    );
    assert_eq!(fading_score.orders, 9);
    assert_eq!(fading_score.model_version, "models/clv/versions/1");
    let steady_score = app
        .analytics
        .clone()
        .get_customer_score(TestApp::admin(pb::GetCustomerScoreRequest {
            name: format!("{steady}/score"),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(steady_score.frequency_drop, 0.0);
    assert!(steady_score.churn_risk < fading_score.churn_risk);
    assert!(steady_score.expected_purchases > 0.0 && steady_score.lifetime_value > 0.0);
    assert_eq!(steady_score.currency, "CNY");

    // One event for the crossing; a second fit does not raise it again.
    let events = raised(&app, 1).await;
    assert_eq!(
        events.iter().filter(|e| e.score.as_ref().unwrap().customer == fading).count(),
        1
    );
    assert_eq!(events[0].threshold, 0.5);
    let second = refit(&app, "models/clv").await;
    assert_eq!(second.version, 2);
    assert_eq!(raised(&app, 2).await.len(), events.len());
    let first = app
        .analytics
        .clone()
        .get_model_info(TestApp::admin(pb::GetModelInfoRequest {
            name: "models/clv/versions/1".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.parameters, model.parameters);
    let latest = app
        .analytics
        .clone()
        .get_model_info(TestApp::admin(pb::GetModelInfoRequest {
            name: "models/clv".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(latest.version, 2);

    // Paging through the at-risk list with a lower bar.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .analytics
            .clone()
            .list_at_risk_customers(TestApp::admin(pb::ListAtRiskCustomersRequest {
                page_size: 1,
                page_token: token.clone(),
                min_risk: 0.5,
            }))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.customers.into_iter().map(|c| c.customer));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), at_risk.len());
    let unknown = app
        .analytics
        .clone()
        .get_customer_score(TestApp::admin(pb::GetCustomerScoreRequest {
            name: "customers/nobody/score".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // Erased: the scores go, and this service's events about the customer keep their
    // shape and lose their content.
    app.customers
        .clone()
        .erase_customer(TestApp::admin(crm_proto::crm::customer::v1::EraseCustomerRequest {
            name: fading.clone(),
            reason: "DSR-1".into(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    crate::app::eventually("the erasure reaches analytics", 30, async || {
        let listed = app
            .analytics
            .clone()
            .list_at_risk_customers(TestApp::admin(pb::ListAtRiskCustomersRequest::default()))
            .await
            .map_err(|e| e.to_string())?
            .into_inner()
            .customers;
        if listed.iter().any(|s| s.customer == fading) {
            Err(format!("{listed:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    let events = raised_events(&app, 2).await;
    let about: Vec<_> = events.iter().filter(|e| e.subject == fading).collect();
    assert_eq!(about.len(), 1);
    assert!(about[0].data.as_ref().is_none_or(|d| d.value.is_empty()), "{:?}", about[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_are_mined_from_baskets_and_recommend_what_was_not_bought() {
    let app = TestApp::spawn().await;
    let shoppers = [
        app.customer("A", LifecycleStage::Customer, Channel::Web as i32).await,
        app.customer("B", LifecycleStage::Customer, Channel::Web as i32).await,
        app.customer("C", LifecycleStage::Customer, Channel::Web as i32).await,
    ];
    let phone = ("phone", "phones");
    let case = ("case", "accessories");
    let laptop = ("laptop", "computers");
    let mouse = ("mouse", "peripherals");
    let mut baskets: Vec<Vec<(&str, &str)>> = vec![vec![phone, case]; 6];
    baskets.extend(vec![vec![phone]; 2]);
    baskets.extend(vec![vec![laptop, mouse]; 2]);
    for (i, lines) in baskets.iter().enumerate() {
        app.order(&shoppers[i % 3], &format!("b-{i}"), 1 + i as i64, 100_000_000, lines)
            .await;
    }
    // Two more bought only a phone, or only a laptop.
    let newcomer = app.customer("D", LifecycleStage::Customer, Channel::Web as i32).await;
    app.order(&newcomer, "n-1", 1, 100_000_000, &[phone]).await;
    let coder = app.customer("E", LifecycleStage::Customer, Channel::Web as i32).await;
    app.order(&coder, "n-2", 1, 100_000_000, &[laptop]).await;
    app.caught_up("customer-profile", 5 + 12).await;

    let model = refit(&app, "models/association-rules").await;
    assert_eq!(model.statistics["product_baskets"], 12.0);
    let rules = app
        .analytics
        .clone()
        .list_association_rules(TestApp::admin(pb::ListAssociationRulesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rules.model_version, model.name);
    let pairs: Vec<(String, String)> = rules
        .rules
        .iter()
        .map(|r| (r.antecedents.join("+"), r.consequents.join("+")))
        .collect();
    // laptop↔mouse (lift 4) first; then case→phone and phone→case (lift 4/3).
    let mut strongest = pairs[..2].to_vec();
    strongest.sort();
    let mut weaker = pairs[2..].to_vec();
    weaker.sort();
    let pair = |a: &str, c: &str| (a.to_owned(), c.to_owned());
    assert_eq!(strongest, vec![pair("laptop", "mouse"), pair("mouse", "laptop")]);
    assert_eq!(weaker, vec![pair("case", "phone"), pair("phone", "case")]);
    let phone_case = rules.rules.iter().find(|r| r.antecedents == ["phone"]).unwrap();
    assert!((phone_case.confidence - 6.0 / 9.0).abs() < 1e-9, "{phone_case:?}");
    assert!((phone_case.lift - 4.0 / 3.0).abs() < 1e-9, "{phone_case:?}");
    assert_eq!(phone_case.baskets, 6);
    // Filtered and paged.
    let filtered = app
        .analytics
        .clone()
        .list_association_rules(TestApp::admin(pb::ListAssociationRulesRequest {
            antecedent: "phone".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.rules.len(), 1);
    let first_page = app
        .analytics
        .clone()
        .list_association_rules(TestApp::admin(pb::ListAssociationRulesRequest {
            page_size: 3,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let rest = app
        .analytics
        .clone()
        .list_association_rules(TestApp::admin(pb::ListAssociationRulesRequest {
            page_size: 3,
            page_token: first_page.next_page_token,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first_page.rules.len(), rest.rules.len()), (3, 1));
    assert!(rest.next_page_token.is_empty());

    let recommended = app
        .analytics
        .clone()
        .get_recommendations(TestApp::admin(pb::GetRecommendationsRequest {
            customer: newcomer.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        recommended
            .recommendations
            .iter()
            .map(|r| r.item.as_str())
            .collect::<Vec<_>>(),
        vec!["case"]
    );
    assert_eq!(recommended.recommendations[0].because_of, vec!["phone".to_owned()]);
    // At category level: computers → peripherals.
    let by_category = app
        .analytics
        .clone()
        .get_recommendations(TestApp::admin(pb::GetRecommendationsRequest {
            customer: coder,
            level: pb::RuleLevel::Category as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_category.recommendations[0].item, "peripherals");

    // Twelve phone-and-charger baskets later, the next fit's rules are the ones served:
    // phone → charger (12 of 21 phone baskets), and phone → case (6 of 21) falls below
    // the minimum confidence.
    let charger = ("charger", "accessories");
    for i in 0..12 {
        app.order(&shoppers[i % 3], &format!("c-{i}"), 1, 100_000_000, &[phone, charger])
            .await;
    }
    app.caught_up("customer-profile", 5 + 12 + 12).await;
    let second = refit(&app, "models/association-rules").await;
    assert_eq!(second.version, model.version + 1);
    let recommended = app
        .analytics
        .clone()
        .get_recommendations(TestApp::admin(pb::GetRecommendationsRequest {
            customer: newcomer,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recommended.model_version, second.name);
    assert_eq!(
        recommended
            .recommendations
            .iter()
            .map(|r| r.item.as_str())
            .collect::<Vec<_>>(),
        vec!["charger"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_manager_sees_the_predictions_of_the_teams_customers_only() {
    let app = TestApp::spawn().await;
    let admin = TestApp::token("admin-1");
    for team in ["north", "south"] {
        policy::team(&app.permissions, &admin, team, "").await.unwrap();
    }
    policy::user(&app.permissions, &admin, "lin", &["north"], "sales_manager", Scope::Team)
        .await
        .unwrap();
    // One fading customer in each team.
    let mut fading = Vec::new();
    for team in ["north", "south"] {
        let c = app
            .customer_of_team(team, LifecycleStage::Customer, Channel::Web as i32, team)
            .await;
        for (i, days) in [100, 150, 200, 250, 300, 350, 400, 440, 30].iter().enumerate() {
            app.order(&c, &format!("{team}-{i}"), *days, 120_000_000, &[]).await;
        }
        fading.push(c);
    }
    app.caught_up("customer-profile", 2 + 18).await;
    refit(&app, "models/clv").await;
    let all = app
        .analytics
        .clone()
        .list_at_risk_customers(TestApp::admin(pb::ListAtRiskCustomersRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .customers;
    assert_eq!(all.len(), 2, "{all:?}");

    let lin = TestApp::token("lin");
    let seen = crate::app::eventually("the manager's role applies", 10, async || {
        app.analytics
            .clone()
            .list_at_risk_customers(TestApp::as_user(pb::ListAtRiskCustomersRequest::default(), &lin))
            .await
            .map(|r| r.into_inner().customers)
            .map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(
        seen.iter().map(|s| s.customer.as_str()).collect::<Vec<_>>(),
        vec![fading[0].as_str()],
        "north's customer only"
    );
    let own = app
        .analytics
        .clone()
        .get_customer_score(TestApp::as_user(
            pb::GetCustomerScoreRequest {
                name: format!("{}/score", fading[0]),
            },
            &lin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(own.at_risk);
    for denied in [
        app.analytics
            .clone()
            .get_customer_score(TestApp::as_user(
                pb::GetCustomerScoreRequest {
                    name: format!("{}/score", fading[1]),
                },
                &lin,
            ))
            .await
            .unwrap_err(),
        app.analytics
            .clone()
            .get_recommendations(TestApp::as_user(
                pb::GetRecommendationsRequest {
                    customer: fading[1].clone(),
                    ..Default::default()
                },
                &lin,
            ))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refit_waits_for_the_fit_already_running_and_then_fits() {
    let app = TestApp::spawn().await;
    for (i, given) in ["Mei", "Lan", "Hua"].into_iter().enumerate() {
        let customer = app.customer(given, LifecycleStage::Customer, Channel::Web as i32).await;
        for (n, days_ago) in [90, 30 + i as i64, 3].into_iter().enumerate() {
            app.order(&customer, &format!("o-{i}-{n}"), days_ago, 100_000_000, &[("sku-a", "cat")])
                .await;
        }
    }
    app.caught_up("customer-profile", 3 + 9).await;
    // Another replica's fit holds the lease (as the schedule's first run at start
    // may); it ends a moment after the call comes.
    let db = crm_platform::db::connect(&app.db.target, 1).await.unwrap();
    let now = chrono::Utc::now().timestamp_micros();
    let lease = crm_platform::schedule::claim(
        &db,
        "fit:clv",
        "other-replica",
        now,
        std::time::Duration::from_secs(600),
        true,
    )
    .await
    .unwrap()
    .expect("no fit is running");
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        crm_platform::schedule::release(&db, &lease).await.unwrap();
    });
    let model = refit(&app, "models/clv").await;
    assert_eq!(
        (model.name.as_str(), model.trigger.as_str()),
        ("models/clv/versions/1", "admin-1")
    );
    release.await.unwrap();
}
