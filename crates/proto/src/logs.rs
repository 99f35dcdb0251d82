//! Log entries as they travel between the monitor, the CLI and the hub.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Severity, in increasing order (so `level >= Level::Warn` means "warnings and worse").
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default, utoipa::ToSchema,
)]
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

/// Deepest nesting of arrays and objects an entry's metadata may have (the object itself
/// is level 1). Every reader of stored entries copes with deeper data from older
/// versions; this keeps new data well inside what JSON libraries parse by default.
pub const MAX_METADATA_DEPTH: usize = 32;

/// How deeply `json` nests arrays and objects (0 for a scalar), read in one pass without
/// recursion, so any input is safe to measure. Brackets inside strings do not count;
/// `json` is expected to be valid JSON (the answer for anything else is meaningless but
/// harmless).
pub fn json_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in json.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Checks an entry's metadata (JSON text): an object, at most `max_bytes` long and
/// [`MAX_METADATA_DEPTH`] deep. `Err` says which rule it breaks.
pub fn check_metadata(json: &str, max_bytes: usize) -> Result<(), String> {
    if json.len() > max_bytes {
        return Err(format!("metadata is over {max_bytes} bytes"));
    }
    if !json.trim_start().starts_with('{') {
        return Err("metadata must be a JSON object".into());
    }
    if json_depth(json) > MAX_METADATA_DEPTH {
        return Err(format!(
            "metadata is nested more than {MAX_METADATA_DEPTH} levels deep"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod depth_tests {
    use super::*;

    #[test]
    fn depth_counts_brackets_outside_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth("{}"), 1);
        assert_eq!(json_depth(r#"{"a":[1,{"b":2}],"c":{}}"#), 3);
        assert_eq!(json_depth(r#"{"a":"[[[{{{\"]]]"}"#), 1);
        assert_eq!(json_depth(r#"{"a\\":{"b":1}}"#), 2);
        let deep = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
        assert_eq!(
            json_depth(&deep),
            100_000,
            "no recursion, no stack overflow"
        );
    }

    #[test]
    fn metadata_rules_name_themselves() {
        assert!(check_metadata(r#"{"k":1}"#, 100).is_ok());
        assert!(check_metadata("[1]", 100).unwrap_err().contains("object"));
        assert!(
            check_metadata(r#"{"k":1}"#, 3)
                .unwrap_err()
                .contains("over 3 bytes")
        );
        let at_limit = format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_METADATA_DEPTH),
            "}".repeat(MAX_METADATA_DEPTH)
        );
        assert!(check_metadata(&at_limit, 1 << 20).is_ok());
        let over = format!("{{\"x\":{at_limit}}}");
        assert!(
            check_metadata(&over, 1 << 20)
                .unwrap_err()
                .contains("nested")
        );
    }
}
