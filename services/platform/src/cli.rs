//! Command line shared by the per-service binaries: `<service> [--config FILE] [serve|migrate]`.

use std::path::PathBuf;

#[derive(Debug, clap::Parser)]
#[command(
    version,
    about = "A CRM service. Configuration: defaults, then --config FILE, then CRM__SECTION__KEY environment variables."
)]
pub struct ServiceCli {
    /// TOML configuration file.
    #[arg(long, global = true, env = "CRM_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, Default, clap::Subcommand)]
pub enum Command {
    /// Serve gRPC (the default).
    #[default]
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Load and validate the configuration, then exit (0 when it is valid).
    Check,
}
