//! A dedicated connection that `LISTEN`s for appended chunks and relays them to this
//! node's live tails. It reconnects with backoff; after a reconnect it asks the tails to
//! resync from the store, since notifications sent meanwhile are lost.

use super::{LOG_CHANNEL, PgConfig};
use crate::StoreError;
use crate::logs::AppendEvent;
use coditect_proto::TenantId;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;

pub fn spawn(config: &PgConfig, events: broadcast::Sender<AppendEvent>) -> JoinHandle<()> {
    let config = config.clone();
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        let mut first = true;
        loop {
            match listen_once(&config, &events, &mut first).await {
                Ok(()) => delay = Duration::from_millis(200),
                Err(e) => {
                    tracing::warn!(server = %config.target(), error = %e, "log listener lost postgres, reconnecting");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    })
}

async fn listen_once(
    config: &PgConfig,
    events: &broadcast::Sender<AppendEvent>,
    first: &mut bool,
) -> Result<(), StoreError> {
    let (client, mut connection) = config.pg_config()?.connect(tokio_postgres::NoTls).await?;
    // Polling the messages also drives the connection the LISTEN below goes through.
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let sql = format!("LISTEN {LOG_CHANNEL}");
    let listen = client.batch_execute(&sql);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            result = &mut listen, if !listening => {
                result?;
                listening = true;
                if !*first {
                    let _ = events.send(AppendEvent::Resync);
                }
                *first = false;
                tracing::info!(server = %config.target(), "listening for appended logs");
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if let Some(event) = parse(n.payload()) {
                        let _ = events.send(event);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err(StoreError::Unavailable("listener connection closed".into())),
            }
        }
    }
}

/// `tenant:seq`.
fn parse(payload: &str) -> Option<AppendEvent> {
    let (tenant, seq) = payload.split_once(':')?;
    Some(AppendEvent::Appended {
        tenant: tenant.parse::<TenantId>().ok()?,
        seq: seq.parse().ok()?,
    })
}
