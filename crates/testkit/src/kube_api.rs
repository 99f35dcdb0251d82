//! A stand-in of the Kubernetes API server (no cluster runs here): a real HTTP server on
//! a loopback port that keeps objects in memory by their URL and answers the calls a
//! client of core objects makes — server-side apply (`PATCH` with
//! `application/apply-patch+yaml`), create (`POST`, 409 when it exists), get, delete,
//! list with a label selector (also across namespaces), `/version` — with the API
//! server's `Status` bodies for errors. Every request is recorded (method, path with
//! query, body) so a test can assert exactly what a driver asked for.
//!
//! Nothing here schedules or runs anything: a test plays the kubelet by setting a Pod's
//! status ([`FakeKubeApi::set_pod_status`]) or by watching for Pods
//! ([`FakeKubeApi::objects`]) and running what they describe itself.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One request as the fake API server read it.
#[derive(Debug, Clone)]
pub struct KubeRequest {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    pub content_type: Option<String>,
    pub body: Option<Value>,
}

impl KubeRequest {
    /// `"METHOD path?query"`, for comparing sequences.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.uri)
    }
}

#[derive(Default)]
struct Inner {
    /// Object path (e.g. `/api/v1/namespaces/ns/pods/name`) → object.
    objects: BTreeMap<String, Value>,
    requests: Vec<KubeRequest>,
    /// Answer every request with 503 (an API server that is down behind its load balancer).
    unavailable: bool,
    /// Deleting a Pod only marks it (`deletionTimestamp`) until the test removes it.
    linger_pods: bool,
    next_uid: u64,
}

#[derive(Clone)]
pub struct FakeKubeApi {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

/// A kubeconfig whose one cluster is at `server`, with no credentials.
pub fn write_kubeconfig(path: &std::path::Path, server: &str) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n\
         users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
         current-context: fake\n"
    );
    std::fs::write(path, text).expect("write the kubeconfig");
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

impl FakeKubeApi {
    pub async fn start() -> FakeKubeApi {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let url = crate::serve(router, "the Kubernetes API stand-in").await;
        FakeKubeApi { url, inner }
    }

    /// A kubeconfig naming this server (no credentials: it asks for none), written to `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path) {
        write_kubeconfig(path, &self.url);
    }

    /// Takes the requests recorded so far.
    pub fn take_requests(&self) -> Vec<KubeRequest> {
        std::mem::take(&mut lock(&self.inner).requests)
    }

    /// Every stored object whose path starts with `prefix`.
    pub fn objects(&self, prefix: &str) -> Vec<(String, Value)> {
        lock(&self.inner)
            .objects
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn object(&self, path: &str) -> Option<Value> {
        lock(&self.inner).objects.get(path).cloned()
    }

    /// Plays the kubelet: replaces the `status` of the Pod at `path`.
    pub fn set_pod_status(&self, path: &str, status: Value) {
        if let Some(pod) = lock(&self.inner).objects.get_mut(path) {
            pod["status"] = status;
        }
    }

    /// Removes an object outright (a Pod whose termination finished).
    pub fn remove(&self, path: &str) {
        lock(&self.inner).objects.remove(path);
    }

    pub fn set_unavailable(&self, down: bool) {
        lock(&self.inner).unavailable = down;
    }

    pub fn set_linger_pods(&self, linger: bool) {
        lock(&self.inner).linger_pods = linger;
    }
}

/// An object's path as its collection's path and its name.
fn split_object(path: &str) -> Option<(&str, &str)> {
    let (collection, name) = path.rsplit_once('/')?;
    Some((collection, name))
}

/// Whether an object's labels satisfy an equality selector (`k=v,k2=v2`).
fn matches_selector(obj: &Value, selector: Option<&str>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn query_param(uri: &Uri, key: &str) -> Option<String> {
    let url = reqwest::Url::parse(&format!("http://api{uri}")).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The kind of a list path (`/api/v1/pods`, `/api/v1/namespaces/ns/pods`,
/// `/apis/g/v/namespaces/ns/kind`), `None` for an object's path.
fn list_kind(path: &str) -> Option<&str> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let list = match parts.first() {
        Some(&"api") => parts.len() == 3 || (parts.len() == 5 && parts[2] == "namespaces"),
        Some(&"apis") => parts.len() == 4 || (parts.len() == 6 && parts[3] == "namespaces"),
        _ => false,
    };
    if list { parts.last().copied() } else { None }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let parsed: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    let mut g = lock(&inner);
    g.requests.push(KubeRequest {
        method: method.to_string(),
        uri: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        content_type: content_type.clone(),
        body: parsed.clone(),
    });
    if g.unavailable {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the server is currently unable to handle the request".into(),
        );
    }
    let path = uri.path().to_string();
    if path == "/version" {
        return axum::Json(json!({
            "major": "1", "minor": "34", "gitVersion": "v1.34.0-fake", "gitCommit": "0",
            "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
            "compiler": "gc", "platform": "linux/amd64",
        }))
        .into_response();
    }
    match method {
        Method::GET if list_kind(&path).is_some() => {
            let kind = list_kind(&path).unwrap_or_default().to_string();
            let selector = query_param(&uri, "labelSelector");
            let namespaced = path.contains("/namespaces/");
            let items: Vec<Value> = g
                .objects
                .iter()
                .filter(|(k, _)| {
                    let (collection, _) = split_object(k).unwrap_or_default();
                    if namespaced {
                        collection == path
                    } else {
                        collection.ends_with(&format!("/{kind}"))
                    }
                })
                .map(|(_, v)| v.clone())
                .filter(|v| matches_selector(v, selector.as_deref()))
                .collect();
            axum::Json(json!({
                "apiVersion": "v1", "kind": "List", "metadata": { "resourceVersion": "1" }, "items": items,
            }))
            .into_response()
        }
        Method::GET => match g.objects.get(&path) {
            Some(obj) => axum::Json(obj.clone()).into_response(),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{path} not found"),
            ),
        },
        Method::POST => {
            let Some(mut obj) = parsed else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "no object in the body".into(),
                );
            };
            let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "metadata.name: Required value".into(),
                );
            };
            let at = format!("{path}/{name}");
            if g.objects.contains_key(&at) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{name} already exists"),
                );
            }
            g.next_uid += 1;
            obj["metadata"]["uid"] = json!(format!("uid-{}", g.next_uid));
            if path.ends_with("/pods") {
                obj["status"] = json!({ "phase": "Pending" });
            }
            g.objects.insert(at, obj.clone());
            (StatusCode::CREATED, axum::Json(obj)).into_response()
        }
        Method::PATCH => {
            let Some(mut obj) = parsed else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "no object in the body".into(),
                );
            };
            if content_type.as_deref() != Some("application/apply-patch+yaml") {
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    "only server-side apply is served here".into(),
                );
            }
            if query_param(&uri, "fieldManager").is_none() {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "fieldManager is required for apply patch".into(),
                );
            }
            let created = !g.objects.contains_key(&path);
            if let Some(old) = g.objects.get(&path) {
                obj["metadata"]["uid"] = old["metadata"]["uid"].clone();
            } else {
                g.next_uid += 1;
                obj["metadata"]["uid"] = json!(format!("uid-{}", g.next_uid));
            }
            g.objects.insert(path, obj.clone());
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (code, axum::Json(obj)).into_response()
        }
        Method::DELETE => {
            let linger = g.linger_pods && path.contains("/pods/");
            match g.objects.get_mut(&path) {
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{path} not found"),
                ),
                Some(obj) if linger => {
                    obj["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                    axum::Json(obj.clone()).into_response()
                }
                Some(_) => {
                    let obj = g.objects.remove(&path).unwrap_or_default();
                    axum::Json(obj).into_response()
                }
            }
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not served here"),
        ),
    }
}

/// Plays the kubelet of one node for a [`FakeKubeApi`]: every Pod that is pending is run
/// as a local process — its container's command (the real `codi-monitor agent`, at
/// `agent`), its environment, its home on a directory per volume claim (`root/<claim>`,
/// so it persists
/// across Pods as a claim does), its secret volume copied to a directory (re-copied every
/// tick, as the kubelet refreshes secrets) — and its status is set `Running`; a process
/// that exits makes its Pod `Failed` with the exit code; a Pod deleted (or marked) has its
/// process killed. `dns` maps a URL prefix in the environment to where it really is
/// (cluster DNS: the hub's Service name → the test hub's loopback address).
pub struct Kubelet {
    pids: Arc<Mutex<BTreeMap<String, u32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Kubelet {
    pub fn start(
        api: &FakeKubeApi,
        agent: std::path::PathBuf,
        root: std::path::PathBuf,
        dns: (String, String),
    ) -> Kubelet {
        let api = api.clone();
        let pids = Arc::new(Mutex::new(BTreeMap::new()));
        let seen = pids.clone();
        let task = tokio::spawn(async move {
            let mut running: BTreeMap<String, (String, tokio::process::Child)> = BTreeMap::new();
            loop {
                let pods = api.objects("/api/v1/namespaces/");
                let pods: BTreeMap<String, Value> = pods
                    .into_iter()
                    .filter(|(k, _)| k.contains("/pods/"))
                    .collect();
                // Gone, marked for deletion, or replaced by another Pod of the same name.
                let stale: Vec<String> = running
                    .iter()
                    .filter(|(path, (uid, _))| {
                        pods.get(*path).is_none_or(|p| {
                            !p["metadata"]["deletionTimestamp"].is_null()
                                || p["metadata"]["uid"].as_str() != Some(uid.as_str())
                        })
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for path in stale {
                    if let Some((_, mut child)) = running.remove(&path) {
                        let _ = child.kill().await;
                    }
                    if let Ok(mut p) = seen.lock() {
                        p.remove(&path);
                    }
                }
                for (path, pod) in &pods {
                    if !pod["metadata"]["deletionTimestamp"].is_null() {
                        continue;
                    }
                    copy_secrets(&api, pod, &root);
                    if let Some((_, child)) = running.get_mut(path) {
                        if let Ok(Some(exit)) = child.try_wait() {
                            let code = exit.code().unwrap_or(137);
                            api.set_pod_status(path, json!({"phase": "Failed", "containerStatuses": [{
                                "name": "workspace", "ready": false, "restartCount": 0, "image": "", "imageID": "",
                                "state": {"terminated": {"exitCode": code, "reason": "Error"}}}]}));
                            running.remove(path);
                            if let Ok(mut p) = seen.lock() {
                                p.remove(path);
                            }
                        }
                        continue;
                    }
                    if pod["status"]["phase"] != "Pending" {
                        continue;
                    }
                    let Some(child) = run_pod(pod, &agent, &root, &dns) else {
                        continue;
                    };
                    if let (Some(pid), Ok(mut p)) = (child.id(), seen.lock()) {
                        p.insert(path.clone(), pid);
                    }
                    let uid = pod["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    running.insert(path.clone(), (uid, child));
                    api.set_pod_status(path, json!({"phase": "Running", "containerStatuses": [{
                        "name": "workspace", "ready": true, "restartCount": 0, "image": "", "imageID": "",
                        "state": {"running": {}}}]}));
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
        Kubelet { pids, task }
    }

    /// The process of the Pod at `path`, while it runs.
    pub fn pid(&self, path: &str) -> Option<u32> {
        self.pids.lock().ok()?.get(path).copied()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        // Its children are killed on drop (kill_on_drop).
        self.task.abort();
    }
}

/// A Pod's volume of `kind` (`persistentVolumeClaim` → claimName, `secret` → secretName).
fn volume_source(pod: &Value, kind: &str, field: &str) -> Option<String> {
    pod["spec"]["volumes"]
        .as_array()?
        .iter()
        .find_map(|v| v[kind][field].as_str().map(str::to_string))
}

fn copy_secrets(api: &FakeKubeApi, pod: &Value, root: &std::path::Path) {
    use base64::Engine;
    let (Some(ns), Some(name)) = (
        pod["metadata"]["namespace"].as_str(),
        volume_source(pod, "secret", "secretName"),
    ) else {
        return;
    };
    let Some(secret) = api.object(&format!("/api/v1/namespaces/{ns}/secrets/{name}")) else {
        return;
    };
    let dir = root.join("secrets").join(&name);
    let _ = std::fs::create_dir_all(&dir);
    for (file, data) in secret["data"].as_object().into_iter().flatten() {
        if let Some(bytes) = data
            .as_str()
            .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
        {
            let tmp = dir.join(format!("{file}.tmp"));
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, dir.join(file));
            }
        }
    }
}

fn run_pod(
    pod: &Value,
    agent: &std::path::Path,
    root: &std::path::Path,
    dns: &(String, String),
) -> Option<tokio::process::Child> {
    let container = &pod["spec"]["containers"][0];
    let claim = volume_source(pod, "persistentVolumeClaim", "claimName")?;
    let secret = volume_source(pod, "secret", "secretName")?;
    // Short: the agent's own socket lives in the home (sun_path is 108 bytes).
    let home = root.join(claim);
    std::fs::create_dir_all(&home).ok()?;
    let mounts = container["volumeMounts"].as_array()?;
    let mount_of = |name: &str| {
        mounts
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["mountPath"].as_str())
            .map(str::to_string)
    };
    let (home_at, secret_at) = (mount_of("home")?, mount_of("agent-key")?);
    let secret_dir = root.join("secrets").join(secret);
    let path_of = |v: &str| {
        if let Some(rest) = v.strip_prefix(&secret_at) {
            format!("{}{rest}", secret_dir.display())
        } else if let Some(rest) = v.strip_prefix(&home_at) {
            format!("{}{rest}", home.display())
        } else if let Some(rest) = v.strip_prefix(&dns.0) {
            format!("{}{rest}", dns.1)
        } else {
            v.to_string()
        }
    };
    let mut cmd = tokio::process::Command::new(agent);
    // The image's entrypoint is `codi-monitor agent`: the binary is the test's.
    cmd.args(
        container["command"]
            .as_array()?
            .iter()
            .skip(1)
            .filter_map(Value::as_str),
    );
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(&home)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // Its output, as `kubectl logs` would show it: root/logs/<pod>.log.
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs).ok()?;
    let name = pod["metadata"]["name"].as_str().unwrap_or("pod");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("{name}.log")))
        .ok()?;
    cmd.stdout(log.try_clone().ok()?).stderr(log);
    for e in container["env"].as_array()? {
        if let (Some(k), Some(v)) = (e["name"].as_str(), e["value"].as_str()) {
            cmd.env(k, path_of(v));
        }
    }
    cmd.spawn().ok()
}
