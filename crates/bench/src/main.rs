//! CODITECT benchmarks. Each suite prints a Markdown table; every figure of our own layers
//! sits next to the same work done by the raw engine underneath, so the overhead reads
//! as a ratio even on a noisy shared machine. Results and commands: BENCHMARKS.md.

mod auth;
mod baseline;
mod hubproc;
mod ingest;
mod logins;
mod monitor;
mod query;
mod report;
mod rows;
mod tail;
mod workspaces;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "coditect-bench",
    about = "CODITECT benchmarks (tables on stdout)"
)]
struct Cli {
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Subcommand)]
enum Suite {
    /// Raw storage engines on the log-entry shape: SQLite batched inserts, PostgreSQL
    /// COPY, and the store's group-commit writer over the same rows.
    Baseline(baseline::Args),
    /// Access-token validation (beside a bare RSA verify) and login latency.
    Auth(auth::Args),
    /// A hub process's memory and login rate under a flood of failed and good logins.
    Logins(logins::Args),
    /// Sustained HTTP log ingestion into a hub process, beside the raw engines.
    Ingest(ingest::Args),
    /// Searches over a large tenant through the hub, beside plain SQLite rows.
    Query(query::Args),
    /// codi-monitor: IPC round trips, sustained writes, 1,000 clients, file events and
    /// idle memory, beside raw SQLite inserts of the same rows.
    Monitor(monitor::Args),
    /// Live-tail delivery latency beside a bare WebSocket broadcast, and idle memory.
    Tail(tail::Args),
    /// Workspaces on the process runtime: cold start, warm-pool claims and recovery beside
    /// a bare sandbox and the bare claim statement; 100 running at once.
    Workspaces(workspaces::Args),
    /// (internal) the bare WebSocket broadcast server the tail suite compares against.
    #[command(hide = true)]
    BareBroadcast,
    /// (internal) the bare Unix-socket echo server the monitor suite compares against.
    #[command(hide = true)]
    BareEcho { socket: std::path::PathBuf },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.suite {
            Suite::Baseline(args) => baseline::run(args).await,
            Suite::Auth(args) => auth::run(args).await,
            Suite::Ingest(args) => ingest::run(args).await,
            Suite::Logins(args) => logins::run(args).await,
            Suite::Query(args) => query::run(args).await,
            Suite::Tail(args) => tail::run(args).await,
            Suite::Workspaces(args) => workspaces::run(args).await,
            Suite::Monitor(args) => monitor::run(args).await,
            Suite::BareBroadcast => tail::bare_server().await,
            Suite::BareEcho { socket } => monitor::bare_echo(socket).await,
        }
    })
}
