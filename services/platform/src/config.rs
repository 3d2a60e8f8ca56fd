//! Layered configuration: compiled-in defaults, then an optional TOML file, then
//! `CRM__SECTION__KEY` environment variables. Errors name the offending key.

use std::{net::SocketAddr, path::Path};

use serde::{Deserialize, de::DeserializeOwned};

use crate::telemetry::LogConfig;

/// Defaults for the sections every service shares. Service crates append their own
/// section's defaults (see [`load`]).
pub const PLATFORM_DEFAULTS: &str = r#"
[server]
listen = "127.0.0.1:50051"
request_timeout_secs = 30
concurrency_limit = 1024
shutdown_grace_secs = 25
shutdown_delay_secs = 0
max_connection_age_secs = 300
max_message_bytes = 1048576
allow_plaintext = false

[server.tls]
cert_path = ""
key_path = ""
client_ca_path = ""

[database]
url = ""
data_dir = "./data"
max_connections = 10
schema = ""
migrate_on_start = true

[redis]
url = ""
key_prefix = "crm:"
timeout_ms = 200

[cache]
ttl_secs = 60
max_entries = 100000
allow_local_with_postgres = false

[auth]
jwt_secret = ""
public_key_path = ""
algorithm = "HS256"
issuer = ""
audience = ""

[permissions]
url = ""
ca_path = ""
token_file = ""
service_account = ""
decision_cache_secs = 10
decision_cache_entries = 100000
timeout_ms = 2000

[encryption]
active_key = ""
blind_index_key = ""

[encryption.keys]

[feed]
retention_days = 30
poll_interval_ms = 500
heartbeat_secs = 10
batch_size = 500

[paging]
token_secret = ""

[metrics]
listen = ""

[log]
format = "pretty"
level = "info,sqlx=warn,sea_orm=warn,opentelemetry=warn,opentelemetry_sdk=warn"
"#;

/// The sections every service shares.
#[derive(Debug, Clone, Deserialize)]
pub struct PlatformConfig {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub cache: CacheConfig,
    pub auth: AuthConfig,
    pub feed: FeedConfig,
    pub paging: PagingConfig,
    pub log: LogConfig,
    pub metrics: crate::metrics::MetricsConfig,
    pub encryption: crate::crypto::EncryptionConfig,
    pub permissions: crate::authz::PermissionsClientConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerConfig {
    /// Address the gRPC server listens on.
    pub listen: SocketAddr,
    /// Upper bound for one unary call (a smaller `grpc-timeout` from the caller wins).
    pub request_timeout_secs: u64,
    /// Calls served at once across all connections; more are shed with UNAVAILABLE.
    pub concurrency_limit: usize,
    /// How long in-flight calls may take to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// How long the server keeps serving after SIGTERM while it reports NOT_SERVING,
    /// so load balancers and Kubernetes endpoints stop sending before it stops
    /// accepting (a few seconds in Kubernetes; 0 stops at once).
    pub shutdown_delay_secs: u64,
    /// Connections are asked to reconnect (HTTP/2 GOAWAY) after this long, so the
    /// long-lived connections of gRPC clients spread over new replicas; 0: never.
    pub max_connection_age_secs: u64,
    /// Largest request message accepted; larger ones fail with OUT_OF_RANGE (tonic's code for it).
    pub max_message_bytes: usize,
    /// Serve without TLS on a non-loopback address (e.g. behind a mesh that
    /// terminates mTLS). Loopback addresses may always be plaintext.
    pub allow_plaintext: bool,
    pub tls: TlsConfig,
}

/// TLS of the gRPC server, from PEM files. Empty paths mean plaintext.
#[derive(Debug, Clone, Deserialize)]
pub struct TlsConfig {
    /// Server certificate chain.
    pub cert_path: String,
    /// Private key of the certificate.
    pub key_path: String,
    /// CA that client certificates must chain to; when set, clients must present one (mTLS).
    pub client_ca_path: String,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert_path.is_empty()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseConfig {
    /// `postgres://...` or `sqlite://...`; empty means a SQLite file per service under `data_dir`.
    pub url: String,
    pub data_dir: String,
    pub max_connections: u32,
    /// PostgreSQL schema for the service's tables; empty means the service name.
    pub schema: String,
    /// Apply pending migrations at start-up; when false, start-up fails while any is
    /// pending (production runs `<service> migrate` as a deployment hook instead).
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisConfig {
    /// `redis://host:port/db`; empty means the in-process cache.
    pub url: String,
    pub key_prefix: String,
    /// A Redis call slower than this counts as a miss.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CacheConfig {
    pub ttl_secs: u64,
    pub max_entries: u64,
    /// Use the in-process cache with PostgreSQL and no Redis: only safe for a single replica.
    pub allow_local_with_postgres: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthConfig {
    /// HS256 shared secret (development). Mutually exclusive with `public_key_path`.
    pub jwt_secret: String,
    /// PEM public key for RS256 / ES256 tokens (production).
    pub public_key_path: String,
    /// `HS256`, `RS256` or `ES256`.
    pub algorithm: String,
    /// Required `iss` claim, when set.
    pub issuer: String,
    /// Required `aud` claim, when set.
    pub audience: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FeedConfig {
    /// Events older than this are purged; 0 keeps them forever.
    pub retention_days: u32,
    /// How often a tailing stream looks for events committed by other replicas.
    pub poll_interval_ms: u64,
    /// Idle streams send a heartbeat this often.
    pub heartbeat_secs: u64,
    /// Events read from the database per query.
    pub batch_size: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PagingConfig {
    /// Key that signs page tokens; empty derives one from the auth key material.
    pub token_secret: String,
}

/// Why configuration could not be loaded. The message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Source(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Checks the address of another service at configuration key `key`: empty (not
/// configured), or an `http://` or `https://` URL.
pub fn check_service_url(key: &str, url: &str) -> Result<(), ConfigError> {
    if url.is_empty() || url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(ConfigError::invalid(key, "empty, or starting with http:// or https://"))
    }
}

/// Loads the layered configuration: `defaults` (TOML documents, applied in order),
/// then `file` if given, then `CRM__*` environment variables (`CRM__DATABASE__URL`
/// sets `database.url`). Read sections out of it with [`section`].
pub fn load(defaults: &[&str], file: Option<&Path>) -> Result<serde_json::Value, ConfigError> {
    let mut builder = config::Config::builder();
    for layer in defaults {
        builder = builder.add_source(config::File::from_str(layer, config::FileFormat::Toml));
    }
    if let Some(path) = file {
        builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml).required(true));
    }
    builder = builder.add_source(
        config::Environment::with_prefix("CRM")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true),
    );
    Ok(builder.build()?.try_deserialize()?)
}

/// Deserializes the section `key` (or the whole document for `None`), naming the
/// failing key's dotted path in the error.
pub fn section<T: DeserializeOwned>(value: &serde_json::Value, key: Option<&str>) -> Result<T, ConfigError> {
    let part = match key {
        Some(k) => value
            .get(k)
            .cloned()
            .ok_or_else(|| ConfigError::invalid(k, "section missing"))?,
        None => value.clone(),
    };
    serde_path_to_error::deserialize(part).map_err(|err| {
        let path = err.path().to_string();
        let full = match (key, path.as_str()) {
            (Some(k), ".") => k.to_owned(),
            (Some(k), p) => format!("{k}.{p}"),
            (None, p) => p.to_owned(),
        };
        ConfigError::invalid(full, err.into_inner().to_string())
    })
}

impl PlatformConfig {
    /// The shared sections of a loaded document ([`load`]), validated.
    pub fn from_document(doc: &serde_json::Value) -> Result<Self, ConfigError> {
        let cfg: Self = section(doc, None)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the rules serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.request_timeout_secs == 0 {
            return Err(ConfigError::invalid("server.request_timeout_secs", "must be at least 1"));
        }
        if self.server.shutdown_delay_secs > 300 {
            return Err(ConfigError::invalid("server.shutdown_delay_secs", "at most 300"));
        }
        if self.server.concurrency_limit == 0 {
            return Err(ConfigError::invalid("server.concurrency_limit", "must be at least 1"));
        }
        let tls = &self.server.tls;
        if tls.cert_path.is_empty() != tls.key_path.is_empty() {
            return Err(ConfigError::invalid(
                "server.tls",
                "set both cert_path and key_path, or neither",
            ));
        }
        if !tls.client_ca_path.is_empty() && !tls.enabled() {
            return Err(ConfigError::invalid(
                "server.tls.client_ca_path",
                "mTLS needs server.tls.cert_path and key_path too",
            ));
        }
        if !tls.enabled() && !self.server.allow_plaintext && !self.server.listen.ip().is_loopback() {
            return Err(ConfigError::invalid(
                "server.tls",
                format!(
                    "{} is not a loopback address: configure server.tls.cert_path and key_path, or set server.allow_plaintext = true when a proxy or mesh provides TLS",
                    self.server.listen
                ),
            ));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::invalid("database.max_connections", "must be at least 1"));
        }
        let url = &self.database.url;
        if !(url.is_empty() || url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite:")) {
            return Err(ConfigError::invalid(
                "database.url",
                "must start with postgres://, postgresql:// or sqlite: (or be empty for the embedded SQLite files)",
            ));
        }
        let redis = &self.redis.url;
        if !(redis.is_empty() || redis.starts_with("redis://") || redis.starts_with("rediss://")) {
            return Err(ConfigError::invalid(
                "redis.url",
                "must start with redis:// or rediss:// (or be empty)",
            ));
        }
        if self.feed.poll_interval_ms == 0 || self.feed.heartbeat_secs == 0 || self.feed.batch_size == 0 {
            return Err(ConfigError::invalid(
                "feed",
                "poll_interval_ms, heartbeat_secs and batch_size must be at least 1",
            ));
        }
        if self.feed.retention_days > 36_500 {
            return Err(ConfigError::invalid(
                "feed.retention_days",
                "at most 36500 (0 keeps events forever)",
            ));
        }
        if self.cache.max_entries == 0 {
            return Err(ConfigError::invalid("cache.max_entries", "must be at least 1"));
        }
        self.metrics.address()?;
        self.permissions.validate()?;
        crate::auth::validate_config(&self.auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(file: Option<&Path>) -> Result<PlatformConfig, ConfigError> {
        section(&load(&[PLATFORM_DEFAULTS], file)?, None)
    }

    #[test]
    fn defaults_parse_and_file_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("crm.toml");
        std::fs::write(&file, "[server]\nlisten = \"0.0.0.0:6000\"\n").unwrap();
        let cfg = platform(Some(&file)).unwrap();
        assert_eq!(cfg.server.listen.port(), 6000);
        assert_eq!(cfg.server.request_timeout_secs, 30);
        assert_eq!(cfg.permissions.decision_cache_secs, 10);
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("crm.toml");
        std::fs::write(&file, "[server]\nconcurrency_limit = \"lots\"\n").unwrap();
        let err = platform(Some(&file)).unwrap_err();
        assert!(err.to_string().contains("server.concurrency_limit"), "{err}");
        std::fs::write(&file, "[server]\nlisten = \"not an address\"\n").unwrap();
        let err = platform(Some(&file)).unwrap_err();
        assert!(err.to_string().contains("server.listen"), "{err}");
        let value = load(&[PLATFORM_DEFAULTS, "[svc]\nregion = 5\n"], None).unwrap();
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Svc {
            region: String,
        }
        let err = section::<Svc>(&value, Some("svc")).unwrap_err();
        assert!(err.to_string().contains("svc.region"), "{err}");
    }

    #[test]
    fn plaintext_only_on_loopback_unless_allowed() {
        let mut cfg = platform(None).unwrap();
        cfg.auth.jwt_secret = "a-secret-of-at-least-32-bytes-long!!".into();
        assert!(cfg.validate().is_ok(), "127.0.0.1 may be plaintext");
        cfg.server.listen = "0.0.0.0:50051".parse().unwrap();
        assert!(cfg.validate().unwrap_err().to_string().contains("server.tls"));
        cfg.server.allow_plaintext = true;
        assert!(cfg.validate().is_ok());
        cfg.server.allow_plaintext = false;
        cfg.server.tls.cert_path = "/etc/crm/tls.crt".into();
        assert!(cfg.validate().unwrap_err().to_string().contains("key_path"));
        cfg.server.tls.key_path = "/etc/crm/tls.key".into();
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn validate_rejects_unknown_database_scheme() {
        let mut cfg = platform(None).unwrap();
        cfg.auth.jwt_secret = "a-secret-of-at-least-32-bytes-long!!".into();
        cfg.database.url = "mysql://x".into();
        let err = cfg.validate().unwrap_err();
        assert!(err.to_string().contains("database.url"), "{err}");
    }
}
