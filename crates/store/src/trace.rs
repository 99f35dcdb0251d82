//! Spans of the calls into the engines, for the hub's trace export: TRACE level under the
//! `coditect_store` target, so the log never shows them and, when no trace exporter
//! listens, they are disabled at their call sites and cost nothing.

use tracing::Span;

/// One call into an engine: `system` is `sqlite` or `postgresql`, `operation` what it
/// does (`SELECT`, `write`, `append_chunk`, …), `statement` its SQL when there is one
/// statement (parameters are bound, never part of it).
pub(crate) fn call(system: &'static str, operation: &str, statement: Option<&str>) -> Span {
    tracing::trace_span!(
        target: "coditect_store",
        "db",
        otel.name = %format_args!("{system} {operation}"),
        otel.kind = "client",
        db.system.name = system,
        db.operation.name = %operation,
        db.query.text = statement,
    )
}

/// The SQL verb a statement starts with (`SELECT`, `INSERT`, `WITH`, …).
pub(crate) fn verb(sql: &str) -> &str {
    sql.split_whitespace().next().unwrap_or("SQL")
}
