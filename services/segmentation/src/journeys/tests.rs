use super::*;
use crm_proto::crm::customer::v1 as cpb;

fn cfg() -> campaigns::CampaignsConfig {
    campaigns::CampaignsConfig {
        poll_interval_ms: 100,
        batch_size: 100,
        send_concurrency: 4,
        max_attempts: 3,
        retry_base_secs: 1,
        lease_secs: 60,
        enqueue_chunk: 100,
        default_time_zone: "Asia/Shanghai".into(),
        quiet_hours: String::new(),
        frequency_max_messages: 0,
        frequency_window_hours: 24,
        wechat_id_source: "wechat".into(),
        push_token_source: "app".into(),
        interaction_source: "marketing-segmentation".into(),
        send_time_prior_weight: 10.0,
    }
}

fn step(id: &str, action: pb::journey_step::Action) -> pb::JourneyStep {
    pb::JourneyStep {
        id: id.into(),
        action: Some(action),
    }
}

fn minutes(m: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: m * 60,
        nanos: 0,
    })
}

/// The seeds' flow: a product view → SMS coupon → no order within 24 hours → push.
pub fn seeds_flow() -> pb::Journey {
    use pb::journey_step::Action as A;
    pb::Journey {
        display_name: "Viewed, did not buy".into(),
        trigger: Some(pb::JourneyTrigger {
            trigger: Some(pb::journey_trigger::Trigger::Event(pb::JourneyEvent {
                event: Some(pb::journey_event::Event::Interaction(
                    cpb::InteractionKind::ProductView as i32,
                )),
                category: "shoes".into(),
            })),
        }),
        steps: vec![
            step(
                "coupon",
                A::Send(pb::SendStep {
                    channel: cpb::ContactChannel::Sms as i32,
                    message: Some(pb::MessageTemplate {
                        body: "{{given_name | Hi}}, 10% off shoes today: {{link_url}}".into(),
                        link: "https://shop.example/shoes".into(),
                        ..Default::default()
                    }),
                    next: "wait-order".into(),
                }),
            ),
            step(
                "wait-order",
                A::Wait(pb::WaitStep {
                    duration: minutes(24 * 60),
                    until: Some(pb::JourneyEvent {
                        event: Some(pb::journey_event::Event::OrderPlaced(true)),
                        category: String::new(),
                    }),
                    next: "done".into(),
                    timeout_next: "push".into(),
                }),
            ),
            step(
                "push",
                A::Send(pb::SendStep {
                    channel: cpb::ContactChannel::AppPush as i32,
                    message: Some(pb::MessageTemplate {
                        subject: "Still thinking?".into(),
                        body: "Your shoes are waiting".into(),
                        ..Default::default()
                    }),
                    next: String::new(),
                }),
            ),
            step("done", A::Exit(pb::ExitStep {})),
        ],
        ..Default::default()
    }
}

fn check(j: &pb::Journey) -> Result<Definition> {
    validate(j, "journey", &crate::rule::Context::lenient(), &|_| false, &cfg())
}

fn fields(j: &pb::Journey) -> Vec<String> {
    match check(j) {
        Err(Error::InvalidArgument(v)) => v.into_iter().map(|f| f.field).collect(),
        other => panic!("accepted: {other:?}"),
    }
}

#[test]
fn the_seeds_flow_is_valid() {
    let def = check(&seeds_flow()).unwrap();
    assert_eq!(def.first(), "coupon");
    assert!(matches!(
        def.step("wait-order"),
        Some(Action::Wait {
            until: Some(Event::Order { .. }),
            ..
        })
    ));
    assert!(matches!(def.trigger, Trigger::Event(Event::Interaction { .. })));
    assert!(Event::Order { category: String::new() }.matches_order(&[]));
    assert!(
        Event::Interaction {
            kind: 2,
            category: "shoes".into()
        }
        .matches_interaction(2, "shoes")
    );
    assert!(
        !Event::Interaction {
            kind: 2,
            category: "shoes".into()
        }
        .matches_interaction(2, "hats")
    );
}

#[test]
fn a_win_back_journey_starts_on_churn_risk_without_a_category() {
    let mut j = seeds_flow();
    j.trigger = Some(pb::JourneyTrigger {
        trigger: Some(pb::journey_trigger::Trigger::Event(pb::JourneyEvent {
            event: Some(pb::journey_event::Event::ChurnRiskRaised(true)),
            category: String::new(),
        })),
    });
    let def = check(&j).unwrap();
    assert_eq!(def.trigger, Trigger::Event(Event::ChurnRisk));
    assert!(!Event::ChurnRisk.matches_order(&[]) && !Event::ChurnRisk.matches_interaction(2, ""));
    j.trigger = Some(pb::JourneyTrigger {
        trigger: Some(pb::journey_trigger::Trigger::Event(pb::JourneyEvent {
            event: Some(pb::journey_event::Event::ChurnRiskRaised(true)),
            category: "shoes".into(),
        })),
    });
    assert_eq!(fields(&j), vec!["journey.trigger.event.category"]);
}

#[test]
fn bad_graphs_are_refused_with_their_fields() {
    use pb::journey_step::Action as A;
    let mut j = seeds_flow();
    j.steps[0].action = Some(A::Send(pb::SendStep {
        channel: cpb::ContactChannel::Sms as i32,
        message: Some(pb::MessageTemplate {
            body: "{{ nickname }}".into(),
            ..Default::default()
        }),
        next: "nowhere".into(),
    }));
    j.steps.push(step("orphan", A::Exit(pb::ExitStep {})));
    j.steps.push(step("orphan", A::Exit(pb::ExitStep {})));
    let f = fields(&j);
    assert!(f.contains(&"journey.steps[0].send.next".to_owned()), "{f:?}");
    assert!(f.contains(&"journey.steps[0].send.message.body".to_owned()), "{f:?}");
    assert!(f.contains(&"journey.steps[5].id".to_owned()), "{f:?}");
    // Unreachable steps and cycles without a wait.
    let mut j = seeds_flow();
    j.steps.push(step("orphan", A::Exit(pb::ExitStep {})));
    assert_eq!(fields(&j), vec!["journey.steps[4]".to_owned()]);
    let mut j = seeds_flow();
    j.steps = vec![
        step(
            "a",
            A::Tag(pb::TagStep {
                tag: "tags/vip".into(),
                remove: false,
                next: "b".into(),
            }),
        ),
        step(
            "b",
            A::Branch(pb::BranchStep {
                condition: "orders(7d) >= 1".into(),
                if_true: "a".into(),
                if_false: String::new(),
            }),
        ),
    ];
    assert_eq!(fields(&j), vec!["journey.steps".to_owned()]);
    // A wait breaks the cycle.
    j.steps[1] = step(
        "b",
        A::Wait(pb::WaitStep {
            duration: minutes(60),
            next: "a".into(),
            ..Default::default()
        }),
    );
    check(&j).unwrap();
    // A bad branch condition names the condition.
    j.steps.push(step(
        "c",
        A::Branch(pb::BranchStep {
            condition: "orders(7d) >=".into(),
            if_true: "a".into(),
            if_false: String::new(),
        }),
    ));
    if let A::Wait(w) = j.steps[1].action.as_mut().unwrap() {
        w.next = "c".into();
    }
    let f = fields(&j);
    assert!(f.iter().all(|x| x.starts_with("journey.steps[2].branch.condition")), "{f:?}");
    // No trigger, no steps.
    let f = fields(&pb::Journey {
        display_name: "x".into(),
        ..Default::default()
    });
    assert_eq!(f, vec!["journey.trigger".to_owned(), "journey.steps".to_owned()]);
}

#[test]
fn a_send_step_on_a_cycle_is_refused() {
    use pb::journey_step::Action as A;
    let mut j = seeds_flow();
    // The timeout goes back to the coupon: it would be skipped the second time.
    if let Some(A::Wait(w)) = j.steps[1].action.as_mut() {
        w.timeout_next = "coupon".into();
    }
    // The coupon is on a cycle; the push is no longer reachable.
    let f = fields(&j);
    assert_eq!(f, vec!["journey.steps[2]".to_owned(), "journey.steps[0]".to_owned()], "{f:?}");
}
