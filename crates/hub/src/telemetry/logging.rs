//! Structured logs on stderr, as text or JSON. The filter comes from `RUST_LOG` when set,
//! else from the `log_level` setting. Messages are lower-case without trailing
//! punctuation; values travel as fields.

use super::traces::Traces;
use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Installs the global subscriber writing to stderr, and exporting spans when `traces`
/// is given. Safe to call more than once (later calls are no-ops), which keeps in-process
/// test servers simple.
pub fn init(format: LogFormat, level: &str, traces: Option<&Traces>) {
    init_with_writer(format, level, std::io::stderr, traces);
}

/// Like [`init`], writing wherever `writer` says (tests capture logs this way).
pub fn init_with_writer<W>(format: LogFormat, level: &str, writer: W, traces: Option<&Traces>)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    // The log's filter applies to the log only: the trace exporter has its own.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::builder().parse(v).ok())
        .or_else(|| EnvFilter::builder().parse(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let log: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(traces.map(Traces::layer))
        .try_init();
}

/// Routes panics through the log (inside the current request's span, so they carry its
/// request id) instead of raw text on stderr, which would break JSON log output. Only the
/// binary installs it: tests keep the default hook to show their own failures.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(panic = message, %location, "panic");
    }));
}
