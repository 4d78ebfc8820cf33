"""worker.metrics: gauges computed at scrape time."""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest

from worker.metrics import Metrics


def _tasks(metrics: Metrics) -> str:
    text = generate_latest(metrics.registry).decode()
    return next(line for line in text.splitlines()
                if line.startswith("lovense_worker_asyncio_tasks "))


async def test_asyncio_tasks_gauge_counts_the_loops_tasks_at_scrape() -> None:
    """lovense_worker_asyncio_tasks is the number of live tasks when /metrics is rendered."""
    metrics = Metrics()
    release = asyncio.Event()
    extra = [asyncio.create_task(release.wait()) for _ in range(3)]
    during = _tasks(metrics)
    release.set()
    await asyncio.gather(*extra)
    assert (during, _tasks(metrics)) == ("lovense_worker_asyncio_tasks 4.0",
                                         "lovense_worker_asyncio_tasks 1.0")


def test_asyncio_tasks_gauge_is_zero_outside_an_event_loop() -> None:
    """Collected with no running loop (docs, tests), the gauge reads 0 instead of raising."""
    assert _tasks(Metrics()) == "lovense_worker_asyncio_tasks 0.0"
