//! Routing, assignment, SLA clocks and escalation through the service, on the test
//! database: the seeds' scenario, pauses, replicas firing each point once, and a
//! restart catching up on points that fell due while nothing ran.

use chrono::Duration;
use crm_platform::server::shutdown_channel;
use crm_proto::crm::ticketing::v1 as pb;
use crm_ticketing::{
    domain::ticket::Status,
    service::{AuthorType, NewComment},
};

use crate::setup::{TestService, at, seed, ticket};

/// History descriptions of a ticket, in order.
async fn history(s: &crm_ticketing::Ticketing, name: &str) -> Vec<(i32, String)> {
    s.history(name, 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| (e.kind, e.description))
        .collect()
}

fn sla_entries(h: &[(i32, String)]) -> Vec<&str> {
    h.iter()
        .filter(|(k, _)| *k == pb::HistoryKind::SlaWarning as i32 || *k == pb::HistoryKind::SlaBreach as i32)
        .map(|(_, d)| d.as_str())
        .collect()
}

#[tokio::test]
async fn routes_assigns_and_escalates_up_the_chain() {
    let s = TestService::start().await;
    let t = &s.ticketing;
    seed(t).await;
    // Friday 17:00 in Shanghai (09:00 UTC).
    let created = t
        .create_ticket(
            "agent-ui",
            ticket("c1", "product_quality", "屏幕有坏点"),
            at("2026-11-27T09:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(created.queue, "queues/after-sales");
    assert_eq!(created.assignee, "agents/li", "least loaded, first in turn");
    let routing = created.routing.clone().unwrap();
    assert_eq!(routing.routing_rule, "routingRules/quality");
    assert!(routing.queue_reason.contains("category product_quality"), "{routing:?}");
    assert!(routing.assignment_reason.contains("has skills returns"), "{routing:?}");
    assert_eq!(created.sla_policy, "slaPolicies/standard");

    // First response: 2 business hours → Monday 10:00 Shanghai (02:00 UTC).
    let status = t.sla_status(&created.name, at("2026-11-27T09:30:00Z")).await.unwrap();
    let first = &status.metrics[0];
    assert_eq!(first.metric, pb::SlaMetric::FirstResponse as i32);
    assert_eq!(first.due_time.unwrap().seconds, at("2026-11-30T02:00:00Z").timestamp());
    assert_eq!(first.state, pb::SlaState::Active as i32);

    // Nothing is due over the weekend.
    assert_eq!(t.run_due(at("2026-11-29T12:00:00Z")).await.unwrap(), 0);
    // Monday 09:30: 75 % of the first-response target.
    assert_eq!(t.run_due(at("2026-11-30T01:30:00Z")).await.unwrap(), 1);
    assert_eq!(t.run_due(at("2026-11-30T01:30:00Z")).await.unwrap(), 0, "each point once");
    // Monday 10:00: breached, the queue's supervisor is told.
    assert_eq!(t.run_due(at("2026-11-30T02:00:00Z")).await.unwrap(), 1);
    let h = history(t, &created.name).await;
    assert_eq!(
        sla_entries(&h),
        vec![
            "SLA first_response at 75 % of target: notified assignee agents/li",
            "SLA first_response breached 100 % of target: notified supervisor agents/sup",
        ]
    );

    // Resolution (24 business hours) falls due Wednesday 14:00 Shanghai; by Thursday
    // 18:00 also 150 % has passed: raised, reassigned to the supervisor, then to theirs.
    assert_eq!(t.run_due(at("2026-12-03T10:00:00Z")).await.unwrap(), 3);
    let after = t.get_ticket(&created.name).await.unwrap();
    assert_eq!(after.priority, pb::Priority::High as i32);
    assert_eq!(after.assignee, "agents/head");
    let h = history(t, &created.name).await;
    assert_eq!(
        sla_entries(&h)[2..],
        [
            "SLA resolution at 75 % of target: notified assignee agents/li",
            "SLA resolution breached 100 % of target: priority normal → high, reassigned to supervisor agents/sup",
            "SLA resolution breached 150 % of target: reassigned to supervisor agents/head",
        ]
    );
    let status = t.sla_status(&created.name, at("2026-12-03T10:00:00Z")).await.unwrap();
    assert_eq!(status.metrics[1].state, pb::SlaState::Breached as i32);
    assert!(status.metrics[1].remaining.unwrap().seconds < 0);
}

#[tokio::test]
async fn waiting_on_the_customer_pauses_and_replies_count() {
    let s = TestService::start().await;
    let t = &s.ticketing;
    seed(t).await;
    // Monday 09:00 Shanghai.
    let created = t
        .create_ticket("agent-ui", ticket("c2", "how_to", "怎么导出订单"), at("2026-11-30T01:00:00Z"))
        .await
        .unwrap();
    assert_eq!(created.queue, "queues/tech-support");
    assert_eq!(created.assignee, "agents/smith");
    assert!(
        created.routing.unwrap().assignment_reason.contains("nobody free speaks zh"),
        "the only agent speaks English"
    );
    // Answered at 09:45: first response achieved, the ticket opens.
    let reply = NewComment {
        author: "smith".into(),
        author_type: AuthorType::Agent,
        internal: false,
        body: "请在订单页点击导出".into(),
        attachments: vec![],
    };
    let comment = t.add_comment(&created.name, reply, at("2026-11-30T01:45:00Z")).await.unwrap();
    assert!(comment.name.ends_with("/comments/1"));
    let now = t.get_ticket(&created.name).await.unwrap();
    assert_eq!(now.status, pb::TicketStatus::Open as i32);
    assert!(now.first_response_time.is_some());
    // Waiting on the customer from 10:00 Monday to 10:00 Thursday: paused.
    t.change_status("smith", &created.name, Status::PendingCustomer, at("2026-11-30T02:00:00Z"))
        .await
        .unwrap();
    assert_eq!(
        t.run_due(at("2026-12-03T02:00:00Z")).await.unwrap(),
        0,
        "nothing runs while paused"
    );
    let status = t.sla_status(&created.name, at("2026-12-03T02:00:00Z")).await.unwrap();
    assert_eq!(status.metrics[0].state, pb::SlaState::Achieved as i32);
    assert_eq!(status.metrics[1].state, pb::SlaState::Paused as i32);
    assert_eq!(status.metrics[1].elapsed.unwrap().seconds, 3600);
    // The customer answers: open again, 23 business hours left from Thursday 10:00.
    let answer = NewComment {
        author: "c2".into(),
        author_type: AuthorType::Customer,
        internal: false,
        body: "还是不行".into(),
        attachments: vec![],
    };
    t.add_comment(&created.name, answer, at("2026-12-03T02:00:00Z"))
        .await
        .unwrap();
    let status = t.sla_status(&created.name, at("2026-12-03T02:00:00Z")).await.unwrap();
    assert_eq!(status.metrics[1].state, pb::SlaState::Active as i32);
    // Thu 8 h, Fri 9 h (Dec 4), Mon 6 h → Monday Dec 7 15:00 Shanghai.
    assert_eq!(
        status.metrics[1].due_time.unwrap().seconds,
        at("2026-12-07T07:00:00Z").timestamp()
    );
    // Solved: the survey request goes out; closed tickets take no comments.
    t.change_status("smith", &created.name, Status::Solved, at("2026-12-03T03:00:00Z"))
        .await
        .unwrap();
    t.change_status("smith", &created.name, Status::Closed, at("2026-12-03T04:00:00Z"))
        .await
        .unwrap();
    let late = NewComment {
        author: "c2".into(),
        author_type: AuthorType::Customer,
        internal: false,
        body: "谢谢".into(),
        attachments: vec![],
    };
    let err = t
        .add_comment(&created.name, late, at("2026-12-03T05:00:00Z"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("closed"), "{err}");
    let err = t
        .change_status("smith", &created.name, Status::Open, at("2026-12-03T05:00:00Z"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot become"), "{err}");
}

#[tokio::test]
async fn two_schedulers_fire_each_point_once() {
    let s = TestService::start().await;
    let a = &s.ticketing;
    seed(a).await;
    let b = s.replica().await;
    let monday = at("2026-11-30T01:00:00Z");
    let mut names = Vec::new();
    for i in 0..40 {
        let t = a
            .create_ticket("agent-ui", ticket(&format!("c{i}"), "product_quality", "坏了"), monday)
            .await
            .unwrap();
        names.push(t.name);
    }
    // Each ticket: first response 75 and 100, resolution 75, 100 and 150.
    let later = monday + Duration::days(14);
    let (fa, fb) = tokio::join!(a.run_due(later), b.run_due(later));
    let (fa, fb) = (fa.unwrap(), fb.unwrap());
    let (again_a, again_b) = tokio::join!(a.run_due(later), b.run_due(later));
    assert_eq!(fa + fb + again_a.unwrap() + again_b.unwrap(), 40 * 5, "a={fa} b={fb}");
    for name in &names {
        assert_eq!(sla_entries(&history(a, name).await).len(), 5, "{name}");
    }
}

#[tokio::test]
async fn points_due_during_downtime_fire_when_a_scheduler_starts() {
    let s = TestService::start().await;
    seed(&s.ticketing).await;
    // Created three days ago by an instance that has not run its scheduler since.
    let three_days_ago = chrono::Utc::now() - Duration::days(3);
    let created = s
        .ticketing
        .create_ticket("agent-ui", ticket("c9", "product_quality", "坏了"), three_days_ago)
        .await
        .unwrap();
    // A new instance starts its scheduler: it catches up at once.
    let restarted = s.replica().await;
    let (stop, signal) = shutdown_channel();
    let running = tokio::spawn(restarted.clone().run_scheduler(signal));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let first_breach = sla_entries(&history(&restarted, &created.name).await)
            .iter()
            .any(|d| d.starts_with("SLA first_response breached"));
        if first_breach {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the missed breach never fired");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop.trigger();
    running.await.unwrap();
    let fired = history(&restarted, &created.name).await;
    let entries = sla_entries(&fired);
    let unique: std::collections::BTreeSet<_> = entries.iter().collect();
    assert_eq!(unique.len(), entries.len(), "no point fired twice: {entries:?}");
}
