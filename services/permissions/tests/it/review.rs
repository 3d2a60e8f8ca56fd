use crm_proto::crm::permissions::v1::{self as pb, Finding, access_review_item::Access};
use tonic::Code;

use crate::app::{TestApp, reason};

#[tokio::test]
async fn the_review_lists_access_with_findings_and_records_confirmations() {
    let app = TestApp::spawn().await;
    let rep = app.user("rep", &[], "sales_rep", pb::Scope::Own).await;
    app.user("aud", &[], "auditor", pb::Scope::All).await;
    let review = app
        .client
        .clone()
        .get_access_review(TestApp::as_user(pb::GetAccessReviewRequest::default(), "aud"))
        .await
        .unwrap()
        .into_inner();
    let root = review
        .items
        .iter()
        .find(|i| i.user == "users/root")
        .expect("the bootstrap admin is listed");
    assert!(root.findings.contains(&(Finding::Privileged as i32)));
    assert!(review.items.iter().any(|i| i.user == "users/rep"));

    // Confirming: not your own, and the next review falls due later.
    let err = app
        .client
        .clone()
        .confirm_role_binding(TestApp::as_user(
            pb::ConfirmRoleBindingRequest {
                name: review
                    .items
                    .iter()
                    .find_map(|i| match &i.access {
                        Some(Access::RoleBinding(b)) if i.user == "users/aud" => Some(b.name.clone()),
                        _ => None,
                    })
                    .unwrap(),
            },
            "aud",
        ))
        .await
        .unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::FailedPrecondition, "SELF_REVIEW"));
    let confirmed = app
        .client
        .clone()
        .confirm_role_binding(TestApp::as_user(
            pb::ConfirmRoleBindingRequest { name: rep.name.clone() },
            "aud",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(confirmed.reviewer, "aud");
    assert!(confirmed.review_due_time.unwrap().seconds >= rep.review_due_time.unwrap().seconds);

    // A used binding records its last use.
    assert!(app.check("rep", "customer.read", "customers/1", "rep", "").await.allowed);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let b = app
            .client
            .clone()
            .get_role_binding(TestApp::root(pb::GetRoleBindingRequest { name: rep.name.clone() }))
            .await
            .unwrap()
            .into_inner();
        if b.last_used_time.is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "usage never recorded");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let err = app
        .client
        .clone()
        .get_access_review(TestApp::as_user(pb::GetAccessReviewRequest::default(), "rep"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}
