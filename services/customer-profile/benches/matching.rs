//! Hot domain code of duplicate detection: normalising a record on entry, building
//! its blocking keys, and scoring a candidate pair. `cargo bench -p
//! crm-customer-profile --bench matching`; pair comparisons per second is the inverse
//! of `score_pair`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use crm_customer_profile::{
    ServiceConfig,
    domain::{
        Profile,
        customer::{Address, ContactKind, Email, PersonName, Phone, PostalAddress, Rules},
        definitions::Definitions,
        matching::{blocking_keys, score},
    },
};

fn raw(given: &str, family: &str, phone: &str, email: &str, street: &str) -> Profile {
    Profile {
        person_name: PersonName {
            given: given.into(),
            family: family.into(),
            ..Default::default()
        },
        phones: vec![Phone {
            number: phone.into(),
            kind: ContactKind::Mobile,
            primary: false,
            verified: false,
        }],
        emails: vec![Email {
            address: email.into(),
            kind: ContactKind::Personal,
            primary: false,
            verified: false,
        }],
        addresses: vec![Address {
            kind: ContactKind::Home,
            primary: false,
            postal: PostalAddress {
                region_code: "cn".into(),
                postal_code: "200 001".into(),
                locality: "上海".into(),
                address_lines: vec![street.into()],
                ..Default::default()
            },
        }],
        birth_date: "1988/8/8".into(),
        ..Default::default()
    }
}

fn benches(c: &mut Criterion) {
    let doc = crm_platform::config::load(&[crm_customer_profile::DEFAULTS], None).unwrap();
    let cfg = ServiceConfig::from_document(&doc).unwrap();
    let rules = Rules {
        default_region: "CN".into(),
    };
    let defs = Definitions::default();
    let input = raw(" 小明 ", "王", "138 0013 8000", "Xiao.Ming@Example.CN", "88号 南京路");

    c.bench_function("normalise_record", |b| {
        b.iter(|| black_box(input.clone()).validated(&rules, &defs).unwrap())
    });
    let (a, _) = input.clone().validated(&rules, &defs).unwrap();
    c.bench_function("blocking_keys", |b| b.iter(|| blocking_keys(black_box(&a))));
    let (other, _) = raw("晓明", "王", "+86 138-0013-8000", "wxm@example.cn", "88号南京路")
        .validated(&rules, &defs)
        .unwrap();
    c.bench_function("score_pair", |b| {
        b.iter(|| score(&cfg.matching, black_box(&a), black_box(&other)))
    });
    let (latin_a, _) = raw(
        "Jennifer",
        "Thompson",
        "+1 415 234 5678",
        "jt@example.com",
        "15 Miller Street",
    )
    .validated(&rules, &defs)
    .unwrap();
    let (latin_b, _) = raw("Jenifer", "Tompson", "+1 415 234 5679", "jen.t@example.com", "15 Miler St")
        .validated(&rules, &defs)
        .unwrap();
    c.bench_function("score_pair_latin", |b| {
        b.iter(|| score(&cfg.matching, black_box(&latin_a), black_box(&latin_b)))
    });
}

criterion_group!(matching, benches);
criterion_main!(matching);
