//! The hub test harness.
//!
//! - [`spawn_app`]: a real hub, in this process, on a random port, against a fresh store
//!   (a new SQLite file, or a new database on the suite's PostgreSQL cluster).
//! - [`HubProcess`]: the real `coditect-hub` binary as a child process, for what only a
//!   process shows (exit codes, signals, logs).
//! - [`both_backends!`]: runs one async test body once per storage engine.

#![allow(dead_code)]

pub mod api_doc;

use axum::Router;
use coditect_hub::clock::Clock;
use coditect_hub::{AppState, Config, Hub, StartError};
use coditect_proto::{Email, Role, TenantId, UserId};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Defines `mod $name { sqlite, postgres }` calling `$name(Backend::…)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            }
        )*
    };
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub state: AppState,
    pub clock: Clock,
    pub data_dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), StartError>>>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// `method path` with a bearer credential and an optional JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.expect("request")
    }

    pub async fn get_as(&self, path: &str, token: &str) -> reqwest::Response {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    /// Deletes a workspace (202) and waits up to `within` until it is gone (404).
    pub async fn delete_workspace(&self, token: &str, id: &str, within: Duration) {
        let path = format!("/api/v1/workspaces/{id}");
        let res = self.call(reqwest::Method::DELETE, &path, token, None).await;
        assert_eq!(res.status(), 202);
        assert!(
            eventually(within, || async {
                self.get_as(&path, token).await.status() == 404
            })
            .await,
            "the workspace was never deleted"
        );
    }

    /// `GET path` as `token`, the body parsed as JSON (whatever the status).
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        json(self.get_as(path, token).await).await
    }

    pub async fn post_as(&self, path: &str, token: &str, body: Value) -> reqwest::Response {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    /// A workspace of the caller's tenant, by name; its id.
    pub async fn workspace(&self, token: &str, name: &str) -> String {
        let ws = json(
            self.post_as(
                "/api/v1/workspaces",
                token,
                serde_json::json!({"name": name, "start": false}),
            )
            .await,
        )
        .await;
        ws["id"].as_str().expect("workspace id").to_string()
    }

    /// A new API key made by `token` with these fields (`name`, `role`, `workspace_id`…);
    /// the secret.
    pub async fn api_key(&self, token: &str, fields: Value) -> String {
        let key = json(self.post_as("/api/v1/api-keys", token, fields).await).await;
        key["key"].as_str().expect("api key").to_string()
    }

    /// A tenant created directly through the hub's system door (test set-up).
    pub async fn seed_tenant(&self, name: &str) -> TenantId {
        self.state
            .gate()
            .system()
            .ensure_tenant(&format!("{name}-{}", UserId::new()))
            .await
            .expect("tenant")
            .id
    }

    /// A user with a password, created directly (test set-up).
    pub async fn seed_user(&self, tenant: TenantId, role: Role, platform_admin: bool) -> TestUser {
        let email = format!("{}-{}@example.com", role, UserId::new());
        let password = "correct horse battery staple".to_string();
        let (_, id) = coditect_hub::auth::bootstrap::create_account(
            &self.state.gate().system(),
            &self.state.auth().passwords,
            &self.clock,
            coditect_hub::auth::bootstrap::NewAccount {
                email: Email::parse(&email).expect("email"),
                password: Some(password.clone()),
                role,
                platform_admin,
                tenant: tenant.to_string(),
                create_tenant: false,
            },
        )
        .await
        .expect("user");
        TestUser {
            id,
            tenant,
            email,
            password,
            role,
        }
    }

    /// Logs `user` in; panics unless it works.
    pub async fn login(&self, user: &TestUser) -> Tokens {
        let res = self
            .client
            .post(self.url("/api/v1/auth/login"))
            .json(&serde_json::json!({"email": user.email, "password": user.password}))
            .send()
            .await
            .expect("login");
        assert_eq!(res.status(), 200, "login of {}", user.email);
        let body = json(res).await;
        Tokens {
            access: body["access_token"].as_str().expect("access").to_string(),
            refresh: body["refresh_token"].as_str().expect("refresh").to_string(),
            session_id: body["session_id"].as_str().expect("session").to_string(),
        }
    }

    /// A tenant with an admin, logged in.
    pub async fn tenant_with_admin(&self, name: &str) -> (TenantId, TestUser, Tokens) {
        let tenant = self.seed_tenant(name).await;
        let admin = self.seed_user(tenant, Role::Admin, false).await;
        let tokens = self.login(&admin).await;
        (tenant, admin, tokens)
    }

    /// Sends SIGTERM's equivalent and waits until the hub has drained and closed.
    pub async fn stop(mut self) -> Result<(), StartError> {
        self.trigger_shutdown();
        self.wait().await
    }

    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn wait(&mut self) -> Result<(), StartError> {
        match self.server.take() {
            Some(task) => task.await.expect("server task"),
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.trigger_shutdown();
        destroy_scope(&self.state);
    }
}

/// Removes every runtime object this hub's scope holds (workspaces outlive their hub by
/// design; a finished test's must not).
pub fn destroy_scope(state: &AppState) {
    let runtimes: Vec<_> = state.orchestrator().runtimes().cloned().collect();
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            for r in runtimes {
                let listed = tokio::time::timeout(Duration::from_secs(10), r.list()).await;
                if let Ok(Ok(list)) = listed {
                    for o in list {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(30), r.destroy(o.instance))
                                .await;
                    }
                }
            }
        });
    })
    .join();
}

/// The Python of the project's test virtualenv (`target/test-venv`, made by
/// `scripts/test`), where the third-party clients the suite drives are installed.
pub fn test_python() -> String {
    let python = std::env::var("CODITECT_TEST_PYTHON").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../target/test-venv/bin/python"
        )
        .to_string()
    });
    assert!(
        Path::new(&python).exists(),
        "{python} is missing: scripts/test creates it (python3 -m venv target/test-venv and \
         pip install -r crates/hub/tests/clients/requirements.txt)"
    );
    python
}

/// A runtime scope no other hub of this run uses.
pub fn test_scope() -> coditect_workspaces::Scope {
    let tag: u64 = rand::random();
    coditect_workspaces::Scope::parse(&format!("t{:012x}", tag & 0xffff_ffff_ffff))
        .expect("a valid scope")
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}, Router::new()).await
}

/// A hub with `configure` applied to its defaults and `routes` mounted under the standard
/// middleware. Returns once it listens and its stores are ready.
pub async fn spawn_app_with(
    backend: Backend,
    configure: impl FnOnce(&mut Config),
    routes: Router<AppState>,
) -> TestApp {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::defaults(data_dir.path());
    config.listen = "127.0.0.1:0".parse().expect("addr");
    if backend == Backend::Postgres {
        let url = coditect_testkit::fresh_database().await;
        config.database_url = Some(coditect_hub::config::Secret::new(url));
        config.pg_pool_size = 4;
    }
    // Hubs of parallel tests share this machine's runtimes: each names its own objects,
    // so none adopts or sweeps another's.
    config.workspaces.scope = test_scope();
    config.workspaces.agent = Some(coditect_testkit::hub::monitor_binary());
    // Cheap password hashing: the suite logs in hundreds of times.
    config.auth.argon2_memory_kib = 1024;
    config.auth.argon2_iterations = 1;
    configure(&mut config);
    coditect_hub::telemetry::logging::init_with_writer(
        coditect_hub::config::LogFormat::Json,
        &config.log_level,
        || Capture,
        None,
    );
    let clock = Clock::system();
    let hub = Hub::start_with_clock(config, clock.clone())
        .await
        .expect("hub starts")
        .with_routes(routes);
    if let Some(pg) = hub.state().gate().system().shared() {
        pg.wait_ready(Duration::from_secs(30))
            .await
            .expect("postgres ready");
    }
    let addr = hub.local_addr();
    let state = hub.state().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(hub.serve(async move {
        let _ = rx.await;
    }));
    // Ready as a client would see it (first-start work done), like `/ready` says.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !state.is_bootstrapped() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    TestApp {
        addr,
        client: reqwest::Client::new(),
        state,
        clock,
        data_dir,
        shutdown: Some(tx),
        server: Some(server),
    }
}

#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: UserId,
    pub tenant: TenantId,
    pub email: String,
    pub password: String,
    pub role: Role,
}

#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
    pub session_id: String,
}

/// Everything in-process hubs logged so far (JSON lines), also echoed to stderr so a
/// failing test shows it. The subscriber is process-wide: the first hub's log level wins.
static CAPTURED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut captured) = CAPTURED.lock() {
            captured.extend_from_slice(buf);
        }
        std::io::stderr().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The captured log lines, parsed.
pub fn captured_logs() -> Vec<Value> {
    let bytes = CAPTURED.lock().map(|c| c.clone()).unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Reads a JSON body, failing the test with the raw text if it is not JSON.
pub async fn json(res: reqwest::Response) -> Value {
    let text = res.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// Asserts `res` is the error envelope with `status` and `code`; returns the message.
pub async fn assert_envelope(res: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(res.status().as_u16(), status, "status");
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert!(res.headers().contains_key("x-request-id"));
    let body = json(res).await;
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert!(
        error["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );
    let message = error["message"].as_str().expect("message").to_string();
    assert!(!message.is_empty());
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(1),
        "only `error`: {body}"
    );
    message
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The `coditect-hub` binary running as a child process with JSON logs on stderr.
pub struct HubProcess {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    pub addr: Option<SocketAddr>,
}

pub fn hub_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_coditect-hub"))
}

impl HubProcess {
    /// Starts the binary with `args` and `env` (on top of `--listen 127.0.0.1:0` and JSON
    /// logs) and waits until it logs its address, or exits.
    pub fn spawn(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> HubProcess {
        let mut cmd = Command::new(hub_binary());
        cmd.args(["--workspace-scope", test_scope().as_str()]);
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn coditect-hub");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let addr_rx = coditect_testkit::hub::follow_logs(stderr, lines.clone());
        let mut process = HubProcess {
            child,
            lines,
            addr: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(addr) = addr_rx.recv_timeout(Duration::from_millis(50)) {
                process.addr = Some(addr);
                break;
            }
            if let Ok(Some(_)) = process.child.try_wait() {
                break;
            }
        }
        process
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr.expect("hub is listening"), path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader thread drain the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Log lines parsed as JSON objects.
    pub fn json_logs(&self) -> Vec<Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn logged(&self, message: &str) -> bool {
        self.json_logs().iter().any(|l| l["message"] == message)
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (for commands that exit at once), with a clean env.
pub fn run_hub(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(hub_binary());
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run coditect-hub")
}

/// Runs the binary to completion with `stdin` piped in.
pub fn run_hub_with_stdin(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
) -> std::process::Output {
    use std::io::Write;
    let mut cmd = Command::new(hub_binary());
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn coditect-hub");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("stdin");
    }
    child.wait_with_output().expect("wait")
}

/// A second hub on `first`'s PostgreSQL database, with `configure` applied.
pub async fn replica_with(
    first: &TestApp,
    configure: impl FnOnce(&mut Config) + Send + 'static,
) -> TestApp {
    let url = first.state.config().database_url.clone();
    spawn_app_with(
        Backend::Postgres,
        move |c| {
            c.database_url = url;
            configure(c);
        },
        Router::new(),
    )
    .await
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/ws/logs?query` with a bearer header; panics unless the upgrade succeeds.
pub async fn open_tail(app: &TestApp, token: &str, query: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/ws/logs?{query}", app.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade")
        .0
}

/// The next text frame, as text (pings are answered by the client library).
pub async fn next_text(ws: &mut Ws) -> String {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("a frame within 15 s")
            .expect("the stream is open")
            .expect("a frame");
        match msg {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}
