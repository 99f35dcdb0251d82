//! Users of a tenant.
//!
//! - `GET /api/v1/users` (admins), `POST /api/v1/users` (admins; platform admins may name
//!   another `tenant_id` and create platform admins)
//! - `GET /api/v1/users/me`, `GET /api/v1/users/{id}`
//! - `PATCH /api/v1/users/{id}` `{role?, disabled?}` (admins; disabling ends the user's sessions)
//! - `POST /api/v1/users/me/password` `{current_password, new_password}` (ends the user's
//!   other sessions)

use crate::auth::password::Passwords;
use crate::auth::throttle::{Subject, Verdict};
use crate::authz::NewUser;
use crate::authz::Principal;
use crate::http::{ApiError, Json, Path, Query};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use coditect_proto::{Email, ErrorCode, Role, TenantId, UserId};
use coditect_store::User;
use serde::{Deserialize, Serialize};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users", get(list).post(create))
        .route("/api/v1/users/me", get(me))
        .route("/api/v1/users/me/password", post(change_password))
        .route("/api/v1/users/{id}", get(get_one).patch(update))
        .route(
            "/api/v1/users/{id}/login-throttle",
            axum::routing::delete(clear_login_throttle),
        )
}

/// A user as the API shows it: never its password hash.
#[derive(Serialize)]
pub struct UserView {
    id: UserId,
    tenant_id: TenantId,
    email: Email,
    role: Role,
    platform_admin: bool,
    disabled: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView {
            id: u.id,
            tenant_id: u.tenant_id,
            email: u.email,
            role: u.role,
            platform_admin: u.platform_admin,
            disabled: u.disabled,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

#[derive(Deserialize)]
pub struct PageQuery {
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Serialize)]
struct UserPage {
    items: Vec<UserView>,
    next_cursor: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<PageQuery>,
) -> Result<axum::Json<UserPage>, ApiError> {
    let page = state
        .gate()
        .scoped(&principal)
        .list_users(q.cursor.as_deref(), q.limit)
        .await?;
    Ok(axum::Json(UserPage {
        items: page.items.into_iter().map(UserView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    email: Email,
    /// Absent for service accounts (they authenticate with API keys only).
    password: Option<String>,
    role: Role,
    tenant_id: Option<TenantId>,
    #[serde(default)]
    platform_admin: bool,
}

async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(req): Json<CreateUser>,
) -> Result<(StatusCode, axum::Json<UserView>), ApiError> {
    let scoped = state.gate().scoped(&principal);
    // Authorize before spending an Argon2 hash on the request.
    scoped
        .may_create_user(req.tenant_id, req.platform_admin)
        .await?;
    let password_hash = match req.password {
        Some(p) => {
            Passwords::check_new(&p).map_err(ApiError::bad_request)?;
            let hash = state.auth().passwords.hash(p).await;
            Some(hash.map_err(|_| crate::auth::busy())?)
        }
        None if req.role == Role::Service => None,
        None => {
            return Err(ApiError::bad_request(
                "password is required except for service accounts",
            ));
        }
    };
    let user = scoped
        .create_user(NewUser {
            tenant: req.tenant_id,
            email: req.email,
            password_hash,
            role: req.role,
            platform_admin: req.platform_admin,
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(user.into())))
}

async fn me(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<UserView>, ApiError> {
    Ok(axum::Json(
        state.gate().scoped(&principal).me().await?.into(),
    ))
}

async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<UserId>,
) -> Result<axum::Json<UserView>, ApiError> {
    Ok(axum::Json(
        state.gate().scoped(&principal).get_user(id).await?.into(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    role: Option<Role>,
    disabled: Option<bool>,
}

async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<UserId>,
    Json(req): Json<UpdateUser>,
) -> Result<axum::Json<UserView>, ApiError> {
    if req.role.is_none() && req.disabled.is_none() {
        return Err(ApiError::bad_request(
            "nothing to change: give role and/or disabled",
        ));
    }
    let user = state
        .gate()
        .scoped(&principal)
        .update_user(id, req.role, req.disabled)
        .await?;
    Ok(axum::Json(user.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangePassword {
    current_password: String,
    new_password: String,
}

async fn change_password(
    State(state): State<AppState>,
    principal: Principal,
    Json(req): Json<ChangePassword>,
) -> Result<StatusCode, ApiError> {
    Passwords::check_new(&req.new_password).map_err(ApiError::bad_request)?;
    let scoped = state.gate().scoped(&principal);
    let me = scoped.me().await?;
    let auth = state.auth();
    // Guessing the current password is throttled like a login.
    let subject = Subject::new(
        me.email.as_str(),
        principal.meta.ip.as_deref(),
        auth.max_failures,
    );
    match auth.throttle.attempt(&subject, state.gate().clock().now()) {
        Verdict::Go => {}
        Verdict::Slow(pause) => tokio::time::sleep(pause).await,
        Verdict::Refuse(wait) => {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "too many failed attempts; retry later",
            )
            .retry_after(wait.as_secs().max(1)));
        }
    }
    let ok = auth
        .passwords
        .verify(req.current_password, me.password_hash)
        .await
        .map_err(|_| crate::auth::busy())?;
    if !ok {
        scoped.record_failed_password_change().await;
        return Err(ApiError::new(
            ErrorCode::AccessDenied,
            "the current password is wrong",
        ));
    }
    auth.throttle.succeeded(&subject);
    let hash = auth.passwords.hash(req.new_password).await;
    scoped
        .set_own_password(hash.map_err(|_| crate::auth::busy())?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/users/{id}/login-throttle`: forgives the user's failed logins (from
/// every address, on every replica: the others read the reset from the store).
async fn clear_login_throttle(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<UserId>,
) -> Result<StatusCode, ApiError> {
    let user = state
        .gate()
        .scoped(&principal)
        .clear_login_throttle(id)
        .await?;
    state.auth().throttle.clear(user.email.as_str());
    Ok(StatusCode::NO_CONTENT)
}
