//! Bulk import over gRPC: mapping, per-row outcomes, rejected rows that do not stop
//! the import, resuming after a broken stream, row results.

use std::time::Duration;

use crm_proto::crm::{common::v1 as common, customer::v1 as pb};
use pb::import_customers_request::Content;
use tonic::Code;

use crate::app::{TestApp, violations};

fn spec(id: &str) -> pb::ImportCustomersRequest {
    let mapping = [
        ("id", "external_id"),
        ("first", "person_name.given_name"),
        ("last", "person_name.family_name"),
        ("mobile", "phone_numbers"),
        ("mail", "email_addresses"),
        ("street", "addresses.address_lines"),
        ("zip", "addresses.postal_code"),
        ("country", "addresses.region_code"),
        ("dob", "birth_date"),
    ];
    pb::ImportCustomersRequest {
        content: Some(Content::Spec(pb::ImportSpec {
            import_job_id: id.into(),
            source: Some(pb::Source {
                system: "legacy-erp".into(),
                channel: common::Channel::Erp as i32,
            }),
            mapping: mapping
                .iter()
                .map(|(c, f)| pb::FieldMapping {
                    column: (*c).into(),
                    field: (*f).into(),
                })
                .collect(),
        })),
    }
}

fn row(key: &str, values: &[(&str, &str)]) -> pb::ImportRow {
    pb::ImportRow {
        row_key: key.into(),
        values: values.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
    }
}

fn rows(rows: Vec<pb::ImportRow>) -> pb::ImportCustomersRequest {
    pb::ImportCustomersRequest {
        content: Some(Content::Rows(pb::ImportRows { rows })),
    }
}

fn complete() -> pb::ImportCustomersRequest {
    pb::ImportCustomersRequest {
        content: Some(Content::Complete(true)),
    }
}

fn sample() -> Vec<pb::ImportRow> {
    vec![
        row(
            "1",
            &[
                ("id", "E1"),
                ("first", "Wei"),
                ("last", "Zhang"),
                ("mobile", "13800138001"),
                ("zip", "100080"),
                ("country", "CN"),
            ],
        ),
        row(
            "2",
            &[
                ("id", "E2"),
                ("first", "Ann"),
                ("last", "Lee"),
                ("mail", "ann@example.com"),
                ("dob", "19800101"),
            ],
        ),
        // Invalid phone and date: rejected with both errors, the import goes on.
        row(
            "3",
            &[
                ("id", "E3"),
                ("first", "Bad"),
                ("last", "Row"),
                ("mobile", "12"),
                ("dob", "1980-02-31"),
            ],
        ),
        // The same person as row 1 under another ERP id, same phone: merged into it.
        row(
            "4",
            &[
                ("id", "E4"),
                ("first", "Wei"),
                ("last", "Zhang"),
                ("mobile", "+86 138 0013 8001"),
                ("zip", "100080"),
                ("country", "CN"),
            ],
        ),
        // No external id.
        row("5", &[("first", "No"), ("last", "Id")]),
        // Row 2 again, updated e-mail plus a phone: updates E2.
        row("6", &[("id", "E2"), ("mobile", "13900139002")]),
    ]
}

async fn import(app: &TestApp, messages: Vec<pb::ImportCustomersRequest>) -> Result<pb::ImportJob, tonic::Status> {
    app.client
        .clone()
        .import_customers(TestApp::admin(tokio_stream::iter(messages)))
        .await
        .map(tonic::Response::into_inner)
}

async fn results(app: &TestApp, job: &str, outcome: pb::IngestOutcome) -> Vec<pb::ImportRowResult> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .clone()
            .list_import_row_results(TestApp::admin(pb::ListImportRowResultsRequest {
                parent: job.into(),
                page_size: 2,
                page_token: token.clone(),
                outcome: outcome as i32,
            }))
            .await
            .unwrap()
            .into_inner();
        out.extend(page.results);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn rows_are_created_merged_updated_or_rejected() {
    let app = TestApp::spawn().await;
    let job = import(
        &app,
        vec![
            spec("crm-migration"),
            rows(sample()[..3].to_vec()),
            rows(sample()[3..].to_vec()),
            complete(),
        ],
    )
    .await
    .unwrap();
    assert_eq!(job.name, "importJobs/crm-migration");
    assert_eq!(job.state, pb::ImportState::Succeeded as i32);
    assert_eq!(
        (
            job.rows_processed,
            job.created,
            job.merged,
            job.updated,
            job.rejected,
            job.skipped
        ),
        (6, 2, 1, 1, 2, 0)
    );
    let rejected: Vec<_> = job.errors.iter().map(|e| e.row_key.as_str()).collect();
    assert_eq!(rejected, vec!["3", "5"]);
    let mut fields: Vec<_> = job.errors[0].errors.iter().map(|e| e.field.as_str()).collect();
    fields.sort();
    assert_eq!(fields, vec!["birth_date", "phone_numbers[0].number"]);
    assert_eq!(job.errors[1].errors[0].field, "external_id");

    let all = results(&app, &job.name, pb::IngestOutcome::Unspecified).await;
    assert_eq!(
        all.iter().map(|r| r.row_key.as_str()).collect::<Vec<_>>(),
        vec!["1", "2", "3", "4", "5", "6"]
    );
    assert_eq!(all[3].customer, all[0].customer, "row 4 merged into row 1's customer");
    assert!(all[3].match_probability >= 0.98);
    let merged = app.get(&all[0].customer).await;
    assert_eq!(merged.external_ids.len(), 2);
    let only_rejected = results(&app, &job.name, pb::IngestOutcome::Rejected).await;
    assert_eq!(only_rejected.len(), 2);

    let got = app
        .client
        .clone()
        .get_import_job(TestApp::admin(pb::GetImportJobRequest { name: job.name.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, job);
}

#[tokio::test]
async fn a_broken_stream_resumes_without_repeating_rows() {
    let app = TestApp::spawn().await;
    // The stream stops after two rows without `complete`: the client died.
    let job = import(&app, vec![spec("resume-me"), rows(sample()[..2].to_vec())])
        .await
        .unwrap();
    assert_eq!(job.state, pb::ImportState::Interrupted as i32);
    assert_eq!(job.rows_processed, 2);

    // A stream reset mid-way (the handler is dropped) also leaves it interrupted.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(spec("reset-me")).await.unwrap();
    tx.send(rows(sample()[..1].to_vec())).await.unwrap();
    let mut client = app.client.clone();
    let call = tokio::spawn(async move {
        client
            .import_customers(TestApp::admin(tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await
    });
    let mut status = app.client.clone();
    let get = |name: &'static str| pb::GetImportJobRequest { name: name.into() };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !matches!(status.get_import_job(TestApp::admin(get("importJobs/reset-me"))).await, Ok(j) if j.get_ref().rows_processed == 1)
    {
        assert!(tokio::time::Instant::now() < deadline, "first batch never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    call.abort();
    let _ = call.await;
    drop(tx);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let job = status
            .get_import_job(TestApp::admin(get("importJobs/reset-me")))
            .await
            .unwrap()
            .into_inner();
        if job.state == pb::ImportState::Interrupted as i32 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job never marked interrupted: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The client sends everything again: the two committed rows are skipped.
    let job = import(&app, vec![spec("resume-me"), rows(sample()), complete()])
        .await
        .unwrap();
    assert_eq!(job.state, pb::ImportState::Succeeded as i32);
    assert_eq!(job.rows_processed, 8);
    assert_eq!(job.skipped, 2);
    assert_eq!(job.created, 2);
    // A resume with another mapping is refused.
    let mut other = spec("resume-me");
    if let Some(Content::Spec(s)) = &mut other.content {
        s.mapping.pop();
    }
    let err = import(&app, vec![other]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn bad_specs_and_batches_are_refused() {
    let app = TestApp::spawn().await;
    let err = import(&app, vec![rows(sample())]).await.unwrap_err();
    assert_eq!(violations(&err), vec!["spec"]);
    let bad = pb::ImportCustomersRequest {
        content: Some(Content::Spec(pb::ImportSpec {
            import_job_id: "Bad Id".into(),
            source: None,
            mapping: vec![pb::FieldMapping {
                column: "a".into(),
                field: "nickname".into(),
            }],
        })),
    };
    let err = import(&app, vec![bad]).await.unwrap_err();
    let mut fields = violations(&err);
    fields.sort();
    assert_eq!(
        fields,
        vec!["spec.import_job_id", "spec.mapping", "spec.mapping[0].field", "spec.source"]
    );
    let err = import(&app, vec![spec("keys"), rows(vec![row("", &[("id", "x")])])])
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["rows.rows[0].row_key"]);
}

/// Duplicates and repeated external ids inside one message (one transaction, where
/// new customers are buffered) come out as across messages.
#[tokio::test]
async fn one_batch_matches_its_own_rows() {
    let app = TestApp::spawn().await;
    let job = import(&app, vec![spec("one-batch"), rows(sample()), complete()])
        .await
        .unwrap();
    assert_eq!(
        (job.rows_processed, job.created, job.merged, job.updated, job.rejected),
        (6, 2, 1, 1, 2)
    );
    let all = results(&app, &job.name, pb::IngestOutcome::Unspecified).await;
    assert_eq!(all[3].customer, all[0].customer, "row 4 merged into row 1's customer");
    assert_eq!(all[5].customer, all[1].customer, "row 6 updated row 2's customer");
    let customer = app.get(&all[1].customer).await;
    assert_eq!(customer.phone_numbers[0].number, "+8613900139002");
    assert_eq!(app.list_first_page().await.len(), 2);
}

/// A row that is valid on its own terms but not a complete new customer (no name)
/// is rejected; the rows after it in the same message still go in.
#[tokio::test]
async fn an_incomplete_new_customer_is_rejected_not_fatal() {
    let app = TestApp::spawn().await;
    let batch = vec![
        row("1", &[("id", "N1"), ("mail", "nameless@example.com")]),
        row("2", &[("id", "N2"), ("first", "Has"), ("last", "Name")]),
    ];
    let job = import(&app, vec![spec("incomplete"), rows(batch), complete()]).await.unwrap();
    assert_eq!((job.rows_processed, job.created, job.rejected), (2, 1, 1));
    assert_eq!(job.errors[0].errors[0].field, "display_name");
}
