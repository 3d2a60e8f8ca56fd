//! The randomised property: membership kept incrementally (each change re-evaluating
//! only the segments reading what changed, for the persons it touched) equals a full
//! evaluation of every rule over the final data. Random customers, orders,
//! interactions, consent, tags, merges and erasures go through the real projection
//! (`Projection::apply`, as the feed consumer runs it) and the tagging path, against
//! random rules over every kind of condition, on SQLite or PostgreSQL.

use std::collections::BTreeSet;

use crm_platform::{
    config::{PLATFORM_DEFAULTS, PlatformConfig, section},
    consumer::Apply,
    db::begin_write,
    feed::Feed,
    server::shutdown_channel,
    testing::TestDatabase,
};
use crm_proto::crm::{common::v1::PostalAddress, customer::v1 as cpb, events::v1::Event};
use crm_segmentation::{
    projection::Projection,
    rfm::RfmConfig,
    rule::{self, Scope},
    segments::{Evaluator, Segments, SegmentsConfig, stored_rule},
    store::{self, tags::Assignment},
    traits::Traits,
};
use prost::Message;

/// xorshift64*: deterministic per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const TRAITS: [&str; 3] = ["orders.count_90d", "events.product_view.count_7d", "favourite_category"];
/// Every kind of trait, for the set-based refresh's comparison.
const ALL_TRAITS: [&str; 6] = [
    "orders.count_90d",
    "orders.total_365d",
    "last_order_at",
    "favourite_category",
    "preferred_channel",
    "events.product_view.count_7d",
];

/// Every stored trait value.
async fn trait_rows(db: &sea_orm::DatabaseConnection) -> Vec<(String, String, String)> {
    crm_platform::db::query(
        db,
        "SELECT person_id, name, value FROM traits ORDER BY person_id, name",
        vec![],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.try_get("", "person_id").unwrap(),
            r.try_get("", "name").unwrap(),
            r.try_get("", "value").unwrap(),
        )
    })
    .collect()
}
const CATEGORIES: [&str; 3] = ["shoes", "hats", "bags"];

/// Conditions of every kind; thresholds chosen so each splits the population.
const CONDITIONS: &[&str] = &[
    "lifecycle_stage = CUSTOMER",
    "lifecycle_stage != LEAD",
    "source_channel = WEB",
    "region = \"CN\"",
    "region < \"HK\"",
    "attributes.tier = \"gold\"",
    "attributes.tier != \"gold\"",
    "tags:\"vip\"",
    "tags:\"dormant\"",
    "rfm.group = CHAMPIONS",
    "rfm.frequency_score >= 3",
    "rfm.monetary >= 200",
    "traits.orders.count_90d >= 2",
    "traits.events.product_view.count_7d > 1",
    "traits.favourite_category = \"shoes\"",
    "may_contact(marketing, sms)",
    "may_contact(marketing)",
    "orders(30d) >= 1",
    "orders(30d) = 0",
    "orders(365d, \"hats\") >= 2",
    "orders(90d) < 2",
    "order_total(365d) >= 300",
    "interactions(product_view, 7d, \"shoes\") >= 2",
    "interactions(cart, 30d) = 0",
    "interactions(page_view, 7d) <= 1",
];

fn random_rule(rng: &mut Rng, depth: usize) -> String {
    match (depth, rng.below(5)) {
        (2.., _) | (_, 0 | 1) => rng.pick(CONDITIONS).to_string(),
        (_, 2) => format!("NOT ({})", random_rule(rng, depth + 1)),
        (_, 3) => format!("({}) AND ({})", random_rule(rng, depth + 1), random_rule(rng, depth + 1)),
        _ => format!("({}) OR ({})", random_rule(rng, depth + 1), random_rule(rng, depth + 1)),
    }
}

fn ts(us: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: 0,
    })
}

/// A time `hours` whole hours and a half ago: never within half an hour of a window's
/// edge (windows are whole hours), so the test cannot race the clock.
fn ago(hours: i64) -> i64 {
    chrono::Utc::now().timestamp_micros() - (hours * 3600 + 1800) * 1_000_000
}

fn event<M: Message>(n: &mut u64, kind: &str, m: &M) -> Event {
    *n += 1;
    Event {
        id: format!("e{n}"),
        r#type: format!("crm.customer.v1.{kind}"),
        data: Some(prost_types::Any {
            type_url: format!("type.googleapis.com/crm.customer.v1.{kind}"),
            value: m.encode_to_vec(),
        }),
        ..Default::default()
    }
}

fn customer(rng: &mut Rng, id: &str) -> cpb::Customer {
    let tier = if rng.below(2) == 0 { "gold" } else { "silver" };
    cpb::Customer {
        name: format!("customers/{id}"),
        lifecycle_stage: i32::try_from(1 + rng.below(4)).unwrap_or(1),
        source_channel: i32::try_from(1 + rng.below(3)).unwrap_or(1),
        addresses: vec![cpb::Address {
            primary: true,
            postal_address: Some(PostalAddress {
                region_code: (*rng.pick(&["CN", "HK", "SG"])).into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        custom_attributes: if rng.below(4) == 0 {
            Default::default()
        } else {
            [("tier".to_owned(), tier.to_owned())].into()
        },
        create_time: ts(ago(1000)),
        update_time: ts(ago(0)),
        ..Default::default()
    }
}

/// One random change, as the projection (or the tagging path) applies it.
async fn step(
    rng: &mut Rng,
    n: &mut u64,
    ids: &mut Vec<String>,
    db: &sea_orm::DatabaseConnection,
    projection: &Projection,
    evaluator: &Evaluator,
) {
    let txn = begin_write(db).await.unwrap();
    let who = rng.pick(ids).clone();
    let name = format!("customers/{who}");
    let e = match rng.below(20) {
        0..=1 => {
            let id = format!("c{:03}", ids.len());
            ids.push(id.clone());
            Some(event(
                n,
                "CustomerCreated",
                &cpb::CustomerCreated {
                    customer: Some(customer(rng, &id)),
                },
            ))
        }
        2..=3 => Some(event(
            n,
            "CustomerUpdated",
            &cpb::CustomerUpdated {
                customer: Some(customer(rng, &who)),
                changed_paths: vec![],
            },
        )),
        4..=8 => {
            let category = *rng.pick(&CATEGORIES);
            let hours = i64::try_from(rng.below(24 * 200)).unwrap_or(0);
            let status = if rng.below(8) == 0 {
                cpb::OrderStatus::Cancelled
            } else {
                cpb::OrderStatus::Completed
            };
            Some(event(
                n,
                "OrderChanged",
                &cpb::OrderChanged {
                    customer: name.clone(),
                    order: Some(cpb::Order {
                        // Sometimes an existing order changes (status, customer).
                        name: format!("{name}/orders/o{}", rng.below(60)),
                        status: status as i32,
                        currency: (*rng.pick(&["CNY", "CNY", "USD"])).into(),
                        total_micros: i64::try_from(rng.below(300)).unwrap_or(0) * 1_000_000,
                        place_time: ts(ago(hours)),
                        lines: vec![cpb::OrderLine {
                            category: category.into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    created: true,
                    previous_status: 0,
                },
            ))
        }
        9..=13 => {
            let kind = *rng.pick(&[
                cpb::InteractionKind::ProductView,
                cpb::InteractionKind::PageView,
                cpb::InteractionKind::Cart,
            ]);
            let hours = i64::try_from(rng.below(24 * 14)).unwrap_or(0);
            Some(event(
                n,
                "InteractionRecorded",
                &cpb::InteractionRecorded {
                    customer: name.clone(),
                    interaction: Some(cpb::Interaction {
                        name: format!("{name}/interactions/i{n}"),
                        kind: kind as i32,
                        channel: 1,
                        occur_time: ts(ago(hours)),
                        properties: [("category".to_owned(), (*rng.pick(&CATEGORIES)).to_owned())].into(),
                        ..Default::default()
                    }),
                },
            ))
        }
        14..=15 => {
            let mut records = Vec::new();
            for channel in [0, 1, 2] {
                if rng.below(2) == 0 {
                    let expire = match rng.below(3) {
                        0 => ts(ago(-i64::try_from(rng.below(48)).unwrap_or(0) - 1)),
                        1 => ts(ago(i64::try_from(rng.below(48)).unwrap_or(0))),
                        _ => None,
                    };
                    records.push(cpb::ConsentRecord {
                        purpose: cpb::ConsentPurpose::Marketing as i32,
                        channel,
                        status: i32::try_from(1 + rng.below(3)).unwrap_or(1),
                        effective_time: ts(ago(i64::try_from(rng.below(3)).unwrap_or(0) * 24 + 24)),
                        expire_time: expire,
                        ..Default::default()
                    });
                }
            }
            Some(event(
                n,
                "ConsentChanged",
                &cpb::ConsentChanged {
                    customer: name.clone(),
                    changes: vec![],
                    consent: Some(cpb::Consent {
                        records,
                        ..Default::default()
                    }),
                },
            ))
        }
        16 => {
            // Tagging, as `Tags` does it: in one transaction with the segments.
            let tag = *rng.pick(&["vip", "dormant"]);
            let person = store::people_of(&txn, &[who.as_str()]).await.unwrap().remove(&who);
            if let Some(person) = person {
                if rng.below(2) == 0 {
                    store::tags::assign(
                        &txn,
                        &Assignment {
                            tag_id: tag.into(),
                            customer_id: person.clone(),
                            source: 1,
                            actor: "test".into(),
                            assign_us: ago(0),
                            expire_us: None,
                        },
                    )
                    .await
                    .unwrap();
                } else {
                    store::tags::unassign(&txn, tag, &person).await.unwrap();
                }
                evaluator.on_change(&txn, &[person], rule::deps::TAGS).await.unwrap();
            }
            None
        }
        17..=18 => {
            let other = rng.pick(ids).clone();
            (other != who).then(|| {
                event(
                    n,
                    "CustomersMerged",
                    &cpb::CustomersMerged {
                        survivor: Some(customer(rng, &who)),
                        merged: vec![format!("customers/{other}")],
                    },
                )
            })
        }
        _ => Some(event(
            n,
            "CustomerErased",
            &cpb::CustomerErased {
                erasure: Some(cpb::Erasure {
                    erased_customers: vec![name.clone()],
                    ..Default::default()
                }),
            },
        )),
    };
    if let Some(e) = e {
        projection.apply(&txn, &e).await.unwrap();
    }
    txn.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_membership_equals_full_evaluation() {
    let defaults = crm_platform::config::load(&[PLATFORM_DEFAULTS], None).unwrap();
    let platform: PlatformConfig = section(&defaults, None).unwrap();
    for seed in [7_u64, 1_000_003, 42_424_242] {
        let test_db = TestDatabase::new("segments-property").unwrap();
        let db = crm_platform::db::connect(&test_db.target, 2).await.unwrap();
        crm_platform::migrate::run(&db, store::MIGRATIONS).await.unwrap();
        let (_shutdown, signal) = shutdown_channel();
        let feed = Feed::new(db.clone(), crm_segmentation::SERVICE, platform.feed.clone(), signal);
        let traits = Traits::new(&TRAITS.map(str::to_owned), "CNY").unwrap();
        let rfm = RfmConfig {
            window_days: 365,
            currency: "CNY".into(),
            recompute_interval_secs: 3600,
            drift_check_secs: 60,
        };
        let evaluator = Evaluator { currency: "CNY".into() };
        let registry = crm_segmentation::traits::Registry::new(traits.clone());
        let projection = Projection::new(rfm.clone(), registry.clone(), evaluator.clone());
        let segments = Segments::new(
            db.clone(),
            feed,
            registry,
            evaluator.clone(),
            SegmentsConfig {
                refresh_interval_secs: 86_400,
                poll_interval_ms: 1000,
            },
        );
        for tag in ["vip", "dormant"] {
            let txn = begin_write(&db).await.unwrap();
            store::tags::insert(
                &txn,
                &store::tags::TagRow {
                    id: tag.into(),
                    parent: String::new(),
                    level: 1,
                    display_name: tag.into(),
                    description: String::new(),
                    revision: 1,
                    create_us: 1,
                    update_us: 1,
                },
            )
            .await
            .unwrap();
            txn.commit().await.unwrap();
        }

        let mut rng = Rng(seed);
        let (mut n, mut ids) = (0_u64, vec!["c000".to_owned()]);
        for _ in 0..60 {
            step(&mut rng, &mut n, &mut ids, &db, &projection, &evaluator).await;
        }
        // RFM boundaries from this population; from here on RFM is incremental too.
        crm_segmentation::rfm::recompute(&db, &rfm, chrono::Utc::now()).await.unwrap();
        let mut rules = Vec::new();
        for i in 0..10 {
            let text = random_rule(&mut rng, 0);
            let s = segments
                .create(
                    "test",
                    &format!("s{i}"),
                    &crm_proto::crm::segmentation::v1::Segment {
                        display_name: format!("s{i}"),
                        filter: text.clone(),
                        ..Default::default()
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            rules.push(s.id);
        }
        segments.evaluate_due().await.unwrap();
        assert_eq!(
            segments.evaluate_due().await.unwrap(),
            0,
            "nothing is due after a full evaluation"
        );

        for _ in 0..200 {
            step(&mut rng, &mut n, &mut ids, &db, &projection, &evaluator).await;
        }

        let mut nonempty = 0;
        for id in &rules {
            let s = store::segments::get(&db, id).await.unwrap().unwrap();
            let stored: BTreeSet<String> = store::segments::all_members(&db, id).await.unwrap().into_iter().collect();
            let full = evaluator
                .matching(&db, &stored_rule(&s.filter).unwrap(), Scope::All)
                .await
                .unwrap();
            assert_eq!(
                stored, full,
                "seed {seed}, segment {id} `{}`: the incremental membership differs from a full evaluation",
                s.filter
            );
            assert_eq!(
                s.member_count,
                i64::try_from(full.len()).unwrap(),
                "seed {seed}, {id}: member count"
            );
            if !full.is_empty() && full.len() < ids.len() {
                nonempty += 1;
            }
        }
        assert!(
            nonempty >= 3,
            "seed {seed}: too few rules split the population to test anything"
        );

        // The scheduled, set-based trait refresh gives what the per-person one gives.
        let all = Traits::new(&ALL_TRAITS.map(str::to_owned), "CNY").unwrap();
        let people = crm_segmentation::traits::people_after(&db, "", 1_000_000).await.unwrap();
        let txn = begin_write(&db).await.unwrap();
        all.refresh(&txn, &people, false, chrono::Utc::now()).await.unwrap();
        txn.commit().await.unwrap();
        let per_person = trait_rows(&db).await;
        let txn = begin_write(&db).await.unwrap();
        all.refresh_all(&txn, chrono::Utc::now()).await.unwrap();
        txn.commit().await.unwrap();
        assert_eq!(
            trait_rows(&db).await,
            per_person,
            "seed {seed}: set-based traits differ from per-person ones"
        );
        assert!(per_person.len() > people.len(), "seed {seed}: traits were computed");
    }
}
