//! The hub's HTTP API as `codi2` uses it: `login`, `logout`, `logs`, and the credential
//! (with transparent refresh) that `tail` shares.
//!
//! Which hub: `--hub`, else `CODI_HUB_URL`, else the hub last logged in to, else
//! codi-monitor's `server_hub.url`. Which credential: `CODI_HUB_API_KEY`, else the one
//! stored by `codi2 login` for that hub, else codi-monitor's `server_hub.api_key`.

use crate::args::{Filters, LoginArgs, LogoutArgs, LogsArgs};
use crate::credentials::{Credential, Credentials};
use crate::exit::{CliError, Exit, Result, root_cause};
use crate::output::{self, Out};
use chrono::{DateTime, SecondsFormat, Utc};
use coditect_monitor::config::Config;
use coditect_monitor::hub_http::{self, HubUrl};
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};
use std::io::IsTerminal;
use std::time::Duration;

/// Most entries one search request asks for (the hub's limit).
const PAGE: u32 = 1000;

/// A hub and how to authenticate to it.
pub struct Hub {
    /// `scheme://host[:port][/prefix]`, no trailing slash.
    pub base: String,
    http: reqwest::Client,
    pub credential: Credential,
    /// Where a refreshed session is saved; `None` for a credential from the environment.
    store: Option<Credentials>,
    pub out: Out,
}

/// The hub's URL in one form: http(s), no credentials, query or trailing slash; checked
/// before any network use (the monitor's rules: [`HubUrl`]).
pub fn normalize_url(raw: &str) -> Result<String> {
    // A URL with user:password@ is not repeated: the password would reach the terminal.
    HubUrl::parse(raw)
        .map(|u| u.to_string())
        .map_err(|why| match raw.contains('@') {
            true => CliError::usage(format!("invalid hub URL: {why}")),
            false => CliError::usage(format!("invalid hub URL {raw:?}: {why}")),
        })
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// The HTTP client every hub call uses.
/// It never follows a redirect (see [`json_or_error`]).
pub fn http_client() -> Result<reqwest::Client> {
    hub_http::client(
        concat!("codi2/", env!("CARGO_PKG_VERSION")),
        Duration::from_secs(10),
        Duration::from_secs(60),
        None,
    )
    .map_err(|e| CliError::failure(format!("cannot set up HTTP: {}", root_cause(&e))))
}

/// The longest answer read from a hub: a page of 1000 entries, each with a message of up
/// to 64 KiB and metadata of up to 16 KiB, fits.
const MAX_ANSWER_BYTES: usize = 96 << 20;

/// The hub's error message from an error answer (`{"error":{"code","message"}}`), else the
/// status line.
fn error_message(status: StatusCode, body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            format!(
                "HTTP {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )
        })
}

/// The exit code an error status stands for.
pub fn exit_for(status: StatusCode) -> Exit {
    match status.as_u16() {
        401 | 403 => Exit::Credentials,
        404 => Exit::NotFound,
        400 | 405 | 413 | 415 | 422 => Exit::Usage,
        _ => Exit::Failure,
    }
}

/// The hub's base URL for a command: `--hub`, `CODI_HUB_URL`, the default hub of the
/// credentials file, codi-monitor's `server_hub.url`.
fn resolve_base(flag: Option<&str>, default: Option<&str>, config: &Config) -> Result<String> {
    let raw = flag
        .map(str::to_string)
        .or_else(|| env("CODI_HUB_URL"))
        .or_else(|| default.map(str::to_string))
        .or_else(|| config.server_hub.url.clone())
        .ok_or_else(|| {
            CliError::credentials(
                "no hub given and none logged in to: use --hub URL (or CODI_HUB_URL), \
                 or log in with `codi2 login --hub URL`",
            )
        })?;
    normalize_url(&raw)
}

/// Reads a secret: a hidden prompt on a terminal, else the first line of stdin.
fn read_secret(prompt: &str, what: &str) -> Result<String> {
    let value = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)
            .map_err(|e| CliError::usage(format!("cannot read the {what}: {e}")))?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| CliError::usage(format!("cannot read the {what} from stdin: {e}")))?;
        line
    };
    let value = value.trim_end_matches(['\r', '\n']).to_string();
    if value.trim().is_empty() {
        return Err(CliError::usage(format!("no {what} given")));
    }
    Ok(value)
}

impl Hub {
    /// The hub and credential for `logs`, `tail` and `logout`.
    pub fn resolve(flag: Option<&str>, config: &Config, out: Out) -> Result<Hub> {
        let store = Credentials::new();
        let file = store.load()?;
        let base = resolve_base(flag, file.default.as_deref(), config)?;
        let http = http_client()?;
        let (credential, store) = if let Some(key) = env("CODI_HUB_API_KEY") {
            out.note("using the API key in CODI_HUB_API_KEY");
            (
                Credential::ApiKey {
                    api_key: key,
                    email: None,
                },
                None,
            )
        } else if let Some(c) = file.hubs.get(&base) {
            (c.clone(), Some(store))
        } else if let Some(key) = config
            .server_hub
            .api_key
            .as_ref()
            .map(|k| k.expose().to_string())
            .filter(|_| {
                let issued_for = config.server_hub.url.as_deref().map(normalize_url);
                matches!(issued_for, Some(Ok(u)) if u == base)
            })
        {
            // Only to the hub it was issued for.
            out.note("using codi-monitor's server_hub.api_key");
            (
                Credential::ApiKey {
                    api_key: key,
                    email: None,
                },
                None,
            )
        } else {
            return Err(CliError::credentials(format!(
                "not logged in to {base}: run `codi2 login --hub {base}`"
            )));
        };
        Ok(Hub {
            base,
            http,
            credential,
            store,
            out,
        })
    }

    /// `base + path`, with the query parameters.
    pub fn url(&self, path: &str, query: &[(&str, String)]) -> Result<Url> {
        let mut url = Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| CliError::usage(format!("invalid hub URL {}: {e}", self.base)))?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        Ok(url)
    }

    pub fn unreachable(&self, e: &reqwest::Error) -> CliError {
        unreachable(&self.base, e)
    }

    /// Whether a refused credential can be renewed (a stored session can).
    pub fn can_refresh(&self) -> bool {
        matches!(self.credential, Credential::Session { .. }) && self.store.is_some()
    }

    /// A GET answered with JSON; a refused access token is refreshed once, transparently.
    pub async fn get_json(&mut self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        self.call_json(reqwest::Method::GET, path, query, None, &[])
            .await
            .map(|(v, _)| v)
    }

    /// Any call answered with JSON (and the answer's `ETag`, if any); a refused access
    /// token is refreshed once, transparently.
    pub async fn call_json(
        &mut self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<(Value, Option<String>)> {
        let url = self.url(path, query)?;
        let mut refreshed = false;
        loop {
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(self.credential.bearer());
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let res = req.send().await.map_err(|e| self.unreachable(&e))?;
            if res.status() == StatusCode::UNAUTHORIZED && !refreshed && self.can_refresh() {
                self.refresh().await?;
                refreshed = true;
                continue;
            }
            let etag = res
                .headers()
                .get(reqwest::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let value = json_or_error(&self.base, res, self.refused_hint()).await?;
            return Ok((value, etag));
        }
    }

    fn refused_hint(&self) -> String {
        match &self.credential {
            Credential::ApiKey { .. } => format!(
                "the hub refused the API key; log in again with `codi2 login --hub {} --api-key`",
                self.base
            ),
            Credential::Session { .. } => format!(
                "the hub refused the session; log in again with `codi2 login --hub {}`",
                self.base
            ),
        }
    }

    /// Exchanges the refresh token for a new pair and stores it. Serialized with other
    /// `codi2` processes: one that finds a newer pair stored than the one it holds uses
    /// that pair instead of spending the refresh token a second time.
    pub async fn refresh(&mut self) -> Result<()> {
        let Some(store) = self.store.clone() else {
            return Err(CliError::credentials(self.refused_hint()));
        };
        let _lock = store.lock()?;
        let mut file = store.load()?;
        let email = match file.hubs.get(&self.base) {
            None => {
                return Err(CliError::credentials(format!(
                    "logged out of {}: run `codi2 login --hub {}`",
                    self.base, self.base
                )));
            }
            Some(stored) if *stored != self.credential => {
                self.out
                    .note("using the session refreshed by another codi2");
                self.credential = stored.clone();
                return Ok(());
            }
            Some(Credential::Session { email, .. }) => email.clone(),
            Some(Credential::ApiKey { .. }) => {
                return Err(CliError::credentials(self.refused_hint()));
            }
        };
        let Credential::Session { refresh_token, .. } = &self.credential else {
            return Err(CliError::credentials(self.refused_hint()));
        };
        self.out
            .note("access token expired: refreshing the session");
        let res = self
            .http
            .post(self.url("/api/v1/auth/refresh", &[])?)
            .json(&json!({ "refresh_token": refresh_token }))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let hint = format!(
            "the session on {} has ended; log in again with `codi2 login --hub {}`",
            self.base, self.base
        );
        let body = json_or_error(&self.base, res, hint).await?;
        let (Some(access), Some(refresh)) = (
            body["access_token"].as_str(),
            body["refresh_token"].as_str(),
        ) else {
            return Err(CliError::failure("the hub's refresh answer has no tokens"));
        };
        self.credential = Credential::Session {
            email,
            access_token: access.to_string(),
            refresh_token: refresh.to_string(),
        };
        file.hubs.insert(self.base.clone(), self.credential.clone());
        store.save(&file)
    }
}

pub(crate) fn unreachable(base: &str, e: &reqwest::Error) -> CliError {
    if e.is_connect() || e.is_timeout() || e.is_request() {
        CliError::new(
            Exit::HubUnreachable,
            format!("cannot reach the hub at {base}: {}", root_cause(e)),
        )
    } else {
        CliError::failure(format!(
            "the hub at {base} did not answer properly: {}",
            root_cause(e)
        ))
    }
}

/// The JSON body of a successful answer, or the error it stands for (`refused`: the message
/// for 401).
pub(crate) async fn json_or_error(
    base: &str,
    res: reqwest::Response,
    refused: String,
) -> Result<Value> {
    let status = res.status();
    if let Some(to) = hub_http::redirected_to(&res) {
        // Not followed: whatever the request carried (a password, a token) stays here.
        return Err(CliError::failure(format!(
            "the hub at {base} answered {} and tried to send this request to {to}; not \
             followed, so nothing was sent there (if that is the hub's real address, use \
             --hub with it)",
            status.as_u16()
        )));
    }
    let body = hub_http::read_body(res, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| match e {
            hub_http::BodyError::Read(e) => unreachable(base, &e),
            too_large => CliError::failure(format!("the hub at {base} sent {too_large}")),
        })?;
    let text = String::from_utf8_lossy(&body);
    if status.is_success() {
        if text.is_empty() {
            return Ok(Value::Null);
        }
        return serde_json::from_str(&text)
            .map_err(|e| CliError::failure(format!("the hub at {base} sent invalid JSON: {e}")));
    }
    let message = error_message(status, &text);
    Err(match status {
        StatusCode::UNAUTHORIZED => CliError::credentials(format!("{refused} ({message})")),
        s => CliError::new(
            exit_for(s),
            format!("the hub at {base} answered: {message}"),
        ),
    })
}

/// `codi2 login`.
pub async fn login(args: LoginArgs, config: &Config, out: Out) -> Result<()> {
    let raw = args
        .hub
        .clone()
        .or_else(|| env("CODI_HUB_URL"))
        .or_else(|| config.server_hub.url.clone())
        .ok_or_else(|| CliError::usage("give the hub's URL: codi2 login --hub URL"))?;
    let base = normalize_url(&raw)?;
    let http = http_client()?;
    let env_key = env("CODI_HUB_API_KEY");
    let credential = match (&args.email, args.api_key, env_key) {
        _ if args.sso => crate::sso::login(&base, &http, args.provider.as_deref(), &out).await?,
        (Some(email), _, _) => {
            let password = match env("CODI_PASSWORD") {
                Some(p) => p,
                None => read_secret(&format!("password for {email}: "), "password")?,
            };
            let mut body = json!({ "email": email, "password": password });
            if let Some(ws) = &args.workspace {
                body["workspace_id"] = json!(ws);
            }
            let res = http
                .post(url_of(&base, "/api/v1/auth/login")?)
                .json(&body)
                .send()
                .await
                .map_err(|e| unreachable(&base, &e))?;
            let tokens =
                json_or_error(&base, res, format!("{base} refused the e-mail or password")).await?;
            let (Some(access), Some(refresh)) = (
                tokens["access_token"].as_str(),
                tokens["refresh_token"].as_str(),
            ) else {
                return Err(CliError::failure("the hub's login answer has no tokens"));
            };
            Credential::Session {
                email: email.clone(),
                access_token: access.to_string(),
                refresh_token: refresh.to_string(),
            }
        }
        (None, true, key) | (None, false, key @ Some(_)) => {
            let api_key = match key {
                Some(k) => k,
                None => read_secret("API key: ", "API key")?,
            };
            Credential::ApiKey {
                api_key: api_key.trim().to_string(),
                email: None,
            }
        }
        (None, false, None) => {
            return Err(CliError::usage(
                "give --email EMAIL (password from CODI_PASSWORD or stdin), --api-key \
                 (key from CODI_HUB_API_KEY or stdin) or --sso (in the browser)",
            ));
        }
    };
    // The credential must work before it is kept.
    let res = http
        .get(url_of(&base, "/api/v1/users/me")?)
        .bearer_auth(credential.bearer())
        .send()
        .await
        .map_err(|e| unreachable(&base, &e))?;
    let me = if res.status() == StatusCode::FORBIDDEN {
        Value::Null // authenticated, just not allowed to read itself
    } else {
        let what = match &credential {
            Credential::ApiKey { .. } => "the API key",
            Credential::Session { .. } => "the new session",
        };
        json_or_error(&base, res, format!("{base} refused {what}")).await?
    };
    let credential = match credential {
        Credential::ApiKey { api_key, .. } => Credential::ApiKey {
            api_key,
            email: me["email"].as_str().map(str::to_string),
        },
        other => other,
    };
    let store = Credentials::new();
    {
        let _lock = store.lock()?;
        let mut file = store.load()?;
        file.hubs.insert(base.clone(), credential.clone());
        file.default = Some(base.clone());
        store.save(&file)?;
    }
    let who = me["email"].as_str().unwrap_or("an API key");
    let role = me["role"].as_str().unwrap_or("unknown role");
    out.note(&format!("credentials saved in {}", store.path().display()));
    out.result(
        &format!("logged in to {base} as {who} ({role})"),
        json!({
            "hub": base,
            "kind": credential.kind(),
            "email": me["email"],
            "user_id": me["id"],
            "tenant_id": me["tenant_id"],
            "role": me["role"],
        }),
    )
}

fn url_of(base: &str, path: &str) -> Result<Url> {
    Url::parse(&format!("{base}{path}"))
        .map_err(|e| CliError::usage(format!("invalid hub URL {base}: {e}")))
}

/// `codi2 logout`: forgets the hub's credentials (and ends the session on the hub when it
/// can be reached).
pub async fn logout(args: LogoutArgs, config: &Config, out: Out) -> Result<()> {
    let store = Credentials::new();
    let _lock = store.lock()?;
    let mut file = store.load()?;
    let base = resolve_base(args.hub.hub.as_deref(), file.default.as_deref(), config)?;
    let Some(credential) = file.hubs.remove(&base) else {
        return out.result(
            &format!("not logged in to {base}"),
            json!({"hub": base, "logged_out": false}),
        );
    };
    if let Credential::Session { access_token, .. } = &credential {
        // Best effort: the local credentials go whatever the hub says.
        let ended = match (http_client(), url_of(&base, "/api/v1/auth/logout")) {
            (Ok(http), Ok(url)) => http
                .post(url)
                .bearer_auth(access_token)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
            _ => false,
        };
        if !ended {
            out.note("could not end the session on the hub; it expires on its own");
        }
    }
    if file.default.as_deref() == Some(base.as_str()) {
        file.default = file.hubs.keys().next().cloned();
    }
    if file.hubs.is_empty() {
        store.remove()?;
    } else {
        store.save(&file)?;
    }
    out.result(
        &format!("logged out of {base}"),
        json!({"hub": base, "logged_out": true}),
    )
}

/// The search parameters the hub's `/api/logs` and `/ws/logs` share.
pub fn filter_params(
    workspace: Option<&str>,
    filters: &Filters,
    query: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut p = Vec::new();
    if let Some(w) = workspace {
        p.push(("workspace_id", w.to_string()));
    }
    if let Some(l) = filters.level {
        p.push(("min_level", l.as_str().to_string()));
    }
    if let Some(c) = &filters.component {
        p.push(("component", c.clone()));
    }
    if let Some(s) = &filters.session {
        p.push(("session_id", s.clone()));
    }
    if let Some(q) = query.filter(|q| !q.trim().is_empty()) {
        p.push(("q", q.to_string()));
    }
    p
}

/// One entry as the hub shows it (`LogView`), as a human line.
pub fn entry_line(v: &Value) -> String {
    let ts = v["timestamp"].as_str().unwrap_or_default();
    let level = v["level"]
        .as_str()
        .and_then(|l| l.parse().ok())
        .unwrap_or_default();
    let component = v["component"].as_str().unwrap_or_default();
    let message = v["message"].as_str().unwrap_or_default();
    let session = v["session_id"].as_str();
    match DateTime::parse_from_rfc3339(ts) {
        Ok(t) => output::entry_line(t.with_timezone(&Utc), level, component, session, message),
        Err(_) => format!(
            "{ts} {:<5} {component} {}",
            level.as_str().to_ascii_uppercase(),
            output::one_line(message)
        ),
    }
}

/// `codi2 logs`.
pub async fn logs(args: LogsArgs, config: &Config, out: Out) -> Result<()> {
    if let (Some(s), Some(u)) = (args.window.since, args.window.until)
        && s > u
    {
        return Err(CliError::usage("--since must not be after --until"));
    }
    let mut hub = Hub::resolve(args.hub.hub.as_deref(), config, out)?;
    let mut params = filter_params(
        args.workspace.as_deref(),
        &args.filters,
        args.query.as_deref(),
    );
    let rfc = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
    if let Some(s) = args.window.since {
        params.push(("since", rfc(s)));
    }
    if let Some(u) = args.window.until {
        params.push(("until", rfc(u)));
    }
    let mut items: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let want = (args.limit as usize).saturating_sub(items.len());
        if want == 0 {
            break;
        }
        let mut query = params.clone();
        query.push(("limit", want.min(PAGE as usize).to_string()));
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let page = hub.get_json("/api/logs", &query).await?;
        let got = match page["items"].as_array() {
            Some(a) => a.clone(),
            None => {
                return Err(CliError::failure(
                    "the hub's answer to /api/logs has no items",
                ));
            }
        };
        let empty = got.is_empty();
        items.extend(got);
        cursor = page["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() || empty {
            break;
        }
    }
    items.truncate(args.limit as usize);
    hub.out
        .note(&format!("{} entries from {}", items.len(), hub.base));
    // Newest first from the hub; oldest first on the screen.
    for item in items.iter().rev() {
        if out.json {
            out.json_line(item)?;
        } else {
            out.line(&entry_line(item))?;
        }
    }
    if cursor.is_some() && !out.json {
        crate::output::say!(
            "codi2: the newest {} matching entries; more match (raise --limit)",
            items.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_have_one_form() {
        assert_eq!(
            normalize_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            normalize_url(" https://hub.example.com/coditect/ ").unwrap(),
            "https://hub.example.com/coditect"
        );
        for bad in [
            "ftp://x",
            "hub.example.com",
            "http://u:p@hub",
            "http://hub/?a=1",
        ] {
            let e = normalize_url(bad).unwrap_err();
            assert_eq!(e.exit, Exit::Usage, "{bad}");
            assert!(!e.message.contains("u:p"), "{}", e.message);
        }
    }

    #[test]
    fn hub_entries_print_like_local_ones() {
        let v = json!({
            "timestamp": "2026-11-26T03:00:00.123456Z", "level": "warn", "component": "api",
            "message": "slow", "session_id": null,
        });
        assert_eq!(entry_line(&v), "2026-11-26T03:00:00.123Z WARN  api slow");
    }

    #[test]
    fn error_answers_become_messages_and_codes() {
        let body = r#"{"error":{"code":"AUTH_REQUIRED","message":"invalid email or password"}}"#;
        assert_eq!(
            error_message(StatusCode::UNAUTHORIZED, body),
            "invalid email or password"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, "<html>"),
            "HTTP 502 Bad Gateway"
        );
        assert_eq!(exit_for(StatusCode::FORBIDDEN), Exit::Credentials);
        assert_eq!(exit_for(StatusCode::NOT_FOUND), Exit::NotFound);
        assert_eq!(exit_for(StatusCode::BAD_REQUEST), Exit::Usage);
        assert_eq!(exit_for(StatusCode::SERVICE_UNAVAILABLE), Exit::Failure);
    }
}
