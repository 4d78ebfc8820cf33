"""Tracing: one command's trip as OpenTelemetry spans, off unless an OTLP endpoint is set.

A command's trace, from the producer's span in its ``traceparent`` header::

    lovense.receive        the delivery, from the consume callback to its ack (CONSUMER)
      lovense.schedule     the command in the scheduler: rate-limit wait, superseded, batched
        lovense.call       one per attempt of one call to Lovense (CLIENT); a batched call is
                           a child of its first command's schedule span, linked to the others
      lovense.publish      the result (and dead letter) published and confirmed (PRODUCER)

Spans are made here, for the runtime and the adapters, at three seams: the settler
(receive, publish), the runtime (schedule, and the context calls run in) and the
dispatcher's one call seam. The pure core never sees them.

Tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
is set: the OpenTelemetry SDK exports over OTLP HTTP/protobuf, configured by the
standard ``OTEL_*`` variables (sampler, service name, batch processor). Off, every
method here returns at its first line and the SDK is never imported.

No span carries a token, a utoken, AMQP credentials, a LAN address or a list of
uids; a uid only with ``LOVENSE_TRACE_UIDS=1``. LAN calls say ``server.address=lan``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from worker.contract import topology

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

#: Either variable turns tracing on (the SDK reads them, and every other ``OTEL_*``).
ENDPOINT_VARIABLES: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
#: W3C trace context headers, in AMQP message headers as in HTTP.
TRACEPARENT: Final = topology.TRACEPARENT_HEADER
TRACESTATE: Final = topology.TRACESTATE_HEADER
#: A longer header value is not trace context (W3C: traceparent is 55 characters,
#: tracestate at most 32 entries of 256): it is ignored, never parsed.
_MAX_HEADER: Final = 1024
#: The batch span processor's queue and batch, unless ``OTEL_BSP_*`` set them.
BSP_QUEUE: Final = 16_384
BSP_BATCH: Final = 4_096
#: Links a batched call span carries at most (the rest are counted in an attribute).
MAX_LINKS: Final = 128

_propagator: Final = TraceContextTextMapPropagator()
#: The attempt number of the call about to go out (set by the dispatcher's retry loops).
call_attempt: contextvars.ContextVar[int] = contextvars.ContextVar("lovense_attempt", default=1)
#: Schedule spans of the other commands a batched call carries.
_links: contextvars.ContextVar[Sequence[Span]] = contextvars.ContextVar(
    "lovense_links", default=())


#: A receive span and the context token that made it current (:meth:`Tracing.receive`).
Receiving = tuple[Span, object]


def wanted(environ: Mapping[str, str]) -> bool:
    """Return whether the environment asks for tracing (an OTLP endpoint is set)."""
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def _bsp(environ: Mapping[str, str], name: str, default: int) -> int | None:
    """Return the worker's default for a batch processor setting, or None (the SDK reads
    the variable itself) when it is set."""
    return None if environ.get(name, "").strip() else default


def traces_endpoint(environ: Mapping[str, str]) -> str:
    """Return where spans go: the traces endpoint as given, else ``<endpoint>/v1/traces``."""
    given = environ.get(ENDPOINT_VARIABLES[0], "").strip()
    if given:
        return given
    return environ.get(ENDPOINT_VARIABLES[1], "").strip().rstrip("/") + "/v1/traces"


def _text(value: object) -> str | None:
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) and len(value) <= _MAX_HEADER else None


def extract(headers: Mapping[str, Any] | None) -> otel_context.Context:
    """Return the trace context a message's headers carry (an empty one if none or bad)."""
    carrier: dict[str, str] = {}
    for name in (TRACEPARENT, TRACESTATE):
        value = _text((headers or {}).get(name))
        if value is not None:
            carrier[name] = value
    return _propagator.extract(carrier) if carrier else otel_context.Context()


def trace_ids(span: Span | None = None) -> tuple[str, str] | None:
    """Return the (trace id, span id) of a span (default: the current one) in hex, if any."""
    found = span if span is not None else trace.get_current_span()
    ctx = found.get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def add_trace_ids(_logger: object, _name: str, event: MutableMapping[str, Any]
                  ) -> MutableMapping[str, Any]:
    """structlog processor: add ``trace_id`` and ``span_id`` of the current span, if any."""
    ids = trace_ids()
    if ids is not None:
        event.setdefault("trace_id", ids[0])
        event.setdefault("span_id", ids[1])
    return event


class Tracing:
    """The worker's spans; every method is a no-op (returning None) when tracing is off."""

    def __init__(self, provider: TracerProvider | None = None, *, trace_uids: bool = False,
                 api_base: str = "") -> None:
        self._provider = provider
        self._tracer: Tracer | None = (
            provider.get_tracer("lovense-worker") if provider is not None else None)
        self.trace_uids = trace_uids
        self._api_host = urlsplit(api_base).hostname or ""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, trace_uids: bool = False,
                     api_base: str = "") -> Tracing:
        """Return tracing as the environment asks: off, or the SDK exporting over OTLP HTTP."""
        if not wanted(environ):
            return cls(trace_uids=trace_uids, api_base=api_base)
        # Imported only when on: a worker without tracing never loads the SDK.
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from worker.otlp import SpanExporter

        # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the sampler,
        # the batch processor and the exporter read their own OTEL_* variables.
        resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME")
                                    or "lovense-worker"})
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        # Bigger batches than the SDK's defaults (512 of 2,048 queued) unless OTEL_BSP_* says
        # otherwise: at 4 spans a command the defaults post several requests a second.
        processor = BatchSpanProcessor(
            SpanExporter(endpoint=traces_endpoint(environ)),
            max_queue_size=_bsp(environ, "OTEL_BSP_MAX_QUEUE_SIZE", BSP_QUEUE),
            max_export_batch_size=_bsp(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", BSP_BATCH))
        provider.add_span_processor(processor)
        return cls(provider, trace_uids=trace_uids, api_base=api_base)

    @property
    def enabled(self) -> bool:
        """Return whether spans are made."""
        return self._tracer is not None

    def shutdown(self) -> None:
        """Export what is buffered and stop (blocking: run it in a thread)."""
        if self._provider is not None:
            self._provider.shutdown()

    def force_flush(self, timeout_ms: int = 5_000) -> bool:
        """Export what is buffered now (blocking); return whether it all went."""
        return self._provider.force_flush(timeout_ms) if self._provider is not None else True

    # ------------------------------------------------------------------ receive

    def receive(self, headers: Mapping[str, Any] | None, *, lane: str, exchange: str,
                message_id: str | None, size: int, queue_wait_ms: float | None,
                ) -> Receiving | None:
        """Start the span of one delivery as a child of its producer's, and make it current.

        Return what :meth:`received` needs to end it (None when off).
        """
        if self._tracer is None:
            return None
        attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq", "messaging.operation.type": "process",
            "messaging.operation.name": "consume", "messaging.destination.name": exchange,
            "messaging.message.body.size": size, "lovense.lane": lane,
        }
        if message_id is not None:
            attributes["messaging.message.id"] = message_id
        if queue_wait_ms is not None:
            attributes["lovense.queue_wait_ms"] = round(queue_wait_ms, 3)
        span = self._tracer.start_span("lovense.receive", context=extract(headers),
                                       kind=SpanKind.CONSUMER, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token

    @staticmethod
    def received(started: Receiving | None, *, command: str | None = None,
                 status: str | None = None, dead_lettered: bool = False,
                 error: BaseException | None = None) -> None:
        """End a receive span with how the delivery ended."""
        if started is None:
            return
        span, token = started
        # One set_attributes: the SDK takes its lock once, not once an attribute.
        attributes: dict[str, Any] = {}
        if command is not None:
            attributes["lovense.command"] = command
        if status is not None:
            attributes["lovense.status"] = status
        if dead_lettered:
            attributes["lovense.dead_lettered"] = True
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            attributes["error.type"] = type(error).__name__
        span.set_attributes(attributes)
        otel_context.detach(token)  # type: ignore[arg-type]
        span.end()

    def uid(self, span: Span | None, uid: str | None, users: int) -> None:
        """Say whom a command is for: the uid with ``LOVENSE_TRACE_UIDS=1``, else a count."""
        if span is None:
            return
        span.set_attribute("lovense.users", users)
        if self.trace_uids and uid is not None:
            span.set_attribute("lovense.uid", uid)

    # ------------------------------------------------------------------ schedule

    def schedule(self, command: str, users: int) -> Span | None:
        """Start a command's schedule span, a child of the current (receive) span."""
        if self._tracer is None:
            return None
        return self._tracer.start_span("lovense.schedule", attributes={
            "lovense.command": command, "lovense.users": users})

    @staticmethod
    def scheduled(span: Span, status: str, superseded_by: str | None, code: int | None,
                  calls: int) -> None:
        """End a schedule span with the command's status and what ended it."""
        attributes: dict[str, Any] = {"lovense.status": status, "lovense.calls": calls}
        if superseded_by is not None:
            attributes["lovense.superseded_by"] = superseded_by
        if code is not None:
            attributes["lovense.code"] = code
        span.set_attributes(attributes)
        if status == "failed":
            span.set_status(Status(StatusCode.ERROR, status))
        span.end()

    @staticmethod
    def calls_under(parent: Span | None, others: Sequence[Span | None] = ()
                    ) -> AbstractContextManager[None]:
        """Run calls as children of ``parent``, linked to the other commands they carry."""
        return _NOTHING if parent is None else _calls_under(parent, others)

    def publishing(self, routing_key: str) -> AbstractContextManager[Span | None]:
        """Span a result's publish and confirm (and dead letter), a child of the current span."""
        if self._tracer is None:
            return _NOTHING
        return _publishing(self._tracer.start_span(
            "lovense.publish", kind=SpanKind.PRODUCER, attributes={
                "messaging.system": "rabbitmq", "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": "lovense.results",
                "messaging.rabbitmq.destination.routing_key": routing_key}))

    # ------------------------------------------------------------------ calls

    def call(self, route: str, command: str) -> Span | None:
        """Start the span of one call to Lovense (one attempt), a child of the current span."""
        if self._tracer is None:
            return None
        others = _links.get()
        attributes: dict[str, Any] = {
            "lovense.route": route, "lovense.command": command,
            "lovense.attempt": call_attempt.get(), "http.request.method": "POST",
            # A LAN call names no address: the app's IP is the user's home network.
            "server.address": self._api_host if route == "server" else "lan",
        }
        if len(others) > MAX_LINKS:
            attributes["lovense.links_dropped"] = len(others) - MAX_LINKS
        return self._tracer.start_span(
            "lovense.call", kind=SpanKind.CLIENT, attributes=attributes,
            links=[Link(s.get_span_context()) for s in others[:MAX_LINKS]])

    @staticmethod
    def called(span: Span | None, *, code: int | None = None, ok: bool = False,
               error: BaseException | None = None, not_delivered: bool = False) -> None:
        """End a call span with Lovense's code, or how the call failed."""
        if span is None:
            return
        if code is not None:
            span.set_attribute("lovense.code", code)
        if error is not None:
            kind = "not_delivered" if not_delivered else "maybe_delivered"
            span.set_attributes({"lovense.delivery": kind, "error.type": kind})
            span.set_status(Status(StatusCode.ERROR, kind))
        elif not ok:
            span.set_status(Status(StatusCode.ERROR, f"code {code}"))
        span.end()

    # ------------------------------------------------------------------ publish

    @staticmethod
    def inject(headers: dict[str, Any], span: Span | None = None) -> None:
        """Write ``traceparent`` (and ``tracestate``) of a span (default: the current one)."""
        headers.pop(TRACEPARENT, None)
        headers.pop(TRACESTATE, None)
        ctx = trace.set_span_in_context(span) if span is not None else None
        _propagator.inject(headers, context=ctx)

    @staticmethod
    def exemplar(span: Span | None = None) -> dict[str, str] | None:
        """Return a Prometheus exemplar naming a span's trace (default: the current one), if
        that trace is sampled: an exemplar must lead to a trace that exists."""
        found = span if span is not None else trace.get_current_span()
        ctx = found.get_span_context()
        if not (ctx.is_valid and ctx.trace_flags.sampled):
            return None
        return {"trace_id": format(ctx.trace_id, "032x")}


#: What the span context managers are when there is nothing to do: no generator, no frame.
_NOTHING: Final = nullcontext()


@contextmanager
def _calls_under(parent: Span, others: Sequence[Span | None]) -> Iterator[None]:
    token = otel_context.attach(trace.set_span_in_context(parent))
    links = _links.set([s for s in others if s is not None and s is not parent])
    try:
        yield
    finally:
        _links.reset(links)
        otel_context.detach(token)


@contextmanager
def _publishing(span: Span) -> Iterator[Span]:
    try:
        yield span
    except BaseException as exc:
        span.set_attribute("error.type", type(exc).__name__)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        span.end()


#: Tracing off: what a component uses when none is given.
OFF: Final = Tracing()
