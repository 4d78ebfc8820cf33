"""Broker alarms: the private aiormq event the worker watches still exists, and a blocked
connection pauses intake, sets the gauge and gives /readyz its reason."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import aiormq
from prometheus_client import generate_latest

from worker.adapters.amqp.alarms import UNBLOCKED_ATTR, UNKNOWN_REASON, Alarms, unblocked_event
from worker.metrics import Metrics


async def test_aiormq_still_keeps_the_unblocked_event_the_worker_polls() -> None:
    """aiormq has no public hook for connection.blocked: if an upgrade renames the private
    event this fails, instead of alarms going unnoticed."""
    connection = aiormq.Connection("amqp://guest:guest@localhost:1/")
    event = getattr(connection, UNBLOCKED_ATTR, None)
    assert isinstance(event, asyncio.Event)


def _fake(blocked: bool) -> Any:
    event = asyncio.Event()
    if not blocked:
        event.set()
    inner = SimpleNamespace(**{UNBLOCKED_ATTR: event})
    return SimpleNamespace(transport=SimpleNamespace(connection=inner), is_closed=False)


def _gauge(metrics: Metrics) -> str:
    return [line for line in generate_latest(metrics.registry).decode().splitlines()
            if line.startswith("lovense_worker_broker_blocked ")][0]


async def test_a_blocked_connection_closes_the_gate_until_unblocked() -> None:
    metrics = Metrics()
    alarms = Alarms(metrics, poll_s=0.01)
    main, stop_lane = _fake(blocked=False), _fake(blocked=False)
    alarms.watch([main, stop_lane])
    try:
        assert (alarms.blocked, alarms.reason(), alarms.clear.is_set()) == (False, None, True)
        assert _gauge(metrics) == "lovense_worker_broker_blocked 0.0"

        logging.getLogger("aiormq.connection").warning(
            "Connection %r was blocked by: %r", main, "low on memory")
        unblocked_event(main).clear()  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
        assert alarms.blocked and not alarms.clear.is_set()
        assert alarms.reason() == "RabbitMQ blocked publishing: low on memory"
        assert _gauge(metrics) == "lovense_worker_broker_blocked 1.0"

        unblocked_event(main).set()  # type: ignore[union-attr]
        await asyncio.wait_for(alarms.clear.wait(), 1)
        assert (alarms.blocked, alarms.reason()) == (False, None)
        assert _gauge(metrics) == "lovense_worker_broker_blocked 0.0"
    finally:
        await alarms.close()


async def test_without_the_log_record_the_reason_is_still_given() -> None:
    alarms = Alarms(Metrics(), poll_s=0.01)
    alarms.watch([_fake(blocked=True)])
    try:
        assert alarms.reason() == f"RabbitMQ blocked publishing: {UNKNOWN_REASON}"
    finally:
        await alarms.close()
    assert alarms.clear.is_set() and not alarms.blocked


async def test_a_closed_or_unknown_connection_is_not_blocked() -> None:
    closed = _fake(blocked=True)
    closed.is_closed = True
    alarms = Alarms(Metrics(), poll_s=0.01)
    unknown: Any = SimpleNamespace(transport=None, is_closed=False)
    alarms.watch([closed, unknown])
    try:
        assert not alarms.blocked
    finally:
        await alarms.close()
