//! `codi-monitor`: the daemon on each developer machine or workspace (ADR-031).
//!
//! - [`config`]: settings and the default paths `codi2` shares;
//! - [`store`]: the local SQLite store (durable before any acknowledgement);
//! - [`salvage`]: a corrupt store moved aside and its readable rows kept;
//! - [`ipc`]: the Unix socket / TCP server speaking `coditect_proto::ipc`;
//! - [`daemon`]: start-up, the accept loops and graceful shutdown; [`conns`]: the
//!   connection budget (idle clients make room, silent TCP clients have their own);
//! - [`watch`]: file watching, attributed to sessions; [`export`]: archiving matched files;
//! - [`sync`]: sending entries to the hub, no loss, no duplicates; [`hub_http`]: the
//!   rules for talking to the hub (checked URL, no redirects, bounded answers);
//! - [`http`]: `/health` and `/metrics` on loopback;
//! - [`supervise`]: `codi-monitor supervise`, keeping a daemon alive; [`cli`]: the command line;
//! - [`client`]: a client of the IPC protocol (`codi2`, benchmarks, tests);
//! - [`agent`]: `codi-monitor agent`, the daemon as the agent inside a workspace.

pub mod agent;
pub mod cli;
pub mod client;
pub mod config;
pub mod conns;
pub mod daemon;
pub mod export;
pub mod http;
pub mod hub_http;
pub mod ipc;
pub mod salvage;
pub mod store;
pub mod supervise;
pub mod sync;
pub mod watch;
