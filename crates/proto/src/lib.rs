//! Wire types shared by every CODITECT binary: the hub, the monitor and the CLI.
//!
//! Invariant: nothing here knows HTTP, SQL or any transport. Types are plain data with
//! serde derives and "parse, don't validate" constructors, so a value of one of these
//! types is always well-formed.

pub mod error;
pub mod health;
pub mod identity;
pub mod ids;
pub mod ipc;
pub mod logs;
pub mod secret;

pub use error::{ErrorBody, ErrorCode, ErrorEnvelope};
pub use health::{ComponentHealth, HealthReport, HealthStatus, duration_ms};
pub use identity::{Email, Role, SessionStatus};
pub use ids::{
    ApiKeyId, AuditId, BuildId, IdParseError, SessionId, TemplateId, TenantId, UserId, WorkspaceId,
};
pub use logs::{Level, MAX_METADATA_DEPTH, check_metadata, json_depth};
pub use secret::Secret;
