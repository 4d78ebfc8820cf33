"""The producer helper: the AMQP properties, headers, exchange and routing key it publishes
with, as the README's table for producers says (no broker: the exchanges are fakes)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aio_pika
import pytest

from worker.adapters.amqp.producer import Producer, routing_key_for
from worker.contract import topology


class FakeExchange:
    """An exchange that records what is published to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.published: list[tuple[aio_pika.Message, str]] = []

    async def publish(self, message: aio_pika.Message, routing_key: str, **_: Any) -> None:
        self.published.append((message, routing_key))


def producer() -> tuple[Producer, FakeExchange, FakeExchange]:
    made = Producer()
    commands, stops = FakeExchange(topology.COMMANDS_EXCHANGE), FakeExchange(topology.STOP_EXCHANGE)
    made._exchange, made._stop_exchange = commands, stops  # type: ignore[assignment]
    return made, commands, stops


async def test_a_command_carries_every_property_the_table_names() -> None:
    """A command goes to lovense.commands, JSON, persistent, with message_id, reply_to +
    correlation_id, an integer x-lovense-published-ms and its uid as routing key."""
    made, commands, stops = producer()
    ident = await made.publish({"command": "Function", "uid": "user-42", "action": "Vibrate:5"},
                               reply_to="amq.gen-replies")
    assert stops.published == []
    [(message, key)] = commands.published
    assert key == "user-42"
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert int(message.delivery_mode) == 2
    assert message.message_id == ident
    assert (message.reply_to, message.correlation_id) == ("amq.gen-replies", ident)
    stamp = (message.headers or {})[topology.PUBLISHED_MS_HEADER]
    assert type(stamp) is int
    assert 1_700_000_000_000 < stamp < 10_000_000_000_000


async def test_a_stop_goes_to_the_stop_lane_with_the_same_properties() -> None:
    """A Stop (and a Function whose action is Stop) goes to lovense.stop, not lovense.commands,
    with the same properties; the command's own id becomes the message_id."""
    made, commands, stops = producer()
    await made.publish({"command": "Stop", "uid": "user-42", "id": "stop-1"})
    await made.publish({"command": "Function", "uid": "user-42", "action": "Stop"})
    assert commands.published == []
    [(first, key), (second, _)] = stops.published
    assert (first.message_id, key) == ("stop-1", "user-42")
    for message in (first, second):
        assert message.content_type == "application/json"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert type((message.headers or {})[topology.PUBLISHED_MS_HEADER]) is int
        assert (message.reply_to, message.correlation_id) == (None, None)


async def test_a_multi_user_command_is_routed_by_its_message_id() -> None:
    """A uids message's routing key is its message id, never the comma-joined uids."""
    made, commands, _ = producer()
    uids = [f"user-{n:04d}-with-a-long-platform-prefix" for n in range(20)]
    ident = await made.publish({"command": "Function", "uids": uids, "action": "Vibrate:5"})
    [(_, key)] = commands.published
    assert key == ident


def test_routing_keys_fit_an_amqp_short_string() -> None:
    """A uid or message id over 255 UTF-8 bytes is replaced by its SHA-256 in hex."""
    long_uid = "ü" * 128  # 256 bytes
    assert routing_key_for({"uid": "u" * 255}) == "u" * 255
    assert routing_key_for({"uid": long_uid}) == hashlib.sha256(long_uid.encode()).hexdigest()
    assert routing_key_for({"uids": ["a", "b"]}, "m" * 256) == hashlib.sha256(
        b"m" * 256).hexdigest()
    assert routing_key_for({"uids": ["a", "b"]}) == "a"
    assert routing_key_for({}) == "-"


class SilentExchange(FakeExchange):
    """An exchange whose broker never confirms: the publish ends only at its timeout."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.timeouts: list[float] = []

    async def publish(self, message: aio_pika.Message, routing_key: str, **kwargs: Any) -> None:
        self.timeouts.append(kwargs["timeout"])
        await asyncio.wait_for(asyncio.Event().wait(), kwargs["timeout"])


class FakeConnection:
    is_closed = False

    async def close(self) -> None:
        self.is_closed = True


async def test_a_confirm_that_never_comes_raises_and_moves_to_a_new_connection() -> None:
    """A publish waits `confirm_timeout` for its confirm, then raises TimeoutError naming the
    id and what to do, and the producer leaves that connection (reconnecting by itself)."""
    made = Producer("amqp://guest:guest@127.0.0.1:9/", confirm_timeout=0.05)
    commands = SilentExchange(topology.COMMANDS_EXCHANGE)
    made._exchange, made._stop_exchange = commands, FakeExchange(topology.STOP_EXCHANGE)  # type: ignore[assignment]
    connection = FakeConnection()
    made._connection = connection  # type: ignore[assignment]
    made._up.set()
    with pytest.raises(TimeoutError, match="did not confirm message cmd-7 within 0.05 s; "
                                           "publish it again with the same id"):
        await made.publish({"command": "Function", "uid": "u", "id": "cmd-7",
                            "action": "Vibrate:5"})
    assert commands.timeouts == [0.05]
    assert made._exchange is None and made._reconnecting is not None
    await made.close()
    assert connection.is_closed
