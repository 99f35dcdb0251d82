//! The daemon's connection budget. Every connection holds a [`Slot`]; at
//! `monitor.max_connections` a new client takes the place of the connection idle longest
//! (it is closed between requests, never with a request half answered), so a local
//! client always gets in, however many idle connections someone left open. TCP
//! connections that have not presented the token yet have a budget of their own
//! (`monitor.max_unauthenticated`, the one idle longest dropped for a new one) outside
//! that limit, so a flood of silent TCP connections never takes a Unix client's place
//! and idle Unix clients never keep a TCP client from presenting its token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

pub struct Conns {
    max: usize,
    max_unauthenticated: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next: u64,
    open: HashMap<u64, Entry>,
}

struct Entry {
    /// When it last finished answering (or was accepted).
    idle_since: Instant,
    busy: bool,
    authenticated: bool,
    evict: Arc<Notify>,
}

/// One connection's place; dropping it frees the place.
pub struct Slot {
    conns: Arc<Conns>,
    id: u64,
    evict: Arc<Notify>,
}

impl Conns {
    pub fn new(max: usize, max_unauthenticated: usize) -> Arc<Conns> {
        Arc::new(Conns {
            max: max.max(1),
            max_unauthenticated: max_unauthenticated.max(1),
            state: Mutex::new(State::default()),
        })
    }

    /// A place for a new connection (`authenticated`: a Unix client, trusted by the
    /// socket's mode; a TCP one is not until its `Hello`). `None` when every connection is
    /// in the middle of a request: the caller refuses the new one.
    pub fn admit(self: &Arc<Self>, authenticated: bool) -> Option<Slot> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if authenticated {
            if s.count(true) >= self.max && !s.evict_longest_idle(true, None) {
                metrics::counter!("codi_ipc_connections_refused_total").increment(1);
                return None;
            }
        } else if s.count(false) >= self.max_unauthenticated
            // A client that has proved nothing displaces only another like it.
            && !s.evict_longest_idle(false, None)
        {
            metrics::counter!("codi_ipc_connections_refused_total").increment(1);
            return None;
        }
        s.next += 1;
        let id = s.next;
        let evict = Arc::new(Notify::new());
        s.open.insert(
            id,
            Entry {
                idle_since: Instant::now(),
                busy: false,
                authenticated,
                evict: evict.clone(),
            },
        );
        metrics::gauge!("codi_ipc_connections").set(s.open.len() as f64);
        Some(Slot {
            conns: self.clone(),
            id,
            evict,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.state.lock().map(|s| s.open.len()).unwrap_or(0)
    }
}

impl State {
    fn count(&self, authenticated: bool) -> usize {
        self.open
            .values()
            .filter(|e| e.authenticated == authenticated)
            .count()
    }

    /// Tells the idle connection of that kind (authenticated or not) that has been idle
    /// longest, other than `keep`, to close, and forgets it (it frees nothing more when it
    /// goes); whether there was one.
    fn evict_longest_idle(&mut self, authenticated: bool, keep: Option<u64>) -> bool {
        let victim = self
            .open
            .iter()
            .filter(|(id, e)| !e.busy && e.authenticated == authenticated && Some(**id) != keep)
            .min_by_key(|(_, e)| e.idle_since)
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.open.remove(&id)) {
            Some(e) => {
                e.evict.notify_one();
                metrics::counter!("codi_ipc_connections_evicted_total").increment(1);
                true
            }
            None => false,
        }
    }
}

impl Slot {
    fn with(&self, f: impl FnOnce(&mut Entry)) {
        let mut s = self.conns.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = s.open.get_mut(&self.id) {
            f(e);
        }
    }

    /// A request is being answered: not to be evicted until [`idle`](Self::idle).
    pub fn busy(&self) {
        self.with(|e| e.busy = true);
    }

    /// Everything read is answered.
    pub fn idle(&self) {
        self.with(|e| {
            e.busy = false;
            e.idle_since = Instant::now();
        });
    }

    /// The TCP client presented the token: it now takes an authenticated place (the one
    /// idle longest makes room if need be; if every one is mid-request it goes over the
    /// limit by one until they finish).
    pub fn authenticated(&self) {
        let mut s = self.conns.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = s.open.get_mut(&self.id) {
            e.authenticated = true;
        }
        if s.count(true) > self.conns.max {
            s.evict_longest_idle(true, Some(self.id));
        }
    }

    /// Resolves when another client took this place.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.conns.state.lock().unwrap_or_else(|p| p.into_inner());
        s.open.remove(&self.id);
        metrics::gauge!("codi_ipc_connections").set(s.open.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_longest_idle_makes_room_and_busy_ones_are_kept() {
        let within = std::time::Duration::from_secs(5);
        let conns = Conns::new(2, 1);
        let a = conns.admit(true).unwrap();
        let b = conns.admit(true).unwrap();
        a.busy();
        // `b` is the only idle one: it goes.
        let c = conns.admit(true).unwrap();
        tokio::time::timeout(within, b.evicted()).await.unwrap();
        assert_eq!(conns.open(), 2);
        c.busy();
        assert!(conns.admit(true).is_none(), "everyone is mid-request");
        drop(b);
        assert_eq!(conns.open(), 2, "an evicted slot was already given up");
        a.idle();
        c.idle();
        // Silent TCP connections have their own budget and displace only each other.
        let t1 = conns.admit(false).unwrap();
        let t2 = conns.admit(false).unwrap();
        tokio::time::timeout(within, t1.evicted()).await.unwrap();
        assert_eq!(conns.open(), 3);
        // Once authenticated, `t2` takes the place of the one idle longest (`a`).
        t2.authenticated();
        tokio::time::timeout(within, a.evicted()).await.unwrap();
        assert_eq!(conns.open(), 2);
        let d = conns.admit(true);
        assert!(d.is_some(), "a local client always gets in");
    }
}
