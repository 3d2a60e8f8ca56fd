//! The right to erasure across the suite (`crm serve`): a customer with a ticket is
//! erased; ticketing scrubs the ticket from the feed; no RPC and no database file
//! holds the customer's data. Then data and key backups taken before the erasure are
//! restored: the restored customer is unreadable (its key stays destroyed), the
//! service finishes the erasure again, ticketing scrubs again, and the files are
//! clean once more.

use std::{path::Path, time::Duration};

use crm_e2e::serve_crm;
use crm_proto::crm::{
    common::v1::Channel as SourceChannel,
    customer::v1::{self as pb, customer_profile_service_client::CustomerProfileServiceClient},
    ticketing::v1::{self as tpb, ticketing_service_client::TicketingServiceClient},
};
use tonic::{Code, transport::Channel};

use crate::{
    backup::crm,
    services::{as_user, connect},
};

const NEEDLE: &str = "quixote";

/// Every SQLite file (and write-ahead log) in `data`, lower-cased text.
fn files_hold_needle(data: &Path) -> Vec<String> {
    let mut holding = Vec::new();
    for entry in std::fs::read_dir(data).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if String::from_utf8_lossy(&bytes).to_lowercase().contains(NEEDLE) {
            holding.push(path.display().to_string());
        }
    }
    holding
}

async fn ticket_subject(tickets: &mut TicketingServiceClient<Channel>, name: &str, token: &str) -> String {
    tickets
        .get_ticket(as_user(tpb::GetTicketRequest { name: name.into() }, token))
        .await
        .unwrap()
        .into_inner()
        .subject
}

/// Waits until ticketing has scrubbed the ticket (it follows customer-profile's feed).
async fn until_scrubbed(tickets: &mut TicketingServiceClient<Channel>, name: &str, token: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ticket_subject(tickets, name, token).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "ticketing never scrubbed {name}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn is_gone(customers: &mut CustomerProfileServiceClient<Channel>, name: &str, token: &str) -> bool {
    let got = customers
        .get_customer(as_user(pb::GetCustomerRequest { name: name.into() }, token))
        .await;
    matches!(got, Err(s) if s.code() == Code::NotFound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_survives_the_restore_of_older_backups() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let (server, addr) = serve_crm(&data);
    let line = server.wait_for_line("development admin token", Duration::from_secs(5));
    let dev = line.rsplit(' ').next().unwrap().trim().to_owned();
    let channel = connect(&addr).await;
    let mut customers = CustomerProfileServiceClient::new(channel.clone());
    let mut tickets = TicketingServiceClient::new(channel);
    let customer = customers
        .create_customer(as_user(
            pb::CreateCustomerRequest {
                customer: Some(pb::Customer {
                    person_name: Some(pb::PersonName {
                        given_name: "Alonso".into(),
                        family_name: "Quixote".into(),
                        ..Default::default()
                    }),
                    email_addresses: vec![pb::EmailAddress {
                        address: "alonso.quixote@example.com".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            &dev,
        ))
        .await
        .unwrap()
        .into_inner();
    let ticket = tickets
        .create_ticket(as_user(
            tpb::CreateTicketRequest {
                ticket: Some(tpb::Ticket {
                    customer: customer.name.clone(),
                    channel: SourceChannel::Email as i32,
                    category: "billing".into(),
                    subject: "Quixote asks for a refund".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            &dev,
        ))
        .await
        .unwrap()
        .into_inner();
    let saved = root.path().join("backup");
    let saved_keys = root.path().join("keys");
    for (out, keys) in [(&saved, false), (&saved_keys, true)] {
        let mut args = vec!["backup", "--out", out.to_str().unwrap(), "--data-dir", data.to_str().unwrap()];
        if keys {
            args.push("--keys");
        }
        crm(&args);
    }

    let erasure = customers
        .erase_customer(as_user(
            pb::EraseCustomerRequest {
                name: customer.name.clone(),
                reason: "DSR-7".into(),
                etag: String::new(),
            },
            &dev,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erasure.erased_customers, vec![customer.name.clone()]);
    until_scrubbed(&mut tickets, &ticket.name, &dev).await;
    assert!(is_gone(&mut customers, &customer.name, &dev).await);
    assert!(server.terminate().success());
    assert_eq!(
        files_hold_needle(&data),
        Vec::<String>::new(),
        "no file holds the customer's data"
    );

    // Backups from before the erasure: the data replaced, the keys merged.
    for from in [&saved, &saved_keys] {
        crm(&[
            "restore",
            "--from",
            from.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--force",
        ]);
    }
    let (server, addr) = serve_crm(&data);
    let channel = connect(&addr).await;
    let mut customers = CustomerProfileServiceClient::new(channel.clone());
    let mut tickets = TicketingServiceClient::new(channel);
    assert!(
        is_gone(&mut customers, &customer.name, &dev).await,
        "the restored customer stays erased"
    );
    let record = customers
        .get_erasure(as_user(
            pb::GetErasureRequest {
                name: erasure.name.clone(),
            },
            &dev,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.actor, "customer-profile", "finished again by the service itself");
    until_scrubbed(&mut tickets, &ticket.name, &dev).await;
    assert!(server.terminate().success());
    assert_eq!(
        files_hold_needle(&data),
        Vec::<String>::new(),
        "nothing came back with the backups"
    );
}
