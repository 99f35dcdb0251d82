//! A Git server on a loopback port for tests of workspaces made from a repository: the
//! "dumb" HTTP protocol (plain files of bare repositories prepared with
//! `git update-server-info`) behind HTTP Basic authentication, recording every request's
//! path and whether it carried the right credential.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Clone)]
struct Inner {
    root: PathBuf,
    /// `user:password` every request must carry.
    credential: String,
    seen: Arc<Mutex<Vec<(String, bool)>>>,
}

pub struct GitHttp {
    /// `http://127.0.0.1:PORT` (no credential).
    pub url: String,
    inner: Inner,
}

/// Runs git with `args` in `dir` (identity and config fixed, nothing from the machine's).
pub fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl GitHttp {
    /// Serves the bare repositories under `root` to whoever presents `user:password`.
    pub async fn start(root: PathBuf, user: &str, password: &str) -> GitHttp {
        let inner = Inner {
            root,
            credential: format!("{user}:{password}"),
            seen: Arc::new(Mutex::new(Vec::new())),
        };
        let router = axum::Router::new()
            .fallback(serve)
            .with_state(inner.clone());
        let url = crate::serve(router, "the git server").await;
        GitHttp { url, inner }
    }

    /// A bare repository `name.git` under the root with one commit of `files`.
    pub fn repository(&self, name: &str, files: &[(&str, &str)]) {
        let work = self.inner.root.join(format!("{name}.work"));
        std::fs::create_dir_all(&work).expect("mkdir");
        git(&work, &["init", "-q"]);
        for (path, text) in files {
            std::fs::write(work.join(path), text).expect("write");
        }
        git(&work, &["add", "."]);
        git(&work, &["commit", "-q", "-m", "first"]);
        let bare = format!("{name}.git");
        git(
            &self.inner.root,
            &["clone", "-q", "--bare", &format!("{name}.work"), &bare],
        );
        git(&self.inner.root.join(&bare), &["update-server-info"]);
    }

    /// Requests so far: (path, whether it carried the credential).
    pub fn requests(&self) -> Vec<(String, bool)> {
        self.inner
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

async fn serve(State(inner): State<Inner>, uri: Uri, headers: HeaderMap) -> Response {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(&inner.credential)
    );
    let authorized = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(expected.as_str());
    if let Ok(mut seen) = inner.seen.lock() {
        seen.push((uri.path().to_string(), authorized));
    }
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            [(axum::http::header::WWW_AUTHENTICATE, "Basic realm=\"git\"")],
            "credentials required",
        )
            .into_response();
    }
    let relative = Path::new(uri.path().trim_start_matches('/'));
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    match std::fs::read(inner.root.join(relative)) {
        Ok(bytes) => bytes.into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}
