"""Sends logs to a hub with the official OpenTelemetry Python SDK, configured only by the
standard OTEL_* environment variables (as in the README). Used by tests/protocols.rs."""

import logging

from opentelemetry import trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider

provider = LoggerProvider()  # reads OTEL_RESOURCE_ATTRIBUTES
provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
set_logger_provider(provider)
trace.set_tracer_provider(TracerProvider())

log = logging.getLogger("checkout")
log.setLevel(logging.DEBUG)
log.addHandler(LoggingHandler(logger_provider=provider))

log.info("cart loaded", extra={"cart.items": 3})
with trace.get_tracer("checkout").start_as_current_span("pay"):
    log.error("payment declined")
log.warning("retrying")
provider.shutdown()  # flushes; raises nothing, so the test checks what arrived
