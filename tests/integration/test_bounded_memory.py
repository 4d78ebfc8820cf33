"""The bounded memories show on /metrics: the finished ids kept to answer repeats (up to
LOVENSE_RECENT_IDS, oldest forgotten first) and the Stop watermarks."""

from __future__ import annotations

import httpx

from tests.integration.support import AMQP_URL, free_port, worker_settings
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
        stop = await producer.call({"command": "Stop", "uid": "mem-1", "mode": "server"},
                                   timeout=10)
        assert stop.status == "ok"
        assert (await gauges(port))["lovense_worker_stop_watermarks"] == marks + 1
