//! MergeCustomers and UnmergeCustomer over gRPC.

use crm_proto::crm::{common::v1 as common, customer::v1 as pb};
use tonic::Code;

use crate::app::{TestApp, person, reason, violations};

async fn merge(app: &TestApp, survivor: &str, merged: &[&str]) -> Result<pb::Customer, tonic::Status> {
    app.client
        .clone()
        .merge_customers(TestApp::admin(pb::MergeCustomersRequest {
            survivor: survivor.into(),
            survivor_etag: String::new(),
            merged: merged.iter().map(|m| (*m).to_owned()).collect(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

async fn unmerge(app: &TestApp, name: &str) -> Result<pb::Customer, tonic::Status> {
    app.client
        .clone()
        .unmerge_customer(TestApp::admin(pb::UnmergeCustomerRequest { name: name.into() }))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn merge_makes_aliases_and_unmerge_restores_both() {
    let app = TestApp::spawn().await;
    let mut a = person("Sam", "Taylor");
    a.email_addresses = vec![pb::EmailAddress {
        address: "sam@example.com".into(),
        ..Default::default()
    }];
    let a = app.create(a).await;
    let mut b = person("Alex", "Taylor");
    b.email_addresses = a.email_addresses.clone();
    b.phone_numbers = vec![pb::PhoneNumber {
        number: "13800138000".into(),
        ..Default::default()
    }];
    b.birth_date = "1990-05-06".into();
    // b is known to the shop under its own id.
    let b = app
        .try_ingest("shop", common::Channel::Ecommerce, "s-9", b, None)
        .await
        .unwrap()
        .customer
        .unwrap();
    assert_ne!(a.name, b.name, "a review-level match is not linked automatically");

    let survivor = merge(&app, &a.name, &[&b.name]).await.unwrap();
    assert_eq!(survivor.name, a.name);
    assert_eq!(survivor.merged_customers, vec![b.name.clone()]);
    assert_eq!(survivor.phone_numbers.len(), 1, "contacts united");
    assert_eq!(survivor.birth_date, "1990-05-06", "an empty value takes the merged one");
    assert_eq!(
        survivor.person_name.as_ref().unwrap().given_name,
        "Sam",
        "the API-set name is more trusted than the shop's"
    );
    assert_eq!(survivor.external_ids.len(), 1);
    // The merged id answers with the survivor and leaves lists.
    assert_eq!(app.get(&b.name).await.name, a.name);
    assert_eq!(app.list_first_page().await.len(), 1);
    // The shop's external id now updates the survivor.
    let vip = pb::Customer {
        tags: vec!["vip".into()],
        ..Default::default()
    };
    let r = app
        .try_ingest("shop", common::Channel::Ecommerce, "s-9", vip, None)
        .await
        .unwrap();
    assert_eq!(r.customer.unwrap().name, a.name);

    // The survivor changed since the merge: undoing would lose that change.
    let err = unmerge(&app, &b.name).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "SURVIVOR_CHANGED");
}

#[tokio::test]
async fn unmerge_restores_every_customer_of_the_merge() {
    let app = TestApp::spawn().await;
    let a = app.create(person("Ann", "Lee")).await;
    let mut b = person("Anne", "Lee");
    b.phone_numbers = vec![pb::PhoneNumber {
        number: "13900139000".into(),
        ..Default::default()
    }];
    let b = app.create(b).await;
    let c = app.create(person("A.", "Lee")).await;
    let survivor = merge(&app, &a.name, &[&b.name, &c.name]).await.unwrap();
    assert_eq!(survivor.phone_numbers.len(), 1);

    let restored = unmerge(&app, &c.name).await.unwrap();
    assert_eq!(restored.name, c.name);
    assert_eq!(restored.display_name, "A. Lee");
    assert_eq!(app.get(&b.name).await.name, b.name, "b comes back too");
    let a_again = app.get(&a.name).await;
    assert!(a_again.phone_numbers.is_empty(), "the survivor is as before the merge");
    assert!(a_again.merged_customers.is_empty());
    let err = unmerge(&app, &b.name).await.unwrap_err();
    assert_eq!(reason(&err), "NOT_MERGED");
    // The undone pairs are declared distinct, not proposed again.
    let open = app
        .client
        .clone()
        .list_duplicate_candidates(TestApp::admin(pb::ListDuplicateCandidatesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .duplicate_candidates;
    assert!(
        open.iter().all(|c| c.customer != a.name && c.other_customer != a.name),
        "{open:#?}"
    );
}

#[tokio::test]
async fn merging_never_drops_contacts() {
    let app = TestApp::spawn().await;
    let phones = |base: u64| {
        (0..6)
            .map(|i| pb::PhoneNumber {
                number: format!("1380013{:04}", base + i),
                ..Default::default()
            })
            .collect::<Vec<_>>()
    };
    let a = app
        .create(pb::Customer {
            phone_numbers: phones(0),
            ..person("Ann", "Lee")
        })
        .await;
    let b = app
        .create(pb::Customer {
            phone_numbers: phones(100),
            ..person("Anne", "Lee")
        })
        .await;
    let err = merge(&app, &a.name, &[&b.name]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "MERGE_TOO_MANY_VALUES");
    assert_eq!(app.get(&b.name).await.name, b.name, "nothing changed");
}

#[tokio::test]
async fn bad_merges_are_refused() {
    let app = TestApp::spawn().await;
    let a = app.create(person("Ann", "Lee")).await;
    let err = merge(&app, &a.name, &[&a.name, "nope"]).await.unwrap_err();
    assert_eq!(violations(&err), vec!["merged[1]"]);
    let err = merge(&app, &a.name, &[&a.name]).await.unwrap_err();
    assert_eq!(violations(&err), vec!["merged[0]"]);
    let err = merge(&app, &a.name, &[]).await.unwrap_err();
    assert_eq!(violations(&err), vec!["merged"]);
    let err = merge(&app, &a.name, &["customers/0192f0c1-0000-7000-8000-000000000000"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

/// A pair a reviewer dismissed stays dismissed when one side is merged into another
/// customer: the survivor inherits the decision.
#[tokio::test]
async fn dismissed_pairs_follow_the_survivor() {
    let app = TestApp::spawn().await;
    let email = |c: pb::Customer| pb::Customer {
        email_addresses: vec![pb::EmailAddress {
            address: "sam@example.com".into(),
            ..Default::default()
        }],
        ..c
    };
    let x = app.create(email(person("Sam", "Taylor"))).await;
    let b = app.create(email(person("Alex", "Taylor"))).await;
    let mut client = app.client.clone();
    let open = client
        .list_duplicate_candidates(TestApp::admin(pb::ListDuplicateCandidatesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .duplicate_candidates;
    assert_eq!(open.len(), 1);
    client
        .dismiss_duplicate_candidate(TestApp::admin(pb::DismissDuplicateCandidateRequest {
            name: open[0].name.clone(),
        }))
        .await
        .unwrap();
    // No contacts: names alone never block, so `a` has no pair with `x` yet.
    let a = app.create(person("Alex", "Taylor")).await;
    let survivor = merge(&app, &a.name, &[&b.name]).await.unwrap();
    assert_eq!(survivor.email_addresses.len(), 1, "the survivor now shares x's e-mail");
    let open = client
        .list_duplicate_candidates(TestApp::admin(pb::ListDuplicateCandidatesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .duplicate_candidates;
    assert!(open.is_empty(), "{open:#?}");
    let dismissed = client
        .list_duplicate_candidates(TestApp::admin(pb::ListDuplicateCandidatesRequest {
            state: pb::DuplicateState::Dismissed as i32,
            customer: a.name.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .duplicate_candidates;
    assert_eq!(dismissed.len(), 1);
    assert!(dismissed[0].customer == x.name || dismissed[0].other_customer == x.name);
}
