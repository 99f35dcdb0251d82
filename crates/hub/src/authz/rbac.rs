//! Role-based access control: the one table of what each role may do.
//!
//! A permission is (resource, action, scope). The scope says how far it reaches inside
//! the principal's tenant: `Own` (objects the principal owns: itself, its sessions, its
//! keys, its workspaces) or `Tenant` (everything in the tenant). An API key restricted to a
//! workspace narrows workspace and log access to that one workspace. Nothing here reaches
//! another tenant: cross-tenant acts need the platform-admin flag and are separate
//! operations (creating tenants, reading another tenant's audit trail).
//!
//! An API key acts with the intersection of its own role and its owner's current role.

use coditect_proto::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    User,
    /// One's own password.
    Password,
    Session,
    ApiKey,
    Workspace,
    /// Workspace templates (admins write them; everyone in the tenant may read them).
    Template,
    Audit,
    Logs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Create,
    Update,
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Own,
    Tenant,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::User => "user",
            Resource::Password => "password",
            Resource::Session => "session",
            Resource::ApiKey => "api_key",
            Resource::Workspace => "workspace",
            Resource::Template => "template",
            Resource::Audit => "audit",
            Resource::Logs => "logs",
        }
    }
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

use Action::{Create, Delete, Read, Update};
use Resource as R;
use Scope::{Own, Tenant};

/// `(resource, action, [admin, member, viewer, service])`: the widest scope each role has.
/// Absent = not allowed. This table is the whole policy; README.md renders it.
#[rustfmt::skip]
pub const GRANTS: &[(Resource, Action, [Option<Scope>; 4])] = &[
    //                      admin          member         viewer         service
    (R::User,      Read,   [Some(Tenant), Some(Own),    Some(Own),    Some(Own)]),
    (R::User,      Create, [Some(Tenant), None,         None,         None]),
    (R::User,      Update, [Some(Tenant), None,         None,         None]),
    (R::Password,  Update, [Some(Own),    Some(Own),    Some(Own),    None]),
    (R::Session,   Read,   [Some(Tenant), Some(Own),    Some(Own),    Some(Own)]),
    (R::Session,   Delete, [Some(Tenant), Some(Own),    Some(Own),    Some(Own)]),
    (R::ApiKey,    Read,   [Some(Tenant), Some(Own),    None,         None]),
    (R::ApiKey,    Create, [Some(Tenant), Some(Own),    None,         None]),
    (R::ApiKey,    Delete, [Some(Tenant), Some(Own),    None,         None]),
    (R::Workspace, Read,   [Some(Tenant), Some(Tenant), Some(Tenant), Some(Tenant)]),
    (R::Workspace, Create, [Some(Tenant), Some(Own),    None,         None]),
    (R::Workspace, Update, [Some(Tenant), Some(Own),    None,         None]),
    (R::Workspace, Delete, [Some(Tenant), Some(Own),    None,         None]),
    (R::Template,  Read,   [Some(Tenant), Some(Tenant), Some(Tenant), Some(Tenant)]),
    (R::Template,  Create, [Some(Tenant), None,         None,         None]),
    (R::Template,  Update, [Some(Tenant), None,         None,         None]),
    (R::Template,  Delete, [Some(Tenant), None,         None,         None]),
    (R::Audit,     Read,   [Some(Tenant), None,         None,         None]),
    (R::Logs,      Read,   [Some(Tenant), Some(Tenant), Some(Tenant), Some(Tenant)]),
    (R::Logs,      Create, [Some(Tenant), Some(Tenant), None,         Some(Tenant)]),
];

fn column(role: Role) -> usize {
    match role {
        Role::Admin => 0,
        Role::Member => 1,
        Role::Viewer => 2,
        Role::Service => 3,
    }
}

/// The widest scope `role` has for `(resource, action)`.
pub fn scope(role: Role, resource: Resource, action: Action) -> Option<Scope> {
    GRANTS
        .iter()
        .find(|(r, a, _)| *r == resource && *a == action)
        .and_then(|(_, _, scopes)| scopes[column(role)])
}

/// The scope of a principal acting with `role`, narrowed by an API key's role if any.
pub fn effective_scope(
    role: Role,
    key_role: Option<Role>,
    resource: Resource,
    action: Action,
) -> Option<Scope> {
    let own = scope(role, resource, action)?;
    match key_role {
        Some(k) => scope(k, resource, action).map(|s| s.min(own)),
        None => Some(own),
    }
}

/// Whether `holder` may do everything `other` may, as far as `other` may (a key's role
/// must be covered by its creator's and its owner's: a key never claims what it cannot do).
pub fn covers(holder: Role, other: Role) -> bool {
    GRANTS.iter().all(|(resource, action, _)| {
        match (
            scope(holder, *resource, *action),
            scope(other, *resource, *action),
        ) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(h), Some(o)) => o <= h,
        }
    })
}

/// The table as Markdown, for the docs (and a test that keeps them in step).
pub fn markdown() -> String {
    let cell = |s: Option<Scope>| match s {
        Some(Tenant) => "tenant",
        Some(Own) => "own",
        None => "—",
    };
    let mut out = String::from(
        "| resource | action | admin | member | viewer | service |\n|---|---|---|---|---|---|\n",
    );
    for (resource, action, scopes) in GRANTS {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            resource.as_str(),
            action.as_str(),
            cell(scopes[0]),
            cell(scopes[1]),
            cell(scopes[2]),
            cell(scopes[3])
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_appears_once() {
        for (i, (r, a, _)) in GRANTS.iter().enumerate() {
            assert!(
                !GRANTS[i + 1..].iter().any(|(r2, a2, _)| r2 == r && a2 == a),
                "{r:?} {a:?} twice"
            );
        }
    }

    #[test]
    fn viewers_never_write_and_only_admins_administer() {
        for (resource, action, _) in GRANTS {
            if *action != Read && *resource != Resource::Password && *resource != Resource::Session
            {
                assert_eq!(
                    scope(Role::Viewer, *resource, *action),
                    None,
                    "{resource:?} {action:?}"
                );
            }
        }
        for admin_only in [(R::User, Create), (R::User, Update), (R::Audit, Read)] {
            for role in [Role::Member, Role::Viewer, Role::Service] {
                assert_eq!(scope(role, admin_only.0, admin_only.1), None);
            }
        }
    }

    #[test]
    fn roles_cover_what_they_include() {
        for role in [Role::Admin, Role::Member, Role::Viewer, Role::Service] {
            assert!(covers(Role::Admin, role), "{role}");
            assert!(covers(role, role), "{role}");
        }
        assert!(covers(Role::Member, Role::Viewer));
        assert!(covers(Role::Member, Role::Service));
        assert!(!covers(Role::Member, Role::Admin));
        assert!(!covers(Role::Viewer, Role::Member));
        assert!(
            !covers(Role::Service, Role::Viewer),
            "viewers change passwords"
        );
        assert!(!covers(Role::Viewer, Role::Service), "services write logs");
    }

    #[test]
    fn a_key_never_exceeds_its_owner_nor_its_own_role() {
        assert_eq!(
            effective_scope(Role::Member, Some(Role::Admin), R::User, Create),
            None
        );
        assert_eq!(
            effective_scope(Role::Admin, Some(Role::Viewer), R::Logs, Create),
            None
        );
        assert_eq!(
            effective_scope(Role::Admin, Some(Role::Member), R::ApiKey, Read),
            Some(Own)
        );
        assert_eq!(
            effective_scope(Role::Admin, None, R::ApiKey, Read),
            Some(Tenant)
        );
    }
}

#[cfg(test)]
mod docs {
    #[test]
    fn the_readme_shows_this_table() {
        let readme = include_str!("../../../../README.md");
        let table = super::markdown();
        assert!(
            readme.contains(&table),
            "README.md must contain the RBAC table exactly as rbac::markdown() renders it:\n{table}"
        );
    }
}
