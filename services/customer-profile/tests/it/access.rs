//! Enforcement of the permissions service: scopes, field masking, grants,
//! revocation, audit, and authentication of every RPC.

use std::time::{Duration, Instant};

use crm_proto::crm::{
    customer::v1 as pb,
    permissions::v1::{self as perm, Scope, audit_entry::Outcome},
};
use tonic::{Code, Request};

use crate::app::{TestApp, person};

fn owned(given: &str, owner: &str, team: &str) -> pb::Customer {
    pb::Customer {
        owner_user_id: owner.into(),
        team_id: team.into(),
        ..person(given, "Test")
    }
}

async fn list_all(app: &TestApp, token: &str, page_size: i32) -> Vec<Vec<pb::Customer>> {
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .client
            .clone()
            .list_customers(TestApp::as_user(
                pb::ListCustomersRequest {
                    page_size,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        pages.push(page.customers);
        if page.next_page_token.is_empty() {
            return pages;
        }
        page_token = page.next_page_token;
    }
}

async fn get_as(app: &TestApp, token: &str, name: &str) -> Result<pb::Customer, tonic::Status> {
    app.client
        .clone()
        .get_customer(TestApp::as_user(pb::GetCustomerRequest { name: name.into() }, token))
        .await
        .map(tonic::Response::into_inner)
}

/// The sales hierarchy east > shanghai > pudong, and west beside it.
async fn teams(app: &TestApp) {
    app.team("east", "").await;
    app.team("shanghai", "east").await;
    app.team("pudong", "shanghai").await;
    app.team("west", "").await;
}

#[tokio::test]
async fn a_manager_sees_the_team_subtree_and_nothing_else() {
    let app = TestApp::spawn().await;
    teams(&app).await;
    let manager = app.user("mgr", &["shanghai"], "sales_manager", Scope::TeamSubtree).await;
    let rep = app.user("rep", &["pudong"], "sales_rep", Scope::Own).await;
    let a = app.create(owned("Shanghai", "someone", "shanghai")).await;
    let b = app.create(owned("Pudong", "rep", "pudong")).await;
    let c = app.create(owned("East", "someone", "east")).await;
    let d = app.create(owned("West", "someone", "west")).await;
    let e = app.create(owned("Unowned", "", "")).await;

    let seen: Vec<String> = list_all(&app, &manager, 50)
        .await
        .concat()
        .into_iter()
        .map(|c| c.name)
        .collect();
    let mut expected = vec![a.name.clone(), b.name.clone()];
    expected.sort();
    let mut seen_sorted = seen.clone();
    seen_sorted.sort();
    assert_eq!(seen_sorted, expected, "the manager lists exactly shanghai and pudong");
    assert!(get_as(&app, &manager, &b.name).await.is_ok());
    for hidden in [&c, &d, &e] {
        let err = get_as(&app, &manager, &hidden.name).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{}", hidden.name);
    }
    // The rep sees only what it owns, even inside its own team.
    let mine: Vec<String> = list_all(&app, &rep, 50).await.concat().into_iter().map(|c| c.name).collect();
    assert_eq!(mine, vec![b.name.clone()]);
    assert_eq!(get_as(&app, &rep, &a.name).await.unwrap_err().code(), Code::PermissionDenied);
    // Moving a customer to another team needs customer.assign, which a rep lacks.
    let err = app
        .client
        .clone()
        .update_customer(TestApp::as_user(
            pb::UpdateCustomerRequest {
                customer: Some(pb::Customer {
                    name: b.name.clone(),
                    team_id: "west".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["team_id".into()],
                }),
            },
            &rep,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn an_agent_without_clearance_gets_masked_fields_and_cannot_write_them_back() {
    let app = TestApp::spawn().await;
    let agent = app.user("agent", &[], "service_agent", Scope::All).await;
    let created = app
        .create(pb::Customer {
            phone_numbers: vec![pb::PhoneNumber {
                number: "138 0013 5678".into(),
                ..Default::default()
            }],
            email_addresses: vec![pb::EmailAddress {
                address: "zhang.wei@example.com".into(),
                ..Default::default()
            }],
            national_id: "11010519491231002X".into(),
            ..person("伟", "张")
        })
        .await;
    assert_eq!(
        created.phone_numbers[0].number, "+8613800135678",
        "the admin sees it in clear"
    );
    assert!(created.redacted_fields.is_empty());

    let seen = get_as(&app, &agent, &created.name).await.unwrap();
    assert_eq!(seen.phone_numbers[0].number, "+86138****5678");
    assert_eq!(seen.email_addresses[0].address, "z***@example.com");
    assert!(seen.national_id.is_empty(), "confidential is two levels above: hidden");
    assert!(seen.raw_values.is_empty(), "raw input would reveal the masked phone");
    assert_eq!(seen.redacted_fields, vec!["email_addresses", "national_id", "phone_numbers"]);
    assert_eq!(seen.person_name.unwrap().family_name, "张", "internal fields stay visible");
    let listed = list_all(&app, &agent, 10).await.concat();
    assert_eq!(listed[0].phone_numbers[0].number, "+86138****5678");

    // Writing a masked value back would destroy the real one.
    let err = app
        .client
        .clone()
        .update_customer(TestApp::as_user(
            pb::UpdateCustomerRequest {
                customer: Some(pb::Customer {
                    name: created.name.clone(),
                    phone_numbers: seen.phone_numbers.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["phone_numbers".into()],
                }),
            },
            &agent,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(app.get(&created.name).await.phone_numbers[0].number, "+8613800135678");
}

#[tokio::test]
async fn a_page_holds_page_size_visible_rows_when_hidden_rows_lie_between() {
    let app = TestApp::spawn().await;
    let rep = app.user("rep", &[], "sales_rep", Scope::Own).await;
    let mut mine = Vec::new();
    for i in 0..25 {
        // Two hidden customers between each visible one, in creation order.
        mine.push(app.create(owned(&format!("Mine{i}"), "rep", "")).await.name);
        app.create(owned(&format!("Other{i}a"), "someone", "")).await;
        app.create(owned(&format!("Other{i}b"), "", "t")).await;
    }
    let pages = list_all(&app, &rep, 10).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![10, 10, 5]);
    let seen: Vec<String> = pages.concat().into_iter().map(|c| c.name).collect();
    assert_eq!(seen, mine);
}

#[tokio::test]
async fn a_temporary_grant_works_until_it_expires_and_not_after() {
    let app = TestApp::spawn().await;
    let rep = app.user("rep", &[], "sales_rep", Scope::Own).await;
    app.user("boss", &[], "sales_manager", Scope::All).await;
    let boss = TestApp::token("boss");
    let target = app.create(owned("Elsewhere", "someone", "")).await;
    assert_eq!(
        get_as(&app, &rep, &target.name).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    let mut perms = app.permissions.clone();
    let requested = perms
        .create_grant(TestApp::as_user(
            perm::CreateGrantRequest {
                grant: Some(perm::Grant {
                    permissions: vec!["customer.read".into()],
                    resource: target.name.clone(),
                    reason: "cross-department campaign review".into(),
                    duration: Some(prost_types::Duration { seconds: 3, nanos: 0 }),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            &rep,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(requested.state, perm::grant::State::Requested as i32);
    // Requested is not approved; nobody approves their own request.
    assert_eq!(
        get_as(&app, &rep, &target.name).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let err = perms
        .approve_grant(TestApp::as_user(
            perm::ApproveGrantRequest {
                name: requested.name.clone(),
                ..Default::default()
            },
            &rep,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let approved = perms
        .approve_grant(TestApp::as_user(
            perm::ApproveGrantRequest {
                name: requested.name.clone(),
                comment: "ok for the review".into(),
                ..Default::default()
            },
            &boss,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.state, perm::grant::State::Approved as i32);
    assert!(get_as(&app, &rep, &target.name).await.is_ok(), "the grant is in force");
    let listed: Vec<String> = list_all(&app, &rep, 10).await.concat().into_iter().map(|c| c.name).collect();
    assert_eq!(listed, vec![target.name.clone()], "and the list shows the granted record");

    let expires = approved.expire_time.unwrap();
    let now = chrono::Utc::now().timestamp();
    tokio::time::sleep(Duration::from_secs((expires.seconds - now + 1).max(0) as u64)).await;
    assert_eq!(
        get_as(&app, &rep, &target.name).await.unwrap_err().code(),
        Code::PermissionDenied,
        "an expired grant allows nothing, cached or not"
    );
    assert!(list_all(&app, &rep, 10).await.concat().is_empty());
    // The expiry job records it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let g = perms
            .get_grant(TestApp::admin(perm::GetGrantRequest {
                name: requested.name.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        if g.state == perm::grant::State::Expired as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "grant never marked expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_revoked_role_takes_effect_at_once_in_process() {
    let app = TestApp::spawn().await;
    let agent = app.user("agent", &[], "service_agent", Scope::All).await;
    let c = app.create(person("Ada", "Lovelace")).await;
    assert!(get_as(&app, &agent, &c.name).await.is_ok(), "allowed, and now cached");
    let mut perms = app.permissions.clone();
    let bindings = perms
        .list_role_bindings(TestApp::admin(perm::ListRoleBindingsRequest {
            user: "users/agent".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .role_bindings;
    assert_eq!(bindings.len(), 1);
    perms
        .delete_role_binding(TestApp::admin(perm::DeleteRoleBindingRequest {
            name: bindings[0].name.clone(),
        }))
        .await
        .unwrap();
    // The policy version moved with the commit: the cached decision is gone.
    assert_eq!(
        get_as(&app, &agent, &c.name).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

async fn audit_entries(app: &TestApp, actor: &str, outcome: Outcome) -> Vec<perm::AuditEntry> {
    app.permissions
        .clone()
        .list_audit_entries(TestApp::admin(perm::ListAuditEntriesRequest {
            actor: actor.into(),
            outcome: outcome as i32,
            page_size: 100,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .audit_entries
}

/// Waits for the audit forwarder to ship what `found` looks for.
async fn eventually_audited(
    app: &TestApp,
    actor: &str,
    outcome: Outcome,
    found: impl Fn(&perm::AuditEntry) -> bool,
) -> perm::AuditEntry {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = audit_entries(app, actor, outcome).await.into_iter().find(|e| found(e)) {
            return e;
        }
        assert!(Instant::now() < deadline, "no such audit entry for {actor}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn denials_changes_and_sensitive_reads_reach_the_audit_log() {
    let app = TestApp::spawn().await;
    let rep = app.user("rep", &[], "sales_rep", Scope::Own).await;
    let c = app
        .create(pb::Customer {
            phone_numbers: vec![pb::PhoneNumber {
                number: "13800135678".into(),
                ..Default::default()
            }],
            ..person("Ada", "Lovelace")
        })
        .await;
    assert_eq!(get_as(&app, &rep, &c.name).await.unwrap_err().code(), Code::PermissionDenied);
    let denied = eventually_audited(&app, "rep", Outcome::Denied, |e| e.resource == c.name).await;
    assert_eq!(denied.action, "customer.read");
    assert_eq!(denied.source, "customer-profile");

    app.client
        .clone()
        .update_customer(TestApp::admin(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                name: c.name.clone(),
                display_name: "Countess".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["display_name".into()],
            }),
        }))
        .await
        .unwrap();
    let change = eventually_audited(&app, "admin-1", Outcome::Success, |e| {
        e.action == "crm.customer.v1.CustomerUpdated" && e.resource == c.name
    })
    .await;
    assert_eq!(change.fields, vec!["display_name"]);
    assert!(!change.before_digest.is_empty() && change.before_digest != change.after_digest);

    // The admin reads the phone in clear: a sensitive read.
    app.get(&c.name).await;
    let read = eventually_audited(&app, "admin-1", Outcome::Success, |e| e.action == "customer.read").await;
    assert!(read.fields.contains(&"phone_numbers".to_owned()), "{read:?}");

    let verified = app
        .permissions
        .clone()
        .verify_audit_chain(TestApp::admin(perm::VerifyAuditChainRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.intact, "{verified:?}");
}

/// Every method of every service in the descriptor set that this server serves (its
/// health service knows it), called without a token.
#[tokio::test]
async fn every_rpc_without_a_token_is_unauthenticated() {
    use prost::Message;
    let app = TestApp::spawn().await;
    let fds = prost_types::FileDescriptorSet::decode(crm_proto::FILE_DESCRIPTOR_SET).unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut called = 0;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let mut served = Vec::new();
    for file in fds.file.iter().filter(|f| f.package().starts_with("crm.")) {
        for service in &file.service {
            let full = format!("{}.{}", file.package(), service.name());
            let known = health
                .check(tonic_health::pb::HealthCheckRequest { service: full.clone() })
                .await;
            if known.is_err() {
                continue;
            }
            served.push(full);
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                grpc.ready().await.unwrap();
                let status = grpc
                    .unary::<_, (), _>(Request::new(()), path.parse().unwrap(), EmptyCodec)
                    .await
                    .unwrap_err();
                assert_eq!(status.code(), Code::Unauthenticated, "{path}: {status:?}");
                called += 1;
            }
        }
    }
    assert!(called > 40, "only {called} methods found");
    assert!(
        served.contains(&"crm.customer.v1.CustomerProfileService".to_owned())
            && served.contains(&"crm.permissions.v1.PermissionsService".to_owned()),
        "{served:?}"
    );
}

/// Encodes `()` as an empty message and decodes nothing: enough to reach the
/// authenticating interceptor of any method.
#[derive(Clone, Copy)]
struct EmptyCodec;

impl tonic::codec::Codec for EmptyCodec {
    type Encode = ();
    type Decode = ();
    type Encoder = EmptyCodec;
    type Decoder = EmptyCodec;
    fn encoder(&mut self) -> Self::Encoder {
        *self
    }
    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl tonic::codec::Encoder for EmptyCodec {
    type Item = ();
    type Error = tonic::Status;
    fn encode(&mut self, _: (), _: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        Ok(())
    }
}

impl tonic::codec::Decoder for EmptyCodec {
    type Item = ();
    type Error = tonic::Status;
    fn decode(&mut self, _: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        Ok(Some(()))
    }
}

#[tokio::test]
async fn clearance_applies_per_record_and_a_customer_reaches_only_its_own_record() {
    let app = TestApp::spawn().await;
    // An agent for everyone (internal) who is also the sales rep (sensitive) of some.
    let token = app.user("dual", &[], "service_agent", Scope::All).await;
    crm_platform::testing::policy::bind(&app.permissions, &TestApp::token("admin-1"), "dual", "sales_rep", Scope::Own)
        .await
        .unwrap();
    let phone = |n: &str| pb::PhoneNumber {
        number: n.into(),
        ..Default::default()
    };
    let mine = app
        .create(pb::Customer {
            phone_numbers: vec![phone("13800135678")],
            ..owned("Mine", "dual", "")
        })
        .await;
    let other = app
        .create(pb::Customer {
            phone_numbers: vec![phone("13900135678")],
            ..owned("Other", "someone", "")
        })
        .await;
    let seen_mine = get_as(&app, &token, &mine.name).await.unwrap();
    assert_eq!(
        seen_mine.phone_numbers[0].number, "+8613800135678",
        "the rep's clearance on its own customer"
    );
    let seen_other = get_as(&app, &token, &other.name).await.unwrap();
    assert_eq!(
        seen_other.phone_numbers[0].number, "+86139****5678",
        "the agent's clearance elsewhere"
    );
    let listed = list_all(&app, &token, 10).await.concat();
    let by_name = |n: &str| listed.iter().find(|c| c.name == n).unwrap().phone_numbers[0].number.clone();
    assert_eq!(by_name(&mine.name), "+8613800135678");
    assert_eq!(by_name(&other.name), "+86139****5678");

    // Self-service: the customer reads and updates its own record, nothing else.
    let id = mine.name.trim_start_matches("customers/").to_owned();
    let me = crm_platform::auth::mint_hs256(
        crate::app::SECRET,
        &crm_platform::auth::Principal {
            user_id: "customer-self".into(),
            customer_id: Some(id),
            expires_at: 0,
        },
        Duration::from_secs(60),
    )
    .unwrap();
    let own = get_as(&app, &me, &mine.name).await.unwrap();
    assert_eq!(own.phone_numbers[0].number, "+8613800135678");
    assert_eq!(
        get_as(&app, &me, &other.name).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let updated = app
        .client
        .clone()
        .update_customer(TestApp::as_user(
            pb::UpdateCustomerRequest {
                customer: Some(pb::Customer {
                    name: mine.name.clone(),
                    email_addresses: vec![pb::EmailAddress {
                        address: "me@example.com".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["email_addresses".into()],
                }),
            },
            &me,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.email_addresses[0].address, "me@example.com");
    let err = app
        .client
        .clone()
        .list_customers(TestApp::as_user(pb::ListCustomersRequest::default(), &me))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}
