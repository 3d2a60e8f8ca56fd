//! Channel ingestion over gRPC: upsert by external id, provenance, source priority,
//! matching to an existing customer.

use crm_proto::crm::{common::v1 as common, customer::v1 as pb};
use tonic::Code;

use crate::app::{TestApp, person, violations};

fn phone(n: &str) -> pb::PhoneNumber {
    pb::PhoneNumber {
        number: n.into(),
        ..Default::default()
    }
}

async fn ingest(
    app: &TestApp,
    system: &str,
    channel: common::Channel,
    id: &str,
    c: pb::Customer,
    at: Option<i64>,
) -> pb::IngestCustomerResponse {
    app.try_ingest(system, channel, id, c, at).await.unwrap()
}

fn outcome(r: &pb::IngestCustomerResponse) -> pb::IngestOutcome {
    pb::IngestOutcome::try_from(r.outcome).unwrap()
}

#[tokio::test]
async fn upserts_by_external_id_and_records_provenance() {
    let app = TestApp::spawn().await;
    let mut c = person("Mei", "Chen");
    c.phone_numbers = vec![phone("139 0013 9000")];
    let first = ingest(&app, "erp", common::Channel::Erp, "C-1", c.clone(), Some(1_700_000_000)).await;
    assert_eq!(outcome(&first), pb::IngestOutcome::Created);
    let customer = first.customer.unwrap();
    assert_eq!(
        customer.external_ids,
        vec![pb::ExternalId {
            source: "erp".into(),
            external_id: "C-1".into()
        }]
    );
    assert_eq!(customer.source_channel, common::Channel::Erp as i32);
    let given = customer
        .provenance
        .iter()
        .find(|p| p.field == "person_name.given_name")
        .unwrap();
    assert_eq!(given.source, "erp");
    assert_eq!(given.update_time.unwrap().seconds, 1_700_000_000);
    assert_eq!(customer.raw_values["phone_numbers[0].number"], "139 0013 9000");

    // The same record again changes nothing.
    let again = ingest(&app, "erp", common::Channel::Erp, "C-1", c, Some(1_700_000_000)).await;
    assert_eq!(outcome(&again), pb::IngestOutcome::Unchanged);
    let again = again.customer.unwrap();
    assert_eq!(again.etag, customer.etag);
    // ... but it confirms the data: fresh again, also when read back.
    let secs = |c: &pb::Customer| {
        let t = c.confirm_time.unwrap();
        (t.seconds, t.nanos)
    };
    assert!(secs(&again) > secs(&customer));
    let read = app.get(&customer.name).await;
    assert_eq!(read.confirm_time, again.confirm_time);

    // A partial update from the same source: only the given fields move.
    let patch = pb::Customer {
        email_addresses: vec![pb::EmailAddress {
            address: "mei@example.com".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let updated = ingest(&app, "erp", common::Channel::Erp, "C-1", patch, Some(1_700_000_100)).await;
    assert_eq!(outcome(&updated), pb::IngestOutcome::Updated);
    let u = updated.customer.unwrap();
    assert_eq!(u.name, customer.name);
    assert_eq!(u.display_name, "Mei Chen");
    assert_eq!(u.email_addresses[0].address, "mei@example.com");
    assert_eq!(u.phone_numbers.len(), 1);
}

#[tokio::test]
async fn trusted_sources_win_and_contacts_are_united() {
    let app = TestApp::spawn().await;
    let mut erp = person("Mei", "Chen");
    erp.organization_name = String::new();
    erp.birth_date = "1988-08-08".into();
    erp.phone_numbers = vec![phone("+86 139 0013 9000")];
    let created = ingest(&app, "erp", common::Channel::Erp, "C-1", erp, Some(1_700_000_000))
        .await
        .customer
        .unwrap();
    // The web shop knows the same person by its own id and sends a newer but less
    // trusted birth date plus a second phone: linked by ingesting with the shop's id
    // through a match (same name, phone, birth date).
    let mut web = person("Mei", "Chen");
    web.birth_date = "1988-08-08".into();
    web.phone_numbers = vec![phone("+86 139 0013 9000"), phone("+86 137 0013 7000")];
    let linked = ingest(&app, "shop", common::Channel::Web, "u-77", web, Some(1_800_000_000)).await;
    assert_eq!(outcome(&linked), pb::IngestOutcome::Merged, "matched the ERP customer");
    assert!(linked.match_probability >= 0.98, "{}", linked.match_probability);
    let merged = linked.customer.unwrap();
    assert_eq!(merged.name, created.name);
    assert_eq!(merged.phone_numbers.len(), 2);
    assert_eq!(merged.external_ids.len(), 2);

    // Now the shop disagrees on the birth date: ERP is more trusted and keeps it.
    let disagree = pb::Customer {
        birth_date: "1989-09-09".into(),
        ..Default::default()
    };
    let r = ingest(&app, "shop", common::Channel::Web, "u-77", disagree, Some(1_900_000_000)).await;
    assert_eq!(outcome(&r), pb::IngestOutcome::Unchanged);
    assert_eq!(r.customer.unwrap().birth_date, "1988-08-08");
    // ERP itself may change it.
    let erp_fix = pb::Customer {
        birth_date: "1988-08-09".into(),
        ..Default::default()
    };
    let r = ingest(&app, "erp", common::Channel::Erp, "C-1", erp_fix, Some(1_700_000_500)).await;
    assert_eq!(r.customer.unwrap().birth_date, "1988-08-09");
}

#[tokio::test]
async fn bad_ingest_requests_name_every_field() {
    let app = TestApp::spawn().await;
    let mut bad = person("X", "Y");
    bad.phone_numbers = vec![phone("12")];
    let err = app
        .try_ingest("Bad System", common::Channel::Unspecified, "", bad, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut fields = violations(&err);
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "customer.phone_numbers[0].number",
            "external_id",
            "source.channel",
            "source.system"
        ]
    );
    // A new record must be a valid customer on its own.
    let nameless = pb::Customer {
        email_addresses: vec![pb::EmailAddress {
            address: "a@b.co".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let err = app
        .try_ingest("web", common::Channel::Web, "w1", nameless, None)
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["customer.display_name"]);
}
