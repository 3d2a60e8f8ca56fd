//! Duplicate detection over gRPC: candidates found on write, the review queue,
//! FindDuplicates for stored customers and probes, dismissal.

use crm_proto::crm::customer::v1 as pb;
use tonic::Code;

use crate::app::{TestApp, person, reason};

fn with_contacts(mut c: pb::Customer, phone: &str, email: &str) -> pb::Customer {
    if !phone.is_empty() {
        c.phone_numbers = vec![pb::PhoneNumber {
            number: phone.into(),
            ..Default::default()
        }];
    }
    if !email.is_empty() {
        c.email_addresses = vec![pb::EmailAddress {
            address: email.into(),
            ..Default::default()
        }];
    }
    c
}

async fn queue(app: &TestApp, state: pb::DuplicateState, customer: &str) -> Vec<pb::DuplicateCandidate> {
    app.client
        .clone()
        .list_duplicate_candidates(TestApp::admin(pb::ListDuplicateCandidatesRequest {
            page_size: 0,
            page_token: String::new(),
            state: state as i32,
            customer: customer.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .duplicate_candidates
}

#[tokio::test]
async fn writes_find_candidates_for_review() {
    let app = TestApp::spawn().await;
    let a = app.create(with_contacts(person("小明", "王"), "13800138000", "")).await;
    let _unrelated = app.create(with_contacts(person("Ann", "Lee"), "13900139000", "")).await;
    // Same line, same family, another given name: a household or the same person.
    let b = app.create(with_contacts(person("晓明", "王"), "+86 138 0013 8000", "")).await;
    let open = queue(&app, pb::DuplicateState::Open, "").await;
    assert_eq!(open.len(), 1, "{open:#?}");
    let pair = &open[0];
    assert_eq!(pair.customer, b.name, "the later write is the candidate's customer");
    assert_eq!(pair.other_customer, a.name);
    assert!(
        pair.match_probability >= 0.8 && pair.match_probability < 0.98,
        "{}",
        pair.match_probability
    );
    let phone = pair.comparisons.iter().find(|c| c.field == "phone").unwrap();
    assert_eq!(phone.outcome, pb::ComparisonOutcome::Agree as i32);
    assert!(phone.weight > 10.0);
    assert_eq!(queue(&app, pb::DuplicateState::Open, &a.name).await.len(), 1);

    // FindDuplicates scores without storing; a probe is validated like a create.
    let found = app
        .client
        .clone()
        .find_duplicates(TestApp::admin(pb::FindDuplicatesRequest {
            probe: Some(pb::find_duplicates_request::Probe::Customer(with_contacts(
                person("小明", "王"),
                "138-0013-8000",
                "",
            ))),
            max_matches: 5,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.matches[0].customer, a.name);
    assert_eq!(found.matches[0].decision, pb::MatchDecision::Match as i32);
    assert_eq!(found.matches.len(), 2);

    // Changing b's phone removes the open pair.
    let mut client = app.client.clone();
    client
        .update_customer(TestApp::admin(pb::UpdateCustomerRequest {
            customer: Some(with_contacts(
                pb::Customer {
                    name: b.name.clone(),
                    ..Default::default()
                },
                "13700137000",
                "",
            )),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["phone_numbers".into()],
            }),
        }))
        .await
        .unwrap();
    assert!(queue(&app, pb::DuplicateState::Open, "").await.is_empty());
}

#[tokio::test]
async fn dismissed_pairs_stay_dismissed() {
    let app = TestApp::spawn().await;
    let a = app
        .create(with_contacts(person("Sam", "Taylor"), "", "sam@example.com"))
        .await;
    let b = app
        .create(with_contacts(person("Samantha", "Taylor"), "", "sam@example.com"))
        .await;
    let open = queue(&app, pb::DuplicateState::Open, &b.name).await;
    assert_eq!(open.len(), 1);
    let mut client = app.client.clone();
    let dismissed = client
        .dismiss_duplicate_candidate(TestApp::admin(pb::DismissDuplicateCandidateRequest {
            name: open[0].name.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dismissed.state, pb::DuplicateState::Dismissed as i32);
    // A later write of the pair re-scores it but does not reopen it.
    client
        .update_customer(TestApp::admin(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                name: a.name.clone(),
                team_id: "t1".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["team_id".into()],
            }),
        }))
        .await
        .unwrap();
    assert!(queue(&app, pb::DuplicateState::Open, "").await.is_empty());
    assert_eq!(queue(&app, pb::DuplicateState::Dismissed, "").await.len(), 1);

    let err = client
        .dismiss_duplicate_candidate(TestApp::admin(pb::DismissDuplicateCandidateRequest {
            name: "duplicateCandidates/0192f0c1-0000-7000-8000-000000000000".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .find_duplicates(TestApp::admin(pb::FindDuplicatesRequest {
            probe: None,
            max_matches: 500,
        }))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "INVALID_ARGUMENT");
}

#[tokio::test]
async fn a_deleted_customer_leaves_the_queue() {
    let app = TestApp::spawn().await;
    app.create(with_contacts(person("Sam", "Taylor"), "", "sam@example.com"))
        .await;
    let b = app
        .create(with_contacts(person("Alex", "Taylor"), "", "sam@example.com"))
        .await;
    assert_eq!(queue(&app, pb::DuplicateState::Open, "").await.len(), 1);
    app.client
        .clone()
        .delete_customer(TestApp::admin(pb::DeleteCustomerRequest {
            name: b.name.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    assert!(queue(&app, pb::DuplicateState::Open, "").await.is_empty());
    // And it is no longer a candidate for new writes.
    app.create(with_contacts(person("Jo", "Taylor"), "", "sam@example.com")).await;
    let open = queue(&app, pb::DuplicateState::Open, "").await;
    assert!(
        open.iter().all(|c| c.customer != b.name && c.other_customer != b.name),
        "{open:#?}"
    );
}
