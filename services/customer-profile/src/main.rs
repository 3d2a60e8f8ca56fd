//! `customer-profile`: the customer-profile service alone, for containers.

use clap::Parser;
use crm_platform::cli::{Command, ServiceCli};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = ServiceCli::parse();
    let cfg = crm_customer_profile::Config::load(cli.config.as_deref())?;
    let _telemetry = crm_platform::telemetry::init(crm_customer_profile::SERVICE, &cfg.platform.log, &cfg.platform.metrics)?;
    match cli.command.unwrap_or_default() {
        Command::Check => {
            crm_platform::crypto::Keyring::from_config(&cfg.platform.encryption)?;
            println!("{}: configuration is valid", crm_customer_profile::SERVICE);
            Ok(())
        }
        Command::Serve => crm_customer_profile::run(cfg).await,
        Command::Migrate => {
            let (_shutdown, signal) = crm_platform::server::shutdown_channel();
            let platform = crm_platform::Platform::new(cfg.platform, signal)?;
            let applied = crm_customer_profile::migrate(&platform, &cfg.customer_profile).await?;
            println!("{}: applied migrations {applied:?}", crm_customer_profile::SERVICE);
            Ok(())
        }
    }
}
