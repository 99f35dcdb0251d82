//! `coditect-bench auth`: what authentication costs.
//!
//! - access-token validation as every request does it (`auth::principal::authenticate`:
//!   header parsing, RS256 verify, claims, session + user lookup, liveness), with the
//!   session cache warm (the steady state) and with it disabled (every call reads the
//!   store), beside a bare RSA-2048 PKCS#1 v1.5 verify (aws-lc) and `jsonwebtoken::decode`
//!   of the same token;
//! - login: Argon2id verify at the production parameters, and a whole HTTP login.

use crate::report::{Table, machine, micros, millis, stats};
use coditect_hub::auth::bootstrap::{self, NewAccount};
use coditect_hub::authz::RequestMeta;
use coditect_hub::clock::Clock;
use coditect_hub::{AppState, Config, Hub};
use coditect_proto::{Email, Role};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Token validations per measurement.
    #[arg(long, default_value_t = 20_000)]
    validations: usize,
    /// Logins per measurement.
    #[arg(long, default_value_t = 30)]
    logins: usize,
}

const PASSWORD: &str = "benchmark passphrase";

struct Running {
    state: AppState,
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn hub(cache_ttl: Duration) -> anyhow::Result<Running> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::defaults(dir.path());
    config.listen = "127.0.0.1:0".parse()?;
    config.auth.session_cache_ttl = cache_ttl;
    config.auth.login_max_failures = 1000;
    let hub = Hub::start_with_clock(config, Clock::system()).await?;
    let state = hub.state().clone();
    let base = format!("http://{}", hub.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(hub.serve(async move {
        let _ = stopped.await;
    }));
    Ok(Running {
        state,
        base,
        stop,
        _dir: dir,
    })
}

async fn seed_user(state: &AppState) -> anyhow::Result<String> {
    let email = "bench@example.com".to_string();
    bootstrap::create_account(
        &state.gate().system(),
        &state.auth().passwords,
        state.gate().clock(),
        NewAccount {
            email: Email::parse(&email).map_err(anyhow::Error::msg)?,
            password: Some(PASSWORD.into()),
            role: Role::Member,
            platform_admin: false,
            tenant: "bench".into(),
            create_tenant: true,
        },
    )
    .await?;
    Ok(email)
}

async fn login(client: &reqwest::Client, base: &str, email: &str) -> anyhow::Result<String> {
    let res = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&serde_json::json!({"email": email, "password": PASSWORD}))
        .send()
        .await?;
    anyhow::ensure!(res.status() == 200, "login failed: {}", res.status());
    let body: serde_json::Value = res.json().await?;
    body["access_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no access token"))
}

async fn time_async<F, Fut>(n: usize, mut f: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    for _ in 0..warmup(n) {
        f().await?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        f().await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// Untimed rounds first, so no row pays for cold caches or clock ramp-up.
fn warmup(n: usize) -> usize {
    (n / 10).max(1)
}

fn time_sync(n: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Vec<Duration>> {
    for _ in 0..warmup(n) {
        f()?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        f()?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    println!("## auth: {}\n", machine());
    let client = reqwest::Client::new();
    let warm = hub(Duration::from_secs(2)).await?;
    let cold = hub(Duration::ZERO).await?;
    let email = seed_user(&warm.state).await?;
    seed_user(&cold.state).await?;
    let token = login(&client, &warm.base, &email).await?;
    let cold_token = login(&client, &cold.base, &email).await?;

    // The same token, checked by the bare engines underneath.
    let mut parts = token.split('.');
    let (header, payload, signature) = match (parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s)) => (h, p, s),
        _ => anyhow::bail!("malformed token"),
    };
    let message = format!("{header}.{payload}");
    let signature =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, signature)?;
    let jwks = warm.state.auth().keys.jwks();
    let jwk = jwks
        .keys
        .first()
        .ok_or_else(|| anyhow::anyhow!("no signing key"))?;
    let b64 = |v: &str| -> anyhow::Result<Vec<u8>> {
        Ok(base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            v,
        )?)
    };
    let (n, e) = (b64(&jwk.n)?, b64(&jwk.e)?);
    let bare = time_sync(args.validations, || {
        let key = aws_lc_rs::signature::RsaPublicKeyComponents { n: &n, e: &e };
        key.verify(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            message.as_bytes(),
            &signature,
        )
        .map_err(|_| anyhow::anyhow!("bare verify failed"))
    })?;
    let decoding = jsonwebtoken::DecodingKey::from_rsa_raw_components(&n, &e);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["coditect-api"]);
    let library = time_sync(args.validations, || {
        jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation)?;
        Ok(())
    })?;

    let headers = |t: &str| -> anyhow::Result<axum::http::HeaderMap> {
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {t}").parse()?,
        );
        Ok(h)
    };
    let warm_headers = headers(&token)?;
    let ours_warm = time_async(args.validations, || async {
        coditect_hub::auth::principal::authenticate(
            &warm.state,
            &warm_headers,
            RequestMeta::default(),
        )
        .await
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await?;
    let cold_headers = headers(&cold_token)?;
    let ours_cold = time_async(args.validations, || async {
        coditect_hub::auth::principal::authenticate(
            &cold.state,
            &cold_headers,
            RequestMeta::default(),
        )
        .await
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await?;

    let (bare_p50, _, _) = stats(bare.clone());
    let mut table = Table::new(&[
        "what",
        "iterations",
        "p50 µs",
        "p99 µs",
        "mean µs",
        "p50 vs bare verify",
    ]);
    for (what, samples) in [
        ("bare RSA-2048 verify (aws-lc)", bare),
        ("jsonwebtoken::decode RS256", library),
        ("hub authenticate, session cache warm", ours_warm),
        ("hub authenticate, cache off (store read)", ours_cold),
    ] {
        let (p50, p99, mean) = stats(samples);
        table.row(vec![
            what.into(),
            args.validations.to_string(),
            micros(p50),
            micros(p99),
            micros(mean),
            format!("{:.2}", p50.as_secs_f64() / bare_p50.as_secs_f64()),
        ]);
    }
    table.print();

    // Login: Argon2id alone, then the whole HTTP round trip (verify + session + tokens).
    let hash = warm
        .state
        .auth()
        .passwords
        .hash(PASSWORD.into())
        .await
        .map_err(anyhow::Error::msg)?;
    let passwords = &warm.state.auth().passwords;
    let argon = time_async(args.logins, || async {
        let ok = passwords
            .verify(PASSWORD.into(), Some(hash.clone()))
            .await?;
        anyhow::ensure!(ok, "verify");
        Ok(())
    })
    .await?;
    let http = time_async(args.logins, || async {
        login(&client, &warm.base, &email).await.map(|_| ())
    })
    .await?;
    println!();
    let mut table = Table::new(&["what", "iterations", "p50 ms", "p99 ms", "mean ms"]);
    let params = hash.split('$').nth(3).unwrap_or("?").to_string();
    for (what, samples) in [
        (format!("argon2id verify ({params})"), argon),
        (
            "POST /api/v1/auth/login (HTTP, embedded store)".to_string(),
            http,
        ),
    ] {
        let (p50, p99, mean) = stats(samples);
        table.row(vec![
            what,
            args.logins.to_string(),
            millis(p50),
            millis(p99),
            millis(mean),
        ]);
    }
    table.print();
    let _ = warm.stop.send(());
    let _ = cold.stop.send(());
    Ok(())
}
