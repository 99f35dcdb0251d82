//! The CODITECT hub as a library: everything `main` does is reachable from here, so
//! tests start real hubs in-process (see `tests/common`).
//!
//! One module per capability (`health`, later `auth`, `logs`, `live`, ...), plus the shared
//! plumbing: `config`, `http` (router, middleware, errors), `telemetry` (logs, metrics),
//! `server` (lifecycle) and `state`.

pub mod config;
pub mod health;
pub mod http;
pub mod server;
pub mod state;
pub mod telemetry;

pub use config::{Config, ConfigError, Invocation};
pub use server::{Hub, StartError, shutdown_signal};
pub use state::AppState;
