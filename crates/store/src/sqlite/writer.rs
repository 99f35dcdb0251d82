//! The single writer: one thread owns the write connection and commits queued jobs in
//! groups (group commit). Each job runs inside its own savepoint, so a failing job rolls
//! back alone while the rest of its group commits. A job's caller is answered only after
//! the group's `COMMIT` returned, i.e. once its rows are durable to the degree the
//! `synchronous` setting promises.

use crate::StoreError;
use rusqlite::{Connection, TransactionBehavior};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// A unit of work for the writer thread.
trait Job: Send {
    /// Runs the job's statements inside the group transaction; true if they succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the group's outcome is known.
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

struct FnJob<F, T> {
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<F, T> Job for FnJob<F, T>
where
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
    T: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = catch_unwind(AssertUnwindSafe(|| work(conn))).unwrap_or_else(|_| {
            tracing::error!("sqlite write job panicked; its savepoint is rolled back");
            Err(StoreError::Internal("write job panicked".into()))
        });
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), StoreError>) {
        let answer = match (self.result, commit) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(_)), Err(e)) | (None, Err(e)) => Err(e),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (None, Ok(())) => Err(StoreError::Internal("write job was not run".into())),
        };
        // The caller may have gone away (request cancelled); the write stands regardless.
        let _ = self.reply.send(answer);
    }
}

enum Command {
    Run(Box<dyn Job>),
    Close(oneshot::Sender<()>),
}

pub(crate) struct Writer {
    queue: mpsc::Sender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<Counters>,
}

/// What the writer has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed (or attempted).
    pub groups: u64,
    /// Jobs run inside them.
    pub jobs: u64,
}

#[derive(Default)]
struct Counters {
    groups: AtomicU64,
    jobs: AtomicU64,
    /// The WAL file is checkpointed and truncated after a commit that leaves it larger than
    /// this (bytes; 0: only SQLite's own automatic checkpoints).
    wal_limit: AtomicU64,
}

impl Writer {
    pub(crate) fn spawn(
        conn: Connection,
        queue_len: usize,
        max_group: usize,
    ) -> Result<Writer, StoreError> {
        let (queue, rx) = mpsc::channel(queue_len.max(1));
        let stats = Arc::new(Counters::default());
        let counters = stats.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, max_group.max(1), &counters))
            .map_err(|e| StoreError::Internal(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer {
            queue,
            thread: Mutex::new(Some(thread)),
            stats,
        })
    }

    pub(crate) fn stats(&self) -> WriterStats {
        WriterStats {
            groups: self.stats.groups.load(Ordering::Relaxed),
            jobs: self.stats.jobs.load(Ordering::Relaxed),
        }
    }

    /// Checkpoints and truncates the WAL after any commit that leaves it over `bytes`,
    /// before the commit is answered (0: no limit).
    pub(crate) fn set_wal_limit(&self, bytes: u64) {
        self.stats.wal_limit.store(bytes, Ordering::Relaxed);
    }

    /// Jobs waiting in the queue (not counting the group being committed).
    pub(crate) fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = FnJob {
            work: Some(work),
            result: None,
            reply,
        };
        self.queue
            .send(Command::Run(Box::new(job)))
            .await
            .map_err(|_| StoreError::Closed)?;
        metrics::gauge!("store_sqlite_write_queue_depth").set(self.queue_depth() as f64);
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Commits what is queued, checkpoints, closes the connection and joins the thread.
    pub(crate) async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.queue.send(Command::Close(ack)).await.is_ok() {
            let _ = done.await;
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Command>,
    max_group: usize,
    stats: &Counters,
) {
    let mut closing = None;
    let mut group: Vec<Box<dyn Job>> = Vec::with_capacity(max_group);
    while closing.is_none() {
        match rx.blocking_recv() {
            Some(Command::Run(job)) => group.push(job),
            Some(Command::Close(ack)) => closing = Some(ack),
            None => break,
        }
        while closing.is_none() && group.len() < max_group {
            match rx.try_recv() {
                Ok(Command::Run(job)) => group.push(job),
                Ok(Command::Close(ack)) => closing = Some(ack),
                Err(_) => break,
            }
        }
        if !group.is_empty() {
            commit_group(&mut conn, &mut group, stats);
        }
    }
    // Anything that slipped into the queue before it closed still gets written and answered.
    rx.close();
    while let Ok(command) = rx.try_recv() {
        if let Command::Run(job) = command {
            group.push(job);
        }
    }
    if !group.is_empty() {
        commit_group(&mut conn, &mut group, stats);
    }
    if let Err(e) = conn.execute_batch("PRAGMA optimize; PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "sqlite checkpoint on close failed");
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "sqlite close failed");
    }
    if let Some(ack) = closing {
        let _ = ack.send(());
    }
}

fn commit_group(conn: &mut Connection, group: &mut Vec<Box<dyn Job>>, stats: &Counters) {
    let started = Instant::now();
    let jobs = group.len();
    stats.groups.fetch_add(1, Ordering::Relaxed);
    stats.jobs.fetch_add(jobs as u64, Ordering::Relaxed);
    let outcome = run_group(conn, group);
    if let Err(e) = &outcome {
        tracing::error!(error = %e, jobs, "sqlite group commit failed; every job in it is refused");
    }
    let limit = stats.wal_limit.load(Ordering::Relaxed);
    if limit > 0 && wal_size(conn) > limit {
        bound_wal(conn);
    }
    for job in group.drain(..) {
        job.finish(outcome.clone());
    }
    metrics::histogram!("store_sqlite_group_jobs").record(jobs as f64);
    metrics::histogram!("store_sqlite_group_commit_seconds")
        .record(started.elapsed().as_secs_f64());
}

/// Checkpoints and truncates the WAL without waiting for readers: one holding a snapshot
/// makes this attempt give up at once (the next commit tries again) instead of stalling
/// every acknowledgement behind it for the busy timeout.
fn bound_wal(conn: &Connection) {
    let waited: i64 = conn
        .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
        .unwrap_or(0);
    let _ = conn.busy_timeout(std::time::Duration::ZERO);
    match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(0) => {}
        Ok(_) => tracing::debug!("a reader holds the WAL; it is bounded at a later commit"),
        Err(e) => tracing::warn!(error = %e, "sqlite checkpoint to bound the WAL failed"),
    }
    let _ = conn.busy_timeout(std::time::Duration::from_millis(
        u64::try_from(waited).unwrap_or(0),
    ));
}

/// The size of the connection's WAL file (0 when there is none).
fn wal_size(conn: &Connection) -> u64 {
    let Some(path) = conn.path().filter(|p| !p.is_empty()) else {
        return 0;
    };
    std::fs::metadata(format!("{path}-wal")).map_or(0, |m| m.len())
}

fn run_group(conn: &mut Connection, group: &mut [Box<dyn Job>]) -> Result<(), StoreError> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for job in group.iter_mut() {
        let savepoint = tx.savepoint()?;
        if job.run(&savepoint) {
            savepoint.commit()?;
        } else {
            savepoint.finish()?; // drop behaviour: roll back to the savepoint, then release it
        }
    }
    tx.commit()?;
    Ok(())
}
