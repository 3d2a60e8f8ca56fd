//! The ticketing binary beside the permissions binary (the production topology):
//! configuration and tickets over gRPC, routing and assignment, a customer's
//! self-service ticket, and everything still there after a restart.

use crm_e2e::{GRPC_LISTENING, Running};
use crm_proto::crm::{
    common::v1::Channel,
    ticketing::v1::{self as pb, ticketing_service_client::TicketingServiceClient},
};
use tonic::Code;

use crate::services::{SECRET, as_user, connect, customer_token, exported, start, storage, token};

/// ticketing beside the permissions service at `permissions`; returns it and its
/// `http://` address.
fn start_ticketing(dir: &std::path::Path, permissions: &str, storage: &str) -> (Running, String) {
    let ticketing = start(
        "ticketing",
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[auth]
jwt_secret = "{SECRET}"
{storage}
[permissions]
url = "{permissions}"
[ticketing]
scheduler_interval_ms = 100
"#
        ),
        dir,
        &[],
    );
    let [addr] = ticketing.bound([GRPC_LISTENING]);
    (ticketing, format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_are_served_beside_permissions_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p_storage = storage(dir.path(), "permissions");
    let permissions = start(
        "permissions",
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[auth]
jwt_secret = "{SECRET}"
{p_storage}
[permissions_service]
bootstrap_admins = ["root"]
service_accounts = ["ticketing"]
"#
        ),
        dir.path(),
        &[],
    );
    let [p_addr] = permissions.bound([GRPC_LISTENING]);
    let p_addr = format!("http://{p_addr}");
    connect(&p_addr).await;
    let t_storage = storage(dir.path(), "ticketing");
    let (ticketing, addr) = start_ticketing(dir.path(), &p_addr, &t_storage);
    let mut client = TicketingServiceClient::new(connect(&addr).await);
    let root = token("root");

    // The default queue exists from the first start; add after-sales with one agent.
    client
        .get_queue(as_user(
            pb::GetQueueRequest {
                name: "queues/general".into(),
            },
            &root,
        ))
        .await
        .unwrap();
    client
        .create_queue(as_user(
            pb::CreateQueueRequest {
                queue: Some(pb::Queue {
                    name: "queues/after-sales".into(),
                    display_name: "After-sales".into(),
                    ..Default::default()
                }),
            },
            &root,
        ))
        .await
        .unwrap();
    client
        .create_agent(as_user(
            pb::CreateAgentRequest {
                agent: Some(pb::Agent {
                    name: "agents/li".into(),
                    queues: vec!["queues/after-sales".into()],
                    languages: vec!["zh".into()],
                    capacity: 5,
                    available: true,
                    ..Default::default()
                }),
            },
            &root,
        ))
        .await
        .unwrap();
    client
        .create_routing_rule(as_user(
            pb::CreateRoutingRuleRequest {
                routing_rule: Some(pb::RoutingRule {
                    name: "routingRules/quality".into(),
                    order: 1,
                    conditions: Some(pb::TicketConditions {
                        categories: vec!["product_quality".into()],
                        ..Default::default()
                    }),
                    queue: "queues/after-sales".into(),
                    ..Default::default()
                }),
            },
            &root,
        ))
        .await
        .unwrap();

    // A customer raises a ticket from the app; it is routed and assigned.
    let me = customer_token("c1");
    // The customer's app sends this; after a restart it sends it again.
    let raise = pb::CreateTicketRequest {
        ticket: Some(pb::Ticket {
            customer: "customers/c1".into(),
            channel: Channel::App as i32,
            category: "product_quality".into(),
            subject: "屏幕有坏点".into(),
            language: "zh".into(),
            ..Default::default()
        }),
        request_id: "app-1".into(),
    };
    let raised = client.create_ticket(as_user(raise.clone(), &me)).await.unwrap().into_inner();
    assert!(raised.routing.is_none(), "customers do not see routing");
    let staff_view = client
        .get_ticket(as_user(
            pb::GetTicketRequest {
                name: raised.name.clone(),
            },
            &root,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(staff_view.queue, "queues/after-sales");
    assert_eq!(staff_view.assignee, "agents/li");
    let err = client
        .get_ticket(as_user(
            pb::GetTicketRequest {
                name: raised.name.clone(),
            },
            &customer_token("c2"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Restart: the ticket, its history and its routing are still there.
    assert!(ticketing.terminate().success());
    let (_ticketing, addr) = start_ticketing(dir.path(), &p_addr, &t_storage);
    let mut client = TicketingServiceClient::new(connect(&addr).await);
    let again = client
        .get_ticket(as_user(
            pb::GetTicketRequest {
                name: raised.name.clone(),
            },
            &root,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, staff_view);
    let history = client
        .list_ticket_history(as_user(
            pb::ListTicketHistoryRequest {
                parent: raised.name.clone(),
                ..Default::default()
            },
            &root,
        ))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(history.len(), 3, "{history:?}");
    // The same request_id after the restart still answers with the first ticket.
    let retried = client.create_ticket(as_user(raise, &me)).await.unwrap().into_inner();
    assert_eq!(retried.name, raised.name);
}

/// `crm serve`: ticketing reads the customer's tier from customer-profile beside it,
/// and an SLA policy for that tier applies; customer-profile's 360 view counts the
/// customer's open tickets from ticketing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sla_policies_select_on_the_tier_kept_in_customer_profile() {
    use crm_proto::crm::{
        common::v1::Classification,
        customer::v1::{self as cpb, customer_profile_service_client::CustomerProfileServiceClient},
    };
    let data = tempfile::tempdir().unwrap();
    let (server, addr) = crm_e2e::serve_crm(data.path());
    let line = server.wait_for_line("development admin token", std::time::Duration::from_secs(5));
    let dev = line.rsplit(' ').next().unwrap().trim().to_owned();
    let channel = connect(&addr).await;
    let mut customers = CustomerProfileServiceClient::new(channel.clone());
    let mut tickets = TicketingServiceClient::new(channel);
    // The tier is not personal data: public, so service accounts read it in clear.
    customers
        .update_field_definition(as_user(
            cpb::UpdateFieldDefinitionRequest {
                field_definition: Some(cpb::FieldDefinition {
                    name: "fieldDefinitions/custom_attributes.loyalty_tier".into(),
                    display_name: "Loyalty tier".into(),
                    r#type: cpb::FieldType::String as i32,
                    classification: Classification::Public as i32,
                    ..Default::default()
                }),
                update_mask: None,
                allow_missing: true,
            },
            &dev,
        ))
        .await
        .unwrap();
    let customer = |given: &str, tier: Option<&str>| cpb::Customer {
        person_name: Some(cpb::PersonName {
            given_name: given.into(),
            family_name: "Zhang".into(),
            ..Default::default()
        }),
        custom_attributes: tier
            .map(|t| [("loyalty_tier".to_owned(), t.to_owned())].into())
            .unwrap_or_default(),
        ..Default::default()
    };
    let create_customer = |c: cpb::Customer| {
        let mut client = customers.clone();
        let dev = dev.clone();
        async move {
            client
                .create_customer(as_user(
                    cpb::CreateCustomerRequest {
                        customer: Some(c),
                        request_id: String::new(),
                    },
                    &dev,
                ))
                .await
                .unwrap()
                .into_inner()
                .name
        }
    };
    let vip = create_customer(customer("Wei", Some("VIP"))).await;
    let plain = create_customer(customer("Fang", None)).await;
    tickets
        .create_sla_policy(as_user(
            pb::CreateSlaPolicyRequest {
                sla_policy: Some(pb::SlaPolicy {
                    name: "slaPolicies/vip".into(),
                    order: 1,
                    conditions: Some(pb::TicketConditions {
                        customer_tiers: vec!["vip".into()],
                        ..Default::default()
                    }),
                    targets: vec![pb::SlaTarget {
                        metric: pb::SlaMetric::FirstResponse as i32,
                        within: Some(prost_types::Duration { seconds: 1800, nanos: 0 }),
                        business_hours: false,
                    }],
                    ..Default::default()
                }),
            },
            &dev,
        ))
        .await
        .unwrap();
    let raise = |customer: String| {
        let mut client = tickets.clone();
        let dev = dev.clone();
        async move {
            client
                .create_ticket(as_user(
                    pb::CreateTicketRequest {
                        ticket: Some(pb::Ticket {
                            customer,
                            channel: Channel::Phone as i32,
                            category: "how_to".into(),
                            subject: "怎么退货".into(),
                            ..Default::default()
                        }),
                        request_id: String::new(),
                    },
                    &dev,
                ))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let t = raise(vip.clone()).await;
    assert_eq!(t.customer_tier, "vip");
    assert_eq!(t.sla_policy, "slaPolicies/vip");
    let t = raise(plain).await;
    assert!(t.customer_tier.is_empty() && t.sla_policy.is_empty(), "{t:?}");

    // The 360 view counts the customer's open tickets through the ticketing service.
    let view = customers
        .get_customer360(as_user(
            cpb::GetCustomer360Request {
                name: vip,
                read_mask: Some(prost_types::FieldMask {
                    paths: vec!["business".into()],
                }),
            },
            &dev,
        ))
        .await
        .unwrap()
        .into_inner();
    let business = view.business.unwrap();
    assert_eq!(
        business.tickets.unwrap().state,
        cpb::SectionState::Available as i32,
        "the ticketing section must be reachable"
    );
    assert_eq!(business.open_tickets, 1);
    let timeline = customers
        .list_timeline(as_user(
            cpb::ListTimelineRequest {
                parent: view.name.clone(),
                ..Default::default()
            },
            &dev,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(timeline.tickets.unwrap().state, cpb::SectionState::Available as i32);
    let kinds: Vec<i32> = timeline.entries.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![cpb::TimelineKind::Ticket as i32, cpb::TimelineKind::ProfileChange as i32],
        "{:?}",
        timeline.entries
    );

    // A data export includes the tickets, from the ticketing service.
    let (job, text) = exported(&mut customers, &view.name, &dev).await;
    assert!(job.unavailable_sections.is_empty(), "{job:?}");
    assert!(text.contains("怎么退货"), "the ticket is in the export");
}
