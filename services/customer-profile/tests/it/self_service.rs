//! A customer maintaining its own record with a self-service token: self-editable
//! fields only, provenance `self_service`, no internal fields shown, and the
//! self-service share of updates in the quality report.

use crm_proto::crm::customer::v1 as pb;
use prost_types::FieldMask;
use tonic::Code;

use crate::app::{TestApp, person};

async fn update(app: &TestApp, token: &str, c: pb::Customer, paths: &[&str]) -> Result<pb::Customer, tonic::Status> {
    app.client
        .clone()
        .update_customer(TestApp::as_user(
            pb::UpdateCustomerRequest {
                customer: Some(c),
                update_mask: Some(FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn customers_edit_their_contacts_and_see_no_internal_fields() {
    let app = TestApp::spawn().await;
    let mut c = person("Wei", "Zhang");
    c.owner_user_id = "rep-7".into();
    c.team_id = "north".into();
    c.tags = vec!["vip".into()];
    let c = app.create(c).await;
    let me = TestApp::customer_token(&c.name);

    let mine = app
        .client
        .clone()
        .get_customer(TestApp::as_user(pb::GetCustomerRequest { name: c.name.clone() }, &me))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.person_name.as_ref().unwrap().family_name, "Zhang");
    assert!(
        mine.owner_user_id.is_empty() && mine.team_id.is_empty() && mine.tags.is_empty(),
        "{mine:?}"
    );

    let changed = update(
        &app,
        &me,
        pb::Customer {
            name: c.name.clone(),
            phone_numbers: vec![pb::PhoneNumber {
                number: "13800138000".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
        &["phone_numbers"],
    )
    .await
    .unwrap();
    assert_eq!(
        changed.phone_numbers[0].number, "+8613800138000",
        "validated and normalised as any entry"
    );
    let staff_view = app.get(&c.name).await;
    let source = staff_view
        .provenance
        .iter()
        .find(|p| p.field == "phone_numbers")
        .map(|p| p.source.clone());
    assert_eq!(source.as_deref(), Some("self_service"));

    for (field, patch) in [
        (
            "display_name",
            pb::Customer {
                name: c.name.clone(),
                display_name: "Boss".into(),
                ..Default::default()
            },
        ),
        (
            "tags",
            pb::Customer {
                name: c.name.clone(),
                tags: vec!["platinum".into()],
                ..Default::default()
            },
        ),
    ] {
        let err = update(&app, &me, patch, &[field]).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{field}: {err:?}");
    }
    let other = app.create(person("Fang", "Li")).await;
    let err = update(
        &app,
        &me,
        pb::Customer {
            name: other.name.clone(),
            phone_numbers: vec![pb::PhoneNumber {
                number: "13800138001".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
        &["phone_numbers"],
    )
    .await
    .unwrap_err();
    assert!(matches!(err.code(), Code::PermissionDenied | Code::NotFound), "{err:?}");

    // One update by the customer, one by staff: half the updates were self-service.
    let admin = TestApp::token("admin-1");
    update(
        &app,
        &admin,
        pb::Customer {
            name: c.name.clone(),
            display_name: "Zhang Wei".into(),
            ..Default::default()
        },
        &["display_name"],
    )
    .await
    .unwrap();
    let report = app
        .client
        .clone()
        .get_data_quality_report(TestApp::admin(pb::GetDataQualityReportRequest {}))
        .await
        .unwrap()
        .into_inner();
    let rate = report.self_service_rate.unwrap();
    assert_eq!((rate.numerator, rate.denominator), (1, 2));
    assert_eq!(rate.status, pb::KpiStatus::Alert as i32);
}
