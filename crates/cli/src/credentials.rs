//! The hub credentials `codi2 login` keeps: `$XDG_CONFIG_HOME/codi/credentials.toml`, mode
//! 0600 in a 0700 directory, replaced atomically (a 0600 temporary file renamed into
//! place), one entry per hub plus the default hub.
//!
//! Refreshing a session spends its refresh token (presenting a spent one ends the session
//! on the hub), so two `codi2` processes must not refresh at once: [`Credentials::lock`]
//! serializes them with an advisory lock on `credentials.lock`, and the second one finds
//! the pair the first one stored.

use crate::exit::{CliError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The file's contents.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialFile {
    /// The hub used when no `--hub` is given: the last one logged in to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default)]
    pub hubs: BTreeMap<String, Credential>,
}

/// How `codi2` authenticates to one hub.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Credential {
    ApiKey {
        api_key: String,
        /// Whose key it is (for `codi2` to say), when the hub told.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email: Option<String>,
    },
    Session {
        email: String,
        access_token: String,
        refresh_token: String,
    },
}

impl Credential {
    /// What goes into `Authorization: Bearer …`.
    pub fn bearer(&self) -> &str {
        match self {
            Credential::ApiKey { api_key, .. } => api_key,
            Credential::Session { access_token, .. } => access_token,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Credential::ApiKey { .. } => "api_key",
            Credential::Session { .. } => "session",
        }
    }
}

// Never print a secret, not even in a debug message.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::ApiKey { email, .. } => f
                .debug_struct("ApiKey")
                .field("email", email)
                .finish_non_exhaustive(),
            Credential::Session { email, .. } => f
                .debug_struct("Session")
                .field("email", email)
                .finish_non_exhaustive(),
        }
    }
}

/// The credentials file of this user.
#[derive(Debug, Clone)]
pub struct Credentials {
    dir: PathBuf,
}

/// Held while refreshing; released on drop.
pub struct Lock {
    _file: File,
}

impl Credentials {
    /// In `paths::config_dir()` (`$XDG_CONFIG_HOME/codi`, else `~/.config/codi`).
    pub fn new() -> Credentials {
        Credentials::in_dir(coditect_monitor::config::paths::config_dir())
    }

    pub fn in_dir(dir: PathBuf) -> Credentials {
        Credentials { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("credentials.toml")
    }

    /// The file's contents; empty when there is none.
    pub fn load(&self) -> Result<CredentialFile> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(CredentialFile::default());
            }
            Err(e) => {
                return Err(CliError::failure(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.permissions().mode() & 0o077 != 0
        {
            crate::output::say!(
                "codi2: {} is readable by other users (mode {:o}); run `chmod 600` on it",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
        // toml's messages quote the offending line, which may hold a token: keep the first
        // line of the message only.
        toml::from_str(&text).map_err(|e| {
            CliError::failure(format!(
                "{} is not a valid credentials file ({}); log in again or delete it",
                path.display(),
                e.message().lines().next().unwrap_or("unreadable")
            ))
        })
    }

    /// Replaces the file: a new 0600 file renamed over the old one, so a reader never sees
    /// half of it and the secrets are never readable by others, not even for an instant.
    pub fn save(&self, file: &CredentialFile) -> Result<()> {
        self.ensure_dir()?;
        let path = self.path();
        let fail = |what: &str, e: std::io::Error| {
            CliError::failure(format!("cannot {what} {}: {e}", path.display()))
        };
        let text = toml::to_string(file)
            .map_err(|e| CliError::failure(format!("cannot encode the credentials: {e}")))?;
        let tmp = self.dir.join(format!(
            ".credentials.toml.{}.{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            // The rename itself must survive a crash.
            File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail("write", e));
        }
        Ok(())
    }

    /// Deletes the file (no error when there is none).
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_file(self.path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CliError::failure(format!(
                "cannot delete {}: {e}",
                self.path().display()
            ))),
        }
    }

    /// Waits for the other `codi2` processes to finish their refresh.
    pub fn lock(&self) -> Result<Lock> {
        self.ensure_dir()?;
        let path = self.dir.join("credentials.lock");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| CliError::failure(format!("cannot open {}: {e}", path.display())))?;
        file.lock()
            .map_err(|e| CliError::failure(format!("cannot lock {}: {e}", path.display())))?;
        Ok(Lock { _file: file })
    }

    fn ensure_dir(&self) -> Result<()> {
        if self.dir.is_dir() {
            return Ok(());
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| CliError::failure(format!("cannot create {}: {e}", self.dir.display())))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_privately_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let creds = Credentials::in_dir(dir.path().join("codi"));
        assert!(creds.load().unwrap().hubs.is_empty());
        let mut file = CredentialFile {
            default: Some("http://hub".into()),
            ..CredentialFile::default()
        };
        file.hubs.insert(
            "http://hub".into(),
            Credential::Session {
                email: "a@example.com".into(),
                access_token: "secret-access".into(),
                refresh_token: "secret-refresh".into(),
            },
        );
        creds.save(&file).unwrap();
        let mode = std::fs::metadata(creds.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(creds.dir()).unwrap().permissions().mode();
        assert_eq!(dmode & 0o777, 0o700);
        let back = creds.load().unwrap();
        assert_eq!(back.default.as_deref(), Some("http://hub"));
        assert_eq!(back.hubs["http://hub"], file.hubs["http://hub"]);
        assert_eq!(back.hubs["http://hub"].bearer(), "secret-access");
        let debug = format!("{:?}", back.hubs["http://hub"]);
        assert!(!debug.contains("secret"), "{debug}");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(creds.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["credentials.toml"]);
        let _lock = creds.lock().unwrap();
        creds.remove().unwrap();
        creds.remove().unwrap();
        assert!(creds.load().unwrap().hubs.is_empty());
    }

    #[test]
    fn a_broken_file_is_named_without_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let creds = Credentials::in_dir(dir.path().to_path_buf());
        std::fs::write(creds.path(), "api_key = \"cdk_secret\"\n[[[").unwrap();
        let e = creds.load().err().unwrap().message;
        assert!(e.contains("credentials.toml"), "{e}");
        assert!(!e.contains("cdk_secret"), "{e}");
    }
}
