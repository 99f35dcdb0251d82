//! What a workspace template says: the runtime, what to run, its resources, environment,
//! apps, idle timeout and pool size. Parsed once, when an admin writes a template or a
//! `devcontainer.json` is read ([`crate::devcontainer`]); everything after holds a valid one.

use crate::{Resources, RuntimeKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplateSpec {
    pub runtime: RuntimeKind,
    /// The image (docker, kubernetes); `None`: the hub's default workspace image.
    pub image: Option<String>,
    /// A shell command the agent runs once the workspace is ready.
    pub command: Option<String>,
    /// Run once, on the first start of a workspace (devcontainer `postCreateCommand`).
    pub post_create_command: Option<String>,
    /// Run on every start (devcontainer `postStartCommand`).
    pub post_start_command: Option<String>,
    pub resources: Resources,
    pub env: BTreeMap<String, String>,
    pub apps: Vec<App>,
    /// Stopped after this long without activity; `None`: never.
    pub idle_timeout_secs: Option<u64>,
    /// Warm instances kept ready for this template.
    pub pool_size: u32,
    /// A user's workspace of this template is started when they log in.
    pub start_on_login: bool,
    /// `false`: no network inside at all.
    pub network: bool,
    /// Cloned into the home on the first start (by the hub; see [`crate::git`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<crate::git::Repository>,
}

impl Default for TemplateSpec {
    fn default() -> TemplateSpec {
        TemplateSpec {
            runtime: RuntimeKind::Process,
            image: None,
            command: None,
            post_create_command: None,
            post_start_command: None,
            resources: Resources::default(),
            env: BTreeMap::new(),
            apps: Vec::new(),
            idle_timeout_secs: None,
            pool_size: 0,
            start_on_login: false,
            network: true,
            repository: None,
        }
    }
}

/// Something a workspace serves, reached through the hub's proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// 1 to 32 lower-case letters, digits or `-`.
    pub name: String,
    pub port: u16,
    #[serde(default)]
    pub protocol: AppProtocol,
    /// The command that serves it, started by the agent.
    #[serde(default)]
    pub command: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    #[default]
    Http,
    Websocket,
}

/// Upper bounds that keep one template from asking for a machine's worth.
pub const MAX_APPS: usize = 32;
pub const MAX_ENV: usize = 128;
pub const MAX_POOL: u32 = 100;
const MAX_TEXT: usize = 16 * 1024;

impl TemplateSpec {
    /// Every rule a template must follow; the first broken one, in words.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(image) = &self.image
            && !valid_image(image)
        {
            return Err(format!("image {image:?} is not an image reference"));
        }
        for (what, text) in [
            ("command", &self.command),
            ("post_create_command", &self.post_create_command),
            ("post_start_command", &self.post_start_command),
        ] {
            if let Some(t) = text
                && (t.len() > MAX_TEXT || t.contains('\0'))
            {
                return Err(format!("{what}: at most {MAX_TEXT} bytes, no NUL"));
            }
        }
        let r = &self.resources;
        if r.cpu_millis.is_some_and(|c| !(10..=256_000).contains(&c)) {
            return Err("resources.cpu_millis: 10 to 256000".into());
        }
        if r.memory_mb.is_some_and(|m| !(16..=1 << 20).contains(&m)) {
            return Err("resources.memory_mb: 16 to 1048576".into());
        }
        if r.pids.is_some_and(|p| !(8..=1 << 22).contains(&p)) {
            return Err("resources.pids: 8 to 4194304".into());
        }
        if self.env.len() > MAX_ENV {
            return Err(format!("env: at most {MAX_ENV} variables"));
        }
        for (k, v) in &self.env {
            check_env(k, v)?;
        }
        if self.apps.len() > MAX_APPS {
            return Err(format!("apps: at most {MAX_APPS}"));
        }
        for (i, app) in self.apps.iter().enumerate() {
            if !valid_slug(&app.name) {
                return Err(format!(
                    "apps[{i}].name {:?}: 1 to 32 lower-case letters, digits or '-'",
                    app.name
                ));
            }
            if app.port == 0 {
                return Err(format!("apps[{i}].port: 1 to 65535"));
            }
            if self.apps[..i].iter().any(|a| a.name == app.name) {
                return Err(format!("apps[{i}].name {:?} is used twice", app.name));
            }
            if self.apps[..i].iter().any(|a| a.port == app.port) {
                return Err(format!("apps[{i}].port {} is used twice", app.port));
            }
        }
        if self.idle_timeout_secs.is_some_and(|s| s < 60) {
            return Err("idle_timeout_secs: at least 60".into());
        }
        if self.pool_size > MAX_POOL {
            return Err(format!("pool_size: at most {MAX_POOL}"));
        }
        if let Some(r) = &self.repository {
            let parsed = crate::git::Repository::parse(&r.url, r.reference.as_deref())?;
            if parsed.credential.is_some() || r.credential.is_some() || r.cloned {
                return Err(
                    "repository: a template's repository is public (give a credential when creating a workspace from it)"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

fn check_env(key: &str, value: &str) -> Result<(), String> {
    let mut chars = key.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && key.len() <= 128;
    if !ok {
        return Err(format!("env: {key:?} is not a variable name"));
    }
    if key.starts_with("CODITECT_") || key == "HOME" {
        return Err(format!("env: {key} is set by the hub"));
    }
    if value.len() > MAX_TEXT || value.contains('\0') {
        return Err(format!(
            "env: {key}'s value: at most {MAX_TEXT} bytes, no NUL"
        ));
    }
    Ok(())
}

fn valid_slug(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// `[registry[:port]/]name[:tag][@digest]`, the characters Docker accepts.
pub fn valid_image(image: &str) -> bool {
    (1..=255).contains(&image.len())
        && image
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
        && !image.starts_with(['-', '/', ':', '@'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, port: u16) -> App {
        App {
            name: name.into(),
            port,
            protocol: AppProtocol::Http,
            command: None,
        }
    }

    #[test]
    fn templates_are_checked() {
        let ok = TemplateSpec {
            image: Some("registry.local:5000/team/ws:1.2@sha256:abc".into()),
            apps: vec![app("web", 3000), app("api", 8080)],
            env: BTreeMap::from([("RUST_LOG".into(), "debug".into())]),
            idle_timeout_secs: Some(1800),
            ..TemplateSpec::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let broken = [
            TemplateSpec {
                image: Some("bad image".into()),
                ..ok.clone()
            },
            TemplateSpec {
                apps: vec![app("web", 1), app("web", 2)],
                ..ok.clone()
            },
            TemplateSpec {
                apps: vec![app("a", 1), app("b", 1)],
                ..ok.clone()
            },
            TemplateSpec {
                apps: vec![app("Web", 1)],
                ..ok.clone()
            },
            TemplateSpec {
                apps: vec![app("web", 0)],
                ..ok.clone()
            },
            TemplateSpec {
                env: BTreeMap::from([("CODITECT_AGENT_KEY_FILE".into(), "/x".into())]),
                ..ok.clone()
            },
            TemplateSpec {
                env: BTreeMap::from([("1X".into(), "".into())]),
                ..ok.clone()
            },
            TemplateSpec {
                idle_timeout_secs: Some(5),
                ..ok.clone()
            },
            TemplateSpec {
                pool_size: MAX_POOL + 1,
                ..ok.clone()
            },
            TemplateSpec {
                resources: Resources {
                    memory_mb: Some(1),
                    ..Resources::default()
                },
                ..ok.clone()
            },
            TemplateSpec {
                command: Some("a\0b".into()),
                ..ok.clone()
            },
        ];
        for (i, t) in broken.iter().enumerate() {
            assert!(t.validate().is_err(), "{i}: {t:?}");
        }
        let json = serde_json::to_string(&ok).unwrap_or_default();
        assert_eq!(serde_json::from_str::<TemplateSpec>(&json).ok(), Some(ok));
        assert!(serde_json::from_str::<TemplateSpec>(r#"{"runtime": "vm"}"#).is_err());
        assert!(serde_json::from_str::<TemplateSpec>(r#"{"surprise": 1}"#).is_err());
    }
}
