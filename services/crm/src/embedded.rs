//! An in-process customer-profile for one-command tools (`crm bench import`,
//! `crm eval-dedup`): on a temporary SQLite file, or in a fresh schema of a
//! PostgreSQL database that is dropped afterwards. Calls go through real gRPC on a
//! loopback port.

use crm_platform::{
    Platform,
    server::{GrpcServer, Shutdown, shutdown_channel},
};
use crm_proto::crm::customer::v1::customer_profile_service_client::CustomerProfileServiceClient;
use sea_orm::ConnectionTrait;
use tonic::transport::Channel;

/// Where a one-command tool keeps its data: a temporary SQLite directory, or a fresh
/// schema of a PostgreSQL database, dropped by [`Scratch::drop`].
pub struct Scratch {
    pub backend: &'static str,
    _dir: Option<tempfile::TempDir>,
    schema: Option<(String, String)>,
}

impl Scratch {
    /// Points `platform` at new scratch storage; `database_url` selects PostgreSQL.
    pub fn new(platform: &mut crm_platform::config::PlatformConfig, database_url: Option<&str>) -> anyhow::Result<Self> {
        let mut dir = None;
        let mut schema = None;
        match database_url {
            Some(url) => {
                let name = format!("tool_{}", uuid::Uuid::new_v4().simple());
                platform.database.url = url.to_owned();
                platform.database.schema = name.clone();
                platform.cache.allow_local_with_postgres = true;
                schema = Some((url.to_owned(), name));
            }
            None => {
                let d = tempfile::tempdir()?;
                platform.database.url = String::new();
                platform.database.data_dir = d.path().display().to_string();
                dir = Some(d);
            }
        }
        platform.redis.url = String::new();
        Ok(Self {
            backend: if database_url.is_some() { "postgresql" } else { "sqlite" },
            _dir: dir,
            schema,
        })
    }

    /// Drops the PostgreSQL schemas: the scratch one, and one per named service
    /// hosted alongside (`<scratch>_<service>`).
    pub async fn drop(self, services: &[&str]) -> anyhow::Result<()> {
        if let Some((url, schema)) = &self.schema {
            let db = sea_orm::Database::connect(url.as_str()).await?;
            let mut schemas = vec![schema.clone()];
            schemas.extend(services.iter().map(|s| format!("{schema}_{}", s.replace('-', "_"))));
            for own in schemas {
                db.execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{own}\" CASCADE"))
                    .await?;
            }
        }
        Ok(())
    }
}

pub struct Embedded {
    pub client: CustomerProfileServiceClient<Channel>,
    /// The connection, for the other services hosted alongside.
    pub channel: Channel,
    pub backend: &'static str,
    shutdown: Shutdown,
    scratch: Scratch,
}

impl Embedded {
    /// Starts the service; `database_url` selects PostgreSQL, else a temporary SQLite.
    pub async fn start(cfg: &crate::Config, database_url: Option<&str>) -> anyhow::Result<Self> {
        let mut platform = cfg.platform.clone();
        let scratch = Scratch::new(&mut platform, database_url)?;
        platform.server.listen = "127.0.0.1:0".parse()?;
        let (shutdown, signal) = shutdown_channel();
        let platform = Platform::new(platform, signal.clone())?;
        let mut server = GrpcServer::new(platform.config.server.clone());
        let platform = crate::host_suite(platform, cfg, &mut server).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(server.serve(listener, signal));
        let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
        let client = CustomerProfileServiceClient::new(channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(platform.config.server.max_message_bytes);
        Ok(Self {
            client,
            channel,
            backend: scratch.backend,
            shutdown,
            scratch,
        })
    }

    /// Stops the service and drops the PostgreSQL schema, if any.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        // Each hosted service has its own schema under the scratch name.
        self.scratch
            .drop(&[
                crm_permissions::SERVICE,
                crm_customer_profile::SERVICE,
                // customer-profile's key store, beside its schema.
                &format!("{}-keys", crm_customer_profile::SERVICE),
                crm_ticketing::SERVICE,
            ])
            .await
    }
}
