//! The OpenAPI document against the running hub: it is the committed snapshot, every
//! operation in it reaches its handler (and no other method does), the statuses seen are
//! documented, and the API browser is served from inside the binary.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use common::{Backend, TestApp, hub_binary, json, spawn_app};
use reqwest::Method;
use serde_json::Value;
use std::path::PathBuf;

both_backends!(every_documented_operation_reaches_its_handler_and_no_other_method_does);

fn snapshot_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

/// The document changes only with a visible diff of `docs/openapi.json`: run with
/// `CODITECT_BLESS=1` to rewrite the snapshot after an API change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_is_the_committed_snapshot() {
    let app = spawn_app(Backend::Sqlite).await;
    let res = app.get("/api/openapi.json").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let served = res.text().await.unwrap();
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");

    // `coditect-hub openapi` prints the same bytes, without a store or a port.
    let printed = std::process::Command::new(hub_binary())
        .arg("openapi")
        .output()
        .unwrap();
    assert!(printed.status.success());
    assert_eq!(String::from_utf8(printed.stdout).unwrap(), served);

    let path = snapshot_path();
    if std::env::var_os("CODITECT_BLESS").is_some() {
        std::fs::write(&path, &served).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == served,
        "the API changed: docs/openapi.json differs from what the hub serves; review the \
         change and run `CODITECT_BLESS=1 cargo test -p coditect-hub --test openapi` to \
         update the snapshot"
    );
}

/// A value for a path parameter: a fresh UUID for ids, else a plain word (`index.html`
/// for the API browser's assets).
fn path_value(param: &Value, doc: &Value) -> String {
    let schema = resolve(&param["schema"], doc);
    if schema["format"] == "uuid" {
        uuid::Uuid::now_v7().to_string()
    } else {
        "index.html".into()
    }
}

fn resolve(schema: &Value, doc: &Value) -> Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let mut at = doc;
            for part in r.trim_start_matches("#/").split('/') {
                at = &at[part];
            }
            at.clone()
        }
        None => schema.clone(),
    }
}

fn concrete(path: &str, op: &Value, doc: &Value) -> String {
    let mut out = path.to_string();
    for param in op["parameters"].as_array().into_iter().flatten() {
        if param["in"] == "path" {
            let name = param["name"].as_str().unwrap();
            out = out.replace(&format!("{{{name}}}"), &path_value(param, doc));
        }
    }
    out
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

async fn every_documented_operation_reaches_its_handler_and_no_other_method_does(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let doc = json(app.get("/api/openapi.json").await).await;
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        let any_op = item.as_object().unwrap().values().next().unwrap();
        let url = app.url(&concrete(path, any_op, &doc));
        for method in METHODS {
            let res = client
                .request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    &url,
                )
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body = res.text().await.unwrap_or_default();
            match item.get(method) {
                Some(op) => {
                    operations += 1;
                    // Anonymous, no body: whatever the handler says, never the router's
                    // "no route" nor 405, and always a status the document lists.
                    assert_ne!(status, 405, "{method} {path}: {body}");
                    assert!(
                        !body.contains("no route for"),
                        "{method} {path} is documented but not routed: {body}"
                    );
                    let documented = op["responses"].get(status.to_string()).is_some();
                    assert!(
                        documented,
                        "{method} {path} answered {status}, undocumented: {body}"
                    );
                }
                None => assert_eq!(
                    status, 405,
                    "{method} {path} is routed but undocumented: {body}"
                ),
            }
        }
    }
    assert!(operations >= 38, "{operations} operations");
}

/// `/api/docs` is Swagger UI from inside the binary: every asset its page loads is served
/// by the hub, nothing comes from elsewhere, and it reads this hub's document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_browser_is_served_from_the_binary() {
    let app: TestApp = spawn_app(Backend::Sqlite).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = client.get(app.url("/api/docs")).send().await.unwrap();
    assert_eq!(res.status(), 308);
    assert_eq!(res.headers()["location"], "/api/docs/");

    let res = app.get("/api/docs/").await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = res.text().await.unwrap();
    assert!(page.contains("swagger-ui"), "{page}");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page loads something from elsewhere: {page}"
    );
    let mut assets = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in page.split(attr).skip(1) {
            let target = part.split('"').next().unwrap();
            assets.push(target.trim_start_matches("./").to_string());
        }
    }
    assert!(assets.len() >= 3, "{assets:?}");
    for asset in &assets {
        let res = app.get(&format!("/api/docs/{asset}")).await;
        assert_eq!(res.status(), 200, "{asset}");
    }
    let init = app.get("/api/docs/swagger-initializer.js").await;
    assert_eq!(init.status(), 200);
    assert!(init.text().await.unwrap().contains("/api/openapi.json"));
    let missing = app.get("/api/docs/nothing-here.js").await;
    common::assert_envelope(missing, 404, "NOT_FOUND").await;
}
