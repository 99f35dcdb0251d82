//! The error envelope every API answers with: `{"error":{"code","message","timestamp"}}`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Stable, machine-readable error codes. Clients match on these, so a code is never
/// renamed or reused; new codes may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// No credential, or one that is not valid.
    AuthRequired,
    /// A valid credential that does not allow the action.
    AccessDenied,
    /// The request is malformed or a value is out of range.
    BadRequest,
    /// The resource does not exist (or is not visible to the caller).
    NotFound,
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// The body is not in a media type the route accepts.
    UnsupportedMediaType,
    /// The request conflicts with the current state of a resource.
    Conflict,
    /// The tenant would go over one of its quotas (workspaces, CPU, memory): 409, since
    /// freeing room (stopping or deleting a workspace) makes the same request succeed.
    QuotaExceeded,
    /// A conditional request's precondition (`If-Match`) does not hold: someone else
    /// changed the resource since it was read.
    PreconditionFailed,
    /// The body or a collection in it is over a limit.
    PayloadTooLarge,
    /// The request's headers are too many or too large.
    HeadersTooLarge,
    /// Too many requests; retry after the `Retry-After` delay.
    RateLimited,
    /// A dependency (a store, a peer) is unavailable or too slow; safe to retry.
    Unavailable,
    /// A bug or an unexpected failure on the server; details are in the server log only.
    InternalError,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::AuthRequired,
        ErrorCode::AccessDenied,
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::Conflict,
        ErrorCode::QuotaExceeded,
        ErrorCode::PreconditionFailed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::HeadersTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::InternalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AuthRequired => "AUTH_REQUIRED",
            ErrorCode::AccessDenied => "ACCESS_DENIED",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::QuotaExceeded => "QUOTA_EXCEEDED",
            ErrorCode::PreconditionFailed => "PRECONDITION_FAILED",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::HeadersTooLarge => "HEADERS_TOO_LARGE",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::InternalError => "INTERNAL_ERROR",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    pub timestamp: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

impl ErrorEnvelope {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorEnvelope {
            error: ErrorBody {
                code,
                message: message.into(),
                timestamp: Utc::now(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_stable_names() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, code);
        }
    }

    #[test]
    fn envelope_has_the_documented_shape() {
        let env = ErrorEnvelope::new(ErrorCode::NotFound, "no route for /x");
        let value = serde_json::to_value(&env).unwrap();
        let body = value.get("error").unwrap();
        assert_eq!(body["code"], "NOT_FOUND");
        assert_eq!(body["message"], "no route for /x");
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
