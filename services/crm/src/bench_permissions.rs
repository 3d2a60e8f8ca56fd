//! `crm bench permissions`: Check and BatchCheck(100) latency against an
//! in-process permissions service seeded with a realistic organisation: teams in a
//! three-level hierarchy, users with role bindings of every scope, and a population
//! of customer records (owner and team) that the checks are about. Ownership lives
//! with the records (customer-profile's owner and team columns) and travels in each
//! check, so the records are generated here rather than stored in the service.
//!
//! Cold: the first decision for each user after the policy caches were dropped
//! (the user's bindings and grants are read from the database). Warm: repeated
//! decisions for users whose policy is cached.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crm_proto::crm::permissions::v1::{self as pb, permissions_service_client::PermissionsServiceClient};
use tonic::transport::Channel;

use crate::{
    authorized, bearer,
    bench::{Options, Phase, measure, phase},
    seed::Rng,
};

#[derive(Debug, Clone)]
pub struct Shape {
    pub users: usize,
    pub teams: usize,
    pub customers: usize,
    pub concurrency: usize,
    pub duration: Duration,
}

/// A customer record as a check sees it.
#[derive(Clone)]
struct Record {
    owner: u32,
    team: u32,
}

fn team_of_user(u: usize, teams: usize) -> usize {
    u % teams
}

/// Team `t`'s parent: teams form a tree of fan-out 10 (0 is the root).
fn parent(t: usize) -> Option<usize> {
    (t > 0).then(|| (t - 1) / 10)
}

/// Role and scope of user `u`: most are reps on their own customers, then agents
/// with ALL, managers over their subtree, marketers over their team.
fn binding_of(u: usize) -> (&'static str, pb::Scope) {
    match u % 10 {
        0 => ("sales_manager", pb::Scope::TeamSubtree),
        1 | 2 => ("service_agent", pb::Scope::All),
        3 => ("marketer", pb::Scope::Team),
        _ => ("sales_rep", pb::Scope::Own),
    }
}

fn check_request(u: usize, r: &Record, i: u64, rng: &mut Rng) -> pb::CheckRequest {
    pb::CheckRequest {
        principal: Some(pb::Principal {
            user_id: format!("u{u}"),
            customer_id: String::new(),
        }),
        permission: if rng.chance(0.7) { "customer.read" } else { "customer.update" }.into(),
        resource: Some(pb::ResourceRef {
            name: format!("customers/c{i}"),
            owner_user_id: format!("u{}", r.owner),
            team_id: format!("t{}", r.team),
        }),
    }
}

/// Runs `call` once for each item `0..items` from `concurrency` clients (the cold
/// phases: every item is a first decision).
async fn each_once<F, Fut>(op: &'static str, items: u64, concurrency: usize, call: F) -> Phase
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = AtomicU64::new(0);
    measure(
        op,
        concurrency,
        move |_, _| Some(next.fetch_add(1, Ordering::Relaxed)).filter(|n| *n < items),
        call,
    )
    .await
}

/// Creates the teams, users and bindings through the API.
async fn seed(client: &PermissionsServiceClient<Channel>, token: &str, shape: &Shape) -> anyhow::Result<Duration> {
    let auth = bearer(token)?;
    let started = Instant::now();
    // Parents before children: team t's parent is below t.
    for t in 0..shape.teams {
        let team = pb::Team {
            name: format!("teams/t{t}"),
            parent: parent(t).map(|p| format!("teams/t{p}")).unwrap_or_default(),
            ..Default::default()
        };
        client
            .clone()
            .create_team(authorized(pb::CreateTeamRequest { team: Some(team) }, &auth))
            .await?;
    }
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (client, auth, next, shape) = (client.clone(), auth.clone(), next.clone(), shape.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let u = next.fetch_add(1, Ordering::Relaxed) as usize;
                if u >= shape.users {
                    return Ok::<(), anyhow::Error>(());
                }
                let user = pb::User {
                    name: format!("users/u{u}"),
                    teams: vec![format!("teams/t{}", team_of_user(u, shape.teams))],
                    ..Default::default()
                };
                client
                    .clone()
                    .create_user(authorized(pb::CreateUserRequest { user: Some(user) }, &auth))
                    .await?;
                let (role, scope) = binding_of(u);
                let binding = pb::RoleBinding {
                    user: format!("users/u{u}"),
                    role: format!("roles/{role}"),
                    scope: scope as i32,
                    ..Default::default()
                };
                client
                    .clone()
                    .create_role_binding(authorized(
                        pb::CreateRoleBindingRequest {
                            role_binding: Some(binding),
                            request_id: String::new(),
                        },
                        &auth,
                    ))
                    .await?;
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(started.elapsed())
}

/// Drops every cached policy in the service: any policy write moves the version.
async fn drop_caches(client: &PermissionsServiceClient<Channel>, token: &str, round: usize) -> anyhow::Result<()> {
    let auth = bearer(token)?;
    client
        .clone()
        .update_team(authorized(
            pb::UpdateTeamRequest {
                team: Some(pb::Team {
                    name: "teams/t0".into(),
                    display_name: format!("root {round}"),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
            },
            &auth,
        ))
        .await?;
    // The in-process service notices at once; give the version poll a beat anyway.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

pub async fn run(channel: Channel, token: &str, backend: &str, shape: Shape) -> anyhow::Result<String> {
    anyhow::ensure!(
        shape.users > 0 && shape.teams > 0 && shape.customers > 0,
        "sizes must be positive"
    );
    let client = PermissionsServiceClient::new(channel);
    let seeded = seed(&client, token, &shape).await?;
    let mut rng = Rng::new(7);
    let records: Arc<Vec<Record>> = Arc::new(
        (0..shape.customers)
            .map(|_| {
                let owner = rng.below(shape.users as u64) as usize;
                // Most records sit in their owner's team; some were handed over.
                let team = if rng.chance(0.8) {
                    team_of_user(owner, shape.teams)
                } else {
                    rng.below(shape.teams as u64) as usize
                };
                Record {
                    owner: owner as u32,
                    team: team as u32,
                }
            })
            .collect(),
    );
    let auth = bearer(token)?;
    let allowed = Arc::new(AtomicU64::new(0));
    let decided = Arc::new(AtomicU64::new(0));
    let one = {
        let (client, auth, records, allowed, decided, shape) = (
            client.clone(),
            auth.clone(),
            records.clone(),
            allowed.clone(),
            decided.clone(),
            shape.clone(),
        );
        move |user: usize, n: u64| {
            let (mut client, auth, records, allowed, decided) = (
                client.clone(),
                auth.clone(),
                records.clone(),
                allowed.clone(),
                decided.clone(),
            );
            let mut rng = Rng::new(n);
            let i = rng.below(records.len() as u64);
            let req = check_request(user % shape.users, &records[i as usize], i, &mut rng);
            async move {
                match client.check(authorized(req, &auth)).await {
                    Ok(r) => {
                        decided.fetch_add(1, Ordering::Relaxed);
                        if r.into_inner().allowed {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                        true
                    }
                    Err(_) => false,
                }
            }
        }
    };
    let batch = {
        let (client, auth, records, shape) = (client.clone(), auth.clone(), records.clone(), shape.clone());
        move |first_user: usize, n: u64| {
            let (mut client, auth, records) = (client.clone(), auth.clone(), records.clone());
            let mut rng = Rng::new(n);
            let checks = (0..100)
                .map(|k| {
                    let i = rng.below(records.len() as u64);
                    check_request((first_user + k) % shape.users, &records[i as usize], i, &mut rng)
                })
                .collect();
            async move {
                client
                    .batch_check(authorized(pb::BatchCheckRequest { checks }, &auth))
                    .await
                    .is_ok_and(|r| r.into_inner().results.len() == 100)
            }
        }
    };
    let opts = Options {
        target: String::new(),
        token: String::new(),
        concurrency: shape.concurrency,
        duration: shape.duration,
    };
    let users = shape.users as u64;

    drop_caches(&client, token, 1).await?;
    let cold_users = users.min(5000);
    let cold_check = {
        let one = one.clone();
        each_once("Check cold", cold_users, shape.concurrency, move |n| one(n as usize, n)).await
    };
    // Warm every user, then measure.
    let warm_check = {
        let warm = one.clone();
        each_once("warm-up", users, shape.concurrency, move |n| warm(n as usize, n)).await;
        let one = one.clone();
        phase("Check warm", &opts, move |n| {
            let mut rng = Rng::new(n ^ 0x5eed);
            one(rng.below(users) as usize, n)
        })
        .await
    };
    drop_caches(&client, token, 2).await?;
    let cold_batches = (users / 100).min(50);
    let cold_batch = {
        let batch = batch.clone();
        each_once("BatchCheck(100) cold", cold_batches, shape.concurrency, move |n| {
            batch((n * 100) as usize, n)
        })
        .await
    };
    let warm_batch = {
        let warm = batch.clone();
        each_once("warm-up", users / 100 + 1, shape.concurrency, move |n| {
            warm((n * 100) as usize, n)
        })
        .await;
        phase("BatchCheck(100) warm", &opts, move |n| {
            let mut rng = Rng::new(n ^ 0xba7c);
            batch(rng.below(users) as usize, n)
        })
        .await
    };
    let share = allowed.load(Ordering::Relaxed) as f64 / decided.load(Ordering::Relaxed).max(1) as f64;
    let phases: Vec<String> = [cold_check, warm_check, cold_batch, warm_batch]
        .iter()
        .map(Phase::json)
        .collect();
    Ok(format!(
        r#"{{"op":"permissions","backend":"{backend}","users":{},"teams":{},"customer_records":{},"seed_seconds":{:.1},"concurrency":{},"allowed_share":{share:.3},"phases":[{}]}}"#,
        shape.users,
        shape.teams,
        shape.customers,
        seeded.as_secs_f64(),
        shape.concurrency,
        phases.join(",")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teams_form_a_tree_and_roles_cover_every_scope() {
        assert_eq!(parent(0), None);
        assert_eq!(parent(1), Some(0));
        assert_eq!(parent(10), Some(0));
        assert_eq!(parent(11), Some(1));
        let scopes: std::collections::BTreeSet<i32> = (0..10).map(|u| binding_of(u).1 as i32).collect();
        assert_eq!(scopes.len(), 4);
    }
}
