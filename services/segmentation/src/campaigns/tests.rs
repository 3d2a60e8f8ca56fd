use super::*;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn cfg() -> CampaignsConfig {
    CampaignsConfig {
        poll_interval_ms: 100,
        batch_size: 100,
        send_concurrency: 4,
        max_attempts: 3,
        retry_base_secs: 1,
        lease_secs: 60,
        enqueue_chunk: 100,
        default_time_zone: "Asia/Shanghai".into(),
        quiet_hours: "21:00-08:00".into(),
        frequency_max_messages: 0,
        frequency_window_hours: 24,
        wechat_id_source: "wechat".into(),
        push_token_source: "app".into(),
        interaction_source: "marketing-segmentation".into(),
        send_time_prior_weight: 10.0,
    }
}

#[test]
fn quiet_hours_over_midnight_release_at_their_end_in_the_recipients_zone() {
    let q = cfg().quiet().unwrap();
    let sh = zone("Asia/Shanghai").unwrap();
    // 22:30 in Shanghai (14:30 UTC): released at 08:00 the next morning (00:00 UTC).
    assert_eq!(q.release(at("2026-03-02T14:30:00Z"), sh), at("2026-03-03T00:00:00Z"));
    // 03:00 in Shanghai: released at 08:00 the same day.
    assert_eq!(q.release(at("2026-03-02T19:00:00Z"), sh), at("2026-03-03T00:00:00Z"));
    // 10:00 in Shanghai: not quiet.
    assert_eq!(q.release(at("2026-03-02T02:00:00Z"), sh), at("2026-03-02T02:00:00Z"));
    // Quiet hours within a day.
    let lunch = Quiet {
        start: 12 * 60,
        end: 13 * 60,
    };
    assert_eq!(lunch.release(at("2026-03-02T12:15:00Z"), Tz::UTC), at("2026-03-02T13:00:00Z"));
    assert_eq!(lunch.release(at("2026-03-02T13:00:00Z"), Tz::UTC), at("2026-03-02T13:00:00Z"));
}

#[test]
fn local_send_times_follow_each_zone_and_never_lie_in_the_past() {
    let start = at("2026-06-01T00:00:00Z");
    let nine = Some(9 * 60);
    // 09:00 in Shanghai on 1 June is 01:00 UTC.
    assert_eq!(
        due_at(start, nine, zone("Asia/Shanghai").unwrap()),
        at("2026-06-01T01:00:00Z")
    );
    // In New York it is still 31 May at the start: 09:00 on 31 May has passed, so at once.
    assert_eq!(due_at(start, nine, zone("America/New_York").unwrap()), start);
    // 09:00 in Berlin (summer time, UTC+2) is 07:00 UTC.
    assert_eq!(
        due_at(start, nine, zone("Europe/Berlin").unwrap()),
        at("2026-06-01T07:00:00Z")
    );
    assert_eq!(due_at(start, None, Tz::UTC), start);
    // A time that does not exist (spring forward in Berlin, 02:30) moves an hour on.
    let spring = at("2026-03-29T00:00:00Z");
    assert_eq!(
        due_at(spring, Some(2 * 60 + 30), zone("Europe/Berlin").unwrap()),
        at("2026-03-29T01:30:00Z")
    );
}

#[test]
fn control_draw_is_stable_and_near_its_share() {
    let n = 20_000;
    let held = (0..n).filter(|i| in_control("spring", &format!("p{i}"), 0.1)).count();
    assert!((1800..2200).contains(&held), "{held} of {n}");
    assert_eq!(in_control("spring", "p1", 0.1), in_control("spring", "p1", 0.1));
    assert!(!(0..1000).any(|i| in_control("spring", &format!("p{i}"), 0.0)));
}

#[test]
fn backoff_doubles_up_to_an_hour() {
    assert_eq!(backoff_us(30, 1), 30 * MICROS);
    assert_eq!(backoff_us(30, 3), 120 * MICROS);
    assert_eq!(backoff_us(30, 30), 3600 * MICROS);
}

fn campaign() -> pb::Campaign {
    pb::Campaign {
        display_name: "Spring sale".into(),
        channel: cpb::ContactChannel::Email as i32,
        audience: Some(pb::Audience {
            segments: vec!["segments/buyers".into()],
            ..Default::default()
        }),
        message: Some(pb::MessageTemplate {
            subject: "Hi {{given_name | there}}".into(),
            body: "Deals: {{link_url}}".into(),
            link: "https://shop.example/spring".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_valid_campaign_takes_the_configured_defaults() {
    let d = validate(&campaign(), "campaign", &|_| false, &cfg()).unwrap();
    assert_eq!(d.channel, Channel::Email);
    assert_eq!(d.purpose, cpb::ConsentPurpose::Marketing);
    assert_eq!(d.segments, vec!["buyers".to_owned()]);
    assert_eq!(
        d.quiet,
        Some(Quiet {
            start: 21 * 60,
            end: 8 * 60
        })
    );
    assert_eq!(d.conversion_window_us, 7 * DAY_US);
    assert_eq!(d.zone, zone("Asia/Shanghai").unwrap());
    assert!(d.cap.is_none());
}

#[test]
fn every_problem_is_reported_with_its_field() {
    let mut c = campaign();
    c.display_name.clear();
    c.channel = cpb::ContactChannel::Phone as i32;
    c.control_share = 0.9;
    let m = c.message.as_mut().unwrap();
    m.link.clear();
    m.body = "{{ nickname }}".into();
    c.schedule = Some(pb::Schedule {
        local_time: "9:00".into(),
        repeat_interval: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
        ..Default::default()
    });
    c.audience.as_mut().unwrap().suppression_tags = vec!["bounced".into()];
    let Err(Error::InvalidArgument(v)) = validate(&c, "campaign", &|_| false, &cfg()) else {
        panic!("accepted")
    };
    let fields: Vec<&str> = v.iter().map(|f| f.field.as_str()).collect();
    for expected in [
        "campaign.display_name",
        "campaign.channel",
        "campaign.audience.suppression_tags[0]",
        "campaign.message.body",
        "campaign.schedule.local_time",
        "campaign.schedule.repeat_interval",
        "campaign.control_share",
    ] {
        assert!(fields.contains(&expected), "{expected} missing from {fields:?}");
    }
    let body = v.iter().find(|f| f.field == "campaign.message.body").unwrap();
    assert!(
        body.description.contains("unknown variable `nickname`"),
        "{}",
        body.description
    );
    // `link_url` without a link.
    let mut c = campaign();
    c.message.as_mut().unwrap().link.clear();
    let Err(Error::InvalidArgument(v)) = validate(&c, "campaign", &|_| false, &cfg()) else {
        panic!("accepted")
    };
    assert_eq!(v[0].field, "campaign.message.body");
}

#[test]
fn missed_runs_are_skipped_not_fired_back_to_back() {
    let mut c = campaign();
    c.schedule = Some(pb::Schedule {
        repeat_interval: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
        ..Default::default()
    });
    let d = validate(&c, "campaign", &|_| false, &cfg()).unwrap();
    // The run at 0 h lasted until 10.5 h: the next starts at 11 h, not at 1 h.
    assert_eq!(next_run(&d, 0, 10 * HOUR_US + HOUR_US / 2), Some(11 * HOUR_US));
    assert_eq!(next_run(&d, 0, HOUR_US / 2), Some(HOUR_US));
    assert_eq!(next_run(&d, 0, HOUR_US), Some(2 * HOUR_US));
}
