"""The hand-written OTLP encoding decodes to exactly what the official encoder makes."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from worker.otlp import encode_spans
from worker.tracing import extract


def _spans() -> tuple[ReadableSpan, ...]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "svc", "n": 3}),
                              shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("lovense-worker", "1.2")
    remote = extract({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                      "tracestate": "vendor=x,other=y"})
    root = tracer.start_span("lovense.receive", context=remote, kind=SpanKind.CONSUMER,
                             attributes={"s": "text é \u2603", "i": 42, "neg": -7, "f": 1.5,
                                         "b": True, "no": False, "list": ["a", "b"],
                                         "ints": [1, -2], "big": 2**63 - 1})
    child = tracer.start_span("lovense.call", kind=SpanKind.CLIENT,
                              links=[Link(root.get_span_context(), {"why": "batched"})],
                              context=None)
    child.add_event("retry", {"attempt": 2})
    child.set_status(Status(StatusCode.ERROR, "maybe_delivered"))
    child.end()
    ok = tracer.start_span("lovense.publish", kind=SpanKind.PRODUCER)
    ok.set_status(Status(StatusCode.OK))
    ok.end()
    root.end()
    other = TracerProvider(resource=Resource.create({"service.name": "two"}),
                           shutdown_on_exit=False)
    other.add_span_processor(SimpleSpanProcessor(exporter))
    other.get_tracer("another").start_span("x").end()
    return exporter.get_finished_spans()


def test_the_fast_encoding_decodes_to_the_official_encoders_message() -> None:
    """Spans of two resources and scopes, with every attribute type, a remote parent with
    trace state, links, events and each status decode to the same request as the official
    encoder's."""
    spans = _spans()
    ours = ExportTraceServiceRequest()
    ours.ParseFromString(encode_spans(spans))
    theirs = official(spans)
    assert ours == theirs
    assert len(ours.resource_spans) == 2
    assert [s.name for s in ours.resource_spans[0].scope_spans[0].spans] == [
        "lovense.call", "lovense.publish", "lovense.receive"]


def test_an_empty_batch_encodes_to_an_empty_request() -> None:
    """No spans, no bytes: an empty request."""
    assert encode_spans([]) == b""
