//! `codi2 login --sso`: the browser flow of a native app (RFC 8252). The CLI listens on a
//! loopback port, opens the hub's start URL in the browser (and prints it, for machines
//! without one), the provider sends the browser back through the hub to that port with a
//! one-time code, and the CLI redeems the code with the PKCE verifier only it knows.

use crate::credentials::Credential;
use crate::exit::{CliError, Result};
use crate::hub::{json_or_error, unreachable};
use crate::output::Out;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How long the CLI waits for the browser to come back.
const WAIT: Duration = Duration::from_secs(300);

/// Logs in at `base` through its provider `wanted` (or its only one).
pub async fn login(
    base: &str,
    http: &reqwest::Client,
    wanted: Option<&str>,
    out: &Out,
) -> Result<Credential> {
    let res = http
        .get(format!("{base}/api/v1/auth/sso"))
        .send()
        .await
        .map_err(|e| unreachable(base, &e))?;
    let listed = json_or_error(base, res, format!("{base} refused to list its logins")).await?;
    let ids: Vec<&str> = listed["providers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_str())
        .collect();
    let provider = match (wanted, ids.as_slice()) {
        (_, []) => {
            return Err(CliError::usage(format!(
                "{base} offers no single sign-on: log in with --email or --api-key"
            )));
        }
        (Some(w), _) if ids.contains(&w) => w.to_string(),
        (Some(w), _) => {
            return Err(CliError::usage(format!(
                "{base} offers no {w} login; it offers: {}",
                ids.join(", ")
            )));
        }
        (None, [only]) => only.to_string(),
        (None, _) => {
            return Err(CliError::usage(format!(
                "{base} offers several logins: choose one with --provider ({})",
                ids.join(", ")
            )));
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| CliError::failure(format!("cannot listen on a loopback port: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| CliError::failure(format!("cannot listen on a loopback port: {e}")))?
        .port();
    let state = random();
    let verifier = random();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let return_to = format!("http://127.0.0.1:{port}/callback");
    let url = format!(
        "{base}/api/v1/auth/sso/{provider}/start?return_to={}&state={state}&code_challenge={challenge}",
        escape(&return_to)
    );
    out.tell(&format!(
        "log in in your browser; if it does not open, open:\n  {url}"
    ));
    open_browser(&url);
    let code = tokio::time::timeout(WAIT, wait_for_code(&listener, &state))
        .await
        .map_err(|_| CliError::failure("no answer from the browser within 5 minutes"))??;
    let res = http
        .post(format!("{base}/api/v1/auth/sso/exchange"))
        .json(&json!({"code": code, "code_verifier": verifier}))
        .send()
        .await
        .map_err(|e| unreachable(base, &e))?;
    let tokens = json_or_error(base, res, format!("{base} refused the single sign-on")).await?;
    let (Some(access), Some(refresh), Some(email)) = (
        tokens["access_token"].as_str(),
        tokens["refresh_token"].as_str(),
        tokens["user"]["email"].as_str(),
    ) else {
        return Err(CliError::failure("the hub's login answer has no tokens"));
    };
    Ok(Credential::Session {
        email: email.to_string(),
        access_token: access.to_string(),
        refresh_token: refresh.to_string(),
    })
}

/// 32 random bytes, URL-safe: a state or a PKCE verifier (43 characters).
fn random() -> String {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `$BROWSER URL`, else the desktop's opener; quietly nothing when there is none.
fn open_browser(url: &str) {
    let opener = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| {
            if cfg!(target_os = "macos") {
                "open".into()
            } else {
                "xdg-open".into()
            }
        });
    let _ = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Serves the loopback port until the browser brings `code` with our `state`.
async fn wait_for_code(listener: &TcpListener, state: &str) -> Result<String> {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        // One request head, within 5 seconds in all: a connection that dribbles (or a
        // browser's idle preconnect) cannot hold the port.
        let mut head = Vec::new();
        let read_head = async {
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match socket.read(&mut buf).await {
                    Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), read_head).await;
        let text = String::from_utf8_lossy(&head);
        let target = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("GET "))
            .and_then(|l| l.split(' ').next())
            .unwrap_or_default();
        let Some(query) = target.strip_prefix("/callback?") else {
            let _ = answer(&mut socket, "404 Not Found", "Nothing here.").await;
            continue;
        };
        let params: std::collections::HashMap<String, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), unescape(v)))
            .collect();
        if params.get("state").map(String::as_str) != Some(state) {
            // Not the login this CLI started (a stale tab, or someone else's page).
            let _ = answer(
                &mut socket,
                "400 Bad Request",
                "This is not the login codi2 started.",
            )
            .await;
            continue;
        }
        if let Some(error) = params.get("error") {
            let why = params
                .get("error_description")
                .cloned()
                .unwrap_or_else(|| error.clone());
            let _ = answer(&mut socket, "200 OK", "The login failed: see the terminal.").await;
            let message = format!("the hub refused the login: {why}");
            return Err(if error == "ACCESS_DENIED" || error == "AUTH_REQUIRED" {
                CliError::credentials(message)
            } else {
                CliError::failure(message)
            });
        }
        let Some(code) = params.get("code").filter(|c| !c.is_empty()) else {
            let _ = answer(&mut socket, "400 Bad Request", "No code came back.").await;
            return Err(CliError::failure("the browser came back without a code"));
        };
        let _ = answer(
            &mut socket,
            "200 OK",
            "Logged in to CODITECT. You can close this window and return to the terminal.",
        )
        .await;
        return Ok(code.clone());
    }
}

async fn answer(
    socket: &mut tokio::net::TcpStream,
    status: &str,
    text: &str,
) -> std::io::Result<()> {
    let body = format!("<!doctype html><title>codi2</title><p>{text}</p>\n");
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await?;
    socket.shutdown().await
}

/// Percent-decoding of a query value (`+` is a space).
fn unescape(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| h * 16 + l),
            _ => None,
        };
        match (decoded, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(unescape("a%20b+c%2Fd"), "a b c/d");
        assert_eq!(unescape("bad%zz%4"), "bad%zz%4");
        assert_eq!(
            escape("http://127.0.0.1:1/cb"),
            "http%3A%2F%2F127.0.0.1%3A1%2Fcb"
        );
    }

    #[test]
    fn secrets_are_43_url_safe_characters() {
        let (a, b) = (random(), random());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }
}
