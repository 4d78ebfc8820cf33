"""Wiring and lifecycle: start, ready, drain, stop.

Start-up connects to RabbitMQ and declares the topology before it consumes;
shutdown stops consuming first, lets calls in flight finish within the grace
period and publish their results, and leaves everything else in RabbitMQ.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final

import structlog

from worker.adapters.amqp.broker import Broker
from worker.adapters.amqp.link import Link
from worker.adapters.amqp.publisher import Publisher
from worker.adapters.amqp.registry_log import RegistryLog
from worker.adapters.http.health import HealthServer
from worker.adapters.http.lovense import LovenseClient
from worker.config import Settings
from worker.contract import topology
from worker.core.assignment import Membership
from worker.core.breaker import Breakers
from worker.core.registry import Registry
from worker.metrics import Metrics
from worker.services.dispatch import Dispatcher
from worker.services.events import Claims, Events
from worker.services.pairing import Pairing
from worker.services.runtime import Runtime
from worker.services.users import Users
from worker.tracing import Tracing

log = structlog.get_logger("worker.app")

#: Young collections every 10,000 net allocations instead of CPython's 700: most of
#: a command's objects are freed by reference counting before a collection has to
#: look at them (measured with ``make bench``: see bench/README.md).
GC_THRESHOLDS: Final = (10_000, 10, 10)


def member_id() -> str:
    """Return a new member id: the host name (a pod's name) and a random suffix."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class Worker:
    """One worker process: broker consumer, Lovense client, metrics endpoint."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: LovenseClient | None = None,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.tracing = tracing if tracing is not None else Tracing(
            trace_uids=settings.trace_uids, api_base=settings.api_base)
        self._client = client or LovenseClient(settings)
        # The registry's clock (epoch seconds) decides freshness and expiry.
        self.registry = Registry(settings.lan_ttl_s, clock)
        self.pairing = Pairing(settings, self.registry, self.metrics, clock=clock,
                               claims=Claims())
        link = Link(settings.brokers, settings.shards, self.metrics)
        publisher = Publisher(link, self.metrics, self.tracing)
        self.events = Events(publisher.publish_event, self.metrics)
        self.registry_log = RegistryLog(link, self.pairing, settings.lan_ttl_s,
                                        settings.snapshot_interval_s, self.metrics,
                                        dead_letter=publisher.dead_letter, events=self.events)
        member = member_id()
        breakers = Breakers(settings.breaker_failures, settings.breaker_cooldown_s, time.monotonic)
        dispatcher = Dispatcher(settings, self._client, self.metrics, registry=self.registry,
                                breakers=breakers, events=self.events,
                                report_toys=self.registry_log.announce_toys, member=member,
                                tracing=self.tracing)
        users = Users(settings, dispatcher, events=self.events,
                      announce_forget=self.registry_log.announce_forget)
        self.runtime = Runtime(settings, dispatcher, self.metrics,
                               announce_stop=publisher.announce_stop, users=users,
                               tracing=self.tracing)
        self.membership = Membership(
            member, settings.shards, ttl_s=topology.PRESENCE_TTL_S,
            listen_s=topology.PRESENCE_LISTEN_S, stable_s=topology.PRESENCE_STABLE_S,
            clock=time.monotonic)
        self.broker = Broker(link, publisher, prefetch=settings.prefetch,
                             membership=self.membership, metrics=self.metrics,
                             handle=self.runtime.handle, crashed=self.runtime.crashed,
                             on_stop=self.runtime.remote_stop,
                             on_members=self.runtime.share_server_cap,
                             resume=self.registry_log.resume, tracing=self.tracing)
        self.health: HealthServer | None = None
        if settings.metrics_port:
            self.health = HealthServer(self.metrics.registry, self.broker.ready,
                                       settings.metrics_host, settings.metrics_port,
                                       reason=self.broker.not_ready_reason)

    async def start(self) -> None:
        """Connect, declare, serve health, and start consuming."""
        if self.health is not None:
            await self.health.start()
        if not self.settings.utoken_secret and self.settings.allow_unverified_callbacks:
            log.warning("unverified_callbacks_accepted",
                        why="LOVENSE_UTOKEN_SECRET is unset and "
                        "LOVENSE_ALLOW_UNVERIFIED_CALLBACKS=1: anyone who can publish a callback "
                        "can name any allowed address for any uid")
        await self.broker.connect()
        await self.registry_log.declare()
        self.runtime.start()
        # Watermarks and endpoints first: no command is taken before every Stop of the last
        # hour and every paired user's endpoint is known.
        await self.broker.follow_stop_log()
        await self.registry_log.start()
        await self.broker.consume()
        self.broker.supervise()
        log.info(
            "worker_started", shards=self.settings.shards, api_base=self.settings.api_base,
            lan_route="on" if self.settings.lan_enabled else "off",
            metrics_port=self.health.port if self.health else None,
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop consuming, let in-flight commands finish within the grace, then close."""
        grace = self.settings.shutdown_grace_s if grace is None else grace
        await self.broker.stop_consuming()
        left = await self.broker.drain(grace)
        if left:
            log.warning("shutdown_grace_exceeded", unfinished=left)
        await self.runtime.close()
        await self.registry_log.close()
        await self.events.close()
        await self.broker.close()
        await self._client.aclose()
        if self.health is not None:
            await self.health.stop()
        if self.tracing.enabled:
            await asyncio.to_thread(self.tracing.shutdown)  # exports what is buffered
        log.info("worker_stopped")

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def serve(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    tracing: Tracing | None = None,
    started: Callable[[Worker], Awaitable[None]] | None = None,
) -> int:
    """Run a worker until SIGTERM or SIGINT, then shut down gracefully; return the exit code.

    ``started`` runs once the worker consumes (``run --simulator`` pairs its first
    user there); the worker is stopped gracefully if it raises.
    """
    stopping = stop_requested()
    if tracing is None:
        tracing = Tracing.from_environ(os.environ, trace_uids=settings.trace_uids,
                                       api_base=settings.api_base)
    worker = Worker(settings, metrics=metrics, tracing=tracing)
    await worker.start()
    if started is not None:
        try:
            await started(worker)
        except BaseException:
            await worker.stop()
            raise
    # What start-up built (modules, the registry from its snapshot) lives as long as the
    # process: out of the collector's sight, full collections walk only per-command work.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        await stopping.wait()
        log.info("shutdown_requested")
    finally:
        await worker.stop()
    return 0


def stop_requested() -> asyncio.Event:
    """Return an event that the first SIGTERM or SIGINT sets.

    Installed before start-up, so a signal during it is not lost: the process
    stops gracefully as soon as it has started.
    """
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    return stopping
