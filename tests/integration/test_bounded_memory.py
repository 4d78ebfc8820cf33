"""Memory that must not creep: the bounded memories show on /metrics (the finished ids kept
to answer repeats, up to LOVENSE_RECENT_IDS, and the Stop watermarks), and what a lost
connection leaves behind is collected after the reconnect."""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import Iterator

import aiormq
import httpx
import pytest

from tests.integration.support import (
    AMQP_URL,
    close_worker_connections,
    free_port,
    worker_settings,
)
from worker.adapters.amqp import supervisor
from worker.adapters.amqp.producer import Producer
from worker.app import Worker
from worker.simulator import Simulator


async def gauges(port: int) -> dict[str, float]:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    names = ("lovense_worker_recent_ids", "lovense_worker_recent_bytes",
             "lovense_worker_stop_watermarks")
    return {name: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            for name in names if line.startswith(name + " ")}


async def test_remembered_ids_stop_at_their_cap_and_stops_leave_watermarks(
    sim: Simulator, clean_broker: None
) -> None:
    port = free_port()
    settings = worker_settings(sim, metrics_port=port, metrics_host="127.0.0.1",
                               recent_ids=5)
    async with Worker(settings), Producer(AMQP_URL) as producer:
        start = await gauges(port)
        assert (start["lovense_worker_recent_ids"], start["lovense_worker_recent_bytes"]) == (0, 0)
        # The Stop log's hour is replayed at start-up: earlier tests' Stops are marks too.
        marks = start["lovense_worker_stop_watermarks"]
        for n in range(3):
            result = await producer.call({"command": "Function", "uid": f"mem-{n}",
                                          "id": f"mem-{n}", "action": "Vibrate:3",
                                          "timeSec": 2, "mode": "server"}, timeout=10)
            assert result.status == "ok"
        three = await gauges(port)
        assert three["lovense_worker_recent_ids"] == 3
        assert three["lovense_worker_recent_bytes"] > 3 * 100
        for n in range(3, 9):
            await producer.call({"command": "Function", "uid": f"mem-{n}", "id": f"mem-{n}",
                                 "action": "Vibrate:3", "timeSec": 2, "mode": "server"},
                                timeout=10)
        full = await gauges(port)
        assert full["lovense_worker_recent_ids"] == 5  # the cap: the oldest were forgotten
        # A uid of its own: the Stop log's hour holds earlier runs' Stops for "mem-1" too.
        stop = await producer.call({"command": "Stop", "uid": f"mem-{uuid.uuid4()}",
                                    "mode": "server"}, timeout=10)
        assert stop.status == "ok"
        assert (await gauges(port))["lovense_worker_stop_watermarks"] == marks + 1


@pytest.fixture
def collector_off(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No automatic collection (the worker's raised thresholds, taken to the limit); the
    collections after a reconnect come sooner than in production."""
    monkeypatch.setattr(supervisor, "COLLECT_AFTER_S", (0.0, 0.5))
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def connections_alive() -> int:
    """Return how many aiormq connections exist, garbage not yet collected included."""
    return sum(1 for o in gc.get_objects() if isinstance(o, aiormq.Connection))


def left_for_a_full_collection() -> int:
    """Return how many aiormq connections a full collection frees now: lost connections
    that only cycles keep (what pytest's log capture still references is not garbage)."""
    before = connections_alive()
    gc.collect()
    return before - connections_alive()


async def test_a_lost_connection_leaves_nothing_behind_after_the_reconnect(
    sim: Simulator, clean_broker: None, collector_off: None
) -> None:
    """Three times the broker closes the worker's connections under load: after each
    reconnect nothing of the lost connections is left for a full collection (their cycles of
    channels, futures, exceptions and frames are collected at once, not left for the full
    collections the worker's GC thresholds make rare). Without those collections each loss
    leaves its two connections behind."""
    port = free_port()
    settings = worker_settings(sim, metrics_port=port, metrics_host="127.0.0.1")
    async with Worker(settings), Producer(AMQP_URL) as producer:
        for round_ in range(3):
            await asyncio.gather(*(producer.publish({
                "command": "Function", "uid": f"gc-{round_}-{n}", "action": "Vibrate:3",
                "timeSec": 2, "mode": "server"}) for n in range(100)))
            assert await asyncio.to_thread(close_worker_connections) >= 2
            # Answered only once the worker has reconnected and consumes again.
            answer = await producer.call({"command": "Function", "uid": f"gc-{round_}",
                                          "action": "Vibrate:3", "timeSec": 2,
                                          "mode": "server"}, timeout=30)
            assert answer.status == "ok"
            await asyncio.sleep(1.0)  # deliberate timing: both collections (0 s and 0.5 s) ran
            assert left_for_a_full_collection() == 0, f"round {round_}"
