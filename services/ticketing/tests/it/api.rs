//! The ticketing and knowledge-base services through their gRPC API, with the
//! permissions service deciding.

use std::time::Duration;

use crm_proto::crm::{
    events::v1::{StreamEventsRequest, stream_events_response::Kind},
    permissions::v1::Scope,
    ticketing::v1 as pb,
};
use prost_types::FieldMask;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::{
    app::{TestApp, reason, violations},
    setup::ticket,
};

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

async fn history(app: &TestApp, name: &str) -> Vec<pb::HistoryEntry> {
    app.tickets
        .clone()
        .list_ticket_history(TestApp::admin(pb::ListTicketHistoryRequest {
            parent: name.into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .entries
}

async fn update(app: &TestApp, token: &str, t: pb::Ticket, paths: &[&str]) -> Result<pb::Ticket, tonic::Status> {
    app.tickets
        .clone()
        .update_ticket(TestApp::as_user(
            pb::UpdateTicketRequest {
                ticket: Some(t),
                update_mask: mask(paths),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn comment(app: &TestApp, token: &str, ticket: &str, body: &str, internal: bool) -> Result<pb::Comment, tonic::Status> {
    app.tickets
        .clone()
        .create_comment(TestApp::as_user(
            pb::CreateCommentRequest {
                parent: ticket.into(),
                comment: Some(pb::Comment {
                    body: body.into(),
                    internal,
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_are_routed_assigned_and_explained() {
    let app = TestApp::spawn().await;
    let quality = app.create(ticket("c1", "product_quality", "屏幕坏了")).await;
    assert_eq!(quality.queue, "queues/after-sales");
    assert!(
        ["agents/li", "agents/wang"].contains(&quality.assignee.as_str()),
        "{quality:?}"
    );
    let routing = quality.routing.clone().unwrap();
    assert_eq!(routing.routing_rule, "routingRules/quality");
    assert!(!routing.queue_reason.is_empty() && !routing.assignment_reason.is_empty());
    assert_eq!(quality.sla_policy, "slaPolicies/standard");
    assert_eq!(quality.status, pb::TicketStatus::New as i32);
    // The same customer again: continuity picks the agent who handled them.
    let again = app.create(ticket("c1", "product_quality", "还是坏的")).await;
    assert_eq!(again.assignee, quality.assignee);
    assert!(again.routing.unwrap().assignment_reason.contains("continuity"));
    let how_to = app.create(ticket("c2", "how_to", "怎么设置")).await;
    assert_eq!(how_to.queue, "queues/tech-support");
    let unmatched = app.create(ticket("c3", "billing", "发票")).await;
    assert_eq!(unmatched.queue, "queues/general");
    assert!(unmatched.routing.unwrap().routing_rule.is_empty());

    let kinds: Vec<i32> = history(&app, &quality.name).await.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            pb::HistoryKind::Created as i32,
            pb::HistoryKind::Routed as i32,
            pb::HistoryKind::Assigned as i32
        ]
    );
    let sla = app
        .tickets
        .clone()
        .get_sla_status(TestApp::admin(pb::GetSlaStatusRequest {
            ticket: quality.name.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sla.metrics.len(), 2);
    assert!(sla.metrics.iter().all(|m| m.business_hours && m.target.is_some()));

    // Agents report their load.
    let agents = app
        .tickets
        .clone()
        .list_agents(TestApp::admin(pb::ListAgentsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .agents;
    let holder = agents.iter().find(|a| a.name == quality.assignee).unwrap();
    assert_eq!(holder.load, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_every_field() {
    let app = TestApp::spawn().await;
    let err = app
        .create_as(
            &TestApp::token("admin-1"),
            pb::Ticket {
                customer: "c1".into(),
                category: "Bad Category".into(),
                ..Default::default()
            },
            "",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields = violations(&err);
    for f in ["ticket.customer", "ticket.channel", "ticket.category", "ticket.subject"] {
        assert!(fields.contains(&f.to_owned()), "{fields:?}");
    }
    let t = app.create(ticket("c1", "how_to", "help")).await;
    let err = update(&app, &TestApp::token("admin-1"), t.clone(), &["create_time", "priority"])
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["update_mask.paths[0]"]);
    let err = update(
        &app,
        &TestApp::token("admin-1"),
        pb::Ticket {
            queue: "queues/nowhere".into(),
            ..t.clone()
        },
        &["queue"],
    )
    .await
    .unwrap_err();
    assert_eq!(violations(&err), vec!["ticket.queue"]);
    let err = app
        .tickets
        .clone()
        .list_tickets(TestApp::admin(pb::ListTicketsRequest {
            page_size: -1,
            statuses: vec![42],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_follow_etags_masks_and_the_lifecycle() {
    let app = TestApp::spawn().await;
    let admin = TestApp::token("admin-1");
    let t = app.create(ticket("c1", "how_to", "help")).await;
    let raised = update(
        &app,
        &admin,
        pb::Ticket {
            priority: pb::Priority::Urgent as i32,
            tags: vec!["vip-complaint".into()],
            ..t.clone()
        },
        &["priority", "tags"],
    )
    .await
    .unwrap();
    assert_eq!(raised.priority, pb::Priority::Urgent as i32);
    assert_ne!(raised.etag, t.etag);
    // The etag read before the change is stale now.
    let err = update(
        &app,
        &admin,
        pb::Ticket {
            subject: "x".into(),
            ..t.clone()
        },
        &["subject"],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    // Assign explicitly, then solve and close.
    let assigned = update(
        &app,
        &admin,
        pb::Ticket {
            assignee: "agents/smith".into(),
            etag: String::new(),
            ..raised.clone()
        },
        &["assignee"],
    )
    .await
    .unwrap();
    assert_eq!(assigned.assignee, "agents/smith");
    let solved = update(
        &app,
        &admin,
        pb::Ticket {
            status: pb::TicketStatus::Solved as i32,
            etag: String::new(),
            ..assigned.clone()
        },
        &["status"],
    )
    .await
    .unwrap();
    assert!(solved.solve_time.is_some());
    let closed = update(
        &app,
        &admin,
        pb::Ticket {
            status: pb::TicketStatus::Closed as i32,
            etag: String::new(),
            ..solved.clone()
        },
        &["status"],
    )
    .await
    .unwrap();
    let err = update(
        &app,
        &admin,
        pb::Ticket {
            status: pb::TicketStatus::Open as i32,
            etag: String::new(),
            ..closed
        },
        &["status"],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let kinds: Vec<i32> = history(&app, &t.name).await.iter().map(|e| e.kind).collect();
    for k in [pb::HistoryKind::Priority, pb::HistoryKind::Updated, pb::HistoryKind::Status] {
        assert!(kinds.contains(&(k as i32)), "{kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_see_their_teams_and_their_own_tickets() {
    let app = TestApp::spawn().await;
    let admin = TestApp::token("admin-1");
    app.team("after-sales-team").await;
    app.tickets
        .clone()
        .update_queue(TestApp::admin(pb::UpdateQueueRequest {
            queue: Some(pb::Queue {
                name: "queues/after-sales".into(),
                team: "after-sales-team".into(),
                ..Default::default()
            }),
            update_mask: mask(&["team"]),
        }))
        .await
        .unwrap();
    let lead = app.user("lead", &["after-sales-team"], "service_agent", Scope::Team).await;
    let li = app.user("li", &[], "service_agent", Scope::Own).await;
    let quality = app.create(ticket("c1", "product_quality", "坏了")).await;
    let how_to = app.create(ticket("c2", "how_to", "怎么")).await;
    let list = |token: String| {
        let mut client = app.tickets.clone();
        async move {
            client
                .list_tickets(TestApp::as_user(pb::ListTicketsRequest::default(), &token))
                .await
                .unwrap()
                .into_inner()
                .tickets
                .into_iter()
                .map(|t| t.name)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(lead.clone()).await, vec![quality.name.clone()]);
    let mine = list(li.clone()).await;
    assert_eq!(mine.contains(&quality.name), quality.assignee == "agents/li");
    assert!(!mine.contains(&how_to.name));
    let err = app
        .tickets
        .clone()
        .get_ticket(TestApp::as_user(
            pb::GetTicketRequest {
                name: how_to.name.clone(),
            },
            &lead,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // A team member works the team's tickets but may not configure the service.
    comment(&app, &lead, &quality.name, "我们看一下", false).await.unwrap();
    let err = app
        .tickets
        .clone()
        .create_queue(TestApp::as_user(
            pb::CreateQueueRequest {
                queue: Some(pb::Queue {
                    name: "queues/vip".into(),
                    ..Default::default()
                }),
            },
            &lead,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Reports and the feed are for managers.
    let err = app
        .tickets
        .clone()
        .get_service_report(TestApp::as_user(pb::GetServiceReportRequest::default(), &lead))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let manager = app.user("boss", &[], "service_manager", Scope::All).await;
    assert_eq!(list(manager).await.len(), 2);
    let _ = admin;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_serve_themselves() {
    let app = TestApp::spawn().await;
    let me = TestApp::customer_token("c1");
    let mine = app
        .create_as(&me, ticket("c1", "product_quality", "屏幕坏了"), "")
        .await
        .unwrap();
    assert!(mine.routing.is_none() && mine.queue.is_empty() && mine.sla_policy.is_empty());
    let err = app
        .create_as(&me, ticket("c2", "product_quality", "not mine"), "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = app
        .create_as(
            &me,
            pb::Ticket {
                priority: pb::Priority::Urgent as i32,
                customer_tier: "vip".into(),
                ..ticket("c1", "how_to", "now!")
            },
            "",
        )
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["ticket.customer_tier", "ticket.priority"]);
    let other = app.create(ticket("c2", "how_to", "someone else")).await;
    let err = app
        .tickets
        .clone()
        .get_ticket(TestApp::as_user(
            pb::GetTicketRequest {
                name: other.name.clone(),
            },
            &me,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Staff write an internal note and a reply; the customer sees the reply only.
    let admin = TestApp::token("admin-1");
    comment(&app, &admin, &mine.name, "internal: check batch 42", true)
        .await
        .unwrap();
    comment(&app, &admin, &mine.name, "请寄回检测", false).await.unwrap();
    let c = comment(&app, &me, &mine.name, "好的", false).await.unwrap();
    assert_eq!(c.author_type, pb::AuthorType::Customer as i32);
    assert_eq!(c.author, "customers/c1");
    let seen: Vec<String> = app
        .tickets
        .clone()
        .list_comments(TestApp::as_user(
            pb::ListCommentsRequest {
                parent: mine.name.clone(),
                ..Default::default()
            },
            &me,
        ))
        .await
        .unwrap()
        .into_inner()
        .comments
        .into_iter()
        .map(|c| c.body)
        .collect();
    assert_eq!(seen, vec!["请寄回检测", "好的"]);
    let err = update(
        &app,
        &me,
        pb::Ticket {
            subject: "x".into(),
            ..mine.clone()
        },
        &["subject"],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Rating: only once solved, credited to the agent, shown in the report.
    let rate = |rating: i32| {
        let mut client = app.tickets.clone();
        let (name, me) = (mine.name.clone(), me.clone());
        async move {
            client
                .submit_survey_response(TestApp::as_user(
                    pb::SubmitSurveyResponseRequest {
                        survey_response: Some(pb::SurveyResponse {
                            ticket: name,
                            rating,
                            comment: "谢谢".into(),
                            ..Default::default()
                        }),
                    },
                    &me,
                ))
                .await
        }
    };
    assert_eq!(rate(5).await.unwrap_err().code(), Code::FailedPrecondition);
    let current = app
        .tickets
        .clone()
        .get_ticket(TestApp::admin(pb::GetTicketRequest { name: mine.name.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert!(current.first_response_time.is_some());
    update(
        &app,
        &admin,
        pb::Ticket {
            status: pb::TicketStatus::Solved as i32,
            ..current.clone()
        },
        &["status"],
    )
    .await
    .unwrap();
    assert_eq!(rate(9).await.unwrap_err().code(), Code::InvalidArgument);
    let rated = rate(4).await.unwrap().into_inner();
    assert_eq!(rated.agent, current.assignee);
    let now = chrono::Utc::now().timestamp();
    let report = app
        .tickets
        .clone()
        .get_service_report(TestApp::admin(pb::GetServiceReportRequest {
            start_time: Some(prost_types::Timestamp {
                seconds: now - 3600,
                nanos: 0,
            }),
            end_time: Some(prost_types::Timestamp {
                seconds: now + 3600,
                nanos: 0,
            }),
            group_by: pb::ReportGrouping::Agent as i32,
        }))
        .await
        .unwrap()
        .into_inner();
    let total = report.total.unwrap();
    assert_eq!(total.volume, 2);
    assert_eq!(total.survey_responses, 1);
    assert!((total.csat - 4.0).abs() < 1e-9);
    assert_eq!(total.resolution.unwrap().count, 1);
    assert_eq!(total.first_response.unwrap().count, 1);
    let row = report.rows.iter().find(|r| r.key == current.assignee).unwrap();
    assert!((row.csat - 4.0).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_a_request_id_do_not_duplicate() {
    let app = TestApp::spawn().await;
    let admin = TestApp::token("admin-1");
    let first = app.create_as(&admin, ticket("c1", "how_to", "help"), "req-1").await.unwrap();
    let retry = app.create_as(&admin, ticket("c1", "how_to", "help"), "req-1").await.unwrap();
    assert_eq!(first.name, retry.name);
    let err = app
        .create_as(&admin, ticket("c1", "how_to", "other"), "req-1")
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["request_id"]);
    let send = || {
        let mut client = app.tickets.clone();
        let (name, admin) = (first.name.clone(), admin.clone());
        async move {
            client
                .create_comment(TestApp::as_user(
                    pb::CreateCommentRequest {
                        parent: name,
                        comment: Some(pb::Comment {
                            body: "on it".into(),
                            ..Default::default()
                        }),
                        request_id: "c-1".into(),
                    },
                    &admin,
                ))
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert_eq!(send().await.name, send().await.name);
    let comments = app
        .tickets
        .clone()
        .list_comments(TestApp::admin(pb::ListCommentsRequest {
            parent: first.name.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .comments;
    assert_eq!(comments.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_in_use_cannot_be_deleted() {
    let app = TestApp::spawn().await;
    let mut client = app.tickets.clone();
    let err = client
        .delete_queue(TestApp::admin(pb::DeleteQueueRequest {
            name: "queues/after-sales".into(),
            etag: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "RESOURCE_IN_USE");
    assert!(err.message().contains("routingRules/quality"), "{}", err.message());
    let err = client
        .delete_calendar(TestApp::admin(pb::DeleteCalendarRequest {
            name: "calendars/cn-office".into(),
            etag: String::new(),
        }))
        .await
        .unwrap_err();
    assert!(err.message().contains("slaPolicies/standard"), "{}", err.message());
    client
        .delete_routing_rule(TestApp::admin(pb::DeleteRoutingRuleRequest {
            name: "routingRules/how-to".into(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    let err = client
        .get_routing_rule(TestApp::admin(pb::GetRoutingRuleRequest {
            name: "routingRules/how-to".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Paging through the agents one at a time visits each once, in name order.
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_agents(TestApp::admin(pb::ListAgentsRequest {
                page_size: 2,
                page_token: token.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        names.extend(page.agents.into_iter().map(|a| a.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), 6);
    // Masked update keeps what the mask leaves out; a stale etag is refused.
    let li = client
        .get_agent(TestApp::admin(pb::GetAgentRequest {
            name: "agents/li".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let changed = client
        .update_agent(TestApp::admin(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                capacity: 3,
                ..li.clone()
            }),
            update_mask: mask(&["capacity"]),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.capacity, 3);
    assert_eq!(changed.skills, li.skills);
    let err = client
        .update_agent(TestApp::admin(pb::UpdateAgentRequest {
            agent: Some(li),
            update_mask: mask(&["capacity"]),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    let err = client
        .create_agent(TestApp::admin(pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                name: "agents/new".into(),
                capacity: 0,
                queues: vec!["queues/missing".into()],
                ..Default::default()
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["agent.queues[0]", "agent.capacity"]);
}

async fn article(app: &TestApp, title: &str, body: &str, category: &str) -> pb::Article {
    let mut kb = app.kb.clone();
    let draft = kb
        .create_article(TestApp::admin(pb::CreateArticleRequest {
            article: Some(pb::Article {
                title: title.into(),
                body: body.into(),
                category: category.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(draft.state, pb::ArticleState::Draft as i32);
    kb.update_article(TestApp::admin(pb::UpdateArticleRequest {
        article: Some(pb::Article {
            name: draft.name.clone(),
            state: pb::ArticleState::Published as i32,
            ..Default::default()
        }),
        update_mask: mask(&["state"]),
    }))
    .await
    .unwrap()
    .into_inner()
}

async fn search(app: &TestApp, token: &str, query: &str) -> Vec<pb::ArticleMatch> {
    app.kb
        .clone()
        .search_articles(TestApp::as_user(
            pb::SearchArticlesRequest {
                query: query.into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .matches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_knowledge_base_answers_staff_and_customers() {
    let app = TestApp::spawn().await;
    let admin = TestApp::token("admin-1");
    let password = article(
        &app,
        "How to reset your password",
        "Open Settings, choose Account, then Reset password. A link arrives by email.",
        "how_to",
    )
    .await;
    let screen = article(
        &app,
        "屏幕碎了怎么办",
        "手机屏幕碎裂属于质量问题时，可在30天内免费更换屏幕。请携带发票到门店。",
        "product_quality",
    )
    .await;
    article(&app, "Shipping times", "Orders ship within two days.", "delivery").await;
    let found = search(&app, &admin, "reset password").await;
    assert_eq!(found[0].article.as_ref().unwrap().name, password.name);
    assert!(found[0].snippet.contains("Reset password"), "{}", found[0].snippet);
    let found = search(&app, &admin, "屏幕坏了").await;
    assert_eq!(found[0].article.as_ref().unwrap().name, screen.name);
    assert!(search(&app, &admin, "refund policy").await.is_empty());

    // Suggestions for a ticket, and for a customer's question before any ticket.
    let t = app.create(ticket("c1", "product_quality", "手机屏幕碎了")).await;
    let suggested = app
        .kb
        .clone()
        .suggest_articles(TestApp::admin(pb::SuggestArticlesRequest {
            ticket: t.name.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .matches;
    assert_eq!(suggested[0].article.as_ref().unwrap().name, screen.name);
    let me = TestApp::customer_token("c9");
    let answer = app
        .kb
        .clone()
        .suggest_articles(TestApp::as_user(
            pb::SuggestArticlesRequest {
                text: "I forgot my password".into(),
                ..Default::default()
            },
            &me,
        ))
        .await
        .unwrap()
        .into_inner()
        .matches;
    assert_eq!(answer[0].article.as_ref().unwrap().name, password.name);
    let deflect = |request_id: &'static str| {
        let mut kb = app.kb.clone();
        let (name, me) = (password.name.clone(), me.clone());
        async move {
            kb.record_deflection(TestApp::as_user(
                pb::RecordDeflectionRequest {
                    article: name,
                    query: "I forgot my password".into(),
                    request_id: request_id.into(),
                    ..Default::default()
                },
                &me,
            ))
            .await
            .unwrap()
            .into_inner()
            .article_deflections
        }
    };
    assert_eq!(deflect("d-1").await, 1);
    assert_eq!(deflect("d-1").await, 1);
    assert_eq!(deflect("d-2").await, 2);

    // Drafts stay with staff; a new body is a new revision.
    let draft = app
        .kb
        .clone()
        .create_article(TestApp::admin(pb::CreateArticleRequest {
            article: Some(pb::Article {
                title: "Password policy (draft)".into(),
                body: "Passwords need twelve characters.".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(
        search(&app, &me, "password")
            .await
            .iter()
            .all(|m| m.article.as_ref().unwrap().name != draft.name)
    );
    let err = app
        .kb
        .clone()
        .get_article(TestApp::as_user(
            pb::GetArticleRequest {
                name: draft.name.clone(),
            },
            &me,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let edited = app
        .kb
        .clone()
        .update_article(TestApp::admin(pb::UpdateArticleRequest {
            article: Some(pb::Article {
                name: password.name.clone(),
                body: "Open Settings → Account → Reset password.".into(),
                etag: password.etag.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["body"]),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(edited.revision, 2);
    let revisions = app
        .kb
        .clone()
        .list_article_revisions(TestApp::admin(pb::ListArticleRevisionsRequest {
            name: password.name.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .revisions;
    assert_eq!(revisions.iter().map(|r| r.revision).collect::<Vec<_>>(), vec![2, 1]);
    let err = app
        .kb
        .clone()
        .create_article(TestApp::as_user(pb::CreateArticleRequest::default(), &me))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_on_the_feed() {
    let app = TestApp::spawn().await;
    let t = app.create(ticket("c1", "how_to", "help")).await;
    comment(&app, &TestApp::token("admin-1"), &t.name, "done", false)
        .await
        .unwrap();
    let mut stream = app
        .tickets
        .clone()
        .stream_events(TestApp::admin(StreamEventsRequest {
            after_cursor: String::new(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut types = Vec::new();
    while !types.contains(&"crm.ticketing.v1.CommentAdded".to_owned()) {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        if let Some(Kind::Event(e)) = msg.kind {
            types.push(e.r#type);
        }
    }
    assert!(types.contains(&"crm.ticketing.v1.ConfigurationChanged".to_owned()));
    assert!(types.contains(&"crm.ticketing.v1.TicketChanged".to_owned()));
    let err = app
        .tickets
        .clone()
        .stream_events(TestApp::as_user(
            StreamEventsRequest::default(),
            &TestApp::customer_token("c1"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breach_escalates_to_the_supervisor_while_the_service_runs() {
    let app = TestApp::spawn().await;
    let mut client = app.tickets.clone();
    client
        .create_escalation_policy(TestApp::admin(pb::CreateEscalationPolicyRequest {
            escalation_policy: Some(pb::EscalationPolicy {
                name: "escalationPolicies/fast".into(),
                levels: vec![pb::EscalationLevel {
                    metric: pb::SlaMetric::Resolution as i32,
                    percent: 100,
                    depth: 1,
                    actions: vec![pb::EscalationAction::ReassignToSupervisor as i32],
                }],
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
    client
        .create_sla_policy(TestApp::admin(pb::CreateSlaPolicyRequest {
            sla_policy: Some(pb::SlaPolicy {
                name: "slaPolicies/urgent".into(),
                order: 1,
                conditions: Some(pb::TicketConditions {
                    priorities: vec![pb::Priority::Urgent as i32],
                    ..Default::default()
                }),
                targets: vec![pb::SlaTarget {
                    metric: pb::SlaMetric::Resolution as i32,
                    within: Some(prost_types::Duration { seconds: 2, nanos: 0 }),
                    business_hours: false,
                }],
                escalation_policy: "escalationPolicies/fast".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
    let t = app
        .create(pb::Ticket {
            priority: pb::Priority::Urgent as i32,
            ..ticket("c1", "product_quality", "冒烟了")
        })
        .await;
    assert_eq!(t.sla_policy, "slaPolicies/urgent");
    assert_ne!(t.assignee, "agents/sup");
    // The service's own scheduler fires the breach: the queue's supervisor takes over.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let escalated = loop {
        let now = client
            .get_ticket(TestApp::admin(pb::GetTicketRequest { name: t.name.clone() }))
            .await
            .unwrap()
            .into_inner();
        if now.assignee == "agents/sup" {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "not escalated: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(escalated.etag, t.etag);
    let breaches = history(&app, &t.name)
        .await
        .into_iter()
        .filter(|e| e.kind == pb::HistoryKind::SlaBreach as i32)
        .count();
    assert_eq!(breaches, 1);
    let sla = client
        .get_sla_status(TestApp::admin(pb::GetSlaStatusRequest { ticket: t.name.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sla.metrics[0].state, pb::SlaState::Breached as i32);
}
