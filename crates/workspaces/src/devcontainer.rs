//! A repository's `devcontainer.json` (the Dev Containers spec, JSON with comments) read
//! into a [`TemplateSpec`]: the common subset — `image` or `build.dockerfile`,
//! `forwardPorts` (+ `portsAttributes` labels) → apps, `containerEnv` and `remoteEnv` → env,
//! `postCreateCommand` / `postStartCommand`, `remoteUser`/`containerUser`. Every other key
//! is reported back by name, never silently ignored.

use crate::RuntimeKind;
use crate::template::{App, AppProtocol, TemplateSpec};
use serde_json::{Map, Value};

/// What was read, and what was not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devcontainer {
    pub spec: TemplateSpec,
    /// `name`, when given.
    pub name: Option<String>,
    /// `build.dockerfile` and `build.context`: the image must be built from these (on the
    /// host; nothing is pulled) and named in `spec.image`.
    pub dockerfile: Option<String>,
    pub context: Option<String>,
    /// The user the workspace's processes should run as (`remoteUser`, else `containerUser`).
    pub user: Option<String>,
    /// Keys of the file this does not support, sorted (`customizations`, `features`, ...).
    pub unsupported: Vec<String>,
}

const MAX_FILE: usize = 256 * 1024;

pub fn parse(text: &str) -> Result<Devcontainer, String> {
    if text.len() > MAX_FILE {
        return Err(format!("devcontainer.json: over {MAX_FILE} bytes"));
    }
    let options = jsonc_parser::ParseOptions {
        allow_comments: true,
        allow_trailing_commas: true,
        allow_loose_object_property_names: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        ..Default::default()
    };
    let value: Value = jsonc_parser::parse_to_serde_value(text, &options)
        .map_err(|e| format!("devcontainer.json: {e}"))?;
    let Value::Object(root) = value else {
        return Err("devcontainer.json: the file must hold an object".into());
    };
    let mut out = Devcontainer {
        spec: TemplateSpec {
            runtime: RuntimeKind::Docker,
            ..TemplateSpec::default()
        },
        name: None,
        dockerfile: None,
        context: None,
        user: None,
        unsupported: Vec::new(),
    };
    let mut labels: Map<String, Value> = Map::new();
    let mut ports: Vec<u16> = Vec::new();
    // Keys come sorted: containerEnv is read before remoteEnv, which overrides it.
    for (key, value) in &root {
        match key.as_str() {
            "$schema" => {}
            "name" => out.name = Some(string(key, value)?),
            "image" => out.spec.image = Some(string(key, value)?),
            "build" => read_build(value, &mut out)?,
            "forwardPorts" => {
                let Value::Array(items) = value else {
                    return Err("forwardPorts: must be an array".into());
                };
                for item in items {
                    ports.push(port_of(item)?);
                }
            }
            "portsAttributes" => {
                let Value::Object(attrs) = value else {
                    return Err("portsAttributes: must be an object".into());
                };
                labels = attrs.clone();
            }
            "containerEnv" | "remoteEnv" => {
                let Value::Object(vars) = value else {
                    return Err(format!("{key}: must be an object"));
                };
                for (k, v) in vars {
                    // remoteEnv may unset with null.
                    match v {
                        Value::Null => {
                            out.spec.env.remove(k);
                        }
                        _ => {
                            out.spec.env.insert(k.clone(), scalar(k, v)?);
                        }
                    }
                }
            }
            "postCreateCommand" => out.spec.post_create_command = Some(command(key, value)?),
            "postStartCommand" => out.spec.post_start_command = Some(command(key, value)?),
            "remoteUser" => out.user = Some(string(key, value)?),
            "containerUser" => {
                let user = string(key, value)?;
                out.user.get_or_insert(user);
            }
            other => out.unsupported.push(other.to_string()),
        }
    }
    if out.spec.image.is_some() && out.dockerfile.is_some() {
        return Err("devcontainer.json: give image or build.dockerfile, not both".into());
    }
    for port in ports {
        let label = labels
            .get(&port.to_string())
            .and_then(|a| a.get("label"))
            .and_then(Value::as_str);
        let name = label.map(slug).filter(|s| !s.is_empty());
        let name = name.unwrap_or_else(|| format!("port-{port}"));
        let name = if out.spec.apps.iter().any(|a| a.name == name) {
            format!("port-{port}")
        } else {
            name
        };
        out.spec.apps.push(App {
            name,
            port,
            protocol: AppProtocol::Http,
            command: None,
        });
    }
    out.spec
        .validate()
        .map_err(|e| format!("devcontainer.json: {e}"))?;
    Ok(out)
}

fn read_build(value: &Value, out: &mut Devcontainer) -> Result<(), String> {
    let Value::Object(build) = value else {
        return Err("build: must be an object".into());
    };
    for (key, value) in build {
        match key.as_str() {
            "dockerfile" => out.dockerfile = Some(string("build.dockerfile", value)?),
            "context" => out.context = Some(string("build.context", value)?),
            other => out.unsupported.push(format!("build.{other}")),
        }
    }
    if out.dockerfile.is_none() {
        return Err("build: needs a dockerfile".into());
    }
    Ok(())
}

fn string(key: &str, value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        _ => Err(format!("{key}: must be a string")),
    }
}

/// An environment value: numbers and booleans are written as text, as the spec's tools do.
fn scalar(key: &str, value: &Value) -> Result<String, String> {
    match value {
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => string(key, value),
    }
}

/// A lifecycle command: a shell string, or an array run as one command (each argument
/// quoted). The object form (several commands in parallel) is not supported.
fn command(key: &str, value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Array(args) => {
            let words: Result<Vec<String>, String> = args
                .iter()
                .map(|a| scalar(key, a).map(|w| shell_quote(&w)))
                .collect();
            Ok(words?.join(" "))
        }
        Value::Object(_) => Err(format!(
            "{key}: the object form (parallel commands) is not supported; use a string"
        )),
        _ => Err(format!("{key}: must be a string or an array")),
    }
}

fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@".contains(&b))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `3000`, `"3000"` or `"localhost:3000"` (the host part must be local).
fn port_of(item: &Value) -> Result<u16, String> {
    let text = match item {
        Value::Number(n) => n.to_string(),
        Value::String(s) => match s.rsplit_once(':') {
            Some(("localhost" | "127.0.0.1", port)) => port.to_string(),
            Some((host, _)) => {
                return Err(format!(
                    "forwardPorts: {s:?} names the host {host:?}; only the workspace's own ports are forwarded"
                ));
            }
            None => s.clone(),
        },
        _ => return Err("forwardPorts: each item is a port number".into()),
    };
    text.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("forwardPorts: {text:?} is not a port (1 to 65535)"))
}

fn slug(label: &str) -> String {
    let mut s: String = label
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    s.trim_matches('-')
        .chars()
        .take(32)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_subset_is_read_and_the_rest_reported() {
        let text = r#"{
            // A typical file, with comments and a trailing comma.
            "name": "Rust API",
            "image": "coditect-workspace:latest",
            "forwardPorts": [3000, "localhost:8080", "9229"],
            "portsAttributes": {"3000": {"label": "Web UI"}, "9229": {"label": "Web UI"}},
            "containerEnv": {"RUST_LOG": "debug", "PORT": 3000},
            "remoteEnv": {"PORT": null, "EDITOR": "vim"},
            "postCreateCommand": ["cargo", "fetch", "--locked"],
            "postStartCommand": "echo 'up' > /tmp/up",
            "remoteUser": "coder",
            "features": {"ghcr.io/devcontainers/features/node:1": {}},
            "customizations": {"vscode": {}},
            "mounts": [],
        }"#;
        let d = parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.name.as_deref(), Some("Rust API"));
        assert_eq!(d.spec.runtime, RuntimeKind::Docker);
        assert_eq!(d.spec.image.as_deref(), Some("coditect-workspace:latest"));
        let apps: Vec<(&str, u16)> = d
            .spec
            .apps
            .iter()
            .map(|a| (a.name.as_str(), a.port))
            .collect();
        assert_eq!(
            apps,
            [("web-ui", 3000), ("port-8080", 8080), ("port-9229", 9229)]
        );
        assert_eq!(
            d.spec.env.get("RUST_LOG").map(String::as_str),
            Some("debug")
        );
        assert_eq!(d.spec.env.get("PORT"), None, "remoteEnv null unsets");
        assert_eq!(d.spec.env.get("EDITOR").map(String::as_str), Some("vim"));
        assert_eq!(
            d.spec.post_create_command.as_deref(),
            Some("cargo fetch --locked")
        );
        assert_eq!(
            d.spec.post_start_command.as_deref(),
            Some("echo 'up' > /tmp/up")
        );
        assert_eq!(d.user.as_deref(), Some("coder"));
        assert_eq!(d.unsupported, ["customizations", "features", "mounts"]);
    }

    #[test]
    fn a_dockerfile_build_and_the_errors() {
        let d = parse(r#"{"build": {"dockerfile": "Dockerfile", "context": "..", "args": {}}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.dockerfile.as_deref(), Some("Dockerfile"));
        assert_eq!(d.context.as_deref(), Some(".."));
        assert_eq!(d.unsupported, ["build.args"]);
        for (bad, says) in [
            ("[]", "must hold an object"),
            ("{\"image\": ", "devcontainer.json"),
            (
                r#"{"image": "a", "build": {"dockerfile": "D"}}"#,
                "not both",
            ),
            (r#"{"build": {}}"#, "needs a dockerfile"),
            (r#"{"forwardPorts": [70000]}"#, "not a port"),
            (r#"{"forwardPorts": ["db:5432"]}"#, "names the host"),
            (r#"{"postStartCommand": {"a": "x"}}"#, "object form"),
            (r#"{"containerEnv": {"CODITECT_X": "1"}}"#, "set by the hub"),
            (r#"{"image": 7}"#, "must be a string"),
            (r#"{"image": "no spaces"}"#, "not an image reference"),
        ] {
            let e = parse(bad).err().unwrap_or_default();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
