//! `analytics`: the service alone, for containers.

use clap::Parser;
use crm_platform::cli::{Command, ServiceCli};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = ServiceCli::parse();
    let cfg = crm_analytics::Config::load(cli.config.as_deref())?;
    let _telemetry = crm_platform::telemetry::init(crm_analytics::SERVICE, &cfg.platform.log, &cfg.platform.metrics)?;
    match cli.command.unwrap_or_default() {
        Command::Check => {
            println!("{}: configuration is valid", crm_analytics::SERVICE);
            Ok(())
        }
        Command::Serve => crm_analytics::run(cfg).await,
        Command::Migrate => {
            let (_shutdown, signal) = crm_platform::server::shutdown_channel();
            let platform = crm_platform::Platform::new(cfg.platform, signal)?;
            let applied = crm_analytics::migrate(&platform).await?;
            println!("{}: applied migrations {applied:?}", crm_analytics::SERVICE);
            Ok(())
        }
    }
}
