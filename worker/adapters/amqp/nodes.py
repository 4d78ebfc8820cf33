"""Connecting to the first broker node that answers, in a shuffled order, the node lost last.

Every process that talks to RabbitMQ (the worker's link, the callback
forwarder, the producer helper, ``requeue-dead``) opens its connections here,
so each tries the nodes of ``LOVENSE_AMQP_URL`` the same way: shuffled, the
node just lost last, each within a connect timeout. Errors never carry a
password: aio-pika's may quote the URL, so they are redacted here.
"""

from __future__ import annotations

import random
from typing import Final

import aio_pika
import structlog
from aio_pika.abc import AbstractConnection

from worker.core.brokers import Brokers, Node, connect_order, redact

log = structlog.get_logger("worker.adapters.amqp.nodes")

#: How long one node may take to accept a connection before the next is tried.
CONNECT_TIMEOUT_S: Final = 10.0


class NoNodeAnswered(ConnectionError):
    """No node of the list accepted a connection; the message names each and why."""


async def connect(node: Node, name: str, *, timeout: float = CONNECT_TIMEOUT_S,
                  ) -> AbstractConnection:
    """Open a connection to ``node``, named ``name`` in RabbitMQ's connection list."""
    return await aio_pika.connect(node.url, timeout=timeout,
                                  client_properties={"connection_name": name})


async def connect_first(brokers: Brokers, name: str, rng: random.Random, *,
                        last: Node | None = None, timeout: float = CONNECT_TIMEOUT_S,
                        ) -> tuple[AbstractConnection, Node]:
    """Return a connection to the first node that accepts one, in a shuffled order.

    ``last`` (the node just lost) is tried after the others; raise
    :class:`NoNodeAnswered` when none accepts.
    """
    failures: list[str] = []
    for node in connect_order(brokers, rng, last=last):
        try:
            return await connect(node, name, timeout=timeout), node
        except Exception as exc:  # noqa: BLE001 - any failure means: try the next node
            why = redact(str(exc)) or type(exc).__name__
            failures.append(f"{node.name} ({type(exc).__name__}: {why})")
            if len(brokers.nodes) > 1:
                log.info("broker_node_unreachable", node=node.name, error=failures[-1])
    raise NoNodeAnswered("no RabbitMQ node answered: " + "; ".join(failures))
