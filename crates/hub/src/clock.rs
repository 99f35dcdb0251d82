//! Time as the hub sees it. Production reads the system clock; tests move a manual clock
//! forward to cross idle timeouts and token lifetimes without sleeping.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// The current instant, at the stores' microsecond precision.
#[derive(Clone, Default)]
pub struct Clock {
    /// Microseconds added to the system time (only ever non-zero in tests).
    offset_us: Arc<AtomicI64>,
}

impl Clock {
    pub fn system() -> Clock {
        Clock::default()
    }

    pub fn now(&self) -> DateTime<Utc> {
        let offset = Duration::microseconds(self.offset_us.load(Ordering::Relaxed));
        (Utc::now() + offset).trunc_subsecs(6)
    }

    /// Moves this clock (and every clone of it) forward.
    pub fn advance(&self, by: std::time::Duration) {
        let us = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.offset_us.fetch_add(us, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_every_clone() {
        let clock = Clock::system();
        let twin = clock.clone();
        let before = twin.now();
        clock.advance(std::time::Duration::from_secs(3600));
        assert!(twin.now() - before >= Duration::minutes(59));
    }
}
