//! Speaking HTTP to the hub, as the monitor's sync and `codi2` both do, with the same
//! rules: the hub's URL is checked before any network use ([`HubUrl`]); redirects are
//! never followed (a batch marked synced must have reached the hub, and a password or key
//! must never be re-sent to wherever a 307 points), they are reported with where they
//! pointed; and every answer's body is read up to a limit ([`read_body`]), so a hub
//! (or something posing as one) cannot exhaust memory.

use std::time::Duration;

/// A hub's base URL: `http(s)://host[:port][/prefix]`, no credentials, query, fragment or
/// trailing slash. Parsed once, before any network use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubUrl(String);

impl HubUrl {
    /// The reason is a sentence without the URL when the URL holds an `@` (it may carry a
    /// password).
    pub fn parse(raw: &str) -> Result<HubUrl, String> {
        let raw = raw.trim();
        let lower = raw.to_ascii_lowercase();
        let Some(rest) = lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"))
        else {
            return Err("it must start with http:// or https://".into());
        };
        // The URL standard reads `http:///x` as the host `x`: a typo must not reach a
        // name server.
        if rest.is_empty() || rest.starts_with(['/', '\\', '?', '#']) {
            return Err("it has no host".into());
        }
        let url = reqwest::Url::parse(raw).map_err(|e| e.to_string())?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("it must not contain credentials (user:password@)".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("it must not have a query or fragment".into());
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("it has no host".into());
        }
        Ok(HubUrl(url.as_str().trim_end_matches('/').to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HubUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An HTTP client that never follows a redirect; over `unix_socket` when given.
pub fn client(
    user_agent: &'static str,
    connect_timeout: Duration,
    timeout: Duration,
    unix_socket: Option<&std::path::Path>,
) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(user_agent)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .timeout(timeout);
    if let Some(path) = unix_socket {
        builder = builder.unix_socket(path.to_path_buf());
    }
    builder.build()
}

/// reqwest's message without the URL (kept out of logs on principle).
pub fn without_url(e: &reqwest::Error) -> String {
    let mut e = e.to_string();
    if let Some(i) = e.find(" for url") {
        e.truncate(i);
    }
    e
}

/// Where a redirect answer pointed, for the message that says it was not followed: the
/// `Location` without any credentials, query or fragment (they might be secrets), or
/// `None` when the answer is no redirect.
pub fn redirected_to(res: &reqwest::Response) -> Option<String> {
    if !res.status().is_redirection() {
        return None;
    }
    let location = res
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| res.url().join(l).ok());
    Some(match location {
        Some(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        None => "nowhere readable".into(),
    })
}

/// Why an answer's body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is over {limit} bytes")]
    TooLarge { limit: usize },
    #[error(transparent)]
    Read(#[from] reqwest::Error),
}

/// The body of `res`, at most `limit` bytes: a longer one is refused as soon as it is
/// known to be (by its `Content-Length`, or while it streams), and what was read is dropped.
pub async fn read_body(mut res: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if res.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_are_checked_before_use() {
        for ok in [
            "http://hub:8080",
            "https://hub.example.com/prefix/",
            " http://127.0.0.1:1 ",
        ] {
            assert!(HubUrl::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            HubUrl::parse("https://hub.example.com/prefix/")
                .unwrap()
                .as_str(),
            "https://hub.example.com/prefix"
        );
        for bad in [
            "http:///x",
            "http://",
            "https:///",
            "http://?q",
            "ftp://hub",
            "hub:8080",
            "http://u:p@hub",
            "http://hub/?a=1",
            "http://hub/#f",
        ] {
            assert!(HubUrl::parse(bad).is_err(), "{bad}");
        }
        let e = HubUrl::parse("http://u:secret@hub").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }
}
