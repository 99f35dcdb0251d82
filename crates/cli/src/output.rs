//! What goes to stdout (results: human lines, or JSON) and stderr (notes and errors).

/// A line on stderr; a closed stderr (`codi2 … 2>&1 | head`) is no reason to panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use say;

use crate::exit::{CliError, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use coditect_proto::Level;
use std::io::Write;

/// How results are printed.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
    pub verbose: bool,
}

impl Out {
    /// One line on stdout, flushed (a tail's reader sees it at once). A closed stdout ends
    /// the command quietly.
    pub fn line(&self, text: &str) -> Result<()> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::BrokenPipe => CliError::closed_output(),
                _ => CliError::failure(format!("cannot write to stdout: {e}")),
            })
    }

    /// One JSON value on one line.
    pub fn json_line(&self, value: &serde_json::Value) -> Result<()> {
        self.line(&value.to_string())
    }

    /// A human line, or the JSON value with `--json`.
    pub fn result(&self, human: &str, json: serde_json::Value) -> Result<()> {
        if self.json {
            self.json_line(&json)
        } else {
            self.line(human)
        }
    }

    /// A note on stderr with `--verbose`.
    pub fn note(&self, text: &str) {
        if self.verbose {
            say!("codi2: {text}");
        }
    }

    /// An instruction for the person at the terminal, on stderr, always (also with
    /// `--json`: stdout stays the machine's).
    pub fn tell(&self, text: &str) {
        say!("codi2: {text}");
    }

    /// A warning on stderr, always.
    pub fn warn(&self, text: &str) {
        say!("codi2: {text}");
    }
}

/// `2026-11-26T03:00:00.123Z INFO  component [session] message`.
pub fn entry_line(
    timestamp: DateTime<Utc>,
    level: Level,
    component: &str,
    session: Option<&str>,
    message: &str,
) -> String {
    let ts = timestamp.to_rfc3339_opts(SecondsFormat::Millis, true);
    let level = level.as_str().to_ascii_uppercase();
    let message = one_line(message);
    let component = one_line(component);
    match session.map(one_line) {
        Some(s) => format!("{ts} {level:<5} {component} [{s}] {message}"),
        None => format!("{ts} {level:<5} {component} {message}"),
    }
}

/// Control characters escaped (`\n`, `\u{1b}`): one entry stays one line, and a message
/// cannot drive the terminal.
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `1h 2m 3s` from milliseconds (whole seconds).
pub fn uptime(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_one_aligned_line() {
        let t = DateTime::parse_from_rfc3339("2026-11-26T03:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            entry_line(t, Level::Info, "cli", Some("s-1"), "hello"),
            "2026-11-26T03:00:00.123Z INFO  cli [s-1] hello"
        );
        assert_eq!(
            entry_line(t, Level::Error, "db", None, "down"),
            "2026-11-26T03:00:00.123Z ERROR db down"
        );
        assert_eq!(uptime(3_723_456), "1h 2m 3s");
        assert_eq!(one_line("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
    }
}
