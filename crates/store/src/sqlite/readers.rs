//! A small pool of read-only connections. In WAL mode readers see the last committed
//! state and never block the writer (nor does the writer block them).
//!
//! A connection and its permit travel into the blocking task and come back from there, so a
//! caller that gives up (a timed-out or disconnected request) never costs the pool a
//! connection: the read finishes in the background and returns both.

use crate::StoreError;
use rusqlite::Connection;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

pub(crate) struct Readers {
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
    size: u32,
}

impl Readers {
    pub(crate) fn new(conns: Vec<Connection>) -> Readers {
        Readers {
            permits: Arc::new(Semaphore::new(conns.len())),
            size: conns.len() as u32,
            idle: Arc::new(Mutex::new(conns)),
        }
    }

    pub(crate) async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let idle = self.idle.clone();
        tokio::task::spawn_blocking(move || {
            let conn = idle
                .lock()
                .map_err(|_| StoreError::Internal("reader pool lock poisoned".into()))?
                .pop()
                .ok_or(StoreError::Closed)?;
            let result = catch_unwind(AssertUnwindSafe(|| work(&conn)))
                .unwrap_or_else(|_| Err(StoreError::Internal("read job panicked".into())));
            if let Ok(mut idle) = idle.lock() {
                idle.push(conn);
            }
            drop(permit);
            result
        })
        .await
        .map_err(|e| StoreError::Internal(format!("read task failed: {e}")))?
    }

    /// Refuses new reads, waits for running ones and closes every connection.
    pub(crate) async fn close(&self) {
        // Holding every permit means no read is running; then nobody can start one.
        if let Ok(all) = self.permits.acquire_many(self.size).await {
            all.forget();
        }
        self.permits.close();
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}
