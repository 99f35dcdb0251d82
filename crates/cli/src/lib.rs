//! `codi2`, the CODITECT command line (a thin `main` calls [`main`]).
//!
//! - [`args`]: the command line (clap);
//! - [`local`]: `log`, `query`, `watch`, `session`, `status` through codi-monitor, with
//!   `log` and `query` falling back to its SQLite file when no daemon answers;
//! - [`hub`]: `login`, `logout`, `logs` on the hub, and the credential `tail` shares;
//! - [`credentials`]: the 0600 credentials file;
//! - [`tail`]: the hub's live tail, resumed across dropped connections;
//! - [`output`]: human lines or JSON; [`exit`]: exit codes and errors.

pub mod args;
pub mod credentials;
pub mod exit;
pub mod hub;
pub mod local;
pub mod output;
pub mod sso;
pub mod tail;
pub mod ws;

use args::{Cli, Command, Shell};
use clap::{CommandFactory, Parser};
use coditect_monitor::config::{Config, Overrides};
use exit::{CliError, Exit};
use output::Out;
use std::process::ExitCode;

/// Parses the process's arguments, runs the command, prints any error on stderr, and
/// returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => Exit::Ok,
        Err(e) => {
            if !e.message.is_empty() {
                crate::output::say!("codi2: {}", e.message);
            }
            e.exit
        }
    };
    code.into()
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let out = Out {
        json: cli.global.json,
        verbose: cli.global.verbose,
    };
    if let Command::Completions { shell } = cli.command {
        return completions(shell);
    }
    let overrides = Overrides {
        config: cli.global.config.clone(),
        socket: cli.global.socket.clone(),
        db: cli.global.db.clone(),
    };
    // CODI_HUB_* are read by the hub commands themselves (a key alone is enough for
    // `codi2 logs`); the daemon's rules for them (sync needs url, key and workspace) are
    // the daemon's.
    let env = |k: &str| match k.starts_with("CODI_HUB_") {
        true => None,
        false => std::env::var(k).ok(),
    };
    let config = Config::load(&overrides, env)
        .map_err(|e| CliError::usage(format!("configuration: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failure(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        let local = local::Local {
            config: config.clone(),
            out,
            timeout: cli.global.timeout,
        };
        match cli.command {
            Command::Log(a) => local.log(a).await,
            Command::Query(a) => local.query(a).await,
            Command::Watch(c) => local.watch(c).await,
            Command::Session(c) => local.session(c).await,
            Command::Status => local.status().await,
            Command::Login(a) => hub::login(a, &config, out).await,
            Command::Logout(a) => hub::logout(a, &config, out).await,
            Command::Logs(a) => hub::logs(a, &config, out).await,
            Command::Tail(a) => tail::tail(a, &config, out).await,
            Command::Ws(c) => ws::run(c, &config, out).await,
            Command::Completions { .. } => Ok(()),
        }
    })
}

fn completions(shell: Shell) -> Result<(), CliError> {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "codi2", &mut buf);
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&buf)
        .and_then(|()| stdout.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => CliError::closed_output(),
            _ => CliError::failure(format!("cannot write to stdout: {e}")),
        })
}
