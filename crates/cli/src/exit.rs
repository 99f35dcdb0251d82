//! Exit codes and the one error type every command returns.
//!
//! Messages are lower-case, say what failed and what to do, and never carry a secret.

use std::process::ExitCode;

/// What the process exits with (documented in `codi2 --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Failure = 1,
    /// Clap's own code for usage errors, and ours for bad input.
    Usage = 2,
    MonitorUnreachable = 3,
    HubUnreachable = 4,
    Credentials = 5,
    NotFound = 6,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// A command's failure: the exit code and the message for stderr.
#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> CliError {
        CliError {
            exit,
            message: message.into(),
        }
    }

    pub fn failure(message: impl Into<String>) -> CliError {
        CliError::new(Exit::Failure, message)
    }

    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(Exit::Usage, message)
    }

    pub fn not_found(message: impl Into<String>) -> CliError {
        CliError::new(Exit::NotFound, message)
    }

    pub fn credentials(message: impl Into<String>) -> CliError {
        CliError::new(Exit::Credentials, message)
    }

    /// Stdout was closed by its reader (`codi2 tail | head`): stop quietly, successfully.
    pub fn closed_output() -> CliError {
        CliError::new(Exit::Ok, String::new())
    }
}

/// The innermost cause of an error, which is usually the one a person can act on
/// ("connection refused"), without the URLs the outer layers add.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

pub type Result<T, E = CliError> = std::result::Result<T, E>;
