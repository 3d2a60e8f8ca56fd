//! Calls to customer-profile that must not be lost: campaign interactions (in
//! batches on `RecordInteractions`, idempotent by source and external id) and
//! consent withdrawals from unsubscribes (`UpdateConsent`, idempotent by request
//! id). Queued in this service's database in the transaction that caused them,
//! made by a background loop, removed once acknowledged, retried with backoff.

use std::time::Duration;

use crm_platform::{Result, authz::ServiceCredentials, db::begin_write, server::ShutdownSignal};
use crm_proto::crm::customer::v1::{self as cpb, customer_profile_service_client::CustomerProfileServiceClient};
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, TransactionTrait};
use tonic::transport::Channel;

use super::store;

/// An `InteractionInput`.
pub const INTERACTION: i32 = 1;
/// An `UpdateConsentRequest`.
pub const CONSENT: i32 = 2;

/// Calls per round.
const BATCH: usize = 1000;

/// Makes the queued calls.
#[derive(Clone)]
pub struct Forwarder {
    db: DatabaseConnection,
    client: CustomerProfileServiceClient<Channel>,
    credentials: ServiceCredentials,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

/// What became of one round.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub done: usize,
    pub failed: usize,
}

impl Forwarder {
    pub fn new(db: DatabaseConnection, channel: Channel, credentials: ServiceCredentials) -> Self {
        Self {
            db,
            client: CustomerProfileServiceClient::new(channel),
            credentials,
        }
    }

    /// Rounds until shutdown: at once while there is more, else every `idle`.
    pub async fn run(self, idle: Duration, mut shutdown: ShutdownSignal) {
        loop {
            let pause = match self.round().await {
                Ok(r) if r.done + r.failed >= BATCH => Duration::ZERO,
                Ok(_) => idle,
                Err(err) => {
                    tracing::warn!(%err, "forwarding to customer-profile failed; retrying");
                    idle.max(Duration::from_secs(1))
                }
            };
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One round: the due calls, made; acknowledged ones removed, failed ones due
    /// again later.
    pub async fn round(&self) -> Result<Round> {
        let now = chrono::Utc::now().timestamp_micros();
        // On PostgreSQL the rows stay locked while the calls are made, so another
        // replica skips them; SQLite has one process and one forwarder.
        let txn = if self.db.get_database_backend() == DbBackend::Postgres {
            Some(self.db.begin().await?)
        } else {
            None
        };
        let due = match &txn {
            Some(t) => store::due_forwards(t, now, BATCH).await?,
            None => store::due_forwards(&self.db, now, BATCH).await?,
        };
        let mut done = Vec::new();
        let mut failed = Vec::new();
        let (interactions, consents): (Vec<_>, Vec<_>) = due.into_iter().partition(|f| f.kind == INTERACTION);
        if !interactions.is_empty() {
            match self.interactions(&interactions).await {
                Ok(()) => done.extend(interactions.iter().map(|f| f.seq)),
                Err(err) => {
                    tracing::warn!(%err, n = interactions.len(), "recording campaign interactions failed; retrying");
                    failed.extend(interactions.iter().map(|f| (f.seq, f.attempts)));
                }
            }
        }
        for f in &consents {
            match self.consent(&f.payload).await {
                Ok(()) => done.push(f.seq),
                Err(err) => {
                    tracing::warn!(%err, "recording an unsubscribe in customer-profile failed; retrying");
                    failed.push((f.seq, f.attempts));
                }
            }
        }
        match txn {
            Some(t) => {
                finish(&t, &done, &failed, now).await?;
                t.commit().await?;
            }
            None => {
                let t = begin_write(&self.db).await?;
                finish(&t, &done, &failed, now).await?;
                t.commit().await?;
            }
        }
        Ok(Round {
            done: done.len(),
            failed: failed.len(),
        })
    }

    async fn interactions(&self, queued: &[store::Forward]) -> std::result::Result<(), String> {
        let inputs = queued
            .iter()
            .map(|f| cpb::InteractionInput::decode(f.payload.as_slice()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| format!("a queued interaction does not decode: {e}"))?;
        let batch = cpb::RecordInteractionsRequest {
            batch_id: format!("forward-{}", queued.first().map_or(0, |f| f.seq)),
            interactions: inputs,
        };
        let request = self
            .credentials
            .request(tokio_stream::iter(vec![batch]))
            .map_err(|e| e.to_string())?;
        let mut answers = self
            .client
            .clone()
            .record_interactions(request)
            .await
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?
            .into_inner();
        let answer = answers
            .message()
            .await
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?
            .ok_or("the stream ended without an acknowledgement")?;
        for r in answer.results.iter().filter(|r| !r.errors.is_empty()) {
            // Rejected for good (e.g. the customer was erased meanwhile): nothing to retry.
            tracing::info!(index = r.index, errors = ?r.errors, "customer-profile refused a campaign interaction");
        }
        Ok(())
    }

    async fn consent(&self, payload: &[u8]) -> std::result::Result<(), String> {
        let request = cpb::UpdateConsentRequest::decode(payload).map_err(|e| e.to_string())?;
        let request = self.credentials.request(request).map_err(|e| e.to_string())?;
        match self.client.clone().update_consent(request).await {
            Ok(_) => Ok(()),
            // Gone or refused for good: retrying will not help.
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument) => {
                tracing::info!(status = %s.message(), "customer-profile refused an unsubscribe");
                Ok(())
            }
            Err(s) => Err(format!("{}: {}", s.code(), s.message())),
        }
    }
}

async fn finish<C: ConnectionTrait>(conn: &C, done: &[i64], failed: &[(i64, i32)], now: i64) -> Result<()> {
    store::delete_forwards(conn, done).await?;
    for (seq, attempts) in failed {
        store::retry_forward(conn, *seq, now + super::backoff_us(5, attempts + 1)).await?;
    }
    Ok(())
}
