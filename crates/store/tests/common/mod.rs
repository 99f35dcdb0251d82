//! Conformance checks every engine must pass, written once against the domain traits.

#![allow(dead_code)]

use coditect_proto::TenantId;
use coditect_store::{StoreError, Tenant, TenantStore};

pub async fn tenants_round_trip(store: &dyn TenantStore) {
    let acme = Tenant::new(format!("acme-{}", TenantId::new()));
    store.create_tenant(&acme).await.expect("create");
    let got = store
        .get_tenant(acme.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got, acme, "a tenant reads back exactly as written");
    assert_eq!(store.get_tenant(TenantId::new()).await.expect("get"), None);

    let same_name = Tenant {
        id: TenantId::new(),
        ..acme.clone()
    };
    assert!(matches!(
        store.create_tenant(&same_name).await,
        Err(StoreError::Conflict(_))
    ));
    let same_id = Tenant {
        name: format!("other-{}", TenantId::new()),
        ..acme.clone()
    };
    assert!(matches!(
        store.create_tenant(&same_id).await,
        Err(StoreError::Conflict(_))
    ));
}

pub async fn tenants_paginate_in_id_order(store: &dyn TenantStore) {
    let mut created = Vec::new();
    for i in 0..7 {
        let t = Tenant::new(format!("page-{i}-{}", TenantId::new()));
        store.create_tenant(&t).await.expect("create");
        created.push(t);
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_tenants(after, 3).await.expect("list");
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page);
    }
    let ids: Vec<_> = seen.iter().map(|t| t.id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "pages come in id order");
    for t in &created {
        assert!(seen.contains(t), "every tenant is listed once");
    }
    assert_eq!(ids.len(), {
        let mut d = ids.clone();
        d.dedup();
        d.len()
    });
}

use chrono::{Duration, Utc};
use coditect_proto::{
    AuditId, BuildId, Email, Role, SessionId, SessionStatus, UserId, WorkspaceId,
};
use coditect_store::{
    ApiKey, ApiKeyStore, AuditQuery, AuditRecord, AuditStore, Build, BuildStatus, Desired,
    Lifecycle, Observation, PublicKeyRecord, Quota, RefreshOutcome, Session, SessionStore,
    SigningKeyStore, StatePut, Status, User, UserStore, UserUpdate, Workspace, WorkspaceStore,
};

/// Every domain, as the conformance checks need them.
pub trait Engine:
    TenantStore
    + UserStore
    + SessionStore
    + ApiKeyStore
    + WorkspaceStore
    + AuditStore
    + SigningKeyStore
    + LogStore
{
}

impl<T> Engine for T where
    T: TenantStore
        + UserStore
        + SessionStore
        + ApiKeyStore
        + WorkspaceStore
        + AuditStore
        + SigningKeyStore
        + LogStore
{
}

pub async fn tenant(store: &dyn TenantStore) -> Tenant {
    let t = Tenant::new(format!("t-{}", TenantId::new()));
    store.create_tenant(&t).await.expect("tenant");
    t
}

pub fn user_in(tenant: &Tenant, role: Role) -> User {
    let now = coditect_store::now();
    User {
        tenant_id: tenant.id,
        id: UserId::new(),
        email: Email::parse(&format!("u{}@example.com", UserId::new())).unwrap(),
        password_hash: Some("$argon2id$fake".into()),
        role,
        platform_admin: false,
        disabled: false,
        created_at: now,
        updated_at: now,
    }
}

pub async fn users_conform(store: &dyn Engine) {
    let a = tenant(store).await;
    let b = tenant(store).await;
    let alice = user_in(&a, Role::Admin);
    store.create_user(&alice).await.unwrap();
    assert_eq!(
        store.get_user(a.id, alice.id).await.unwrap().as_ref(),
        Some(&alice)
    );
    assert_eq!(
        store.get_user(b.id, alice.id).await.unwrap(),
        None,
        "scoped by tenant"
    );
    assert_eq!(
        store
            .find_user_by_email(&alice.email)
            .await
            .unwrap()
            .as_ref(),
        Some(&alice)
    );

    let same_email_elsewhere = User {
        id: UserId::new(),
        tenant_id: b.id,
        ..alice.clone()
    };
    assert!(matches!(
        store.create_user(&same_email_elsewhere).await,
        Err(StoreError::Conflict(_))
    ));
    let no_tenant = user_in(&Tenant::new("ghost"), Role::Member);
    assert!(
        store.create_user(&no_tenant).await.is_err(),
        "users belong to a real tenant"
    );

    let mut ids = vec![alice.id];
    for _ in 0..4 {
        let u = user_in(&a, Role::Member);
        store.create_user(&u).await.unwrap();
        ids.push(u.id);
    }
    store.create_user(&user_in(&b, Role::Member)).await.unwrap();
    let first = store.list_users(a.id, None, 3).await.unwrap();
    let rest = store
        .list_users(a.id, first.last().map(|u| u.id), 10)
        .await
        .unwrap();
    let listed: Vec<UserId> = first.iter().chain(&rest).map(|u| u.id).collect();
    ids.sort();
    assert_eq!(listed, ids, "one tenant's users, in id order, across pages");

    let later = coditect_store::now() + Duration::seconds(5);
    let update = UserUpdate {
        role: Some(Role::Viewer),
        disabled: Some(true),
        password_hash: None,
    };
    let updated = store
        .update_user(a.id, alice.id, &update, later)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((updated.role, updated.disabled), (Role::Viewer, true));
    assert_eq!(
        updated.password_hash, alice.password_hash,
        "untouched fields stay"
    );
    assert_eq!(updated.updated_at, later);
    assert_eq!(
        store
            .update_user(b.id, alice.id, &update, later)
            .await
            .unwrap(),
        None
    );
    assert!(store.count_users().await.unwrap() >= 6);
}

fn session_of(user: &User, now: chrono::DateTime<Utc>) -> Session {
    Session {
        tenant_id: user.tenant_id,
        id: SessionId::new(),
        user_id: user.id,
        status: SessionStatus::Active,
        created_at: now,
        last_access_at: now,
        expires_at: now + Duration::days(30),
        ended_at: None,
        end_reason: None,
        ip: Some("127.0.0.1".into()),
        user_agent: Some("test".into()),
        workspace_id: Some(WorkspaceId::new()),
        login_method: "oidc".into(),
    }
}

/// External-login steps: kept until they expire, taken once, purged when expired.
pub async fn login_flows_conform(store: &dyn Engine) {
    let now = Utc::now();
    let key = uuid::Uuid::now_v7().as_bytes().to_vec();
    store
        .put_login_flow(&key, r#"{"step":1}"#, now + Duration::minutes(10))
        .await
        .unwrap();
    assert!(matches!(
        store
            .put_login_flow(&key, "{}", now + Duration::minutes(10))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.take_login_flow(&key, now).await.unwrap().as_deref(),
        Some(r#"{"step":1}"#)
    );
    assert_eq!(
        store.take_login_flow(&key, now).await.unwrap(),
        None,
        "once"
    );
    let old = uuid::Uuid::now_v7().as_bytes().to_vec();
    store
        .put_login_flow(&old, "{}", now + Duration::seconds(1))
        .await
        .unwrap();
    let later = now + Duration::seconds(2);
    assert_eq!(
        store.take_login_flow(&old, later).await.unwrap(),
        None,
        "expired"
    );
    store
        .purge_sessions(later, later - Duration::days(1), later - Duration::days(1))
        .await
        .unwrap();
    assert_eq!(
        store.take_login_flow(&old, now).await.unwrap(),
        None,
        "purged"
    );
}

pub async fn sessions_conform(store: &dyn Engine) {
    let t = tenant(store).await;
    let u = user_in(&t, Role::Member);
    store.create_user(&u).await.unwrap();
    let now = coditect_store::now();
    let idle = now - Duration::hours(24);

    let s = session_of(&u, now);
    store.create_session(&s, b"r1").await.unwrap();
    assert_eq!(
        store.get_session(t.id, s.id).await.unwrap().as_ref(),
        Some(&s)
    );
    assert_eq!(
        store.get_session(TenantId::new(), s.id).await.unwrap(),
        None
    );

    store
        .touch_session(t.id, s.id, now + Duration::minutes(5))
        .await
        .unwrap();
    store
        .touch_session(t.id, s.id, now + Duration::minutes(1))
        .await
        .unwrap();
    let touched = store.get_session(t.id, s.id).await.unwrap().unwrap();
    assert_eq!(
        touched.last_access_at,
        now + Duration::minutes(5),
        "never moves back"
    );

    // Rotation: the current token rotates once; presenting it again kills the session.
    let at = now + Duration::minutes(6);
    assert!(matches!(
        store.rotate_refresh(t.id, s.id, b"r1", b"r2", at, idle).await.unwrap(),
        RefreshOutcome::Rotated(ref x) if x.last_access_at == at
    ));
    assert_eq!(
        store
            .rotate_refresh(t.id, s.id, b"nope", b"r3", at, idle)
            .await
            .unwrap(),
        RefreshOutcome::Rejected
    );
    assert_eq!(
        store
            .rotate_refresh(TenantId::new(), s.id, b"r2", b"r3", at, idle)
            .await
            .unwrap(),
        RefreshOutcome::Rejected,
        "another tenant's session is not found"
    );
    match store
        .rotate_refresh(t.id, s.id, b"r1", b"r3", at, idle)
        .await
        .unwrap()
    {
        RefreshOutcome::Reused(ended) => {
            assert_eq!(ended.status, SessionStatus::Terminated);
            assert_eq!(ended.end_reason.as_deref(), Some("refresh_token_reused"));
        }
        other => panic!("reuse must terminate the session: {other:?}"),
    }
    assert_eq!(
        store
            .rotate_refresh(t.id, s.id, b"r2", b"r4", at, idle)
            .await
            .unwrap(),
        RefreshOutcome::Rejected,
        "a terminated session never rotates again"
    );

    // An idle session does not rotate.
    let sleepy = session_of(&u, now - Duration::hours(30));
    store.create_session(&sleepy, b"z1").await.unwrap();
    assert_eq!(
        store
            .rotate_refresh(t.id, sleepy.id, b"z1", b"z2", now, idle)
            .await
            .unwrap(),
        RefreshOutcome::Rejected
    );

    // Ending sessions.
    let s2 = session_of(&u, now);
    let s3 = session_of(&u, now);
    store.create_session(&s2, b"a").await.unwrap();
    store.create_session(&s3, b"b").await.unwrap();
    assert!(store.end_session(t.id, s2.id, "logout", now).await.unwrap());
    assert!(
        !store.end_session(t.id, s2.id, "logout", now).await.unwrap(),
        "once"
    );
    let s4 = session_of(&u, now);
    store.create_session(&s4, b"c").await.unwrap();
    assert_eq!(
        store
            .end_user_sessions(t.id, u.id, Some(s4.id), "password_changed", now)
            .await
            .unwrap(),
        2,
        "s3 and the idle (still active) one ended, s4 kept, s and s2 were already ended"
    );
    assert_eq!(
        store
            .get_session(t.id, s4.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        SessionStatus::Active
    );
    assert_eq!(
        store
            .get_session(t.id, s3.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        SessionStatus::Terminated
    );

    assert!(store.count_live_sessions(now, idle).await.unwrap() >= 1);
    // Recently ended sessions stay visible until the ended cutoff passes them.
    store
        .purge_sessions(now, idle, now - Duration::days(1))
        .await
        .unwrap();
    assert!(
        store.get_session(t.id, s2.id).await.unwrap().is_some(),
        "ended today: kept"
    );
    // Purge: ended long ago, idle or expired sessions go; s4 (live) stays.
    let purged = store
        .purge_sessions(now, idle, now + Duration::hours(1))
        .await
        .unwrap();
    assert!(purged >= 3, "{purged}");
    assert!(store.get_session(t.id, s.id).await.unwrap().is_none());
    assert!(store.get_session(t.id, s4.id).await.unwrap().is_some());

    // Spent refresh tokens are remembered for a week, then forgotten (unknown, not reuse).
    let long = session_of(&u, now);
    store.create_session(&long, b"l1").await.unwrap();
    let week = now + Duration::days(8);
    let rotate = |from: &'static [u8], to: &'static [u8], at| {
        store.rotate_refresh(t.id, long.id, from, to, at, now - Duration::hours(1))
    };
    assert!(matches!(
        rotate(b"l1", b"l2", now).await.unwrap(),
        RefreshOutcome::Rotated(_)
    ));
    assert!(matches!(
        rotate(b"l2", b"l3", week).await.unwrap(),
        RefreshOutcome::Rotated(_)
    ));
    assert_eq!(
        rotate(b"l1", b"l9", week).await.unwrap(),
        RefreshOutcome::Rejected,
        "forgotten"
    );
    assert!(
        matches!(
            rotate(b"l2", b"l9", week).await.unwrap(),
            RefreshOutcome::Reused(_)
        ),
        "remembered"
    );
}

pub async fn api_keys_conform(store: &dyn Engine) {
    let t = tenant(store).await;
    let owner = user_in(&t, Role::Service);
    let other = user_in(&t, Role::Member);
    store.create_user(&owner).await.unwrap();
    store.create_user(&other).await.unwrap();
    let now = coditect_store::now();
    let key = |owner: &User| ApiKey {
        tenant_id: t.id,
        id: coditect_proto::ApiKeyId::new(),
        owner_id: owner.id,
        name: "ci".into(),
        prefix: "cdk_abcd".into(),
        secret_hash: vec![7; 32],
        role: Role::Service,
        workspace_id: Some(WorkspaceId::new()),
        created_at: now,
        expires_at: Some(now + Duration::days(1)),
        last_used_at: None,
        revoked_at: None,
    };
    let k1 = key(&owner);
    let k2 = key(&other);
    store.create_api_key(&k1).await.unwrap();
    store.create_api_key(&k2).await.unwrap();
    assert_eq!(
        store.get_api_key(t.id, k1.id).await.unwrap().as_ref(),
        Some(&k1)
    );
    assert_eq!(
        store.get_api_key(TenantId::new(), k1.id).await.unwrap(),
        None
    );
    assert_eq!(
        store.list_api_keys(t.id, Some(owner.id)).await.unwrap(),
        vec![k1.clone()]
    );
    assert_eq!(
        store.list_api_keys(t.id, None).await.unwrap(),
        vec![k2.clone(), k1.clone()]
    );

    store
        .touch_api_key(t.id, k1.id, now + Duration::minutes(2))
        .await
        .unwrap();
    store
        .touch_api_key(t.id, k1.id, now + Duration::minutes(1))
        .await
        .unwrap();
    let used = store.get_api_key(t.id, k1.id).await.unwrap().unwrap();
    assert_eq!(used.last_used_at, Some(now + Duration::minutes(2)));

    assert!(store.revoke_api_key(t.id, k1.id, now).await.unwrap());
    assert!(!store.revoke_api_key(t.id, k1.id, now).await.unwrap());
    let revoked = store.get_api_key(t.id, k1.id).await.unwrap().unwrap();
    assert!(!revoked.is_usable(now));
    assert!(k2.is_usable(now) && !k2.is_usable(now + Duration::days(2)));
}

pub async fn workspaces_conform(store: &dyn Engine) {
    let a = tenant(store).await;
    let b = tenant(store).await;
    let ua = user_in(&a, Role::Member);
    let ua2 = user_in(&a, Role::Member);
    let ub = user_in(&b, Role::Member);
    for u in [&ua, &ua2, &ub] {
        store.create_user(u).await.unwrap();
    }
    let now = coditect_store::now();
    let ws =
        |t: &Tenant, owner: &User, name: &str| Workspace::new(t.id, name.into(), owner.id, now);
    let w1 = ws(&a, &ua, "api");
    store.create_workspace(&w1, None, None).await.unwrap();
    assert!(matches!(
        store
            .create_workspace(&ws(&a, &ua2, "api"), None, None)
            .await,
        Err(StoreError::Conflict(_))
    ));
    store
        .create_workspace(&ws(&b, &ub, "api"), None, None)
        .await
        .unwrap();
    let w2 = ws(&a, &ua2, "web");
    store.create_workspace(&w2, None, None).await.unwrap();

    assert_eq!(
        store.get_workspace(a.id, w1.id).await.unwrap().as_ref(),
        Some(&w1)
    );
    assert_eq!(store.get_workspace(b.id, w1.id).await.unwrap(), None);
    assert_eq!(
        store.list_workspaces(a.id, None, None, 10).await.unwrap(),
        vec![w1.clone(), w2.clone()]
    );
    assert_eq!(
        store
            .list_workspaces(a.id, Some(ua2.id), None, 10)
            .await
            .unwrap(),
        vec![w2.clone()]
    );
    assert_eq!(
        store
            .list_workspaces(a.id, None, Some(w1.id), 10)
            .await
            .unwrap(),
        vec![w2.clone()]
    );

    assert!(store.delete_workspace(a.id, w1.id, now).await.unwrap());
    assert!(!store.delete_workspace(a.id, w1.id, now).await.unwrap());
    assert!(
        !store.delete_workspace(b.id, w2.id, now).await.unwrap(),
        "other tenant"
    );
    assert_eq!(store.get_workspace(a.id, w1.id).await.unwrap(), None);
    store
        .create_workspace(&ws(&a, &ua, "api"), None, None)
        .await
        .expect("a deleted name is free again");
}

fn build(w: &Workspace, transition: &str, at: chrono::DateTime<Utc>) -> Build {
    Build {
        tenant_id: w.tenant_id,
        workspace_id: w.id,
        id: BuildId::new(),
        transition: transition.into(),
        initiator: "user:test".into(),
        reason: None,
        status: BuildStatus::Pending,
        error: None,
        generation: w.lifecycle.generation,
        created_at: at,
        finished_at: None,
    }
}

fn observation(
    status: Status,
    generation: u64,
    token: &str,
    at: chrono::DateTime<Utc>,
) -> Observation {
    Observation {
        status,
        reason: None,
        generation,
        instance_token: Some(token.into()),
        attempts: 0,
        next_attempt_at: None,
        reset_ready: false,
        at,
    }
}

/// Desired vs observed, builds, leases and the agent's reports.
pub async fn orchestration_conform(store: &dyn Engine) {
    let t = tenant(store).await;
    let owner = user_in(&t, Role::Member);
    store.create_user(&owner).await.unwrap();
    let now = coditect_store::now();
    let later = |s: i64| now + Duration::seconds(s);
    let w = Workspace::new(t.id, "orchestrated".into(), owner.id, now);
    store.create_workspace(&w, None, None).await.unwrap();
    let idle = Workspace::new(t.id, "idle".into(), owner.id, now);
    store.create_workspace(&idle, None, None).await.unwrap();
    assert_eq!(
        store.get_workspace(t.id, w.id).await.unwrap().unwrap(),
        w,
        "round trip"
    );
    assert!(
        store
            .lease_due("a", now, later(30), 10)
            .await
            .unwrap()
            .is_empty(),
        "stopped and meant to be: nothing to do"
    );

    // A request records the desire and its build; a second one supersedes the first.
    let start = build(&w, "start", now);
    let asked = store
        .request(t.id, w.id, Desired::Running, Some(&start), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(asked.lifecycle.desired, Desired::Running);
    assert!(asked.lifecycle.needs_work());
    let stop = build(&w, "stop", later(1));
    store
        .request(t.id, w.id, Desired::Stopped, Some(&stop), None)
        .await
        .unwrap();
    let again = build(&w, "start", later(2));
    store
        .request(t.id, w.id, Desired::Running, Some(&again), None)
        .await
        .unwrap();
    let builds = store.list_builds(t.id, w.id, None, 10).await.unwrap();
    let statuses: Vec<_> = builds
        .iter()
        .map(|b| (b.transition.as_str(), b.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("start", BuildStatus::Pending),
            ("stop", BuildStatus::Superseded),
            ("start", BuildStatus::Superseded)
        ]
    );
    assert_eq!(
        store
            .list_builds(t.id, w.id, Some(builds[1].id), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .request(
                t.id,
                WorkspaceId::new(),
                Desired::Running,
                Some(&again),
                None
            )
            .await
            .unwrap()
            .is_none()
    );

    // One holder at a time; an expired lease can be taken over.
    let (a, b) = tokio::join!(
        store.lease_due("a", now, later(30), 10),
        store.lease_due("b", now, later(30), 10)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.len() + b.len(),
        1,
        "exactly one replica got it: {a:?} {b:?}"
    );
    let (holder, other) = if a.is_empty() { ("b", "a") } else { ("a", "b") };
    // Only the holder rewrites the spec.
    assert!(
        !store
            .set_spec(t.id, w.id, other, r#"{"by":"other"}"#)
            .await
            .unwrap()
    );
    assert!(
        store
            .set_spec(t.id, w.id, holder, r#"{"cloned":true}"#)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_workspace(t.id, w.id).await.unwrap().unwrap().spec,
        r#"{"cloned":true}"#
    );
    assert!(
        store
            .lease(t.id, w.id, other, later(1), later(31))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .lease_due(holder, later(1), later(31), 10)
            .await
            .unwrap()
            .len()
            == 1,
        "renewable by its holder"
    );

    // Only the holder writes what it saw.
    let seen = observation(Status::Starting, 1, "tok-1", later(2));
    assert!(!store.observe(t.id, w.id, other, &seen).await.unwrap());
    assert!(store.observe(t.id, w.id, holder, &seen).await.unwrap());
    let starting = store
        .get_workspace(t.id, w.id)
        .await
        .unwrap()
        .unwrap()
        .lifecycle;
    assert_eq!(
        (starting.status, starting.generation),
        (Status::Starting, 1)
    );
    assert_eq!(starting.instance_token.as_deref(), Some("tok-1"));
    store
        .finish_build(t.id, w.id, again.id, BuildStatus::Succeeded, None, later(3))
        .await
        .unwrap();
    store
        .finish_build(
            t.id,
            w.id,
            again.id,
            BuildStatus::Failed,
            Some("late"),
            later(4),
        )
        .await
        .unwrap();
    let done = &store.list_builds(t.id, w.id, None, 1).await.unwrap()[0];
    assert_eq!(
        (done.status, done.error.as_deref()),
        (BuildStatus::Succeeded, None),
        "closed once"
    );
    store.release(t.id, w.id, holder).await.unwrap();
    assert!(
        store
            .lease(t.id, w.id, other, later(3), later(33))
            .await
            .unwrap()
            .is_some()
    );
    store.release(t.id, w.id, other).await.unwrap();

    // Back-off: not due before its next attempt.
    let mut waiting = observation(Status::Starting, 1, "tok-1", later(3));
    waiting.next_attempt_at = Some(later(60));
    store
        .lease(t.id, w.id, "a", later(3), later(4))
        .await
        .unwrap()
        .unwrap();
    assert!(store.observe(t.id, w.id, "a", &waiting).await.unwrap());
    store.release(t.id, w.id, "a").await.unwrap();
    assert!(
        store
            .lease_due("a", later(5), later(35), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // The agent of the current launch: ready makes it due at once; an old token is ignored.
    assert!(
        !store
            .agent_report(t.id, w.id, "tok-0", true, None, later(6))
            .await
            .unwrap()
    );
    assert!(
        store
            .agent_report(t.id, w.id, "tok-1", true, Some(later(5)), later(6))
            .await
            .unwrap()
    );
    assert!(
        store
            .agent_report(t.id, w.id, "tok-1", false, Some(later(4)), later(7))
            .await
            .unwrap()
    );
    let reported = store
        .get_workspace(t.id, w.id)
        .await
        .unwrap()
        .unwrap()
        .lifecycle;
    assert_eq!(reported.ready_at, Some(later(6)), "the first ready counts");
    assert_eq!(reported.seen_at, Some(later(7)));
    assert_eq!(
        reported.activity_at,
        Some(later(5)),
        "activity never goes back"
    );
    let due = store.lease_due("a", later(8), later(38), 10).await.unwrap();
    assert_eq!(due.iter().map(|d| d.id).collect::<Vec<_>>(), [w.id]);
    let mut relaunch = observation(Status::Starting, 2, "tok-2", later(8));
    relaunch.reset_ready = true;
    assert!(store.observe(t.id, w.id, "a", &relaunch).await.unwrap());
    let relaunched = store
        .get_workspace(t.id, w.id)
        .await
        .unwrap()
        .unwrap()
        .lifecycle;
    assert_eq!((relaunched.ready_at, relaunched.generation), (None, 2));
    assert!(
        store
            .observe(
                t.id,
                w.id,
                "a",
                &observation(Status::Running, 2, "tok-2", later(9))
            )
            .await
            .unwrap()
    );
    store.release(t.id, w.id, "a").await.unwrap();
    assert!(
        store
            .lease_due("a", later(10), later(40), 10)
            .await
            .unwrap()
            .is_empty(),
        "running as desired"
    );
    assert_eq!(
        store
            .get_workspace(t.id, idle.id)
            .await
            .unwrap()
            .unwrap()
            .lifecycle,
        Lifecycle::default()
    );

    // Running workspaces of every tenant, paged by (tenant, id).
    let running = store
        .list_in_status(Status::Running, None, 10)
        .await
        .unwrap();
    assert!(running.iter().any(|r| r.id == w.id));
    assert!(!running.iter().any(|r| r.id == idle.id));
    let last = running.last().map(|r| (r.tenant_id, r.id));
    assert!(
        store
            .list_in_status(Status::Running, last, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A build of the orchestrator's own leaves what is desired alone.
    let recover = build(&w, "recover", later(11));
    store.add_build(&recover).await.unwrap();
    let newest = &store.list_builds(t.id, w.id, None, 1).await.unwrap()[0];
    assert_eq!(
        (newest.id, newest.status),
        (recover.id, BuildStatus::Pending)
    );
    assert_eq!(
        store
            .get_workspace(t.id, w.id)
            .await
            .unwrap()
            .unwrap()
            .lifecycle
            .desired,
        Desired::Running
    );

    // The browser state: versioned, compare-and-set.
    assert_eq!(store.get_state(t.id, w.id).await.unwrap(), Some((0, None)));
    assert_eq!(
        store
            .put_state(t.id, w.id, Some(0), r#"{"tabs":1}"#)
            .await
            .unwrap(),
        StatePut::Stored(1)
    );
    assert_eq!(
        store
            .put_state(t.id, w.id, Some(0), r#"{"tabs":2}"#)
            .await
            .unwrap(),
        StatePut::Stale(1),
        "a second browser that read version 0 cannot overwrite version 1"
    );
    assert_eq!(
        store
            .put_state(t.id, w.id, None, r#"{"tabs":3}"#)
            .await
            .unwrap(),
        StatePut::Stored(2)
    );
    assert_eq!(
        store.get_state(t.id, w.id).await.unwrap(),
        Some((2, Some(r#"{"tabs":3}"#.into())))
    );
    assert_eq!(
        store
            .put_state(t.id, WorkspaceId::new(), None, "{}")
            .await
            .unwrap(),
        StatePut::Missing
    );

    // A delete is final: no later wish brings the workspace back.
    let del = build(&idle, "delete", later(12));
    store
        .request(t.id, idle.id, Desired::Deleted, Some(&del), None)
        .await
        .unwrap()
        .unwrap();
    let revive = build(&idle, "start", later(13));
    assert!(
        store
            .request(t.id, idle.id, Desired::Running, Some(&revive), None)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .request(
                t.id,
                idle.id,
                Desired::Deleted,
                Some(&build(&idle, "delete", later(14))),
                None
            )
            .await
            .unwrap()
            .is_some()
    );
}

/// Quotas are checked and written in one step, so concurrent creates cannot overshoot.
pub async fn quota_conform(store: &dyn Engine) {
    let t = tenant(store).await;
    let owner = user_in(&t, Role::Member);
    store.create_user(&owner).await.unwrap();
    let now = coditect_store::now();
    let quota = Quota {
        workspaces: 3,
        cpu_millis: 3000,
        memory_mb: 0,
    };
    let sized = |name: &str, cpu: u32, running: bool| {
        let mut w = Workspace::new(t.id, name.into(), owner.id, now);
        w.cpu_millis = cpu;
        if running {
            w.lifecycle.desired = Desired::Running;
        }
        w
    };
    let a = sized("a", 2000, true);
    store
        .create_workspace(&a, Some(&build(&a, "start", now)), Some(&quota))
        .await
        .unwrap();
    let too_big = sized("b", 2000, true);
    assert!(matches!(
        store.create_workspace(&too_big, None, Some(&quota)).await,
        Err(StoreError::QuotaExceeded(_))
    ));
    let b = sized("b", 2000, false);
    store
        .create_workspace(&b, None, Some(&quota))
        .await
        .unwrap();
    assert!(
        matches!(
            store
                .request(
                    t.id,
                    b.id,
                    Desired::Running,
                    Some(&build(&b, "start", now)),
                    Some(&quota)
                )
                .await,
            Err(StoreError::QuotaExceeded(_))
        ),
        "starting it would need 4000 of 3000 CPU"
    );
    assert_eq!(
        store
            .get_workspace(t.id, b.id)
            .await
            .unwrap()
            .unwrap()
            .lifecycle
            .desired,
        Desired::Stopped,
        "a refusal writes nothing"
    );
    // Re-asking for what already counts is not double-counted.
    store
        .request(
            t.id,
            a.id,
            Desired::Running,
            Some(&build(&a, "restart", now)),
            Some(&quota),
        )
        .await
        .unwrap()
        .unwrap();
    store
        .request(
            t.id,
            a.id,
            Desired::Stopped,
            Some(&build(&a, "stop", now)),
            Some(&quota),
        )
        .await
        .unwrap()
        .unwrap();
    store
        .request(
            t.id,
            b.id,
            Desired::Running,
            Some(&build(&b, "start", now)),
            Some(&quota),
        )
        .await
        .unwrap()
        .unwrap();

    // Racing creates: exactly the room left (one workspace) is taken.
    let racers: Vec<Workspace> = (0..4).map(|i| sized(&format!("r{i}"), 0, false)).collect();
    let results = futures_util::future::join_all(
        racers
            .iter()
            .map(|w| store.create_workspace(w, None, Some(&quota))),
    )
    .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(StoreError::QuotaExceeded(_))))
    );
}

/// The warm pool: only ready pooled instances of the template are claimed, each once.
pub async fn claim_conform(store: &dyn Engine) {
    let t = tenant(store).await;
    let pool_owner = user_in(&t, Role::Service);
    store.create_user(&pool_owner).await.unwrap();
    let now = coditect_store::now();
    let template = coditect_proto::TemplateId::new();
    for (i, ready) in [true, true, false].into_iter().enumerate() {
        let mut w = Workspace::new(t.id, format!("pool-{i}"), pool_owner.id, now);
        w.template_id = Some(template);
        w.pooled = true;
        w.lifecycle.desired = Desired::Running;
        w.lifecycle.status = if ready {
            Status::Running
        } else {
            Status::Starting
        };
        w.lifecycle.ready_at = ready.then_some(now);
        store.create_workspace(&w, None, None).await.unwrap();
    }
    assert_eq!(store.pool_counts(t.id, template).await.unwrap(), (3, 2));
    let mut claimed = Vec::new();
    for i in 0..3 {
        let user = user_in(&t, Role::Member);
        store.create_user(&user).await.unwrap();
        let probe = Workspace::new(t.id, format!("mine-{i}"), user.id, now);
        let got = store
            .claim(
                t.id,
                template,
                user.id,
                &format!("mine-{i}"),
                &build(&probe, "claim", now),
                None,
            )
            .await
            .unwrap();
        if let Some(w) = &got {
            assert_eq!(
                (w.owner_id, w.pooled, w.name.as_str()),
                (user.id, false, format!("mine-{i}").as_str())
            );
        }
        claimed.push(got.map(|w| w.id));
    }
    assert!(claimed[0].is_some() && claimed[1].is_some() && claimed[0] != claimed[1]);
    assert_eq!(
        claimed[2], None,
        "the starting one is not claimable: a miss"
    );
    assert_eq!(store.pool_counts(t.id, template).await.unwrap(), (1, 0));
}

pub fn audit_record(tenant: TenantId, action: &str, actor: &str) -> AuditRecord {
    AuditRecord {
        tenant_id: tenant,
        id: AuditId::new(),
        at: coditect_store::now(),
        actor_type: "user".into(),
        actor_id: Some(actor.into()),
        action: action.into(),
        resource_type: "session".into(),
        resource_id: None,
        result: "success".into(),
        ip: Some("10.0.0.1".into()),
        user_agent: None,
        request_id: Some("req-1".into()),
        detail: None,
    }
}

pub async fn audit_conform(store: &dyn Engine) {
    let t = TenantId::new();
    let records: Vec<AuditRecord> = (0..6)
        .map(|i| {
            audit_record(
                t,
                if i % 2 == 0 {
                    "auth.login"
                } else {
                    "auth.logout"
                },
                if i < 3 { "alice" } else { "bob" },
            )
        })
        .collect();
    store.append_audit(&records).await.unwrap();
    store
        .append_audit(&[audit_record(TenantId::new(), "auth.login", "alice")])
        .await
        .unwrap();

    let query = |before, limit| AuditQuery {
        tenant_id: t,
        actor_id: None,
        action: None,
        since: None,
        until: None,
        before,
        limit,
    };
    let page1 = store.list_audit(&query(None, 4)).await.unwrap();
    let page2 = store
        .list_audit(&query(page1.last().map(|r| r.id), 4))
        .await
        .unwrap();
    let all: Vec<AuditRecord> = page1.into_iter().chain(page2).collect();
    let mut expected = records.clone();
    expected.reverse();
    assert_eq!(all, expected, "newest first, one tenant, across pages");

    let logins = store
        .list_audit(&AuditQuery {
            action: Some("auth.login".into()),
            actor_id: Some("alice".into()),
            ..query(None, 10)
        })
        .await
        .unwrap();
    assert_eq!(logins.len(), 2);
    let window = store
        .list_audit(&AuditQuery {
            since: Some(records[2].at),
            until: Some(records[4].at),
            ..query(None, 10)
        })
        .await
        .unwrap();
    assert!(
        window
            .iter()
            .all(|r| r.at >= records[2].at && r.at < records[4].at)
    );
}

pub async fn signing_keys_conform(store: &dyn Engine) {
    let now = coditect_store::now();
    let key = |kid: &str, expires| PublicKeyRecord {
        kid: kid.into(),
        alg: "RS256".into(),
        n: vec![1, 2, 3],
        e: vec![1, 0, 1],
        created_at: now,
        expires_at: expires,
    };
    let live = key(&format!("live-{}", UserId::new()), now + Duration::hours(1));
    let dead = key(
        &format!("dead-{}", UserId::new()),
        now - Duration::seconds(1),
    );
    store.publish_key(&live).await.unwrap();
    store
        .publish_key(&live)
        .await
        .expect("publishing twice is fine");
    store.publish_key(&dead).await.unwrap();
    let keys = store.list_keys(now).await.unwrap();
    assert!(keys.contains(&live));
    assert!(!keys.iter().any(|k| k.kid == dead.kid));
}

use coditect_proto::{Level, SessionId as Sid, WorkspaceId as Wid};
use coditect_store::LogStore;
use coditect_store::logs::search::{Cursor, LevelFilter, LogQuery, search};
use coditect_store::logs::{
    BatchReceipt, ChunkScan, EncodedChunk, LogRecord, Order, StoredReceipt,
};

/// A deterministic pseudo-random sequence (no dependency, reproducible failures).
pub struct Lcg(u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn record(
    ts: i64,
    level: Level,
    component: &str,
    message: &str,
    session: Option<Sid>,
) -> LogRecord {
    LogRecord {
        id: uuid::Uuid::now_v7(),
        ts,
        level,
        component: component.into(),
        message: message.into(),
        metadata: Some(r#"{"k":1}"#.into()),
        session_id: session,
        trace_id: None,
        span_id: None,
    }
}

pub fn chunk(tenant: TenantId, ws: Wid, records: &[LogRecord]) -> EncodedChunk {
    EncodedChunk::encode(tenant, ws, coditect_store::now(), records, None).unwrap()
}

const WORDS: [&str; 8] = [
    "alpha", "bravo", "charlie", "Delta", "echo", "foxtrot", "golf", "hôtel",
];

/// Search results match a brute-force evaluation over every stored entry, for many random
/// queries over chunks whose time ranges overlap.
pub async fn logs_search_matches_brute_force(store: &dyn Engine) {
    let tenant = TenantId::new();
    let other = TenantId::new();
    let workspaces = [Wid::new(), Wid::new()];
    let sessions = [Sid::new(), Sid::new(), Sid::new()];
    let mut rng = Lcg(42);
    let mut all: Vec<(Wid, LogRecord)> = Vec::new();
    for c in 0..24 {
        let ws = workspaces[c % 2];
        let base = 1_000_000 * (c as i64 % 6); // overlapping windows
        let records: Vec<LogRecord> = (0..(20 + rng.below(120)))
            .map(|_| {
                let level = Level::ALL[rng.below(6) as usize];
                let component = ["api", "db", "auth"][rng.below(3) as usize];
                let msg = format!(
                    "{} {} request {}",
                    WORDS[rng.below(8) as usize],
                    WORDS[rng.below(8) as usize],
                    rng.below(1000)
                );
                let session = (rng.below(2) == 0).then(|| sessions[rng.below(3) as usize]);
                record(
                    base + rng.below(3_000_000) as i64,
                    level,
                    component,
                    &msg,
                    session,
                )
            })
            .collect();
        store
            .append_chunk(&chunk(tenant, ws, &records))
            .await
            .unwrap();
        all.extend(records.into_iter().map(|r| (ws, r)));
    }
    // Another tenant's entries must never show up.
    let noise = vec![record(1_500_000, Level::Error, "api", "alpha alpha", None)];
    store
        .append_chunk(&chunk(other, workspaces[0], &noise))
        .await
        .unwrap();

    for round in 0..40 {
        let mut q = LogQuery {
            tenant_id: tenant,
            limit: [5, 23, 100, 400][round % 4],
            order: if round % 3 == 0 {
                Order::Asc
            } else {
                Order::Desc
            },
            ..LogQuery::default()
        };
        if rng.below(2) == 0 {
            q.workspace_id = Some(workspaces[rng.below(2) as usize]);
        }
        q.level = match rng.below(3) {
            0 => LevelFilter::Any,
            1 => LevelFilter::Exact(Level::ALL[rng.below(6) as usize]),
            _ => LevelFilter::AtLeast(Level::ALL[rng.below(6) as usize]),
        };
        if rng.below(3) == 0 {
            q.component = Some(["api", "db", "auth"][rng.below(3) as usize].into());
        }
        if rng.below(4) == 0 {
            q.session_id = Some(sessions[rng.below(3) as usize]);
        }
        if rng.below(2) == 0 {
            q.since = Some(rng.below(4_000_000) as i64);
            q.until = Some(q.since.unwrap() + rng.below(4_000_000) as i64);
        }
        if rng.below(3) == 0 {
            q.terms = vec![WORDS[rng.below(8) as usize].to_uppercase()];
        }
        let expected = brute(&all, &q);
        // Page through with cursors: the concatenation is exactly the expected list.
        let mut got = Vec::new();
        let mut cursor: Option<Cursor> = None;
        for _ in 0..10_000 {
            let (page, next) = search(
                store,
                &LogQuery {
                    cursor,
                    ..q.clone()
                },
            )
            .await
            .unwrap();
            assert!(page.len() <= q.limit as usize);
            got.extend(page.into_iter().map(|f| f.record.id));
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(got, expected, "round {round}: {q:?}");
    }
}

fn brute(all: &[(Wid, LogRecord)], q: &LogQuery) -> Vec<uuid::Uuid> {
    let mut hits: Vec<&LogRecord> = all
        .iter()
        .filter(|(ws, r)| {
            q.workspace_id.is_none_or(|w| w == *ws)
                && match q.level {
                    LevelFilter::Any => true,
                    LevelFilter::Exact(l) => r.level == l,
                    LevelFilter::AtLeast(l) => r.level >= l,
                }
                && q.component.as_deref().is_none_or(|c| c == r.component)
                && q.session_id.is_none_or(|s| Some(s) == r.session_id)
                && q.since.is_none_or(|s| r.ts >= s)
                && q.until.is_none_or(|u| r.ts < u)
                && q.terms
                    .iter()
                    .all(|t| r.message.to_lowercase().contains(&t.to_lowercase()))
        })
        .map(|(_, r)| r)
        .collect();
    hits.sort_by_key(|r| (r.ts, r.id));
    if q.order == Order::Desc {
        hits.reverse();
    }
    hits.into_iter().map(|r| r.id).collect()
}

pub async fn logs_are_idempotent_locatable_and_expire(store: &dyn Engine) {
    let tenant = TenantId::new();
    let ws = Wid::new();
    let first = vec![
        record(10, Level::Info, "api", "one", None),
        record(20, Level::Info, "api", "two", None),
    ];
    let mut c1 = chunk(tenant, ws, &first);
    c1.batch = Some(BatchReceipt {
        batch_id: "b-1".into(),
        response: r#"{"processed":2}"#.into(),
        actor: Some("api_key:k1".into()),
        fingerprint: Some("f1".into()),
    });
    let a1 = store.append_chunk(&c1).await.unwrap();
    assert!(!a1.replayed && a1.duplicates == 0);
    // The same chunk again (an outbox replay) changes nothing.
    let again = store.append_chunk(&c1).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.seq, a1.seq);
    // A new chunk repeating one id: stored once.
    let repeat = vec![
        first[1].clone(),
        record(30, Level::Warn, "api", "three", None),
    ];
    let a2 = store
        .append_chunk(&chunk(tenant, ws, &repeat))
        .await
        .unwrap();
    assert_eq!(a2.duplicates, 1);
    assert!(a2.seq > a1.seq);
    let q = LogQuery {
        tenant_id: tenant,
        limit: 100,
        ..LogQuery::default()
    };
    let (found, _) = search(store, &q).await.unwrap();
    let ids: Vec<_> = found.iter().map(|f| f.record.id).collect();
    assert_eq!(
        ids,
        vec![repeat[1].id, first[1].id, first[0].id],
        "two stored once"
    );

    // Receipts: one per (workspace, batch id), with who stored it and a digest of what.
    let since = coditect_store::now() - Duration::hours(24);
    let receipt = StoredReceipt {
        workspace_id: ws,
        actor: Some("api_key:k1".into()),
        fingerprint: Some("f1".into()),
        response: r#"{"processed":2}"#.into(),
    };
    assert_eq!(
        store.find_batch(tenant, "b-1", since).await.unwrap(),
        vec![receipt.clone()]
    );
    // The same key in two workspaces: two receipts, neither replaying the other.
    let t2 = TenantId::new();
    let (ws_a, ws_b) = (Wid::new(), Wid::new());
    for (ws, fingerprint) in [(ws_a, "fa"), (ws_b, "fb")] {
        let mut c = chunk(t2, ws, &[record(40, Level::Info, "api", "four", None)]);
        c.batch = Some(BatchReceipt {
            batch_id: "b-1".into(),
            response: r#"{"processed":1}"#.into(),
            actor: Some("user:u1".into()),
            fingerprint: Some(fingerprint.into()),
        });
        store.append_chunk(&c).await.unwrap();
    }
    let mut both = store.find_batch(t2, "b-1", since).await.unwrap();
    both.sort_by_key(|r| r.workspace_id != ws_a);
    assert_eq!(
        both.iter()
            .map(|r| (r.workspace_id, r.fingerprint.as_deref()))
            .collect::<Vec<_>>(),
        vec![(ws_a, Some("fa")), (ws_b, Some("fb"))]
    );
    assert_eq!(
        store.find_batch(tenant, "b-2", since).await.unwrap(),
        vec![]
    );
    assert_eq!(
        store
            .find_batch(TenantId::new(), "b-1", since)
            .await
            .unwrap(),
        vec![]
    );
    let later = coditect_store::now() + Duration::hours(1);
    assert_eq!(
        store.find_batch(tenant, "b-1", later).await.unwrap(),
        vec![],
        "too old"
    );
    assert!(store.forget_batches(later).await.unwrap() >= 3);
    assert_eq!(
        store.find_batch(tenant, "b-1", since).await.unwrap(),
        vec![]
    );

    // Locating by id, per tenant.
    assert_eq!(
        store.locate_entry(tenant, first[1].id).await.unwrap(),
        Some((a1.seq, 1))
    );
    assert_eq!(
        store
            .locate_entry(TenantId::new(), first[1].id)
            .await
            .unwrap(),
        None
    );

    // Tail order.
    assert_eq!(store.last_seq(tenant).await.unwrap(), a2.seq);
    let after = store.chunks_after(tenant, a1.seq, 10).await.unwrap();
    assert_eq!(
        after.iter().map(|c| c.seq).collect::<Vec<_>>(),
        vec![a2.seq]
    );
    assert_eq!(after[0].skip, vec![0]);
    assert_eq!(store.last_seq(TenantId::new()).await.unwrap(), 0);
    assert!(store.log_tenants().await.unwrap().contains(&tenant));

    // Retention: chunks whose newest entry is older than the cutoff go, with their ids.
    assert_eq!(store.delete_before(tenant, 25, 10).await.unwrap(), 1);
    assert_eq!(store.locate_entry(tenant, first[0].id).await.unwrap(), None);
    assert_eq!(
        store.locate_entry(tenant, first[1].id).await.unwrap(),
        None,
        "its id went with the chunk that stored it"
    );
    let (left, _) = search(store, &q).await.unwrap();
    assert_eq!(
        left.iter().map(|f| f.record.id).collect::<Vec<_>>(),
        vec![repeat[1].id]
    );
    let scan = ChunkScan {
        tenant_id: tenant,
        workspace_id: None,
        since: None,
        until: None,
        order: Order::Desc,
        after: None,
        limit: 10,
    };
    assert_eq!(store.scan_chunks(&scan).await.unwrap().len(), 1);
}

/// Appends racing each other: two chunks holding the same ids (in opposite orders) and a
/// replay of one of them, all at once. Nothing fails or deadlocks, every id is stored once,
/// a replay is recognised, and the tenant's seqs stay gap-free.
pub async fn logs_racing_appends_store_each_id_once(store: &dyn Engine) {
    let tenant = TenantId::new();
    let ws = Wid::new();
    let rounds = 4;
    let mut stored = 0;
    for round in 0..rounds {
        let forward: Vec<LogRecord> = (0..200)
            .map(|i| record(round * 1000 + i, Level::Info, "api", "shared", None))
            .collect();
        let mut backward = forward.clone();
        backward.reverse();
        let (a, b) = (chunk(tenant, ws, &forward), chunk(tenant, ws, &backward));
        let (a1, b1, a2) = tokio::join!(
            store.append_chunk(&a),
            store.append_chunk(&b),
            store.append_chunk(&a)
        );
        let (a1, b1, a2) = (a1.unwrap(), b1.unwrap(), a2.unwrap());
        assert_eq!(
            u8::from(a1.replayed) + u8::from(a2.replayed),
            1,
            "round {round}: one of the two copies of a chunk is a replay"
        );
        assert!(!b1.replayed);
        let a_new = if a1.replayed { a2 } else { a1 };
        assert_eq!(
            a_new.duplicates + b1.duplicates,
            200,
            "round {round}: each shared id is stored by exactly one chunk"
        );
        stored += 2;
    }
    assert_eq!(store.last_seq(tenant).await.unwrap(), stored, "no seq gaps");
    let q = LogQuery {
        tenant_id: tenant,
        limit: 1000,
        ..LogQuery::default()
    };
    let (found, next) = search(store, &q).await.unwrap();
    assert!(next.is_none(), "one page holds them all");
    let ids: std::collections::HashSet<_> = found.iter().map(|f| f.record.id).collect();
    assert_eq!(found.len(), 200 * rounds as usize);
    assert_eq!(ids.len(), found.len(), "no id twice");
}

/// After migration 0005: the receipt `old-placed` (committed with a chunk of `ws` received
/// at `at`) is found in `ws`; `old-twin` (two workspaces' chunks at that instant) and
/// `old-gone` (no chunk) were not carried over.
pub async fn old_receipts_were_carried_over(
    store: &dyn Engine,
    tenant: TenantId,
    ws: Wid,
    at: chrono::DateTime<chrono::Utc>,
) {
    let since = at - Duration::hours(1);
    assert_eq!(
        store.find_batch(tenant, "old-placed", since).await.unwrap(),
        vec![StoredReceipt {
            workspace_id: ws,
            actor: None,
            fingerprint: None,
            response: r#"{"processed":1}"#.into(),
        }]
    );
    for unplaceable in ["old-twin", "old-gone"] {
        assert_eq!(
            store.find_batch(tenant, unplaceable, since).await.unwrap(),
            vec![],
            "{unplaceable}"
        );
    }
}
