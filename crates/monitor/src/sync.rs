//! Sync to the hub: unsynced entries go, oldest first, in batches to
//! `POST {hub}/api/logs/batch` with the API key.
//!
//! - A batch's range of entries and its `batch_id` are claimed in the store before the
//!   first attempt, so every retry (after a timeout, a crash, a restart) sends the same
//!   `batch_id` and the hub stores it once.
//! - Entries are marked synced only after a 202, in the same transaction that moves the
//!   entries the hub rejected into `sync_rejected` with its reason (never retried).
//! - A 400 saying every entry was refused moves them all aside the same way (any other 400
//!   is a configuration problem, retried slowly); a 413 gives the claim up and halves the
//!   batch size; 401/403/404 are configuration problems, retried slowly;
//!   429/503 honour `Retry-After`; other failures back off exponentially with jitter.

use crate::config::ServerHub;
use crate::store::{MonitorStore, SyncBatch, SyncRow};
use rand::Rng;
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The hub's limit on one request body is larger; this keeps requests modest.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
const BASE_BACKOFF: Duration = Duration::from_millis(250);
/// The longest answer read from the hub: its answer to a batch lists at most one refusal
/// per entry.
const MAX_ANSWER_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub url: String,
    pub unix_socket: Option<std::path::PathBuf>,
    /// The key given directly, or where to read it before every request.
    pub api_key: ApiKey,
    pub workspace_id: String,
    pub batch_size: u32,
    pub interval: Duration,
    pub max_backoff: Duration,
    pub timeout: Duration,
}

impl SyncSettings {
    /// `None` when no hub is configured.
    pub fn from_config(hub: &ServerHub) -> Option<SyncSettings> {
        Some(SyncSettings {
            url: crate::hub_http::HubUrl::parse(hub.url.as_deref()?)
                .ok()?
                .to_string(),
            unix_socket: hub.unix_socket.clone(),
            api_key: match (&hub.api_key_file, &hub.api_key) {
                (Some(file), _) => ApiKey::File(file.clone()),
                (None, Some(key)) => ApiKey::Fixed(key.expose().to_string()),
                (None, None) => return None,
            },
            workspace_id: hub.workspace_id.clone()?,
            batch_size: hub.batch_size,
            interval: hub.sync_interval,
            max_backoff: hub.max_backoff,
            timeout: hub.request_timeout,
        })
    }
}

/// The hub credential: given once, or read from a file before each request (so a
/// rotated key is used at once).
#[derive(Debug, Clone)]
pub enum ApiKey {
    Fixed(String),
    File(std::path::PathBuf),
}

impl ApiKey {
    /// The key to send now (a file that cannot be read sends an empty key: the hub's 401
    /// says so, and the next attempt reads it again).
    pub fn current(&self) -> String {
        match self {
            ApiKey::Fixed(k) => k.clone(),
            ApiKey::File(path) => std::fs::read_to_string(path)
                .map(|k| k.trim().to_string())
                .unwrap_or_default(),
        }
    }
}

/// What `/health` and `GetStatus` say about sync.
#[derive(Debug, Clone, Default)]
pub struct SyncState {
    pub last_error: Option<String>,
    pub last_success: Option<chrono::DateTime<chrono::Utc>>,
    pub rejected: u64,
}

pub type SharedSyncState = Arc<Mutex<SyncState>>;

/// How one attempt ended.
enum Outcome {
    /// 202: the entries the hub refused, (seq, reason).
    Done(Vec<(i64, String)>),
    /// Wait this long, then try the same batch again.
    Retry(Duration, String),
    /// The batch is too large for the hub: give it up and claim smaller ones.
    TooLarge,
    /// The hub knows this batch id for other content (409: e.g. this monitor was
    /// upgraded between two attempts and now writes entries differently): give the id up
    /// and claim again under a new one. Entries carry their own ids, so none is stored
    /// twice.
    Rekey(String),
    /// The hub refused the batch as a whole; its entries are moved aside.
    RejectAll(String),
}

pub struct Syncer {
    settings: SyncSettings,
    store: MonitorStore,
    http: reqwest::Client,
    state: SharedSyncState,
    batch_size: u32,
    failures: u32,
}

impl Syncer {
    pub fn new(
        settings: SyncSettings,
        store: MonitorStore,
        state: SharedSyncState,
    ) -> anyhow::Result<Syncer> {
        let http = crate::hub_http::client(
            concat!("codi-monitor/", env!("CARGO_PKG_VERSION")),
            settings.timeout.min(Duration::from_secs(10)),
            settings.timeout,
            settings.unix_socket.as_deref(),
        )?;
        Ok(Syncer {
            batch_size: settings.batch_size,
            settings,
            store,
            http,
            state,
            failures: 0,
        })
    }

    /// Sends until `stop` turns true (an attempt in flight is finished first).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        tracing::info!(hub = %self.settings.url, "sync started");
        loop {
            if *stop.borrow() {
                break;
            }
            let wait = self.step().await;
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        tracing::info!("sync stopped");
    }

    /// One batch at most; how long to wait before the next step.
    async fn step(&mut self) -> Duration {
        self.update_backlog().await;
        let batch = match self
            .store
            .sync_claim(self.batch_size, MAX_BATCH_BYTES)
            .await
        {
            Ok(Some(b)) => b,
            Ok(None) => return self.settings.interval,
            Err(e) => {
                tracing::error!(error = %e, "cannot read entries to sync");
                return self.backoff(None);
            }
        };
        if batch.entries.is_empty() {
            // Everything in the claimed range was already settled.
            let _ = self.store.sync_done(&batch, Vec::new()).await;
            return Duration::ZERO;
        }
        let outcome = self.send(&batch).await;
        match outcome {
            Outcome::Done(rejected_rows) => {
                let rejected = rejected_rows.len();
                if let Err(e) = self.store.sync_done(&batch, rejected_rows).await {
                    // Not marked: the same batch_id goes again and the hub replays its answer.
                    tracing::error!(error = %e, "cannot mark entries synced");
                    return self.backoff(None);
                }
                let n = batch.entries.len();
                metrics::counter!("codi_sync_entries_total", "outcome" => "synced")
                    .increment(n.saturating_sub(rejected) as u64);
                metrics::counter!("codi_sync_entries_total", "outcome" => "rejected")
                    .increment(rejected as u64);
                metrics::counter!("codi_sync_batches_total", "outcome" => "accepted").increment(1);
                self.failures = 0;
                self.batch_size = (self.batch_size * 2).min(self.settings.batch_size);
                if let Ok(mut s) = self.state.lock() {
                    s.last_error = None;
                    s.last_success = Some(chrono::Utc::now());
                    s.rejected += rejected as u64;
                }
                Duration::ZERO
            }
            Outcome::Retry(wait, error) => {
                metrics::counter!("codi_sync_batches_total", "outcome" => "retry").increment(1);
                if self.failures == 0 || batch.retries % 20 == 0 {
                    tracing::warn!(batch_id = %batch.batch_id, error = %error, "sync attempt failed; will retry");
                }
                let _ = self
                    .store
                    .sync_failed(batch.batch_id.clone(), error.clone())
                    .await;
                if let Ok(mut s) = self.state.lock() {
                    s.last_error = Some(error);
                }
                self.backoff(Some(wait))
            }
            Outcome::TooLarge => {
                self.batch_size = (batch.entries.len() as u32 / 2).max(1);
                let _ = self.store.sync_release(batch.batch_id.clone()).await;
                tracing::warn!(
                    batch_size = self.batch_size,
                    "the hub found a batch too large; sending smaller ones"
                );
                Duration::ZERO
            }
            Outcome::Rekey(reason) => {
                metrics::counter!("codi_sync_batches_total", "outcome" => "rekeyed").increment(1);
                tracing::warn!(batch_id = %batch.batch_id, reason = %reason, "the hub knows this batch id for other content; sending the entries under a new one");
                if let Err(e) = self.store.sync_release(batch.batch_id.clone()).await {
                    tracing::error!(error = %e, "cannot release a batch id");
                    return self.backoff(None);
                }
                Duration::ZERO
            }
            Outcome::RejectAll(reason) => {
                metrics::counter!("codi_sync_batches_total", "outcome" => "rejected").increment(1);
                tracing::warn!(batch_id = %batch.batch_id, entries = batch.entries.len(), reason = %reason, "the hub rejected a whole batch; its entries are kept aside");
                let rows = batch
                    .entries
                    .iter()
                    .map(|e| (e.seq, reason.clone()))
                    .collect();
                if let Err(e) = self.store.sync_done(&batch, rows).await {
                    tracing::error!(error = %e, "cannot set rejected entries aside");
                    return self.backoff(None);
                }
                if let Ok(mut s) = self.state.lock() {
                    s.rejected += batch.entries.len() as u64;
                }
                Duration::ZERO
            }
        }
    }
}

impl Syncer {
    async fn update_backlog(&self) {
        let Ok((pending, oldest)) = self.store.sync_backlog().await else {
            return;
        };
        let lag = oldest
            .map(|t| (chrono::Utc::now().timestamp_micros() - t).max(0) as f64 / 1e6)
            .unwrap_or(0.0);
        metrics::gauge!("codi_sync_lag_seconds").set(lag);
        metrics::gauge!("codi_sync_pending_entries").set(pending as f64);
    }

    /// Exponential with jitter in [d/2, d] ("equal jitter"), at least `floor` (a
    /// `Retry-After`).
    fn backoff(&mut self, floor: Option<Duration>) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let exp = BASE_BACKOFF.saturating_mul(1u32 << self.failures.min(16));
        let cap = exp.min(self.settings.max_backoff);
        let jittered = cap.mul_f64(rand::rng().random_range(0.5..=1.0));
        match floor {
            Some(f) if f > jittered => f.min(Duration::from_secs(600)),
            _ => jittered,
        }
    }
}

#[derive(Deserialize)]
struct Accepted {
    #[serde(default)]
    rejected: Vec<RejectedIn>,
}

#[derive(Deserialize)]
struct RejectedIn {
    index: usize,
    reason: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorIn,
}

#[derive(Deserialize)]
struct ErrorIn {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl Syncer {
    async fn send(&self, batch: &SyncBatch) -> Outcome {
        let body = serde_json::json!({
            "workspace_id": self.settings.workspace_id,
            "batch_id": batch.batch_id,
            "client_version": concat!("codi-monitor/", env!("CARGO_PKG_VERSION")),
            "entries": batch.entries.iter().map(wire_entry).collect::<Vec<_>>(),
        });
        let res = self
            .http
            .post(format!("{}/api/logs/batch", self.settings.url))
            .bearer_auth(self.settings.api_key.current())
            .json(&body)
            .send()
            .await;
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                let what = if e.is_timeout() {
                    "the hub did not answer in time".to_string()
                } else if e.is_connect() {
                    "the hub is unreachable".to_string()
                } else {
                    format!("request failed: {}", crate::hub_http::without_url(&e))
                };
                return Outcome::Retry(Duration::ZERO, what);
            }
        };
        let status = res.status().as_u16();
        if let Some(to) = crate::hub_http::redirected_to(&res) {
            // Never followed: the batch would be marked synced wherever it landed.
            return Outcome::Retry(
                self.settings.max_backoff,
                format!(
                    "the hub answered {status}, redirecting to {to}: not followed \
                     (set server_hub.url to the hub's own address)"
                ),
            );
        }
        let retry_after = retry_after(res.headers());
        let text = match crate::hub_http::read_body(res, MAX_ANSWER_BYTES).await {
            Ok(body) => String::from_utf8_lossy(&body).into_owned(),
            Err(e) => {
                return Outcome::Retry(
                    Duration::ZERO,
                    format!("unreadable answer from the hub: {e}"),
                );
            }
        };
        let hub_error = || {
            serde_json::from_str::<ErrorBody>(&text)
                .map(|b| format!("{}: {}", b.error.code, b.error.message))
                .unwrap_or_else(|_| format!("http {status}"))
        };
        match status {
            202 => match serde_json::from_str::<Accepted>(&text) {
                Ok(a) => Outcome::Done(
                    a.rejected
                        .into_iter()
                        .filter_map(|r| batch.entries.get(r.index).map(|e| (e.seq, r.reason)))
                        .collect(),
                ),
                // Accepted, answer unreadable: the same batch_id again gets a readable replay.
                Err(_) => Outcome::Retry(Duration::ZERO, "unreadable answer from the hub".into()),
            },
            // Only a batch whose every entry was refused one by one is set aside; any
            // other 400 is about the request (a configuration problem): retried slowly.
            400 | 422 if text.contains("every entry was rejected") => {
                Outcome::RejectAll(hub_error())
            }
            400 | 422 => Outcome::Retry(
                self.settings.max_backoff,
                format!("the hub refused the batch ({})", hub_error()),
            ),
            409 => Outcome::Rekey(hub_error()),
            413 if batch.entries.len() > 1 => Outcome::TooLarge,
            413 => Outcome::RejectAll(hub_error()),
            401 | 403 | 404 => Outcome::Retry(
                self.settings.max_backoff,
                format!(
                    "the hub refused the credentials or workspace ({})",
                    hub_error()
                ),
            ),
            429 | 503 => Outcome::Retry(retry_after.unwrap_or(Duration::ZERO), hub_error()),
            _ => Outcome::Retry(Duration::ZERO, hub_error()),
        }
    }
}

/// One entry as the hub's native batch takes it. The hub's `session_id` is a UUID; a
/// local session id that is not one travels in the metadata as `session`.
fn wire_entry(row: &SyncRow) -> serde_json::Value {
    let e = &row.entry;
    let ts = chrono::DateTime::from_timestamp_micros(e.ts)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    // Rows stored by older versions may nest deeper than serde_json parses (128 levels):
    // their metadata travels as text under `metadata_text` rather than being dropped.
    let mut metadata = e.metadata.as_deref().map(|m| {
        serde_json::from_str::<serde_json::Value>(m)
            .ok()
            .filter(|m| m.is_object())
            .unwrap_or_else(|| serde_json::json!({ "metadata_text": m }))
    });
    let mut v = serde_json::json!({
        "id": e.id.to_string(),
        "timestamp": ts,
        "level": e.level.as_str(),
        "component": e.component,
        "message": e.message,
    });
    if let Some(s) = &e.session_id {
        if uuid::Uuid::parse_str(s).is_ok() {
            v["session_id"] = s.clone().into();
        } else {
            metadata.get_or_insert_with(|| serde_json::json!({}))["session"] = s.clone().into();
        }
    }
    if let Some(m) = metadata {
        v["metadata"] = m;
    }
    v
}

/// `Retry-After` in seconds (the hub's form) or as an HTTP date.
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(session: Option<&str>, metadata: Option<&str>) -> SyncRow {
        SyncRow {
            seq: 1,
            entry: crate::store::NewEntry {
                id: uuid::Uuid::now_v7(),
                ts: 1_700_000_000_123_456,
                level: coditect_proto::Level::Warn,
                component: "cli".into(),
                message: "m".into(),
                metadata: metadata.map(str::to_string),
                session_id: session.map(str::to_string),
            },
        }
    }

    #[test]
    fn wire_entries_keep_ids_and_map_local_sessions() {
        let v = wire_entry(&row(Some("s-1"), Some(r#"{"k":1}"#)));
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["metadata"], serde_json::json!({"k": 1, "session": "s-1"}));
        assert!(v.get("session_id").is_none());
        let uuid = uuid::Uuid::now_v7().to_string();
        let v = wire_entry(&row(Some(&uuid), None));
        assert_eq!(v["session_id"], uuid.as_str());
        assert!(v.get("metadata").is_none());
    }

    #[tokio::test]
    async fn https_hubs_are_spoken_to_over_tls() {
        // A listener that is no TLS server: the attempt must fail in the handshake (TLS is
        // compiled in), not as an unsupported scheme.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                use tokio::io::AsyncWriteExt;
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let err = reqwest::Client::new()
            .get(format!("https://{addr}/"))
            .send()
            .await
            .unwrap_err();
        let chain = format!("{err:?}");
        assert!(!chain.contains("scheme is not http"), "{chain}");
        assert!(chain.contains("InvalidContentType"), "{chain}");
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        h.insert(reqwest::header::RETRY_AFTER, later.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
