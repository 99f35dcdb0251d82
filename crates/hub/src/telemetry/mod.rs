//! Logs and metrics: how the hub reports on itself.

pub mod logging;
pub mod metrics;
