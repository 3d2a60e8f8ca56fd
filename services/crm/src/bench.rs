//! `crm bench`: load against a running suite, reported as JSON: for each operation,
//! requests, errors, throughput and latency percentiles. Phases run one after another
//! (create, then get over the created customers, then list), each for `duration` at
//! `concurrency` closed-loop clients.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crm_proto::crm::customer::v1::{self as pb, customer_profile_service_client::CustomerProfileServiceClient};
use tokio::sync::Mutex;

use crate::{authorized, bearer, seed::Rng};
use tonic::transport::Channel;

#[derive(Debug, Clone)]
pub struct Options {
    pub target: String,
    pub token: String,
    pub concurrency: usize,
    pub duration: Duration,
}

/// One phase's figures.
#[derive(Debug)]
pub struct Phase {
    pub op: &'static str,
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Sorted latencies of the successful calls, in microseconds.
    pub latencies_us: Vec<u64>,
}

impl Phase {
    fn percentile(&self, p: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * (self.latencies_us.len() - 1) as f64).round() as usize;
        self.latencies_us[rank.min(self.latencies_us.len() - 1)]
    }

    pub fn json(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(f64::EPSILON);
        format!(
            r#"{{"op":"{}","requests":{},"errors":{},"seconds":{:.3},"throughput_rps":{:.1},"latency_us":{{"p50":{},"p90":{},"p99":{},"max":{}}}}}"#,
            self.op,
            self.requests,
            self.errors,
            secs,
            self.requests as f64 / secs,
            self.percentile(50.0),
            self.percentile(90.0),
            self.percentile(99.0),
            self.latencies_us.last().copied().unwrap_or(0),
        )
    }
}

fn synthetic_customer(rng: &mut Rng) -> pb::Customer {
    const GIVEN: [&str; 8] = ["Wei", "Li", "Ada", "Grace", "小明", "Mei", "Jun", "Olga"];
    const FAMILY: [&str; 8] = ["Wang", "Zhang", "Lovelace", "Hopper", "王", "Chen", "Liu", "Novak"];
    let n = rng.next_u64();
    pb::Customer {
        person_name: Some(pb::PersonName {
            given_name: GIVEN[(n % 8) as usize].into(),
            family_name: FAMILY[((n >> 8) % 8) as usize].into(),
            ..Default::default()
        }),
        phone_numbers: vec![pb::PhoneNumber {
            number: format!("+86 139 {:04} {:04}", (n >> 16) % 10_000, (n >> 32) % 10_000),
            ..Default::default()
        }],
        email_addresses: vec![pb::EmailAddress {
            address: format!("user{}@example.com", n % 1_000_000_007),
            ..Default::default()
        }],
        tags: if n.is_multiple_of(5) { vec!["vip".into()] } else { vec![] },
        team_id: format!("team-{}", n % 10),
        ..Default::default()
    }
}

/// Runs `call` from `opts.concurrency` clients for `opts.duration`.
pub async fn phase<F, Fut>(op: &'static str, opts: &Options, call: F) -> Phase
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + opts.duration;
    measure(
        op,
        opts.concurrency,
        move |worker, i| (Instant::now() < deadline).then(|| worker as u64 + i * 1_000_003),
        call,
    )
    .await
}

/// Runs `call(n)` from `concurrency` closed-loop clients; each client's `i`-th
/// call gets `n = next(client, i)`, and the client stops at `None`.
pub async fn measure<N, F, Fut>(op: &'static str, concurrency: usize, next: N, call: F) -> Phase
where
    N: Fn(usize, u64) -> Option<u64> + Send + Sync + 'static,
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let (next, call) = (Arc::new(next), Arc::new(call));
    let errors = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let (next, call, errors, latencies) = (next.clone(), call.clone(), errors.clone(), latencies.clone());
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut i = 0;
            while let Some(n) = next(worker, i) {
                i += 1;
                let at = Instant::now();
                if call(n).await {
                    mine.push(u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX));
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies.lock().await.extend(mine);
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed();
    let mut latencies_us = std::mem::take(&mut *latencies.lock().await);
    latencies_us.sort_unstable();
    let errors = errors.load(Ordering::Relaxed);
    Phase {
        op,
        requests: latencies_us.len() as u64 + errors,
        errors,
        elapsed,
        latencies_us,
    }
}

pub async fn run(opts: Options) -> anyhow::Result<String> {
    anyhow::ensure!(opts.concurrency > 0, "--concurrency must be at least 1");
    let channel = Channel::from_shared(opts.target.clone())?.connect().await?;
    let client = CustomerProfileServiceClient::new(channel);
    let token = bearer(&opts.token)?;
    let created = Arc::new(Mutex::new(Vec::new()));

    let create = {
        let (client, token, created) = (client.clone(), token.clone(), created.clone());
        phase("CreateCustomer", &opts, move |n| {
            let (mut client, token, created) = (client.clone(), token.clone(), created.clone());
            async move {
                let customer = synthetic_customer(&mut Rng::new(n));
                let req = pb::CreateCustomerRequest {
                    customer: Some(customer),
                    request_id: String::new(),
                };
                match client.create_customer(authorized(req, &token)).await {
                    Ok(resp) => {
                        created.lock().await.push(resp.into_inner().name);
                        true
                    }
                    Err(_) => false,
                }
            }
        })
        .await
    };
    let names = Arc::new(created.lock().await.clone());
    anyhow::ensure!(
        !names.is_empty(),
        "no customer could be created: is the suite running at {}?",
        opts.target
    );

    let get = {
        let (client, token, names) = (client.clone(), token.clone(), names.clone());
        phase("GetCustomer", &opts, move |n| {
            let (mut client, token, names) = (client.clone(), token.clone(), names.clone());
            async move {
                let name = names[(Rng::new(n).next_u64() % names.len() as u64) as usize].clone();
                client
                    .get_customer(authorized(pb::GetCustomerRequest { name }, &token))
                    .await
                    .is_ok()
            }
        })
        .await
    };

    let list = {
        let (client, token) = (client.clone(), token.clone());
        phase("ListCustomers", &opts, move |n| {
            let (mut client, token) = (client.clone(), token.clone());
            async move {
                let req = pb::ListCustomersRequest {
                    page_size: 50,
                    filter: format!("team_id = \"team-{}\"", n % 10),
                    ..Default::default()
                };
                client.list_customers(authorized(req, &token)).await.is_ok()
            }
        })
        .await
    };

    let phases: Vec<String> = [create, get, list].iter().map(Phase::json).collect();
    Ok(format!(
        r#"{{"target":"{}","concurrency":{},"duration_secs":{},"customers_created":{},"phases":[{}]}}"#,
        opts.target,
        opts.concurrency,
        opts.duration.as_secs_f64(),
        names.len(),
        phases.join(",")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_sorted_samples() {
        let p = Phase {
            op: "x",
            requests: 100,
            errors: 0,
            elapsed: Duration::from_secs(1),
            latencies_us: (1..=100).collect(),
        };
        assert_eq!(p.percentile(50.0), 51);
        assert_eq!(p.percentile(99.0), 99);
        assert!(p.json().contains(r#""throughput_rps":100.0"#));
    }

    #[test]
    fn synthetic_customers_are_valid_input_shapes() {
        let mut rng = Rng::new(42);
        let c = synthetic_customer(&mut rng);
        assert!(c.person_name.is_some());
        assert!(c.phone_numbers[0].number.starts_with("+86 139"));
    }
}
