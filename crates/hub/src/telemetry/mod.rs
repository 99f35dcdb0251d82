//! Logs, metrics and traces: how the hub reports on itself.

pub mod logging;
pub mod metrics;
pub mod traces;
