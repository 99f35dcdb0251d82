//! `coditect-hub admin …`: administration from the command line, on the same store as the
//! hub (safe while it runs). Every change is written to the audit trail as actor `cli`.
//!
//! - `admin create-tenant --name NAME`
//! - `admin create-user --email ADDRESS [--role admin|member|viewer|service] [--tenant NAME|ID]
//!   [--create-tenant] [--platform-admin] [--no-password]` — the password is read from
//!   `CODITECT_ADMIN_PASSWORD` or the first line of stdin (never from a flag)
//! - `admin rotate-key` — this node signs with a new key from now on (a running hub picks it
//!   up within 30 s); old keys verify until their tokens expire

use crate::auth::bootstrap::{self, BootstrapError, NewAccount};
use crate::auth::keys::KeyRing;
use crate::auth::password::Passwords;
use crate::authz::{AuditEvent, Gate, RequestMeta};
use crate::clock::Clock;
use crate::config::Config;
use clap::{Arg, ArgAction, ArgMatches, Command};
use coditect_proto::{Email, Role, TenantId};
use coditect_store::{Store, StoreError};
use std::io::{BufRead, IsTerminal};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    CreateTenant {
        name: String,
    },
    CreateUser {
        email: Email,
        role: Role,
        tenant: Option<String>,
        create_tenant: bool,
        platform_admin: bool,
        no_password: bool,
    },
    RotateKey,
}

pub fn command() -> Command {
    Command::new("admin")
        .about("Administer the hub's store (also while the hub runs), then exit")
        .subcommand_required(true)
        .subcommand(
            Command::new("create-tenant").about("Create a tenant").arg(
                Arg::new("name")
                    .long("name")
                    .required(true)
                    .value_name("NAME"),
            ),
        )
        .subcommand(
            Command::new("create-user")
                .about("Create a user; the password comes from CODITECT_ADMIN_PASSWORD or stdin")
                .arg(
                    Arg::new("email")
                        .long("email")
                        .required(true)
                        .value_name("ADDRESS"),
                )
                .arg(
                    Arg::new("role")
                        .long("role")
                        .value_name("ROLE")
                        .default_value("member")
                        .help("admin, member, viewer or service"),
                )
                .arg(
                    Arg::new("tenant")
                        .long("tenant")
                        .value_name("NAME|ID")
                        .help("Tenant of the user [default: bootstrap_tenant]"),
                )
                .arg(
                    Arg::new("create-tenant")
                        .long("create-tenant")
                        .action(ArgAction::SetTrue)
                        .help("Create the tenant (by name) if it does not exist"),
                )
                .arg(
                    Arg::new("platform-admin")
                        .long("platform-admin")
                        .action(ArgAction::SetTrue)
                        .help("May act across tenants (create tenants, read any audit trail)"),
                )
                .arg(
                    Arg::new("no-password")
                        .long("no-password")
                        .action(ArgAction::SetTrue)
                        .help("A service account: authenticates with API keys only"),
                ),
        )
        .subcommand(Command::new("rotate-key").about("Sign tokens with a new key from now on"))
}

impl AdminCommand {
    pub fn from_matches(admin: &ArgMatches) -> Result<AdminCommand, String> {
        let text = |m: &ArgMatches, id: &str| m.get_one::<String>(id).cloned();
        match admin.subcommand() {
            Some(("create-tenant", m)) => Ok(AdminCommand::CreateTenant {
                name: text(m, "name").unwrap_or_default(),
            }),
            Some(("create-user", m)) => Ok(AdminCommand::CreateUser {
                email: Email::parse(&text(m, "email").unwrap_or_default())
                    .map_err(|e| format!("invalid --email: expected {e}"))?,
                role: text(m, "role")
                    .unwrap_or_default()
                    .parse()
                    .map_err(|e| format!("invalid --role: expected {e}"))?,
                tenant: text(m, "tenant"),
                create_tenant: m.get_flag("create-tenant"),
                platform_admin: m.get_flag("platform-admin"),
                no_password: m.get_flag("no-password"),
            }),
            Some(("rotate-key", _)) => Ok(AdminCommand::RotateKey),
            _ => Err("unknown admin command".into()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] crate::auth::keys::KeyError),
}

impl AdminError {
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminError::Input(_) => 2,
            AdminError::Store(_) | AdminError::Keys(_) => 1,
        }
    }
}

impl From<BootstrapError> for AdminError {
    fn from(e: BootstrapError) -> Self {
        match e {
            BootstrapError::Store(s) => AdminError::Store(s),
            other => AdminError::Input(other.to_string()),
        }
    }
}

/// The password for a new user: `CODITECT_ADMIN_PASSWORD`, else one line of piped stdin.
pub fn read_password(env: &dyn Fn(&str) -> Option<String>) -> Result<String, AdminError> {
    if let Some(p) = env("CODITECT_ADMIN_PASSWORD") {
        return Ok(p);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(AdminError::Input(
            "give the password on stdin (e.g. `read -rs P; printf '%s\\n' \"$P\" | coditect-hub admin create-user …`) \
             or in CODITECT_ADMIN_PASSWORD"
                .into(),
        ));
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| AdminError::Input(format!("cannot read the password from stdin: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Runs one command; returns what to print on success.
pub async fn run(
    config: Config,
    command: AdminCommand,
    password: impl FnOnce() -> Result<String, AdminError>,
) -> Result<String, AdminError> {
    coditect_store::files::create_private_dir(&config.data_dir)
        .map_err(|e| AdminError::Input(format!("cannot create data_dir: {e}")))?;
    let store = Store::open(config.store_config()).await?;
    let result = run_on(&config, store.clone(), command, password).await;
    store.close().await;
    result
}

async fn run_on(
    config: &Config,
    store: Store,
    command: AdminCommand,
    password: impl FnOnce() -> Result<String, AdminError>,
) -> Result<String, AdminError> {
    if let Some(pg) = store.shared() {
        pg.wait_ready(Duration::from_secs(30)).await?;
    }
    let clock = Clock::system();
    let gate = Gate::new(store, clock.clone(), Duration::ZERO);
    let system = gate.system();
    let meta = RequestMeta {
        ip: None,
        user_agent: Some("coditect-hub admin".into()),
        request_id: None,
    };
    let operator = std::env::var("USER").ok();
    match command {
        AdminCommand::CreateTenant { name } => {
            crate::tenants::check_name(&name, "--name")
                .map_err(|e| AdminError::Input(e.message().into()))?;
            if system.find_tenant(&name).await?.is_some() {
                return Err(AdminError::Input(format!(
                    "a tenant named {name} already exists"
                )));
            }
            let tenant = system.ensure_tenant(&name).await?;
            gate.auditor()
                .record(
                    AuditEvent::cli(
                        tenant.id,
                        operator,
                        "tenant.create",
                        "tenant",
                        Some(tenant.id.to_string()),
                    ),
                    &meta,
                )
                .await;
            Ok(format!("created tenant {} ({})", tenant.name, tenant.id))
        }
        AdminCommand::CreateUser {
            email,
            role,
            tenant,
            create_tenant,
            platform_admin,
            no_password,
        } => {
            let password = if no_password { None } else { Some(password()?) };
            let passwords =
                Passwords::new(config.auth.argon2_memory_kib, config.auth.argon2_iterations);
            let tenant = tenant.unwrap_or_else(|| config.bootstrap_tenant.clone());
            let (tenant_id, user_id): (TenantId, _) = bootstrap::create_account(
                &system,
                &passwords,
                &clock,
                NewAccount {
                    email: email.clone(),
                    password,
                    role,
                    platform_admin,
                    tenant,
                    create_tenant,
                },
            )
            .await?;
            gate.auditor()
                .record(
                    AuditEvent::cli(
                        tenant_id,
                        operator,
                        "user.create",
                        "user",
                        Some(user_id.to_string()),
                    )
                    .detail(format!("role={role} platform_admin={platform_admin}")),
                    &meta,
                )
                .await;
            Ok(format!(
                "created user {email} ({user_id}) in tenant {tenant_id}"
            ))
        }
        AdminCommand::RotateKey => {
            let keys = KeyRing::open(crate::server::key_config(config), clock).await?;
            let kid = keys.rotate(system.signing_keys()).await?;
            Ok(format!(
                "signing with new key {kid}; a running hub picks it up within 30 s"
            ))
        }
    }
}
