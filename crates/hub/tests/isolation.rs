//! Authorization on both storage engines: tenant isolation over every endpoint, the role
//! matrix, platform operations, and the audit trail of denials.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_proto::Role;
use common::{Backend, TestApp, TestUser, assert_envelope, json, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

both_backends!(
    no_principal_of_one_tenant_sees_or_changes_another,
    the_role_matrix_holds,
    platform_admins_act_across_tenants_and_nobody_else_does,
    administration_works_and_is_audited,
    escalations_are_refused,
);

/// One tenant with users of every role, a workspace, an API key and a live session.
struct World {
    tenant: coditect_proto::TenantId,
    admin: TestUser,
    member: TestUser,
    viewer: TestUser,
    admin_token: String,
    member_token: String,
    viewer_token: String,
    member_key: String,
    member_key_id: String,
    admin_key: String,
    service_key: String,
    workspace_id: String,
    member_session: String,
}

async fn world(app: &TestApp, name: &str) -> World {
    let (tenant, admin, admin_tokens) = app.tenant_with_admin(name).await;
    let member = app.seed_user(tenant, Role::Member, false).await;
    let viewer = app.seed_user(tenant, Role::Viewer, false).await;
    let member_tokens = app.login(&member).await;
    let viewer_tokens = app.login(&viewer).await;
    let ws = json(
        app.post_as(
            "/api/v1/workspaces",
            &member_tokens.access,
            json!({"name": format!("{name}-ws")}),
        )
        .await,
    )
    .await;
    let key = json(
        app.post_as(
            "/api/v1/api-keys",
            &member_tokens.access,
            json!({"name": "m"}),
        )
        .await,
    )
    .await;
    let admin_key = json(
        app.post_as(
            "/api/v1/api-keys",
            &admin_tokens.access,
            json!({"name": "a", "role": "admin"}),
        )
        .await,
    )
    .await;
    let svc = json(
        app.post_as(
            "/api/v1/users",
            &admin_tokens.access,
            json!({"email": format!("bot-{}@example.com", uuid::Uuid::now_v7()), "role": "service"}),
        )
        .await,
    )
    .await;
    let service_key = json(
        app.post_as(
            "/api/v1/api-keys",
            &admin_tokens.access,
            json!({"name": "svc", "owner_id": svc["id"]}),
        )
        .await,
    )
    .await;
    World {
        tenant,
        admin,
        member,
        viewer,
        admin_token: admin_tokens.access,
        member_token: member_tokens.access,
        viewer_token: viewer_tokens.access,
        member_key: key["key"].as_str().unwrap().into(),
        member_key_id: key["id"].as_str().unwrap().into(),
        admin_key: admin_key["key"].as_str().unwrap().into(),
        service_key: service_key["key"].as_str().unwrap().into(),
        workspace_id: ws["id"].as_str().unwrap().into(),
        member_session: member_tokens.session_id,
    }
}

impl World {
    fn principals(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("admin", &self.admin_token),
            ("member", &self.member_token),
            ("viewer", &self.viewer_token),
            ("member key", &self.member_key),
            ("admin key", &self.admin_key),
            ("service key", &self.service_key),
        ]
    }

    /// Every endpoint that names an object, aimed at this world's objects (or, with
    /// `random`, at ids that exist nowhere).
    fn targets(&self, random: bool) -> Vec<(Method, String, Option<Value>)> {
        let id = |real: &str| {
            if random {
                uuid::Uuid::now_v7().to_string()
            } else {
                real.to_string()
            }
        };
        let user = id(&self.member.id.to_string());
        let session = id(&self.member_session);
        let key = id(&self.member_key_id);
        let ws = id(&self.workspace_id);
        let tenant = id(&self.tenant.to_string());
        vec![
            (Method::GET, format!("/api/v1/users/{user}"), None),
            (
                Method::PATCH,
                format!("/api/v1/users/{user}"),
                Some(json!({"disabled": true})),
            ),
            (
                Method::DELETE,
                format!("/api/v1/users/{user}/login-throttle"),
                None,
            ),
            (Method::GET, format!("/api/v1/sessions/{session}"), None),
            (Method::DELETE, format!("/api/v1/sessions/{session}"), None),
            (Method::DELETE, format!("/api/v1/api-keys/{key}"), None),
            (Method::GET, format!("/api/v1/workspaces/{ws}"), None),
            (Method::DELETE, format!("/api/v1/workspaces/{ws}"), None),
            (Method::GET, format!("/api/v1/tenants/{tenant}"), None),
            (
                Method::GET,
                format!("/api/v1/audit?tenant_id={tenant}"),
                None,
            ),
            (
                Method::POST,
                "/api/v1/users".into(),
                Some(
                    json!({"email": format!("x-{}@example.com", uuid::Uuid::now_v7()), "password": "long enough password", "role": "member", "tenant_id": tenant}),
                ),
            ),
            (
                Method::POST,
                "/api/v1/api-keys".into(),
                Some(json!({"name": "x", "owner_id": user})),
            ),
            (
                Method::POST,
                "/api/v1/api-keys".into(),
                Some(json!({"name": "x", "workspace_id": ws})),
            ),
        ]
    }

    /// Every id of this world, to look for in other tenants' listings.
    fn ids(&self) -> Vec<String> {
        vec![
            self.tenant.to_string(),
            self.admin.id.to_string(),
            self.member.id.to_string(),
            self.viewer.id.to_string(),
            self.member_key_id.clone(),
            self.workspace_id.clone(),
            self.member_session.clone(),
        ]
    }
}

async fn answer(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let res = app.call(method, path, token, body).await;
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn no_principal_of_one_tenant_sees_or_changes_another(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = world(&app, "alpha").await;
    let b = world(&app, "beta").await;

    for (who, token) in a.principals() {
        let real = b.targets(false);
        let random = b.targets(true);
        for ((method, path, body), (_, rpath, rbody)) in real.into_iter().zip(random) {
            let (status, reply) = answer(&app, token, method.clone(), &path, body).await;
            // 404, or 403 where the principal may not do this at all (whatever the target).
            assert!(
                status == 404 || status == 403,
                "{who}: {method} {path} answered {status} {reply}"
            );
            // Indistinguishable from an id that exists nowhere: no existence leak.
            let (rstatus, rreply) = answer(&app, token, method.clone(), &rpath, rbody).await;
            assert_eq!(
                rstatus, status,
                "{who}: {method} {rpath} differs from a real id"
            );
            assert_eq!(
                rreply["error"]["message"], reply["error"]["message"],
                "{who}: {method} same message for a real and a random id"
            );
        }
        // Listings of A never show anything of B.
        for list in [
            "/api/v1/users",
            "/api/v1/workspaces",
            "/api/v1/api-keys",
            "/api/v1/tenants",
        ] {
            let res = app.get_as(list, token).await;
            let text = res.text().await.unwrap();
            for id in b.ids() {
                assert!(
                    !text.contains(&id),
                    "{who}: {list} shows {id} of another tenant"
                );
            }
        }
        // A's audit trail holds A's records only (its denied attempts name the ids A sent,
        // which A knew already), never one of B's events.
        let (status, audit) =
            answer(&app, token, Method::GET, "/api/v1/audit?limit=1000", None).await;
        if status == 200 {
            for record in audit["items"].as_array().unwrap() {
                assert_eq!(record["tenant_id"], a.tenant.to_string(), "{who}: {record}");
                let b_actor = b.ids().iter().any(|id| record["actor_id"] == id.as_str());
                assert!(!b_actor, "{who}: {record}");
            }
        }
    }

    // Where A's admin holds the permission in its own tenant, B's objects are "not found".
    for (method, path, body) in b.targets(false) {
        let (status, reply) = answer(&app, &a.admin_token, method.clone(), &path, body).await;
        assert_eq!(status, 404, "admin: {method} {path}: {reply}");
        assert_eq!(reply["error"]["code"], "NOT_FOUND");
    }

    // And B is untouched.
    assert_eq!(
        app.get_as("/api/v1/users/me", &b.member_token)
            .await
            .status(),
        200
    );
    assert_eq!(
        app.get_as("/api/v1/users/me", &b.member_key).await.status(),
        200
    );
    let ws = app
        .get_as(
            &format!("/api/v1/workspaces/{}", b.workspace_id),
            &b.member_token,
        )
        .await;
    assert_eq!(ws.status(), 200);
    app.login(&b.member).await;
}

/// `(what, method, path, body, [admin, member, viewer, service key])` expected statuses.
type Row = (&'static str, Method, String, Option<Value>, [u16; 4]);

async fn the_role_matrix_holds(backend: Backend) {
    let app = spawn_app(backend).await;
    let w = world(&app, "acme").await;
    let other_member = app.seed_user(w.tenant, Role::Member, false).await;
    let other_ws = json(
        app.post_as(
            "/api/v1/workspaces",
            &app.login(&other_member).await.access,
            json!({"name": "theirs"}),
        )
        .await,
    )
    .await;
    let unique = || uuid::Uuid::now_v7().simple().to_string();
    let new_user = |role: &str| {
        Some(
            json!({"email": format!("n-{}@example.com", unique()), "password": "long enough password", "role": role}),
        )
    };
    let rows: Vec<Row> = vec![
        (
            "list users",
            Method::GET,
            "/api/v1/users".into(),
            None,
            [200, 403, 403, 403],
        ),
        (
            "read self",
            Method::GET,
            "/api/v1/users/me".into(),
            None,
            [200, 200, 200, 200],
        ),
        (
            "read another user",
            Method::GET,
            format!("/api/v1/users/{}", other_member.id),
            None,
            [200, 403, 403, 403],
        ),
        (
            "create user",
            Method::POST,
            "/api/v1/users".into(),
            new_user("member"),
            [201, 403, 403, 403],
        ),
        (
            "change a role",
            Method::PATCH,
            format!("/api/v1/users/{}", other_member.id),
            Some(json!({"role": "member"})),
            [200, 403, 403, 403],
        ),
        (
            "clear a user's login throttling",
            Method::DELETE,
            format!("/api/v1/users/{}/login-throttle", other_member.id),
            None,
            [204, 403, 403, 403],
        ),
        (
            "read audit",
            Method::GET,
            "/api/v1/audit".into(),
            None,
            [200, 403, 403, 403],
        ),
        (
            "list workspaces",
            Method::GET,
            "/api/v1/workspaces".into(),
            None,
            [200, 200, 200, 200],
        ),
        (
            "read a workspace",
            Method::GET,
            format!("/api/v1/workspaces/{}", other_ws["id"].as_str().unwrap()),
            None,
            [200, 200, 200, 200],
        ),
        (
            "create workspace",
            Method::POST,
            "/api/v1/workspaces".into(),
            Some(json!({"name": "w-NAME"})),
            [201, 201, 403, 403],
        ),
        (
            "delete another's workspace",
            Method::DELETE,
            format!("/api/v1/workspaces/{}", other_ws["id"].as_str().unwrap()),
            None,
            [204, 403, 403, 403],
        ),
        (
            "create api key",
            Method::POST,
            "/api/v1/api-keys".into(),
            Some(json!({"name": "k"})),
            [201, 201, 403, 403],
        ),
        (
            "list api keys",
            Method::GET,
            "/api/v1/api-keys".into(),
            None,
            [200, 200, 403, 403],
        ),
        (
            "read another's session",
            Method::GET,
            format!("/api/v1/sessions/{}", w.member_session),
            None,
            [200, 200, 403, 403],
        ),
        (
            "create tenant",
            Method::POST,
            "/api/v1/tenants".into(),
            Some(json!({"name": "t-NAME"})),
            [403, 403, 403, 403],
        ),
        (
            "list tenants",
            Method::GET,
            "/api/v1/tenants".into(),
            None,
            [403, 403, 403, 403],
        ),
        (
            "admin health",
            Method::GET,
            "/api/admin/health".into(),
            None,
            [403, 403, 403, 403],
        ),
    ];
    // The member here reads its own session (200); the viewer and the key read another's.
    let principals = [
        &w.admin_token,
        &w.member_token,
        &w.viewer_token,
        &w.service_key,
    ];
    let mut denials = 0;
    for (what, method, path, body, expected) in rows {
        for (i, token) in principals.iter().enumerate() {
            // Deletions run last for the admin so the others still find the object.
            let body = body
                .clone()
                .map(|b| serde_json::from_str(&b.to_string().replace("NAME", &unique())).unwrap());
            let (status, reply) = if what == "delete another's workspace" && i == 0 {
                continue;
            } else {
                answer(&app, token, method.clone(), &path, body).await
            };
            let role = ["admin", "member", "viewer", "service"][i];
            assert_eq!(
                status, expected[i],
                "{role} may not get {} for {what}: {reply}",
                expected[i]
            );
            if status == 403 {
                assert_eq!(reply["error"]["code"], "ACCESS_DENIED");
                denials += 1;
            }
        }
    }
    let path = format!("/api/v1/workspaces/{}", other_ws["id"].as_str().unwrap());
    assert_eq!(
        app.call(Method::DELETE, &path, &w.admin_token, None)
            .await
            .status(),
        204
    );

    // Members list only their own keys; admins see all.
    let mine = app.get_json("/api/v1/api-keys", &w.member_token).await;
    assert!(
        mine["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["owner_id"] == w.member.id.to_string())
    );
    let all = app.get_json("/api/v1/api-keys", &w.admin_token).await;
    assert!(
        all["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["owner_id"] != w.member.id.to_string())
    );

    // Every denial is in the audit trail.
    let audit = app
        .get_json(
            "/api/v1/audit?action=access.denied&limit=1000",
            &w.admin_token,
        )
        .await;
    let recorded = audit["items"].as_array().unwrap();
    assert_eq!(recorded.len(), denials, "one audit record per 403");
    assert!(
        recorded
            .iter()
            .all(|r| r["result"] == "denied" && r["request_id"].is_string())
    );
}

async fn platform_admins_act_across_tenants_and_nobody_else_does(backend: Backend) {
    let app = spawn_app(backend).await;
    let home = app.seed_tenant("platform").await;
    let operator = app.seed_user(home, Role::Admin, true).await;
    let op = app.login(&operator).await.access;

    let res = app
        .post_as("/api/v1/tenants", &op, json!({"name": "newco"}))
        .await;
    assert_eq!(res.status(), 201);
    let newco = json(res).await;
    assert_envelope(
        app.post_as("/api/v1/tenants", &op, json!({"name": "newco"}))
            .await,
        409,
        "CONFLICT",
    )
    .await;
    assert_envelope(
        app.post_as("/api/v1/tenants", &op, json!({"name": ""}))
            .await,
        400,
        "BAD_REQUEST",
    )
    .await;
    let listed = app.get_json("/api/v1/tenants", &op).await;
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == newco["id"])
    );

    // The operator seeds the new tenant's first admin, who administers only it.
    let email = format!("boss-{}@example.com", uuid::Uuid::now_v7().simple());
    let res = app
        .post_as(
            "/api/v1/users",
            &op,
            json!({"email": email, "password": "long enough password", "role": "admin", "tenant_id": newco["id"]}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let boss = common::TestUser {
        id: json(res).await["id"].as_str().unwrap().parse().unwrap(),
        tenant: newco["id"].as_str().unwrap().parse().unwrap(),
        email,
        password: "long enough password".into(),
        role: Role::Admin,
    };
    let boss_token = app.login(&boss).await.access;
    assert_eq!(app.get_as("/api/v1/users", &boss_token).await.status(), 200);
    let res = app
        .post_as("/api/v1/tenants", &boss_token, json!({"name": "mine"}))
        .await;
    assert_envelope(res, 403, "ACCESS_DENIED").await;
    // A tenant admin cannot make platform admins.
    let res = app
        .post_as(
            "/api/v1/users",
            &boss_token,
            json!({"email": "sneaky@example.com", "password": "long enough password", "role": "admin", "platform_admin": true}),
        )
        .await;
    assert_envelope(res, 403, "ACCESS_DENIED").await;

    // The operator reads the new tenant's audit trail; its admin cannot read the operator's.
    let path = format!("/api/v1/audit?tenant_id={}", newco["id"].as_str().unwrap());
    let audit = app.get_json(&path, &op).await;
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "auth.login")
    );
    let res = app
        .get_as(&format!("/api/v1/audit?tenant_id={home}"), &boss_token)
        .await;
    assert_envelope(res, 404, "NOT_FOUND").await;
    assert_eq!(app.get_as("/api/admin/health", &op).await.status(), 200);
    assert_eq!(app.get_as("/api/admin/metrics", &op).await.status(), 200);
}

async fn administration_works_and_is_audited(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_tenant, admin, token) = app.tenant_with_admin("acme").await;
    let token = token.access;

    // Users: create (and duplicates), page through, read.
    let mut created = Vec::new();
    for i in 0..5 {
        let res = app
            .post_as(
                "/api/v1/users",
                &token,
                json!({"email": format!("dev{i}-{}@example.com", admin.id), "password": "long enough password", "role": "member"}),
            )
            .await;
        assert_eq!(res.status(), 201);
        created.push(json(res).await["id"].as_str().unwrap().to_string());
    }
    let dup = app
        .post_as(
            "/api/v1/users",
            &token,
            json!({"email": format!("dev0-{}@example.com", admin.id), "password": "long enough password", "role": "member"}),
        )
        .await;
    assert_envelope(dup, 409, "CONFLICT").await;
    let weak = app
        .post_as(
            "/api/v1/users",
            &token,
            json!({"email": "weak@example.com", "password": "short", "role": "member"}),
        )
        .await;
    assert_envelope(weak, 400, "BAD_REQUEST").await;
    let unknown_field = app
        .post_as(
            "/api/v1/users",
            &token,
            json!({"email": "u@example.com", "role": "member", "is_root": true}),
        )
        .await;
    assert_envelope(unknown_field, 400, "BAD_REQUEST").await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/users?limit=2&cursor={c}"),
            None => "/api/v1/users?limit=2".into(),
        };
        let page = app.get_json(&path, &token).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|u| u["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    for id in &created {
        assert!(seen.contains(id));
    }
    assert_eq!(seen.len(), 6, "5 created + the admin, each once");
    assert_envelope(
        app.get_as("/api/v1/users?limit=0", &token).await,
        400,
        "BAD_REQUEST",
    )
    .await;
    assert_envelope(
        app.get_as("/api/v1/users?limit=1001", &token).await,
        400,
        "BAD_REQUEST",
    )
    .await;
    assert_envelope(
        app.get_as("/api/v1/users?cursor=%%%", &token).await,
        400,
        "BAD_REQUEST",
    )
    .await;

    // Workspaces: create, duplicate name, read, delete, gone.
    let ws = json(
        app.post_as("/api/v1/workspaces", &token, json!({"name": "api"}))
            .await,
    )
    .await;
    assert_envelope(
        app.post_as("/api/v1/workspaces", &token, json!({"name": "api"}))
            .await,
        409,
        "CONFLICT",
    )
    .await;
    let path = format!("/api/v1/workspaces/{}", ws["id"].as_str().unwrap());
    assert_eq!(
        app.get_json(&path, &token).await["owner_id"],
        admin.id.to_string()
    );
    assert_eq!(
        app.call(Method::DELETE, &path, &token, None).await.status(),
        204
    );
    assert_envelope(app.get_as(&path, &token).await, 404, "NOT_FOUND").await;

    // The audit trail has it all, filterable and paged newest first.
    let audit = app.get_json("/api/v1/audit?limit=1000", &token).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    for expected in [
        "auth.login",
        "user.create",
        "workspace.create",
        "workspace.delete",
    ] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
    let mine = app
        .get_json(
            &format!("/api/v1/audit?actor={}&action=user.create", admin.id),
            &token,
        )
        .await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 5);
    let first = app.get_json("/api/v1/audit?limit=3", &token).await;
    let next = first["next_cursor"].as_str().unwrap();
    let second = app
        .get_json(&format!("/api/v1/audit?limit=3&cursor={next}"), &token)
        .await;
    let last_of_first = first["items"][2]["id"].as_str().unwrap();
    let first_of_second = second["items"][0]["id"].as_str().unwrap();
    assert!(first_of_second < last_of_first, "newest first across pages");
    let since = "2000-01-01T00:00:00Z";
    let until = "1999-01-01T00:00:00Z";
    let res = app
        .get_as(
            &format!("/api/v1/audit?since={since}&until={until}"),
            &token,
        )
        .await;
    assert_envelope(res, 400, "BAD_REQUEST").await;
    let res = app.get_as("/api/v1/audit?since=yesterday", &token).await;
    assert_envelope(res, 400, "BAD_REQUEST").await;
}

async fn escalations_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let tenant = app.seed_tenant("home").await;
    let operator = app.seed_user(tenant, Role::Admin, true).await;
    let op = app.login(&operator).await;
    let admin = app.seed_user(tenant, Role::Admin, false).await;
    let admin_token = app.login(&admin).await.access;
    let member = app.seed_user(tenant, Role::Member, false).await;
    let member_token = app.login(&member).await.access;
    let op_key = json(
        app.post_as("/api/v1/api-keys", &op.access, json!({"name": "op"}))
            .await,
    )
    .await;

    // A tenant admin cannot mint a key that acts as the platform admin, nor as any person.
    for owner in [operator.id, member.id] {
        let res = app
            .post_as(
                "/api/v1/api-keys",
                &admin_token,
                json!({"name": "x", "role": "admin", "owner_id": owner}),
            )
            .await;
        assert_envelope(res, 403, "ACCESS_DENIED").await;
    }
    // …nor disable, demote, log out or de-key the platform admin.
    let path = format!("/api/v1/users/{}", operator.id);
    for change in [json!({"disabled": true}), json!({"role": "viewer"})] {
        let res = app
            .call(Method::PATCH, &path, &admin_token, Some(change))
            .await;
        assert_envelope(res, 403, "ACCESS_DENIED").await;
    }
    let res = app
        .call(
            Method::DELETE,
            &format!("/api/v1/sessions/{}", op.session_id),
            &admin_token,
            None,
        )
        .await;
    assert_envelope(res, 403, "ACCESS_DENIED").await;
    let res = app
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{}", op_key["id"].as_str().unwrap()),
            &admin_token,
            None,
        )
        .await;
    assert_envelope(res, 403, "ACCESS_DENIED").await;
    assert_eq!(
        app.get_as("/api/v1/users/me", &op.access).await.status(),
        200,
        "operator unharmed"
    );

    // Keys mint no keys, so a key's limits cannot be escaped.
    let ws = json(
        app.post_as("/api/v1/workspaces", &admin_token, json!({"name": "ci"}))
            .await,
    )
    .await;
    let expires = (app.clock.now() + chrono::Duration::hours(1)).to_rfc3339();
    let limited = json(
        app.post_as(
            "/api/v1/api-keys",
            &admin_token,
            json!({"name": "bound", "role": "admin", "workspace_id": ws["id"], "expires_at": expires}),
        )
        .await,
    )
    .await;
    let limited = limited["key"].as_str().unwrap();
    let res = app
        .post_as("/api/v1/api-keys", limited, json!({"name": "escape"}))
        .await;
    assert_envelope(res, 403, "ACCESS_DENIED").await;
    let member_key = json(
        app.post_as("/api/v1/api-keys", &member_token, json!({"name": "m"}))
            .await,
    )
    .await;
    let res = app
        .post_as(
            "/api/v1/api-keys",
            member_key["key"].as_str().unwrap(),
            json!({"name": "child"}),
        )
        .await;
    assert_envelope(res, 403, "ACCESS_DENIED").await;
    // A workspace-bound admin key does that workspace's work only.
    assert_envelope(
        app.get_as("/api/v1/users", limited).await,
        403,
        "ACCESS_DENIED",
    )
    .await;
    assert_envelope(
        app.get_as("/api/v1/audit", limited).await,
        403,
        "ACCESS_DENIED",
    )
    .await;
    let res = app
        .post_as(
            "/api/v1/users",
            limited,
            json!({"email": "k@example.com", "password": "long enough password", "role": "admin"}),
        )
        .await;
    assert_envelope(res, 403, "ACCESS_DENIED").await;
    assert_eq!(app.get_as("/api/v1/users/me", limited).await.status(), 200);
    assert_eq!(
        app.get_as(
            &format!("/api/v1/workspaces/{}", ws["id"].as_str().unwrap()),
            limited
        )
        .await
        .status(),
        200
    );

    // A tenant admin cannot read other tenants' data through a platform flag it lacks.
    let res = app
        .post_as("/api/v1/tenants", &admin_token, json!({"name": "mine"}))
        .await;
    assert_envelope(res, 403, "ACCESS_DENIED").await;
}
