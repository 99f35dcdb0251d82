//! Identifier newtypes. Ids are UUIDs (v7 when we mint them, so they sort by creation time).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdParseError {
    kind: &'static str,
}

impl fmt::Display for IdParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} id must be a UUID", self.kind)
    }
}

impl std::error::Error for IdParseError {}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            utoipa::ToSchema,
        )]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered id.
            pub fn new() -> Self {
                $name(Uuid::now_v7())
            }

            pub fn from_uuid(id: Uuid) -> Self {
                $name(id)
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s)
                    .map($name)
                    .map_err(|_| IdParseError { kind: $kind })
            }
        }
    };
}

uuid_id!(
    /// An organisation: the unit of isolation. Every stored row carries one.
    TenantId,
    "tenant"
);
uuid_id!(
    /// A person or a service account, inside one tenant.
    UserId,
    "user"
);
uuid_id!(
    /// A login session (what access and refresh tokens belong to).
    SessionId,
    "session"
);
uuid_id!(
    /// A development workspace registered in a tenant.
    WorkspaceId,
    "workspace"
);
uuid_id!(
    /// A workspace template of a tenant.
    TemplateId,
    "template"
);
uuid_id!(
    /// One transition of a workspace (start, stop, delete, recovery...), as recorded.
    BuildId,
    "build"
);
uuid_id!(
    /// An API key (its id; the secret is never stored).
    ApiKeyId,
    "api key"
);
uuid_id!(
    /// One record of the audit trail.
    AuditId,
    "audit record"
);

impl TenantId {
    /// The tenant of records that belong to no tenant (e.g. a failed login for an unknown
    /// email). No real tenant ever gets this id.
    pub const NONE: TenantId = TenantId(Uuid::nil());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uuids_and_rejects_the_rest() {
        let id = TenantId::new();
        assert_eq!(id.to_string().parse::<TenantId>().unwrap(), id);
        let err = "not-a-uuid".parse::<TenantId>().unwrap_err();
        assert_eq!(err.to_string(), "tenant id must be a UUID");
    }

    #[test]
    fn new_ids_sort_by_creation() {
        let a = TenantId::new();
        let b = TenantId::new();
        assert!(a < b);
    }
}
