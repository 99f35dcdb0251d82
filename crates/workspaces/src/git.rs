//! A workspace made from a Git repository: the hub clones it on its own side (a
//! workspace may have no network, and never sees a credential) into a scratch directory,
//! and the runtime puts the result into the home before the first start
//! ([`crate::Runtime::seed_home`]).
//!
//! The URL is `http://` or `https://` only (no `file://`, `ssh://` or local paths: a
//! tenant must not make the hub read its own disk). A credential given in it
//! (`https://user:token@host/repo.git`) is split off at once: the clean URL is what is
//! stored, cloned and left as the clone's `origin`; the credential reaches git only as an
//! `Authorization` header through the environment (`GIT_CONFIG_*`, not the command line
//! other users of the machine can read), and is scrubbed from anything git prints.

use crate::RuntimeError;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Stdio;

/// Where a workspace's home comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    /// `http(s)://host/path`, without credentials.
    pub url: String,
    /// A branch or tag to check out; `None`: the repository's default branch.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// `user:token` for the first clone only; erased once it succeeded. Never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Set once the home holds the clone: later starts leave the home alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cloned: bool,
}

const MAX_URL: usize = 2048;

impl Repository {
    /// Parses what a user gave: the URL (credentials in it split off) and a ref.
    pub fn parse(raw_url: &str, reference: Option<&str>) -> Result<Repository, String> {
        let raw = raw_url.trim();
        if raw.len() > MAX_URL || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "repository url: at most {MAX_URL} characters, no spaces"
            ));
        }
        let (scheme, rest) = raw
            .split_once("://")
            .filter(|(s, _)| matches!(s.to_ascii_lowercase().as_str(), "http" | "https"))
            .ok_or("repository url: http:// or https:// only")?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (credential, host) = match authority.rsplit_once('@') {
            Some((userinfo, host)) => (Some(userinfo.to_string()), host),
            None => (None, authority),
        };
        if host.is_empty() || host.contains(['?', '#']) {
            return Err("repository url: no host".into());
        }
        if path.is_empty() {
            return Err("repository url: no repository path".into());
        }
        let credential = credential.filter(|c| !c.is_empty()).map(|c| {
            // user:token, or a bare token (GitHub-style: any user name).
            if c.contains(':') {
                percent_decode(&c)
            } else {
                format!("git:{}", percent_decode(&c))
            }
        });
        if let Some(r) = reference {
            let ok = !r.is_empty()
                && r.len() <= 255
                && !r.starts_with('-')
                && !r.contains("..")
                && r.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"~^:?*[\\".contains(&b));
            if !ok {
                return Err(format!("repository ref {r:?}: a branch or tag name"));
            }
        }
        Ok(Repository {
            url: format!("{}://{host}/{path}", scheme.to_ascii_lowercase()),
            reference: reference.map(str::to_string),
            credential,
            cloned: false,
        })
    }

    /// Clones into `into` (which must not exist), bounded by the caller's timeout (the
    /// child is killed when the future is dropped).
    pub async fn clone_into(&self, into: &Path) -> Result<(), RuntimeError> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.arg("clone").arg("--quiet");
        if let Some(r) = &self.reference {
            cmd.arg("--branch").arg(r);
        }
        cmd.arg("--").arg(&self.url).arg(into);
        let scratch = into.with_extension("git-home");
        let _ = std::fs::create_dir_all(&scratch);
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &scratch)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            // Submodules and redirects stay on http(s).
            .env("GIT_ALLOW_PROTOCOL", "http:https")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(c) = &self.credential {
            use base64::Engine;
            let basic = base64::engine::general_purpose::STANDARD.encode(c);
            cmd.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                .env(
                    "GIT_CONFIG_VALUE_0",
                    format!("Authorization: Basic {basic}"),
                );
        }
        let out = cmd.output().await;
        let _ = std::fs::remove_dir_all(&scratch);
        let out = out.map_err(|e| RuntimeError::Failed(format!("cannot run git: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        let mut said = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if let Some(c) = &self.credential {
            for part in c.split(':').filter(|p| p.len() >= 3) {
                said = said.replace(part, "***");
            }
        }
        let said: String = said.chars().take(500).collect();
        Err(RuntimeError::Failed(format!(
            "cannot clone {}: {said}",
            self.url
        )))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn credentials_are_split_off_and_only_http_is_taken() {
        let r =
            Repository::parse("https://alice:t%40ken@git.example.com/team/app.git", None).unwrap();
        assert_eq!(r.url, "https://git.example.com/team/app.git");
        assert_eq!(r.credential.as_deref(), Some("alice:t@ken"));
        let r = Repository::parse("https://ghp_abc@github.example/a/b", Some("v1.2")).unwrap();
        assert_eq!(r.credential.as_deref(), Some("git:ghp_abc"));
        assert_eq!(r.reference.as_deref(), Some("v1.2"));
        let r = Repository::parse("HTTP://host:8080/r.git", None).unwrap();
        assert_eq!(r.url, "http://host:8080/r.git");
        assert_eq!(r.credential, None);
        for bad in [
            "file:///etc",
            "/srv/repo",
            "ssh://git@host/r.git",
            "git@host:r.git",
            "https://",
            "https://host",
            "https://host/ r",
            "ext::sh -c touch% /tmp/x",
        ] {
            assert!(Repository::parse(bad, None).is_err(), "{bad}");
        }
        for bad in ["-b", "a..b", "a b", "x:y", ""] {
            assert!(
                Repository::parse("https://h/r", Some(bad)).is_err(),
                "{bad}"
            );
        }
        let json = serde_json::to_string(&Repository::parse("https://h/r", None).unwrap()).unwrap();
        assert_eq!(json, r#"{"url":"https://h/r"}"#);
    }
}
