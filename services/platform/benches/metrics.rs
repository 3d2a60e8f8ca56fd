//! Cost of the per-call instruments: `record_rpc` (counter + histogram, every served
//! call), `record_db` (every statement), and rendering `/metrics` for a scrape.
//! `cargo bench -p crm-platform --bench metrics`
#![allow(clippy::expect_used)]

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use crm_platform::{
    metrics::{self, MetricsConfig},
    telemetry::{self, LogConfig, LogFormat},
};

fn instruments(c: &mut Criterion) {
    let log = LogConfig {
        format: LogFormat::Pretty,
        level: "warn".into(),
    };
    let scrape = MetricsConfig {
        listen: "127.0.0.1:0".into(),
    };
    let _guard = telemetry::init("bench", &log, &scrape).expect("telemetry");
    // A realistic label set: 40 methods, 3 status codes each, 12 statement kinds.
    let methods: Vec<String> = (0..40).map(|i| format!("Method{i}")).collect();
    for (i, m) in methods.iter().enumerate() {
        for code in [0, 3, 5] {
            metrics::record_rpc(
                "crm.customer.v1.CustomerProfileService",
                m,
                code,
                Duration::from_micros(100 + i as u64),
            );
        }
    }
    for op in ["SELECT", "INSERT", "UPDATE", "DELETE"] {
        for failed in [false, true] {
            metrics::record_db("postgresql", op, failed, Duration::from_micros(300));
        }
    }
    c.bench_function("record_rpc", |b| {
        b.iter(|| {
            metrics::record_rpc(
                black_box("crm.customer.v1.CustomerProfileService"),
                black_box("GetCustomer"),
                0,
                Duration::from_micros(250),
            );
        });
    });
    c.bench_function("record_db", |b| {
        b.iter(|| {
            metrics::record_db(
                black_box("postgresql"),
                black_box("SELECT"),
                false,
                Duration::from_micros(300),
            )
        });
    });
    c.bench_function("render /metrics", |b| {
        b.iter(|| black_box(metrics::render().expect("render").len()))
    });
}

criterion_group!(benches, instruments);
criterion_main!(benches);
