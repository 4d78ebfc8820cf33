"""``lovense-worker requeue-dead``: send dead letters back once their cause is fixed.

Takes messages from ``lovense.dead`` (all, or those whose ``x-lovense-error``
contains a text), republishes each to the exchange and routing key it first
came through (headers ``x-lovense-origin-*``; for messages the broker
dead-lettered itself, its ``x-death`` record) without the dead-letter headers,
and acks it. Messages that do not match go back to the queue untouched. Of
several nodes in the URL list, the first that answers (shuffled) is used.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Final

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from worker.adapters.amqp.nodes import connect_first
from worker.contract import topology
from worker.core.brokers import parse_brokers

_DROP: Final = frozenset({
    topology.ERROR_HEADER, topology.ORIGIN_EXCHANGE_HEADER, topology.ORIGIN_ROUTING_KEY_HEADER,
    "x-death", "x-delivery-count", "x-first-death-exchange", "x-first-death-queue",
    "x-first-death-reason", "x-last-death-exchange", "x-last-death-queue",
    "x-last-death-reason",
})


@dataclass(slots=True)
class Requeued:
    """What a requeue run did."""

    requeued: int = 0
    kept: int = 0


def origin(headers: dict[str, Any]) -> tuple[str, str]:
    """Return the exchange and routing key a dead letter first came through."""
    exchange = headers.get(topology.ORIGIN_EXCHANGE_HEADER)
    if isinstance(exchange, str | bytes) and exchange:
        key = headers.get(topology.ORIGIN_ROUTING_KEY_HEADER, "")
        return _text(exchange), _text(key)
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        death = deaths[0]
        keys = death.get("routing-keys") or [""]
        return _text(death.get("exchange", "")), _text(keys[0])
    return topology.COMMANDS_EXCHANGE, "-"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def requeue_dead(url: str, match: str | None, limit: int | None,
                       dry_run: bool = False) -> Requeued:
    """Republish matching dead letters to where they came from; return the counts.

    ``url`` is one AMQP URL or a comma-separated list of a cluster's nodes.
    """
    done = Requeued()
    connection, _node = await connect_first(parse_brokers(url), "lovense-requeue-dead",
                                            random.Random())
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.get_queue(topology.DEAD_QUEUE, ensure=False)
        kept: list[AbstractIncomingMessage] = []
        while limit is None or done.requeued < limit:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            headers = dict(message.headers or {})
            reason = _text(headers.get(topology.ERROR_HEADER, ""))
            if match is not None and match not in reason:
                kept.append(message)
                continue
            if dry_run:
                done.requeued += 1
                kept.append(message)
                continue
            exchange_name, routing_key = origin(headers)
            exchange = (channel.default_exchange if not exchange_name
                        else await channel.get_exchange(exchange_name, ensure=False))
            await exchange.publish(
                aio_pika.Message(
                    message.body,
                    headers={k: v for k, v in headers.items() if k not in _DROP},
                    content_type=message.content_type, message_id=message.message_id,
                    correlation_id=message.correlation_id, reply_to=message.reply_to,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=routing_key,
            )
            await message.ack()
            done.requeued += 1
        for message in kept:
            await message.nack(requeue=True)
        done.kept = len(kept) - (done.requeued if dry_run else 0)
    return done
