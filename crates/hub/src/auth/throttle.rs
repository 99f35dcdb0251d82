//! Failed-login throttling, per account and per client address.
//!
//! A fixed window per key: every attempt counts before the password is checked (so
//! concurrent guesses cannot all pass one check); after `max` within `window` further
//! attempts are refused (429 with `Retry-After`) until the window that started with the
//! first attempt ends; a successful login clears the account's count and gives the
//! address its attempt back. Counters live in
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

    /// Counts an attempt against every key of the subject, before the password is even
    /// checked, so concurrent guesses cannot all slip through one check. `Err(retry_after)`
    /// (and nothing counted) if a key is already out of budget. Call
    /// [`Throttle::succeeded`] when the login works.
    pub fn attempt(&self, subject: &Subject) -> Result<(), Duration> {
        let Ok(mut counts) = self.counts.lock() else {
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
        if let Some(wait) = wait {
            return Err(wait.max(Duration::from_secs(1)));
        }
        if counts.len() >= MAX_KEYS {
            evict(&mut counts, now, self.window);
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
        Ok(())
    }

    /// The attempt was a successful login: the account starts afresh and the address gets
    /// its attempt back.
    pub fn succeeded(&self, subject: &Subject) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        let mut keys = subject.keys.iter();
        if let Some((account, _)) = keys.next() {
            counts.remove(account);
        }
        for (key, _) in keys {
            if let Some(w) = counts.get_mut(key) {
                w.failures = w.failures.saturating_sub(1);
            }
        }
    }
}

/// Makes room: finished windows first, then the oldest.
fn evict(counts: &mut HashMap<String, Window>, now: Instant, window: Duration) {
    counts.retain(|_, w| now.duration_since(w.started) < window);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_per_account_and_success_resets_it() {
        let t = Throttle::new(Duration::from_secs(60));
        let alice = Subject::new("alice@x.io", Some("10.0.0.1"), 3);
        for _ in 0..3 {
            assert!(t.attempt(&alice).is_ok());
        }
        let wait = t.attempt(&alice).unwrap_err();
        assert!(wait <= Duration::from_secs(60) && wait >= Duration::from_secs(1));
        // Another account from the same address still has its own budget.
        let bob = Subject::new("bob@x.io", Some("10.0.0.1"), 3);
        assert!(t.attempt(&bob).is_ok());
        t.succeeded(&bob);
        t.succeeded(&alice);
        assert!(t.attempt(&alice).is_ok());
    }

    #[test]
    fn concurrent_attempts_are_all_counted() {
        let t = std::sync::Arc::new(Throttle::new(Duration::from_secs(60)));
        let allowed: usize = (0..16)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || t.attempt(&Subject::new("a@x.io", None, 3)).is_ok())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| usize::from(h.join().unwrap()))
            .sum();
        assert_eq!(
            allowed, 3,
            "no more attempts than the budget, however concurrent"
        );
    }

    #[test]
    fn an_address_trying_many_accounts_is_stopped() {
        let t = Throttle::new(Duration::from_secs(60));
        for i in 0..30 {
            let s = Subject::new(&format!("user{i}@x.io"), Some("10.0.0.9"), 3);
            assert!(t.attempt(&s).is_ok());
        }
        let fresh = Subject::new("new@x.io", Some("10.0.0.9"), 3);
        assert!(
            t.attempt(&fresh).is_err(),
            "30 failures = 10 x 3 from one address"
        );
        let elsewhere = Subject::new("new@x.io", Some("10.0.0.10"), 3);
        assert!(t.attempt(&elsewhere).is_ok());
    }

    #[test]
    fn windows_expire() {
        let t = Throttle::new(Duration::from_millis(1));
        let s = Subject::new("a@x.io", None, 1);
        assert!(t.attempt(&s).is_ok());
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.attempt(&s).is_ok());
    }
}
