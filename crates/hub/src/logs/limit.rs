//! Backpressure for ingestion: a per-tenant rate limit (token bucket, entries per second)
//! and a bound on requests being processed at once.
//!
//! Memory under overload is bounded by the admission bound: a request is admitted before
//! its body is read (see `read_body`), so at most `max_inflight` bodies are held at once,
//! each at most `body_limit` bytes and, decoded, a few times that (roughly
//! `max_inflight × 4 × body_limit` in the worst case; 64 × 4 × 5 MiB = 1.25 GiB for the
//! defaults with maximal bodies, ~50 MiB for typical 190 KB batches). A request that cannot
//! be admitted within a second is answered 503 with `Retry-After`.

use super::entry::EntryLimits;
use crate::http::ApiError;
use coditect_proto::TenantId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a request waits to be admitted before 503.
const ADMIT_WAIT: Duration = Duration::from_secs(1);

/// Everything the pipeline keeps between requests.
pub struct LogsRuntime {
    pub limits: EntryLimits,
    pub rate: RateLimiter,
    inflight: std::sync::Arc<Semaphore>,
}

impl LogsRuntime {
    pub fn new(limits: EntryLimits, rate_per_tenant: u64, max_inflight: usize) -> LogsRuntime {
        LogsRuntime {
            limits,
            rate: RateLimiter::new(rate_per_tenant),
            inflight: std::sync::Arc::new(Semaphore::new(max_inflight.max(1))),
        }
    }

    /// A slot for one ingestion request, or 503 when the pipeline is saturated.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        let wait = tokio::time::timeout(ADMIT_WAIT, self.inflight.clone().acquire_owned()).await;
        match wait {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                metrics::counter!("log_ingestion_busy_total").increment(1);
                Err(ApiError::unavailable(
                    "the hub is at its ingestion capacity; retry shortly",
                    1,
                ))
            }
        }
    }
}

/// Entries per second per tenant, with one second of burst. 0 = unlimited.
pub struct RateLimiter {
    rate: u64,
    buckets: Mutex<HashMap<TenantId, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(rate: u64) -> RateLimiter {
        RateLimiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `n` tokens, or says how long until there will be enough.
    pub fn take(&self, tenant: TenantId, n: u64) -> Result<(), Duration> {
        if self.rate == 0 {
            return Ok(());
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        let rate = self.rate as f64;
        let now = Instant::now();
        let bucket = buckets.entry(tenant).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(rate);
        bucket.at = now;
        let need = n as f64;
        if bucket.tokens >= need {
            bucket.tokens -= need;
            Ok(())
        } else {
            let missing = need.min(rate) - bucket.tokens;
            Err(Duration::from_secs_f64((missing / rate).max(0.001)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_have_separate_buckets() {
        let r = RateLimiter::new(100);
        let (a, b) = (TenantId::new(), TenantId::new());
        assert!(r.take(a, 100).is_ok());
        let wait = r.take(a, 50).unwrap_err();
        assert!(
            wait > Duration::from_millis(100) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(r.take(b, 100).is_ok());
        assert!(
            RateLimiter::new(0).take(a, u64::MAX).is_ok(),
            "0 = unlimited"
        );
    }
}
