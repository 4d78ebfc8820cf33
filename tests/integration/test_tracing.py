"""Tracing end to end: a real OTLP/HTTP receiver on loopback, the worker exporting to it.

The receiver decodes what the worker's OpenTelemetry SDK posts (protobuf, with
``opentelemetry-proto``) and the tests assert the tree a command's trace forms:
receive (a child of the producer's span) → schedule → call(s), and publish under
receive, with the result's ``traceparent`` in the same trace.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from tests.integration.support import (
    AMQP_URL,
    ResultLog,
    capturing_results,
    dead_letters,
    free_port,
    until,
    worker_settings,
)
from worker.adapters.amqp.producer import Producer
from worker.app import Worker
from worker.config import Secret
from worker.contract import topology
from worker.contract.messages import result_decoder
from worker.simulator import SIMULATOR_TOKEN, Simulator
from worker.tracing import Tracing

SECRET = Secret("tracing-utoken-secret-" + "x" * 16)


@dataclass
class Receiver:
    """An OTLP/HTTP traces endpoint: every span posted to it, decoded."""

    spans: list[ProtoSpan] = field(default_factory=list)
    content_types: set[str] = field(default_factory=set)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.content_types.add(request.content_type)
        export = trace_service_pb2.ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")

    def of_trace(self, trace_id: str) -> list[ProtoSpan]:
        return [s for s in self.spans if s.trace_id.hex() == trace_id]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", got.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    got.url = f"http://127.0.0.1:{port}"
    yield got
    await runner.cleanup()


class Results(ResultLog):
    """Results of this test by id, with the headers they came with."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: dict[str, dict[str, Any]] = {}

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        await super().on_message(message)
        ident = result_decoder.decode(message.body).id
        self.headers[ident] = dict(message.headers or {})

    def status(self, ident: str) -> str | None:
        found = self.by_id.get(ident)
        return None if found is None else found.status


@pytest.fixture
async def results(clean_broker: None) -> AsyncIterator[Results]:
    async with capturing_results(Results()) as got:
        yield got


def _parent() -> tuple[str, str, str]:
    """Return a producer's (trace id, span id, traceparent)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def _value(value: AnyValue) -> Any:
    return getattr(value, value.WhichOneof("value") or "string_value")


def attrs(span: ProtoSpan) -> dict[str, Any]:
    """Return a span's attributes as a dict."""
    return {kv.key: _value(kv.value) for kv in span.attributes}


def named(spans: Iterable[ProtoSpan], name: str) -> list[ProtoSpan]:
    return sorted((s for s in spans if s.name == name), key=lambda s: s.start_time_unix_nano)


def _everything_said(spans: Iterable[ProtoSpan]) -> str:
    """Return every attribute key and value of every span (and link) as one text."""
    parts: list[str] = []
    for span in spans:
        for kv in [*span.attributes, *(a for link in span.links for a in link.attributes)]:
            parts.append(f"{kv.key}={_value(kv.value)}")
        parts.append(span.name)
    return "\n".join(parts)


async def _traced_worker(sim: Simulator, receiver: Receiver, **overrides: Any) -> Worker:
    tracing = Tracing.from_environ({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url},
                                   api_base=sim.server_url,
                                   trace_uids=bool(overrides.get("trace_uids")))
    assert tracing.enabled
    worker = Worker(worker_settings(sim, utoken_secret=SECRET, **overrides), tracing=tracing)
    await worker.start()
    return worker


async def _spans_of(worker: Worker, receiver: Receiver, trace_id: str,
                    expected: dict[str, int]) -> list[ProtoSpan]:
    """Flush the worker's spans and return the trace once it holds the expected names."""
    async def complete() -> bool:
        await asyncio.to_thread(worker.tracing.force_flush)
        spans = receiver.of_trace(trace_id)
        return all(len(named(spans, n)) >= count for n, count in expected.items())

    await until(complete, timeout=15, what=f"spans {expected} of trace {trace_id}")
    return receiver.of_trace(trace_id)


async def test_a_command_traces_receive_schedule_call_publish_under_its_producer(
    sim: Simulator, receiver: Receiver, results: Results, clean_broker: None
) -> None:
    """A server command with a parent context gives receive (child of the producer's span) →
    schedule → call, publish under receive, and a result whose traceparent is the publish
    span's; no span says the uid, the token or the broker's credentials."""
    worker = await _traced_worker(sim, receiver)
    try:
        trace_id, parent_id, traceparent = _parent()
        uid, ident = f"traced-{uuid.uuid4().hex[:8]}", f"cmd-{uuid.uuid4().hex[:8]}"
        async with Producer(AMQP_URL) as producer:
            await producer.publish(
                {"command": "Function", "uid": uid, "action": "Vibrate:5", "timeSec": 2,
                 "mode": "server", "id": ident}, headers={"traceparent": traceparent})
            await until(lambda: ident in results.by_id, what="the result")
        spans = await _spans_of(worker, receiver, trace_id, {
            "lovense.receive": 1, "lovense.schedule": 1, "lovense.call": 1,
            "lovense.publish": 1})
    finally:
        await worker.stop()

    [receive] = named(spans, "lovense.receive")
    [schedule] = named(spans, "lovense.schedule")
    [call] = named(spans, "lovense.call")
    [publish] = named(spans, "lovense.publish")
    assert receive.parent_span_id.hex() == parent_id
    assert receive.kind == ProtoSpan.SPAN_KIND_CONSUMER
    assert schedule.parent_span_id == receive.span_id
    assert call.parent_span_id == schedule.span_id
    assert publish.parent_span_id == receive.span_id
    assert (call.kind, publish.kind) == (ProtoSpan.SPAN_KIND_CLIENT, ProtoSpan.SPAN_KIND_PRODUCER)

    assert results.status(ident) == "ok"
    assert results.headers[ident]["traceparent"] == (
        f"00-{trace_id}-{publish.span_id.hex()}-01")

    got = attrs(receive)
    assert (got["messaging.system"], got["messaging.destination.name"],
            got["messaging.message.id"], got["lovense.lane"], got["lovense.command"],
            got["lovense.status"]) == (
        "rabbitmq", topology.COMMANDS_EXCHANGE, ident, "commands", "Function", "ok")
    assert got["lovense.queue_wait_ms"] >= 0
    got = attrs(schedule)
    assert (got["lovense.command"], got["lovense.users"], got["lovense.status"],
            got["lovense.calls"], got["lovense.code"]) == ("Function", 1, "ok", 1, 200)
    assert got["lovense.rate_limit_wait_ms"] >= 0
    assert "lovense.uid" not in got
    got = attrs(call)
    assert (got["lovense.route"], got["lovense.attempt"], got["lovense.code"],
            got["server.address"], got["http.request.method"]) == (
        "server", 1, 200, "127.0.0.1", "POST")

    said = _everything_said(spans)
    for secret in (uid, SIMULATOR_TOKEN, SECRET.reveal(), "guest", "amqp://"):
        assert secret not in said, secret


async def test_a_batched_call_links_its_commands_and_spans_each_attempt(
    sim: Simulator, receiver: Receiver, results: Results, clean_broker: None
) -> None:
    """Two commands merged into one server call: the call is a child of the first command's
    schedule span and links to the other's; a retried call has one span per attempt."""
    worker = await _traced_worker(sim, receiver, batch_window_ms=400)
    try:
        first_trace, _, first_parent = _parent()
        second_trace, _, second_parent = _parent()
        idents = [f"batch-{uuid.uuid4().hex[:8]}" for _ in range(2)]
        sim.set_faults(mode="reset")  # the first attempt's connection is dropped
        async with Producer(AMQP_URL) as producer:
            for ident, traceparent in zip(idents, (first_parent, second_parent), strict=True):
                await producer.publish(
                    {"command": "Function", "uid": f"user-{ident}", "action": "Vibrate:3",
                     "timeSec": 2, "mode": "server", "id": ident},
                    headers={"traceparent": traceparent})
            await until(lambda: len(sim.requests) >= 1, what="the first attempt")
            sim.set_faults()  # the retry, 50 ms or more later, is answered
            await until(lambda: all(i in results.by_id for i in idents), what="both results")
        first = await _spans_of(worker, receiver, first_trace, {
            "lovense.schedule": 1, "lovense.call": 2, "lovense.publish": 1})
        second = await _spans_of(worker, receiver, second_trace, {
            "lovense.schedule": 1, "lovense.publish": 1})
    finally:
        sim.set_faults()
        await worker.stop()

    assert [results.status(i) for i in idents] == ["ok", "ok"]
    [request_1, request_2] = [r for r in sim.requests if r.side == "server"]
    assert request_1.body["uid"] == request_2.body["uid"] == ",".join(
        f"user-{i}" for i in idents)
    [schedule] = named(first, "lovense.schedule")
    [other_schedule] = named(second, "lovense.schedule")
    calls = named(first, "lovense.call")
    assert [attrs(c)["lovense.attempt"] for c in calls] == [1, 2]
    assert [c.parent_span_id for c in calls] == [schedule.span_id] * 2
    assert attrs(calls[0])["lovense.delivery"] == "maybe_delivered"
    assert calls[0].status.code == calls[0].status.STATUS_CODE_ERROR
    assert attrs(calls[1])["lovense.code"] == 200
    for call in calls:
        assert [(link.trace_id.hex(), link.span_id) for link in call.links] == [
            (second_trace, other_schedule.span_id)]
    assert named(second, "lovense.call") == []
    for span in (schedule, other_schedule):
        got = attrs(span)
        assert (got["lovense.batched_uids"], got["lovense.batched_commands"]) == (2, 2)


async def test_a_lan_call_names_no_address(
    sim: Simulator, receiver: Receiver, results: Results, clean_broker: None
) -> None:
    """A LAN call's span says server.address=lan and carries no URL, IP, port or domain;
    with LOVENSE_TRACE_UIDS=1 the schedule span names the uid."""
    worker = await _traced_worker(sim, receiver, trace_uids=True)
    app = sim.apps[0]
    try:
        trace_id, _, traceparent = _parent()
        ident = f"lan-{uuid.uuid4().hex[:8]}"
        async with Producer(AMQP_URL) as producer:
            await producer.publish(
                {"command": "Function", "uid": app.uid, "action": "Vibrate:4", "timeSec": 2,
                 "mode": "lan", "lan": {"domain": app.domain, "httpsPort": app.https_port},
                 "id": ident}, headers={"traceparent": traceparent})
            await until(lambda: ident in results.by_id, what="the result")
        spans = await _spans_of(worker, receiver, trace_id, {
            "lovense.schedule": 1, "lovense.call": 1})
    finally:
        await worker.stop()

    assert results.status(ident) == "ok"
    [call] = named(spans, "lovense.call")
    got = attrs(call)
    assert (got["lovense.route"], got["server.address"]) == ("lan", "lan")
    assert not [key for key in got if key.startswith(("url.", "network.", "server.port"))]
    said = _everything_said(spans)
    for address in (app.domain, f":{app.https_port}", "127-0-0-1", "https://"):
        assert address not in said, address
    [schedule] = named(spans, "lovense.schedule")
    assert attrs(schedule)["lovense.uid"] == app.uid


async def test_a_dead_letter_and_a_stop_log_entry_carry_the_workers_context(
    sim: Simulator, receiver: Receiver, results: Results, clean_broker: None
) -> None:
    """An invalid command's dead letter carries its publish span's traceparent (not the
    producer's copied header); a Stop sent to lovense.commands is appended to the Stop log
    with its receive span's."""
    worker = await _traced_worker(sim, receiver)
    try:
        trace_id, parent_id, traceparent = _parent()
        stop_trace, _, stop_parent = _parent()
        bad, stop = f"bad-{uuid.uuid4().hex[:8]}", f"stop-{uuid.uuid4().hex[:8]}"
        async with Producer(AMQP_URL) as producer:
            await producer.publish({"command": "Function", "uid": "u", "action": "Vibrate:99",
                                    "timeSec": 2, "id": bad}, headers={"traceparent": traceparent})
            await producer.publish({"command": "Stop", "uid": f"user-{stop}", "id": stop},
                                   headers={"traceparent": stop_parent},
                                   exchange=topology.COMMANDS_EXCHANGE)
            await until(lambda: bad in results.by_id and stop in results.by_id,
                        what="both results")
        [dead] = await dead_letters(1)
        logged = await _stop_log_entry(stop)
        spans = await _spans_of(worker, receiver, trace_id, {"lovense.publish": 1})
        stop_spans = await _spans_of(worker, receiver, stop_trace, {"lovense.receive": 1})
    finally:
        await worker.stop()

    assert results.status(bad) == "invalid"
    [publish] = named(spans, "lovense.publish")
    [receive] = named(spans, "lovense.receive")
    assert receive.parent_span_id.hex() == parent_id
    assert attrs(receive)["lovense.dead_lettered"] is True
    headers = dict(dead.headers or {})
    assert headers["traceparent"] == f"00-{trace_id}-{publish.span_id.hex()}-01"
    assert str(headers[topology.ERROR_HEADER]).startswith("action:")
    [stop_receive] = named(stop_spans, "lovense.receive")
    assert logged["traceparent"] == f"00-{stop_trace}-{stop_receive.span_id.hex()}-01"


async def _stop_log_entry(ident: str) -> dict[str, Any]:
    """Return the headers of the Stop-log entry with this message id, reading the stream."""
    found: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def on_entry(message: AbstractIncomingMessage) -> None:
        await message.ack()
        if message.message_id == ident and not found.done():
            found.set_result(dict(message.headers or {}))

    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=100)
        queue = await channel.get_queue(topology.STOP_LOG, ensure=False)
        # From a minute ago: the entry is this test's, the log holds an hour of others.
        since = datetime.now(UTC) - timedelta(seconds=60)
        await queue.consume(on_entry, arguments={"x-stream-offset": since})
        return await asyncio.wait_for(found, 10)


async def test_the_publish_cli_injects_a_traceparent_a_worker_without_tracing_carries_on(
    worker: Worker, results: Results
) -> None:
    """`lovense-worker publish --traceparent` puts it on the command; a worker that does not
    trace copies it onto the result, so the producer's trace is not cut."""
    trace_id, span_id, traceparent = _parent()
    ident = f"cli-{uuid.uuid4().hex[:8]}"
    command = (f'{{"command": "Function", "uid": "cli-user", "action": "Vibrate:1", '
               f'"timeSec": 2, "mode": "server", "id": "{ident}"}}')
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "publish", command, "--traceparent", traceparent,
        "--amqp-url", AMQP_URL, stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    assert (process.returncode, out.decode().strip()) == (0, ident)
    await until(lambda: ident in results.by_id, what="the result")
    assert results.status(ident) == "ok"
    assert results.headers[ident]["traceparent"] == traceparent
    assert worker.tracing.enabled is False
