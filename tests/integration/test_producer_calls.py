"""The producer helper's request/reply against the real broker and a worker."""

from __future__ import annotations

import asyncio

from tests.integration.support import AMQP_URL
from worker.adapters.amqp.producer import Producer
from worker.app import Worker


async def test_calls_started_together_on_a_new_producer_all_get_their_results(
    worker: Worker, clean_broker: None
) -> None:
    """Eight calls gathered on a producer that has no reply queue yet share one and each gets
    its own result (the second used to see the first's queue replaced and fail with
    ConnectionError)."""
    async with Producer(AMQP_URL) as producer:
        results = await asyncio.gather(*(producer.call(
            {"command": "Function", "uid": f"together-{n}", "action": "Vibrate:2",
             "timeSec": 2, "mode": "server", "id": f"together-{n}"}) for n in range(8)))
    assert [(r.id, r.status) for r in results] == [(f"together-{n}", "ok") for n in range(8)]
