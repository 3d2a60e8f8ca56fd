//! A customer erased in customer-profile: its tickets keep their shape (category,
//! channel, status, times) for reports, and lose what was written by or about the
//! customer, with a history entry saying why. Applying the event again changes nothing.

use crm_platform::{consumer::Apply, db::begin_write};
use crm_proto::crm::{common::v1::Channel as SourceChannel, customer::v1 as cpb, events::v1::Event, ticketing::v1 as pb};
use crm_ticketing::service::erasure::{CUSTOMER_ERASED, Erasures};
use prost::Message;

use crate::app::TestApp;

fn ticket(customer: &str, subject: &str) -> pb::Ticket {
    pb::Ticket {
        customer: customer.into(),
        channel: SourceChannel::Email as i32,
        category: "billing".into(),
        subject: subject.into(),
        description: format!("{subject}: please call me on 13812345678"),
        custom_fields: [("order".to_owned(), "SO-1".to_owned())].into(),
        ..Default::default()
    }
}

fn erased_event(customers: &[&str]) -> Event {
    let erasure = cpb::Erasure {
        name: format!("erasures/{}", customers[0].trim_start_matches("customers/")),
        customer: customers[0].into(),
        erased_customers: customers.iter().map(|c| (*c).to_owned()).collect(),
        reason: "DSR-1".into(),
        actor: "dpo-1".into(),
        ..Default::default()
    };
    Event {
        r#type: CUSTOMER_ERASED.into(),
        actor: "dpo-1".into(),
        data: Some(prost_types::Any {
            type_url: format!("type.googleapis.com/{CUSTOMER_ERASED}"),
            value: cpb::CustomerErased { erasure: Some(erasure) }.encode_to_vec(),
        }),
        ..Default::default()
    }
}

async fn apply(app: &TestApp, event: &Event) {
    let db = crm_platform::db::connect(&app.db.target, 1).await.unwrap();
    let txn = begin_write(&db).await.unwrap();
    Erasures.apply(&txn, event).await.unwrap();
    txn.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_customers_tickets_lose_their_personal_data() {
    let app = TestApp::spawn().await;
    let gone = "customers/0190e0f4-0000-7000-8000-000000000001";
    let kept = "customers/0190e0f4-0000-7000-8000-000000000002";
    let mine = app.create(ticket(gone, "Refund for Quixote")).await;
    let theirs = app.create(ticket(kept, "Refund for Panza")).await;
    app.tickets
        .clone()
        .create_comment(TestApp::admin(pb::CreateCommentRequest {
            parent: mine.name.clone(),
            comment: Some(pb::Comment {
                body: "Quixote called again".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }))
        .await
        .unwrap();

    apply(&app, &erased_event(&[gone])).await;
    apply(&app, &erased_event(&[gone])).await;

    let got = |name: String| {
        let mut client = app.tickets.clone();
        async move {
            client
                .get_ticket(TestApp::admin(pb::GetTicketRequest { name }))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let scrubbed = got(mine.name.clone()).await;
    assert_eq!((scrubbed.subject.as_str(), scrubbed.description.as_str()), ("", ""));
    assert!(scrubbed.custom_fields.is_empty());
    assert_eq!(scrubbed.category, "billing", "the ticket's shape stays for reports");
    assert_eq!(scrubbed.create_time, mine.create_time);
    assert_ne!(scrubbed.etag, mine.etag, "a scrub is a change");
    let comments = app
        .tickets
        .clone()
        .list_comments(TestApp::admin(pb::ListCommentsRequest {
            parent: mine.name.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .comments;
    assert!(!comments.is_empty() && comments.iter().all(|c| c.body.is_empty()));
    let history = app
        .tickets
        .clone()
        .list_ticket_history(TestApp::admin(pb::ListTicketHistoryRequest {
            parent: mine.name.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .entries;
    let said = history
        .iter()
        .filter(|e| e.description.contains("personal data erased"))
        .count();
    assert_eq!(said, 1, "said once: applying again finds nothing left to erase");
    let untouched = got(theirs.name.clone()).await;
    assert_eq!(untouched.subject, "Refund for Panza");
    assert_eq!(untouched.etag, theirs.etag);
}
