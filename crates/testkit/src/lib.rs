//! Test support shared by the crates' test suites and the bench: throw-away PostgreSQL
//! clusters and fresh databases on the suite's cluster, and the real hub binary as a child
//! process ([`hub::HubProcess`]) for its clients' tests. Never a production dependency.
//!
//! The suite's cluster is provisioned by `scripts/test`, which exports its base URL as
//! `CODITECT_TEST_PG` (`postgres://user@127.0.0.1:port`). Tests that must stop or restart
//! PostgreSQL start a private [`PgCluster`] instead.

pub mod fake;
pub mod git_http;
pub mod github;
pub mod hub;
pub mod kube_api;
pub mod pg;

pub use pg::{PgCluster, fresh_database, suite_pg_url};

/// Serves `router` on a random loopback port until the runtime ends; its `http://` URL.
pub async fn serve(router: axum::Router, what: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind {what}: {e}"));
    let url = format!(
        "http://{}",
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("the address of {what}: {e}"))
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}
