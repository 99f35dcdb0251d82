//! Identity vocabulary shared by the hub, its clients and the store: roles, e-mail
//! addresses, session states, audit outcomes.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What a principal may do inside its tenant (see the hub's RBAC table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Tenant administrator.
    Admin,
    /// A developer: works in workspaces, writes logs.
    Member,
    /// Read only.
    Viewer,
    /// A machine (service account or API key): writes logs, reads what it needs.
    Service,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Member, Role::Viewer, Role::Service];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
            Role::Service => "service",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| "a role: admin, member, viewer or service".to_string())
    }
}

/// An e-mail address, trimmed and lower-cased; well-formed by construction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, format = Email, max_length = 254)]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Email, String> {
        let s = s.trim().to_lowercase();
        let invalid = || "an e-mail address such as dev@example.com".to_string();
        if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        let (local, domain) = s.split_once('@').ok_or_else(invalid)?;
        if local.is_empty() || domain.is_empty() || domain.contains('@') {
            return Err(invalid());
        }
        if domain.starts_with('.') || domain.ends_with('.') {
            return Err(invalid());
        }
        Ok(Email(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Email::parse(&s).map_err(|e| serde::de::Error::custom(format!("expected {e}")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    Active,
    Suspended,
    Terminated,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Active => "active",
            SessionStatus::Suspended => "suspended",
            SessionStatus::Terminated => "terminated",
        }
    }
}

impl FromStr for SessionStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(SessionStatus::Active),
            "suspended" => Ok(SessionStatus::Suspended),
            "terminated" => Ok(SessionStatus::Terminated),
            other => Err(format!("unknown session status {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_in_any_case() {
        for role in Role::ALL {
            assert_eq!(role.as_str().to_uppercase().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            Email::parse(" Dev@Example.COM ").unwrap().as_str(),
            "dev@example.com"
        );
        assert!(Email::parse("admin@localhost").is_ok());
        for bad in [
            "",
            "dev",
            "@example.com",
            "dev@",
            "a b@c.d",
            "a@b@c.d",
            "a@.c",
            "a@c.",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
        let parsed: Result<Email, _> = serde_json::from_str("\"nope\"");
        assert!(parsed.is_err());
    }
}
