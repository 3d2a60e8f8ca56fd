//! `crm bench interactions`: ingest rate of `RecordInteractions` through real gRPC
//! into an in-process customer-profile (temporary SQLite, or a scratch schema of a
//! PostgreSQL database). Several streams send batches closed-loop; each batch's
//! acknowledgement (after its commit) is timed. Prints JSON.

use std::time::Instant;

use crm_proto::crm::{
    common::v1::Channel,
    customer::v1::{self as pb, customer_profile_service_client::CustomerProfileServiceClient, customer_reference::Reference},
};
use tokio_stream::StreamExt;

use crate::{authorized, bearer, seed::Rng};

#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub interactions: usize,
    pub customers: usize,
    pub batch: usize,
    pub streams: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub async fn run(
    mut client: CustomerProfileServiceClient<tonic::transport::Channel>,
    token: &str,
    backend: &str,
    shape: Shape,
) -> anyhow::Result<String> {
    let auth = bearer(token)?;
    let mut customers = Vec::with_capacity(shape.customers);
    for i in 0..shape.customers.max(1) {
        let c = client
            .create_customer(authorized(
                pb::CreateCustomerRequest {
                    customer: Some(pb::Customer {
                        display_name: format!("Bench customer {i}"),
                        ..Default::default()
                    }),
                    request_id: String::new(),
                },
                &auth,
            ))
            .await?
            .into_inner();
        customers.push(c.name);
    }
    let now = chrono::Utc::now().timestamp();
    let kinds = [
        pb::InteractionKind::PageView,
        pb::InteractionKind::ProductView,
        pb::InteractionKind::Cart,
        pb::InteractionKind::Search,
        pb::InteractionKind::AppOpen,
    ];
    let channels = [Channel::Web, Channel::App, Channel::Wechat];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..shape.streams.max(1) {
        let count = shape.interactions / shape.streams.max(1) + usize::from(s < shape.interactions % shape.streams.max(1));
        let mut client = client.clone();
        let auth = auth.clone();
        let customers = customers.clone();
        let batch_size = shape.batch.clamp(1, 1000);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(0xB0B + s as u64);
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::RecordInteractionsRequest>(1);
            let mut acks = client
                .record_interactions(authorized(tokio_stream::wrappers::ReceiverStream::new(rx), &auth))
                .await?
                .into_inner();
            let mut latencies = Vec::new();
            let mut stored = 0u64;
            let mut sent = 0usize;
            while sent < count {
                let n = batch_size.min(count - sent);
                let interactions = (0..n)
                    .map(|i| {
                        let r = rng.next_u64();
                        pb::InteractionInput {
                            customer: Some(pb::CustomerReference {
                                reference: Some(Reference::Customer(customers[(r % customers.len() as u64) as usize].clone())),
                            }),
                            interaction: Some(pb::Interaction {
                                kind: kinds[(r >> 8) as usize % kinds.len()] as i32,
                                channel: channels[(r >> 16) as usize % channels.len()] as i32,
                                occur_time: Some(prost_types::Timestamp {
                                    seconds: now - (r >> 24) as i64 % (30 * 86_400),
                                    nanos: 0,
                                }),
                                properties: [("sku".to_owned(), format!("SKU-{}", r % 500))].into(),
                                source: "bench".into(),
                                external_id: format!("s{s}-{}", sent + i),
                                ..Default::default()
                            }),
                        }
                    })
                    .collect();
                let at = Instant::now();
                tx.send(pb::RecordInteractionsRequest {
                    batch_id: format!("s{s}-{sent}"),
                    interactions,
                })
                .await?;
                let ack = acks.next().await.ok_or_else(|| anyhow::anyhow!("the stream ended early"))??;
                latencies.push(at.elapsed().as_secs_f64() * 1000.0);
                stored += u64::try_from(ack.recorded).unwrap_or(0);
                sent += n;
            }
            drop(tx);
            Ok::<_, anyhow::Error>((stored, latencies))
        }));
    }
    let mut stored = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let (s, l) = t.await??;
        stored += s;
        latencies.extend(l);
    }
    let elapsed = started.elapsed();
    latencies.sort_by(f64::total_cmp);
    let secs = elapsed.as_secs_f64().max(f64::EPSILON);
    Ok(format!(
        r#"{{"bench":"interactions","backend":"{backend}","interactions":{},"stored":{stored},"customers":{},"batch":{},"streams":{},"seconds":{:.2},"rows_per_second":{:.0},"ack_ms":{{"p50":{:.1},"p99":{:.1},"max":{:.1}}}}}"#,
        shape.interactions,
        shape.customers,
        shape.batch,
        shape.streams,
        secs,
        stored as f64 / secs,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(0.0),
    ))
}
