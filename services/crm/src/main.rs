//! `crm`: every CRM service in one process (`crm serve`), plus operator commands
//! (`crm migrate`, `crm token`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

mod backup;
mod bench;
mod bench_analytics;
mod bench_campaigns;
mod bench_interactions;
mod bench_permissions;
mod bench_segments;
mod bench_sla;
mod embedded;
mod eval;
mod eval_analytics;
mod eval_attribution;
mod eval_send_time;
mod import;
mod python;
mod report;
mod seed;

use clap::{Parser, Subcommand};
use crm_platform::{
    Platform,
    auth::{Principal, mint_hs256},
    config::{ConfigError, PLATFORM_DEFAULTS, PlatformConfig},
    server::{GrpcServer, bind, shutdown_channel},
};

/// Development defaults of the all-in-one binary: a well-known HS256 secret so
/// `crm serve` and `crm token` work with no setup. Never use it in production:
/// the per-service binaries have no default key and refuse to start without one.
const DEV_SECRET: &str = "crm-dev-secret-not-for-production-use";

const DEV_DEFAULTS: &str = r#"
[auth]
jwt_secret = "crm-dev-secret-not-for-production-use"

[permissions_service]
# The users `crm serve` prints a token for and the operator commands (bench,
# import, eval-dedup) act as.
bootstrap_admins = ["dev", "bench", "import", "eval"]
# ticketing reads customer tiers, customer-profile counts open tickets, segmentation
# follows customer-profile's feed, analytics follows the three, each with its own account.
service_accounts = ["ticketing", "customer-profile", "marketing-segmentation", "analytics"]
campaign_senders = ["marketing-segmentation"]
# customer-profile gathers segments and scores for data-subject exports.
data_exporters = ["customer-profile"]

[segmentation.tracking]
# Campaign links (opens, clicks, unsubscribes) point here.
listen = "127.0.0.1:8090"

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
    /// Copy every service's embedded database into a new directory, consistently and
    /// while `crm serve` runs, with a manifest of checksums (PostgreSQL: see the README).
    Backup {
        /// The new backup directory.
        #[arg(long)]
        out: PathBuf,
        /// Back up the key stores (the customers' data keys) instead of the data: keep
        /// them apart from data backups and only briefly (an erased customer's key
        /// lives on in them until they expire).
        #[arg(long)]
        keys: bool,
        /// Directory of the SQLite files (database.data_dir), default ./data.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Replace the embedded databases with a backup, after checking its checksums.
    /// Stop `crm serve` first. A key-store backup (`crm backup --keys`) is merged into
    /// the live key store instead: an erasure since the backup stays in force.
    Restore {
        /// The backup directory.
        #[arg(long)]
        from: PathBuf,
        /// Directory of the SQLite files (database.data_dir), default ./data.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Replace existing databases.
        #[arg(long)]
        force: bool,
    },
    /// Load a running suite and print a JSON report (throughput, latency percentiles);
    /// `crm bench import` measures bulk import with duplicate detection instead.
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(subcommand)]
        kind: Option<BenchKind>,
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
    /// Write synthetic customers (CSV or JSON lines, by the file extension; stdout as
    /// CSV without --out) with a controlled share of noisy duplicates and missing fields.
    Seed {
        /// Number of rows.
        #[arg(long, default_value_t = 1000)]
        customers: usize,
        /// Share of rows that are noisy duplicates of an earlier customer.
        #[arg(long, default_value_t = 0.05)]
        duplicates: f64,
        /// Chance that each optional field is missing.
        #[arg(long, default_value_t = 0.1)]
        missing: f64,
        /// Random seed (same seed, same rows).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Output file (.csv or .jsonl); also writes FILE.mapping.toml for `crm import`.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Import a CSV or JSON-lines file through ImportCustomers, with a progress bar and
    /// a summary. Re-running with the same --job resumes it (rows already processed are
    /// skipped).
    Import {
        /// The .csv or .jsonl file.
        file: PathBuf,
        /// The mapping file (TOML: source, channel, [[mapping]] column/field).
        #[arg(long)]
        mapping: PathBuf,
        /// Address of the suite.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        /// Import job id (default: from the file name and a digest of its content, so running
        /// the same file again resumes its job and a changed file starts a new one).
        #[arg(long)]
        job: Option<String>,
        /// Rows per message.
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
    /// Render an analytics report from the suite: a table, CSV, or an SVG chart.
    Report {
        name: report::Name,
        /// Start of the period: a date (2026-03-01, midnight UTC) or an RFC 3339 time.
        #[arg(long)]
        from: String,
        /// End of the period (exclusive), likewise.
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value = "table")]
        format: report::Format,
        /// day, week or month (default: the report's own).
        #[arg(long)]
        granularity: Option<String>,
        /// funnel: source-channel; service: category, queue, channel; marketing: campaign.
        #[arg(long)]
        group_by: Option<String>,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Address of the suite (or of the analytics service).
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        target: String,
        /// Bearer token (default: one minted for `dev` with the configured HS256 secret).
        #[arg(long, env = "CRM_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Compare the data-driven (Markov) attribution model with the PyPI package
    /// ChannelAttribution on the same generated journeys (install it with
    /// `bash .ci/attribution.sh`, which prints the Python to pass); prints a JSON
    /// report and fails when a channel's share differs by more than the tolerance.
    EvalAttribution {
        /// A Python with ChannelAttribution installed.
        #[arg(long, env = "CRM_ATTRIBUTION_PYTHON")]
        python: PathBuf,
        /// Customers (journeys) generated.
        #[arg(long, default_value_t = 20_000)]
        customers: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Largest allowed difference of a channel's conversion share.
        #[arg(long, default_value_t = 0.01)]
        tolerance: f64,
        /// Also write the generated paths (ChannelAttribution's input, as CSV) here.
        #[arg(long)]
        paths: Option<PathBuf>,
    },
    /// Compare the analytics models with their PyPI references: BG/NBD and Gamma-Gamma
    /// on CDNOW against `lifetimes` (published parameters within 1 %, each customer's
    /// predictions within the tolerance), FP-Growth rules on generated baskets against
    /// `mlxtend` (identical rule sets). Prints a JSON report; fails on a mismatch.
    EvalAnalytics {
        /// A Python with lifetimes and mlxtend installed (`.ci/analytics.sh` prints one).
        #[arg(long, env = "CRM_ANALYTICS_PYTHON")]
        python: PathBuf,
        /// Largest relative difference of a customer's prediction.
        #[arg(long, default_value_t = 1e-3)]
        tolerance: f64,
        /// Generated baskets for the rules.
        #[arg(long, default_value_t = 20_000)]
        baskets: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Evaluate send-time optimisation on generated customers with a planted
    /// favourite hour: prints the expected open rate of the optimised send times
    /// against fixed ones, as JSON.
    EvalSendTime {
        #[arg(long, default_value_t = 100_000)]
        customers: usize,
        /// Past messages per customer.
        #[arg(long, default_value_t = 20)]
        history: usize,
        /// The prior's weight, in engagements (segmentation.campaigns.send_time_prior_weight).
        #[arg(long, default_value_t = 10.0)]
        prior_weight: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Evaluate duplicate detection on a Febrl dataset (fetch it first with
    /// `bash .ci/febrl.sh`): imports the records through the real import path into a
    /// temporary service and prints precision, recall and F1 of the declared pairs.
    EvalDedup {
        /// febrl1, febrl2, febrl3 or febrl4.
        #[arg(long)]
        dataset: String,
        /// Where .ci/febrl.sh put the files.
        #[arg(long, env = "CRM_FEBRL_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Print a bearer token signed with the configured HS256 secret (development).
    Token {
        /// User id (`sub` claim).
        #[arg(long, default_value = "dev")]
        user: String,
        /// Customer id for a self-service token (confined to that customer).
        #[arg(long)]
        customer: Option<String>,
        /// Lifetime in hours.
        #[arg(long, default_value_t = 24)]
        ttl_hours: u64,
    },
}

#[derive(Debug, Subcommand)]
enum BenchKind {
    /// Import `crm seed` rows into an in-process service (temporary SQLite, or a
    /// scratch schema of --database-url) and print rows/s as JSON.
    Import {
        /// Rows to import.
        #[arg(long, default_value_t = 100_000)]
        customers: usize,
        /// Share of noisy duplicates in the rows.
        #[arg(long, default_value_t = 0.05)]
        duplicates: f64,
        /// PostgreSQL URL; a scratch schema is created and dropped. SQLite when absent.
        #[arg(long)]
        database_url: Option<String>,
        /// Rows per message.
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
    /// Escalation lag of the SLA scheduler over open tickets with mixed policies
    /// (temporary SQLite, or a scratch schema of --database-url); prints JSON.
    Sla {
        /// Open tickets.
        #[arg(long, default_value_t = 100_000)]
        tickets: usize,
        /// Seconds over which the tickets are opened (their points fall due in and
        /// after it).
        #[arg(long, default_value_t = 600)]
        window_secs: u64,
        /// PostgreSQL URL; a scratch schema is created and dropped. SQLite when absent.
        #[arg(long)]
        database_url: Option<String>,
        /// Concurrent ticket creators during set-up (PostgreSQL only).
        #[arg(long, default_value_t = 8)]
        writers: usize,
    },
    /// marketing-segmentation at scale: fills its projection (temporary SQLite, or a
    /// scratch schema of --database-url) with generated customers, orders and
    /// interactions, then times the full RFM computation, PreviewSegment of a
    /// five-condition rule, the segment's full evaluation, and order events applied
    /// through to their membership event; prints JSON.
    Segments {
        /// Customers.
        #[arg(long, default_value_t = 1_000_000)]
        customers: usize,
        /// Orders, spread over the customers and the last two years.
        #[arg(long, default_value_t = 10_000_000)]
        orders: usize,
        /// Interactions, spread over the customers and the last 180 days.
        #[arg(long, default_value_t = 20_000_000)]
        interactions: usize,
        /// PreviewSegment runs.
        #[arg(long, default_value_t = 20)]
        previews: usize,
        /// Order events applied for the incremental lag.
        #[arg(long, default_value_t = 500)]
        events: usize,
        /// PostgreSQL URL; a scratch schema is created and dropped. SQLite when absent.
        #[arg(long)]
        database_url: Option<String>,
        /// Keep the scratch schema (to inspect query plans).
        #[arg(long)]
        keep: bool,
    },
    /// The analytics models and reports at scale (temporary SQLite, or a scratch
    /// schema of --database-url): purchase summaries, the BG/NBD + Gamma-Gamma fit,
    /// scoring throughput, FP-Growth over the baskets, the funnel report's latency;
    /// with --python, the CDNOW fit against `lifetimes`. Prints JSON.
    Analytics {
        #[arg(long, default_value_t = 1_000_000)]
        customers: usize,
        /// Orders, spread over the customers and the last two years.
        #[arg(long, default_value_t = 10_000_000)]
        orders: usize,
        /// The last this many orders carry lines (the baskets of the rules).
        #[arg(long, default_value_t = 1_000_000)]
        baskets: usize,
        /// Funnel report runs.
        #[arg(long, default_value_t = 20)]
        reports: usize,
        /// PostgreSQL URL; a scratch schema is created and dropped. SQLite when absent.
        #[arg(long)]
        database_url: Option<String>,
        /// A Python with lifetimes installed (`.ci/analytics.sh`), for the CDNOW comparison.
        #[arg(long)]
        python: Option<PathBuf>,
        /// Keep the scratch schema.
        #[arg(long)]
        keep: bool,
    },
    /// A campaign to many recipients (temporary SQLite, or a scratch schema of
    /// --database-url): the audience queued by the real scheduler, then sent by the
    /// real dispatchers through an HTTP provider stub in this process; prints the
    /// time to queue, sends per second and the process's memory as JSON.
    Campaigns {
        /// Recipients (customers in the segment; 95 % consented to SMS).
        #[arg(long, default_value_t = 1_000_000)]
        recipients: usize,
        /// Dispatchers running side by side (as replicas would).
        #[arg(long, default_value_t = 2)]
        dispatchers: usize,
        /// Deliveries claimed per batch.
        #[arg(long, default_value_t = 1000)]
        batch_size: usize,
        /// Requests in flight to the provider per dispatcher.
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
        /// PostgreSQL URL; a scratch schema is created and dropped. SQLite when absent.
        #[arg(long)]
        database_url: Option<String>,
        /// Keep the scratch schema.
        #[arg(long)]
        keep: bool,
    },
    /// Interaction ingest through RecordInteractions streams into an in-process
    /// customer-profile (temporary SQLite, or a scratch schema of --database-url);
    /// prints rows/s and batch acknowledgement latency as JSON.
    Interactions {
        /// Interactions to record.
        #[arg(long, default_value_t = 200_000)]
        interactions: usize,
        /// Customers they are spread over.
        #[arg(long, default_value_t = 1_000)]
        customers: usize,
        /// Interactions per batch (at most 1000).
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        /// Concurrent streams.
        #[arg(long, default_value_t = 4)]
        streams: usize,
        /// PostgreSQL URL; a scratch schema is created and dropped. SQLite when absent.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Check and BatchCheck(100) latency, cold and warm, against an in-process
    /// permissions service seeded with users, teams and role bindings; prints JSON.
    Permissions {
        /// Users, each in one team with one role binding.
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        /// Teams, in a tree of fan-out 10.
        #[arg(long, default_value_t = 1_000)]
        teams: usize,
        /// Customer records (owner and team) the checks are drawn from.
        #[arg(long, default_value_t = 1_000_000)]
        customers: usize,
        /// PostgreSQL URL; a scratch schema is created and dropped. SQLite when absent.
        #[arg(long)]
        database_url: Option<String>,
        /// Concurrent closed-loop clients.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Seconds per warm phase.
        #[arg(long, default_value_t = 5)]
        duration_secs: u64,
    },
}

#[derive(Debug, Clone)]
struct Config {
    platform: PlatformConfig,
    customer_profile: crm_customer_profile::ServiceConfig,
    permissions_service: crm_permissions::ServiceConfig,
    ticketing: crm_ticketing::ServiceConfig,
    segmentation: crm_segmentation::ServiceConfig,
    analytics: crm_analytics::ServiceConfig,
}

fn load(file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
    let doc = crm_platform::config::load(
        &[
            PLATFORM_DEFAULTS,
            crm_permissions::DEFAULTS,
            crm_customer_profile::DEFAULTS,
            crm_ticketing::DEFAULTS,
            crm_segmentation::DEFAULTS,
            crm_analytics::DEFAULTS,
            // Last: they override the services' defaults.
            DEV_DEFAULTS,
        ],
        file,
    )?;
    Ok(Config {
        platform: PlatformConfig::from_document(&doc)?,
        customer_profile: crm_customer_profile::ServiceConfig::from_document(&doc)?,
        permissions_service: crm_permissions::ServiceConfig::from_document(&doc)?,
        ticketing: crm_ticketing::ServiceConfig::from_document(&doc)?,
        segmentation: crm_segmentation::ServiceConfig::from_document(&doc)?,
        analytics: crm_analytics::ServiceConfig::from_document(&doc)?,
    })
}

/// In one process, the services that call each other (ticketing reads customer
/// tiers; customer-profile's 360 view asks ticketing, segmentation and analytics;
/// segmentation and analytics follow the others' feeds) do so through the server's
/// own address `bound` (plaintext servers).
fn point_services_at_each_other(cfg: &mut Config, bound: std::net::SocketAddr) {
    if cfg.platform.server.tls.enabled() {
        return;
    }
    let host = if bound.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        bound.ip()
    };
    let own = format!("http://{}", std::net::SocketAddr::new(host, bound.port()));
    if cfg.ticketing.customer_profile_url.is_empty() {
        cfg.ticketing.customer_profile_url.clone_from(&own);
    }
    if cfg.segmentation.customer_profile_url.is_empty() {
        cfg.segmentation.customer_profile_url.clone_from(&own);
    }
    if cfg.segmentation.analytics_url.is_empty() {
        cfg.segmentation.analytics_url.clone_from(&own);
    }
    let analytics = &mut cfg.analytics;
    for url in [
        &mut analytics.customer_profile_url,
        &mut analytics.ticketing_url,
        &mut analytics.segmentation_url,
    ] {
        if url.is_empty() {
            url.clone_from(&own);
        }
    }
    let sections = &mut cfg.customer_profile.sections;
    for url in [
        &mut sections.ticketing_url,
        &mut sections.segmentation_url,
        &mut sections.analytics_url,
    ] {
        if url.is_empty() {
            url.clone_from(&own);
        }
    }
}

/// Every service of the suite on one server, the permissions service answering
/// the others in-process.
async fn host_suite(platform: Platform, cfg: &Config, server: &mut GrpcServer) -> anyhow::Result<Platform> {
    let platform = platform.hosting_several();
    let (permissions, decisions) = crm_permissions::build(&platform, &cfg.permissions_service).await?;
    let platform = platform.with_policy(crm_permissions::decision_point(&decisions));
    server.add_service(permissions).await;
    server
        .add_service(crm_customer_profile::build(&platform, &cfg.customer_profile).await?)
        .await
        .allow_long_running(crm_customer_profile::LONG_RUNNING);
    let (tickets, kb) = crm_ticketing::build(&platform, &cfg.ticketing).await?;
    server
        .add_service(tickets)
        .await
        .allow_long_running(crm_ticketing::LONG_RUNNING);
    server.add_service(kb).await;
    if cfg.segmentation.customer_profile_url.is_empty() {
        tracing::warn!(
            "marketing-segmentation not hosted: set segmentation.customer_profile_url (with TLS it cannot be derived)"
        );
    } else {
        let built = crm_segmentation::build(&platform, &cfg.segmentation).await?;
        server
            .add_service(built.segmentation)
            .await
            .allow_long_running(crm_segmentation::LONG_RUNNING);
        server.add_service(built.campaigns).await;
        server.add_service(built.journeys).await;
    }
    if cfg.analytics.customer_profile_url.is_empty() {
        tracing::warn!("analytics not hosted: set analytics.customer_profile_url (with TLS it cannot be derived)");
    } else {
        let built = crm_analytics::build(&platform, &cfg.analytics).await?;
        server
            .add_service(built.service)
            .await
            .allow_long_running(crm_analytics::LONG_RUNNING);
    }
    Ok(platform)
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
            let _telemetry = crm_platform::telemetry::init("crm", &cfg.platform.log, &cfg.platform.metrics)?;
            serve(cfg).await
        }
        Command::Backup { out, data_dir, keys } => {
            if let Some(dir) = data_dir {
                cfg.platform.database.data_dir = dir.display().to_string();
            }
            let manifest = backup::backup(&cfg.platform.database, &out, keys).await?;
            for f in &manifest.files {
                println!(
                    "{}: {} bytes, sha256 {}, schema {}",
                    f.file, f.bytes, f.sha256, f.schema_version
                );
            }
            println!("crm: backup written to {}", out.display());
            Ok(())
        }
        Command::Restore { from, data_dir, force } => {
            if let Some(dir) = data_dir {
                cfg.platform.database.data_dir = dir.display().to_string();
            }
            let restored = backup::restore(&cfg.platform.database, &from, force).await?;
            let manifest = &restored.manifest;
            if manifest.keys {
                println!(
                    "crm: merged {} data keys from {} (taken {}); keys erased since stay erased",
                    restored.merged_keys,
                    from.display(),
                    manifest.created
                );
            } else {
                println!(
                    "crm: restored {} databases from {} (taken {})",
                    manifest.files.len(),
                    from.display(),
                    manifest.created
                );
            }
            Ok(())
        }
        Command::Migrate => {
            let _telemetry = crm_platform::telemetry::init("crm", &cfg.platform.log, &Default::default())?;
            let (_shutdown, signal) = shutdown_channel();
            let platform = Platform::new(cfg.platform, signal)?.hosting_several();
            let applied = crm_permissions::migrate(&platform).await?;
            println!("{}: applied migrations {applied:?}", crm_permissions::SERVICE);
            let applied = crm_customer_profile::migrate(&platform, &cfg.customer_profile).await?;
            println!("{}: applied migrations {applied:?}", crm_customer_profile::SERVICE);
            let applied = crm_ticketing::migrate(&platform).await?;
            println!("{}: applied migrations {applied:?}", crm_ticketing::SERVICE);
            Ok(())
        }
        Command::Bench {
            kind:
                Some(BenchKind::Import {
                    customers,
                    duplicates,
                    database_url,
                    batch,
                }),
            ..
        } => bench_import(cfg, customers, duplicates, database_url.as_deref(), batch).await,
        Command::Bench {
            kind:
                Some(BenchKind::Permissions {
                    users,
                    teams,
                    customers,
                    database_url,
                    concurrency,
                    duration_secs,
                }),
            ..
        } => {
            let service = embedded::Embedded::start(&cfg, database_url.as_deref()).await?;
            let token = admin_token(&cfg.platform.auth.jwt_secret, "bench", Duration::from_secs(24 * 3600))?;
            let shape = bench_permissions::Shape {
                users,
                teams,
                customers,
                concurrency,
                duration: Duration::from_secs(duration_secs),
            };
            let report = bench_permissions::run(service.channel.clone(), &token, service.backend, shape).await;
            service.stop().await?;
            println!("{}", report?);
            Ok(())
        }
        Command::Bench {
            kind:
                Some(BenchKind::Segments {
                    customers,
                    orders,
                    interactions,
                    previews,
                    events,
                    database_url,
                    keep,
                }),
            ..
        } => {
            let shape = bench_segments::Shape {
                customers,
                orders,
                interactions,
                previews,
                events,
                keep,
            };
            println!("{}", bench_segments::run(&cfg, database_url.as_deref(), shape).await?);
            Ok(())
        }
        Command::Bench {
            kind:
                Some(BenchKind::Analytics {
                    customers,
                    orders,
                    baskets,
                    reports,
                    database_url,
                    python,
                    keep,
                }),
            ..
        } => {
            let shape = bench_analytics::Shape {
                customers,
                orders,
                baskets: baskets.min(orders),
                reports,
                keep,
            };
            println!(
                "{}",
                bench_analytics::run(&cfg, database_url.as_deref(), shape, python.as_deref()).await?
            );
            Ok(())
        }
        Command::Bench {
            kind:
                Some(BenchKind::Campaigns {
                    recipients,
                    dispatchers,
                    batch_size,
                    concurrency,
                    database_url,
                    keep,
                }),
            ..
        } => {
            let shape = bench_campaigns::Shape {
                recipients,
                dispatchers,
                batch_size,
                concurrency,
                keep,
            };
            println!("{}", bench_campaigns::run(&cfg, database_url.as_deref(), shape).await?);
            Ok(())
        }
        Command::Bench {
            kind:
                Some(BenchKind::Interactions {
                    interactions,
                    customers,
                    batch,
                    streams,
                    database_url,
                }),
            ..
        } => {
            let service = embedded::Embedded::start(&cfg, database_url.as_deref()).await?;
            let token = admin_token(&cfg.platform.auth.jwt_secret, "bench", Duration::from_secs(24 * 3600))?;
            let shape = bench_interactions::Shape {
                interactions,
                customers,
                batch,
                streams,
            };
            let report = bench_interactions::run(service.client.clone(), &token, service.backend, shape).await;
            service.stop().await?;
            println!("{}", report?);
            Ok(())
        }
        Command::Bench {
            kind:
                Some(BenchKind::Sla {
                    tickets,
                    window_secs,
                    database_url,
                    writers,
                }),
            ..
        } => {
            let shape = bench_sla::Shape {
                tickets,
                window: Duration::from_secs(window_secs),
                writers,
            };
            println!("{}", bench_sla::run(&cfg, database_url.as_deref(), shape).await?);
            Ok(())
        }
        Command::Seed {
            customers,
            duplicates,
            missing,
            seed,
            out,
        } => write_seed(
            &seed::Options {
                customers,
                duplicates,
                missing,
                seed,
            },
            out.as_deref(),
        ),
        Command::Import {
            file,
            mapping,
            target,
            job,
            batch,
        } => import_file(&cfg, &file, &mapping, &target, job, batch).await,
        Command::EvalAttribution {
            python,
            customers,
            seed,
            tolerance,
            paths,
        } => {
            let report = eval_attribution::run(&python, customers, seed, tolerance, paths.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Report {
            name,
            from,
            to,
            format,
            granularity,
            group_by,
            out,
            target,
            token,
        } => {
            let granularity = match granularity.as_deref() {
                None => crm_proto::crm::analytics::v1::Granularity::Unspecified,
                Some("day") => crm_proto::crm::analytics::v1::Granularity::Day,
                Some("week") => crm_proto::crm::analytics::v1::Granularity::Week,
                Some("month") => crm_proto::crm::analytics::v1::Granularity::Month,
                Some(other) => anyhow::bail!("--granularity {other}: day, week or month"),
            };
            let query = report::Query {
                from: report::parse_time(&from)?,
                to: report::parse_time(&to)?,
                granularity,
                group_by,
            };
            let token = match token {
                Some(t) => t,
                None => admin_token(&cfg.platform.auth.jwt_secret, "dev", Duration::from_secs(3600))?,
            };
            let fetched = report::fetch(&target, &token, name, &query).await?;
            let text = report::render(&fetched, format);
            match out {
                Some(path) => std::fs::write(&path, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(())
        }
        Command::EvalAnalytics {
            python,
            tolerance,
            baskets,
            seed,
        } => {
            let report = serde_json::json!({
                "lifetime_value": eval_analytics::clv(&python, tolerance)?,
                "association_rules": eval_analytics::association_rules(&python, baskets, seed)?,
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::EvalSendTime {
            customers,
            history,
            prior_weight,
            seed,
        } => {
            let report = eval_send_time::run(customers, history, prior_weight, seed);
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::EvalDedup { dataset, data_dir } => {
            let dir = match data_dir {
                Some(d) => d,
                None => eval::default_dir()?,
            };
            let report = eval::run(&cfg, &dataset, &dir, &cfg.platform.auth.jwt_secret).await?;
            println!("{report}");
            Ok(())
        }
        Command::Bench {
            kind: None,
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
            customer,
            ttl_hours,
        } => {
            anyhow::ensure!(
                !cfg.platform.auth.jwt_secret.is_empty(),
                "auth.jwt_secret is not set: tokens for RS256/ES256 keys come from your identity provider"
            );
            let principal = Principal {
                user_id: user,
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

/// The `authorization` metadata value for a bearer token.
fn bearer(token: &str) -> anyhow::Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| anyhow::anyhow!("the token is not a valid header value"))
}

/// `msg` as a request carrying `token` (see [`bearer`]).
fn authorized<T>(msg: T, token: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", token.clone());
    req
}

/// A token for `user`, signed with the HS256 `secret`; `crm serve` binds the
/// tools' users (dev, bench, import, eval) to the admin role at start.
fn admin_token(secret: &str, user: &str, ttl: Duration) -> crm_platform::Result<String> {
    let admin = Principal {
        user_id: user.into(),
        ..Principal::default()
    };
    mint_hs256(secret, &admin, ttl)
}

/// The seed rows as CSV, a header first, every column of [`seed::COLUMNS`].
fn write_seed_csv<W: std::io::Write>(mut w: csv::Writer<W>, rows: &[seed::Row]) -> anyhow::Result<()> {
    w.write_record(seed::COLUMNS)?;
    for r in rows {
        w.write_record(seed::COLUMNS.iter().map(|c| r.get(*c).map_or("", String::as_str)))?;
    }
    w.flush()?;
    Ok(())
}

fn write_seed(options: &seed::Options, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::io::Write;
    let rows = seed::generate(options);
    let Some(path) = out else {
        return write_seed_csv(csv::Writer::from_writer(std::io::stdout().lock()), &rows);
    };
    if path.extension().is_some_and(|e| e == "jsonl") {
        let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
        for r in &rows {
            serde_json::to_writer(&mut w, r)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
    } else {
        write_seed_csv(csv::Writer::from_path(path)?, &rows)?;
    }
    let mapping = path.with_extension("mapping.toml");
    let mut text = String::from("source = \"seed\"\nchannel = \"import\"\nkey_column = \"id\"\n");
    for (column, field) in seed::MAPPING {
        text.push_str(&format!("\n[[mapping]]\ncolumn = \"{column}\"\nfield = \"{field}\"\n"));
    }
    std::fs::write(&mapping, text)?;
    eprintln!(
        "crm seed: wrote {} rows to {} and the mapping to {}",
        rows.len(),
        path.display(),
        mapping.display()
    );
    Ok(())
}

/// `(row key, row)`: the key column's value, or the 1-based line number.
fn keyed(rows: Vec<import::Row>, key_column: Option<&str>) -> anyhow::Result<Vec<(String, import::Row)>> {
    rows.into_iter()
        .enumerate()
        .map(|(i, r)| {
            let key = match key_column {
                Some(c) => r
                    .get(c)
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("row {}: no value in key column `{c}`", i + 1))?,
                None => (i + 1).to_string(),
            };
            Ok((key, r))
        })
        .collect()
}

/// `import-<file stem>-<first 12 hex digits of the content's SHA-256>`.
fn default_job_id(file: &std::path::Path) -> anyhow::Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(file).map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
    let digest = sha2::Sha256::digest(&bytes);
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let slug: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let slug = slug.trim_matches('-');
    Ok(if slug.starts_with(|c: char| c.is_ascii_lowercase()) {
        format!("import-{slug}-{hex}")
    } else {
        format!("import-{hex}")
    })
}

async fn import_file(
    cfg: &Config,
    file: &std::path::Path,
    mapping: &std::path::Path,
    target: &str,
    job: Option<String>,
    batch: usize,
) -> anyhow::Result<()> {
    let m = import::MappingFile::load(mapping)?;
    let rows = keyed(import::read_rows(file)?, m.key_column.as_deref())?;
    let job_id = match job {
        Some(id) => id,
        None => default_job_id(file)?,
    };
    let spec = import::Spec {
        job_id,
        source: m.source.clone(),
        channel: import::channel(&m.channel)?,
        mapping: m.mapping.iter().map(|c| (c.column.clone(), c.field.clone())).collect(),
        batch,
    };
    let token = admin_token(&cfg.platform.auth.jwt_secret, "import", Duration::from_secs(24 * 3600))?;
    let channel = tonic::transport::Channel::from_shared(target.to_owned())?.connect().await?;
    let mut client = crm_proto::crm::customer::v1::customer_profile_service_client::CustomerProfileServiceClient::new(channel)
        .max_decoding_message_size(64 << 20);
    let (job, elapsed) = import::run(&mut client, &token, &spec, rows, true).await?;
    println!("{}", import::summary(&job, elapsed));
    for e in job.errors.iter().take(20) {
        let why: Vec<String> = e.errors.iter().map(|f| format!("{}: {}", f.field, f.description)).collect();
        println!("  row {} rejected: {}", e.row_key, why.join("; "));
    }
    Ok(())
}

async fn bench_import(
    cfg: Config,
    customers: usize,
    duplicates: f64,
    database_url: Option<&str>,
    batch: usize,
) -> anyhow::Result<()> {
    let rows = seed::generate(&seed::Options {
        customers,
        duplicates,
        missing: 0.1,
        seed: 42,
    });
    let rows = rows.into_iter().map(|r| (r["id"].clone(), r)).collect();
    let service = embedded::Embedded::start(&cfg, database_url).await?;
    let token = admin_token(&cfg.platform.auth.jwt_secret, "bench", Duration::from_secs(24 * 3600))?;
    let spec = import::Spec {
        job_id: "bench-import".into(),
        source: "seed".into(),
        channel: crm_proto::crm::common::v1::Channel::Import,
        mapping: seed::MAPPING
            .iter()
            .map(|(c, f)| ((*c).to_owned(), (*f).to_owned()))
            .collect(),
        batch,
    };
    let mut client = service.client.clone();
    let (job, elapsed) = import::run(&mut client, &token, &spec, rows, false).await?;
    let backend = service.backend;
    service.stop().await?;
    let secs = elapsed.as_secs_f64();
    println!(
        r#"{{"op":"import","backend":"{backend}","rows":{},"seconds":{secs:.2},"rows_per_s":{:.0},"created":{},"merged":{},"updated":{},"rejected":{},"batch":{batch}}}"#,
        job.rows_processed,
        job.rows_processed as f64 / secs.max(1e-9),
        job.created,
        job.merged,
        job.updated,
        job.rejected
    );
    Ok(())
}

async fn serve(mut cfg: Config) -> anyhow::Result<()> {
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
    // Bound first: the services reach each other at the address bound (port 0 too).
    let listener = bind(cfg.platform.server.listen).await?;
    let addr = listener.local_addr()?;
    point_services_at_each_other(&mut cfg, addr);
    let (shutdown, signal) = shutdown_channel();
    let platform = Platform::new(cfg.platform.clone(), signal.clone())?;
    let mut server = GrpcServer::new(platform.config.server.clone());
    server.metrics_endpoint(&platform.config.metrics)?;
    let platform = host_suite(platform, &cfg, &mut server).await?;
    println!("crm: serving permissions, customer-profile, ticketing, marketing-segmentation and analytics on {addr}");
    // The built-in secret is public: print a ready token for it (local development),
    // never for a secret the operator chose, whose tokens must not land in logs.
    if platform.config.auth.jwt_secret == DEV_SECRET {
        tracing::warn!(
            "using the built-in development JWT secret: set auth.jwt_secret (CRM__AUTH__JWT_SECRET) for anything but local use"
        );
        let token = admin_token(DEV_SECRET, "dev", Duration::from_secs(24 * 3600))?;
        println!("crm: development admin token (24 h): {token}");
    }
    server.stop_on_os_signal(shutdown);
    server.serve(listener, signal).await
}
