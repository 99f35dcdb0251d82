//! Two hub replicas on one PostgreSQL: tokens and keys issued by one are honoured by the
//! other, and a logout or a revocation on one is refused by the other within the bound
//! (`auth_session_cache_ttl`, 2 s by default, plus one store read).

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_proto::Role;
use common::{Backend, TestApp, json, spawn_app};
use reqwest::Method;
use std::time::{Duration, Instant};

/// A second hub on the first one's database.
async fn replica_of(first: &TestApp) -> TestApp {
    common::replica_with(first, |_| {}).await
}

/// How long until `token` is refused by `app` (polling every 50 ms, at most `limit`).
async fn refused_after(app: &TestApp, token: &str, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if app.get_as("/api/v1/users/me", token).await.status() == 401 {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_sessions_keys_and_revocations() {
    let a = spawn_app(Backend::Postgres).await;
    let b = replica_of(&a).await;
    let tenant = a.seed_tenant("acme").await;
    let user = a.seed_user(tenant, Role::Member, false).await;

    // Signed by A, verified by B (B fetches A's published key on first sight of its kid).
    let tokens = a.login(&user).await;
    assert_eq!(
        b.get_as("/api/v1/users/me", &tokens.access).await.status(),
        200
    );
    // Refreshed on B, used on A.
    let res = b
        .client
        .post(b.url("/api/v1/auth/refresh"))
        .json(&serde_json::json!({"refresh_token": tokens.refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let rotated = json(res).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(a.get_as("/api/v1/users/me", &rotated).await.status(), 200);
    // Both replicas publish: the JWKS of either lists both signing keys.
    let kid = |t: &str| {
        let header = t.split('.').next().unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
                .unwrap(),
        )
        .unwrap();
        header["kid"].as_str().unwrap().to_string()
    };
    assert_ne!(
        kid(&tokens.access),
        kid(&rotated),
        "each replica signs with its own key"
    );

    // Logout on A: refused on A at once, on B within the cache TTL.
    assert_eq!(
        a.call(Method::POST, "/api/v1/auth/logout", &rotated, None)
            .await
            .status(),
        204
    );
    assert_eq!(a.get_as("/api/v1/users/me", &rotated).await.status(), 401);
    let seen = refused_after(&b, &rotated, Duration::from_secs(5))
        .await
        .expect("B refuses a session terminated on A within 5 s");
    eprintln!("logout on A refused on B after {seen:?}");

    // An API key revoked on A is refused on B within the same bound.
    let session = a.login(&user).await;
    let key = json(
        a.post_as(
            "/api/v1/api-keys",
            &session.access,
            serde_json::json!({"name": "k"}),
        )
        .await,
    )
    .await;
    let secret = key["key"].as_str().unwrap();
    assert_eq!(b.get_as("/api/v1/users/me", secret).await.status(), 200);
    let path = format!("/api/v1/api-keys/{}", key["id"].as_str().unwrap());
    assert_eq!(
        a.call(Method::DELETE, &path, &session.access, None)
            .await
            .status(),
        204
    );
    let seen = refused_after(&b, secret, Duration::from_secs(5))
        .await
        .expect("B refuses a key revoked on A within 5 s");
    eprintln!("revocation on A refused on B after {seen:?}");
}
