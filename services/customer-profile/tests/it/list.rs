use crm_proto::crm::customer::v1 as pb;
use tonic::Code;

use crate::app::{TestApp, person, violations};

async fn list(app: &TestApp, req: pb::ListCustomersRequest) -> Result<pb::ListCustomersResponse, tonic::Status> {
    app.client
        .clone()
        .list_customers(TestApp::admin(req))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn pages_through_everything_once_in_order() {
    let app = TestApp::spawn().await;
    let mut created = Vec::new();
    for i in 0..25 {
        let mut c = person(&format!("Given{i:02}"), "Family");
        if i % 5 == 0 {
            c.tags = vec!["vip".into()];
        }
        if i % 2 == 0 {
            c.team_id = "emea".into();
        }
        created.push(app.create(c).await.name);
    }
    for order_by in ["", "create_time desc", "display_name", "update_time"] {
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = list(
                &app,
                pb::ListCustomersRequest {
                    page_size: 10,
                    page_token: token,
                    order_by: order_by.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            assert!(page.customers.len() <= 10);
            seen.extend(page.customers.into_iter().map(|c| c.name));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let mut want = created.clone();
        if order_by == "create_time desc" {
            want.reverse();
        }
        assert_eq!(seen, want, "order_by {order_by:?}");
    }

    let vip = list(
        &app,
        pb::ListCustomersRequest {
            filter: r#"tags:"vip""#.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(vip.customers.len(), 5);
    let both = list(
        &app,
        pb::ListCustomersRequest {
            filter: r#"tags:"vip" AND team_id = "emea""#.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(both.customers.len(), 3, "0, 10, 20");
    let none = list(
        &app,
        pb::ListCustomersRequest {
            filter: "lifecycle_stage = CUSTOMER".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(none.customers.is_empty());
}

#[tokio::test]
async fn page_tokens_are_bound_to_their_query() {
    let app = TestApp::spawn().await;
    for i in 0..3 {
        app.create(person(&format!("P{i}"), "X")).await;
    }
    let first = list(
        &app,
        pb::ListCustomersRequest {
            page_size: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(!first.next_page_token.is_empty());
    let err = list(
        &app,
        pb::ListCustomersRequest {
            page_size: 1,
            page_token: first.next_page_token.clone(),
            order_by: "display_name".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err), vec!["page_token"]);
    let mut tampered = first.next_page_token.clone();
    tampered.insert(3, 'x');
    let err = list(
        &app,
        pb::ListCustomersRequest {
            page_size: 1,
            page_token: tampered,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violations(&err), vec!["page_token"]);
    let err = list(
        &app,
        pb::ListCustomersRequest {
            filter: "colour = red".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violations(&err), vec!["filter"]);
    let err = list(
        &app,
        pb::ListCustomersRequest {
            page_size: -1,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violations(&err), vec!["page_size"]);
}

#[tokio::test]
async fn deleted_customers_are_hidden_unless_asked_for() {
    let app = TestApp::spawn().await;
    let a = app.create(person("A", "A")).await;
    app.create(person("B", "B")).await;
    app.client
        .clone()
        .delete_customer(TestApp::admin(pb::DeleteCustomerRequest {
            name: a.name.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    assert_eq!(
        list(&app, pb::ListCustomersRequest::default()).await.unwrap().customers.len(),
        1
    );
    assert_eq!(
        list(
            &app,
            pb::ListCustomersRequest {
                show_deleted: true,
                ..Default::default()
            }
        )
        .await
        .unwrap()
        .customers
        .len(),
        2
    );
}
