"""The whole consume path in-process: any bytes and headers end in exactly one settle.

The broker's delivery handling (:meth:`worker.adapters.amqp.settle.Settler.process`) runs with
the real runtime and fake AMQP objects whose publish encodes the message's
properties with pamqp, as the wire would: a property that cannot travel raises
there, as it does on a real channel.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import header

from tests.unit.test_runtime import GatedUpstream
from tests.unit.test_runtime import settings as runtime_settings
from worker.adapters.amqp.link import Link, Session
from worker.adapters.amqp.publisher import Publisher
from worker.adapters.amqp.settle import Settler
from worker.contract.messages import Result, result_decoder
from worker.core.brokers import parse_brokers
from worker.core.jobs import epoch_ms
from worker.core.results import Delivery, Handled
from worker.metrics import Metrics
from worker.services.dispatch import Dispatcher
from worker.services.runtime import Runtime


@dataclass
class FakeExchange:
    """An exchange that encodes what it is given as the wire would, and can be told to fail."""

    published: list[tuple[aio_pika.Message, str]] = field(default_factory=list)
    failures: int = 0

    async def publish(self, message: aio_pika.Message, routing_key: str,
                      mandatory: bool = False) -> None:
        header.ContentHeader(0, len(message.body), message.properties).marshal()
        if self.failures:
            self.failures -= 1
            raise RuntimeError("injected publish failure")
        self.published.append((message, routing_key))


@dataclass
class FakeChannel:
    """The publishing channel: its default exchange carries reply_to answers."""

    default_exchange: FakeExchange = field(default_factory=FakeExchange)
    is_closed: bool = False


@dataclass
class FakeIncoming:
    """A delivery as aio-pika hands it over, counting how it was settled."""

    body: bytes
    headers: dict[str, Any]
    message_id: str | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    redelivered: bool = False
    exchange: str = "lovense.commands"
    routing_key: str = "u"
    content_type: str | None = None
    channel: FakeChannel = field(default_factory=FakeChannel)
    acks: int = 0
    rejects: int = 0

    async def ack(self, multiple: bool = False) -> None:
        self.acks += 1

    async def reject(self, requeue: bool = False) -> None:
        assert requeue is False
        self.rejects += 1


def make_settler(runtime: Runtime, crash: bool, results: FakeExchange | None = None,
                 ) -> tuple[Settler, FakeExchange, FakeExchange]:
    """Return a settler over fake AMQP objects, and the results and dead-letter exchanges."""
    metrics = Metrics()
    link = Link(parse_brokers("amqp://unused"), 4, metrics)
    results, dead = results or FakeExchange(), FakeExchange()
    # A connected link's session, made of fakes (the publisher encodes as the wire would).
    link._session = Session(FakeChannel(), FakeChannel(), FakeChannel(),  # type: ignore[arg-type]
                            results, dead, FakeExchange())  # type: ignore[arg-type]

    async def crashing(delivery: Delivery) -> Handled:
        raise ValueError("injected crash")

    return (Settler(link, Publisher(link, metrics), metrics,
                    crashing if crash else runtime.handle, runtime.crashed), results, dead)


NAMES = ["Function", "Stop", "Pattern", "PatternV2", "Preset", "Position", "GetToys",
         "GetToyName", "GetQrCode", "Forget", "Bogus"]
texts = st.one_of(st.text(max_size=20), st.text(alphabet="é€𝄞a", min_size=60, max_size=300))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
commands = st.fixed_dictionaries(
    {"command": st.sampled_from(NAMES)},
    optional={
        "uid": texts, "uids": st.lists(texts, max_size=5), "id": texts,
        "toy": st.one_of(texts, st.lists(texts, max_size=40)), "action": st.sampled_from(
            ["Vibrate:5", "Stop", "Vibrate:99", "", "Stroke:0-10"]),
        "timeSec": st.one_of(st.integers(-2, 5), st.floats(allow_nan=False)),
        "mode": st.sampled_from(["auto", "lan", "server", "x"]), "extra": json_values,
    },
).map(msgspec.json.encode)
bombs = st.sampled_from([
    b'{"uid":' + b"[" * 1000 + b"]" * 1000 + b',"command":"Stop"}',
    b'{"command":"Stop","uid":"u","toy":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b"[" * 100_000,
    b'{"command":"Stop","uid":"u","pad":"' + b"x" * (1024 * 1024) + b'"}',
    b"\xff\xfe{",
])
bodies = st.one_of(commands, bombs, st.binary(max_size=64), json_values.map(msgspec.json.encode))
stamps = st.one_of(st.none(), st.integers(-10, 2**63 - 1), st.just(int(epoch_ms())),
                   st.text(max_size=6), st.binary(max_size=6), st.floats(), st.booleans())
shortstr = st.text(max_size=60).filter(lambda s: len(s.encode()) <= 255)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, stamp=stamps, count=st.one_of(st.none(), st.integers(0, 30)),
       message_id=st.one_of(st.none(), shortstr), reply_to=st.one_of(st.none(), shortstr),
       lane=st.sampled_from(["commands", "stop"]), crash=st.booleans(),
       result_failures=st.integers(0, 2), dead_failures=st.integers(0, 1))
def test_every_delivery_is_settled_exactly_once(
    body: bytes, stamp: Any, count: int | None, message_id: str | None, reply_to: str | None,
    lane: Any, crash: bool, result_failures: int, dead_failures: int,
) -> None:
    """Whatever arrives and whatever fails on the way, one result or rejection, one settle."""
    headers: dict[str, Any] = {}
    if stamp is not None:
        headers["x-lovense-published-ms"] = stamp
    if count is not None:
        headers["x-delivery-count"] = count
    message = FakeIncoming(body, headers, message_id=message_id, reply_to=reply_to)

    async def scenario() -> None:
        config = runtime_settings(stop_retry_s=0)
        upstream = GatedUpstream()
        runtime = Runtime(config, Dispatcher(config, upstream, Metrics()), Metrics())
        runtime.start()
        settler, results, dead = make_settler(runtime, crash)
        results.failures, dead.failures = result_failures, dead_failures
        try:
            await asyncio.wait_for(settler.process(message, lane), 10)  # type: ignore[arg-type]
        finally:
            await runtime.close()
        assert message.acks + message.rejects == 1
        if message.rejects:
            # Only when even the rebuilt result or the dead letter could not be published.
            assert result_failures == 2 or dead_failures == 1
            return
        assert len(results.published) == 1
        published: Result = result_decoder.decode(results.published[0][0].body)
        assert results.published[0][1] == f"{published.status}.{published.command}"
        if crash:
            assert published.status == "failed"
        if published.status == "invalid" or crash:
            assert len(dead.published) == 1

    asyncio.run(scenario())


def test_a_result_whose_id_cannot_travel_as_message_id_is_published_without_it() -> None:
    """An over-long id stays in the result body; the AMQP message_id is left unset."""
    ident = "é" * 200
    message = FakeIncoming(msgspec.json.encode(
        {"command": "Function", "uid": "u", "action": "Vibrate:1", "timeSec": 2, "id": ident}),
        {"x-lovense-published-ms": int(epoch_ms())})

    async def scenario() -> tuple[FakeExchange, FakeExchange]:
        config = runtime_settings()
        runtime = Runtime(config, Dispatcher(config, GatedUpstream(), Metrics()), Metrics())
        runtime.start()
        settler, results, dead = make_settler(runtime, crash=False)
        await settler.process(message, "commands")  # type: ignore[arg-type]
        await runtime.close()
        return results, dead

    results, dead = asyncio.run(scenario())
    assert message.acks == 1
    outgoing = results.published[0][0]
    assert outgoing.message_id is None
    assert (result_decoder.decode(outgoing.body).id,
            result_decoder.decode(outgoing.body).message) == (ident, "id: longer than 255 bytes")
    assert dead.published[0][0].headers["x-lovense-error"] == "id: longer than 255 bytes"


@dataclass
class GoneExchange(FakeExchange):
    """An exchange whose connection went away: publishing fails as aiormq says it does."""

    async def publish(self, message: aio_pika.Message, routing_key: str,
                      mandatory: bool = False) -> None:
        raise aiormq.exceptions.ChannelInvalidStateError("writer is None")


def test_a_lost_publishing_connection_leaves_the_delivery_for_redelivery() -> None:
    """When results cannot go out because the broker went away, nothing is rejected or acked."""
    message = FakeIncoming(msgspec.json.encode({"command": "Stop", "uid": "u", "id": "s"}),
                           {"x-lovense-published-ms": int(epoch_ms())})

    async def scenario() -> tuple[FakeExchange, FakeExchange]:
        config = runtime_settings()
        runtime = Runtime(config, Dispatcher(config, GatedUpstream(), Metrics()), Metrics())
        runtime.start()
        gone = GoneExchange()
        settler, _results, dead = make_settler(runtime, crash=False, results=gone)
        await settler.process(message, "stop")  # type: ignore[arg-type]
        await runtime.close()
        return gone, dead

    gone, dead = asyncio.run(scenario())
    assert (message.acks, message.rejects) == (0, 0)
    assert gone.published == [] and dead.published == []
