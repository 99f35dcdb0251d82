//! Single sign-on against real counterparts: OpenID Connect against `oidc-provider-mock`
//! (PyPI, a real provider: discovery, JWKS, RS256 ID tokens, codes that are spent), GitHub
//! against a stand-in of its OAuth and API endpoints (GitHub itself is not reachable). The
//! test plays the browser: it follows the redirects and fills in the provider's form.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use axum::extract::{Form, Query};
use axum::response::Redirect;
use coditect_hub::config::{GithubProviderConfig, OidcProviderConfig, Secret, SsoConfig};
use coditect_proto::Role;
use coditect_testkit::github::GitHub;
use common::{Backend, TestApp, assert_envelope, json, spawn_app_with};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

both_backends!(
    oidc_logins_provision_link_and_refuse_as_configured,
    github_logins_use_the_verified_primary_address
);

/// What the provider sends browsers back to; the test maps it to the hub's real address.
const PUBLIC_URL: &str = "http://hub.test";

/// `oidc-provider-mock` on a free loopback port, stopped when dropped.
struct Provider {
    child: Child,
    url: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Provider {
    async fn start(args: &[&str]) -> Provider {
        let exe = std::path::Path::new(&common::test_python()).with_file_name("oidc-provider-mock");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(exe)
            .args(["-p", &port.to_string(), "-H", "127.0.0.1"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let discovery = format!("{url}/.well-known/openid-configuration");
        let up = common::eventually(Duration::from_secs(30), || {
            let discovery = discovery.clone();
            async move {
                reqwest::get(&discovery)
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        })
        .await;
        assert!(up, "oidc-provider-mock did not start");
        Provider { child, url }
    }

    /// Sets the claims the provider gives `sub`.
    async fn user(&self, sub: &str, email: &str, verified: bool) {
        let res = reqwest::Client::new()
            .put(format!("{}/users/{sub}", self.url))
            .json(&json!({"email": email, "email_verified": verified, "name": sub}))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success());
    }
}

fn sso_config(oidc: Option<&Provider>, github: Option<&str>) -> SsoConfig {
    SsoConfig {
        public_url: PUBLIC_URL.into(),
        oidc: oidc.map(|p| OidcProviderConfig {
            issuer: p.url.clone(),
            client_id: "coditect-hub".into(),
            client_secret: Secret::new("the client secret"),
        }),
        github: github.map(|url| GithubProviderConfig {
            client_id: coditect_testkit::github::CLIENT_ID.into(),
            client_secret: Secret::new(coditect_testkit::github::CLIENT_SECRET),
            web_url: url.to_string(),
            api_url: format!("{url}/api"),
        }),
        allowed_domains: vec!["example.com".into()],
        provision: true,
        tenant: "people".into(),
        default_role: Role::Member,
    }
}

/// The test's browser: follows no redirect by itself, keeps cookies (one jar for the whole
/// test binary, like one browser profile).
/// SSO with only an OpenID Connect provider at `issuer` (not necessarily a mock's).
fn oidc_at(issuer: String) -> SsoConfig {
    let mut config = sso_config(None, None);
    config.oidc = Some(OidcProviderConfig {
        issuer,
        client_id: "coditect-hub".into(),
        client_secret: Secret::new("the client secret"),
    });
    config
}

/// A hub on SQLite with `config` as its single sign-on.
async fn sso_app(config: SsoConfig) -> TestApp {
    spawn_app_with(
        Backend::Sqlite,
        |c| c.sso = Some(config),
        axum::Router::new(),
    )
    .await
}

fn browser() -> reqwest::Client {
    static JAR: std::sync::OnceLock<Arc<reqwest::cookie::Jar>> = std::sync::OnceLock::new();
    let jar = JAR.get_or_init(Default::default).clone();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_provider(jar)
        .build()
        .unwrap()
}

fn location(res: &reqwest::Response) -> String {
    res.headers()["location"].to_str().unwrap().to_string()
}

/// The value of `name` in the query of `url`.
fn param<'a>(url: &'a str, name: &str) -> &'a str {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name} in {url}"))
}

async fn exchange(app: &TestApp, code: &str, verifier: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/auth/sso/exchange"))
        .json(&json!({"code": code, "code_verifier": verifier}))
        .send()
        .await
        .unwrap()
}

/// The hub's own address for a URL the provider sent the browser to.
fn at_hub(app: &TestApp, url: &str) -> String {
    url.replacen(PUBLIC_URL, &app.url(""), 1)
}

/// Starts an OIDC login at the hub and logs in at the provider as `sub`: the callback URL
/// the provider sends the browser to. `tamper` may change the provider's URL first.
async fn authorize(
    app: &TestApp,
    query: &str,
    sub: &str,
    tamper: impl Fn(String) -> String,
) -> String {
    let b = browser();
    let res = b
        .get(app.url(&format!("/api/v1/auth/sso/oidc/start{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::SEE_OTHER,
        "{}",
        res.text().await.unwrap()
    );
    assert_eq!(res.headers()["cache-control"], "no-store");
    let at_provider = tamper(location(&res));
    assert!(
        at_provider.contains("code_challenge_method=S256"),
        "{at_provider}"
    );
    assert!(at_provider.contains("nonce="), "{at_provider}");
    let res = b
        .post(&at_provider)
        .form(&[("sub", sub)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    at_hub(app, &location(&res))
}

async fn oidc_login(app: &TestApp, sub: &str) -> reqwest::Response {
    let callback = authorize(app, "", sub, |u| u).await;
    browser().get(callback).send().await.unwrap()
}

async fn audit_actions(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    app.get_json(&format!("/api/v1/audit?{query}&limit=1000"), token)
        .await["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn oidc_logins_provision_link_and_refuse_as_configured(backend: Backend) {
    let provider = Provider::start(&[]).await;
    provider.user("alice", "Alice@Example.com", true).await;
    provider.user("carol", "carol@example.com", true).await;
    provider.user("dave", "dave@example.com", false).await;
    provider.user("eve", "eve@elsewhere.org", true).await;
    let config = sso_config(Some(&provider), None);
    let app = spawn_app_with(backend, |c| c.sso = Some(config), axum::Router::new()).await;
    let (_tenant, _admin, admin) = app.tenant_with_admin("home").await;

    let listed = json(app.get("/api/v1/auth/sso").await).await;
    assert_eq!(listed["providers"][0]["id"], "oidc");

    // A verified address of an allowed domain, seen for the first time: an account is
    // made in the configured tenant with the default role, and a session opened.
    let res = oidc_login(&app, "alice").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let tokens = json(res).await;
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let me = app.get_json("/api/v1/users/me", &access).await;
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(me["role"], "member");
    let tenant = app
        .get_json(
            &format!("/api/v1/tenants/{}", me["tenant_id"].as_str().unwrap()),
            &access,
        )
        .await;
    assert_eq!(tenant["name"], "people");
    let session = app
        .get_json(
            &format!(
                "/api/v1/sessions/{}",
                tokens["session_id"].as_str().unwrap()
            ),
            &access,
        )
        .await;
    assert_eq!(session["login_method"], "oidc");
    // Downstream nothing differs: refresh works like after a password login.
    let refreshed = app
        .client
        .post(app.url("/api/v1/auth/refresh"))
        .json(&json!({"refresh_token": tokens["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200);
    // A second login is the same account.
    let again = json(oidc_login(&app, "alice").await).await;
    assert_eq!(again["user"]["id"], me["id"]);

    // An existing account is linked by its verified address (here one with a password,
    // made by an administrator in another tenant).
    let carol = json(
        app.post_as(
            "/api/v1/users",
            &admin.access,
            json!({"email": "carol@example.com", "password": "a long enough password", "role": "viewer"}),
        )
        .await,
    )
    .await;
    let res = oidc_login(&app, "carol").await;
    assert_eq!(res.status(), 200);
    let carol_login = json(res).await;
    assert_eq!(carol_login["user"]["id"], carol["id"]);
    assert_eq!(carol_login["user"]["role"], "viewer");

    // Refusals, each a clear answer.
    let res = oidc_login(&app, "dave").await;
    let message = assert_envelope(res, 403, "ACCESS_DENIED").await;
    assert!(message.contains("not verified"), "{message}");
    let res = oidc_login(&app, "eve").await;
    let message = assert_envelope(res, 403, "ACCESS_DENIED").await;
    assert!(message.contains("elsewhere.org"), "{message}");

    // The callback cannot be replayed, nor a state made up.
    let callback = authorize(&app, "", "alice", |u| u).await;
    assert_eq!(browser().get(&callback).send().await.unwrap().status(), 200);
    let res = browser().get(&callback).send().await.unwrap();
    let message = assert_envelope(res, 400, "BAD_REQUEST").await;
    assert!(message.contains("state"), "{message}");
    // A login started in one browser cannot be finished in another (login CSRF).
    let elsewhere = authorize(&app, "", "alice", |u| u).await;
    let other_browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = other_browser.get(&elsewhere).send().await.unwrap();
    let message = assert_envelope(res, 400, "BAD_REQUEST").await;
    assert!(message.contains("not started in this browser"), "{message}");
    // …and that attempt did not spend it: the right browser still can.
    assert_eq!(
        browser().get(&elsewhere).send().await.unwrap().status(),
        200
    );
    let forged = app.url("/api/v1/auth/sso/oidc/callback?code=x&state=made-up");
    assert_envelope(
        browser().get(forged).send().await.unwrap(),
        400,
        "BAD_REQUEST",
    )
    .await;

    // A code the provider already redeemed, brought back with a fresh state: the provider
    // refuses it.
    let spent_code = param(&callback, "code");
    let fresh = authorize(&app, "", "alice", |u| u).await;
    let fresh_state = param(&fresh, "state");
    let replay = app.url(&format!(
        "/api/v1/auth/sso/oidc/callback?code={spent_code}&state={fresh_state}"
    ));
    let message = assert_envelope(
        browser().get(replay).send().await.unwrap(),
        400,
        "BAD_REQUEST",
    )
    .await;
    assert!(message.contains("invalid_grant"), "{message}");

    // An ID token that does not hold (its nonce is not the one this login sent): 401.
    let tampered = authorize(&app, "", "alice", |u| {
        let nonce = param(&u, "nonce").to_string();
        u.replace(&format!("nonce={nonce}"), "nonce=another-nonce")
    })
    .await;
    let res = browser().get(tampered).send().await.unwrap();
    let message = assert_envelope(res, 401, "AUTH_REQUIRED").await;
    assert!(message.contains("ID token"), "{message}");

    // The provider says no.
    let b = browser();
    let start = b
        .get(app.url("/api/v1/auth/sso/oidc/start"))
        .send()
        .await
        .unwrap();
    let state = param(&location(&start), "state").to_string();
    let denied = app.url(&format!(
        "/api/v1/auth/sso/oidc/callback?error=access_denied&state={state}"
    ));
    assert_envelope(b.get(denied).send().await.unwrap(), 403, "ACCESS_DENIED").await;

    // Every refusal is audited, with the reason and no secret.
    let platform = app.seed_tenant("ops").await;
    let operator = app.seed_user(platform, Role::Admin, true).await;
    let op = app.login(&operator).await.access;
    // A platform admin never logs in through a provider that vouches for its address.
    provider.user("op", &operator.email, true).await;
    let res = oidc_login(&app, "op").await;
    let message = assert_envelope(res, 403, "ACCESS_DENIED").await;
    assert!(message.contains("platform admins"), "{message}");
    let none = coditect_proto::TenantId::NONE;
    let failed = audit_actions(
        &app,
        &op,
        &format!("action=auth.sso_login&tenant_id={none}"),
    )
    .await;
    let reasons: Vec<String> = failed
        .iter()
        .filter(|r| r["result"] == "failure")
        .map(|r| r["detail"].as_str().unwrap_or_default().to_string())
        .collect();
    for reason in [
        "unverified e-mail",
        "domain not allowed",
        "state mismatch",
        "browser mismatch",
        "invalid_grant",
        "nonce",
        "access_denied",
        "platform admin",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(reason)),
            "no audited {reason}: {reasons:?}"
        );
    }
    let people = me["tenant_id"].as_str().unwrap();
    let provisioned = audit_actions(
        &app,
        &op,
        &format!("action=user.provision&tenant_id={people}"),
    )
    .await;
    assert_eq!(
        provisioned.len(),
        1,
        "alice's account, made once: {provisioned:?}"
    );
    let logins = audit_actions(
        &app,
        &op,
        &format!("action=auth.sso_login&tenant_id={people}"),
    )
    .await;
    assert!(
        logins.iter().any(|r| r["result"] == "success"),
        "{logins:?}"
    );
    let logs = common::captured_logs();
    for line in &logs {
        let text = line.to_string();
        assert!(
            !text.contains("the client secret"),
            "secret in the log: {text}"
        );
    }

    // A command-line client: the code goes to its loopback return_to and is redeemed
    // with its PKCE verifier, once.
    let verifier = "a-verifier-of-the-command-line-client-0123456789";
    let challenge = {
        use base64::Engine;
        use sha2::Digest;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
    };
    let query = format!(
        "?return_to=http://127.0.0.1:45678/callback&state=cli-state&code_challenge={challenge}"
    );
    let callback = authorize(&app, &query, "alice", |u| u).await;
    let res = browser().get(&callback).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let handed = location(&res);
    assert!(
        handed.starts_with("http://127.0.0.1:45678/callback?code="),
        "{handed}"
    );
    assert!(handed.ends_with("&state=cli-state"), "{handed}");
    let code = param(&handed, "code");
    let wrong = exchange(
        &app,
        code,
        "not-the-verifier-not-the-verifier-not-the-verifier",
    )
    .await;
    assert_envelope(wrong, 400, "BAD_REQUEST").await;
    // The wrong verifier spent it: a thief cannot keep guessing.
    let callback = authorize(&app, &query, "alice", |u| u).await;
    let handed = location(&browser().get(&callback).send().await.unwrap());
    let code = param(&handed, "code");
    let exchanged = exchange(&app, code, verifier).await;
    assert_eq!(exchanged.status(), 200);
    assert_eq!(json(exchanged).await["user"]["email"], "alice@example.com");
    let twice = exchange(&app, code, verifier).await;
    assert_envelope(twice, 400, "BAD_REQUEST").await;
    // Codes go to loopback addresses only.
    let res = browser()
        .get(app.url(&format!(
            "/api/v1/auth/sso/oidc/start?return_to=http://evil.example:80/&code_challenge={challenge}"
        )))
        .send()
        .await
        .unwrap();
    assert_envelope(res, 400, "BAD_REQUEST").await;

    // The provider down: 503, and nothing half-done.
    drop(provider);
    let res = browser()
        .get(app.url("/api/v1/auth/sso/oidc/start"))
        .send()
        .await
        .unwrap();
    // (The metadata is cached for a while: the start may still work; the exchange cannot.)
    if res.status() == StatusCode::SEE_OTHER {
        let state = param(&location(&res), "state").to_string();
        let res = browser()
            .get(app.url(&format!(
                "/api/v1/auth/sso/oidc/callback?code=c&state={state}"
            )))
            .send()
            .await
            .unwrap();
        assert_envelope(res, 503, "UNAVAILABLE").await;
    } else {
        assert_envelope(res, 503, "UNAVAILABLE").await;
    }
}

/// Refused when the hub creates no accounts, an expired ID token, and a provider that
/// is not there at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_provisioning_expired_tokens_and_no_provider() {
    // ID tokens good for a minute, checked by a hub whose clock is two minutes ahead (the
    // login itself, ten minutes, is still on).
    let provider = Provider::start(&["-e", "60"]).await;
    provider.user("mallory", "mallory@example.com", true).await;
    let config = sso_config(Some(&provider), None);
    let app = sso_app(config).await;
    let callback = authorize(&app, "", "mallory", |u| u).await;
    app.clock.advance(Duration::from_secs(120));
    let res = browser().get(callback).send().await.unwrap();
    let message = assert_envelope(res, 401, "AUTH_REQUIRED").await;
    assert!(message.contains("expired"), "{message}");

    let provider = Provider::start(&[]).await;
    provider.user("mallory", "mallory@example.com", true).await;
    let mut config = sso_config(Some(&provider), None);
    config.provision = false;
    let app = sso_app(config).await;
    let res = oidc_login(&app, "mallory").await;
    let message = assert_envelope(res, 403, "ACCESS_DENIED").await;
    assert!(message.contains("no account"), "{message}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let app = sso_app(oidc_at(format!("http://127.0.0.1:{port}"))).await;
    let res = browser()
        .get(app.url("/api/v1/auth/sso/oidc/start"))
        .send()
        .await
        .unwrap();
    assert_envelope(res, 503, "UNAVAILABLE").await;
    // Not configured: GitHub is "not found", and the list says what there is.
    let res = app.get("/api/v1/auth/sso/github/start").await;
    assert_envelope(res, 404, "NOT_FOUND").await;
}

async fn github_logins_use_the_verified_primary_address(backend: Backend) {
    let gh = GitHub::start().await;
    gh.user(
        "octo",
        json!([
            {"email": "octo@users.noreply.github.com", "primary": false, "verified": true, "visibility": null},
            {"email": "octo@example.com", "primary": true, "verified": true, "visibility": "private"},
        ]),
    );
    gh.user(
        "sloppy",
        json!([{"email": "sloppy@example.com", "primary": true, "verified": false, "visibility": null}]),
    );
    let gh_url = gh.url.clone();
    let config = sso_config(None, Some(&gh_url));
    let app = spawn_app_with(backend, |c| c.sso = Some(config), axum::Router::new()).await;
    let login = |who: &'static str| {
        let (app, gh) = (&app, &gh);
        async move {
            gh.next(who);
            let b = browser();
            let res = b
                .get(app.url("/api/v1/auth/sso/github/start"))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::SEE_OTHER);
            let res = b.get(location(&res)).send().await.unwrap();
            let callback = at_hub(app, &location(&res));
            (b.get(&callback).send().await.unwrap(), callback)
        }
    };
    let (res, callback) = login("octo").await;
    assert_eq!(res.status(), 200);
    let tokens = json(res).await;
    assert_eq!(tokens["user"]["email"], "octo@example.com");
    let access = tokens["access_token"].as_str().unwrap();
    let session = app
        .get_json(
            &format!(
                "/api/v1/sessions/{}",
                tokens["session_id"].as_str().unwrap()
            ),
            access,
        )
        .await;
    assert_eq!(session["login_method"], "github");
    // The same callback again: the state is spent.
    assert_envelope(
        browser().get(&callback).send().await.unwrap(),
        400,
        "BAD_REQUEST",
    )
    .await;

    let (res, _) = login("sloppy").await;
    let message = assert_envelope(res, 403, "ACCESS_DENIED").await;
    assert!(message.contains("not verified"), "{message}");

    // A code GitHub no longer knows: its 200-with-error answer is a refusal, not a crash.
    gh.next("octo");
    let b = browser();
    let res = b
        .get(app.url("/api/v1/auth/sso/github/start"))
        .send()
        .await
        .unwrap();
    let at_github = location(&res);
    let res = b.get(&at_github).send().await.unwrap();
    let callback = at_hub(&app, &location(&res));
    gh.forget_codes();
    let message = assert_envelope(b.get(&callback).send().await.unwrap(), 400, "BAD_REQUEST").await;
    assert!(message.contains("bad_verification_code"), "{message}");
}

/// A provider whose ID tokens are well signed but for another client: refused as not for
/// this hub (`oidc-provider-mock` always names the client that asked, so this one is a
/// stand-in: discovery, JWKS and a token endpoint, its key made here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_for_another_audience_is_refused() {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::KeyPair as _;
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let pem = pem::encode(&pem::Pem::new(
        "PRIVATE KEY",
        pair.as_der().unwrap().as_ref().to_vec(),
    ));
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let public = pair.public_key();
    let jwk = json!({"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig",
        "n": b64(public.modulus().big_endian_without_leading_zero()),
        "e": b64(public.exponent().big_endian_without_leading_zero())});

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let nonces: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let discovery = json!({
        "issuer": issuer, "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"), "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"], "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    });
    let (n1, n2, iss) = (nonces.clone(), nonces.clone(), issuer.clone());
    let router = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || async move { axum::Json(discovery) }),
        )
        .route(
            "/jwks",
            axum::routing::get(move || async move { axum::Json(json!({"keys": [jwk]})) }),
        )
        .route(
            "/authorize",
            axum::routing::get(move |Query(q): Query<HashMap<String, String>>| async move {
                n1.lock()
                    .unwrap()
                    .insert("code-1".into(), q["nonce"].clone());
                Redirect::to(&format!(
                    "{}?code=code-1&state={}",
                    q["redirect_uri"], q["state"]
                ))
            }),
        )
        .route(
            "/token",
            axum::routing::post(move |Form(f): Form<HashMap<String, String>>| async move {
                let nonce = n2.lock().unwrap().remove(&f["code"]).unwrap_or_default();
                let now = chrono::Utc::now().timestamp();
                let claims = json!({"iss": iss, "sub": "zed", "aud": "someone-else",
                    "iat": now, "exp": now + 300, "nonce": nonce,
                    "email": "zed@example.com", "email_verified": true});
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
                header.kid = Some("k1".into());
                let id_token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
                axum::Json(json!({"access_token": "at", "token_type": "Bearer",
                    "expires_in": 300, "id_token": id_token}))
            }),
        );
    tokio::spawn(async move { axum::serve(listener, router).await });

    let app = sso_app(oidc_at(issuer)).await;
    let b = browser();
    let res = b
        .get(app.url("/api/v1/auth/sso/oidc/start"))
        .send()
        .await
        .unwrap();
    let res = b.get(location(&res)).send().await.unwrap();
    let callback = at_hub(&app, &location(&res));
    let res = b.get(callback).send().await.unwrap();
    let message = assert_envelope(res, 401, "AUTH_REQUIRED").await;
    assert!(message.to_lowercase().contains("audience"), "{message}");
}
