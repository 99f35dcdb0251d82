//! Identity on both storage engines: login, tokens and every attack on them, refresh
//! rotation, sessions, API keys, throttling, key rotation and the JWKS.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use coditect_proto::Role;
use common::{Backend, TestApp, Tokens, assert_envelope, json, spawn_app, spawn_app_with};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

both_backends!(
    login_returns_a_session_and_rs256_tokens,
    failed_logins_look_the_same_whether_or_not_the_account_exists,
    the_n_plus_first_failed_login_is_throttled,
    forged_and_stale_tokens_are_all_refused,
    a_token_dies_with_its_session,
    idle_sessions_expire_by_the_clock,
    refresh_rotates_and_reuse_kills_the_session,
    sessions_are_readable_and_terminable_by_owner_or_admin,
    api_keys_authenticate_until_revoked_or_expired,
    api_keys_are_scoped_by_role_and_workspace,
    signing_keys_rotate_and_old_tokens_keep_verifying,
    disabling_a_user_ends_their_access,
    changing_the_password_ends_the_other_sessions,
    guessing_the_current_password_is_throttled_and_audited,
    expired_sessions_are_swept_and_counted,
    concurrent_guesses_get_no_more_than_the_budget,
    a_session_can_be_opened_for_a_workspace,
    a_configured_signing_key_is_used_and_never_rotated,
);

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn header_of(token: &str) -> Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
}

/// The node's own private signing key, as an attacker who stole it would have it.
fn node_private_key(app: &TestApp) -> EncodingKey {
    let dir = app.data_dir.path().join("keys");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "pem"))
        .unwrap();
    EncodingKey::from_rsa_pem(&std::fs::read(file).unwrap()).unwrap()
}

async fn me_status(app: &TestApp, token: &str) -> u16 {
    app.get_as("/api/v1/users/me", token)
        .await
        .status()
        .as_u16()
}

async fn refresh(app: &TestApp, refresh_token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/auth/refresh"))
        .json(&json!({ "refresh_token": refresh_token }))
        .send()
        .await
        .unwrap()
}

async fn login_response(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap()
}

async fn login_returns_a_session_and_rs256_tokens(backend: Backend) {
    let app = spawn_app(backend).await;
    let tenant = app.seed_tenant("acme").await;
    let user = app.seed_user(tenant, Role::Member, false).await;
    let res = login_response(&app, &user.email.to_uppercase(), &user.password).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body = json(res).await;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["user"]["id"], user.id.to_string());
    assert_eq!(body["user"]["email"], user.email);
    assert_eq!(body["user"]["tenant_id"], tenant.to_string());
    assert_eq!(body["user"]["role"], "member");
    let access = body["access_token"].as_str().unwrap();
    assert!(body["refresh_token"].as_str().unwrap().starts_with("cdr_"));

    let header = header_of(access);
    assert_eq!(header["alg"], "RS256");
    let kid = header["kid"].as_str().unwrap();
    let claims = claims_of(access);
    assert_eq!(claims["sub"], user.id.to_string());
    assert_eq!(claims["tid"], tenant.to_string());
    assert_eq!(claims["role"], "member");
    assert_eq!(claims["sid"], body["session_id"]);
    assert_eq!(claims["iss"], "coditect");
    assert_eq!(claims["aud"], "coditect-api");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );

    let jwks = json(app.get("/.well-known/jwks.json").await).await;
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .expect("the token's key is published");
    assert_eq!(
        (key["kty"].as_str(), key["alg"].as_str()),
        (Some("RSA"), Some("RS256"))
    );

    let me = app.get_json("/api/v1/users/me", access).await;
    assert_eq!(me["id"], user.id.to_string());
    assert!(me.get("password_hash").is_none());
    let session = app
        .get_json(
            &format!("/api/v1/sessions/{}", body["session_id"].as_str().unwrap()),
            access,
        )
        .await;
    assert_eq!(session["status"], "active");
    assert_eq!(session["user_id"], user.id.to_string());

    // Without a credential: 401 with a challenge.
    let res = app.get("/api/v1/users/me").await;
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer realm=\"coditect\""
    );
    assert_envelope(res, 401, "AUTH_REQUIRED").await;
}

async fn failed_logins_look_the_same_whether_or_not_the_account_exists(backend: Backend) {
    let app = spawn_app(backend).await;
    let (tenant, admin, admin_tokens) = app.tenant_with_admin("acme").await;
    let user = app.seed_user(tenant, Role::Member, false).await;
    let wrong = login_response(&app, &user.email, "not the password at all").await;
    let unknown = login_response(&app, "nobody@example.com", "not the password at all").await;
    let a = assert_envelope(wrong, 401, "AUTH_REQUIRED").await;
    let b = assert_envelope(unknown, 401, "AUTH_REQUIRED").await;
    assert_eq!(
        a, b,
        "same answer for a wrong password and an unknown account"
    );

    // Malformed input is a 400, not a login attempt.
    let res = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": "not-an-address", "password": "x"}))
        .send()
        .await
        .unwrap();
    assert_envelope(res, 400, "BAD_REQUEST").await;

    // Both outcomes are in the audit trail (the known account's under its tenant).
    let audit = app
        .get_json("/api/v1/audit?action=auth.login", &admin_tokens.access)
        .await;
    let items = audit["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|r| r["actor_id"] == user.id.to_string() && r["result"] == "failure")
    );
    assert!(
        items
            .iter()
            .any(|r| r["actor_id"] == admin.id.to_string() && r["result"] == "success")
    );
    assert!(
        items
            .iter()
            .all(|r| r["ip"].as_str().is_some() && r["request_id"].as_str().is_some())
    );
}

async fn the_n_plus_first_failed_login_is_throttled(backend: Backend) {
    let app = spawn_app_with(
        backend,
        |c| c.auth.login_max_failures = 3,
        axum::Router::new(),
    )
    .await;
    let tenant = app.seed_tenant("acme").await;
    let user = app.seed_user(tenant, Role::Member, false).await;
    for _ in 0..3 {
        let res = login_response(&app, &user.email, "wrong password here").await;
        assert_eq!(res.status(), 401);
    }
    let res = login_response(&app, &user.email, "wrong password here").await;
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry), "{retry}");
    assert_envelope(res, 429, "RATE_LIMITED").await;
    // Throttled means throttled: even the right password waits.
    let res = login_response(&app, &user.email, &user.password).await;
    assert_eq!(res.status(), 429);
    // Unknown accounts are throttled the same way (no existence leak).
    for _ in 0..3 {
        login_response(&app, "ghost@example.com", "wrong password here").await;
    }
    assert_eq!(
        login_response(&app, "ghost@example.com", "x")
            .await
            .status(),
        429
    );
    // Other accounts are unaffected.
    let other = app.seed_user(tenant, Role::Member, false).await;
    app.login(&other).await;
}

async fn forged_and_stale_tokens_are_all_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let tenant = app.seed_tenant("acme").await;
    let user = app.seed_user(tenant, Role::Member, false).await;
    let tokens = app.login(&user).await;
    assert_eq!(me_status(&app, &tokens.access).await, 200);
    let claims = claims_of(&tokens.access);
    let kid = header_of(&tokens.access)["kid"]
        .as_str()
        .unwrap()
        .to_string();

    let mut forged: Vec<(&str, String)> = Vec::new();

    // alg: none
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = tokens.access.split('.').nth(1).unwrap();
    forged.push(("alg none", format!("{none_header}.{body}.")));

    // HS256 "signed" with the public key (key confusion)
    let public_pem = public_key_pem(&app);
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(kid.clone());
    let hs_token = jsonwebtoken::encode(
        &hs,
        &claims,
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    forged.push(("HS256 with the public key", hs_token));

    // Signed by the node's own key but with the wrong issuer / audience.
    let stolen = node_private_key(&app);
    let mut rs = Header::new(Algorithm::RS256);
    rs.kid = Some(kid.clone());
    for (what, field, value) in [
        ("wrong iss", "iss", "evil"),
        ("wrong aud", "aud", "other-api"),
    ] {
        let mut c = claims.clone();
        c[field] = json!(value);
        forged.push((what, jsonwebtoken::encode(&rs, &c, &stolen).unwrap()));
    }

    // A key we never published, under an unknown kid and under ours.
    let rogue = rogue_key();
    for (what, k) in [
        ("unknown kid", "not-a-key"),
        ("our kid, other key", kid.as_str()),
    ] {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(k.to_string());
        forged.push((what, jsonwebtoken::encode(&h, &claims, &rogue).unwrap()));
    }
    // No kid at all.
    forged.push((
        "no kid",
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &stolen).unwrap(),
    ));

    // Tampered payload, original signature.
    let mut c = claims.clone();
    c["role"] = json!("admin");
    let parts: Vec<&str> = tokens.access.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap()),
        parts[2]
    );
    forged.push(("tampered payload", tampered));
    forged.push(("garbage", "a.b.c".into()));

    for (what, token) in &forged {
        let res = app.get_as("/api/v1/users/me", token).await;
        assert_eq!(res.status(), 401, "{what}");
        assert_envelope(res, 401, "AUTH_REQUIRED").await;
    }

    // Expired: 15 minutes later by the hub's clock (the session itself is still live).
    app.clock.advance(Duration::from_secs(15 * 60 + 1));
    assert_eq!(me_status(&app, &tokens.access).await, 401, "expired");
    // A fresh token on the same session still works: it was the token, not the session.
    let res = refresh(&app, &tokens.refresh).await;
    assert_eq!(res.status(), 200);
    let fresh = json(res).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(me_status(&app, &fresh).await, 200);
}

/// The node's public key as PEM (SubjectPublicKeyInfo), as anyone could derive from JWKS.
fn public_key_pem(app: &TestApp) -> String {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair as _;
    let dir = app.data_dir.path().join("keys");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "pem"))
        .unwrap();
    let pem = pem::parse(std::fs::read(file).unwrap()).unwrap();
    let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(pem.contents()).unwrap();
    let der = pair.public_key().as_der().unwrap();
    pem::encode(&pem::Pem::new("PUBLIC KEY", der.as_ref().to_vec()))
}

fn rogue_key() -> EncodingKey {
    use aws_lc_rs::encoding::AsDer;
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = pair.as_der().unwrap();
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec()));
    EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
}

async fn a_token_dies_with_its_session(backend: Backend) {
    let app = spawn_app(backend).await;
    let (tenant, _admin, admin_tokens) = app.tenant_with_admin("acme").await;
    let user = app.seed_user(tenant, Role::Member, false).await;

    let a = app.login(&user).await;
    let res = app
        .call(Method::POST, "/api/v1/auth/logout", &a.access, None)
        .await;
    assert_eq!(res.status(), 204);
    assert_eq!(
        me_status(&app, &a.access).await,
        401,
        "refused at once on this node"
    );
    assert_eq!(
        refresh(&app, &a.refresh).await.status(),
        401,
        "and so is its refresh token"
    );
    let session = app
        .get_json(
            &format!("/api/v1/sessions/{}", a.session_id),
            &admin_tokens.access,
        )
        .await;
    assert_eq!(session["status"], "terminated");
    assert_eq!(session["end_reason"], "logout");

    // An administrator ends someone else's session.
    let b = app.login(&user).await;
    let res = app
        .call(
            Method::DELETE,
            &format!("/api/v1/sessions/{}", b.session_id),
            &admin_tokens.access,
            None,
        )
        .await;
    assert_eq!(res.status(), 204);
    assert_eq!(me_status(&app, &b.access).await, 401);

    // Logging out twice: the second time there is no session any more.
    assert_eq!(
        app.call(Method::POST, "/api/v1/auth/logout", &b.access, None)
            .await
            .status(),
        401
    );
}

async fn idle_sessions_expire_by_the_clock(backend: Backend) {
    let app = spawn_app_with(
        backend,
        |c| {
            c.auth.session_idle_timeout = Duration::from_secs(600);
            c.auth.access_ttl = Duration::from_secs(3600);
            // Every request reads the store: the test needs no real time to pass.
            c.auth.session_cache_ttl = Duration::ZERO;
        },
        axum::Router::new(),
    )
    .await;
    let tenant = app.seed_tenant("acme").await;
    let user = app.seed_user(tenant, Role::Member, false).await;
    let tokens = app.login(&user).await;
    app.clock.advance(Duration::from_secs(300));
    assert_eq!(
        me_status(&app, &tokens.access).await,
        200,
        "5 minutes idle is fine"
    );
    // That request was activity (recorded in the background: wait until it is stored)...
    let path = format!("/api/v1/sessions/{}", tokens.session_id);
    let login_at = app.get_json(&path, &tokens.access).await["created_at"].clone();
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            app.get_json(&path, &tokens.access).await["last_access_at"] != login_at
        })
        .await
    );
    // ...so 6 more minutes (11 after the login) are still fine...
    app.clock.advance(Duration::from_secs(360));
    assert_eq!(me_status(&app, &tokens.access).await, 200);
    // ...but 11 idle minutes end it, though the token itself is still within its hour.
    app.clock.advance(Duration::from_secs(660));
    assert_eq!(me_status(&app, &tokens.access).await, 401, "idle-expired");
    assert_eq!(refresh(&app, &tokens.refresh).await.status(), 401);
    // Refused requests are not activity: the session stays dead.
    assert_eq!(me_status(&app, &tokens.access).await, 401, "not revived");
}

async fn refresh_rotates_and_reuse_kills_the_session(backend: Backend) {
    let app = spawn_app(backend).await;
    let (tenant, _admin, admin_tokens) = app.tenant_with_admin("acme").await;
    let user = app.seed_user(tenant, Role::Member, false).await;
    let first = app.login(&user).await;

    let res = refresh(&app, &first.refresh).await;
    assert_eq!(res.status(), 200);
    let second = json(res).await;
    let second = Tokens {
        access: second["access_token"].as_str().unwrap().into(),
        refresh: second["refresh_token"].as_str().unwrap().into(),
        session_id: second["session_id"].as_str().unwrap().into(),
    };
    assert_eq!(second.session_id, first.session_id, "same session");
    assert_ne!(second.refresh, first.refresh, "rotated");
    assert_eq!(me_status(&app, &second.access).await, 200);

    // The spent token comes back: theft suspected, the whole session dies.
    assert_eq!(refresh(&app, &first.refresh).await.status(), 401);
    assert_eq!(me_status(&app, &second.access).await, 401);
    assert_eq!(refresh(&app, &second.refresh).await.status(), 401);
    assert_eq!(me_status(&app, &first.access).await, 401);

    let session = app
        .get_json(
            &format!("/api/v1/sessions/{}", first.session_id),
            &admin_tokens.access,
        )
        .await;
    assert_eq!(session["status"], "terminated");
    assert_eq!(session["end_reason"], "refresh_token_reused");
    let audit = app
        .get_json(
            "/api/v1/audit?action=auth.refresh_reuse",
            &admin_tokens.access,
        )
        .await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 1);
    let audit = app
        .get_json("/api/v1/audit?action=auth.refresh", &admin_tokens.access)
        .await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 1);

    // Garbage and foreign-looking refresh tokens are plain 401s.
    for bad in ["", "cdr_nope", "cdk_wrongkind"] {
        assert_envelope(refresh(&app, bad).await, 401, "AUTH_REQUIRED").await;
    }
}

async fn sessions_are_readable_and_terminable_by_owner_or_admin(backend: Backend) {
    let app = spawn_app(backend).await;
    let (tenant, _admin, admin_tokens) = app.tenant_with_admin("acme").await;
    let alice = app.seed_user(tenant, Role::Member, false).await;
    let bob = app.seed_user(tenant, Role::Member, false).await;
    let a = app.login(&alice).await;
    let b = app.login(&bob).await;
    let path = format!("/api/v1/sessions/{}", a.session_id);
    assert_eq!(app.get_as(&path, &a.access).await.status(), 200, "owner");
    assert_eq!(
        app.get_as(&path, &admin_tokens.access).await.status(),
        200,
        "admin"
    );
    assert_envelope(app.get_as(&path, &b.access).await, 403, "ACCESS_DENIED").await;
    assert_envelope(
        app.call(Method::DELETE, &path, &b.access, None).await,
        403,
        "ACCESS_DENIED",
    )
    .await;
    assert_eq!(
        me_status(&app, &a.access).await,
        200,
        "bob could not end it"
    );
    assert_envelope(
        app.get_as(
            &format!("/api/v1/sessions/{}", uuid::Uuid::now_v7()),
            &a.access,
        )
        .await,
        404,
        "NOT_FOUND",
    )
    .await;
    assert_envelope(
        app.get_as("/api/v1/sessions/not-a-uuid", &a.access).await,
        400,
        "BAD_REQUEST",
    )
    .await;
}

async fn create_key(app: &TestApp, token: &str, body: Value) -> Value {
    let res = app.post_as("/api/v1/api-keys", token, body).await;
    assert_eq!(res.status(), 201);
    json(res).await
}

async fn api_keys_authenticate_until_revoked_or_expired(backend: Backend) {
    // No credential cache: expiry by the test clock shows without real time passing.
    let app = spawn_app_with(
        backend,
        |c| c.auth.session_cache_ttl = Duration::ZERO,
        axum::Router::new(),
    )
    .await;
    let tenant = app.seed_tenant("acme").await;
    let user = app.seed_user(tenant, Role::Member, false).await;
    let tokens = app.login(&user).await;

    let created = create_key(&app, &tokens.access, json!({"name": "laptop monitor"})).await;
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("cdk_"));
    assert_eq!(created["prefix"].as_str().unwrap(), &key[..12]);
    assert_eq!(created["role"], "service");
    assert!(created.get("secret_hash").is_none());

    // Both ways of presenting it.
    assert_eq!(me_status(&app, &key).await, 200);
    let res = app
        .client
        .get(app.url("/api/v1/users/me"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Listed without the secret; last use recorded.
    let list = app.get_json("/api/v1/api-keys", &tokens.access).await;
    let listed = &list["items"][0];
    assert_eq!(listed["id"], created["id"]);
    assert!(listed.get("key").is_none());
    // Use is recorded in the background: it shows up shortly.
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            let list = app.get_json("/api/v1/api-keys", &tokens.access).await;
            list["items"][0]["last_used_at"].is_string()
        })
        .await,
        "{listed}"
    );

    // A wrong secret with the right tenant and id is refused.
    let mut wrong = key.clone().into_bytes();
    wrong[5] = if wrong[5] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        me_status(&app, &String::from_utf8(wrong).unwrap()).await,
        401
    );

    // Revoked: refused at once.
    let res = app
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{}", created["id"].as_str().unwrap()),
            &tokens.access,
            None,
        )
        .await;
    assert_eq!(res.status(), 204);
    assert_eq!(me_status(&app, &key).await, 401);

    // Expiring: fine now, refused once the clock passes its expiry.
    let expires = (app.clock.now() + chrono::Duration::hours(1)).to_rfc3339();
    let temp = create_key(
        &app,
        &tokens.access,
        json!({"name": "temp", "expires_at": expires}),
    )
    .await;
    let temp = temp["key"].as_str().unwrap().to_string();
    assert_eq!(me_status(&app, &temp).await, 200);
    app.clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(me_status(&app, &temp).await, 401);
    // And a key cannot be born expired.
    let past = (app.clock.now() - chrono::Duration::hours(1)).to_rfc3339();
    let fresh = app.login(&user).await;
    let res = app
        .post_as(
            "/api/v1/api-keys",
            &fresh.access,
            json!({"name": "past", "expires_at": past}),
        )
        .await;
    assert_envelope(res, 400, "BAD_REQUEST").await;
}

async fn api_keys_are_scoped_by_role_and_workspace(backend: Backend) {
    let app = spawn_app(backend).await;
    let (tenant, _admin, admin_tokens) = app.tenant_with_admin("acme").await;
    let member = app.seed_user(tenant, Role::Member, false).await;
    let member_tokens = app.login(&member).await;

    // A member cannot mint an admin-role key (it would be refused every admin act).
    let res = app
        .post_as(
            "/api/v1/api-keys",
            &member_tokens.access,
            json!({"name": "wants admin", "role": "admin"}),
        )
        .await;
    assert_envelope(res, 403, "ACCESS_DENIED").await;
    // A member's member key acts as a member, no more.
    let key = create_key(
        &app,
        &member_tokens.access,
        json!({"name": "as me", "role": "member"}),
    )
    .await;
    let key = key["key"].as_str().unwrap();
    assert_envelope(app.get_as("/api/v1/users", key).await, 403, "ACCESS_DENIED").await;
    // An admin's viewer key cannot write.
    let viewer_key = create_key(
        &app,
        &admin_tokens.access,
        json!({"name": "ro", "role": "viewer"}),
    )
    .await;
    let viewer_key = viewer_key["key"].as_str().unwrap();
    let res = app
        .post_as(
            "/api/v1/workspaces",
            viewer_key,
            json!({"name": "nope", "start": false}),
        )
        .await;
    assert_envelope(res, 403, "ACCESS_DENIED").await;
    assert_eq!(
        app.get_as("/api/v1/workspaces", viewer_key).await.status(),
        200
    );

    // A key bound to one workspace sees that workspace only.
    let ws1 = json(
        app.post_as(
            "/api/v1/workspaces",
            &admin_tokens.access,
            json!({"name": "one", "start": false}),
        )
        .await,
    )
    .await;
    let ws2 = json(
        app.post_as(
            "/api/v1/workspaces",
            &admin_tokens.access,
            json!({"name": "two", "start": false}),
        )
        .await,
    )
    .await;
    let bound = create_key(
        &app,
        &admin_tokens.access,
        json!({"name": "ci", "workspace_id": ws1["id"]}),
    )
    .await;
    let bound = bound["key"].as_str().unwrap();
    let ok = app
        .get_as(
            &format!("/api/v1/workspaces/{}", ws1["id"].as_str().unwrap()),
            bound,
        )
        .await;
    assert_eq!(ok.status(), 200);
    let other = app
        .get_as(
            &format!("/api/v1/workspaces/{}", ws2["id"].as_str().unwrap()),
            bound,
        )
        .await;
    assert_envelope(other, 403, "ACCESS_DENIED").await;
    let list = app.get_json("/api/v1/workspaces", bound).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["id"], ws1["id"]);

    // Keys for a service account, made by an admin.
    let svc = json(
        app.post_as(
            "/api/v1/users",
            &admin_tokens.access,
            json!({"email": "ci-bot@example.com", "role": "service"}),
        )
        .await,
    )
    .await;
    let svc_key = create_key(
        &app,
        &admin_tokens.access,
        json!({"name": "bot", "owner_id": svc["id"]}),
    )
    .await;
    let me = app
        .get_json("/api/v1/users/me", svc_key["key"].as_str().unwrap())
        .await;
    assert_eq!(me["id"], svc["id"]);
    // A member cannot mint keys for somebody else.
    let res = app
        .post_as(
            "/api/v1/api-keys",
            &member_tokens.access,
            json!({"name": "x", "owner_id": svc["id"]}),
        )
        .await;
    assert_envelope(res, 403, "ACCESS_DENIED").await;
    // Service accounts cannot log in with a password.
    assert_eq!(
        login_response(&app, "ci-bot@example.com", "")
            .await
            .status(),
        401
    );
}

async fn signing_keys_rotate_and_old_tokens_keep_verifying(backend: Backend) {
    let app = spawn_app_with(
        backend,
        |c| c.auth.key_rotation = Duration::from_secs(3600),
        axum::Router::new(),
    )
    .await;
    let tenant = app.seed_tenant("acme").await;
    let user = app.seed_user(tenant, Role::Member, false).await;
    let before = app.login(&user).await;
    let old_kid = header_of(&before.access)["kid"]
        .as_str()
        .unwrap()
        .to_string();

    let keys = &app.state.auth().keys;
    let new_kid = keys
        .rotate(app.state.gate().system().signing_keys())
        .await
        .unwrap();
    assert_ne!(new_kid, old_kid);
    let after = app.login(&user).await;
    assert_eq!(
        header_of(&after.access)["kid"],
        new_kid.as_str(),
        "the new key signs"
    );
    assert_eq!(
        me_status(&app, &before.access).await,
        200,
        "the old key still verifies"
    );
    let jwks = json(app.get("/.well-known/jwks.json").await).await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
        "{kids:?}"
    );

    // Once no token of the old key can be valid, it is gone from the set and the disk.
    app.clock.advance(Duration::from_secs(3600 + 900 + 301));
    keys.refresh(app.state.gate().system().signing_keys())
        .await
        .unwrap();
    let jwks = json(app.get("/.well-known/jwks.json").await).await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert!(!kids.contains(&old_kid.as_str()), "{kids:?}");
    let files: Vec<String> = std::fs::read_dir(app.data_dir.path().join("keys"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!files.iter().any(|f| f.contains(&old_kid)), "{files:?}");
}

async fn disabling_a_user_ends_their_access(backend: Backend) {
    let app = spawn_app(backend).await;
    let (tenant, admin, admin_tokens) = app.tenant_with_admin("acme").await;
    let user = app.seed_user(tenant, Role::Member, false).await;
    let tokens = app.login(&user).await;
    let key = create_key(&app, &tokens.access, json!({"name": "k"})).await;
    let key = key["key"].as_str().unwrap().to_string();

    let res = app
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{}", user.id),
            &admin_tokens.access,
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(json(res).await["disabled"], true);
    assert_eq!(me_status(&app, &tokens.access).await, 401);
    assert_eq!(me_status(&app, &key).await, 401);
    assert_eq!(
        login_response(&app, &user.email, &user.password)
            .await
            .status(),
        401
    );

    // Nobody disables or demotes themselves.
    let res = app
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{}", admin.id),
            &admin_tokens.access,
            Some(json!({"disabled": true})),
        )
        .await;
    assert_envelope(res, 400, "BAD_REQUEST").await;
    let res = app
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{}", admin.id),
            &admin_tokens.access,
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_envelope(res, 400, "BAD_REQUEST").await;

    // Re-enabled: can log in again; a role change applies to existing tokens.
    let res = app
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{}", user.id),
            &admin_tokens.access,
            Some(json!({"disabled": false, "role": "viewer"})),
        )
        .await;
    assert_eq!(res.status(), 200);
    let tokens = app.login(&user).await;
    let res = app
        .post_as(
            "/api/v1/workspaces",
            &tokens.access,
            json!({"name": "viewer-cannot", "start": false}),
        )
        .await;
    assert_envelope(res, 403, "ACCESS_DENIED").await;
}

async fn changing_the_password_ends_the_other_sessions(backend: Backend) {
    let app = spawn_app(backend).await;
    let tenant = app.seed_tenant("acme").await;
    let user = app.seed_user(tenant, Role::Member, false).await;
    let here = app.login(&user).await;
    let elsewhere = app.login(&user).await;
    let change =
        |current: &str, new: &str| json!({"current_password": current, "new_password": new});

    let res = app
        .post_as(
            "/api/v1/users/me/password",
            &here.access,
            change("wrong", "a brand new passphrase"),
        )
        .await;
    assert_envelope(res, 403, "ACCESS_DENIED").await;
    let res = app
        .post_as(
            "/api/v1/users/me/password",
            &here.access,
            change(&user.password, "short"),
        )
        .await;
    assert_envelope(res, 400, "BAD_REQUEST").await;
    assert_eq!(
        me_status(&app, &elsewhere.access).await,
        200,
        "failed attempts change nothing"
    );

    let res = app
        .post_as(
            "/api/v1/users/me/password",
            &here.access,
            change(&user.password, "a brand new passphrase"),
        )
        .await;
    assert_eq!(res.status(), 204);
    assert_eq!(
        me_status(&app, &here.access).await,
        200,
        "the current session stays"
    );
    assert_eq!(
        me_status(&app, &elsewhere.access).await,
        401,
        "the others end"
    );
    assert_eq!(
        login_response(&app, &user.email, &user.password)
            .await
            .status(),
        401
    );
    assert_eq!(
        login_response(&app, &user.email, "a brand new passphrase")
            .await
            .status(),
        200
    );
}

async fn expired_sessions_are_swept_and_counted(backend: Backend) {
    let app = spawn_app(backend).await;
    let (tenant, _admin, admin_tokens) = app.tenant_with_admin("acme").await;
    let user = app.seed_user(tenant, Role::Member, false).await;
    let old = app.login(&user).await;
    assert_eq!(me_status(&app, &old.access).await, 200);
    coditect_hub::server::sweep_sessions_once(&app.state).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("auth_active_sessions 2"), "{metrics}");
    assert!(metrics.contains(r#"auth_logins_total{result="success"}"#));
    assert!(metrics.contains(r#"auth_token_validations_total{result="valid"}"#));

    // 25 hours later both sessions are idle-expired; the admin logs in afresh and the
    // sweep deletes the old ones.
    app.clock.advance(Duration::from_secs(25 * 3600));
    let admin_again = app.seed_user(tenant, Role::Admin, false).await;
    let fresh = app.login(&admin_again).await;
    coditect_hub::server::sweep_sessions_once(&app.state).await;
    assert_envelope(
        app.get_as(
            &format!("/api/v1/sessions/{}", old.session_id),
            &fresh.access,
        )
        .await,
        404,
        "NOT_FOUND",
    )
    .await;
    assert_eq!(me_status(&app, &admin_tokens.access).await, 401);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("auth_active_sessions 1"), "{metrics}");
}

async fn guessing_the_current_password_is_throttled_and_audited(backend: Backend) {
    let app = spawn_app_with(
        backend,
        |c| c.auth.login_max_failures = 2,
        axum::Router::new(),
    )
    .await;
    let (tenant, _admin, admin_tokens) = app.tenant_with_admin("acme").await;
    let user = app.seed_user(tenant, Role::Member, false).await;
    let tokens = app.login(&user).await;
    let guess = |current: &str| json!({"current_password": current, "new_password": "a brand new passphrase"});
    for _ in 0..2 {
        let res = app
            .post_as(
                "/api/v1/users/me/password",
                &tokens.access,
                guess("a wrong guess"),
            )
            .await;
        assert_envelope(res, 403, "ACCESS_DENIED").await;
    }
    let res = app
        .post_as(
            "/api/v1/users/me/password",
            &tokens.access,
            guess(&user.password),
        )
        .await;
    assert_envelope(res, 429, "RATE_LIMITED").await;
    let audit = app
        .get_json(
            "/api/v1/audit?action=user.password_change",
            &admin_tokens.access,
        )
        .await;
    let failures = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["result"] == "failure")
        .count();
    assert_eq!(failures, 2);
}

async fn concurrent_guesses_get_no_more_than_the_budget(backend: Backend) {
    let app = spawn_app_with(
        backend,
        |c| c.auth.login_max_failures = 3,
        axum::Router::new(),
    )
    .await;
    let tenant = app.seed_tenant("acme").await;
    let user = app.seed_user(tenant, Role::Member, false).await;
    let guesses: Vec<_> = (0..12)
        .map(|i| {
            let client = app.client.clone();
            let url = app.url("/api/v1/auth/login");
            let email = user.email.clone();
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&json!({"email": email, "password": format!("guess number {i}")}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for g in guesses {
        statuses.push(g.await.unwrap());
    }
    let tried = statuses.iter().filter(|s| **s == 401).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((tried, throttled), (3, 9), "{statuses:?}");
}

async fn a_session_can_be_opened_for_a_workspace(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_tenant, admin, admin_tokens) = app.tenant_with_admin("acme").await;
    let ws = json(
        app.post_as(
            "/api/v1/workspaces",
            &admin_tokens.access,
            json!({"name": "api", "start": false}),
        )
        .await,
    )
    .await;
    let login = |workspace: Value| {
        app.client
            .post(app.url("/api/v1/auth/login"))
            .json(&json!({"email": admin.email, "password": admin.password, "workspace_id": workspace}))
            .send()
    };
    let res = login(ws["id"].clone()).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = json(res).await;
    let path = format!("/api/v1/sessions/{}", body["session_id"].as_str().unwrap());
    let session = app.get_json(&path, &admin_tokens.access).await;
    assert_eq!(session["workspace_id"], ws["id"]);

    let res = login(json!(uuid::Uuid::now_v7())).await.unwrap();
    assert_envelope(res, 400, "BAD_REQUEST").await;
    // Far-off instants are refused before they reach a store that cannot hold them.
    let res = app
        .get_as(
            "/api/v1/audit?since=0001-01-01T00:00:00Z",
            &admin_tokens.access,
        )
        .await;
    assert_envelope(res, 400, "BAD_REQUEST").await;
}

async fn a_configured_signing_key_is_used_and_never_rotated(backend: Backend) {
    use aws_lc_rs::encoding::AsDer;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signing.pem");
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pem = pem::encode(&pem::Pem::new(
        "PRIVATE KEY",
        pair.as_der().unwrap().as_ref().to_vec(),
    ));
    std::fs::write(&file, pem).unwrap();
    let path = file.clone();
    let app = spawn_app_with(
        backend,
        move |c| c.auth.signing_key_file = Some(path),
        axum::Router::new(),
    )
    .await;
    let tenant = app.seed_tenant("acme").await;
    let user = app.seed_user(tenant, Role::Member, false).await;
    let tokens = app.login(&user).await;
    let kid = header_of(&tokens.access)["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let jwks = json(app.get("/.well-known/jwks.json").await).await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], kid.as_str());
    assert!(
        !app.data_dir.path().join("keys").exists(),
        "no generated keys beside a configured one"
    );
    let keys = &app.state.auth().keys;
    assert!(
        keys.rotate(app.state.gate().system().signing_keys())
            .await
            .is_err()
    );
    // Far in the future it is still the key in use (kept alive by each refresh).
    app.clock.advance(Duration::from_secs(400 * 86_400));
    keys.refresh(app.state.gate().system().signing_keys())
        .await
        .unwrap();
    let again = app.login(&user).await;
    assert_eq!(header_of(&again.access)["kid"], kid.as_str());
    assert_eq!(me_status(&app, &again.access).await, 200);
}
