//! Authorization on both storage engines: tenant isolation over every endpoint, the role
//! matrix, platform operations, and the audit trail of denials.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_proto::Role;
use common::api_doc::{ApiDoc, ID_KINDS};
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
    template_id: String,
    member_session: String,
    log_entry_id: String,
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
            json!({"name": format!("{name}-ws"), "start": false}),
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
    let template = json(
        app.post_as(
            "/api/v1/templates",
            &admin_tokens.access,
            json!({"name": "base", "spec": {"idle_timeout_secs": 3600}}),
        )
        .await,
    )
    .await;
    let log_entry_id = uuid::Uuid::now_v7().to_string();
    let res = app
        .post_as(
            "/api/logs/batch",
            &member_tokens.access,
            json!({"workspace_id": ws["id"], "entries": [{"id": log_entry_id, "level": "info",
                "component": "world", "message": format!("{name} was here")}]}),
        )
        .await;
    assert_eq!(res.status(), 202);
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
        template_id: template["id"].as_str().unwrap().into(),
        member_session: member_tokens.session_id,
        log_entry_id,
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

    /// This world's object of each kind the API names.
    fn id_of(&self, kind: &str) -> String {
        match kind {
            "TenantId" => self.tenant.to_string(),
            "UserId" => self.member.id.to_string(),
            "SessionId" => self.member_session.clone(),
            "ApiKeyId" => self.member_key_id.clone(),
            "WorkspaceId" => self.workspace_id.clone(),
            "TemplateId" => self.template_id.clone(),
            "LogEntryId" => self.log_entry_id.clone(),
            other => panic!("the API names a {other}: give the test world one"),
        }
    }

    /// Every id of this world, to look for in other tenants' answers.
    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = ID_KINDS.iter().map(|k| self.id_of(k)).collect();
        ids.extend([self.admin.id.to_string(), self.viewer.id.to_string()]);
        ids
    }
}

/// One request at an object, built from the document.
#[derive(Debug, Clone)]
struct Target {
    key: String,
    method: Method,
    /// Path and query.
    uri: String,
    headers: Vec<(String, String)>,
    body: Option<(String, Value)>,
    websocket: bool,
    /// The id is a search filter (a query parameter other than the workspace): an answer
    /// may also be an empty 200.
    filter: bool,
}

/// Every operation of the document that names an object (an id in its path, a query
/// parameter, a header or a top-level property of its body), aimed at world `w`'s objects
/// or, with `random`, at ids that exist nowhere. An operation with optional ids gets one
/// target per id; bodies are the operation's documented example.
fn targets(api: &ApiDoc, w: &World, random: bool) -> Vec<Target> {
    let id = |kind: &str| {
        if random {
            uuid::Uuid::now_v7().to_string()
        } else {
            w.id_of(kind)
        }
    };
    let mut out = Vec::new();
    for op in api.operations.iter().filter(|o| o.requires_credential()) {
        let mut path = op.template.clone();
        let mut named = false;
        let mut optional = Vec::new();
        for param in op.parameters() {
            let name = param["name"].as_str().unwrap().to_string();
            let Some(kind) = api.id_kind(&param["schema"]) else {
                continue;
            };
            match param["in"].as_str().unwrap() {
                "path" => {
                    path = path.replace(&format!("{{{name}}}"), &id(kind));
                    named = true;
                }
                place => optional.push((place.to_string(), name, kind)),
            }
        }
        for (name, kind) in api.body_ids(op) {
            optional.push(("body".into(), name, kind));
        }
        let base = Target {
            key: op.key(),
            method: op.method.clone(),
            uri: path,
            headers: Vec::new(),
            body: api.example_body(op),
            websocket: op.is_websocket(),
            filter: false,
        };
        if named {
            out.push(base.clone());
        }
        for (place, name, kind) in optional {
            let mut t = base.clone();
            let value = id(kind);
            match place.as_str() {
                "query" => {
                    t.uri = format!("{}?{name}={value}", t.uri);
                    t.filter = !matches!(kind, "WorkspaceId" | "TenantId");
                }
                "header" => t.headers.push((name, value)),
                "body" => {
                    let (_, body) = t.body.as_mut().expect("a body with ids has an example");
                    body[&name] = Value::String(value);
                }
                other => panic!("an id in {other}"),
            }
            out.push(t);
        }
    }
    out
}

async fn send(app: &TestApp, token: &str, t: &Target) -> (u16, Value) {
    if t.websocket {
        use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
        let mut req = format!("ws://{}{}", app.addr, t.uri)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        return match tokio_tungstenite::connect_async(req).await {
            Ok(_) => (101, Value::Null),
            Err(tungstenite::Error::Http(res)) => {
                let body = res.body().clone().unwrap_or_default();
                (
                    res.status().as_u16(),
                    serde_json::from_slice(&body).unwrap_or(Value::Null),
                )
            }
            Err(e) => panic!("{}: {e}", t.key),
        };
    }
    let mut req = app
        .client
        .request(t.method.clone(), app.url(&t.uri))
        .bearer_auth(token);
    for (name, value) in &t.headers {
        req = req.header(name, value);
    }
    if let Some((media, body)) = &t.body {
        req = req
            .header("content-type", media)
            .body(serde_json::to_vec(body).unwrap());
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
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
    let api = ApiDoc::of(&app).await;
    let a = world(&app, "alpha").await;
    let b = world(&app, "beta").await;
    let real = targets(&api, &b, false);
    let random = targets(&api, &b, true);
    // Every kind of object, and the protocols' workspace headers, are reached.
    assert!(real.len() >= 20, "{} targets: {real:#?}", real.len());
    for key in ["POST /loki/api/v1/push", "POST /v1/logs", "GET /ws/logs"] {
        assert!(real.iter().any(|t| t.key == key), "{key} is not a target");
    }

    for (who, token) in a.principals() {
        for (t, r) in real.iter().zip(&random) {
            let (status, reply) = send(&app, token, t).await;
            // 404, or 403 where the principal may not do this at all (whatever the target);
            // a search filtered by another tenant's id finds nothing.
            let found_nothing = t.filter
                && (status == 101 || status == 200 && !reply.to_string().contains("\"id\""));
            assert!(
                status == 404 || status == 403 || found_nothing,
                "{who}: {} {} answered {status} {reply}",
                t.key,
                t.uri
            );
            // Indistinguishable from an id that exists nowhere: no existence leak.
            let (rstatus, rreply) = send(&app, token, r).await;
            assert_eq!(rstatus, status, "{who}: {} differs from a random id", t.key);
            assert_eq!(
                rreply["error"]["message"], reply["error"]["message"],
                "{who}: {}: same message for a real and a random id",
                t.key
            );
        }
        // Nothing A may read shows anything of B: every readable operation that names no
        // object (listings, searches, `me`, the health and metrics of the admin namespace).
        for op in api.operations.iter().filter(|o| {
            o.method == Method::GET
                && o.requires_credential()
                && !o.is_websocket()
                && !o.template.contains('{')
                // Its own denied attempts name ids A sent (checked below).
                && o.template != "/api/v1/audit"
        }) {
            let res = app.get_as(&op.template, token).await;
            let text = res.text().await.unwrap();
            for id in b.ids() {
                assert!(
                    !text.contains(&id),
                    "{who}: {} shows {id} of another tenant",
                    op.key()
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
    for t in real.iter().filter(|t| !t.filter) {
        let (status, reply) = send(&app, &a.admin_token, t).await;
        assert_eq!(status, 404, "admin: {} {}: {reply}", t.key, t.uri);
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
    let entry = app
        .get_as(&format!("/api/logs/{}", b.log_entry_id), &b.member_token)
        .await;
    assert_eq!(entry.status(), 200);
    app.login(&b.member).await;
}

/// One operation of the role matrix: what to send, as whom, and what each of `[admin,
/// member, viewer, service key]` must get. `paths` and `tokens` are per principal where
/// the call changes or spends what it names (a deletion, a logout).
struct Row {
    op: &'static str,
    what: &'static str,
    paths: [String; 4],
    body: Option<Value>,
    headers: Vec<(String, String)>,
    tokens: Option<[String; 4]>,
    expected: [u16; 4],
}

fn row(op: &'static str, what: &'static str, path: impl Into<String>, expected: [u16; 4]) -> Row {
    let path = path.into();
    Row {
        op,
        what,
        paths: [path.clone(), path.clone(), path.clone(), path],
        body: None,
        headers: Vec::new(),
        tokens: None,
        expected,
    }
}

impl Row {
    fn body(mut self, body: Value) -> Row {
        self.body = Some(body);
        self
    }

    fn header(mut self, name: &str, value: &str) -> Row {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn each(mut self, paths: [String; 4]) -> Row {
        self.paths = paths;
        self
    }

    fn tokens(mut self, tokens: [String; 4]) -> Row {
        self.tokens = Some(tokens);
        self
    }
}

/// `n` fresh objects made by `make`, one per principal of the matrix.
async fn four<F, Fut>(make: F) -> [String; 4]
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = String>,
{
    [make(0).await, make(1).await, make(2).await, make(3).await]
}

async fn the_role_matrix_holds(backend: Backend) {
    let app = spawn_app(backend).await;
    let api = ApiDoc::of(&app).await;
    let w = world(&app, "acme").await;
    let other_member = app.seed_user(w.tenant, Role::Member, false).await;
    let other_token = app.login(&other_member).await.access;
    let other_ws = json(
        app.post_as(
            "/api/v1/workspaces",
            &other_token,
            json!({"name": "theirs", "start": false}),
        )
        .await,
    )
    .await;
    let other_ws = other_ws["id"].as_str().unwrap().to_string();
    let unique = || uuid::Uuid::now_v7().simple().to_string();
    let new_user = |role: &str| json!({"email": format!("n-{}@example.com", unique()), "password": "long enough password", "role": role});
    // Objects the calls use up: one per principal.
    let others_workspaces = four(|i| {
        let (app, token) = (&app, &other_token);
        async move {
            format!(
                "/api/v1/workspaces/{}",
                app.workspace(token, &format!("gone-{i}")).await
            )
        }
    })
    .await;
    let templates = four(|i| {
        let (app, token) = (&app, &w.admin_token);
        async move {
            let t = json(
                app.post_as(
                    "/api/v1/templates",
                    token,
                    json!({"name": format!("doomed-{i}"), "spec": {}}),
                )
                .await,
            )
            .await;
            format!("/api/v1/templates/{}", t["id"].as_str().unwrap())
        }
    })
    .await;
    let others_keys = four(|i| {
        let (app, token) = (&app, &other_token);
        async move {
            let key = json(
                app.post_as("/api/v1/api-keys", token, json!({"name": format!("k{i}")}))
                    .await,
            )
            .await;
            format!("/api/v1/api-keys/{}", key["id"].as_str().unwrap())
        }
    })
    .await;
    let others_sessions = four(|_| {
        let (app, who) = (&app, &other_member);
        async move { format!("/api/v1/sessions/{}", app.login(who).await.session_id) }
    })
    .await;
    // Logging out spends the session: fresh ones for that row (the key has none).
    let fresh = [
        app.login(&w.admin).await.access,
        app.login(&w.member).await.access,
        app.login(&w.viewer).await.access,
        w.service_key.clone(),
    ];
    let entry = format!("/api/logs/{}", w.log_entry_id);
    let batch = json!({"workspace_id": w.workspace_id, "entries": [
        {"level": "info", "component": "matrix", "message": "written"}]});
    let mut loki = api
        .operations
        .iter()
        .find(|o| o.key() == "POST /loki/api/v1/push")
        .and_then(|o| api.example_body(o))
        .unwrap()
        .1;
    // The example's instant is long past: now, in unix nanoseconds.
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    loki["streams"][0]["values"][0][0] = Value::String(now.to_string());
    let otlp = api
        .operations
        .iter()
        .find(|o| o.key() == "POST /v1/logs")
        .and_then(|o| api.example_body(o))
        .unwrap()
        .1;
    let rows: Vec<Row> = vec![
        row("GET /api/v1/users", "list users", "/api/v1/users", [200, 403, 403, 403]),
        row("GET /api/v1/users/me", "read self", "/api/v1/users/me", [200, 200, 200, 200]),
        row(
            "GET /api/v1/users/{id}",
            "read another user",
            format!("/api/v1/users/{}", other_member.id),
            [200, 403, 403, 403],
        ),
        row("POST /api/v1/users", "create user", "/api/v1/users", [201, 403, 403, 403])
            .body(new_user("member")),
        row(
            "PATCH /api/v1/users/{id}",
            "change a role",
            format!("/api/v1/users/{}", other_member.id),
            [200, 403, 403, 403],
        )
        .body(json!({"role": "member"})),
        row(
            "POST /api/v1/users/me/password",
            "change one's password, guessing wrong",
            "/api/v1/users/me/password",
            [403, 403, 403, 403],
        )
        .body(json!({"current_password": "not the password", "new_password": "another long passphrase"})),
        row(
            "DELETE /api/v1/users/{id}/login-throttle",
            "clear a user's login throttling",
            format!("/api/v1/users/{}/login-throttle", other_member.id),
            [204, 403, 403, 403],
        ),
        row("GET /api/v1/audit", "read audit", "/api/v1/audit", [200, 403, 403, 403]),
        row("GET /api/v1/workspaces", "list workspaces", "/api/v1/workspaces", [200, 200, 200, 200]),
        row(
            "GET /api/v1/workspaces/{id}",
            "read a workspace",
            format!("/api/v1/workspaces/{other_ws}"),
            [200, 200, 200, 200],
        ),
        row("POST /api/v1/workspaces", "create workspace", "/api/v1/workspaces", [201, 201, 403, 403])
            .body(json!({"name": "w-NAME", "start": false})),
        row("DELETE /api/v1/workspaces/{id}", "delete another's workspace", "", [202, 403, 403, 403])
            .each(others_workspaces),
        row(
            "POST /api/v1/workspaces/{id}/start",
            "start another's workspace",
            format!("/api/v1/workspaces/{other_ws}/start"),
            [202, 403, 403, 403],
        ),
        row(
            "POST /api/v1/workspaces/{id}/restart",
            "restart another's workspace",
            format!("/api/v1/workspaces/{other_ws}/restart"),
            [202, 403, 403, 403],
        ),
        row(
            "POST /api/v1/workspaces/{id}/stop",
            "stop another's workspace",
            format!("/api/v1/workspaces/{other_ws}/stop"),
            [202, 403, 403, 403],
        ),
        row(
            "GET /api/v1/workspaces/{id}/builds",
            "read a workspace's builds",
            format!("/api/v1/workspaces/{other_ws}/builds"),
            [200, 200, 200, 200],
        ),
        row(
            "GET /api/v1/workspaces/{id}/state",
            "read a workspace's state",
            format!("/api/v1/workspaces/{other_ws}/state"),
            [200, 200, 200, 200],
        ),
        row(
            "PUT /api/v1/workspaces/{id}/state",
            "write another's workspace state",
            format!("/api/v1/workspaces/{other_ws}/state"),
            [200, 403, 403, 403],
        )
        .header("if-match", "*")
        .body(json!({"open": ["a.rs"]})),
        row(
            "POST /api/v1/agent/report",
            "report as a workspace's agent",
            "/api/v1/agent/report",
            [403, 403, 403, 403],
        )
        .body(json!({"workspace_id": other_ws, "instance": "abc", "ready": true})),
        row("GET /api/v1/containers", "list one's containers", "/api/v1/containers", [200, 200, 200, 200]),
        row("POST /api/v1/containers", "launch another's workspace", "/api/v1/containers", [202, 403, 403, 403])
            .body(json!({"workspace_id": other_ws})),
        row("GET /api/v1/templates", "list templates", "/api/v1/templates", [200, 200, 200, 200]),
        row(
            "GET /api/v1/templates/{id}",
            "read a template",
            format!("/api/v1/templates/{}", w.template_id),
            [200, 200, 200, 200],
        ),
        row("POST /api/v1/templates", "create a template", "/api/v1/templates", [201, 403, 403, 403])
            .body(json!({"name": "t-NAME", "spec": {"pool_size": 0}})),
        row(
            "PUT /api/v1/templates/{id}",
            "change a template",
            format!("/api/v1/templates/{}", w.template_id),
            [200, 403, 403, 403],
        )
        .body(json!({"name": "base", "spec": {"idle_timeout_secs": 600}})),
        row("DELETE /api/v1/templates/{id}", "delete a template", "", [204, 403, 403, 403])
            .each(templates),
        row("POST /api/v1/api-keys", "create api key", "/api/v1/api-keys", [201, 201, 403, 403])
            .body(json!({"name": "k"})),
        row("GET /api/v1/api-keys", "list api keys", "/api/v1/api-keys", [200, 200, 403, 403]),
        row("DELETE /api/v1/api-keys/{id}", "revoke another's api key", "", [204, 403, 403, 403])
            .each(others_keys),
        row(
            "GET /api/v1/sessions/{id}",
            "read another's session",
            format!("/api/v1/sessions/{}", w.member_session),
            [200, 200, 403, 403],
        ),
        row("DELETE /api/v1/sessions/{id}", "end another's session", "", [204, 403, 403, 403])
            .each(others_sessions),
        row("POST /api/v1/auth/logout", "log out", "/api/v1/auth/logout", [204, 204, 204, 400])
            .tokens(fresh),
        row("POST /api/v1/ws-tickets", "mint a WebSocket ticket", "/api/v1/ws-tickets", [200, 200, 200, 400]),
        row("POST /api/v1/tenants", "create tenant", "/api/v1/tenants", [403, 403, 403, 403])
            .body(json!({"name": "t-NAME"})),
        row("GET /api/v1/tenants", "list tenants", "/api/v1/tenants", [403, 403, 403, 403]),
        row(
            "GET /api/v1/tenants/{id}",
            "read one's tenant",
            format!("/api/v1/tenants/{}", w.tenant),
            [200, 200, 200, 200],
        ),
        row("GET /api/admin/health", "admin health", "/api/admin/health", [403, 403, 403, 403]),
        row("GET /api/admin/metrics", "admin metrics", "/api/admin/metrics", [403, 403, 403, 403]),
        row("POST /api/logs/batch", "write logs", "/api/logs/batch", [202, 202, 403, 202]).body(batch),
        row("POST /loki/api/v1/push", "push Loki streams", "/loki/api/v1/push", [204, 204, 403, 204])
            .body(loki),
        row("POST /v1/logs", "export OTLP logs", "/v1/logs", [200, 200, 403, 200]).body(otlp),
        row("GET /api/logs", "search logs", "/api/logs", [200, 200, 200, 200]),
        row("GET /api/logs/{id}", "read a log entry", entry, [200, 200, 200, 200]),
        row(
            "GET /ws/logs",
            "tail logs",
            format!("/ws/logs?workspace_id={}", w.workspace_id),
            [101, 101, 101, 101],
        ),
    ];

    // Every operation that needs a credential is in the matrix: a route added later fails
    // here until its row says who may call it.
    let covered: Vec<&str> = rows.iter().map(|r| r.op).collect();
    for op in api.operations.iter().filter(|o| o.requires_credential()) {
        assert!(
            covered.contains(&op.key().as_str()),
            "{} is not in the role matrix: add its row",
            op.key()
        );
    }

    let principals = [
        w.admin_token.clone(),
        w.member_token.clone(),
        w.viewer_token.clone(),
        w.service_key.clone(),
    ];
    let mut denials = 0;
    for r in rows {
        let op = api
            .operations
            .iter()
            .find(|o| o.key() == r.op)
            .unwrap_or_else(|| panic!("{} is not in the document", r.op));
        let tokens = r.tokens.clone().unwrap_or_else(|| principals.clone());
        for i in 0..4 {
            let body = r
                .body
                .clone()
                .map(|b| serde_json::from_str(&b.to_string().replace("NAME", &unique())).unwrap());
            let target = Target {
                key: r.op.to_string(),
                method: op.method.clone(),
                uri: r.paths[i].clone(),
                headers: r.headers.clone(),
                body: body.map(|b| ("application/json".to_string(), b)),
                websocket: op.is_websocket(),
                filter: false,
            };
            let (status, reply) = send(&app, &tokens[i], &target).await;
            let role = ["admin", "member", "viewer", "service"][i];
            assert_eq!(
                status, r.expected[i],
                "{role} may not get {} for {}: {reply}",
                r.expected[i], r.what
            );
            assert!(
                op.documents(status),
                "{}: {status} is not in the document",
                r.op
            );
            if status == 403 {
                assert_eq!(reply["error"]["code"], "ACCESS_DENIED");
                denials += 1;
            }
        }
    }

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

    // Every denial is in the audit trail (wrong current passwords are audited as such).
    let audit = app
        .get_json(
            "/api/v1/audit?action=access.denied&limit=1000",
            &w.admin_token,
        )
        .await;
    let recorded = audit["items"].as_array().unwrap();
    assert_eq!(recorded.len(), denials - 4, "one audit record per 403");
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
        app.post_as(
            "/api/v1/workspaces",
            &token,
            json!({"name": "api", "start": false}),
        )
        .await,
    )
    .await;
    assert_envelope(
        app.post_as(
            "/api/v1/workspaces",
            &token,
            json!({"name": "api", "start": false}),
        )
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
        202,
        "asked; the orchestrator deletes it"
    );
    assert!(
        common::eventually(std::time::Duration::from_secs(30), || async {
            app.get_as(&path, &token).await.status() == 404
        })
        .await,
        "the workspace was never deleted"
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
        app.post_as(
            "/api/v1/workspaces",
            &admin_token,
            json!({"name": "ci", "start": false}),
        )
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
