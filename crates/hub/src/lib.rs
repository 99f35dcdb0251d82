//! The CODITECT hub as a library: everything `main` does is reachable from here, so
//! tests start real hubs in-process (see `tests/common`).
//!
//! One module per capability: `auth` (login, tokens, keys, principals), `users`,
//! `tenants`, `sessions`, `api_keys`, `workspaces`, `audit`, `health`; later `logs`,
//! `live`, …; plus `authz` (the only door to the store: RBAC and tenant scoping), `admin`
//! (command-line administration), and the shared plumbing: `config`, `http` (router,
//! middleware, errors), `telemetry` (logs, metrics), `server` (lifecycle), `state`, `clock`.

pub mod admin;
pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod clock;
pub mod config;
pub mod health;
pub mod http;
pub mod live;
pub mod logs;
pub mod server;
pub mod sessions;
pub mod state;
pub mod telemetry;
pub mod tenants;
pub mod users;
pub mod workspaces;

pub use config::{Config, ConfigError, Invocation};
pub use server::{Hub, StartError, shutdown_signal};
pub use state::AppState;
