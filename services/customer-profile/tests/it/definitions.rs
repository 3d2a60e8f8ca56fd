//! The field standard over gRPC: built-ins, custom attributes, typed validation,
//! required fields, completeness.

use crm_proto::crm::{common::v1 as common, customer::v1 as pb};
use prost_types::FieldMask;
use tonic::Code;

use crate::app::{TestApp, person, reason, violations};

fn tier() -> pb::FieldDefinition {
    pb::FieldDefinition {
        display_name: "Loyalty tier".into(),
        r#type: pb::FieldType::Enum as i32,
        allowed_values: vec!["Gold".into(), "Silver".into()],
        classification: common::Classification::Internal as i32,
        completeness_weight: 1.0,
        ..Default::default()
    }
}

#[tokio::test]
async fn built_ins_are_listed_and_custom_attributes_can_be_defined() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let list = client
        .list_field_definitions(TestApp::admin(pb::ListFieldDefinitionsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let phone = list
        .field_definitions
        .iter()
        .find(|d| d.name == "fieldDefinitions/phone_numbers")
        .expect("built-in phone_numbers");
    assert!(phone.built_in);
    assert_eq!(phone.classification, common::Classification::Sensitive as i32);
    assert_eq!(phone.r#type, pb::FieldType::Phone as i32);

    let created = app.define("loyalty_tier", tier()).await.unwrap();
    assert!(!created.built_in);
    assert_eq!(created.etag, "\"1\"");

    // Paging walks every definition once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_field_definitions(TestApp::admin(pb::ListFieldDefinitionsRequest {
                page_size: 5,
                page_token: token.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.field_definitions.into_iter().map(|d| d.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), list.field_definitions.len() + 1);
    assert!(seen.contains(&"fieldDefinitions/custom_attributes.loyalty_tier".to_owned()));

    // Values are validated and normalised by type.
    let mut c = person("Ada", "Byron");
    c.custom_attributes.insert("loyalty_tier".into(), "gold".into());
    let stored = app.create(c).await;
    assert_eq!(stored.custom_attributes["loyalty_tier"], "Gold");
    let mut bad = person("Ada", "Byron");
    bad.custom_attributes.insert("loyalty_tier".into(), "bronze".into());
    bad.custom_attributes.insert("nickname".into(), "x".into());
    let err = app.try_create(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields = violations(&err);
    assert!(
        fields.contains(&"customer.custom_attributes[loyalty_tier]".to_owned()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"customer.custom_attributes[nickname]".to_owned()),
        "{fields:?}"
    );
}

#[tokio::test]
async fn required_fields_and_completeness_follow_the_definitions() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let before = app.create(person("Li", "Wei")).await;
    // display, given, family of display+given+family+phone(2)+email(2)+address+birth = 3/9
    assert!((before.completeness - 3.0 / 9.0).abs() < 1e-9, "{}", before.completeness);

    let birth = client
        .get_field_definition(TestApp::admin(pb::GetFieldDefinitionRequest {
            name: "fieldDefinitions/birth_date".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let updated = client
        .update_field_definition(TestApp::admin(pb::UpdateFieldDefinitionRequest {
            field_definition: Some(pb::FieldDefinition {
                required_for: vec![pb::CustomerType::Person as i32],
                completeness_weight: 3.0,
                ..birth.clone()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["required_for".into(), "completeness_weight".into()],
            }),
            allow_missing: false,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.required_for, vec![pb::CustomerType::Person as i32]);
    assert_ne!(updated.etag, birth.etag);

    let err = app.try_create(person("No", "Birthday")).await.unwrap_err();
    assert_eq!(violations(&err), vec!["customer.birth_date"]);
    let mut ok = person("Has", "Birthday");
    ok.birth_date = "1990/3/4".into();
    let created = app.create(ok).await;
    assert_eq!(created.birth_date, "1990-03-04");
    assert_eq!(created.raw_values.get("birth_date").map(String::as_str), Some("1990/3/4"));
    // 3 names + 3 birth of 3 + 2 + 2 + 1 + 3 = 11
    assert!((created.completeness - 6.0 / 11.0).abs() < 1e-9, "{}", created.completeness);

    // A stale etag is refused; the type of a built-in cannot change.
    let stale = client
        .update_field_definition(TestApp::admin(pb::UpdateFieldDefinitionRequest {
            field_definition: Some(birth.clone()),
            update_mask: None,
            allow_missing: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    assert_eq!(reason(&stale), "ETAG_MISMATCH");
    let retyped = client
        .update_field_definition(TestApp::admin(pb::UpdateFieldDefinitionRequest {
            field_definition: Some(pb::FieldDefinition {
                r#type: pb::FieldType::String as i32,
                etag: String::new(),
                ..updated
            }),
            update_mask: None,
            allow_missing: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(violations(&retyped), vec!["field_definition.type"]);
}

#[tokio::test]
async fn bad_definitions_are_refused_with_every_violation() {
    let app = TestApp::spawn().await;
    let err = app
        .define(
            "tier",
            pb::FieldDefinition {
                r#type: pb::FieldType::Enum as i32,
                completeness_weight: -1.0,
                required_for: vec![pb::CustomerType::Organization as i32],
                applies_to: vec![pb::CustomerType::Person as i32],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut fields = violations(&err);
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "field_definition.allowed_values",
            "field_definition.completeness_weight",
            "field_definition.required_for"
        ]
    );
    // A built-in cannot be created anew, an unknown field is not found.
    let mut client = app.client.clone();
    let missing = client
        .update_field_definition(TestApp::admin(pb::UpdateFieldDefinitionRequest {
            field_definition: Some(pb::FieldDefinition {
                name: "fieldDefinitions/custom_attributes.nope".into(),
                r#type: pb::FieldType::String as i32,
                ..Default::default()
            }),
            update_mask: None,
            allow_missing: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let unknown_type = app
        .define(
            "x",
            pb::FieldDefinition {
                r#type: 99,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(violations(&unknown_type), vec!["field_definition.type"]);
}
