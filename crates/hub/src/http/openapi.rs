//! The OpenAPI 3.1 document of the API, generated from the code.
//!
//! Every route is registered through [`Routes::route`] with a handler carrying a
//! `#[utoipa::path]` attribute: utoipa-axum's `routes!` reads the method and path from that
//! attribute both to mount the handler and to describe it, so a route cannot exist without
//! its description. [`Routes`] offers no other way in (no plain `route`, `nest` or
//! `route_service`). The attributes state what only the handler knows (parameters, bodies,
//! its own statuses); [`finish`] adds what the shared stack answers for every route (the
//! statuses of the middleware, the error envelope on every error response), once.
//!
//! Served at `GET /api/openapi.json`, browsable at `GET /api/docs` (Swagger UI, inside the
//! binary), printed by `coditect-hub openapi`, committed as `docs/openapi.json`.

use crate::state::AppState;
use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use coditect_proto::ErrorEnvelope;
use std::sync::{Arc, OnceLock};
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{OneOfBuilder, Schema};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, Response as ApiResponse};
use utoipa::{OpenApi as _, PartialSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

/// The routes of one capability, each with its description. The only way to add a route
/// to the API.
#[derive(Default)]
pub struct Routes(OpenApiRouter<AppState>);

impl Routes {
    pub fn new() -> Routes {
        Routes(OpenApiRouter::new())
    }

    /// Mounts the handlers of one path (`routes!(a, b)`: one or more methods of one path),
    /// described by their `#[utoipa::path]` attributes.
    pub fn route(self, handlers: UtoipaMethodRouter<AppState>) -> Routes {
        Routes(self.0.routes(handlers))
    }

    pub fn merge(self, other: Routes) -> Routes {
        Routes(self.0.merge(other.0))
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "CODITECT hub",
        description = "The CODITECT hub's HTTP API: identity, workspaces, the log pipeline \
            (native, OpenTelemetry OTLP/HTTP, Loki push), search and live tail.\n\n\
            Every error is answered with the envelope `{\"error\":{\"code\",\"message\",\
            \"timestamp\"}}`; `code` is stable (see `ErrorCode`).\n\n\
            Authenticate with `Authorization: Bearer <access token>` (from \
            `POST /api/v1/auth/login`) or with an API key (`Authorization: Bearer cdk_…` or \
            `X-API-Key: cdk_…`).",
        license(name = "Apache-2.0"),
    ),
    security(("bearer" = []), ("api_key" = [])),
    components(schemas(ErrorEnvelope, coditect_proto::ErrorCode)),
    tags(
        (name = "auth", description = "Logging in, tokens, the signing keys"),
        (name = "sessions", description = "Login sessions"),
        (name = "users", description = "Users of a tenant"),
        (name = "tenants", description = "Tenants (organisations)"),
        (name = "api-keys", description = "API keys for machines and scripts"),
        (name = "workspaces", description = "Workspaces"),
        (name = "audit", description = "The audit trail"),
        (name = "logs", description = "Log ingestion (native, OTLP, Loki) and search"),
        (name = "live", description = "The live tail over WebSocket"),
        (name = "operations", description = "Health, readiness and metrics"),
        (name = "docs", description = "This document and its browser"),
    ),
)]
struct ApiDoc;

/// Every route of the API, described.
pub fn api() -> OpenApiRouter<AppState> {
    let routes = Routes::new()
        .merge(crate::health::routes())
        .merge(crate::telemetry::metrics::routes())
        .merge(crate::auth::routes())
        .merge(crate::sessions::routes())
        .merge(crate::users::routes())
        .merge(crate::tenants::routes())
        .merge(crate::api_keys::routes())
        .merge(crate::workspaces::routes())
        .merge(crate::audit::routes())
        .merge(crate::logs::routes())
        .merge(crate::live::routes())
        .merge(routes());
    OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(routes.0)
}

/// A body of raw bytes (protobuf), for `content((Binary = "application/x-protobuf"))`.
pub struct Binary;

impl PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        RefOr::T(Schema::Object(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::Binary,
                )))
                .build(),
        ))
    }
}

impl utoipa::ToSchema for Binary {}

/// The finished document (built once).
pub fn document() -> &'static OpenApi {
    static DOC: OnceLock<OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, mut doc) = api().split_for_parts();
        finish(&mut doc);
        doc
    })
}

/// The document as pretty JSON with a final newline (what `docs/openapi.json` holds).
pub fn document_json() -> &'static Bytes {
    static JSON: OnceLock<Bytes> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut text = serde_json::to_vec_pretty(document()).unwrap_or_default();
        text.push(b'\n');
        Bytes::from(text)
    })
}

/// What the shared stack adds to every route, written into every operation:
/// - the security schemes the global requirement names;
/// - the statuses any request can get whatever its route: 413 (declared body over the
///   limit), 429 (too many connections from one address), 431 (headers), 500 (a bug: a
///   panic is caught and answered), 503 (the request timeout, the connection limit, a store
///   outage);
/// - 400 where there are parameters or a body to get wrong, 415 where the body is JSON,
///   401 where a credential is required;
/// - the error envelope as the body of every error response that names no other.
pub fn finish(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT or cdk_ API key")
                .description(Some(
                    "An access token from POST /api/v1/auth/login, or an API key",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        "api_key",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "X-API-Key",
            "An API key (cdk_…)",
        ))),
    );
    for (_, name, description) in STACK {
        let mut response = ApiResponse::new(description);
        response.content.insert(
            "application/json".into(),
            RefOr::T(ContentBuilder::new().schema(Some(envelope())).build()),
        );
        components.responses.insert(name.into(), RefOr::T(response));
    }
    for item in doc.paths.paths.values_mut() {
        for op in operations(item) {
            add_common_responses(op);
        }
    }
}

/// Operations marked `x-coditect-errors: in-request-encoding` (OTLP) answer errors in the
/// request's media type, so protobuf is as possible as the envelope.
const ERRORS_IN_REQUEST_ENCODING: (&str, &str) = ("x-coditect-errors", "in-request-encoding");

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
        item.head.as_mut(),
        item.options.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// Whether the operation needs a credential: it inherits the global requirement unless it
/// states its own, and `security(())` (one empty requirement) means "none needed".
pub fn requires_credential(op: &Operation) -> bool {
    match &op.security {
        None => true,
        Some(reqs) => !reqs.iter().any(|r| *r == Default::default()),
    }
}

/// The statuses the stack may answer, as `(status, name of the shared response, what it
/// means)`: the first five on every route, the others where they apply.
const STACK: [(u16, &str, &str); 8] = [
    (
        413,
        "PayloadTooLarge",
        "The declared body is over the size limit",
    ),
    (
        429,
        "RateLimited",
        "Too many requests or connections; see Retry-After",
    ),
    (431, "HeadersTooLarge", "Too many or too large headers"),
    (
        500,
        "InternalError",
        "A bug on the server (details only in its log)",
    ),
    (
        503,
        "Unavailable",
        "Unavailable for now (a store outage, overload, a timeout); safe to retry",
    ),
    (
        400,
        "BadRequest",
        "The request is malformed or a value is out of range",
    ),
    (
        415,
        "UnsupportedMediaType",
        "The body is not in a media type the route accepts",
    ),
    (
        401,
        "AuthRequired",
        "No credential, or one that is not valid",
    ),
];

fn add_common_responses(op: &mut Operation) {
    let mut statuses: Vec<(u16, &str, &str)> = STACK[..5].to_vec();
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let body = op.request_body.as_ref().and_then(|b| match b {
        RefOr::T(b) => Some(b),
        RefOr::Ref(_) => None,
    });
    if has_params || body.is_some() {
        statuses.push(STACK[5]);
    }
    if body.is_some_and(|b| b.content.keys().any(|c| c.starts_with("application/json"))) {
        statuses.push(STACK[6]);
    }
    if requires_credential(op) {
        statuses.push(STACK[7]);
    }
    let stack: Vec<String> = statuses.iter().map(|(s, ..)| s.to_string()).collect();
    for (status, name, _) in statuses {
        op.responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| {
                RefOr::Ref(utoipa::openapi::Ref::new(format!(
                    "#/components/responses/{name}"
                )))
            });
    }
    let (mark, value) = ERRORS_IN_REQUEST_ENCODING;
    let protobuf_errors = op
        .extensions
        .as_ref()
        .and_then(|e| e.get(mark))
        .is_some_and(|v| v == value);
    for (status, response) in op.responses.responses.iter_mut() {
        let is_error = status.starts_with('4') || status.starts_with('5');
        let RefOr::T(response) = response else {
            continue;
        };
        if !is_error {
            continue;
        }
        if response.content.is_empty() {
            response.content.insert(
                "application/json".into(),
                RefOr::T(ContentBuilder::new().schema(Some(envelope())).build()),
            );
        } else if stack.contains(status) {
            either_envelope(response);
        }
        if protobuf_errors {
            response.content.insert(
                "application/x-protobuf".into(),
                RefOr::T(ContentBuilder::new().schema(Some(Binary::schema())).build()),
            );
        }
    }
}

/// The error envelope, by reference to its component.
fn envelope() -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorEnvelope"))
}

/// A response whose JSON body is the route's own (e.g. the health report of a 503) can
/// also come from the stack as the envelope: `oneOf` the two.
fn either_envelope(response: &mut ApiResponse) {
    let Some(RefOr::T(content)) = response.content.get_mut("application/json") else {
        return;
    };
    if let Some(own) = content.schema.take() {
        let both = OneOfBuilder::new().item(own).item(envelope()).build();
        content.schema = Some(RefOr::T(Schema::OneOf(both)));
    }
}

fn routes() -> Routes {
    Routes::new()
        .route(routes!(openapi_json))
        .route(routes!(docs_root))
        .route(routes!(docs_index))
        .route(routes!(docs_file))
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "docs",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"))
)]
async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json().clone(),
    )
        .into_response()
}

/// The API browser (Swagger UI): redirects to `/api/docs/`.
#[utoipa::path(
    get,
    path = "/api/docs",
    tag = "docs",
    security(()),
    responses((status = 308, description = "To /api/docs/"))
)]
async fn docs_root() -> Redirect {
    Redirect::permanent("/api/docs/")
}

/// The API browser's page.
#[utoipa::path(
    get,
    path = "/api/docs/",
    tag = "docs",
    security(()),
    responses((status = 200, description = "Swagger UI", content_type = "text/html"))
)]
async fn docs_index() -> Response {
    swagger_file("index.html")
}

/// The API browser's assets (inside the binary: nothing is fetched from elsewhere).
#[utoipa::path(
    get,
    path = "/api/docs/{file}",
    tag = "docs",
    security(()),
    params(("file" = String, Path, description = "An asset of Swagger UI")),
    responses(
        (status = 200, description = "The asset", content_type = "application/octet-stream"),
        (status = 404, description = "No such asset"),
    )
)]
async fn docs_file(super::Path(file): super::Path<String>) -> Response {
    swagger_file(&file)
}

fn swagger_file(file: &str) -> Response {
    static CONFIG: OnceLock<Arc<utoipa_swagger_ui::Config<'static>>> = OnceLock::new();
    let config =
        CONFIG.get_or_init(|| Arc::new(utoipa_swagger_ui::Config::from("/api/openapi.json")));
    match utoipa_swagger_ui::serve(file, config.clone()) {
        Ok(Some(found)) => (
            [
                (header::CONTENT_TYPE, found.content_type),
                (header::CACHE_CONTROL, "no-cache".to_string()),
            ],
            found.bytes.into_owned(),
        )
            .into_response(),
        Ok(None) => crate::http::ApiError::not_found(format!("no asset {file} in the API browser"))
            .into_response(),
        Err(e) => crate::http::ApiError::internal(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// `(METHOD, path)` of every operation in the document.
    fn documented() -> BTreeSet<(String, String)> {
        let doc = serde_json::to_value(document()).unwrap_or_default();
        let mut ops = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
        ops
    }

    /// `(METHOD, path)` of every route the router really has, read from axum's `Debug` of
    /// the router (it has no other way to list them): the node maps route ids to paths,
    /// each method router lists its methods in `allow_header`. HEAD comes with every GET.
    fn routed() -> BTreeSet<(String, String)> {
        let text = format!("{:?}", crate::http::routes(axum::Router::new()));
        let mut methods: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for part in text.split("RouteId(").skip(1) {
            let Some((id, rest)) = part.split_once(')') else {
                continue;
            };
            if let Some(rest) = rest.strip_prefix(": MethodRouter(")
                && let Some(allow) = rest.split("allow_header: Bytes(b\"").nth(1)
                && let Some((allow, _)) = allow.split_once('"')
            {
                let list = allow.split(',').filter(|m| *m != "HEAD").map(String::from);
                methods.insert(id.to_string(), list.collect());
            }
        }
        let node = text
            .split("node: Node { paths: {")
            .nth(1)
            .unwrap_or_default();
        let mut ops = BTreeSet::new();
        for part in node.split("RouteId(").skip(1) {
            let Some((id, rest)) = part.split_once("): \"") else {
                continue;
            };
            let Some((path, _)) = rest.split_once('"') else {
                continue;
            };
            for method in methods.get(id).into_iter().flatten() {
                ops.insert((method.clone(), path.to_string()));
            }
        }
        ops
    }

    #[test]
    fn the_router_and_the_document_have_the_same_routes() {
        let (documented, routed) = (documented(), routed());
        assert!(documented.len() >= 38, "{documented:?}");
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "routes without a description: {undocumented:?}; described but not routed: {unrouted:?}"
        );
    }

    #[test]
    fn every_error_response_has_a_body_and_every_operation_the_stack_statuses() {
        let doc = serde_json::to_value(document()).unwrap_or_default();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                let responses = op["responses"].as_object().cloned().unwrap_or_default();
                for status in ["413", "429", "431", "500", "503"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path}: no {status}"
                    );
                }
                for (status, response) in &responses {
                    let response = match response["$ref"].as_str() {
                        Some(r) => {
                            let name = r.trim_start_matches("#/components/responses/");
                            doc["components"]["responses"][name].clone()
                        }
                        None => response.clone(),
                    };
                    if status.starts_with('4') || status.starts_with('5') {
                        assert!(
                            response["content"]["application/json"].is_object(),
                            "{method} {path} {status}: no JSON body"
                        );
                    }
                }
            }
        }
    }
}
