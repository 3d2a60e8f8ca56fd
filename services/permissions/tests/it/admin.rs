use crm_proto::crm::permissions::v1::{self as pb, audit_entry::Outcome};
use tonic::Code;

use crate::app::{TestApp, reason, violations};

#[tokio::test]
async fn bad_roles_are_refused_with_every_problem_named() {
    let app = TestApp::spawn().await;
    let err = app
        .client
        .clone()
        .create_role(TestApp::root(pb::CreateRoleRequest {
            role: Some(pb::Role {
                name: "roles/Bad Name".into(),
                permissions: vec!["read everything".into()],
                clearance: 9,
                ..Default::default()
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err), vec!["role.name", "role.permissions[0]", "role.clearance"]);
}

#[tokio::test]
async fn administration_needs_permissions_admin_and_denials_are_audited() {
    let app = TestApp::spawn().await;
    app.user("rep", &[], "sales_rep", pb::Scope::Own).await;
    let err = app
        .client
        .clone()
        .create_team(TestApp::as_user(
            pb::CreateTeamRequest {
                team: Some(pb::Team {
                    name: "teams/x".into(),
                    ..Default::default()
                }),
            },
            "rep",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let log = app
        .client
        .clone()
        .list_audit_entries(TestApp::root(pb::ListAuditEntriesRequest {
            actor: "rep".into(),
            outcome: Outcome::Denied as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .audit_entries;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].action, "permissions.admin");
    assert_eq!(log[0].resource, "teams");
}

#[tokio::test]
async fn updates_check_etags_and_team_moves_cannot_make_cycles() {
    let app = TestApp::spawn().await;
    app.team("a", "").await;
    app.team("b", "a").await;
    let c = app.team("c", "b").await;
    let mut client = app.client.clone();
    let err = client
        .update_team(TestApp::root(pb::UpdateTeamRequest {
            team: Some(pb::Team {
                name: "teams/a".into(),
                parent: "teams/c".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["parent".into()],
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err), vec!["team.parent"]);
    let renamed = client
        .update_team(TestApp::root(pb::UpdateTeamRequest {
            team: Some(pb::Team {
                name: c.name.clone(),
                display_name: "Pudong".into(),
                etag: c.etag.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["display_name".into()],
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(renamed.etag, c.etag);
    let err = client
        .update_team(TestApp::root(pb::UpdateTeamRequest {
            team: Some(pb::Team {
                name: c.name.clone(),
                display_name: "Stale".into(),
                etag: c.etag,
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(reason(&err), "ETAG_MISMATCH");
}

#[tokio::test]
async fn teams_with_members_and_roles_in_use_are_not_deleted() {
    let app = TestApp::spawn().await;
    app.team("east", "").await;
    app.user("rep", &["east"], "sales_rep", pb::Scope::Team).await;
    let mut client = app.client.clone();
    let err = client
        .delete_team(TestApp::root(pb::DeleteTeamRequest {
            name: "teams/east".into(),
            etag: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "TEAM_HAS_MEMBERS")
    );
    let err = client
        .delete_role(TestApp::root(pb::DeleteRoleRequest {
            name: "roles/sales_rep".into(),
            etag: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::FailedPrecondition, "ROLE_IN_USE"));
    // Deleting the user removes its bindings; then both go.
    client
        .delete_user(TestApp::root(pb::DeleteUserRequest {
            name: "users/rep".into(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    client
        .delete_team(TestApp::root(pb::DeleteTeamRequest {
            name: "teams/east".into(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    client
        .delete_role(TestApp::root(pb::DeleteRoleRequest {
            name: "roles/sales_rep".into(),
            etag: String::new(),
        }))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_binding_retried_with_its_request_id_is_created_once() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    client
        .create_user(TestApp::root(pb::CreateUserRequest {
            user: Some(pb::User {
                name: "users/u".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
    let req = || pb::CreateRoleBindingRequest {
        role_binding: Some(pb::RoleBinding {
            user: "users/u".into(),
            role: "roles/marketer".into(),
            scope: pb::Scope::All as i32,
            ..Default::default()
        }),
        request_id: "r-1".into(),
    };
    let first = client.create_role_binding(TestApp::root(req())).await.unwrap().into_inner();
    let again = client.create_role_binding(TestApp::root(req())).await.unwrap().into_inner();
    assert_eq!(first.name, again.name);
    let listed = client
        .list_role_bindings(TestApp::root(pb::ListRoleBindingsRequest {
            user: "users/u".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .role_bindings;
    assert_eq!(listed.len(), 1);
    // Unknown users and roles are named.
    let err = client
        .create_role_binding(TestApp::root(pb::CreateRoleBindingRequest {
            role_binding: Some(pb::RoleBinding {
                user: "users/ghost".into(),
                role: "roles/ghost".into(),
                scope: pb::Scope::All as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["role_binding.user", "role_binding.role"]);
}

#[tokio::test]
async fn lists_page_through_every_user() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    for i in 0..7 {
        client
            .create_user(TestApp::root(pb::CreateUserRequest {
                user: Some(pb::User {
                    name: format!("users/u{i}"),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap();
    }
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_users(TestApp::root(pb::ListUsersRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(page.users.len() <= 3);
        names.extend(page.users.into_iter().map(|u| u.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // Seven created, plus the bootstrap admin and service account.
    assert_eq!(names.len(), 9, "{names:?}");
}

#[tokio::test]
async fn an_update_without_a_mask_changes_only_the_fields_it_sets() {
    let app = TestApp::spawn().await;
    app.team("east", "").await;
    app.user("u", &["east"], "sales_rep", pb::Scope::Own).await;
    let mut client = app.client.clone();
    client
        .update_user(TestApp::root(pb::UpdateUserRequest {
            user: Some(pb::User {
                name: "users/u".into(),
                disabled: true,
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await
        .unwrap();
    let renamed = client
        .update_user(TestApp::root(pb::UpdateUserRequest {
            user: Some(pb::User {
                name: "users/u".into(),
                display_name: "U".into(),
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(renamed.disabled, "the rename left `disabled` alone");
    assert_eq!(renamed.teams, vec!["teams/east"], "and the teams");
    assert_eq!(renamed.display_name, "U");
}

/// Every start seeds the default roles this database has not seen (an upgrade's new
/// role appears), never brings back one an administrator deleted, and keeps the
/// system's `service` role at least at its defaults.
#[tokio::test]
async fn restarts_seed_new_default_roles_and_keep_the_service_role_whole() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let cfg = &app.config.permissions_service;
    let defaults: Vec<pb::Role> = cfg.default_roles.iter().filter_map(|r| cfg.role(r)).collect();
    let restart = || {
        app.service.bootstrap(
            &defaults,
            &cfg.bootstrap_admins,
            &cfg.service_accounts,
            &cfg.campaign_senders,
            &cfg.data_exporters,
        )
    };
    let role = |name: &str| {
        let mut c = app.client.clone();
        let name = name.to_owned();
        async move { c.get_role(TestApp::root(pb::GetRoleRequest { name })).await }
    };
    client
        .delete_role(TestApp::root(pb::DeleteRoleRequest {
            name: "roles/privacy_officer".into(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    client
        .update_role(TestApp::root(pb::UpdateRoleRequest {
            role: Some(pb::Role {
                name: "roles/service".into(),
                permissions: vec!["permissions.check".into()],
                clearance: pb::Classification::Public as i32,
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await
        .unwrap();
    restart().await.unwrap();
    assert_eq!(
        role("roles/privacy_officer").await.unwrap_err().code(),
        Code::NotFound,
        "a deleted role stays deleted"
    );
    let service = role("roles/service").await.unwrap().into_inner();
    assert!(
        service.permissions.iter().any(|p| p == "customer.events"),
        "{:?}",
        service.permissions
    );
    assert_eq!(service.clearance, pb::Classification::Internal as i32);
    // A version that introduces privacy_officer: this database has never seen it.
    let db = crm_platform::db::connect(&app.db.target, 1).await.unwrap();
    crm_platform::db::exec(
        &db,
        "DELETE FROM permissions_meta WHERE name = ?",
        vec!["role_seeded:privacy_officer".into()],
    )
    .await
    .unwrap();
    restart().await.unwrap();
    assert!(
        role("roles/privacy_officer").await.is_ok(),
        "a role new to this database is created"
    );
}
