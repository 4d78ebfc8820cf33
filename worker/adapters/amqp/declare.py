"""Declaring the worker's topology: every exchange and queue of the contract, idempotently.

The names and arguments are :mod:`worker.contract.topology`'s; the callback
queue and the registry streams are declared by :mod:`worker.adapters.amqp.registry_log`,
the presence exchange by :mod:`worker.adapters.amqp.presence`.
"""

from __future__ import annotations

from dataclasses import dataclass

from aio_pika.abc import AbstractChannel, AbstractExchange, ExchangeType

from worker.contract import topology


@dataclass(frozen=True, slots=True)
class Exchanges:
    """The exchanges the worker publishes to."""

    results: AbstractExchange
    dead: AbstractExchange
    events: AbstractExchange


async def declare(channel: AbstractChannel, shards: int) -> Exchanges:
    """Declare the command shards, results, dead letters, events and the Stop lane and log."""
    commands = await channel.declare_exchange(
        topology.COMMANDS_EXCHANGE, ExchangeType.X_CONSISTENT_HASH, durable=True
    )
    dead = await channel.declare_exchange(topology.DEAD_EXCHANGE, ExchangeType.FANOUT, durable=True)
    results = await channel.declare_exchange(
        topology.RESULTS_EXCHANGE, ExchangeType.TOPIC, durable=True
    )
    await channel.declare_exchange(topology.CALLBACKS_EXCHANGE, ExchangeType.FANOUT, durable=True)
    events = await channel.declare_exchange(
        topology.EVENTS_EXCHANGE, ExchangeType.TOPIC, durable=True
    )
    stop = await channel.declare_exchange(topology.STOP_EXCHANGE, ExchangeType.FANOUT,
                                          durable=True)
    dead_queue = await channel.declare_queue(
        topology.DEAD_QUEUE, durable=True, arguments=topology.dead_arguments()
    )
    await dead_queue.bind(dead, routing_key="")
    stop_queue = await channel.declare_queue(
        topology.STOP_QUEUE, durable=True, arguments=topology.shard_arguments()
    )
    await stop_queue.bind(stop, routing_key="")
    stop_log = await channel.declare_queue(
        topology.STOP_LOG, durable=True, arguments=topology.stop_log_arguments()
    )
    await stop_log.bind(stop, routing_key="")
    for index in range(shards):
        queue = await channel.declare_queue(
            topology.shard_queue(index), durable=True, arguments=topology.shard_arguments()
        )
        # A consistent-hash binding key is the shard's weight.
        await queue.bind(commands, routing_key="1")
    return Exchanges(results=results, dead=dead, events=events)
