//! Authorization as every service sees it: the permissions service's decisions
//! (check, read scope, field policy) behind a short-lived cache, failing closed.
//!
//! The decision point is the permissions service: over gRPC ([`RemotePdp`]) or
//! in-process when `crm serve` hosts it (the permissions crate implements
//! [`PolicyDecisionPoint`] directly). Cached answers are keyed by the policy epoch,
//! which moves with every event on the permissions feed, so a policy change takes
//! effect as soon as its event arrives and at the latest after
//! `permissions.decision_cache_secs`.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use crm_proto::crm::{
    events::v1::{StreamEventsRequest, stream_events_response::Kind},
    permissions::v1::{
        self as pb, AuditEntry, BatchCheckRequest, CheckRequest, GetFieldPolicyRequest, GetReadScopeRequest,
        WriteAuditEntriesRequest, audit_entry::Outcome, permissions_service_client::PermissionsServiceClient,
    },
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub use crm_proto::crm::permissions::v1::{Classification, Visibility};

use crate::{
    audit::AuditSpool,
    auth::{Principal, mint_hs256},
    cache::{Cache, RedisCache},
    config::{ConfigError, PlatformConfig},
    error::{Error, Result},
    server::ShutdownSignal,
};

/// `[permissions]`: how services reach the permissions service.
#[derive(Debug, Clone, Deserialize)]
pub struct PermissionsClientConfig {
    /// gRPC address of the permissions service (`http://...` or `https://...`).
    /// Empty only where the permissions service runs in the same process (`crm serve`).
    pub url: String,
    /// PEM CA bundle that the permissions service's certificate chains to (https).
    pub ca_path: String,
    /// File holding this service's bearer token for the permissions service (its
    /// account needs `permissions.check`, `permissions.events` and `audit.write`).
    /// Empty with an HS256 `auth.jwt_secret`: a token for `service_account` is minted.
    pub token_file: String,
    /// The account minted tokens name; empty means the service's name.
    pub service_account: String,
    /// How long a decision may be served from cache when no policy event arrives.
    pub decision_cache_secs: u64,
    /// Cached decisions per process at most.
    pub decision_cache_entries: u64,
    /// A call to the permissions service slower than this fails (closed).
    pub timeout_ms: u64,
}

impl PermissionsClientConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::config::check_service_url("permissions.url", &self.url)?;
        if self.decision_cache_secs > 300 {
            return Err(ConfigError::invalid(
                "permissions.decision_cache_secs",
                "at most 300: a revoked role must not live longer in caches",
            ));
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::invalid("permissions.timeout_ms", "must be at least 1"));
        }
        Ok(())
    }
}

/// The permissions service, as the cache asks it.
#[async_trait]
pub trait PolicyDecisionPoint: Send + Sync + std::fmt::Debug {
    async fn batch_check(&self, checks: Vec<CheckRequest>) -> Result<Vec<pb::CheckResponse>>;
    async fn read_scope(&self, req: GetReadScopeRequest) -> Result<pb::ReadScope>;
    async fn field_policy(&self, req: GetFieldPolicyRequest) -> Result<pb::FieldPolicy>;
    /// Appends audit entries durably (idempotent by entry id).
    async fn write_audit(&self, entries: Vec<AuditEntry>) -> Result<()>;
    /// The newest `limit` audit entries about `resource` (who read or changed it),
    /// newest first: for a data subject's access request.
    async fn audit_trail(&self, resource: &str, limit: u32) -> Result<Vec<AuditEntry>>;
    /// Changes whenever the policy may have changed.
    fn epoch(&self) -> watch::Receiver<String>;
}

/// A resource as a check sees it: its name and, for records, owner and team.
#[derive(Debug, Clone, Copy)]
pub struct Resource<'a> {
    pub name: &'a str,
    pub owner_user_id: &'a str,
    pub team_id: &'a str,
}

impl<'a> Resource<'a> {
    /// A collection or a resource without owner and team.
    pub fn named(name: &'a str) -> Self {
        Self {
            name,
            owner_user_id: "",
            team_id: "",
        }
    }

    pub fn record(name: &'a str, owner_user_id: &'a str, team_id: &'a str) -> Self {
        Self {
            name,
            owner_user_id,
            team_id,
        }
    }
}

/// Which records a principal may read (see `crm.permissions.v1.ReadScope`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadScope {
    pub all: bool,
    pub owner_user_ids: Vec<String>,
    pub team_ids: Vec<String>,
    pub resources: Vec<String>,
}

impl ReadScope {
    pub fn allows(&self, name: &str, owner_user_id: &str, team_id: &str) -> bool {
        self.all
            || (!owner_user_id.is_empty() && self.owner_user_ids.iter().any(|o| o == owner_user_id))
            || (!team_id.is_empty() && self.team_ids.iter().any(|t| t == team_id))
            || self.resources.iter().any(|r| r == name)
    }

    /// Reads nothing at all.
    pub fn is_empty(&self) -> bool {
        !self.all && self.owner_user_ids.is_empty() && self.team_ids.is_empty() && self.resources.is_empty()
    }

    fn from_proto(p: pb::ReadScope) -> Self {
        Self {
            all: p.all,
            owner_user_ids: p.owner_user_ids,
            team_ids: p.team_ids,
            resources: p.resources,
        }
    }
}

/// Field visibility for one principal: each field's classification and the
/// clearance rules (one per role binding or grant), so every record is decided
/// locally with the clearance that reaches it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldPolicy {
    levels: BTreeMap<String, i32>,
    rules: Vec<(i32, ReadScope)>,
}

impl FieldPolicy {
    /// The fields as one record shows them.
    pub fn for_record(&self, r: Resource<'_>) -> RecordFields<'_> {
        RecordFields {
            levels: &self.levels,
            clearance: self
                .rules
                .iter()
                .filter(|(_, reach)| reach.allows(r.name, r.owner_user_id, r.team_id))
                .map(|(c, _)| *c)
                .max(),
        }
    }

    /// Everything at `clearance` everywhere (tests, and callers with one rule).
    pub fn uniform(fields: &[(String, Classification)], clearance: Classification) -> Self {
        Self {
            levels: fields.iter().map(|(p, c)| (p.clone(), *c as i32)).collect(),
            rules: vec![(
                clearance as i32,
                ReadScope {
                    all: true,
                    ..ReadScope::default()
                },
            )],
        }
    }
}

/// Visibility of one record's fields.
#[derive(Debug, Clone, Copy)]
pub struct RecordFields<'a> {
    levels: &'a BTreeMap<String, i32>,
    clearance: Option<i32>,
}

impl RecordFields<'_> {
    /// Up to the clearance visible, one level above masked, further above hidden;
    /// a field the policy does not know is hidden (never returned by accident).
    pub fn visibility(&self, path: &str) -> Visibility {
        let level = match self.levels.get(path) {
            Some(l) if (1..=4).contains(l) => *l,
            _ => return Visibility::Hidden,
        };
        match self.clearance {
            Some(c) if level <= c => Visibility::Visible,
            Some(c) if level == c + 1 => Visibility::Masked,
            _ => Visibility::Hidden,
        }
    }
}

/// Masks a phone number: keeps the first three and last four digits
/// (`+8613800138000` -> `+86138****8000`); short numbers keep only the last two.
pub fn mask_phone(number: &str) -> String {
    let digits: Vec<char> = number.chars().filter(char::is_ascii_digit).collect();
    let prefix = if number.starts_with('+') { "+" } else { "" };
    let n = digits.len();
    if n >= 9 {
        let head: String = digits[..n - 8].iter().collect();
        let tail: String = digits[n - 4..].iter().collect();
        format!("{prefix}{head}****{tail}")
    } else {
        let tail: String = digits[n.saturating_sub(2)..].iter().collect();
        format!("****{tail}")
    }
}

/// Masks an e-mail address: the first character of the local part and the domain
/// (`zhang.wei@example.com` -> `z***@example.com`).
pub fn mask_email(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

/// Redacts a value that has no meaningful mask.
pub const REDACTED: &str = "***";

/// A decision as cached.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Cached {
    Check { allowed: bool, reason: String },
    Scope(ReadScope),
    Fields(FieldPolicy),
}

#[derive(Debug, Clone)]
struct Entry {
    value: Cached,
    until: Instant,
}

/// The authorization client a service holds: decisions cached per policy epoch,
/// denials audited, failures closed.
#[derive(Clone, Debug)]
pub struct Authz {
    pdp: Arc<dyn PolicyDecisionPoint>,
    local: moka::future::Cache<String, Entry>,
    shared: Option<Arc<RedisCache>>,
    ttl: Duration,
    epoch: watch::Receiver<String>,
    /// The epoch last seen and when it was first seen.
    seen: Arc<std::sync::Mutex<(String, Instant)>>,
    spool: AuditSpool,
}

/// Right after a policy change, another replica of the permissions service may not
/// have noticed it yet (it polls the policy version): answers are cached this long
/// at most until the change has settled.
const SETTLE: Duration = Duration::from_secs(1);

impl Authz {
    pub fn new(pdp: Arc<dyn PolicyDecisionPoint>, config: &PlatformConfig, spool: AuditSpool) -> Result<Self> {
        let cfg = &config.permissions;
        let ttl = Duration::from_secs(cfg.decision_cache_secs);
        let shared = if config.redis.url.is_empty() || ttl.is_zero() {
            None
        } else {
            Some(Arc::new(RedisCache::new(&config.redis, ttl)?))
        };
        Ok(Self {
            epoch: pdp.epoch(),
            pdp,
            local: moka::future::Cache::builder()
                .max_capacity(cfg.decision_cache_entries)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
            shared,
            ttl,
            seen: Arc::new(std::sync::Mutex::new((String::new(), Instant::now()))),
            spool,
        })
    }

    /// The service's audit spool (sensitive reads are recorded through it).
    /// The newest audit entries about `resource` (see [`PolicyDecisionPoint::audit_trail`]).
    pub async fn audit_trail(&self, resource: &str, limit: u32) -> Result<Vec<AuditEntry>> {
        self.pdp.audit_trail(resource, limit).await.map_err(unavailable)
    }

    pub fn audit(&self) -> &AuditSpool {
        &self.spool
    }

    fn key(&self, kind: &str, principal: &Principal, parts: &[&str]) -> String {
        let epoch = self.epoch.borrow().clone();
        if let Ok(mut seen) = self.seen.lock()
            && seen.0 != epoch
        {
            *seen = (epoch.clone(), Instant::now());
        }
        let mut h = Sha256::new();
        for p in [epoch.as_str(), kind, &principal.user_id]
            .into_iter()
            .chain(principal.customer_id.as_deref())
            .chain(parts.iter().copied())
        {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p.as_bytes());
        }
        format!("authz:{}", hex(&h.finalize()))
    }

    async fn cached(&self, key: &str) -> Option<Cached> {
        if self.ttl.is_zero() {
            return None;
        }
        if let Some(e) = self.local.get(key).await
            && e.until > Instant::now()
        {
            return Some(e.value);
        }
        let shared = self.shared.as_ref()?;
        let bytes = shared.get(key).await?;
        let (until_ms, value): (i64, Cached) = serde_json::from_slice(&bytes).ok()?;
        let left = until_ms - chrono::Utc::now().timestamp_millis();
        if left <= 0 {
            return None;
        }
        let until = Instant::now() + Duration::from_millis(left as u64).min(self.ttl);
        self.local
            .insert(
                key.to_owned(),
                Entry {
                    value: value.clone(),
                    until,
                },
            )
            .await;
        Some(value)
    }

    async fn remember(&self, key: String, value: Cached, valid_until: Option<&prost_types::Timestamp>) {
        if self.ttl.is_zero() {
            return;
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut left_ms = self.ttl.as_millis() as i64;
        let settling = self.seen.lock().map(|s| s.1.elapsed() < SETTLE).unwrap_or(true);
        if settling {
            left_ms = left_ms.min(SETTLE.as_millis() as i64);
        }
        if let Some(t) = valid_until {
            left_ms = left_ms.min(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000 - now_ms);
        }
        if left_ms <= 0 {
            return;
        }
        let until = Instant::now() + Duration::from_millis(left_ms as u64);
        if let Some(shared) = &self.shared
            && let Ok(bytes) = serde_json::to_vec(&(now_ms + left_ms, &value))
        {
            shared.put_newer(&key, 0, bytes).await;
        }
        self.local.insert(key, Entry { value, until }).await;
    }

    /// Allows or fails with PERMISSION_DENIED (audited); UNAVAILABLE when the
    /// permissions service cannot answer and no cached decision exists.
    pub async fn check(&self, principal: &Principal, permission: &str, resource: Resource<'_>) -> Result<()> {
        let (allowed, reason) = self.decide(principal, permission, resource).await?;
        if allowed {
            return Ok(());
        }
        let mut entry = self.spool.entry(principal, permission, resource.name, Outcome::Denied);
        entry.reason = reason;
        self.spool.record_now(vec![entry]).await?;
        Err(Error::PermissionDenied {
            permission: permission.into(),
            resource: resource.name.into(),
        })
    }

    /// Whether `principal` may, without auditing a denial (for filtering).
    pub async fn allows(&self, principal: &Principal, permission: &str, resource: Resource<'_>) -> Result<bool> {
        Ok(self.decide(principal, permission, resource).await?.0)
    }

    async fn decide(&self, principal: &Principal, permission: &str, r: Resource<'_>) -> Result<(bool, String)> {
        let key = self.key("check", principal, &[permission, r.name, r.owner_user_id, r.team_id]);
        if let Some(Cached::Check { allowed, reason }) = self.cached(&key).await {
            return Ok((allowed, reason));
        }
        let answer = self
            .pdp
            .batch_check(vec![CheckRequest {
                principal: Some(principal_to_proto(principal)),
                permission: permission.into(),
                resource: Some(pb::ResourceRef {
                    name: r.name.into(),
                    owner_user_id: r.owner_user_id.into(),
                    team_id: r.team_id.into(),
                }),
            }])
            .await
            .map_err(unavailable)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Unavailable("the permissions service returned no decision".into()))?;
        let value = Cached::Check {
            allowed: answer.allowed,
            reason: answer.reason.clone(),
        };
        self.remember(key, value, answer.valid_until.as_ref()).await;
        Ok((answer.allowed, answer.reason))
    }

    /// The records of a type `principal` may read with `permission`.
    pub async fn read_scope(&self, principal: &Principal, permission: &str) -> Result<ReadScope> {
        let key = self.key("scope", principal, &[permission]);
        if let Some(Cached::Scope(scope)) = self.cached(&key).await {
            return Ok(scope);
        }
        let answer = self
            .pdp
            .read_scope(GetReadScopeRequest {
                principal: Some(principal_to_proto(principal)),
                permission: permission.into(),
            })
            .await
            .map_err(unavailable)?;
        let until = answer.valid_until;
        let scope = ReadScope::from_proto(answer);
        self.remember(key, Cached::Scope(scope.clone()), until.as_ref()).await;
        Ok(scope)
    }

    /// Visibility of `fields` (path, classification) to `principal`, per record.
    pub async fn field_policy(
        &self,
        principal: &Principal,
        permission: &str,
        fields: &[(String, Classification)],
    ) -> Result<FieldPolicy> {
        let mut h = Sha256::new();
        for (path, c) in fields {
            h.update(path.as_bytes());
            h.update([0, *c as u8]);
        }
        let digest = hex(&h.finalize());
        let key = self.key("fields", principal, &[permission, &digest]);
        if let Some(Cached::Fields(policy)) = self.cached(&key).await {
            return Ok(policy);
        }
        let answer = self
            .pdp
            .field_policy(GetFieldPolicyRequest {
                principal: Some(principal_to_proto(principal)),
                permission: permission.into(),
                fields: fields
                    .iter()
                    .map(|(path, c)| pb::FieldClassification {
                        path: path.clone(),
                        classification: *c as i32,
                    })
                    .collect(),
                resource: None,
            })
            .await
            .map_err(unavailable)?;
        let policy = FieldPolicy {
            levels: fields.iter().map(|(p, c)| (p.clone(), *c as i32)).collect(),
            rules: answer
                .rules
                .into_iter()
                .map(|r| (r.clearance, ReadScope::from_proto(r.reach.unwrap_or_default())))
                .collect(),
        };
        self.remember(key, Cached::Fields(policy.clone()), answer.valid_until.as_ref())
            .await;
        Ok(policy)
    }
}

fn unavailable(err: Error) -> Error {
    match err {
        Error::Unavailable(_) | Error::InvalidArgument(_) => err,
        other => {
            tracing::warn!(error = %other, "permissions service failed: denying (fail closed)");
            Error::Unavailable(format!("the permissions service cannot decide: {other}"))
        }
    }
}

pub fn principal_to_proto(p: &Principal) -> pb::Principal {
    pb::Principal {
        user_id: p.user_id.clone(),
        customer_id: p.customer_id.clone().unwrap_or_default(),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The permissions service over gRPC, with the service's own credentials.
#[derive(Debug, Clone)]
pub struct RemotePdp {
    client: PermissionsServiceClient<Channel>,
    credentials: ServiceCredentials,
    epoch: watch::Receiver<String>,
}

/// A service's own bearer token for calls to other services: read from a file, or
/// minted with the HS256 secret for its service account; renewed every ten minutes.
#[derive(Clone)]
pub struct ServiceCredentials {
    token: Arc<std::sync::Mutex<(String, Instant)>>,
    source: Arc<dyn Fn() -> Result<String> + Send + Sync>,
}

impl std::fmt::Debug for ServiceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceCredentials(..)")
    }
}

impl ServiceCredentials {
    /// `permissions.token_file` when set; else a token minted for
    /// `permissions.service_account` (default: `service`) with the HS256 secret.
    pub fn from_config(config: &PlatformConfig, service: &str) -> anyhow::Result<Self> {
        let cfg = &config.permissions;
        let source: Arc<dyn Fn() -> Result<String> + Send + Sync> = if !cfg.token_file.is_empty() {
            let path = cfg.token_file.clone();
            Arc::new(move || {
                std::fs::read_to_string(&path)
                    .map(|t| t.trim().to_owned())
                    .map_err(|e| Error::Unavailable(format!("cannot read permissions.token_file {path}: {e}")))
            })
        } else if !config.auth.jwt_secret.is_empty() {
            let secret = config.auth.jwt_secret.clone();
            let account = if cfg.service_account.is_empty() {
                service.to_owned()
            } else {
                cfg.service_account.clone()
            };
            Arc::new(move || {
                let me = Principal {
                    user_id: account.clone(),
                    ..Principal::default()
                };
                mint_hs256(&secret, &me, Duration::from_secs(3600))
            })
        } else {
            anyhow::bail!(
                "configuration key `permissions.token_file`: required when tokens are not HS256 (this service needs its own token for the permissions service)"
            );
        };
        Ok(Self {
            token: Arc::new(std::sync::Mutex::new((String::new(), Instant::now()))),
            source,
        })
    }

    /// The bearer value, re-read (or re-minted) every ten minutes.
    fn bearer(&self) -> Result<String> {
        let mut slot = self
            .token
            .lock()
            .map_err(|_| Error::internal(anyhow::anyhow!("credential lock poisoned")))?;
        if slot.0.is_empty() || slot.1.elapsed() > Duration::from_secs(600) {
            *slot = ((self.source)()?, Instant::now());
        }
        Ok(format!("Bearer {}", slot.0))
    }

    /// `msg` as a request carrying the token and the current trace context.
    pub fn request<T>(&self, msg: T) -> Result<tonic::Request<T>> {
        let mut req = tonic::Request::new(msg);
        let bearer = self
            .bearer()?
            .parse()
            .map_err(|_| Error::Unavailable("the service token is not valid metadata".into()))?;
        req.metadata_mut().insert("authorization", bearer);
        crate::telemetry::inject_context(req.metadata_mut());
        Ok(req)
    }
}

/// A lazily connecting channel to another service: `http://` or `https://` (with
/// `ca_path`'s CA when set), calls failing after `timeout`.
pub fn client_channel(url: &str, ca_path: &str, timeout: Duration) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())?
        .timeout(timeout)
        .connect_timeout(timeout);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if !ca_path.is_empty() {
            tls = tls.ca_certificate(Certificate::from_pem(std::fs::read(ca_path)?));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect_lazy())
}

impl RemotePdp {
    /// Connects lazily to `permissions.url` and starts following its feed, so cached
    /// decisions are dropped when the policy changes.
    pub fn connect(config: &PlatformConfig, service: &str, shutdown: ShutdownSignal) -> anyhow::Result<Self> {
        let cfg = &config.permissions;
        let channel = client_channel(&cfg.url, &cfg.ca_path, Duration::from_millis(cfg.timeout_ms))?;
        let client = PermissionsServiceClient::new(channel);
        let credentials = ServiceCredentials::from_config(config, service)?;
        let (tx, epoch) = watch::channel(format!("start-{}", uuid::Uuid::new_v4()));
        tokio::spawn(follow_policy(client.clone(), credentials.clone(), tx, shutdown));
        Ok(Self {
            client,
            credentials,
            epoch,
        })
    }

    fn request<T>(&self, msg: T) -> Result<tonic::Request<T>> {
        self.credentials.request(msg)
    }
}

fn from_status(s: tonic::Status) -> Error {
    if s.code() == tonic::Code::InvalidArgument {
        return Error::invalid(
            "resource",
            format!("the permissions service refused the question: {}", s.message()),
        );
    }
    Error::Unavailable(format!("permissions service: {} {}", s.code(), s.message()))
}

/// Follows the permissions feed: every event moves the epoch. While the stream is
/// down the epoch stays, and cached decisions live at most their TTL.
async fn follow_policy(
    mut client: PermissionsServiceClient<Channel>,
    credentials: ServiceCredentials,
    epoch: watch::Sender<String>,
    mut shutdown: ShutdownSignal,
) {
    let mut cursor = String::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = async {
            let mut req = tonic::Request::new(StreamEventsRequest {
                after_cursor: cursor.clone(),
                event_types: Vec::new(),
            });
            req.metadata_mut().insert(
                "authorization",
                credentials
                    .bearer()
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?
                    .parse()
                    .map_err(|_| tonic::Status::unauthenticated("bad token"))?,
            );
            let mut stream = client.stream_events(req).await?.into_inner();
            // The epoch moves once per delivered batch (the feed sends a heartbeat
            // after each), not once per replayed event.
            let mut moved = false;
            while let Some(msg) = stream.message().await? {
                match msg.kind {
                    Some(Kind::Event(e)) => {
                        cursor = e.cursor;
                        moved = true;
                    }
                    Some(Kind::Heartbeat(_)) if moved => {
                        epoch.send_replace(cursor.clone());
                        moved = false;
                    }
                    _ => {}
                }
            }
            Ok::<(), tonic::Status>(())
        };
        tokio::select! {
            result = attempt => {
                if let Err(status) = result {
                    if status.code() == tonic::Code::FailedPrecondition {
                        // Fell behind retention: start over from the oldest event.
                        cursor.clear();
                    }
                    tracing::debug!(%status, "permissions feed interrupted; decisions live out their TTL");
                }
            }
            _ = shutdown.wait() => return,
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

#[async_trait]
impl PolicyDecisionPoint for RemotePdp {
    async fn batch_check(&self, checks: Vec<CheckRequest>) -> Result<Vec<pb::CheckResponse>> {
        let req = self.request(BatchCheckRequest { checks })?;
        Ok(self
            .client
            .clone()
            .batch_check(req)
            .await
            .map_err(from_status)?
            .into_inner()
            .results)
    }

    async fn read_scope(&self, req: GetReadScopeRequest) -> Result<pb::ReadScope> {
        let req = self.request(req)?;
        Ok(self
            .client
            .clone()
            .get_read_scope(req)
            .await
            .map_err(from_status)?
            .into_inner())
    }

    async fn field_policy(&self, req: GetFieldPolicyRequest) -> Result<pb::FieldPolicy> {
        let req = self.request(req)?;
        Ok(self
            .client
            .clone()
            .get_field_policy(req)
            .await
            .map_err(from_status)?
            .into_inner())
    }

    async fn write_audit(&self, entries: Vec<AuditEntry>) -> Result<()> {
        let req = self.request(WriteAuditEntriesRequest { entries })?;
        self.client.clone().write_audit_entries(req).await.map_err(from_status)?;
        Ok(())
    }

    async fn audit_trail(&self, resource: &str, limit: u32) -> Result<Vec<AuditEntry>> {
        let req = self.request(pb::ListAuditEntriesRequest {
            page_size: i32::try_from(limit).unwrap_or(i32::MAX),
            resource: resource.to_owned(),
            ..Default::default()
        })?;
        Ok(self
            .client
            .clone()
            .list_audit_entries(req)
            .await
            .map_err(from_status)?
            .into_inner()
            .audit_entries)
    }

    fn epoch(&self) -> watch::Receiver<String> {
        self.epoch.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(mask_phone("+8613800138000"), "+86138****8000");
        assert_eq!(mask_phone("13800135678"), "138****5678");
        assert_eq!(mask_phone("+4420"), "****20");
        assert_eq!(mask_email("zhang.wei@example.com"), "z***@example.com");
        assert_eq!(mask_email("broken"), "***");
    }

    #[test]
    fn scope_filter() {
        let scope = ReadScope {
            owner_user_ids: vec!["u1".into()],
            team_ids: vec!["t1".into()],
            resources: vec!["customers/9".into()],
            ..ReadScope::default()
        };
        assert!(scope.allows("customers/1", "u1", ""));
        assert!(scope.allows("customers/2", "", "t1"));
        assert!(scope.allows("customers/9", "", ""));
        assert!(!scope.allows("customers/3", "u2", "t2"));
        assert!(!scope.allows("customers/3", "", ""));
        assert!(ReadScope::default().is_empty());
    }

    #[test]
    fn visibility_per_record_follows_the_rules_that_reach_it() {
        let fields = [
            ("name".to_owned(), Classification::Internal),
            ("phone".to_owned(), Classification::Sensitive),
            ("id".to_owned(), Classification::Confidential),
        ];
        let mut p = FieldPolicy::uniform(&fields, Classification::Internal);
        p.rules.push((
            Classification::Sensitive as i32,
            ReadScope {
                team_ids: vec!["east".into()],
                ..ReadScope::default()
            },
        ));
        let anywhere = p.for_record(Resource::record("customers/1", "", "west"));
        assert_eq!(anywhere.visibility("name"), Visibility::Visible);
        assert_eq!(anywhere.visibility("phone"), Visibility::Masked);
        assert_eq!(anywhere.visibility("id"), Visibility::Hidden);
        assert_eq!(anywhere.visibility("unknown"), Visibility::Hidden);
        let east = p.for_record(Resource::record("customers/2", "", "east"));
        assert_eq!(east.visibility("phone"), Visibility::Visible);
        assert_eq!(east.visibility("id"), Visibility::Masked);
        let nothing = FieldPolicy::default();
        assert_eq!(
            nothing.for_record(Resource::named("customers/3")).visibility("name"),
            Visibility::Hidden
        );
    }
}
