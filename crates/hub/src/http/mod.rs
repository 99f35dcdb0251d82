//! HTTP plumbing shared by every capability: the router assembly, the middleware stack,
//! the error envelope and the extractors. Capabilities contribute `routes()`; nothing
//! here knows what a route does.

pub mod conn;
pub mod error;
pub mod extract;
pub mod middleware;
pub mod openapi;

pub use error::ApiError;
pub use extract::{FilterText, Json, Path, Query, check_instant, from_object};

use crate::state::AppState;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, Method, header};
use coditect_proto::ErrorCode;
use std::time::Duration;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The whole API: every capability's routes, then the middleware stack around each.
/// `extra` lets tests mount routes (e.g. one that panics) under the same stack.
pub fn router(state: AppState, extra: Router<AppState>) -> Router {
    let config = state.config();
    let cors = (!config.cors_origins.is_empty()).then(|| cors_layer(&config.cors_origins));
    let stack = ServiceBuilder::new()
        .layer(axum::middleware::from_fn(middleware::request_context))
        .layer(axum::middleware::from_fn(middleware::error_envelope))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .option_layer(cors)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::guard,
        ))
        .layer(DefaultBodyLimit::max(config.body_limit));

    routes(extra).layer(stack).with_state(state)
}

/// Every route: the API (each described in the OpenAPI document, see [`openapi`]), the
/// test-only `extra`, and the fallbacks.
pub fn routes(extra: Router<AppState>) -> Router<AppState> {
    let (api, _) = openapi::api().split_for_parts();
    api.merge(extra)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static(middleware::REQUEST_ID),
        ])
        .expose_headers([
            HeaderName::from_static(middleware::REQUEST_ID),
            header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(3600))
}
