//! Test support for every service's integration tests: a fresh database per test on
//! SQLite (default) or PostgreSQL (`CRM_TEST_DATABASE_URL`), and the Redis URL
//! (`CRM_TEST_REDIS_URL`). When a variable is set but its server cannot be reached the
//! test fails: CI must never silently fall back to SQLite.

use crate::db::Target;

pub const DATABASE_URL_VAR: &str = "CRM_TEST_DATABASE_URL";
pub const REDIS_URL_VAR: &str = "CRM_TEST_REDIS_URL";

/// A database only this test uses. SQLite files live in a temporary directory that
/// is removed on drop; PostgreSQL gets a new schema `t_<uuid>` in the test database.
pub struct TestDatabase {
    pub target: Target,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub fn new(service: &str) -> anyhow::Result<Self> {
        match std::env::var(DATABASE_URL_VAR) {
            Ok(url) if !url.is_empty() => {
                anyhow::ensure!(url.starts_with("postgres"), "{DATABASE_URL_VAR} must be a postgres:// URL");
                let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
                Ok(Self {
                    target: Target::Postgres { url, schema },
                    _dir: None,
                })
            }
            _ => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}/{service}.db", dir.path().display());
                Ok(Self {
                    target: Target::Sqlite { url },
                    _dir: Some(dir),
                })
            }
        }
    }

    /// Points `cfg` at this database.
    pub fn configure(&self, cfg: &mut crate::config::DatabaseConfig) {
        match &self.target {
            Target::Sqlite { url } => cfg.url = url.clone(),
            Target::Postgres { url, schema } => {
                cfg.url = url.clone();
                cfg.schema = schema.clone();
            }
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.target, Target::Postgres { .. })
    }
}

/// The platform settings every service's test app shares: the JWT `secret`, a fast
/// feed (50 ms polls, 1 s heartbeats), and the test Redis when one is set, with a key
/// prefix of its own (reached once here: a set but unreachable Redis fails the test).
pub async fn configure_platform(cfg: &mut crate::config::PlatformConfig, secret: &str) {
    cfg.auth.jwt_secret = secret.into();
    cfg.feed.poll_interval_ms = 50;
    cfg.feed.heartbeat_secs = 1;
    if let Some(url) = redis_url() {
        cfg.redis.url = url;
        cfg.redis.key_prefix = unique_key_prefix();
        let probe = crate::cache::RedisCache::new(&cfg.redis, std::time::Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("{REDIS_URL_VAR}: {e}"));
        if let Err(e) = probe.ping().await {
            panic!("{REDIS_URL_VAR} is set but Redis cannot be reached: {e}");
        }
    }
}

/// Polls `probe` every 100 ms until it gives a value; after `secs` seconds fails with
/// `what` and the last state the probe reported.
pub async fn eventually<T>(what: &str, secs: u64, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) => assert!(std::time::Instant::now() < deadline, "{what}: {last}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The Redis URL tests must use, if any.
pub fn redis_url() -> Option<String> {
    std::env::var(REDIS_URL_VAR).ok().filter(|u| !u.is_empty())
}

/// A key prefix only this test uses, so tests can share one Redis.
pub fn unique_key_prefix() -> String {
    format!("crm-test:{}:", uuid::Uuid::new_v4().simple())
}

/// Field-encryption keys for tests (fixed, so a test can reopen what it sealed).
pub fn encryption() -> crate::crypto::EncryptionConfig {
    crate::crypto::EncryptionConfig {
        active_key: "test".into(),
        keys: std::collections::BTreeMap::from([("test".into(), "dGVzdC1lbmNyeXB0aW9uLWtleS0zMi1ieXRlcy1sbmc=".into())]),
        blind_index_key: "dGVzdC1ibGluZC1pbmRleC1rZXktMzItYnl0ZXMtbG9uZw==".into(),
    }
}

/// `msg` with `authorization: Bearer <token>`.
pub fn with_bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

/// An HS256 token signed with `secret` for `user`, valid ten minutes; with `customer`
/// (an id), a customer's self-service token.
pub fn mint(secret: &str, user: &str, customer: Option<&str>) -> String {
    let principal = crate::auth::Principal {
        user_id: user.into(),
        customer_id: customer.map(str::to_owned),
        expires_at: 0,
    };
    crate::auth::mint_hs256(secret, &principal, std::time::Duration::from_secs(600)).unwrap_or_default()
}

/// The events a change-feed stream replays before its first heartbeat (the stream is
/// caught up then); each message is awaited at most ten seconds.
pub async fn replay(
    mut stream: tonic::Streaming<crm_proto::crm::events::v1::StreamEventsResponse>,
) -> anyhow::Result<Vec<crm_proto::crm::events::v1::Event>> {
    use crm_proto::crm::events::v1::stream_events_response::Kind;
    let mut out = Vec::new();
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .map_err(|_| anyhow::anyhow!("no feed message within 10 s"))??
            .ok_or_else(|| anyhow::anyhow!("the feed ended before catching up"))?;
        match msg.kind {
            Some(Kind::Event(e)) => out.push(e),
            Some(Kind::Heartbeat(_)) => return Ok(out),
            None => {}
        }
    }
}

/// Policy set-up through the permissions API, as an administrator would (tests of
/// every service need users, teams and role bindings).
pub mod policy {
    use crm_proto::crm::permissions::v1::{self as pb, permissions_service_client::PermissionsServiceClient};
    use tonic::{Request, transport::Channel};

    fn as_admin<T>(msg: T, admin_token: &str) -> Request<T> {
        super::with_bearer(msg, admin_token)
    }

    /// Creates team `id` below `parent` (empty: top level).
    pub async fn team(
        client: &PermissionsServiceClient<Channel>,
        admin_token: &str,
        id: &str,
        parent: &str,
    ) -> anyhow::Result<pb::Team> {
        let team = pb::Team {
            name: format!("teams/{id}"),
            parent: if parent.is_empty() {
                String::new()
            } else {
                format!("teams/{parent}")
            },
            ..Default::default()
        };
        Ok(client
            .clone()
            .create_team(as_admin(pb::CreateTeamRequest { team: Some(team) }, admin_token))
            .await?
            .into_inner())
    }

    /// Creates user `id` in `teams` and binds `role` with `scope`; returns the binding.
    pub async fn user(
        client: &PermissionsServiceClient<Channel>,
        admin_token: &str,
        id: &str,
        teams: &[&str],
        role: &str,
        scope: pb::Scope,
    ) -> anyhow::Result<pb::RoleBinding> {
        let mut c = client.clone();
        let user = pb::User {
            name: format!("users/{id}"),
            teams: teams.iter().map(|t| format!("teams/{t}")).collect(),
            ..Default::default()
        };
        c.create_user(as_admin(pb::CreateUserRequest { user: Some(user) }, admin_token))
            .await?;
        bind(client, admin_token, id, role, scope).await
    }

    /// Binds `role` with `scope` to the existing user `id`.
    pub async fn bind(
        client: &PermissionsServiceClient<Channel>,
        admin_token: &str,
        id: &str,
        role: &str,
        scope: pb::Scope,
    ) -> anyhow::Result<pb::RoleBinding> {
        let mut c = client.clone();
        let binding = pb::RoleBinding {
            user: format!("users/{id}"),
            role: format!("roles/{role}"),
            scope: scope as i32,
            ..Default::default()
        };
        Ok(c.create_role_binding(as_admin(
            pb::CreateRoleBindingRequest {
                role_binding: Some(binding),
                request_id: String::new(),
            },
            admin_token,
        ))
        .await?
        .into_inner())
    }
}
