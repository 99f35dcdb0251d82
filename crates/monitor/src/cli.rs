//! The command line: `codi-monitor [run]`, `codi-monitor supervise`, `codi-monitor health`.

use crate::config::{Config, Overrides};
use crate::daemon::{Daemon, signalled};
use crate::supervise::{SuperviseOptions, healthy, supervise};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The CODITECT monitor daemon: takes log entries and commands from local clients (codi2)
/// over a Unix socket, stores them durably in SQLite, watches files, and syncs everything
/// to the hub.
#[derive(Parser, Debug)]
#[command(
    name = "codi-monitor",
    version,
    after_help = "Exit codes: 0 stopped cleanly, 1 could not start (e.g. another daemon owns the socket), 2 bad configuration.\n\
                  Configuration: defaults < TOML file < CODI_* variables < flags."
)]
pub struct Cli {
    /// TOML configuration file (sections general, storage, monitor, server_hub) [env: CODI_CONFIG]
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Unix socket to listen on [env: CODI_SOCKET]
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// SQLite database file [env: CODI_DB]
    #[arg(long, global = true)]
    pub db: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon in the foreground (the default; what a service manager or a
    /// container entrypoint starts)
    Run,
    /// Keep a daemon running: restart it with backoff when it exits or fails its health
    /// check; SIGTERM stops both
    Supervise {
        /// Pid file, locked while the supervisor runs [default: next to the socket]
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// How often to check the daemon's health
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        health_interval: Duration,
        /// Failed checks in a row before a restart
        #[arg(long, default_value_t = 3)]
        unhealthy_after: u32,
        /// How long a daemon asked to stop (SIGTERM) may take before it is killed
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        stop_timeout: Duration,
    },
    /// Exit 0 when a daemon answers on the socket with a healthy store, else 1 (for
    /// container health checks and scripts)
    Health,
    /// Run as the agent inside a workspace (what the hub's runtimes start): configured
    /// from CODITECT_* variables, reports to the hub through CODITECT_HUB_SOCKET
    Agent,
}

/// Parses the command line and runs; the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        config: cli.config.clone(),
        socket: cli.socket.clone(),
        db: cli.db.clone(),
    };
    let config = match Config::load(&overrides, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("codi-monitor: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("codi-monitor: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(dispatch(cli, config))
}

async fn dispatch(cli: Cli, config: Config) -> ExitCode {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(config).await,
        Command::Agent => match crate::agent::AgentEnv::from_env(|k| std::env::var(k).ok()) {
            Ok(env) => crate::agent::run(env, config).await,
            Err(e) => {
                eprintln!("codi-monitor agent: {e}");
                ExitCode::from(2)
            }
        },
        Command::Health => {
            if healthy(&config.monitor.unix_socket_path).await {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "codi-monitor: no healthy daemon at {}",
                    config.monitor.unix_socket_path.display()
                );
                ExitCode::from(1)
            }
        }
        Command::Supervise {
            pid_file,
            health_interval,
            unhealthy_after,
            stop_timeout,
        } => {
            let socket = config.monitor.unix_socket_path.clone();
            let mut daemon_args: Vec<OsString> = Vec::new();
            for (flag, value) in [
                ("--config", &cli.config),
                ("--socket", &cli.socket),
                ("--db", &cli.db),
            ] {
                if let Some(v) = value {
                    daemon_args.push(flag.into());
                    daemon_args.push(v.into());
                }
            }
            supervise(SuperviseOptions {
                pid_file: pid_file.unwrap_or_else(|| socket.with_extension("pid")),
                socket,
                daemon_args,
                health_interval: health_interval.max(Duration::from_millis(100)),
                unhealthy_after: unhealthy_after.max(1),
                grace: stop_timeout,
            })
            .await
        }
    }
}

async fn run(config: Config) -> ExitCode {
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
