use crm_proto::crm::customer::v1 as pb;
use prost_types::FieldMask;
use tonic::Code;

use crate::app::{TestApp, person, reason, violations};

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

#[tokio::test]
async fn create_normalises_and_get_returns_the_same() {
    let app = TestApp::spawn().await;
    let mut input = person(" 小明 ", "王");
    input.phone_numbers = vec![pb::PhoneNumber {
        number: "138 0013 8000".into(),
        r#type: pb::PhoneType::Mobile as i32,
        ..Default::default()
    }];
    input.email_addresses = vec![pb::EmailAddress {
        address: " Xiao.Ming@Example.CN ".into(),
        ..Default::default()
    }];
    input.tags = vec!["VIP".into(), "vip".into()];
    input.custom_attributes.insert("loyalty_tier".into(), "gold".into());
    app.define_text("loyalty_tier").await;
    let created = app.create(input).await;
    assert!(created.name.starts_with("customers/"));
    assert_eq!(created.display_name, "王小明");
    assert_eq!(created.r#type, pb::CustomerType::Person as i32);
    assert_eq!(created.lifecycle_stage, pb::LifecycleStage::Lead as i32);
    assert_eq!(created.phone_numbers[0].number, "+8613800138000");
    assert!(created.phone_numbers[0].primary);
    assert_eq!(created.email_addresses[0].address, "Xiao.Ming@example.cn");
    assert_eq!(created.tags, vec!["vip"]);
    assert!(!created.etag.is_empty());
    assert!(created.create_time.is_some() && created.delete_time.is_none());

    let got = app.get(&created.name).await;
    assert_eq!(got, created);
}

#[tokio::test]
async fn invalid_input_lists_every_field_violation() {
    let app = TestApp::spawn().await;
    let bad = pb::Customer {
        phone_numbers: vec![pb::PhoneNumber {
            number: "12".into(),
            ..Default::default()
        }],
        email_addresses: vec![pb::EmailAddress {
            address: "not-an-email".into(),
            ..Default::default()
        }],
        tags: vec!["two words".into()],
        lifecycle_stage: 42,
        ..Default::default()
    };
    let err = app.try_create(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err), "INVALID_ARGUMENT");
    assert_eq!(
        violations(&err),
        vec!["customer.lifecycle_stage"],
        "enum errors come first, before value rules"
    );

    let bad = pb::Customer {
        phone_numbers: vec![pb::PhoneNumber {
            number: "12".into(),
            ..Default::default()
        }],
        email_addresses: vec![pb::EmailAddress {
            address: "not-an-email".into(),
            ..Default::default()
        }],
        tags: vec!["two words".into()],
        ..Default::default()
    };
    let err = app.try_create(bad).await.unwrap_err();
    let fields = violations(&err);
    for want in [
        "customer.display_name",
        "customer.phone_numbers[0].number",
        "customer.email_addresses[0].address",
        "customer.tags[0]",
    ] {
        assert!(fields.contains(&want.to_owned()), "missing {want} in {fields:?}");
    }

    let err = app
        .client
        .clone()
        .get_customer(TestApp::admin(pb::GetCustomerRequest { name: "users/1".into() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err), vec!["name"]);
    let missing = "customers/0192f0c1-0000-7000-8000-000000000000";
    let err = app
        .client
        .clone()
        .get_customer(TestApp::admin(pb::GetCustomerRequest { name: missing.into() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(reason(&err), "RESOURCE_NOT_FOUND");
}

#[tokio::test]
async fn update_applies_the_mask_and_checks_the_etag() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let created = app.create(person("Ada", "Lovelace")).await;

    let patch = pb::Customer {
        name: created.name.clone(),
        etag: created.etag.clone(),
        display_name: "ignored: not in mask".into(),
        lifecycle_stage: pb::LifecycleStage::Customer as i32,
        team_id: "emea".into(),
        ..Default::default()
    };
    let req = pb::UpdateCustomerRequest {
        customer: Some(patch.clone()),
        update_mask: mask(&["lifecycle_stage", "team_id"]),
    };
    let updated = client.update_customer(TestApp::admin(req)).await.unwrap().into_inner();
    assert_eq!(updated.lifecycle_stage, pb::LifecycleStage::Customer as i32);
    assert_eq!(updated.team_id, "emea");
    assert_eq!(updated.display_name, "Ada Lovelace");
    assert_ne!(updated.etag, created.etag);

    // The cache must not serve the old version.
    let got = client
        .get_customer(TestApp::admin(pb::GetCustomerRequest {
            name: created.name.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, updated);

    // The old etag is stale now.
    let req = pb::UpdateCustomerRequest {
        customer: Some(patch),
        update_mask: mask(&["team_id"]),
    };
    let err = client.update_customer(TestApp::admin(req)).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(reason(&err), "ETAG_MISMATCH");

    // Unknown and immutable paths are refused with the path named.
    let req = pb::UpdateCustomerRequest {
        customer: Some(pb::Customer {
            name: created.name.clone(),
            ..Default::default()
        }),
        update_mask: mask(&["colour", "create_time"]),
    };
    let err = client.update_customer(TestApp::admin(req)).await.unwrap_err();
    assert_eq!(violations(&err), vec!["update_mask.paths[0]", "update_mask.paths[1]"]);

    // An invalid new value is refused and nothing changes.
    let req = pb::UpdateCustomerRequest {
        customer: Some(pb::Customer {
            name: created.name.clone(),
            email_addresses: vec![pb::EmailAddress {
                address: "nope".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        update_mask: mask(&["email_addresses"]),
    };
    let err = client.update_customer(TestApp::admin(req)).await.unwrap_err();
    assert_eq!(violations(&err), vec!["customer.email_addresses[0].address"]);
    let got = client
        .get_customer(TestApp::admin(pb::GetCustomerRequest {
            name: created.name.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.etag, updated.etag);
}

#[tokio::test]
async fn delete_is_soft_and_final() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let created = app.create(person("Grace", "Hopper")).await;
    let err = client
        .delete_customer(TestApp::admin(pb::DeleteCustomerRequest {
            name: created.name.clone(),
            etag: "\"999\"".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    let deleted = client
        .delete_customer(TestApp::admin(pb::DeleteCustomerRequest {
            name: created.name.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.delete_time.is_some());
    let got = client
        .get_customer(TestApp::admin(pb::GetCustomerRequest {
            name: created.name.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(got.delete_time.is_some(), "a soft-deleted customer stays readable");
    let err = client
        .delete_customer(TestApp::admin(pb::DeleteCustomerRequest {
            name: created.name.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let req = pb::UpdateCustomerRequest {
        customer: Some(pb::Customer {
            name: created.name.clone(),
            team_id: "x".into(),
            ..Default::default()
        }),
        update_mask: mask(&["team_id"]),
    };
    assert_eq!(
        client.update_customer(TestApp::admin(req)).await.unwrap_err().code(),
        Code::NotFound
    );
}

/// Concurrent updates of different fields without etags all apply: none is lost and
/// none fails for a conflict the caller did not ask to detect.
#[tokio::test]
async fn concurrent_masked_updates_lose_nothing() {
    const WRITERS: usize = 8;
    let app = TestApp::spawn().await;
    let created = app.create(person("Many", "Writers")).await;
    for i in 0..WRITERS {
        app.define_text(&format!("k{i}")).await;
    }
    let mut calls = Vec::new();
    for i in 0..WRITERS {
        let mut client = app.client.clone();
        let name = created.name.clone();
        calls.push(tokio::spawn(async move {
            let mut patch = pb::Customer {
                name,
                ..Default::default()
            };
            patch.custom_attributes.insert(format!("k{i}"), format!("v{i}"));
            let path = format!("custom_attributes.k{i}");
            let req = pb::UpdateCustomerRequest {
                customer: Some(patch),
                update_mask: mask(&[path.as_str()]),
            };
            client.update_customer(TestApp::admin(req)).await.map(|_| ())
        }));
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let got = app.get(&created.name).await;
    assert_eq!(got.custom_attributes.len(), WRITERS, "{:?}", got.custom_attributes);
    assert_eq!(got.etag, format!("\"{}\"", WRITERS + 1));
}

/// Input PostgreSQL cannot store (NUL) is a field violation, never INTERNAL; an
/// oversized request is refused before any work.
#[tokio::test]
async fn hostile_input_is_refused_cleanly() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let bad = pb::Customer {
        display_name: "A\u{0}B".into(),
        ..Default::default()
    };
    let err = app.try_create(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err), vec!["customer.display_name"]);

    let err = client
        .list_customers(TestApp::admin(pb::ListCustomersRequest {
            filter: "owner_user_id = \"a\u{0}\"".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["filter"]);

    let many = pb::Customer {
        display_name: "Many".into(),
        email_addresses: (0..5_000)
            .map(|i| pb::EmailAddress {
                address: format!("a{i}@b.co"),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let err = app.try_create(many).await.unwrap_err();
    assert_eq!(violations(&err), vec!["customer.email_addresses"]);

    let huge = pb::Customer {
        display_name: "x".repeat(2 << 20),
        ..Default::default()
    };
    let err = app.try_create(huge).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
}
