//! `codi-monitor`: thin entry point; everything lives in the library.

use clap::Parser;
use coditect_monitor::config::{Config, Overrides};
use coditect_monitor::daemon::{Daemon, signalled};
use std::path::PathBuf;
use std::process::ExitCode;

/// The CODITECT monitor daemon: takes log entries and commands from local clients (codi2)
/// over a Unix socket, stores them durably in SQLite, and syncs them to the hub.
#[derive(Parser)]
#[command(name = "codi-monitor", version)]
struct Cli {
    /// TOML configuration file (sections general, storage, monitor, server_hub) [env: CODI_CONFIG]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Unix socket to listen on [env: CODI_SOCKET]
    #[arg(long)]
    socket: Option<PathBuf>,
    /// SQLite database file [env: CODI_DB]
    #[arg(long)]
    db: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        config: cli.config,
        socket: cli.socket,
        db: cli.db,
    };
    let config = match Config::load(&overrides, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("codi-monitor: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    match Daemon::start(config).await {
        Ok(daemon) => {
            daemon.run(signalled()).await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot start");
            eprintln!("codi-monitor: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.general.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.general.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}
