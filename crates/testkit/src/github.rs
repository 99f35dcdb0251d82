//! A stand-in of GitHub's OAuth web flow and e-mail API (GitHub itself cannot be reached
//! from tests): `/login/oauth/authorize` approves at once for the user named by
//! [`GitHub::next`] and redirects back with a code; `/login/oauth/access_token` checks the
//! client, the code (once) and its PKCE verifier, answering errors with 200 as GitHub does;
//! `/api/user/emails` lists the token's user's addresses.

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use serde_json::{Value, json};
use sha2::Digest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub const CLIENT_ID: &str = "gh-client";
pub const CLIENT_SECRET: &str = "gh-secret";

#[derive(Clone, Default)]
struct Inner {
    /// code → (login, code_challenge)
    codes: Arc<Mutex<HashMap<String, (String, String)>>>,
    /// token → login
    tokens: Arc<Mutex<HashMap<String, String>>>,
    /// login → its e-mail entries
    emails: Arc<Mutex<HashMap<String, Value>>>,
    next: Arc<Mutex<String>>,
}

/// The running stand-in. Its web URL is [`GitHub::url`], its API URL `{url}/api`.
pub struct GitHub {
    pub url: String,
    inner: Inner,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GitHub {
    pub async fn start() -> GitHub {
        let inner = Inner::default();
        let router = axum::Router::new()
            .route("/login/oauth/authorize", axum::routing::get(authorize))
            .route("/login/oauth/access_token", axum::routing::post(token))
            .route("/api/user/emails", axum::routing::get(emails))
            .with_state(inner.clone());
        let url = crate::serve(router, "the GitHub stand-in").await;
        GitHub { url, inner }
    }

    /// A GitHub user and its e-mail entries (`[{email, primary, verified, visibility}]`).
    pub fn user(&self, login: &str, emails: Value) {
        lock(&self.inner.emails).insert(login.to_string(), emails);
    }

    /// Who the next authorization logs in.
    pub fn next(&self, login: &str) {
        *lock(&self.inner.next) = login.to_string();
    }

    /// Forgets every code handed out (as if they expired).
    pub fn forget_codes(&self) {
        lock(&self.inner.codes).clear();
    }
}

async fn authorize(State(gh): State<Inner>, Query(q): Query<HashMap<String, String>>) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("client_id") != CLIENT_ID
        || get("code_challenge_method") != "S256"
        || !get("scope").contains("user:email")
    {
        return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
    }
    let code = uuid::Uuid::new_v4().simple().to_string();
    let login = lock(&gh.next).clone();
    lock(&gh.codes).insert(code.clone(), (login, get("code_challenge")));
    Redirect::to(&format!(
        "{}?code={code}&state={}",
        get("redirect_uri"),
        get("state")
    ))
    .into_response()
}

async fn token(
    State(gh): State<Inner>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    if headers.get("accept").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return (
            StatusCode::NOT_ACCEPTABLE,
            "form answers are not served here",
        )
            .into_response();
    }
    if get("client_id") != CLIENT_ID || get("client_secret") != CLIENT_SECRET {
        return axum::Json(json!({"error": "incorrect_client_credentials"})).into_response();
    }
    let Some((login, challenge)) = lock(&gh.codes).remove(&get("code")) else {
        return axum::Json(json!({"error": "bad_verification_code",
            "error_description": "The code passed is incorrect or expired."}))
        .into_response();
    };
    let shown = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(get("code_verifier").as_bytes()));
    if shown != challenge {
        return axum::Json(json!({"error": "bad_verification_code"})).into_response();
    }
    let token = format!("gho_{}", uuid::Uuid::new_v4().simple());
    lock(&gh.tokens).insert(token.clone(), login);
    axum::Json(
        json!({"access_token": token, "token_type": "bearer", "scope": "read:user,user:email"}),
    )
    .into_response()
}

async fn emails(State(gh): State<Inner>, headers: HeaderMap) -> Response {
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    if header("accept") != "application/vnd.github+json" || header("user-agent").is_empty() {
        return (StatusCode::FORBIDDEN, "missing Accept or User-Agent").into_response();
    }
    let token = header("authorization")
        .trim_start_matches("Bearer ")
        .to_string();
    let Some(login) = lock(&gh.tokens).get(&token).cloned() else {
        return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
    };
    let list = lock(&gh.emails).get(&login).cloned().unwrap_or(json!([]));
    axum::Json(list).into_response()
}
