//! Segments through the API: rules in both forms with precise errors, membership that
//! follows interactions, orders and tags as they arrive, with entered/exited events;
//! versions, templates, paging, per-customer answers.

use std::time::Duration;

use crm_proto::crm::{
    customer::v1 as cpb,
    events::v1::StreamEventsRequest,
    segmentation::v1::{self as pb, segment_condition::Subject, segment_rule::Kind},
};
use prost::Message;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

use crate::app::{TestApp, reference};

async fn views(app: &TestApp, customer: &str, category: &str, n: usize, prefix: &str) {
    let now = chrono::Utc::now().timestamp();
    let interactions = (0..n)
        .map(|i| cpb::InteractionInput {
            customer: reference(customer),
            interaction: Some(cpb::Interaction {
                kind: cpb::InteractionKind::ProductView as i32,
                channel: crm_proto::crm::common::v1::Channel::App as i32,
                occur_time: Some(prost_types::Timestamp {
                    seconds: now - 3600 * (i as i64 + 1),
                    nanos: 0,
                }),
                source: "app".into(),
                external_id: format!("{prefix}-{i}"),
                properties: [("category".to_owned(), category.to_owned())].into(),
                ..Default::default()
            }),
        })
        .collect();
    let _: Vec<_> = app
        .customers
        .clone()
        .record_interactions(TestApp::admin(tokio_stream::iter(vec![cpb::RecordInteractionsRequest {
            batch_id: prefix.into(),
            interactions,
        }])))
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
}

async fn create(app: &TestApp, id: &str, filter: &str) -> Result<pb::Segment, tonic::Status> {
    app.segmentation
        .clone()
        .create_segment(TestApp::admin(pb::CreateSegmentRequest {
            segment: Some(pb::Segment {
                display_name: id.into(),
                filter: filter.into(),
                ..Default::default()
            }),
            segment_id: id.into(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

/// Whether the customer is a member (a customer the projection does not hold yet is
/// not).
async fn member(app: &TestApp, segment: &str, customer: &str) -> bool {
    match app
        .segmentation
        .clone()
        .check_membership(TestApp::admin(pb::CheckMembershipRequest {
            segment: format!("segments/{segment}"),
            customer: customer.into(),
        }))
        .await
    {
        Ok(r) => r.into_inner().member,
        Err(e) if e.code() == Code::NotFound && e.message().contains("crm.customer.v1.Customer") => false,
        Err(e) => panic!("{e:?}"),
    }
}

/// Waits until the projection holds `interactions` interactions.
async fn until_projected(app: &TestApp, interactions: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while app.status().await.interactions < interactions {
        assert!(std::time::Instant::now() < deadline, "the projection never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `customer`'s membership of `segment` is `want`.
async fn until_member(app: &TestApp, segment: &str, customer: &str, want: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while member(app, segment, customer).await != want {
        assert!(
            std::time::Instant::now() < deadline,
            "{customer} never {} {segment}",
            if want { "entered" } else { "left" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("a BadRequest detail")
        .field_violations
        .into_iter()
        .map(|v| (v.field, v.description))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_follows_behaviour_orders_and_tags_with_events() {
    let app = TestApp::spawn().await;
    let browser = app.customer("Browser").await;
    let casual = app.customer("Casual").await;
    // The seeds' rule: viewed shoes at least 3 times in the last 7 days, no order since.
    let seg = create(
        &app,
        "shoe-browsers",
        "interactions(product_view, 7d, \"shoes\") >= 3 AND orders(7d) = 0",
    )
    .await
    .unwrap();
    assert_eq!(seg.version, 1);
    assert!(seg.time_dependent);
    assert_eq!(
        seg.filter,
        "interactions(product_view, 7d, \"shoes\") >= 3 AND orders(7d) = 0"
    );
    assert!(matches!(
        seg.rule.as_ref().and_then(|r| r.kind.as_ref()),
        Some(Kind::AllOf(_))
    ));

    views(&app, &browser, "shoes", 3, "b").await;
    views(&app, &casual, "shoes", 2, "c").await;
    views(&app, &casual, "hats", 5, "c-hats").await;
    until_projected(&app, 10).await;
    until_member(&app, "shoe-browsers", &browser, true).await;
    assert!(!member(&app, "shoe-browsers", &casual).await);

    // An order takes the browser out at once.
    app.order(&browser, "o-1", 60, 300_000_000).await;
    until_member(&app, "shoe-browsers", &browser, false).await;

    // A tag rule follows TagCustomers / UntagCustomers.
    app.tag("vip", "", "VIP").await.unwrap();
    create(&app, "vips", "tags:vip AND NOT orders(30d) >= 1").await.unwrap();
    app.segmentation
        .clone()
        .tag_customers(TestApp::admin(pb::TagCustomersRequest {
            tag: "tags/vip".into(),
            customers: vec![casual.clone(), browser.clone()],
            expire_time: None,
        }))
        .await
        .unwrap();
    until_member(&app, "vips", &casual, true).await;
    assert!(
        !member(&app, "vips", &browser).await,
        "the browser ordered in the last 30 days"
    );
    let listed = app
        .segmentation
        .clone()
        .list_customer_segments(TestApp::admin(pb::ListCustomerSegmentsRequest {
            customer: casual.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.segments.iter().map(|s| s.segment.as_str()).collect::<Vec<_>>(),
        vec!["segments/vips"]
    );
    app.segmentation
        .clone()
        .untag_customers(TestApp::admin(pb::UntagCustomersRequest {
            tag: "tags/vip".into(),
            customers: vec![casual.clone(), browser.clone()],
        }))
        .await
        .unwrap();
    until_member(&app, "vips", &casual, false).await;
    // The tag is in use by a segment's rule; the rule must name existing tags.
    let in_use = app
        .segmentation
        .clone()
        .delete_tag(TestApp::admin(pb::DeleteTagRequest {
            name: "tags/vip".into(),
            etag: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(in_use.code(), Code::FailedPrecondition, "{in_use:?}");
    assert!(in_use.message().contains("segments/vips"), "{in_use:?}");
    let err = create(&app, "ghosts", "tags:ghost").await.unwrap_err();
    assert_eq!(
        violations(&err),
        vec![("segment.filter".into(), "tags/ghost does not exist".into())]
    );

    // The feed told who entered and who left. A read serves events once no older
    // transaction is open (the feed's safe horizon; another test's may hold it back on
    // a shared PostgreSQL): read until all four are there.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = crm_platform::testing::replay(
            app.segmentation
                .clone()
                .stream_events(TestApp::admin(StreamEventsRequest {
                    after_cursor: String::new(),
                    event_types: vec!["crm.segmentation.v1.SegmentMembershipChanged".into()],
                }))
                .await
                .unwrap()
                .into_inner(),
        )
        .await
        .unwrap();
        if events.len() >= 4 || std::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let changes: Vec<(String, Vec<String>, Vec<String>)> = events
        .iter()
        .map(|e| {
            let m = pb::SegmentMembershipChanged::decode(e.data.as_ref().unwrap().value.as_slice()).unwrap();
            (m.segment, m.entered, m.exited)
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            ("segments/shoe-browsers".into(), vec![browser.clone()], vec![]),
            ("segments/shoe-browsers".into(), vec![], vec![browser.clone()]),
            ("segments/vips".into(), vec![casual.clone()], vec![]),
            ("segments/vips".into(), vec![], vec![casual.clone()]),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_are_validated_versioned_previewed_and_listed() {
    let app = TestApp::spawn().await;
    // Customer i viewed shoes i + 1 times.
    let mut created = Vec::new();
    for i in 0..3 {
        let c = app.customer(&format!("C{i}")).await;
        views(&app, &c, "shoes", i + 1, &format!("v{i}")).await;
        created.push(c);
    }
    let mut names = created.clone();
    names.sort();
    until_projected(&app, 6).await;

    // Text errors point at the column; tree errors at the field path.
    let err = create(&app, "bad", "interactions(product_view, 7d) >= lots")
        .await
        .unwrap_err();
    assert_eq!(
        violations(&err),
        vec![(
            "segment.filter".into(),
            "at column 1 (value): `lots` is not an integer".into()
        )]
    );
    let err = create(&app, "Bad Id", "rfm.group = LOST").await.unwrap_err();
    assert_eq!(violations(&err)[0].0, "segment_id");
    let tree = |subject: Subject, op: i32, value: &str| pb::SegmentRule {
        kind: Some(Kind::Condition(pb::SegmentCondition {
            subject: Some(subject),
            operator: op,
            value: value.into(),
        })),
    };
    let err = app
        .segmentation
        .clone()
        .create_segment(TestApp::admin(pb::CreateSegmentRequest {
            segment: Some(pb::Segment {
                display_name: "x".into(),
                rule: Some(pb::SegmentRule {
                    kind: Some(Kind::Not(Box::new(tree(Subject::Rfm("group".into()), 5, "LOYAL")))),
                }),
                ..Default::default()
            }),
            segment_id: "tree".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        violations(&err),
        vec![(
            "segment.rule.not.condition.operator".into(),
            "this subject compares with = or != only".into()
        )]
    );
    let err = app
        .segmentation
        .clone()
        .preview_segment(TestApp::admin(pb::PreviewSegmentRequest {
            rule: Some(tree(Subject::Field("region".into()), 1, "CN")),
            filter: "region = CN".into(),
            sample_size: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(violations(&err)[0].0, "filter");

    // A preview counts and samples without saving.
    let preview = app
        .segmentation
        .clone()
        .preview_segment(TestApp::admin(pb::PreviewSegmentRequest {
            rule: None,
            filter: "interactions(product_view, 7d, shoes) >= 2".into(),
            sample_size: 1,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.count, 2);
    assert_eq!(preview.sample.len(), 1);
    assert_eq!(preview.filter, "interactions(product_view, 7d, \"shoes\") >= 2");

    // Created, computed in the background, listed in pages.
    let seg = create(&app, "viewers", "interactions(product_view, 7d) >= 1").await.unwrap();
    assert_eq!(seg.state, pb::SegmentState::Computing as i32);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let seg = loop {
        let s = app
            .segmentation
            .clone()
            .get_segment(TestApp::admin(pb::GetSegmentRequest {
                name: "segments/viewers".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        if s.state == pb::SegmentState::Active as i32 {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "never computed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(seg.member_count, 3);
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .segmentation
            .clone()
            .list_segment_members(TestApp::admin(pb::ListSegmentMembersRequest {
                segment: "segments/viewers".into(),
                page_size: 2,
                page_token: token.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.version, 1);
        seen.extend(page.members.into_iter().map(|m| m.customer));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, names);

    // A new rule is a new version; its membership is computed anew.
    let updated = app
        .segmentation
        .clone()
        .update_segment(TestApp::admin(pb::UpdateSegmentRequest {
            segment: Some(pb::Segment {
                name: "segments/viewers".into(),
                filter: "interactions(product_view, 7d) >= 3".into(),
                etag: seg.etag.clone(),
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.version, 2);
    let stale = app
        .segmentation
        .clone()
        .update_segment(TestApp::admin(pb::UpdateSegmentRequest {
            segment: Some(pb::Segment {
                name: "segments/viewers".into(),
                strategy: "x".into(),
                etag: seg.etag.clone(),
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    until_member(&app, "viewers", &created[0], false).await;
    until_member(&app, "viewers", &created[1], false).await;
    assert!(member(&app, "viewers", &created[2]).await);
    let versions = app
        .segmentation
        .clone()
        .list_segment_versions(TestApp::admin(pb::ListSegmentVersionsRequest {
            segment: "segments/viewers".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(
        versions.iter().map(|v| (v.version, v.filter.as_str())).collect::<Vec<_>>(),
        vec![
            (2, "interactions(product_view, 7d) >= 3"),
            (1, "interactions(product_view, 7d) >= 1")
        ]
    );

    // Templates create the seeds' segments.
    let templates = app
        .segmentation
        .clone()
        .list_segment_templates(TestApp::admin(pb::ListSegmentTemplatesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .templates;
    assert_eq!(templates.len(), 3);
    for t in &templates {
        let s = app
            .segmentation
            .clone()
            .create_segment(TestApp::admin(pb::CreateSegmentRequest {
                segment: Some(pb::Segment {
                    template: t.name.clone(),
                    ..Default::default()
                }),
                segment_id: t.name.trim_start_matches("segmentTemplates/").into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (s.filter.as_str(), s.strategy.as_str()),
            (t.filter.as_str(), t.strategy.as_str())
        );
    }
    let listed = app
        .segmentation
        .clone()
        .list_segments(TestApp::admin(pb::ListSegmentsRequest {
            page_size: 0,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .segments;
    assert_eq!(listed.len(), 4);

    // Deleted with its membership; reading needs segment.read.
    app.segmentation
        .clone()
        .delete_segment(TestApp::admin(pb::DeleteSegmentRequest {
            name: "segments/viewers".into(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    let gone = app
        .segmentation
        .clone()
        .check_membership(TestApp::admin(pb::CheckMembershipRequest {
            segment: "segments/viewers".into(),
            customer: names[0].clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let denied = app
        .segmentation
        .clone()
        .list_segments(TestApp::as_user(
            pb::ListSegmentsRequest {
                page_size: 0,
                page_token: String::new(),
            },
            &TestApp::token("nobody"),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}

async fn tags_of(app: &TestApp, customer: &str) -> Vec<(String, i32, String)> {
    app.segmentation
        .clone()
        .list_customer_tags(TestApp::admin(pb::ListCustomerTagsRequest {
            customer: customer.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .tags
        .into_iter()
        .map(|t| (t.tag, t.source, t.actor))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_tags_its_members_and_segments_reading_the_tag_follow() {
    let app = TestApp::spawn().await;
    for id in ["high-value", "dormant"] {
        app.tag(id, "", id).await.unwrap();
    }
    let buyer = app.customer("Buyer").await;
    let create_tagging = |id: &str, filter: &str, tag: &str| pb::CreateSegmentRequest {
        segment: Some(pb::Segment {
            display_name: id.into(),
            filter: filter.into(),
            tag: tag.into(),
            ..Default::default()
        }),
        segment_id: id.into(),
    };
    // The rule engine's tag: big spenders carry `high-value`; a segment reading that
    // tag follows.
    app.segmentation
        .clone()
        .create_segment(TestApp::admin(create_tagging(
            "big-spenders",
            "order_total(365d) >= 250",
            "tags/high-value",
        )))
        .await
        .unwrap();
    create(&app, "vip-contacts", "tags:\"high-value\"").await.unwrap();
    let own = app
        .segmentation
        .clone()
        .create_segment(TestApp::admin(create_tagging("selfish", "tags:dormant", "tags/dormant")))
        .await
        .unwrap_err();
    assert_eq!(violations(&own)[0].0, "segment.tag");

    app.order(&buyer, "o-1", 60, 300_000_000).await;
    until_member(&app, "vip-contacts", &buyer, true).await;
    assert!(member(&app, "big-spenders", &buyer).await);
    assert_eq!(
        tags_of(&app, &buyer).await,
        vec![(
            "tags/high-value".into(),
            pb::TagSource::Rule as i32,
            "segments/big-spenders".into()
        )]
    );
    // The tag cannot go while the segment puts it on; an unused one can.
    let in_use = app
        .segmentation
        .clone()
        .delete_tag(TestApp::admin(pb::DeleteTagRequest {
            name: "tags/high-value".into(),
            etag: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(in_use.code(), Code::FailedPrecondition, "{in_use:?}");
    let unused = app
        .segmentation
        .clone()
        .delete_tag(TestApp::admin(pb::DeleteTagRequest {
            name: "tags/dormant".into(),
            etag: String::new(),
        }))
        .await;
    assert!(unused.is_ok(), "dormant is used by nobody: {unused:?}");

    // Switching the segment's tag moves it on every member; the reader follows.
    app.tag("big", "", "big").await.unwrap();
    let updated = app
        .segmentation
        .clone()
        .update_segment(TestApp::admin(pb::UpdateSegmentRequest {
            segment: Some(pb::Segment {
                name: "segments/big-spenders".into(),
                tag: "tags/big".into(),
                ..Default::default()
            }),
            update_mask: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.tag.as_str(), updated.version),
        ("tags/big", 1),
        "a new tag is not a new rule"
    );
    assert_eq!(
        tags_of(&app, &buyer).await,
        vec![("tags/big".into(), pb::TagSource::Rule as i32, "segments/big-spenders".into())]
    );
    until_member(&app, "vip-contacts", &buyer, false).await;

    // Deleting the tagging segment takes its tag off.
    app.segmentation
        .clone()
        .delete_segment(TestApp::admin(pb::DeleteSegmentRequest {
            name: "segments/big-spenders".into(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    assert!(tags_of(&app, &buyer).await.is_empty());
}
