//! `codi2 ws …`: workspaces on the hub. A workspace is named by its id or its name (looked
//! up in the tenant's list). Changes are asked of the hub's orchestrator, which answers at
//! once; `--wait` follows the workspace until it is where it was asked to be (or failed).

use crate::args::{HubArg, WsCommand, WsTarget};
use crate::exit::{CliError, Result};
use crate::hub::Hub;
use crate::output::Out;
use coditect_monitor::config::Config;
use reqwest::Method;
use serde_json::{Value, json};
use std::io::Read;
use std::time::{Duration, Instant};

/// How long `--wait` waits.
const WAIT_FOR: Duration = Duration::from_secs(300);

pub async fn run(cmd: WsCommand, config: &Config, out: Out) -> Result<()> {
    match cmd {
        WsCommand::List { hub } => list(&hub, config, out).await,
        WsCommand::Create {
            name,
            template,
            no_start,
            wait,
            hub,
        } => {
            let mut hub = Hub::resolve(hub.hub.as_deref(), config, out)?;
            let mut body = json!({"name": name, "start": !no_start});
            if let Some(t) = template {
                body["template_id"] = Value::String(t);
            }
            let (ws, _) = hub
                .call_json(Method::POST, "/api/v1/workspaces", &[], Some(&body), &[])
                .await?;
            let until = (wait && !no_start).then(|| Until::after("create", &ws));
            finish(&mut hub, out, ws, until).await
        }
        WsCommand::Start(t) => transition(t, "start", config, out).await,
        WsCommand::Stop(t) => transition(t, "stop", config, out).await,
        WsCommand::Restart(t) => transition(t, "restart", config, out).await,
        WsCommand::Delete(t) => transition(t, "delete", config, out).await,
        WsCommand::State {
            workspace,
            set,
            if_match,
            hub,
        } => state(&hub, &workspace, set, if_match, config, out).await,
    }
}

async fn list(hub: &HubArg, config: &Config, out: Out) -> Result<()> {
    let mut hub = Hub::resolve(hub.hub.as_deref(), config, out)?;
    let items = all(&mut hub).await?;
    if out.json {
        return out.json_line(&Value::Array(items));
    }
    out.line(&format!(
        "{:<36}  {:<24}  {:<9}  {:<10}  {:>4}",
        "ID", "NAME", "STATUS", "RUNTIME", "GEN"
    ))?;
    for w in &items {
        out.line(&format!(
            "{:<36}  {:<24}  {:<9}  {:<10}  {:>4}",
            text(w, "id"),
            text(w, "name"),
            text(w, "status"),
            text(w, "runtime"),
            w["generation"].as_u64().unwrap_or(0)
        ))?;
    }
    Ok(())
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("-")
}

/// Every workspace of the tenant, page by page.
async fn all(hub: &mut Hub) -> Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("limit", "1000".to_string())];
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let page = hub.get_json("/api/v1/workspaces", &query).await?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(items),
        }
    }
}

/// The id of the workspace named `which` (an id, or a name in the tenant).
async fn resolve(hub: &mut Hub, which: &str) -> Result<String> {
    if uuid::Uuid::parse_str(which).is_ok() {
        return Ok(which.to_string());
    }
    let found: Vec<Value> = all(hub)
        .await?
        .into_iter()
        .filter(|w| w["name"] == which)
        .collect();
    match found.as_slice() {
        [one] => Ok(text(one, "id").to_string()),
        [] => Err(CliError::not_found(format!("no workspace named {which:?}"))),
        _ => Err(CliError::usage(format!(
            "several workspaces are named {which:?}: give the id"
        ))),
    }
}

async fn transition(t: WsTarget, action: &str, config: &Config, out: Out) -> Result<()> {
    let mut hub = Hub::resolve(t.hub.hub.as_deref(), config, out)?;
    let id = resolve(&mut hub, &t.workspace).await?;
    let (method, path) = match action {
        "delete" => (Method::DELETE, format!("/api/v1/workspaces/{id}")),
        other => (Method::POST, format!("/api/v1/workspaces/{id}/{other}")),
    };
    let before = hub
        .get_json(&format!("/api/v1/workspaces/{id}"), &[])
        .await?;
    let until = Until::after(action, &before);
    let (ws, _) = hub.call_json(method, &path, &[], None, &[]).await?;
    finish(&mut hub, out, ws, t.wait.then_some(until)).await
}

/// What `--wait` waits for.
#[derive(Debug, Clone, Copy)]
enum Until {
    /// Running on a launch after this generation (a start, a restart, a create).
    RunningAfter(u64),
    /// Already running: nothing to wait for.
    Running,
    Stopped,
    Deleted,
}

impl Until {
    fn after(action: &str, ws: &Value) -> Until {
        let generation = ws["generation"].as_u64().unwrap_or(0);
        match action {
            "stop" => Until::Stopped,
            "delete" => Until::Deleted,
            "start" if ws["status"] == "running" => Until::Running,
            _ => Until::RunningAfter(generation),
        }
    }

    fn reached(self, ws: &Value) -> bool {
        let generation = ws["generation"].as_u64().unwrap_or(0);
        match self {
            Until::RunningAfter(g) => ws["status"] == "running" && generation > g,
            Until::Running => ws["status"] == "running",
            Until::Stopped => ws["status"] == "stopped",
            Until::Deleted => ws["status"] == "deleted",
        }
    }
}

/// Prints the workspace, after waiting for `until` when asked.
async fn finish(hub: &mut Hub, out: Out, mut ws: Value, until: Option<Until>) -> Result<()> {
    let id = text(&ws, "id").to_string();
    if let Some(until) = until {
        let deadline = Instant::now() + WAIT_FOR;
        while !until.reached(&ws) {
            if ws["status"] == "failed" && !matches!(until, Until::Stopped | Until::Deleted) {
                return Err(CliError::failure(format!(
                    "workspace {id} failed: {}",
                    text(&ws, "status_reason")
                )));
            }
            if Instant::now() > deadline {
                return Err(CliError::failure(format!(
                    "workspace {id} is still {} after {}s",
                    text(&ws, "status"),
                    WAIT_FOR.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            match hub.get_json(&format!("/api/v1/workspaces/{id}"), &[]).await {
                Ok(now) => ws = now,
                Err(e)
                    if matches!(until, Until::Deleted) && e.exit == crate::exit::Exit::NotFound =>
                {
                    ws["status"] = json!("deleted");
                }
                Err(e) => return Err(e),
            }
        }
    }
    let human = format!(
        "{}  {}  {} (wanted {})",
        id,
        text(&ws, "name"),
        text(&ws, "status"),
        text(&ws, "desired")
    );
    out.result(&human, ws)
}

async fn state(
    hub: &HubArg,
    which: &str,
    set: Option<String>,
    if_match: Option<String>,
    config: &Config,
    out: Out,
) -> Result<()> {
    let mut hub = Hub::resolve(hub.hub.as_deref(), config, out)?;
    let id = resolve(&mut hub, which).await?;
    let path = format!("/api/v1/workspaces/{id}/state");
    let Some(raw) = set else {
        let (value, etag) = hub.call_json(Method::GET, &path, &[], None, &[]).await?;
        let etag = etag.unwrap_or_default();
        if out.json {
            return out.json_line(&json!({"etag": etag, "state": value}));
        }
        out.tell(&format!("etag {etag}"));
        return out.line(&serde_json::to_string_pretty(&value).unwrap_or_default());
    };
    let raw = if raw == "-" {
        let mut text = String::new();
        std::io::stdin()
            .take(64 * 1024 + 1)
            .read_to_string(&mut text)
            .map_err(|e| CliError::usage(format!("cannot read the state from stdin: {e}")))?;
        text
    } else {
        raw
    };
    let value: Value =
        serde_json::from_str(&raw).map_err(|e| CliError::usage(format!("--set: not JSON: {e}")))?;
    if !value.is_object() {
        return Err(CliError::usage("--set: the state is a JSON object"));
    }
    let etag = match if_match {
        Some(v) if v.starts_with('"') || v == "*" => v,
        Some(v) => format!("\"{v}\""),
        None => "*".into(),
    };
    let (answer, new_etag) = hub
        .call_json(Method::PUT, &path, &[], Some(&value), &[("if-match", etag)])
        .await?;
    let version = answer["version"].as_u64().unwrap_or(0);
    out.result(
        &format!("state saved (etag {})", new_etag.unwrap_or_default()),
        json!({"version": version}),
    )
}
