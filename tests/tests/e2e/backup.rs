//! `crm backup` (data, and `--keys` for the data keys) while `crm serve` runs, the
//! data directory wiped, `crm restore` of both, and everything back: customers with
//! their encrypted fields, tickets, the change feed and an intact audit chain.

use std::{process::Command, time::Duration};

use crm_e2e::{binary, serve_crm};
use crm_proto::crm::{
    common::v1::Channel as SourceChannel,
    customer::v1::{self as pb, customer_profile_service_client::CustomerProfileServiceClient},
    events::v1::{StreamEventsRequest, stream_events_response::Kind},
    permissions::v1::{VerifyAuditChainRequest, permissions_service_client::PermissionsServiceClient},
    ticketing::v1::{self as tpb, ticketing_service_client::TicketingServiceClient},
};
use tokio_stream::StreamExt;

use crate::services::{as_user, connect};

/// Every event of the customer feed from the start (the replay ends with a heartbeat).
async fn feed(client: &mut CustomerProfileServiceClient<tonic::transport::Channel>, token: &str) -> Vec<String> {
    let mut stream = client
        .stream_events(as_user(StreamEventsRequest::default(), token))
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("feed in time")
            .unwrap()
            .unwrap();
        match msg.kind {
            Some(Kind::Event(e)) => ids.push(e.id),
            Some(Kind::Heartbeat(_)) => return ids,
            None => {}
        }
    }
}

pub(crate) fn crm(args: &[&str]) -> std::process::Output {
    let out = Command::new(binary("crm"))
        .args(args)
        .env_remove("CRM__DATABASE__URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "crm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_everything_after_the_data_is_gone() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let saved = root.path().join("backup");
    let (server, addr) = serve_crm(&data);
    let line = server.wait_for_line("development admin token", Duration::from_secs(5));
    let dev = line.rsplit(' ').next().unwrap().trim().to_owned();
    let channel = connect(&addr).await;
    let mut customers = CustomerProfileServiceClient::new(channel.clone());
    let mut tickets = TicketingServiceClient::new(channel.clone());
    let mut permissions = PermissionsServiceClient::new(channel);
    let mut names = Vec::new();
    for (i, phone) in ["13800138000", "13900139000", "13700137000"].iter().enumerate() {
        let c = customers
            .create_customer(as_user(
                pb::CreateCustomerRequest {
                    customer: Some(pb::Customer {
                        display_name: format!("客户 {i}"),
                        phone_numbers: vec![pb::PhoneNumber {
                            number: (*phone).into(),
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
        names.push(c.name);
    }
    let ticket = tickets
        .create_ticket(as_user(
            tpb::CreateTicketRequest {
                ticket: Some(tpb::Ticket {
                    customer: names[0].clone(),
                    channel: SourceChannel::Phone as i32,
                    category: "how_to".into(),
                    subject: "怎么改密码".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            &dev,
        ))
        .await
        .unwrap()
        .into_inner();
    let events_before = feed(&mut customers, &dev).await;
    assert!(events_before.len() >= 3);
    let chain_before = permissions
        .verify_audit_chain(as_user(VerifyAuditChainRequest::default(), &dev))
        .await
        .unwrap()
        .into_inner();

    // Online: the server keeps running while the backup is taken.
    let out = crm(&[
        "backup",
        "--out",
        saved.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("customer-profile.db"));
    // The data keys are backed up on their own (kept apart, briefly).
    let saved_keys = root.path().join("keys");
    let out = crm(&[
        "backup",
        "--keys",
        "--out",
        saved_keys.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("customer-profile-keys.db"));
    assert!(server.terminate().success());
    std::fs::remove_dir_all(&data).unwrap();
    for from in [&saved, &saved_keys] {
        crm(&[
            "restore",
            "--from",
            from.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ]);
    }

    let (_server, addr) = serve_crm(&data);
    let channel = connect(&addr).await;
    let mut customers = CustomerProfileServiceClient::new(channel.clone());
    let mut tickets = TicketingServiceClient::new(channel.clone());
    let mut permissions_after = PermissionsServiceClient::new(channel);
    let listed = customers
        .list_customers(as_user(pb::ListCustomersRequest::default(), &dev))
        .await
        .unwrap()
        .into_inner()
        .customers;
    assert_eq!(listed.len(), 3);
    let first = customers
        .get_customer(as_user(pb::GetCustomerRequest { name: names[0].clone() }, &dev))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.phone_numbers[0].number, "+8613800138000",
        "encrypted fields decrypt after the restore"
    );
    tickets
        .get_ticket(as_user(
            tpb::GetTicketRequest {
                name: ticket.name.clone(),
            },
            &dev,
        ))
        .await
        .unwrap();
    assert_eq!(feed(&mut customers, &dev).await, events_before, "the change feed is the same");
    let chain = permissions_after
        .verify_audit_chain(as_user(VerifyAuditChainRequest::default(), &dev))
        .await
        .unwrap()
        .into_inner();
    assert!(
        chain.intact && chain.entries_checked >= chain_before.entries_checked,
        "{chain:?}"
    );
    // The restore refuses to overwrite live databases without --force.
    let refused = Command::new(binary("crm"))
        .args([
            "restore",
            "--from",
            saved.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
}
