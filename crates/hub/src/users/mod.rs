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
use crate::http::openapi::Routes;
use crate::http::{ApiError, Json, Path, Query};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use coditect_proto::{Email, ErrorCode, Role, TenantId, UserId};
use coditect_store::User;
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;

pub fn routes() -> Routes {
    Routes::new()
        .route(routes!(list, create))
        .route(routes!(me))
        .route(routes!(change_password))
        .route(routes!(get_one, update))
        .route(routes!(clear_login_throttle))
}

/// A user as the API shows it: never its password hash.
#[derive(Serialize, utoipa::ToSchema)]
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

/// Paging of a list: at most `limit` items after `cursor`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Items per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct UserPage {
    items: Vec<UserView>,
    next_cursor: Option<String>,
}

/// The users of the caller's tenant (administrators).
#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "users",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        (status = 403, description = "Not an administrator"),
    )
)]
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "dev@example.com", "password": "correct horse battery staple", "role": "member"}))]
struct CreateUser {
    email: Email,
    /// Absent for service accounts (they authenticate with API keys only). At least 12
    /// characters.
    password: Option<String>,
    role: Role,
    tenant_id: Option<TenantId>,
    #[serde(default)]
    platform_admin: bool,
}

/// Creates a user (administrators; platform admins may name another tenant and create
/// platform admins).
#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "users",
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 403, description = "Not allowed to create this user"),
        (status = 404, description = "No such tenant"),
        (status = 409, description = "The e-mail address is taken"),
    )
)]
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

/// The caller.
#[utoipa::path(
    get,
    path = "/api/v1/users/me",
    tag = "users",
    responses((status = 200, description = "The caller", body = UserView))
)]
async fn me(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<UserView>, ApiError> {
    Ok(axum::Json(
        state.gate().scoped(&principal).me().await?.into(),
    ))
}

/// One user of the caller's tenant (oneself, or anyone for administrators).
#[utoipa::path(
    get,
    path = "/api/v1/users/{id}",
    tag = "users",
    params(("id" = UserId, Path, description = "The user")),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 403, description = "Another user, and the caller is no administrator"),
        (status = 404, description = "No such user in the caller's tenant"),
    )
)]
async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<UserId>,
) -> Result<axum::Json<UserView>, ApiError> {
    Ok(axum::Json(
        state.gate().scoped(&principal).get_user(id).await?.into(),
    ))
}

/// At least one of the two.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"disabled": true}))]
struct UpdateUser {
    role: Option<Role>,
    disabled: Option<bool>,
}

/// Changes a user's role or disables it (administrators; disabling ends its sessions).
#[utoipa::path(
    patch,
    path = "/api/v1/users/{id}",
    tag = "users",
    params(("id" = UserId, Path, description = "The user")),
    request_body = UpdateUser,
    responses(
        (status = 200, description = "Changed", body = UserView),
        (status = 403, description = "Not allowed to change this user"),
        (status = 404, description = "No such user in the caller's tenant"),
    )
)]
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"current_password": "correct horse battery staple", "new_password": "another long passphrase"}))]
struct ChangePassword {
    current_password: String,
    new_password: String,
}

/// Changes the caller's own password (ends its other sessions). Wrong guesses are
/// throttled like logins.
#[utoipa::path(
    post,
    path = "/api/v1/users/me/password",
    tag = "users",
    request_body = ChangePassword,
    responses(
        (status = 204, description = "Changed"),
        (status = 403, description = "The current password is wrong, or the caller is not a person"),
        (status = 429, description = "Too many wrong guesses; see Retry-After"),
    )
)]
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
#[utoipa::path(
    delete,
    path = "/api/v1/users/{id}/login-throttle",
    tag = "users",
    params(("id" = UserId, Path, description = "The user")),
    responses(
        (status = 204, description = "Forgiven"),
        (status = 403, description = "Not an administrator"),
        (status = 404, description = "No such user in the caller's tenant"),
    )
)]
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
