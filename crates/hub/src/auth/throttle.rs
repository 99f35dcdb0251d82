//! Failed-login throttling, per account and per client address.
//!
//! A sliding-free fixed window per key: after `max` failures within `window` further
//! attempts are refused (429 with `Retry-After`) until the window that started with the
//! first failure ends; a successful login clears the account's count. Counters live in
//! this replica's memory, so behind a load balancer an attacker gets at most one budget
//! per replica. Memory is bounded: past [`MAX_KEYS`] tracked keys, finished windows are
//! dropped first, then the oldest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_KEYS: usize = 100_000;

struct Window {
    started: Instant,
    failures: u32,
}

pub struct Throttle {
    window: Duration,
    counts: Mutex<HashMap<String, Window>>,
}

/// What to count a login attempt against: its account and its client address.
pub struct Subject {
    keys: Vec<(String, u32)>,
}

impl Subject {
    pub fn new(email: &str, ip: Option<&str>, max_per_account: u32) -> Subject {
        let mut keys = vec![(format!("account:{email}"), max_per_account)];
        if let Some(ip) = ip {
            keys.push((format!("ip:{ip}"), max_per_account.saturating_mul(10)));
        }
        Subject { keys }
    }
}

impl Throttle {
    pub fn new(window: Duration) -> Throttle {
        Throttle {
            window,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` if any of the subject's keys is over its budget.
    pub fn check(&self, subject: &Subject) -> Result<(), Duration> {
        let Ok(counts) = self.counts.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let wait = subject
            .keys
            .iter()
            .filter_map(|(key, max)| {
                let w = counts.get(key)?;
                let elapsed = now.duration_since(w.started);
                (elapsed < self.window && w.failures >= *max).then(|| self.window - elapsed)
            })
            .max();
        match wait {
            Some(wait) => Err(wait.max(Duration::from_secs(1))),
            None => Ok(()),
        }
    }

    pub fn record_failure(&self, subject: &Subject) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        let now = Instant::now();
        if counts.len() >= MAX_KEYS {
            counts.retain(|_, w| now.duration_since(w.started) < self.window);
            while counts.len() >= MAX_KEYS {
                let oldest = counts
                    .iter()
                    .min_by_key(|(_, w)| w.started)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => counts.remove(&k),
                    None => break,
                };
            }
        }
        for (key, _) in &subject.keys {
            let w = counts.entry(key.clone()).or_insert(Window {
                started: now,
                failures: 0,
            });
            if now.duration_since(w.started) >= self.window {
                *w = Window {
                    started: now,
                    failures: 0,
                };
            }
            w.failures += 1;
        }
    }

    /// A successful login: the account starts afresh (the address keeps its count).
    pub fn record_success(&self, subject: &Subject) {
        if let (Ok(mut counts), Some((account, _))) = (self.counts.lock(), subject.keys.first()) {
            counts.remove(account);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_per_account_and_success_resets_it() {
        let t = Throttle::new(Duration::from_secs(60));
        let alice = Subject::new("alice@x.io", Some("10.0.0.1"), 3);
        for _ in 0..3 {
            assert!(t.check(&alice).is_ok());
            t.record_failure(&alice);
        }
        let wait = t.check(&alice).unwrap_err();
        assert!(wait <= Duration::from_secs(60) && wait >= Duration::from_secs(1));
        // Another account from the same address still has its own budget.
        let bob = Subject::new("bob@x.io", Some("10.0.0.1"), 3);
        assert!(t.check(&bob).is_ok());
        t.record_success(&alice);
        assert!(t.check(&alice).is_ok());
    }

    #[test]
    fn an_address_trying_many_accounts_is_stopped() {
        let t = Throttle::new(Duration::from_secs(60));
        for i in 0..30 {
            let s = Subject::new(&format!("user{i}@x.io"), Some("10.0.0.9"), 3);
            t.record_failure(&s);
        }
        let fresh = Subject::new("new@x.io", Some("10.0.0.9"), 3);
        assert!(
            t.check(&fresh).is_err(),
            "30 failures = 10 x 3 from one address"
        );
        let elsewhere = Subject::new("new@x.io", Some("10.0.0.10"), 3);
        assert!(t.check(&elsewhere).is_ok());
    }

    #[test]
    fn windows_expire() {
        let t = Throttle::new(Duration::from_millis(1));
        let s = Subject::new("a@x.io", None, 1);
        t.record_failure(&s);
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.check(&s).is_ok());
    }
}
