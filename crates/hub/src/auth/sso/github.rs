//! GitHub's OAuth web flow (GitHub has no OpenID Connect for users): authorize with PKCE,
//! trade the code for a token, then read the user's e-mail addresses from the API and take
//! the primary one, verified or not (the caller refuses unverified ones).

use super::{Failure, Identity};
use crate::config::GithubProviderConfig;
use serde::Deserialize;

pub struct Github {
    config: GithubProviderConfig,
}

/// GitHub answers token errors with 200 and an `error` field.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct EmailEntry {
    email: String,
    #[serde(default)]
    primary: bool,
    #[serde(default)]
    verified: bool,
}

impl Github {
    pub fn new(config: GithubProviderConfig) -> Github {
        Github { config }
    }

    pub fn authorize_url(&self, redirect_uri: &str, state: &str, code_challenge: &str) -> String {
        let query = [
            ("client_id", self.config.client_id.as_str()),
            ("redirect_uri", redirect_uri),
            ("scope", "read:user user:email"),
            ("state", state),
            ("code_challenge", code_challenge),
            ("code_challenge_method", "S256"),
            ("allow_signup", "false"),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={}", super::url_escape(v)))
        .collect::<Vec<_>>()
        .join("&");
        format!("{}/login/oauth/authorize?{query}", self.config.web_url)
    }

    pub async fn identify(
        &self,
        http: &reqwest::Client,
        redirect_uri: &str,
        code: &str,
        pkce_verifier: &str,
    ) -> Result<Identity, Failure> {
        let down = |what: &str, e: &dyn std::fmt::Display| {
            Failure::ProviderDown(format!("github {what}: {e}"))
        };
        let res = http
            .post(format!("{}/login/oauth/access_token", self.config.web_url))
            .header("accept", "application/json")
            .form(&[
                ("client_id", self.config.client_id.as_str()),
                ("client_secret", self.config.client_secret.expose()),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", pkce_verifier),
            ])
            .send()
            .await
            .map_err(|e| down("token endpoint", &e))?;
        if !res.status().is_success() {
            return Err(down("token endpoint", &res.status()));
        }
        let answer: TokenAnswer = res
            .json()
            .await
            .map_err(|e| down("token endpoint answer", &e))?;
        let token = match (answer.access_token, answer.error) {
            (Some(token), None) => token,
            (_, Some(error)) if error == "incorrect_client_credentials" => {
                // The hub's own configuration is wrong: nothing the user can fix.
                return Err(down("token endpoint", &"the client id or secret is wrong"));
            }
            (_, Some(error)) => return Err(Failure::CodeRefused(error)),
            (None, None) => return Err(down("token endpoint", &"no access token")),
        };
        let res = http
            .get(format!("{}/user/emails", self.config.api_url))
            .bearer_auth(&token)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .send()
            .await
            .map_err(|e| down("e-mail API", &e))?;
        if !res.status().is_success() {
            return Err(down("e-mail API", &res.status()));
        }
        let emails: Vec<EmailEntry> = res.json().await.map_err(|e| down("e-mail API", &e))?;
        let primary = emails.into_iter().find(|e| e.primary).ok_or_else(|| {
            Failure::Denied("the GitHub account has no primary e-mail address".into())
        })?;
        Ok(Identity {
            email: primary.email,
            email_verified: primary.verified,
        })
    }
}
