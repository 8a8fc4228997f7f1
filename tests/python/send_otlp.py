"""Sends an ERP posting trace and a warehouse log through the OpenTelemetry
Python SDK's OTLP/HTTP exporters, then prints the ids it used as JSON.

Usage: send_otlp.py <base-url> <http|grpc>
  (e.g. http://127.0.0.1:4318 http, or http://127.0.0.1:4317 grpc)
"""
import json
import logging
import sys

from opentelemetry import trace
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

base, protocol = sys.argv[1], sys.argv[2]
if protocol == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    span_exporter = OTLPSpanExporter(endpoint=base, insecure=True)
    log_exporter = OTLPLogExporter(endpoint=base, insecure=True)
else:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    span_exporter = OTLPSpanExporter(endpoint=f"{base}/v1/traces")
    log_exporter = OTLPLogExporter(endpoint=f"{base}/v1/logs")
resource = Resource.create({"service.name": "sap-erp", "deployment.environment": "test"})

tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
tracer = tracer_provider.get_tracer("erp.posting", "2.1.0")

logger_provider = LoggerProvider(resource=resource)
logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
log = logging.getLogger("warehouse")
log.propagate = False
log.setLevel(logging.INFO)
log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=logger_provider))

with tracer.start_as_current_span(
    "erp.sales_order.post",
    kind=SpanKind.SERVER,
    attributes={
        "biz.key.order": "PO-1001",
        "biz.key.sales_order": "SO-9001",
        "erp.lines": 3,
        "erp.amount": 1250.5,
        "erp.priority": True,
        "erp.plants": ["DE01", "PL02"],
    },
) as parent:
    parent.add_event("credit.checked", {"biz.outcome": "ok"})
    parent_context = parent.get_span_context()
    with tracer.start_as_current_span("wms.shipment.dispatch", kind=SpanKind.CLIENT, links=[Link(parent_context, {"link.kind": "follows"})]) as child:
        child.set_status(Status(StatusCode.ERROR, "carrier rejected"))
        child_context = child.get_span_context()
        log.warning("shipment SH-1 rejected by carrier", extra={"biz.key.shipment": "SH-1"})

tracer_provider.shutdown()
logger_provider.shutdown()
print(json.dumps({
    "trace_id": format(parent_context.trace_id, "032x"),
    "parent_span_id": format(parent_context.span_id, "016x"),
    "child_span_id": format(child_context.span_id, "016x"),
}))
