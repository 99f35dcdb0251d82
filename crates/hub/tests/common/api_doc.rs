//! Reading the hub's own OpenAPI document, so that tests enumerate the API from it rather
//! than from a hand-kept list: every route added later is covered the day it is written.

use super::TestApp;
use reqwest::Method;
use serde_json::Value;

/// The kinds of object an operation can name, by the schema of the id.
pub const ID_KINDS: [&str; 7] = [
    "TenantId",
    "UserId",
    "SessionId",
    "ApiKeyId",
    "WorkspaceId",
    "TemplateId",
    // A plain UUID: the only one in the API is a log entry's id.
    "LogEntryId",
];

#[derive(Debug, Clone)]
pub struct Operation {
    pub method: Method,
    /// The path as documented, e.g. `/api/v1/users/{id}`.
    pub template: String,
    pub spec: Value,
}

impl Operation {
    /// `GET /api/v1/users/{id}`: how tables key operations.
    pub fn key(&self) -> String {
        format!("{} {}", self.method, self.template)
    }

    pub fn requires_credential(&self) -> bool {
        match self.spec.get("security").and_then(Value::as_array) {
            None => true,
            Some(reqs) => !reqs
                .iter()
                .any(|r| r.as_object().is_some_and(|o| o.is_empty())),
        }
    }

    pub fn is_websocket(&self) -> bool {
        self.spec["responses"].get("101").is_some()
    }

    pub fn documents(&self, status: u16) -> bool {
        self.spec["responses"].get(status.to_string()).is_some()
    }

    pub fn parameters(&self) -> impl Iterator<Item = &Value> {
        self.spec["parameters"].as_array().into_iter().flatten()
    }
}

pub struct ApiDoc {
    pub doc: Value,
    pub operations: Vec<Operation>,
}

impl ApiDoc {
    pub async fn of(app: &TestApp) -> ApiDoc {
        let doc = super::json(app.get("/api/openapi.json").await).await;
        let mut operations = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, spec) in item.as_object().expect("path item") {
                operations.push(Operation {
                    method: Method::from_bytes(method.to_uppercase().as_bytes()).expect("method"),
                    template: path.clone(),
                    spec: spec.clone(),
                });
            }
        }
        assert!(operations.len() >= 38, "{} operations", operations.len());
        ApiDoc { doc, operations }
    }

    pub fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str() {
            Some(r) => {
                let mut at = &self.doc;
                for part in r.trim_start_matches("#/").split('/') {
                    at = &at[part];
                }
                at
            }
            None => schema,
        }
    }

    /// The first media type of an operation's request body and its documented example
    /// (of the media type, else of its schema).
    pub fn example_body(&self, op: &Operation) -> Option<(String, Value)> {
        let content = op.spec["requestBody"]["content"].as_object()?;
        let (media, body) = content.iter().next()?;
        let schema = self.resolve(&body["schema"]);
        let example = body
            .get("example")
            .or_else(|| schema.get("example"))
            .or_else(|| schema["examples"].as_array()?.first())
            .cloned()
            .unwrap_or_else(|| panic!("{}: the request body has no example", op.key()));
        Some((media.clone(), example))
    }

    /// Which kind of object `schema` is the id of, if any (`T` or `T | null`).
    pub fn id_kind(&self, schema: &Value) -> Option<&'static str> {
        if let Some(alternatives) = schema["oneOf"].as_array() {
            return alternatives.iter().find_map(|s| self.id_kind(s));
        }
        if let Some(r) = schema["$ref"].as_str() {
            let name = r.rsplit('/').next()?;
            return ID_KINDS.iter().copied().find(|k| *k == name);
        }
        (schema["format"] == "uuid").then_some("LogEntryId")
    }

    /// The top-level properties of an operation's JSON body that are ids: `(name, kind)`.
    pub fn body_ids(&self, op: &Operation) -> Vec<(String, &'static str)> {
        let Some(schema) = op
            .spec
            .pointer("/requestBody/content/application~1json/schema")
        else {
            return Vec::new();
        };
        let schema = self.resolve(schema);
        schema["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(name, s)| self.id_kind(s).map(|k| (name.clone(), k)))
            .collect()
    }
}
