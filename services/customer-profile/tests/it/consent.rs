//! Consent through the gRPC API, and the shared contact rule applied to what it returns.

use crm_platform::consent::may_contact;
use crm_proto::crm::customer::v1::{self as pb, ConsentPurpose, ConsentStatus, ContactChannel};
use tonic::Code;

use crate::app::{TestApp, person, violations};

fn statement(channel: ContactChannel, status: ConsentStatus, at: i64) -> pb::ConsentRecord {
    pb::ConsentRecord {
        purpose: ConsentPurpose::Marketing as i32,
        channel: channel as i32,
        status: status as i32,
        legal_basis: pb::LegalBasis::Consent as i32,
        source: "store-form".into(),
        effective_time: Some(prost_types::Timestamp { seconds: at, nanos: 0 }),
        proof_reference: "form-2291".into(),
        ..Default::default()
    }
}

async fn update(
    app: &TestApp,
    token: &str,
    name: &str,
    changes: Vec<pb::ConsentRecord>,
    etag: &str,
) -> Result<pb::Consent, tonic::Status> {
    app.client
        .clone()
        .update_consent(TestApp::as_user(
            pb::UpdateConsentRequest {
                name: name.into(),
                changes,
                etag: etag.into(),
                request_id: String::new(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn the_latest_statement_is_in_force_and_every_one_is_kept() {
    let app = TestApp::spawn().await;
    let admin = TestApp::token("admin-1");
    let c = app.create(person("Wei", "Zhang")).await;
    let name = format!("{}/consent", c.name);
    let now = chrono::Utc::now();
    let t = now.timestamp() - 3600;
    let first = update(
        &app,
        &admin,
        &name,
        vec![statement(ContactChannel::Sms, ConsentStatus::Granted, t)],
        "",
    )
    .await
    .unwrap();
    assert!(may_contact(&first.records, ConsentPurpose::Marketing, ContactChannel::Sms, now).allowed);
    assert!(!may_contact(&first.records, ConsentPurpose::Marketing, ContactChannel::Email, now).allowed);
    // A stale etag is refused.
    let err = update(
        &app,
        &admin,
        &name,
        vec![statement(ContactChannel::Email, ConsentStatus::Granted, t)],
        "\"0\"",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    // Withdrawn for every channel later: no more SMS.
    let second = update(
        &app,
        &admin,
        &name,
        vec![statement(ContactChannel::Unspecified, ConsentStatus::Withdrawn, t + 60)],
        &first.etag,
    )
    .await
    .unwrap();
    assert!(!may_contact(&second.records, ConsentPurpose::Marketing, ContactChannel::Sms, now).allowed);
    // A statement delivered late (stated before the one in force) is kept, not in force.
    let third = update(
        &app,
        &admin,
        &name,
        vec![statement(ContactChannel::Sms, ConsentStatus::Denied, t - 60)],
        "",
    )
    .await
    .unwrap();
    let sms = third
        .records
        .iter()
        .find(|r| r.channel == ContactChannel::Sms as i32)
        .unwrap();
    assert_eq!(sms.status, ConsentStatus::Granted as i32);
    let history = app
        .client
        .clone()
        .list_consent_history(TestApp::admin(pb::ListConsentHistoryRequest {
            name: name.clone(),
            page_size: 2,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let statuses: Vec<i32> = history.records.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![ConsentStatus::Denied as i32, ConsentStatus::Withdrawn as i32]);
    assert!(!history.next_page_token.is_empty());
    assert_eq!(history.records[0].recorded_by, "admin-1");

    let err = update(&app, &admin, &name, vec![pb::ConsentRecord::default()], "")
        .await
        .unwrap_err();
    assert_eq!(
        violations(&err),
        vec![
            "changes[0].purpose",
            "changes[0].status",
            "changes[0].legal_basis",
            "changes[0].source"
        ]
    );
}

#[tokio::test]
async fn customers_state_their_own_consent() {
    let app = TestApp::spawn().await;
    let c = app.create(person("Wei", "Zhang")).await;
    let other = app.create(person("Fang", "Li")).await;
    let me = TestApp::customer_token(&c.name);
    let now = chrono::Utc::now().timestamp() - 10;
    let mine = update(
        &app,
        &me,
        &format!("{}/consent", c.name),
        vec![statement(ContactChannel::Wechat, ConsentStatus::Granted, now)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(mine.records[0].source, "self_service");
    assert_eq!(mine.records[0].recorded_by, c.name);
    let err = update(
        &app,
        &me,
        &format!("{}/consent", other.name),
        vec![statement(ContactChannel::Wechat, ConsentStatus::Granted, now)],
        "",
    )
    .await
    .unwrap_err();
    assert!(matches!(err.code(), Code::PermissionDenied | Code::NotFound), "{err:?}");
    let read = app
        .client
        .clone()
        .get_consent(TestApp::as_user(
            pb::GetConsentRequest {
                name: format!("{}/consent", c.name),
            },
            &me,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.records.len(), 1);
}
