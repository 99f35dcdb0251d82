//! Log entries as they travel between the monitor, the CLI and the hub.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Severity, in increasing order (so `level >= Level::Warn` means "warnings and worse").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
    Fatal,
}

impl Level {
    pub const ALL: [Level; 6] = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Fatal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }

    /// Compact form for storage (0 = trace … 5 = fatal).
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(n: u8) -> Option<Level> {
        Level::ALL.get(usize::from(n)).copied()
    }

    /// The bit of this level in a set of levels.
    pub fn bit(self) -> u8 {
        1 << self.as_u8()
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;

    /// Any case; `warning`, `err`, `critical`/`crit` and `panic` are understood too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "trace" => Ok(Level::Trace),
            "debug" => Ok(Level::Debug),
            "info" | "information" | "notice" => Ok(Level::Info),
            "warn" | "warning" => Ok(Level::Warn),
            "error" | "err" => Ok(Level::Error),
            "fatal" | "critical" | "crit" | "panic" | "emergency" | "alert" => Ok(Level::Fatal),
            other => Err(format!(
                "unknown level {other:?}: expected trace, debug, info, warn, error or fatal"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_in_any_case_and_order_by_severity() {
        for level in Level::ALL {
            assert_eq!(level.as_str().to_uppercase().parse::<Level>(), Ok(level));
            assert_eq!(Level::from_u8(level.as_u8()), Some(level));
        }
        assert_eq!("Warning".parse::<Level>(), Ok(Level::Warn));
        assert!("verbose".parse::<Level>().is_err());
        assert!(Level::Error > Level::Warn && Level::Trace < Level::Debug);
        assert_eq!(Level::from_u8(6), None);
    }
}
