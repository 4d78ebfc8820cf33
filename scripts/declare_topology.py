"""Declare the worker's topology on a broker exactly as a starting worker does, then leave.

Usage: ``python scripts/declare_topology.py [AMQP_URL]`` (default ``LOVENSE_AMQP_URL``);
``LOVENSE_SHARDS`` and ``LOVENSE_LAN_TTL_S`` shape it as they shape the worker's. The
declaring is the worker's own code, not a copy: a :class:`~worker.app.Worker` built from
these settings connects (:mod:`worker.adapters.amqp.declare` on the way) and declares the
callback queue and the registry streams (:class:`~worker.adapters.amqp.registry_log.RegistryLog`),
the first two steps of ``Worker.start``, and consumes nothing. The presence exchange, which
only a worker of several replicas declares, is declared with the same call
:mod:`worker.adapters.amqp.presence` makes. Running it twice must change nothing.
"""

from __future__ import annotations

import asyncio
import os
import sys

import aio_pika
from aio_pika.abc import ExchangeType

from worker.adapters.http.lovense import LovenseClient
from worker.app import Worker
from worker.config import Settings
from worker.contract import topology


async def declare_topology(url: str, environ: dict[str, str] | None = None) -> None:
    """Declare every exchange, queue and stream a worker would on the broker at ``url``."""
    env = dict(os.environ if environ is None else environ)
    env.update({"LOVENSE_AMQP_URL": url, "LOVENSE_METRICS_PORT": "0"})
    settings = Settings.from_env(env)
    client = LovenseClient(settings)  # never called: the worker needs one to be built
    worker = Worker(settings, client=client)
    try:
        await worker.broker.connect()
        await worker.registry_log.declare()
    finally:
        await worker.broker.close()
        await client.aclose()
    connection = await aio_pika.connect(settings.brokers.nodes[0].url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_exchange(topology.PRESENCE_EXCHANGE, ExchangeType.FANOUT,
                                       durable=True)


def main(argv: list[str]) -> int:
    """Declare on the URL given (or ``LOVENSE_AMQP_URL``); return the exit status."""
    url = argv[1] if len(argv) > 1 else os.environ.get(
        "LOVENSE_AMQP_URL", "amqp://guest:guest@localhost:5672/")
    asyncio.run(declare_topology(url))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
