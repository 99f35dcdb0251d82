//! The commands served by codi-monitor on this machine: `log`, `query`, `watch`, `session`,
//! `status`.
//!
//! `log` and `query` fall back to the daemon's SQLite file (the same one: Config's
//! `storage.sqlite_path`) when nothing answers on the socket, so logging never depends on
//! the daemon running; the others need the daemon.

use crate::args::{Filters, LogArgs, QueryArgs, SessionCommand, WatchCommand, Window};
use crate::exit::{CliError, Exit, Result};
use crate::output::{self, Out};
use coditect_monitor::client::{ClientError, IpcClient};
use coditect_monitor::config::Config;
use coditect_monitor::store::{MAX_MESSAGE, MonitorStore, NewEntry};
use coditect_proto::ErrorCode;
use coditect_proto::ipc::{AckStatus, LogEntry, LogFilter, Payload, StoredLog, WatchMode};
use std::path::Path;
use std::time::Duration;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;

/// Most entries in one `LogBatch` frame.
pub const BATCH_ENTRIES: usize = 1000;
/// Bytes of messages and metadata after which a batch is sent (frames stop at 1 MiB).
const BATCH_BYTES: usize = 512 * 1024;
/// A partial batch read from stdin is sent when no line came for this long.
const LINGER: Duration = Duration::from_millis(200);

/// The commands of this module, with their settings.
pub struct Local {
    pub config: Config,
    pub out: Out,
    /// How long the daemon may take to accept or answer (`--timeout`).
    pub timeout: Duration,
}

/// A connection to the daemon, over its Unix socket or (containers) TCP.
enum Client {
    Unix(IpcClient<UnixStream>),
    Tcp(IpcClient<TcpStream>),
}

/// Where entries go and queries come from.
enum Target {
    Daemon(Client),
    Direct(MonitorStore),
}

impl Local {
    fn socket(&self) -> &Path {
        &self.config.monitor.unix_socket_path
    }

    fn db(&self) -> &Path {
        &self.config.storage.sqlite_path
    }

    /// Connects to the daemon: its socket, else its TCP listener when one is configured
    /// (a container whose socket is not mounted); says which way with `--verbose`. `Err`
    /// carries why nothing answered.
    async fn connect(&self) -> Result<std::result::Result<Client, String>> {
        let connect = tokio::time::timeout(self.timeout, IpcClient::connect_unix(self.socket()));
        let unix_error = match connect.await.unwrap_or_else(|_| {
            Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the daemon accepts no connection",
            )))
        }) {
            Ok(c) => {
                self.out
                    .note(&format!("via codi-monitor at {}", self.socket().display()));
                return Ok(Ok(Client::Unix(c)));
            }
            // Someone else's listener: never fall back to anything else, say so.
            Err(e @ ClientError::Impostor { .. }) => {
                return Err(CliError::new(Exit::MonitorUnreachable, e.to_string()));
            }
            Err(e) => crate::exit::root_cause(&e),
        };
        let m = &self.config.monitor;
        if let (true, Some(token)) = (m.tcp_enabled, m.tcp_token.as_ref().map(|t| t.expose())) {
            let mut addr = m.tcp_listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let connect = tokio::time::timeout(self.timeout, IpcClient::connect_tcp(addr, token));
            match connect.await.unwrap_or_else(|_| {
                Err(ClientError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer to the token",
                )))
            }) {
                Ok(c) => {
                    self.out.note(&format!(
                        "via codi-monitor at {addr} (TCP; nothing answers at {})",
                        self.socket().display()
                    ));
                    return Ok(Ok(Client::Tcp(c)));
                }
                Err(e @ ClientError::Impostor { .. }) => {
                    return Err(CliError::new(Exit::MonitorUnreachable, e.to_string()));
                }
                Err(ClientError::Refused(_)) => {
                    return Err(CliError::credentials(format!(
                        "codi-monitor at {addr} refused the TCP token (monitor.tcp_token / CODI_TCP_TOKEN)"
                    )));
                }
                Err(_) => {}
            }
        }
        Ok(Err(unix_error))
    }

    /// The daemon, or a clear error for commands that need it.
    async fn daemon(&self) -> Result<Client> {
        match self.connect().await? {
            Ok(c) => Ok(c),
            Err(why) => Err(self.unreachable(&why)),
        }
    }

    fn unreachable(&self, why: &str) -> CliError {
        CliError::new(
            Exit::MonitorUnreachable,
            format!(
                "codi-monitor is not running: nothing answers at {} ({why}); start it with `codi-monitor`",
                self.socket().display()
            ),
        )
    }

    /// The daemon, else the SQLite file directly (`create`: even when it does not exist yet).
    async fn target(&self, create: bool) -> Result<Target> {
        match self.connect().await? {
            Ok(c) => Ok(Target::Daemon(c)),
            Err(why) => {
                let db = self.db();
                if self.config.monitor.tcp_enabled {
                    // The daemon is reached over TCP (another container, another host):
                    // this machine's file is not the one it reads and syncs.
                    return Err(CliError::new(
                        Exit::MonitorUnreachable,
                        format!(
                            "codi-monitor is not reachable (nothing answers at {} nor over TCP at {}: {why}); not writing to {}, which that daemon does not read",
                            self.socket().display(),
                            self.config.monitor.tcp_listen,
                            db.display()
                        ),
                    ));
                }
                if !create && !db.exists() {
                    return Err(CliError::new(
                        Exit::MonitorUnreachable,
                        format!(
                            "codi-monitor is not running (nothing answers at {}: {why}) and there is no database at {}",
                            self.socket().display(),
                            db.display()
                        ),
                    ));
                }
                self.out.note(&format!(
                    "codi-monitor not reachable at {}: using {} directly",
                    self.socket().display(),
                    db.display()
                ));
                let synchronous = self
                    .config
                    .synchronous()
                    .map_err(|e| CliError::usage(e.to_string()))?;
                let store = MonitorStore::open(db, synchronous)
                    .await
                    .map_err(|e| CliError::failure(format!("cannot open {}: {e}", db.display())))?;
                Ok(Target::Direct(store))
            }
        }
    }

    pub async fn log(&self, args: LogArgs) -> Result<()> {
        let template = LogEntry {
            level: args.level,
            component: args.component.clone(),
            message: String::new(),
            metadata: args.metadata.clone(),
            session_id: args.session.clone(),
            timestamp: None,
            id: None,
        };
        let from_stdin = args.stdin || args.message.as_deref() == Some("-");
        // Refuse bad input before touching the daemon or the file.
        NewEntry::parse(template.clone()).map_err(CliError::usage)?;
        let message = match from_stdin {
            true => None,
            false => Some(args.message.unwrap_or_default()),
        };
        if message.as_ref().is_some_and(|m| m.len() > MAX_MESSAGE) {
            return Err(CliError::usage(format!(
                "the message is over {MAX_MESSAGE} bytes"
            )));
        }
        let mut target = self.target(true).await?;
        let result = match message {
            None => self.log_stdin(&mut target, &template).await,
            Some(message) => {
                let entry = LogEntry {
                    message,
                    timestamp: Some(chrono::Utc::now()),
                    id: Some(uuid::Uuid::now_v7()),
                    ..template
                };
                store(&mut target, vec![entry], self).await.map(|n| (n, 0))
            }
        };
        let via = match &target {
            Target::Daemon(_) => "codi-monitor",
            Target::Direct(_) => "database",
        };
        if let Target::Direct(store) = &target {
            store.close().await;
        }
        let (stored, refused) = result?;
        let noun = if stored == 1 { "entry" } else { "entries" };
        let human = match refused {
            0 => format!("stored {stored} {noun}"),
            n => format!("stored {stored} {noun}; {n} lines refused"),
        };
        self.out.result(
            &human,
            serde_json::json!({"stored": stored, "refused": refused, "via": via}),
        )?;
        if refused > 0 {
            return Err(CliError::failure(format!(
                "{refused} lines were not stored (over {MAX_MESSAGE} bytes)"
            )));
        }
        Ok(())
    }

    /// One entry per line of stdin, in batches; returns (stored, refused).
    async fn log_stdin(&self, target: &mut Target, template: &LogEntry) -> Result<(u64, u64)> {
        let (tx, mut rx) = mpsc::channel::<std::io::Result<String>>(BATCH_ENTRIES);
        std::thread::spawn(move || read_lines(std::io::stdin().lock(), tx));
        let (mut stored, mut refused, mut line_no) = (0u64, 0u64, 0u64);
        let mut batch: Vec<LogEntry> = Vec::new();
        let mut bytes = 0usize;
        // What every entry adds to a frame besides its message.
        let overhead = 128
            + template.component.len()
            + template.session_id.as_ref().map_or(0, String::len)
            + template
                .metadata
                .as_ref()
                .map_or(0, |m| m.to_string().len());
        loop {
            let next = if batch.is_empty() {
                rx.recv().await
            } else {
                match tokio::time::timeout(LINGER, rx.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        stored += self.flush(target, &mut batch, &mut bytes, stored).await?;
                        continue;
                    }
                }
            };
            let line = match next {
                None => break,
                Some(Err(e)) => {
                    stored += self.flush(target, &mut batch, &mut bytes, stored).await?;
                    return Err(CliError::failure(format!(
                        "cannot read stdin after {stored} stored entries: {e}"
                    )));
                }
                Some(Ok(line)) => line,
            };
            line_no += 1;
            if line.is_empty() {
                continue;
            }
            if line.len() > MAX_MESSAGE {
                self.out.warn(&format!(
                    "line {line_no} is over {MAX_MESSAGE} bytes: not stored"
                ));
                refused += 1;
                continue;
            }
            bytes += line.len() + overhead;
            batch.push(LogEntry {
                message: line,
                timestamp: Some(chrono::Utc::now()),
                id: Some(uuid::Uuid::now_v7()),
                ..template.clone()
            });
            if batch.len() >= BATCH_ENTRIES || bytes >= BATCH_BYTES {
                stored += self.flush(target, &mut batch, &mut bytes, stored).await?;
            }
        }
        stored += self.flush(target, &mut batch, &mut bytes, stored).await?;
        Ok((stored, refused))
    }

    async fn flush(
        &self,
        target: &mut Target,
        batch: &mut Vec<LogEntry>,
        bytes: &mut usize,
        stored_before: u64,
    ) -> Result<u64> {
        *bytes = 0;
        if batch.is_empty() {
            return Ok(0);
        }
        let entries = std::mem::take(batch);
        let first = store(target, entries.clone(), self).await;
        // The daemon went away (or hung) with this batch in flight: it may or may not be
        // stored. Every entry carries its id, so sending it again (to a daemon that came
        // back, or to the file) stores each entry once whatever happened.
        let result = match first {
            Err(e) if e.exit == Exit::MonitorUnreachable => {
                self.out
                    .note(&format!("{}; sending the batch again", e.message));
                match self.target(true).await {
                    Ok(again) => {
                        if let Target::Direct(old) = std::mem::replace(target, again) {
                            old.close().await;
                        }
                        store(target, entries, self).await
                    }
                    Err(_) => Err(e),
                }
            }
            other => other,
        };
        result.map_err(|mut e| {
            if stored_before > 0 {
                e.message = format!("{} ({stored_before} entries were stored)", e.message);
            }
            e
        })
    }

    pub async fn query(&self, args: QueryArgs) -> Result<()> {
        let mut filter = log_filter(&args.filters, &args.window)?;
        let mut target = self.target(false).await?;
        // A page holds at most what one reply frame carries: follow `before_seq` until
        // `--limit` entries are in or there are no more.
        let mut entries: Vec<StoredLog> = Vec::new();
        let mut total = 0;
        let result = loop {
            let want = args.limit.saturating_sub(entries.len() as u32);
            if want == 0 {
                break Ok(());
            }
            filter.before_seq = entries.last().map(|e| e.seq);
            match self.query_page(&mut target, filter.clone(), want).await {
                Ok((page, count)) => {
                    total = count;
                    if page.is_empty() {
                        break Ok(());
                    }
                    entries.extend(page);
                }
                Err(e) => break Err(e),
            }
        };
        if let Target::Direct(store) = &target {
            store.close().await;
        }
        result?;
        self.print_entries(&entries, total)
    }

    /// One page, newest first, and how many entries match in all.
    async fn query_page(
        &self,
        target: &mut Target,
        filter: LogFilter,
        limit: u32,
    ) -> Result<(Vec<StoredLog>, u64)> {
        match target {
            Target::Daemon(c) => match c.call(self, Payload::QueryLogs { filter, limit }).await? {
                Payload::LogResults {
                    entries,
                    total_count,
                } => Ok((entries, total_count)),
                other => Err(unexpected(other)),
            },
            Target::Direct(store) => store.query(filter, limit).await.map_err(|e| {
                CliError::failure(format!("cannot read {}: {e}", self.db().display()))
            }),
        }
    }

    fn print_entries(&self, entries: &[StoredLog], total: u64) -> Result<()> {
        // Newest first from the store; oldest first on the screen, like a log file.
        for e in entries.iter().rev() {
            if self.out.json {
                let v = serde_json::to_value(e)
                    .map_err(|e| CliError::failure(format!("cannot encode an entry: {e}")))?;
                self.out.json_line(&v)?;
            } else {
                self.out.line(&output::entry_line(
                    e.timestamp,
                    e.level,
                    &e.component,
                    e.session_id.as_deref(),
                    &e.message,
                ))?;
            }
        }
        if !self.out.json && total > entries.len() as u64 {
            crate::output::say!(
                "codi2: the newest {} of {total} matching entries (raise --limit for more)",
                entries.len()
            );
        }
        Ok(())
    }

    pub async fn watch(&self, command: WatchCommand) -> Result<()> {
        match command {
            WatchCommand::Add {
                path,
                patterns,
                no_recursive,
                session,
                poll,
            } => {
                let path = std::fs::canonicalize(&path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => CliError::not_found(format!(
                        "no such file or directory: {}",
                        path.display()
                    )),
                    _ => CliError::failure(format!("cannot resolve {}: {e}", path.display())),
                })?;
                let mode = if poll {
                    WatchMode::Polling
                } else {
                    WatchMode::Native
                };
                let recursive = !no_recursive;
                let mut c = self.daemon().await?;
                let reply = c
                    .call(
                        self,
                        Payload::StartMonitoring {
                            path: path.clone(),
                            recursive,
                            patterns: patterns.clone(),
                            session_id: session.clone(),
                            mode,
                        },
                    )
                    .await?;
                accepted(reply)?;
                let how = match (recursive, mode) {
                    (true, WatchMode::Native) => "recursively",
                    (false, WatchMode::Native) => "not recursively",
                    (true, WatchMode::Polling) => "recursively, polling",
                    (false, WatchMode::Polling) => "not recursively, polling",
                };
                self.out.result(
                    &format!("watching {} ({how})", path.display()),
                    serde_json::json!({
                        "path": path, "recursive": recursive, "patterns": patterns,
                        "mode": mode.as_str(), "session_id": session,
                    }),
                )
            }
            WatchCommand::Remove { path } => {
                // The path may be gone already: canonical when it exists, absolute otherwise.
                let path = std::fs::canonicalize(&path)
                    .or_else(|_| std::path::absolute(&path))
                    .unwrap_or(path);
                let mut c = self.daemon().await?;
                let reply = c
                    .call(self, Payload::StopMonitoring { path: path.clone() })
                    .await?;
                match reply {
                    Payload::Error {
                        code: ErrorCode::NotFound,
                        ..
                    } => Err(CliError::not_found(format!(
                        "{} is not watched",
                        path.display()
                    ))),
                    other => {
                        accepted(other)?;
                        self.out.result(
                            &format!("stopped watching {}", path.display()),
                            serde_json::json!({"path": path, "removed": true}),
                        )
                    }
                }
            }
            WatchCommand::List => {
                let mut c = self.daemon().await?;
                let paths = match c.call(self, Payload::ListMonitoring).await? {
                    Payload::Monitoring { paths } => paths,
                    other => return Err(unexpected(other)),
                };
                for w in &paths {
                    if self.out.json {
                        self.out.json_line(&serde_json::json!({
                            "path": w.path, "recursive": w.recursive, "patterns": w.patterns,
                            "mode": w.mode.as_str(), "session_id": w.session_id,
                        }))?;
                    } else {
                        let mut line = format!(
                            "{}  {}{}",
                            w.path.display(),
                            w.mode.as_str(),
                            if w.recursive { ", recursive" } else { "" }
                        );
                        if !w.patterns.is_empty() {
                            line.push_str(&format!(", patterns {}", w.patterns.join(" ")));
                        }
                        if let Some(s) = &w.session_id {
                            line.push_str(&format!(", session {s}"));
                        }
                        self.out.line(&line)?;
                    }
                }
                if paths.is_empty() && !self.out.json {
                    crate::output::say!("codi2: no paths are watched");
                }
                Ok(())
            }
        }
    }

    pub async fn session(&self, command: SessionCommand) -> Result<()> {
        match command {
            SessionCommand::Start {
                identity,
                agent_type,
                id,
            } => {
                let session_id = id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
                let mut c = self.daemon().await?;
                let reply = c
                    .call(
                        self,
                        Payload::SessionStart {
                            session_id: session_id.clone(),
                            identity: identity.clone(),
                            agent_type: agent_type.clone(),
                        },
                    )
                    .await?;
                accepted(reply)?;
                // The id alone, so that `SID=$(codi2 session start …)` works.
                self.out.result(
                    &session_id,
                    serde_json::json!({
                        "session_id": session_id, "identity": identity, "agent_type": agent_type,
                    }),
                )
            }
            SessionCommand::End { id } => {
                let mut c = self.daemon().await?;
                match c
                    .call(
                        self,
                        Payload::SessionEnd {
                            session_id: id.clone(),
                        },
                    )
                    .await?
                {
                    Payload::Error {
                        code: ErrorCode::NotFound,
                        ..
                    } => Err(CliError::not_found(format!("no open session {id}"))),
                    other => {
                        accepted(other)?;
                        self.out.result(
                            &format!("session {id} ended"),
                            serde_json::json!({"session_id": id, "ended": true}),
                        )
                    }
                }
            }
        }
    }

    pub async fn status(&self) -> Result<()> {
        let socket = self.socket().display().to_string();
        let mut c = match self.connect().await? {
            Ok(c) => c,
            Err(why) => {
                self.out.result(
                    &format!("codi-monitor is not running: nothing answers at {socket} ({why})"),
                    serde_json::json!({"running": false, "socket": socket, "error": why}),
                )?;
                return Err(CliError::new(Exit::MonitorUnreachable, ""));
            }
        };
        match c.call(self, Payload::GetStatus).await? {
            Payload::Status {
                components,
                uptime_ms,
                version,
            } => {
                if self.out.json {
                    self.out.json_line(&serde_json::json!({
                        "running": true,
                        "socket": socket,
                        "version": version,
                        "uptime_ms": uptime_ms,
                        "components": components,
                    }))?;
                } else {
                    self.out.line(&format!(
                        "codi-monitor {version} at {socket}, up {}",
                        output::uptime(uptime_ms)
                    ))?;
                    for comp in &components {
                        let detail = comp
                            .detail
                            .as_deref()
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default();
                        self.out
                            .line(&format!("  {:<10} {}{detail}", comp.name, comp.status))?;
                    }
                }
                let unhealthy: Vec<&str> = components
                    .iter()
                    .filter(|c| c.status == "unhealthy")
                    .map(|c| c.name.as_str())
                    .collect();
                if unhealthy.is_empty() {
                    Ok(())
                } else {
                    Err(CliError::failure(format!(
                        "codi-monitor reports unhealthy: {}",
                        unhealthy.join(", ")
                    )))
                }
            }
            other => Err(unexpected(other)),
        }
    }
}

impl Client {
    /// One request; a daemon that does not answer within `--timeout` is reported
    /// as unreachable (a hung daemon must not hang scripts).
    async fn call(&mut self, local: &Local, payload: Payload) -> Result<Payload> {
        let call = async {
            match self {
                Client::Unix(c) => c.call(payload).await,
                Client::Tcp(c) => c.call(payload).await,
            }
        };
        let Ok(reply) = tokio::time::timeout(local.timeout, call).await else {
            return Err(CliError::new(
                Exit::MonitorUnreachable,
                format!(
                    "codi-monitor at {} did not answer within {}",
                    local.socket().display(),
                    humantime::format_duration(local.timeout)
                ),
            ));
        };
        reply.map_err(|e| {
            CliError::new(
                Exit::MonitorUnreachable,
                format!(
                    "lost codi-monitor at {}: {}",
                    local.socket().display(),
                    crate::exit::root_cause(&e)
                ),
            )
        })
    }
}

/// Stores entries through the daemon or directly; how many were stored.
async fn store(target: &mut Target, entries: Vec<LogEntry>, local: &Local) -> Result<u64> {
    match target {
        Target::Daemon(c) => {
            let payload =
                match entries.len() {
                    1 => Payload::LogEntry(entries.into_iter().next().ok_or_else(|| {
                        CliError::failure("internal error: an empty batch of one")
                    })?),
                    _ => Payload::LogBatch { entries },
                };
            let reply = c.call(local, payload).await?;
            accepted(reply).map(u64::from)
        }
        Target::Direct(store) => {
            let parsed = entries
                .into_iter()
                .map(NewEntry::parse)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(CliError::usage)?;
            store.append(parsed).await.map(u64::from).map_err(|e| {
                CliError::failure(format!("cannot write {}: {e}", local.db().display()))
            })
        }
    }
}

/// The count of an `Accepted` acknowledgment, or the error the reply stands for.
fn accepted(reply: Payload) -> Result<u32> {
    match reply {
        Payload::Acknowledgment {
            status: AckStatus::Accepted | AckStatus::Queued,
            stored,
            ..
        } => Ok(stored),
        Payload::Acknowledgment {
            status: AckStatus::Rejected(reason),
            ..
        } => Err(CliError::usage(format!("codi-monitor refused: {reason}"))),
        other => Err(unexpected(other)),
    }
}

/// An `Error` reply (or a reply that does not fit the request) as an error.
fn unexpected(reply: Payload) -> CliError {
    match reply {
        Payload::Error { code, message, .. } => {
            let exit = match code {
                ErrorCode::NotFound => Exit::NotFound,
                ErrorCode::BadRequest | ErrorCode::PayloadTooLarge => Exit::Usage,
                ErrorCode::AuthRequired | ErrorCode::AccessDenied => Exit::Credentials,
                _ => Exit::Failure,
            };
            CliError::new(exit, format!("codi-monitor: {message}"))
        }
        _ => CliError::failure("codi-monitor sent a reply that does not fit the request"),
    }
}

fn log_filter(filters: &Filters, window: &Window) -> Result<LogFilter> {
    if let (Some(s), Some(u)) = (window.since, window.until)
        && s > u
    {
        return Err(CliError::usage("--since must not be after --until"));
    }
    Ok(LogFilter {
        min_level: filters.level,
        component: filters.component.clone(),
        session_id: filters.session.clone(),
        since: window.since,
        until: window.until,
        before_seq: None,
    })
}

/// Reads lines (any bytes: invalid UTF-8 is replaced, `\r\n` ends a line too) until EOF.
/// Sends each line of `input` (without its line ending); a line longer than
/// [`MAX_MESSAGE`] is cut there (and so refused by the caller) while the rest of it is
/// skipped, so no line holds more memory than that.
fn read_lines(mut input: impl std::io::BufRead, tx: mpsc::Sender<std::io::Result<String>>) {
    use std::io::{BufRead, Read};
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let limit = (MAX_MESSAGE + 2) as u64;
        match input.by_ref().take(limit).read_until(b'\n', &mut buf) {
            Ok(0) => return,
            Ok(_) => {
                if buf.last() != Some(&b'\n') && buf.len() as u64 == limit {
                    // Over-long: skip to the end of this line.
                    let mut rest = Vec::new();
                    loop {
                        rest.clear();
                        match input.by_ref().take(64 * 1024).read_until(b'\n', &mut rest) {
                            Ok(0) => break,
                            Ok(_) if rest.last() == Some(&b'\n') => break,
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                let _ = tx.blocking_send(Err(e));
                                return;
                            }
                        }
                    }
                }
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                let line = String::from_utf8_lossy(&buf).into_owned();
                if tx.blocking_send(Ok(line)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_at_newlines_and_keep_bad_bytes() {
        let (tx, mut rx) = mpsc::channel(16);
        read_lines(&b"one\r\ntwo\n\xff three\nlast"[..], tx);
        let mut got = Vec::new();
        while let Ok(Ok(l)) = rx.try_recv() {
            got.push(l);
        }
        assert_eq!(got, ["one", "two", "\u{fffd} three", "last"]);
    }

    #[test]
    fn an_endless_line_is_cut_and_the_next_one_kept() {
        let mut input = vec![b'x'; MAX_MESSAGE * 3];
        input.extend_from_slice(b"\nnext\n");
        let (tx, mut rx) = mpsc::channel(16);
        read_lines(&input[..], tx);
        let mut got = Vec::new();
        while let Ok(Ok(l)) = rx.try_recv() {
            got.push(l);
        }
        assert_eq!(got.len(), 2);
        assert!(got[0].len() > MAX_MESSAGE && got[0].len() <= MAX_MESSAGE + 2);
        assert_eq!(got[1], "next");
    }
}
