use crm_proto::crm::permissions::v1::{self as pb};
use tonic::Code;

use crate::app::TestApp;

#[tokio::test]
async fn check_read_scope_and_field_policy_follow_bindings() {
    let app = TestApp::spawn().await;
    app.team("east", "").await;
    app.team("shanghai", "east").await;
    app.user("mgr", &["east"], "sales_manager", pb::Scope::TeamSubtree).await;
    assert!(
        app.check("mgr", "customer.update", "customers/1", "x", "shanghai")
            .await
            .allowed
    );
    let no = app.check("mgr", "customer.update", "customers/1", "x", "west").await;
    assert!(!no.allowed && !no.reason.is_empty());
    assert!(!app.check("mgr", "ticket.assign", "tickets/1", "mgr", "").await.allowed);
    assert!(!app.check("stranger", "customer.read", "customers", "", "").await.allowed);

    let scope = app
        .client
        .clone()
        .get_read_scope(TestApp::as_user(
            pb::GetReadScopeRequest {
                principal: Some(pb::Principal {
                    user_id: "mgr".into(),
                    customer_id: String::new(),
                }),
                permission: "customer.read".into(),
            },
            "mgr",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!scope.all);
    assert_eq!(scope.owner_user_ids, vec!["mgr"]);
    assert_eq!(scope.team_ids, vec!["east", "shanghai"]);

    let ask = |resource: Option<pb::ResourceRef>| {
        let mut client = app.client.clone();
        async move {
            client
                .get_field_policy(TestApp::as_user(
                    pb::GetFieldPolicyRequest {
                        principal: Some(pb::Principal {
                            user_id: "mgr".into(),
                            customer_id: String::new(),
                        }),
                        permission: "customer.read".into(),
                        fields: vec![pb::FieldClassification {
                            path: "display_name".into(),
                            classification: pb::Classification::Internal as i32,
                        }],
                        resource,
                    },
                    "mgr",
                ))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let elsewhere = ask(Some(pb::ResourceRef {
        name: "customers/9".into(),
        owner_user_id: "x".into(),
        team_id: "west".into(),
    }))
    .await;
    assert_eq!(elsewhere.clearance, 0, "nothing reaches a west record");
    assert_eq!(elsewhere.fields["display_name"], pb::Visibility::Hidden as i32);
    assert_eq!(ask(None).await.rules.len(), 1);
    let policy = app
        .client
        .clone()
        .get_field_policy(TestApp::as_user(
            pb::GetFieldPolicyRequest {
                resource: None,
                principal: Some(pb::Principal {
                    user_id: "mgr".into(),
                    customer_id: String::new(),
                }),
                permission: "customer.read".into(),
                fields: [
                    ("display_name", pb::Classification::Internal),
                    ("phone_numbers", pb::Classification::Sensitive),
                    ("national_id", pb::Classification::Confidential),
                ]
                .into_iter()
                .map(|(p, c)| pb::FieldClassification {
                    path: p.into(),
                    classification: c as i32,
                })
                .collect(),
            },
            "mgr",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(policy.clearance, pb::Classification::Sensitive as i32);
    assert_eq!(policy.fields["display_name"], pb::Visibility::Visible as i32);
    assert_eq!(policy.fields["phone_numbers"], pb::Visibility::Visible as i32);
    assert_eq!(policy.fields["national_id"], pb::Visibility::Masked as i32);
}

#[tokio::test]
async fn asking_about_someone_else_needs_permissions_check() {
    let app = TestApp::spawn().await;
    app.user("rep", &[], "sales_rep", pb::Scope::Own).await;
    let about_root = pb::CheckRequest {
        principal: Some(pb::Principal {
            user_id: "root".into(),
            customer_id: String::new(),
        }),
        permission: "customer.read".into(),
        resource: Some(pb::ResourceRef {
            name: "customers".into(),
            ..Default::default()
        }),
    };
    let err = app
        .client
        .clone()
        .check(TestApp::as_user(about_root.clone(), "rep"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let batch = app
        .client
        .clone()
        .batch_check(TestApp::as_user(
            pb::BatchCheckRequest {
                checks: vec![about_root.clone(); 3],
            },
            "svc",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.results.len(), 3);
    assert!(batch.results.iter().all(|r| r.allowed));
    let err = app
        .client
        .clone()
        .batch_check(TestApp::as_user(pb::BatchCheckRequest { checks: vec![] }, "svc"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_disabled_user_is_denied_everything() {
    let app = TestApp::spawn().await;
    app.user("u", &[], "admin", pb::Scope::All).await;
    assert!(app.check("u", "customer.read", "customers/1", "", "").await.allowed);
    app.client
        .clone()
        .update_user(TestApp::root(pb::UpdateUserRequest {
            user: Some(pb::User {
                name: "users/u".into(),
                disabled: true,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["disabled".into()],
            }),
        }))
        .await
        .unwrap();
    assert!(!app.check("u", "customer.read", "customers/1", "", "").await.allowed);
}
