use super::*;
use crate::traits::Traits;

fn ctx() -> Context {
    Context::new(
        &Traits::new(
            &["orders.count_90d".into(), "last_order_at".into(), "favourite_category".into()],
            "CNY",
        )
        .unwrap(),
    )
}

fn from_text(text: &str) -> std::result::Result<Rule, Vec<FieldViolation>> {
    let (tree, spans) = parse(text, "filter").map_err(|v| vec![v])?;
    validate(&tree, &ctx()).map_err(|v| text::locate(v, &spans, "filter"))
}

fn messages(text: &str) -> String {
    from_text(text)
        .unwrap_err()
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn text_prints_back_canonically() {
    for (input, canonical) in [
        ("lifecycle_stage = customer", "lifecycle_stage = CUSTOMER"),
        (
            "rfm.group=champions AND rfm.monetary >= 1000.50",
            "rfm.group = CHAMPIONS AND rfm.monetary >= 1000.5",
        ),
        (
            "interactions(PRODUCT_VIEW, 168h, 'shoes') >= 3 AND orders(7d) = 0",
            "interactions(product_view, 7d, \"shoes\") >= 3 AND orders(7d) = 0",
        ),
        // OR binds tighter than AND (AIP-160).
        ("a_tag_free = 1 AND region = CN OR region = HK", ""),
        (
            "region = \"CN\" AND region = HK OR locality = Shanghai",
            "region = \"CN\" AND (region = \"HK\" OR locality = \"Shanghai\")",
        ),
        ("NOT tags:vip", "NOT tags:\"vip\""),
        (
            "-(may_contact(marketing, sms) OR may_contact(marketing))",
            "NOT (may_contact(marketing, sms) OR may_contact(marketing))",
        ),
        ("NOT NOT type = person", "type = PERSON"),
        ("((source_channel = web))", "source_channel = WEB"),
        (
            "attributes.tier != \"gold \\\"plus\\\"\"",
            "attributes.tier != \"gold \\\"plus\\\"\"",
        ),
        (
            "traits.orders.count_90d >= 3 AND traits.last_order_at < \"2026-01-01T08:00:00+08:00\"",
            "traits.orders.count_90d >= 3 AND traits.last_order_at < \"2026-01-01T00:00:00Z\"",
        ),
        ("order_total(365d) > 99.99", "order_total(365d) > 99.99"),
        (
            "create_time >= \"2026-03-01T00:00:00Z\"",
            "create_time >= \"2026-03-01T00:00:00Z\"",
        ),
    ] {
        if canonical.is_empty() {
            assert!(from_text(input).is_err(), "{input}");
            continue;
        }
        let rule = from_text(input).unwrap_or_else(|e| panic!("{input}: {e:?}"));
        let printed = print(&rule);
        assert_eq!(printed, canonical, "{input}");
        assert_eq!(from_text(&printed).unwrap(), rule, "{printed} parses back to the same rule");
        assert_eq!(
            validate(&to_proto(&rule), &ctx()).unwrap(),
            rule,
            "the tree form is the same rule"
        );
    }
}

#[test]
fn errors_point_at_the_bad_part() {
    let m = messages("rfm.group = CHAMPIONS AND lifecycle_stage = SHOPPER");
    assert!(
        m.starts_with("filter: at column 27 (value): `SHOPPER` is not a lifecycle_stage value"),
        "{m}"
    );
    let m = messages("rfm.group = CHAMPIONS AND");
    assert!(m.contains("at column 26: expected a condition, found the end"), "{m}");
    let m = messages("shoe_size > 4");
    assert!(m.contains("at column 1 (field): `shoe_size` is not a customer field"), "{m}");
    let m = messages("interactions(teleport, 7d) > 1");
    assert!(m.contains("at column 14: `teleport` is not an interaction kind"), "{m}");
    let m = messages("orders(7w) > 1");
    assert!(m.contains("at column 8: `7w` is not a window"), "{m}");
    let m = messages("traits.shoe_size = 4");
    assert!(
        m.contains("`shoe_size` is not a computed trait in force (favourite_category, last_order_at, orders.count_90d)"),
        "{m}"
    );
    let m = messages("rfm.group > LOYAL");
    assert!(m.contains("compares with = or != only"), "{m}");
    let m = messages("region = \"CN");
    assert!(m.contains("at column 10: a quoted text is not closed"), "{m}");
    let m = messages("region : CN");
    assert!(m.contains("`:` is for tags only"), "{m}");
    let m = messages("(region = CN");
    assert!(m.contains("expected `)`"), "{m}");
    let m = messages("region = CN locality = X");
    assert!(m.contains("at column 13: expected AND, OR or the end"), "{m}");
    // Several problems are reported together.
    let m = messages("rfm.frequency >= many AND orders(0d) > x");
    assert_eq!(m.lines().count(), 3, "{m}");
    assert_eq!(
        parse("", "filter").unwrap_err().description,
        "required: a rule such as `rfm.group = CHAMPIONS`"
    );
}

#[test]
fn tree_errors_name_the_field_path() {
    use crm_proto::crm::segmentation::v1::{segment_condition::Subject as S, segment_rule::Kind as K};
    let cond = |s: S, op: i32, value: &str| pb::SegmentRule {
        kind: Some(K::Condition(pb::SegmentCondition {
            subject: Some(s),
            operator: op,
            value: value.into(),
        })),
    };
    let tree = pb::SegmentRule {
        kind: Some(K::AllOf(pb::SegmentRules {
            rules: vec![
                cond(S::Rfm("group".into()), 1, "LOYAL"),
                cond(S::Tag("vip".into()), 0, ""),
                cond(
                    S::Activity(pb::Activity {
                        measure: ActivityMeasure::Orders as i32,
                        window: Some(prost_types::Duration { seconds: 90, nanos: 0 }),
                        ..Default::default()
                    }),
                    6,
                    "1",
                ),
                pb::SegmentRule { kind: None },
                pb::SegmentRule {
                    kind: Some(K::AnyOf(pb::SegmentRules::default())),
                },
            ],
        })),
    };
    let fields: Vec<String> = validate(&tree, &ctx()).unwrap_err().into_iter().map(|v| v.field).collect();
    assert_eq!(
        fields,
        vec![
            "all_of.rules[1].condition.tag",
            "all_of.rules[2].condition.activity.window",
            "all_of.rules[3]",
            "all_of.rules[4].any_of.rules",
        ]
    );
}

#[test]
fn dependencies_and_time() {
    let r = from_text("rfm.group = LOYAL AND tags:vip").unwrap();
    assert_eq!(r.deps(), deps::CUSTOMER | deps::RFM | deps::TAGS);
    assert!(!r.time_dependent());
    let r = from_text("interactions(cart, 1d) > 0 OR may_contact(marketing)").unwrap();
    assert_eq!(r.deps(), deps::CUSTOMER | deps::INTERACTIONS | deps::CONSENT);
    assert!(r.time_dependent());
    assert_eq!(r.tags(), Vec::<String>::new());
}

#[test]
fn money_is_exact() {
    assert_eq!(parse_money("1000"), Some(1_000_000_000));
    assert_eq!(parse_money("0.000001"), Some(1));
    assert_eq!(parse_money("-2.5"), Some(-2_500_000));
    assert_eq!(parse_money("1.0000001"), None);
    assert_eq!(parse_money("1e3"), None);
    assert_eq!(parse_money(".5"), None);
    assert_eq!(format_money(99_990_000), "99.99");
    assert_eq!(format_money(-1_000_000), "-1");
}
