//! The platform's authorization client against the real service over gRPC: the
//! path every standalone service binary takes.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crm_platform::{
    Error,
    audit::AuditSpool,
    auth::Principal,
    authz::{Authz, PolicyDecisionPoint, RemotePdp, Resource},
    migrate::Migration,
    server::shutdown_channel,
    testing::TestDatabase,
};
use crm_proto::crm::permissions::v1 as pb;

use crate::app::TestApp;

async fn client(app: &TestApp, db: &TestDatabase) -> (Authz, crm_platform::server::Shutdown) {
    let mut cfg = app.config.platform.clone();
    cfg.permissions.url = format!("http://{}", app.addr);
    cfg.permissions.service_account = "svc".into();
    cfg.permissions.decision_cache_secs = 30;
    cfg.permissions.timeout_ms = 500;
    let (shutdown, signal) = shutdown_channel();
    let pdp: Arc<dyn PolicyDecisionPoint> = Arc::new(RemotePdp::connect(&cfg, "test", signal).unwrap());
    let conn = crm_platform::db::connect(&db.target, 2).await.unwrap();
    crm_platform::migrate::run(
        &conn,
        &[Migration {
            version: 1,
            name: "audit spool",
            up: crm_platform::audit::migration_sql,
        }],
    )
    .await
    .unwrap();
    let authz = Authz::new(pdp, &cfg, AuditSpool::new(conn, "test")).unwrap();
    (authz, shutdown)
}

fn who(user: &str) -> Principal {
    Principal {
        user_id: user.into(),
        ..Principal::default()
    }
}

#[tokio::test]
async fn cached_decisions_fall_away_when_the_policy_changes() {
    let app = TestApp::spawn().await;
    let db = TestDatabase::new("client").unwrap();
    let binding = app.user("agent", &[], "service_agent", pb::Scope::All).await;
    let (authz, _stop) = client(&app, &db).await;
    let rec = Resource::record("customers/1", "x", "t");
    authz.check(&who("agent"), "customer.read", rec).await.unwrap();
    let scope = authz.read_scope(&who("agent"), "customer.read").await.unwrap();
    assert!(scope.all);
    assert!(matches!(
        authz.check(&who("agent"), "customer.update", rec).await,
        Err(Error::PermissionDenied { .. })
    ));

    app.client
        .clone()
        .delete_role_binding(TestApp::root(pb::DeleteRoleBindingRequest {
            name: binding.name.clone(),
        }))
        .await
        .unwrap();
    // The cache would keep the "allowed" for 30 s; the feed event drops it sooner.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match authz.check(&who("agent"), "customer.read", rec).await {
            Err(Error::PermissionDenied { .. }) => break,
            Ok(()) => assert!(Instant::now() < deadline, "revocation not seen within 10 s"),
            Err(other) => panic!("{other}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_unreachable_permissions_service_denies_with_unavailable() {
    let app = TestApp::spawn().await;
    let db = TestDatabase::new("client").unwrap();
    app.user("agent", &[], "service_agent", pb::Scope::All).await;
    let (authz, _stop) = client(&app, &db).await;
    // Let the client catch up with the feed (its epoch moves once when it has).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rec = Resource::record("customers/1", "", "");
    authz.check(&who("agent"), "customer.read", rec).await.unwrap();
    app.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Cached: still answered. Never decided before: refused, not allowed.
    authz.check(&who("agent"), "customer.read", rec).await.unwrap();
    let err = authz
        .check(&who("agent"), "customer.read", Resource::record("customers/2", "", ""))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unavailable);
}
