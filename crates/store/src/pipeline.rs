//! The durable path of logs: where an accepted chunk is written before it is acknowledged,
//! and the outbox that carries locally accepted chunks to PostgreSQL.
//!
//! Embedded mode: the chunk is appended to SQLite (durable at commit): `local`.
//! Shared mode, every chunk is first committed to the node's SQLite outbox, then appended
//! to PostgreSQL:
//! - both succeed: `dual` (the outbox row is removed afterwards);
//! - PostgreSQL fails: `local_only`; the replayer sends the outbox, oldest first, once
//!   PostgreSQL is back (appends are idempotent by chunk id, so a replay after a crash
//!   between the two writes stores nothing twice);
//! - the outbox write fails (e.g. disk full) and PostgreSQL succeeds: `cloud_only`;
//! - both fail: an error, and the caller acknowledges nothing.

use crate::logs::{AppendEvent, Durability, EncodedChunk, LogStore, Stored};
use crate::{Store, StoreError};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Outbox rows younger than this are left to the request that wrote them.
const REPLAY_AFTER: Duration = Duration::from_secs(2);
/// Deliveries PostgreSQL refuses (for a reason other than being unreachable) before the
/// chunk is set aside.
const SET_ASIDE_AFTER: u32 = 5;

/// The outbox, for health and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxStatus {
    pub depth: u64,
    pub oldest: Option<DateTime<Utc>>,
    /// Chunks PostgreSQL refused for good, kept in `log_outbox_set_aside`.
    pub set_aside: u64,
}

impl Store {
    /// Makes `chunk` durable (see the module docs); errors only when nothing is.
    pub async fn append_logs(&self, chunk: &EncodedChunk) -> Result<Stored, StoreError> {
        let Some(pg) = &self.shared else {
            let appended = self.local.append_chunk(chunk).await?;
            if !appended.replayed {
                let _ = self.events.send(AppendEvent::Appended {
                    tenant: chunk.tenant_id,
                    seq: appended.seq,
                });
            }
            return Ok(Stored {
                durability: Durability::Local,
                appended: Some(appended),
            });
        };
        match self.local.outbox_push(chunk).await {
            Ok(outbox_seq) => match pg.append_chunk(chunk).await {
                Ok(appended) => {
                    let local = self.local.clone();
                    // The chunk is safe twice over; tidying the outbox can wait.
                    tokio::spawn(async move {
                        if let Err(e) = local.outbox_remove(outbox_seq).await {
                            tracing::warn!(error = %e, "cannot remove a delivered outbox entry");
                        }
                    });
                    Ok(Stored {
                        durability: Durability::Dual,
                        appended: Some(appended),
                    })
                }
                Err(e) => {
                    metrics::counter!("storage_write_errors_total", "store" => "postgres")
                        .increment(1);
                    tracing::warn!(error = %e, "postgres write failed, chunk kept in the outbox");
                    Ok(Stored {
                        durability: Durability::LocalOnly,
                        appended: None,
                    })
                }
            },
            Err(local_err) => {
                metrics::counter!("storage_write_errors_total", "store" => "sqlite").increment(1);
                match pg.append_chunk(chunk).await {
                    Ok(appended) => {
                        tracing::error!(error = %local_err, "local outbox write failed, chunk written to postgres only");
                        Ok(Stored {
                            durability: Durability::CloudOnly,
                            appended: Some(appended),
                        })
                    }
                    Err(pg_err) => {
                        metrics::counter!("storage_write_errors_total", "store" => "postgres")
                            .increment(1);
                        tracing::error!(local = %local_err, postgres = %pg_err, "both stores refused a chunk");
                        Err(StoreError::Unavailable(
                            "no store could take the batch".into(),
                        ))
                    }
                }
            }
        }
    }

    /// Sends outbox chunks older than a moment to PostgreSQL, oldest first, until the
    /// outbox is empty, PostgreSQL fails, or `max` were sent; how many were sent.
    pub async fn replay_outbox(&self, max: u32) -> Result<u32, StoreError> {
        let Some(pg) = &self.shared else {
            return Ok(0);
        };
        let mut sent = 0;
        while sent < max {
            let batch = self.local.outbox_peek(16).await?;
            if batch.is_empty() {
                break;
            }
            let settle = chrono::Duration::from_std(REPLAY_AFTER).unwrap_or_default();
            let mut progressed = false;
            for row in batch {
                let chunk = match row.chunk {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        self.set_aside(row.seq, format!("undecodable: {e}")).await?;
                        progressed = true;
                        continue;
                    }
                };
                if Utc::now() - chunk.received_at < settle {
                    // In flight: its own request is writing it.
                    return Ok(sent);
                }
                match pg.append_chunk(&chunk).await {
                    Ok(_) => {}
                    Err(e) if e.is_transient() || e == StoreError::Closed => return Err(e),
                    // Refused by PostgreSQL itself (not for being away): try a few more
                    // times, then keep it aside so the chunks behind it are delivered.
                    Err(e) => {
                        let failures = self.local.outbox_failed(row.seq).await?;
                        if failures < SET_ASIDE_AFTER {
                            return Err(e);
                        }
                        self.set_aside(row.seq, e.to_string()).await?;
                        progressed = true;
                        continue;
                    }
                }
                self.local.outbox_remove(row.seq).await?;
                metrics::counter!("log_outbox_replayed_total").increment(1);
                sent += 1;
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        Ok(sent)
    }

    async fn set_aside(&self, seq: i64, reason: String) -> Result<(), StoreError> {
        metrics::counter!("log_outbox_set_aside_total").increment(1);
        tracing::error!(outbox_seq = seq, %reason, "outbox chunk cannot be delivered to postgres; set aside in log_outbox_set_aside");
        self.local.outbox_set_aside(seq, reason).await
    }

    /// The outbox (always empty in embedded mode).
    pub async fn outbox_status(&self) -> Result<OutboxStatus, StoreError> {
        if self.shared.is_none() {
            return Ok(OutboxStatus::default());
        }
        let (depth, oldest) = self.local.outbox_depth().await?;
        let set_aside = self.local.outbox_set_aside_count().await?;
        Ok(OutboxStatus {
            depth,
            oldest,
            set_aside,
        })
    }

    /// News of stored chunks (see [`AppendEvent`]).
    pub fn subscribe_appends(&self) -> tokio::sync::broadcast::Receiver<AppendEvent> {
        self.events.subscribe()
    }
}
