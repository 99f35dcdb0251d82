//! Which paths under a watch are recorded: include globs (any may match; none = every
//! path) and exclude globs (a leading `!`; none may match), relative to the watch root.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct PathFilter {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

impl PathFilter {
    /// Builds the filter; the reason when a pattern is not a valid glob.
    pub fn new(patterns: &[String]) -> Result<PathFilter, String> {
        let mut include = GlobSetBuilder::new();
        let mut exclude = GlobSetBuilder::new();
        let mut any_include = false;
        for p in patterns {
            let (set, text) = match p.strip_prefix('!') {
                Some(rest) => (&mut exclude, rest),
                None => {
                    any_include = true;
                    (&mut include, p.as_str())
                }
            };
            if text.is_empty() {
                return Err(format!("pattern {p:?} is empty"));
            }
            set.add(glob(text).map_err(|e| format!("pattern {p:?}: {e}"))?);
        }
        let build = |b: GlobSetBuilder| b.build().map_err(|e| e.to_string());
        Ok(PathFilter {
            include: if any_include {
                Some(build(include)?)
            } else {
                None
            },
            exclude: build(exclude)?,
        })
    }

    /// Whether `relative` (a path below the watch root) is recorded.
    pub fn accepts(&self, relative: &Path) -> bool {
        if self.exclude.is_match(relative) {
            return false;
        }
        self.include.as_ref().is_none_or(|s| s.is_match(relative))
    }
}

/// A glob where `*` stays within one directory and `**` crosses them.
pub fn glob(text: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(text).literal_separator(true).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(p: &[&str]) -> PathFilter {
        PathFilter::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn include_and_exclude() {
        let all = f(&[]);
        assert!(all.accepts(Path::new("a/b.txt")));
        let rs = f(&["**/*.rs", "!target/**"]);
        assert!(rs.accepts(Path::new("src/main.rs")));
        assert!(rs.accepts(Path::new("main.rs")));
        assert!(!rs.accepts(Path::new("target/debug/x.rs")));
        assert!(!rs.accepts(Path::new("README.md")));
        let top = f(&["*.md"]);
        assert!(top.accepts(Path::new("README.md")));
        assert!(!top.accepts(Path::new("docs/x.md")));
        let no_git = f(&["!.git/**"]);
        assert!(no_git.accepts(Path::new("src/x")));
        assert!(!no_git.accepts(Path::new(".git/HEAD")));
    }

    #[test]
    fn bad_patterns_are_named() {
        let e = PathFilter::new(&["a[".into()]).unwrap_err();
        assert!(e.contains("a["), "{e}");
        assert!(PathFilter::new(&["!".into()]).is_err());
    }
}
