"""Tracing's pieces in memory: what turns it on, reading hostile trace headers, links,
injection, log fields and exemplars (the whole trip is in tests/integration/test_tracing.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from worker.adapters.http.health import HealthServer
from worker.metrics import Metrics
from worker.tracing import (
    MAX_LINKS,
    OFF,
    Tracing,
    add_trace_ids,
    extract,
    traces_endpoint,
    wanted,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


@pytest.fixture
def exported() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider, api_base="https://api.lovense-api.com"), exporter
    provider.shutdown()


def test_an_otlp_endpoint_turns_tracing_on_and_names_where_spans_go() -> None:
    """Either endpoint variable turns tracing on; the general one gains /v1/traces."""
    assert (wanted({}), wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": " "})) == (False, False)
    assert wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) is True
    assert wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/x"}) is True
    assert traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == (
        "http://c:4318/v1/traces")
    assert traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/x"}) == "http://t:1/x"
    assert Tracing.from_environ({}).enabled is False


def _trace_id_of(headers: dict[str, Any]) -> str | None:
    ctx = trace.get_current_span(extract(headers)).get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


@pytest.mark.parametrize(("headers", "expected"), [
    ({"traceparent": TRACEPARENT}, TRACE_ID),
    ({"traceparent": TRACEPARENT.encode()}, TRACE_ID),  # pamqp: a long string as bytes
    ({"traceparent": bytearray(TRACEPARENT.encode())}, TRACE_ID),
    ({"traceparent": TRACEPARENT + " " * 2000}, None),  # longer than trace context can be
    ({"traceparent": "x" * (1 << 20)}, None),  # 1 MiB: ignored, never parsed
    ({"traceparent": "00-" + "é" * 32 + f"-{SPAN_ID}-01"}, None),
    ({"traceparent": "é".encode() * 20}, None),  # not ASCII
    ({"traceparent": 12345}, None),
    ({"traceparent": {"nested": [TRACEPARENT]}}, None),
    ({"traceparent": f"00-{'0' * 32}-{SPAN_ID}-01"}, None),  # an all-zero trace id
    ({"traceparent": "not-trace-context"}, None),
    ({}, None),
])
def test_trace_headers_are_read_only_when_they_are_trace_context(
        headers: dict[str, Any], expected: str | None) -> None:
    """A producer's traceparent is continued; anything else (bytes not ASCII, 1 MiB, a number,
    a table, a malformed or zero id) starts a new trace, never an error."""
    assert _trace_id_of(headers) == expected


def test_tracing_off_makes_no_spans() -> None:
    """Off, every span method returns None and calls_under changes nothing."""
    assert OFF.enabled is False
    assert OFF.receive({"traceparent": TRACEPARENT}, lane="commands", exchange="x",
                       message_id="m", size=1, queue_wait_ms=None) is None
    assert (OFF.schedule("Function", 1), OFF.call("server", "Function")) == (None, None)
    with OFF.publishing("ok.Function") as span, OFF.calls_under(None):
        assert span is None
        assert not trace.get_current_span().get_span_context().is_valid


def test_a_receive_span_continues_the_producer_and_is_current_until_received(
        exported: tuple[Tracing, InMemorySpanExporter]) -> None:
    """The receive span is a child of the header's span and current until it ends."""
    tracing, exporter = exported
    started = tracing.receive({"traceparent": TRACEPARENT}, lane="stop", exchange="lovense.stop",
                              message_id="m-1", size=42, queue_wait_ms=1.23456)
    assert started is not None
    assert trace.get_current_span() is started[0]
    tracing.received(started, command="Stop", status="ok")
    assert not trace.get_current_span().get_span_context().is_valid
    [span] = exporter.get_finished_spans()
    assert span.parent is not None
    assert (format(span.context.trace_id, "032x"), format(span.parent.span_id, "016x")) == (
        TRACE_ID, SPAN_ID)
    assert dict(span.attributes or {}) == {
        "messaging.system": "rabbitmq", "messaging.operation.type": "process",
        "messaging.operation.name": "consume", "messaging.destination.name": "lovense.stop",
        "messaging.message.body.size": 42, "lovense.lane": "stop",
        "messaging.message.id": "m-1", "lovense.queue_wait_ms": 1.235,
        "lovense.command": "Stop", "lovense.status": "ok"}


def test_a_call_links_at_most_max_links_commands_and_says_how_many_it_left_out(
        exported: tuple[Tracing, InMemorySpanExporter]) -> None:
    """A call carrying more commands than MAX_LINKS links the first MAX_LINKS and counts the
    rest; its parent is the first command's schedule span, which is never linked."""
    tracing, exporter = exported
    schedules = [tracing.schedule("Function", 1) for _ in range(MAX_LINKS + 6)]
    with tracing.calls_under(schedules[0], schedules):
        call = tracing.call("server", "Function")
    assert call is not None
    tracing.called(call, code=200, ok=True)
    [ended] = exporter.get_finished_spans()
    assert ended.parent is not None and schedules[0] is not None
    assert ended.parent.span_id == schedules[0].get_span_context().span_id
    assert [link.context.span_id for link in ended.links] == [
        s.get_span_context().span_id for s in schedules[1:MAX_LINKS + 1] if s is not None]
    attributes = dict(ended.attributes or {})
    assert (attributes["lovense.links_dropped"], attributes["server.address"],
            attributes["lovense.code"]) == (5, "api.lovense-api.com", 200)


def test_inject_replaces_a_stale_traceparent_with_the_spans(
        exported: tuple[Tracing, InMemorySpanExporter]) -> None:
    """Injected headers carry the given span's context, never the one copied from a command."""
    tracing, _ = exported
    span = tracing.schedule("Stop", 1)
    assert span is not None
    headers: dict[str, Any] = {"traceparent": TRACEPARENT, "tracestate": "a=b", "x": 1}
    Tracing.inject(headers, span)
    ctx = span.get_span_context()
    assert headers == {"x": 1, "traceparent":
                       f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"}


def test_log_events_inside_a_span_carry_its_ids(
        exported: tuple[Tracing, InMemorySpanExporter]) -> None:
    """The structlog processor adds trace_id and span_id inside a span, nothing outside."""
    tracing, _ = exported
    assert add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}
    span = tracing.schedule("Function", 1)
    assert span is not None
    ctx = span.get_span_context()
    with tracing.calls_under(span):
        assert add_trace_ids(None, "info", {"event": "x"}) == {
            "event": "x", "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}


async def test_metrics_serve_openmetrics_with_exemplars_when_asked(
        exported: tuple[Tracing, InMemorySpanExporter]) -> None:
    """/metrics answers OpenMetrics, exemplar included, to a scraper that asks for it, and the
    Prometheus text format otherwise."""
    tracing, _ = exported
    metrics = Metrics()
    span = tracing.schedule("Function", 1)
    exemplar = tracing.exemplar(span)
    assert span is not None and exemplar == {
        "trace_id": f"{span.get_span_context().trace_id:032x}"}
    metrics.child(metrics.end_to_end, "Function").observe(0.2, exemplar)
    health = HealthServer(metrics.registry, lambda: True, "127.0.0.1", 0)
    asked = make_mocked_request("GET", "/metrics", headers={
        "Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"})
    answer = await health._metrics_view(asked)
    assert answer.content_type == "application/openmetrics-text"
    assert isinstance(answer.body, bytes)
    assert (f'lovense_worker_end_to_end_seconds_bucket{{command="Function",le="0.25"}} 1.0 # '
            f'{{trace_id="{exemplar["trace_id"]}"}} 0.2').encode() in answer.body
    plain = await health._metrics_view(make_mocked_request("GET", "/metrics"))
    assert plain.content_type == "text/plain"
    assert isinstance(plain.body, bytes) and b"trace_id" not in plain.body


def test_an_unsampled_trace_gives_no_exemplar() -> None:
    """A command whose trace is not sampled carries its context on but puts no exemplar on
    the histograms: it would name a trace that was never exported."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    provider = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False)
    tracing = Tracing(provider)
    span = tracing.schedule("Function", 1)
    assert span is not None and span.get_span_context().is_valid
    assert span.is_recording() is False
    assert tracing.exemplar(span) is None
    headers: dict[str, Any] = {}
    Tracing.inject(headers, span)
    assert int(headers["traceparent"][-2:], 16) & 1 == 0  # carried on, marked not sampled
