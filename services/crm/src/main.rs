//! `crm`: every CRM service in one process (`crm serve`), plus operator commands
//! (`crm migrate`, `crm token`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

mod bench;

use clap::{Parser, Subcommand};
use crm_platform::{
    Platform,
    auth::{Principal, mint_hs256},
    config::{ConfigError, PLATFORM_DEFAULTS, PlatformConfig},
    server::{GrpcServer, bind, os_signal, shutdown_channel},
};

/// Development defaults of the all-in-one binary: a well-known HS256 secret so
/// `crm serve` and `crm token` work with no setup. Never use it in production:
/// the per-service binaries have no default key and refuse to start without one.
const DEV_SECRET: &str = "crm-dev-secret-not-for-production-use";

const DEV_DEFAULTS: &str = r#"
[auth]
jwt_secret = "crm-dev-secret-not-for-production-use"

[encryption]
active_key = "dev"
blind_index_key = "Y3JtLWRldi1ibGluZC1pbmRleC1rZXktcHVibGljISE="

[encryption.keys]
dev = "Y3JtLWRldi1lbmNyeXB0aW9uLWtleS1pcy1wdWJsaWM="
"#;

/// The built-in development field-encryption key (public, like [`DEV_SECRET`]).
const DEV_ENCRYPTION_KEY: &str = "Y3JtLWRldi1lbmNyeXB0aW9uLWtleS1pcy1wdWJsaWM=";

#[derive(Debug, Parser)]
#[command(
    name = "crm",
    version,
    about = "The CRM customer-data platform: all services in one process, and operator commands."
)]
struct Cli {
    /// TOML configuration file (layered over the defaults; CRM__SECTION__KEY variables override it).
    #[arg(long, global = true, env = "CRM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve every service on one port (embedded SQLite under the data directory unless
    /// database.url is set; in-memory cache unless redis.url is set).
    Serve {
        /// Listen address (server.listen), default 127.0.0.1:50051.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Directory for the SQLite files (database.data_dir), default ./data.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Apply every service's pending database migrations and exit.
    Migrate,
    /// Load a running suite and print a JSON report (throughput, latency percentiles).
    Bench {
        /// Address of the suite.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        /// Concurrent closed-loop clients.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Seconds per phase (create, get, list).
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
    },
    /// Print a bearer token signed with the configured HS256 secret (development).
    Token {
        /// User id (`sub` claim).
        #[arg(long, default_value = "dev")]
        user: String,
        /// Comma-separated roles, e.g. admin or sales,agent.
        #[arg(long, value_delimiter = ',', default_value = "admin")]
        roles: Vec<String>,
        /// Comma-separated team ids.
        #[arg(long, value_delimiter = ',')]
        teams: Vec<String>,
        /// Customer id for a self-service token (confined to that customer).
        #[arg(long)]
        customer: Option<String>,
        /// Lifetime in hours.
        #[arg(long, default_value_t = 24)]
        ttl_hours: u64,
    },
}

#[derive(Debug, Clone)]
struct Config {
    platform: PlatformConfig,
    customer_profile: crm_customer_profile::ServiceConfig,
}

fn load(file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
    let doc = crm_platform::config::load(&[PLATFORM_DEFAULTS, DEV_DEFAULTS, crm_customer_profile::DEFAULTS], file)?;
    Ok(Config {
        platform: PlatformConfig::from_document(&doc)?,
        customer_profile: crm_customer_profile::ServiceConfig::from_document(&doc)?,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut cfg = load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve { listen, data_dir } => {
            if let Some(listen) = listen {
                cfg.platform.server.listen = listen;
            }
            if let Some(dir) = data_dir {
                cfg.platform.database.data_dir = dir.display().to_string();
            }
            let _telemetry = crm_platform::telemetry::init("crm", &cfg.platform.log)?;
            serve(cfg).await
        }
        Command::Migrate => {
            let _telemetry = crm_platform::telemetry::init("crm", &cfg.platform.log)?;
            let (_shutdown, signal) = shutdown_channel();
            let platform = Platform::new(cfg.platform, signal)?;
            let applied = crm_customer_profile::migrate(&platform).await?;
            println!("{}: applied migrations {applied:?}", crm_customer_profile::SERVICE);
            Ok(())
        }
        Command::Bench {
            target,
            concurrency,
            duration_secs,
        } => {
            let token = admin_token(&cfg.platform.auth.jwt_secret, "bench", Duration::from_secs(3600))?;
            let report = bench::run(bench::Options {
                target,
                token,
                concurrency,
                duration: Duration::from_secs(duration_secs),
            })
            .await?;
            println!("{report}");
            Ok(())
        }
        Command::Token {
            user,
            roles,
            teams,
            customer,
            ttl_hours,
        } => {
            anyhow::ensure!(
                !cfg.platform.auth.jwt_secret.is_empty(),
                "auth.jwt_secret is not set: tokens for RS256/ES256 keys come from your identity provider"
            );
            let principal = Principal {
                user_id: user,
                roles,
                team_ids: teams,
                customer_id: customer,
                expires_at: 0,
            };
            let token = mint_hs256(
                &cfg.platform.auth.jwt_secret,
                &principal,
                Duration::from_secs(ttl_hours * 3600),
            )?;
            println!("{token}");
            Ok(())
        }
    }
}

/// A token with the admin role, signed with the HS256 `secret`.
fn admin_token(secret: &str, user: &str, ttl: Duration) -> crm_platform::Result<String> {
    let admin = Principal {
        user_id: user.into(),
        roles: vec!["admin".into()],
        ..Principal::default()
    };
    mint_hs256(secret, &admin, ttl)
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    anyhow::ensure!(
        cfg.platform.auth.jwt_secret != DEV_SECRET || cfg.platform.server.listen.ip().is_loopback(),
        "configuration key `auth.jwt_secret`: the built-in development secret is public; it is only accepted on a loopback address, not {}",
        cfg.platform.server.listen
    );
    let dev_keys = cfg.platform.encryption.keys.values().any(|k| k == DEV_ENCRYPTION_KEY);
    anyhow::ensure!(
        !dev_keys || cfg.platform.server.listen.ip().is_loopback(),
        "configuration key `encryption.keys`: the built-in development key is public; it is only accepted on a loopback address, not {}",
        cfg.platform.server.listen
    );
    if dev_keys {
        tracing::warn!(
            "encrypting personal data with the built-in development key: set encryption.keys and encryption.blind_index_key for anything but local use"
        );
    }
    let (shutdown, signal) = shutdown_channel();
    let platform = Platform::new(cfg.platform, signal.clone())?;
    let mut server = GrpcServer::new(platform.config.server.clone());
    server
        .add_service(crm_customer_profile::build(&platform, &cfg.customer_profile).await?)
        .await
        .allow_long_running(crm_customer_profile::LONG_RUNNING);
    let listener = bind(platform.config.server.listen).await?;
    let addr = listener.local_addr()?;
    println!("crm: serving customer-profile on {addr}");
    // The built-in secret is public: print a ready token for it (local development),
    // never for a secret the operator chose, whose tokens must not land in logs.
    if platform.config.auth.jwt_secret == DEV_SECRET {
        tracing::warn!(
            "using the built-in development JWT secret: set auth.jwt_secret (CRM__AUTH__JWT_SECRET) for anything but local use"
        );
        let token = admin_token(DEV_SECRET, "dev", Duration::from_secs(24 * 3600))?;
        println!("crm: development admin token (24 h): {token}");
    }
    tokio::spawn(async move {
        os_signal().await;
        shutdown.trigger();
    });
    server.serve(listener, signal).await
}
