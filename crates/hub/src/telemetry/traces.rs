//! Traces of the hub itself: OpenTelemetry spans for requests (and the store calls made
//! while serving them), exported over OTLP/HTTP (protobuf) when an endpoint is configured
//! (`--otel-endpoint`, or the standard `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`). Off by
//! default; off, no layer is installed and the store's spans are disabled at their call
//! sites, so they cost nothing.
//!
//! A request's W3C `traceparent` is continued (the request span becomes a child of the
//! caller's span), and the trace id is a field of the request span, so it is on every log
//! line the request produces, exported or not.

use crate::config::OtelConfig;
use axum::http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::OnceLock;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Spans of the store calls: TRACE level, so the log never shows them and, with no trace
/// export, nothing listens to them.
pub const STORE_TARGET: &str = "coditect_store";

/// Whether spans are exported (set once, when the exporter is installed).
static EXPORTING: OnceLock<()> = OnceLock::new();

pub fn exporting() -> bool {
    EXPORTING.get().is_some()
}

/// The exporter and its provider; flushes what is buffered when shut down.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Builds the OTLP/HTTP exporter and its batching provider.
    pub fn start(config: &OtelConfig) -> Result<Traces, String> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
        if let Some(endpoint) = &config.endpoint {
            exporter = exporter.with_endpoint(endpoint.clone());
        }
        let exporter = exporter
            .build()
            .map_err(|e| format!("cannot build the OTLP trace exporter: {e}"))?;
        let mut resource = opentelemetry_sdk::Resource::builder().with_attribute(
            opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        );
        if let Some(name) = &config.service_name {
            resource = resource.with_service_name(name.clone());
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        Ok(Traces { provider })
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans: the hub's own (the
    /// request span and whatever runs inside it) and the store calls.
    pub fn layer<S>(&self) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
    where
        S: tracing::Subscriber + Send + Sync + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use tracing_subscriber::Layer;
        let _ = EXPORTING.set(());
        // The hub's spans (the request's, and those inside it) and the store calls made
        // inside one: a store call of a background job alone is no trace worth sending.
        let filter = tracing_subscriber::filter::DynFilterFn::new(|meta, cx| {
            if meta.target().starts_with(STORE_TARGET) {
                cx.lookup_current().is_some()
            } else {
                meta.target().starts_with("coditect_hub") && *meta.level() <= tracing::Level::INFO
            }
        });
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("coditect-hub"))
            .with_filter(filter)
            .boxed()
    }

    /// Exports what is still buffered (called once serving ended).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "trace exporter did not shut down cleanly");
        }
    }
}

/// Makes `span` (a request's) continue the caller's trace when the request carries a
/// valid `traceparent`, and returns the trace id the request is part of, for the log:
/// the exported span's when exporting, else the caller's (`None` without one).
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) -> Option<String> {
    let propagator = TraceContextPropagator::new();
    let parent = propagator.extract(&HeaderText(headers));
    let remote = parent.span().span_context().clone();
    if exporting() {
        if remote.is_valid() {
            // The span was just created: it has no parent yet, so this cannot fail.
            let _ = span.set_parent(parent);
        }
        let own = span.context().span().span_context().trace_id();
        return (own != opentelemetry::trace::TraceId::INVALID).then(|| own.to_string());
    }
    remote.is_valid().then(|| remote.trace_id().to_string())
}

struct HeaderText<'a>(&'a HeaderMap);

impl Extractor for HeaderText<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caller_s_trace_id_is_read_from_a_valid_traceparent_only() {
        let span = tracing::Span::none();
        let mut headers = HeaderMap::new();
        assert_eq!(continue_trace(&span, &headers), None);
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(
            continue_trace(&span, &headers).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            headers.insert(
                "traceparent",
                bad.parse().unwrap_or_else(|_| unreachable!()),
            );
            assert_eq!(continue_trace(&span, &headers), None, "{bad}");
        }
    }
}
