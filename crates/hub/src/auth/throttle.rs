//! Failed-login throttling that stops guessing without letting anyone lock an account's
//! owner out (OWASP Authentication Cheat Sheet, "Account Lockout"; "Blocking Brute Force
//! Attacks": progressive delays rather than permanent lockouts).
//!
//! Three counters per attempt, each a fixed window of `window`:
//! - **(account, address)**: after `max` failures that pair is refused (429 with
//!   `Retry-After`) until its window ends. This is what stops a guesser, and it stops only
//!   the guesser's address: the owner elsewhere still logs in.
//! - **address**, across accounts: refused after `10 × max` (one address spraying many
//!   accounts).
//! - **account**, across addresses: never refused. Past `10 × max` failures (a guesser
//!   using many addresses) every further attempt is slowed, by 250 ms doubling per further
//!   `max` failures up to [`MAX_DELAY`], for the right password too: guessing becomes
//!   slow while the owner still gets in.
//!
//! Every attempt counts before the password is checked (so concurrent guesses cannot all
//! pass one check); a successful login clears its account and pair and gives the address
//! its attempt back; an administrator can clear an account ([`Throttle::clear`], and
//! through the store for every replica). Counters live in this replica's memory, so
//! behind a load balancer an attacker gets at most one budget per replica. Memory is
//! bounded: past [`MAX_KEYS`] tracked keys, finished windows are dropped first, then the
//! oldest.

use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_KEYS: usize = 100_000;
/// The longest an attempt on an account under attack is slowed.
pub const MAX_DELAY: Duration = Duration::from_secs(8);
const FIRST_DELAY: Duration = Duration::from_millis(250);

struct Window {
    started: Instant,
    /// The same instant on the hub's clock (compared with administrators' resets).
    started_at: DateTime<Utc>,
    failures: u32,
}

pub struct Throttle {
    window: Duration,
    counts: Mutex<HashMap<String, Window>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Refused past its budget.
    Hard,
    /// Slowed past its budget.
    Soft,
}

/// What to count a login attempt against.
pub struct Subject {
    keys: Vec<(String, u32, Kind)>,
    /// Failures per doubling of the delay.
    step: u32,
}

impl Subject {
    pub fn new(email: &str, ip: Option<&str>, max: u32) -> Subject {
        let max = max.max(1);
        let mut keys = vec![(
            format!("account:{email}"),
            max.saturating_mul(10),
            Kind::Soft,
        )];
        match ip {
            Some(ip) => {
                keys.push((format!("pair:{email}|{ip}"), max, Kind::Hard));
                keys.push((format!("ip:{ip}"), max.saturating_mul(10), Kind::Hard));
            }
            // No address known: the account alone is all there is to count against.
            None => keys.push((format!("pair:{email}|"), max, Kind::Hard)),
        }
        Subject { keys, step: max }
    }
}

/// What a login attempt may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Go,
    /// Go after this pause (the account is under attack from many addresses).
    Slow(Duration),
    /// Refused; retry after this long.
    Refuse(Duration),
}

impl Throttle {
    pub fn new(window: Duration) -> Throttle {
        Throttle {
            window,
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Judges an attempt and, unless it is refused, counts it against every key of the
    /// subject, before the password is even checked. `now` is the hub's clock.
    pub fn attempt(&self, subject: &Subject, now: DateTime<Utc>) -> Verdict {
        let mut counts = self.lock();
        let tick = Instant::now();
        let live = |w: &Window| tick.duration_since(w.started) < self.window;
        let refused = subject
            .keys
            .iter()
            .filter(|(_, _, kind)| *kind == Kind::Hard)
            .filter_map(|(key, max, _)| {
                let w = counts.get(key).filter(|w| live(w))?;
                (w.failures >= *max).then(|| self.window - tick.duration_since(w.started))
            })
            .max();
        if let Some(wait) = refused {
            return Verdict::Refuse(wait.max(Duration::from_secs(1)));
        }
        let over = subject
            .keys
            .iter()
            .filter(|(_, _, kind)| *kind == Kind::Soft)
            .filter_map(|(key, max, _)| {
                let w = counts.get(key).filter(|w| live(w))?;
                w.failures.checked_sub(*max).map(|n| n / subject.step)
            })
            .max();
        if counts.len() >= MAX_KEYS {
            evict(&mut counts, tick, self.window);
        }
        for (key, _, _) in &subject.keys {
            let w = counts.entry(key.clone()).or_insert(Window {
                started: tick,
                started_at: now,
                failures: 0,
            });
            if !live(w) {
                *w = Window {
                    started: tick,
                    started_at: now,
                    failures: 0,
                };
            }
            w.failures = w.failures.saturating_add(1);
        }
        match over {
            None => Verdict::Go,
            Some(doublings) => Verdict::Slow(
                FIRST_DELAY
                    .saturating_mul(2u32.saturating_pow(doublings.min(16)))
                    .min(MAX_DELAY),
            ),
        }
    }

    /// When the oldest failure still counted against the subject's account (or its
    /// pairs) was counted, on the hub's clock; `None` when none is.
    pub fn counting_since(&self, subject: &Subject) -> Option<DateTime<Utc>> {
        let counts = self.lock();
        subject
            .keys
            .iter()
            .filter(|(key, _, _)| !key.starts_with("ip:"))
            .filter_map(|(key, _, _)| counts.get(key).map(|w| w.started_at))
            .min()
    }

    /// The attempt was a successful login: the account and the pair start afresh and the
    /// address gets its attempt back.
    pub fn succeeded(&self, subject: &Subject) {
        let mut counts = self.lock();
        for (key, _, _) in &subject.keys {
            if key.starts_with("ip:") {
                if let Some(w) = counts.get_mut(key) {
                    w.failures = w.failures.saturating_sub(1);
                }
            } else {
                counts.remove(key);
            }
        }
    }

    /// Forgets every failure counted against an account, from any address (an
    /// administrator cleared it). Address counters stay: they are not the account's.
    pub fn clear(&self, email: &str) {
        let account = format!("account:{email}");
        let pairs = format!("pair:{email}|");
        self.lock()
            .retain(|key, _| key != &account && !key.starts_with(&pairs));
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

    fn go(v: Verdict) -> bool {
        !matches!(v, Verdict::Refuse(_))
    }

    #[test]
    fn a_guessing_address_is_stopped_and_the_owner_elsewhere_is_not() {
        let t = Throttle::new(Duration::from_secs(60));
        let now = Utc::now();
        let attacker = Subject::new("alice@x.io", Some("10.0.0.1"), 3);
        for _ in 0..3 {
            assert_eq!(t.attempt(&attacker, now), Verdict::Go);
        }
        let Verdict::Refuse(wait) = t.attempt(&attacker, now) else {
            panic!("the fourth guess from one address is refused");
        };
        assert!(wait <= Duration::from_secs(60) && wait >= Duration::from_secs(1));
        // The owner, elsewhere: not refused, not even slowed.
        let owner = Subject::new("alice@x.io", Some("192.0.2.7"), 3);
        assert_eq!(t.attempt(&owner, now), Verdict::Go);
        t.succeeded(&owner);
        // Another account from the attacker's address still has its own budget.
        let bob = Subject::new("bob@x.io", Some("10.0.0.1"), 3);
        assert_eq!(t.attempt(&bob, now), Verdict::Go);
    }

    #[test]
    fn many_addresses_slow_an_account_down_but_never_lock_it() {
        let t = Throttle::new(Duration::from_secs(60));
        let now = Utc::now();
        // 30 failures (10 x 3) from 30 addresses: no delay yet.
        for i in 0..30 {
            let s = Subject::new("alice@x.io", Some(&format!("10.0.1.{i}")), 3);
            assert_eq!(t.attempt(&s, now), Verdict::Go, "attempt {i}");
        }
        let mut delays = Vec::new();
        for i in 30..60 {
            let s = Subject::new("alice@x.io", Some(&format!("10.0.1.{i}")), 3);
            match t.attempt(&s, now) {
                Verdict::Slow(d) => delays.push(d),
                other => panic!("attempt {i}: {other:?}"),
            }
        }
        assert_eq!(delays[0], FIRST_DELAY);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "progressive");
        assert_eq!(*delays.last().unwrap(), MAX_DELAY, "capped");
        // The owner is slowed too, never refused; success clears the account.
        let owner = Subject::new("alice@x.io", Some("192.0.2.7"), 3);
        assert!(matches!(t.attempt(&owner, now), Verdict::Slow(_)));
        t.succeeded(&owner);
        assert_eq!(t.attempt(&owner, now), Verdict::Go);
    }

    #[test]
    fn an_address_trying_many_accounts_is_stopped() {
        let t = Throttle::new(Duration::from_secs(60));
        let now = Utc::now();
        for i in 0..30 {
            let s = Subject::new(&format!("user{i}@x.io"), Some("10.0.0.9"), 3);
            assert!(go(t.attempt(&s, now)));
        }
        let fresh = Subject::new("new@x.io", Some("10.0.0.9"), 3);
        assert!(!go(t.attempt(&fresh, now)), "30 failures = 10 x 3");
        let elsewhere = Subject::new("new@x.io", Some("10.0.0.10"), 3);
        assert!(go(t.attempt(&elsewhere, now)));
    }

    #[test]
    fn concurrent_attempts_are_all_counted() {
        let t = std::sync::Arc::new(Throttle::new(Duration::from_secs(60)));
        let allowed: usize = (0..16)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    go(t.attempt(&Subject::new("a@x.io", Some("10.0.0.1"), 3), Utc::now()))
                })
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
    fn clearing_forgives_the_account_everywhere() {
        let t = Throttle::new(Duration::from_secs(60));
        let started = Utc::now();
        let s = Subject::new("a@x.io", Some("10.0.0.1"), 1);
        assert_eq!(t.attempt(&s, started), Verdict::Go);
        assert!(!go(t.attempt(&s, started)));
        assert_eq!(t.counting_since(&s), Some(started));
        t.clear("a@x.io");
        assert_eq!(t.counting_since(&s), None);
        assert_eq!(t.attempt(&s, started), Verdict::Go);
    }

    #[test]
    fn windows_expire() {
        let t = Throttle::new(Duration::from_millis(1));
        let s = Subject::new("a@x.io", None, 1);
        assert!(go(t.attempt(&s, Utc::now())));
        std::thread::sleep(Duration::from_millis(5));
        assert!(go(t.attempt(&s, Utc::now())));
    }
}
