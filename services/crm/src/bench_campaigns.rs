//! `crm bench campaigns`: a campaign to a million recipients. Opens the segmentation
//! service's database (temporary SQLite, or a scratch PostgreSQL schema), fills its
//! projection with customers, SMS consent (95 % granted) and sealed contacts, and a
//! segment of everyone; then, timed:
//!
//! - the run's start: the audience queued, one delivery per recipient (the real
//!   scheduler, chunk by chunk);
//! - the sends: the real dispatchers (claim, consent and suppression checks,
//!   contacts opened, message rendered with a tracked link, sent, outcomes and
//!   touches recorded) through an HTTP provider stub served in this process, so
//!   both share the two cores;
//! - memory: the process's resident set, sampled every 250 ms.
//!
//! Prints JSON.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use crm_platform::{Platform, db::begin_write, feed::Feed, server::shutdown_channel};
use crm_proto::crm::{customer::v1 as cpb, segmentation::v1 as pb};
use crm_segmentation::{
    SERVICE,
    campaigns::{
        self, Channel,
        channels::{ChannelConfig, HttpClient, HttpProvider, Providers},
        contacts::{Contact, Contacts},
        dispatch::Dispatcher,
        runs::Runner,
        store::CampaignRow,
        tracking::Links,
    },
    segments::{Evaluator, Segments, SegmentsConfig},
    store,
};
use http_body_util::Full;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Value};

use crate::bench_segments::{h, id, series_insert};

#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub recipients: usize,
    pub dispatchers: usize,
    pub batch_size: usize,
    pub concurrency: usize,
    pub keep: bool,
}

/// The resident set of this process, in MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// An SMS provider that accepts everything; counts what it got.
async fn stub_provider(count: Arc<AtomicU64>) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let count = count.clone();
                    async move {
                        use http_body_util::BodyExt;
                        let _ = req.into_body().collect().await;
                        let n = count.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(format!(
                            "{{\"message_id\":\"m{n}\"}}"
                        )))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Customers, SMS consent and the segment's members, set-based.
async fn load(db: &DatabaseConnection, contacts: &Contacts, n: usize, now_us: i64) -> anyhow::Result<()> {
    let b = db.get_database_backend();
    let started = Instant::now();
    let tables = [
        (
            "customers (id, person_id, merged_into, kind, lifecycle_stage, source_channel, owner_user_id, team_id, region, \
             locality, tags, attributes, create_us, update_us, deleted)",
            format!(
                "{cid}, {cid}, NULL, 1, 3, 1, '', '', 'CN', '', '[]', '{{}}', {now_us}, {now_us}, 0",
                cid = id(b, "c", "i")
            ),
        ),
        (
            "consents (customer_id, person_id, purpose, channel, status, effective_us, expire_us)",
            format!(
                "{cid}, {cid}, 1, 1, CASE {refused} WHEN 0 THEN 2 ELSE 1 END, {now_us} - 86400000000, NULL",
                cid = id(b, "c", "i"),
                refused = h(21, 20),
            ),
        ),
    ];
    for (into, select) in &tables {
        let mut lo = 1;
        while lo <= n {
            let hi = (lo + 999_999).min(n);
            let txn = begin_write(db).await?;
            txn.execute_unprepared(&series_insert(b, into, select, lo, hi)).await?;
            txn.commit().await?;
            lo = hi + 1;
        }
    }
    eprintln!("customers and consent loaded ({:.0} s)", started.elapsed().as_secs_f64());
    // Contacts are sealed one by one, as the projection keeps them.
    let started = Instant::now();
    let rows_per_statement = 1000;
    let mut i = 1;
    while i <= n {
        let txn = begin_write(db).await?;
        let end = (i + 50_000).min(n + 1);
        let mut batch: Vec<(String, Vec<u8>)> = Vec::with_capacity(rows_per_statement);
        for k in i..end {
            let cid = format!("c{k:08}");
            let contact = Contact {
                given_name: format!("Customer{k}"),
                phone: format!("+8613{:09}", k),
                ..Default::default()
            };
            batch.push((cid.clone(), contacts.seal(&cid, &contact)?));
            if batch.len() == rows_per_statement || k + 1 == end {
                let marks = vec!["(?, ?, ?)"; batch.len()].join(", ");
                let mut values = Vec::with_capacity(batch.len() * 3);
                for (cid, sealed) in batch.drain(..) {
                    values.extend([Value::from(cid), Value::from(sealed), Value::from(now_us)]);
                }
                crm_platform::db::exec(
                    &txn,
                    &format!("INSERT INTO contacts (customer_id, sealed, update_us) VALUES {marks}"),
                    values,
                )
                .await?;
            }
        }
        txn.commit().await?;
        i = end;
    }
    eprintln!("contacts sealed and loaded ({:.0} s)", started.elapsed().as_secs_f64());
    db.execute_unprepared(if b == DbBackend::Postgres {
        "VACUUM ANALYZE customers, consents, contacts"
    } else {
        "ANALYZE"
    })
    .await?;
    Ok(())
}

pub async fn run(cfg: &crate::Config, database_url: Option<&str>, shape: Shape) -> anyhow::Result<String> {
    let mut platform_cfg = cfg.platform.clone();
    let scratch = crate::embedded::Scratch::new(&mut platform_cfg, database_url)?;
    let (shutdown, signal) = shutdown_channel();
    let platform = Platform::new(platform_cfg, signal.clone())?;
    let db = platform.database(SERVICE, store::MIGRATIONS).await?;
    let seg_cfg = &cfg.segmentation;
    let keyring = Arc::new(crm_platform::crypto::Keyring::from_config(&platform.config.encryption)?);
    let contacts = Contacts::new(keyring, "wechat", "app");
    let now_us = chrono::Utc::now().timestamp_micros();
    let started = Instant::now();
    load(&db, &contacts, shape.recipients, now_us).await?;
    let load_secs = started.elapsed().as_secs_f64();

    let feed = Feed::new(db.clone(), SERVICE, platform.config.feed.clone(), signal.clone());
    let evaluator = Evaluator {
        currency: seg_cfg.rfm.currency.clone(),
    };
    let segments = Segments::new(
        db.clone(),
        feed.clone(),
        crm_segmentation::traits::Registry::new(seg_cfg.traits()),
        evaluator,
        SegmentsConfig {
            refresh_interval_secs: 86_400,
            poll_interval_ms: 1000,
        },
    );
    let started = Instant::now();
    segments
        .create(
            "bench",
            "everyone",
            &pb::Segment {
                display_name: "Everyone in CN".into(),
                filter: "region = \"CN\"".into(),
                ..Default::default()
            },
        )
        .await?;
    segments.evaluate_due().await?;
    eprintln!("segment materialised ({:.1} s)", started.elapsed().as_secs_f64());

    let sent_to_stub = Arc::new(AtomicU64::new(0));
    let stub = stub_provider(sent_to_stub.clone()).await?;
    let campaigns_cfg = campaigns::CampaignsConfig {
        batch_size: shape.batch_size,
        send_concurrency: shape.concurrency,
        ..seg_cfg.campaigns.clone()
    };
    let sms = ChannelConfig {
        url: format!("http://{stub}/sms"),
        timeout_ms: 10_000,
        ..ChannelConfig::default()
    };
    let providers = Providers::default().with(
        Channel::Sms,
        Arc::new(HttpProvider::new(Channel::Sms, &sms, HttpClient::new())?),
        0.0,
    );
    let links = Links::new(b"bench-links", "https://t.example", 30)?;
    let settings = pb::Campaign {
        display_name: "Bench".into(),
        channel: cpb::ContactChannel::Sms as i32,
        purpose: cpb::ConsentPurpose::Marketing as i32,
        audience: Some(pb::Audience {
            segments: vec!["segments/everyone".into()],
            ..Default::default()
        }),
        message: Some(pb::MessageTemplate {
            body: "{{given_name | Hi}}, 20% off this week: {{link_url}}".into(),
            link: "https://shop.example/sale".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let def = campaigns::validate(&settings, "campaign", &|_| true, &campaigns_cfg)?;
    let row = CampaignRow {
        id: "bench".into(),
        settings,
        state: pb::CampaignState::Scheduled,
        runs: 0,
        next_run_us: Some(now_us),
        run_start_us: 0,
        enqueue_cursor: String::new(),
        enqueue_done: true,
        resume_state: pb::CampaignState::Unspecified,
        conversion_window_us: def.conversion_window_us,
        revision: 1,
        create_us: now_us,
        update_us: now_us,
        journey_id: String::new(),
    };
    let txn = begin_write(&db).await?;
    campaigns::store::insert(&txn, &row).await?;
    txn.commit().await?;

    // Memory, sampled throughout.
    let peak = Arc::new(std::sync::Mutex::new((rss_mib(), rss_mib())));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let now = rss_mib();
                if let Ok(mut p) = peak.lock() {
                    p.0 = p.0.min(now);
                    p.1 = p.1.max(now);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let rss_before = rss_mib();

    let runner = Runner::new(db.clone(), feed.clone(), campaigns_cfg.clone());
    let started = Instant::now();
    while runner.step(chrono::Utc::now().timestamp_micros()).await? {}
    let enqueue_secs = started.elapsed().as_secs_f64();
    let rss_after_enqueue = rss_mib();
    eprintln!("{} recipients queued in {enqueue_secs:.1} s", shape.recipients);

    let dispatcher = Dispatcher::new(db.clone(), feed, campaigns_cfg, providers, contacts, links);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..shape.dispatchers.max(1) {
        let d = dispatcher.clone();
        workers.spawn(async move {
            let (mut sent, mut skipped) = (0usize, 0usize);
            loop {
                let r = d.batch(chrono::Utc::now()).await?;
                if r.claimed == 0 {
                    return Ok::<_, anyhow::Error>((sent, skipped));
                }
                sent += r.sent;
                skipped += r.skipped;
            }
        });
    }
    let (mut sent, mut skipped) = (0, 0);
    while let Some(done) = workers.join_next().await {
        let (s, k) = done??;
        sent += s;
        skipped += k;
    }
    let send_secs = started.elapsed().as_secs_f64();
    sampler.abort();
    let rss_end = rss_mib();
    let (rss_min, rss_peak) = peak.lock().map(|p| *p).unwrap_or_default();
    runner.finish_runs(chrono::Utc::now().timestamp_micros()).await?;
    let state = campaigns::store::get(&db, "bench").await?.map(|c| c.state);
    eprintln!("{sent} sent, {skipped} skipped in {send_secs:.1} s; campaign {state:?}");

    let report = serde_json::json!({
        "backend": scratch.backend,
        "recipients": shape.recipients,
        "dispatchers": shape.dispatchers,
        "batch_size": shape.batch_size,
        "send_concurrency": shape.concurrency,
        "load_secs": load_secs,
        "enqueue_secs": enqueue_secs,
        "enqueued_per_sec": shape.recipients as f64 / enqueue_secs,
        "sent": sent,
        "skipped_no_consent": skipped,
        "provider_requests": sent_to_stub.load(Ordering::Relaxed),
        "send_secs": send_secs,
        "sends_per_sec": sent as f64 / send_secs,
        "rss_mib": {
            "before_enqueue": rss_before,
            "after_enqueue": rss_after_enqueue,
            "end": rss_end,
            "min": rss_min,
            "peak": rss_peak,
        },
        "campaign_state": format!("{:?}", state.unwrap_or(pb::CampaignState::Unspecified)),
    });
    shutdown.trigger();
    if shape.keep {
        eprintln!("kept the scratch storage");
        std::mem::forget(scratch);
    } else {
        scratch.drop(&[]).await?;
    }
    Ok(serde_json::to_string_pretty(&report)?)
}
