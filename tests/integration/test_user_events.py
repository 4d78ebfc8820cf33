"""User lifecycle events on lovense.events and the GetUser command, through the real broker and
the simulator: callbacks published to lovense.callbacks as a platform forwards them."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import msgspec
import pytest
from aio_pika.abc import AbstractIncomingMessage, ExchangeType

from tests.integration.support import AMQP_URL, until, worker_settings
from worker.adapters.amqp.producer import Producer
from worker.app import Worker
from worker.config import Secret
from worker.contract import topology
from worker.contract.messages import Result
from worker.contract.users import (
    ToyChange,
    UserEvent,
    UserExpired,
    UserForgotten,
    UserPaired,
    UserReachable,
    UserToys,
    UserUnreachable,
    event_decoder,
)
from worker.core.bodies import utoken_for
from worker.core.events import rfc3339_s
from worker.simulator import SIMULATOR_TOKEN, AppSpec, Simulator

SECRET = Secret("events-secret")
NORA, MAX = "f082c00246fa", "ff922f7fd345"


class EventLog:
    """Every event published to lovense.events while a test runs, in arrival order."""

    def __init__(self) -> None:
        self.events: list[UserEvent] = []
        self.routing_keys: list[str] = []
        self.message_ids: list[str | None] = []

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.events.append(event_decoder.decode(message.body))
        self.routing_keys.append(message.routing_key or "")
        self.message_ids.append(message.message_id)

    def of(self, uid: str) -> list[UserEvent]:
        """Return the events of one user, in order."""
        return [e for e in self.events if e.uid == uid]

    async def wait(self, uid: str, count: int, timeout: float = 10.0) -> list[UserEvent]:
        """Return the user's events once there are at least ``count``."""
        await until(lambda: len(self.of(uid)) >= count, timeout,
                    what=f"{count} events for {uid}: {self.of(uid)}")
        return self.of(uid)


@contextlib.asynccontextmanager
async def listening(url: str = AMQP_URL) -> AsyncIterator[EventLog]:
    """Capture every lovense.events event (routing key user.#) while the block runs."""
    log = EventLog()
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(topology.EVENTS_EXCHANGE, ExchangeType.TOPIC,
                                                  durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="user.#")
        await queue.consume(log.on_message, no_ack=True)
        yield log


async def post_callback(body: dict[str, Any], url: str = AMQP_URL) -> None:
    """Forward a callback body to lovense.callbacks, as a platform's callback handler does."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.CALLBACKS_EXCHANGE)
        await exchange.publish(aio_pika.Message(msgspec.json.encode(body)), routing_key="")


def new_app() -> AppSpec:
    """Return a simulated app of a uid no earlier test used (the callback log outlives tests)."""
    return AppSpec(uid=f"events-{uuid.uuid4().hex[:10]}")


def callback(sim: Simulator, uid: str, *, port: int | None = None,
             toys: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Return the app's callback with a good utoken; ``toys`` overrides fields of its toys."""
    body = sim.callback_body(uid) | {"utoken": utoken_for(uid, SECRET.reveal())}
    if port is not None:
        body["httpsPort"] = str(port)
    for toy_id, fields in (toys or {}).items():
        body["toys"][toy_id] = body["toys"][toy_id] | fields
    return body


def changes(event: UserEvent) -> list[ToyChange]:
    assert isinstance(event, UserToys), event
    return event.changes


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(token=SIMULATOR_TOKEN, apps=[new_app()]) as simulator:
        yield simulator


@pytest.fixture
async def events(clean_broker: None) -> AsyncIterator[EventLog]:
    async with listening() as log:
        yield log


async def test_paired_on_the_first_callback_and_a_new_endpoint_never_on_a_heartbeat(
    sim: Simulator, events: EventLog
) -> None:
    """A first verified callback and a new port each make one user.paired; heartbeats none."""
    uid = sim.apps[0].uid
    async with Worker(worker_settings(sim, utoken_secret=SECRET)):
        await post_callback(callback(sim, uid))
        [first] = await events.wait(uid, 1)
        for _ in range(3):
            await post_callback(callback(sim, uid))  # heartbeats: the same again
        await post_callback(callback(sim, uid, port=sim.apps[0].https_port + 1))
        # Events leave the validator in callback order: the new endpoint's comes last.
        seen = await events.wait(uid, 2)
    assert isinstance(first, UserPaired)
    assert (first.reason, first.domain, first.httpsPort, first.verified) == (
        "first-callback", "127-0-0-1.lovense.club", sim.apps[0].https_port, True)
    assert [t.id for t in first.toys] == [NORA, MAX, "c1a7e0501234"]
    assert [(type(e), getattr(e, "reason", None)) for e in seen] == [
        (UserPaired, "first-callback"), (UserPaired, "new-endpoint")]
    assert events.routing_keys[events.events.index(seen[1])] == "user.paired"
    assert events.message_ids[events.events.index(seen[1])] == seen[1].id
    assert SECRET.reveal() not in msgspec.json.encode(seen).decode()
    assert "utoken" not in msgspec.json.encode(seen).decode()


async def test_toy_off_and_on_and_battery_crossings_from_callbacks_and_get_toys(
    sim: Simulator, events: EventLog, producer: Producer
) -> None:
    """user.toys for a toy switched off and on, and for batteries crossing 20 % and 10 %, whether
    a callback or a GetToys answer reports them; a level that crosses nothing says nothing."""
    uid = sim.apps[0].uid
    async with Worker(worker_settings(sim, utoken_secret=SECRET)):
        await post_callback(callback(sim, uid, toys={MAX: {"battery": 50}}))
        await events.wait(uid, 1)
        await post_callback(callback(sim, uid, toys={MAX: {"battery": 50, "status": 0}}))
        await post_callback(callback(sim, uid, toys={MAX: {"battery": 50}}))
        await post_callback(callback(sim, uid, toys={MAX: {"battery": 19}}))
        await post_callback(callback(sim, uid, toys={MAX: {"battery": 15}}))  # crosses nothing
        await post_callback(callback(sim, uid, toys={MAX: {"battery": 9}}))
        await post_callback(callback(sim, uid))  # no battery: the last one stands
        await events.wait(uid, 5)
        sim.app(uid).toys[MAX].battery = 60
        result = await producer.call({"command": "GetToys", "uid": uid})
        assert (result.status, result.via) == ("ok", "lan")
        seen = await events.wait(uid, 6)
    assert [type(e) for e in seen] == [UserPaired] + [UserToys] * 5
    assert [(e.source, [(c.toy, c.change, c.battery, c.previous, c.crossed)
                        for c in changes(e)]) for e in seen[1:] if isinstance(e, UserToys)] == [
        ("callback", [(MAX, "disconnected", 50, None, [])]),
        ("callback", [(MAX, "connected", 50, None, [])]),
        ("callback", [(MAX, "battery", 19, 50, [20])]),
        ("callback", [(MAX, "battery", 9, 15, [10])]),
        ("GetToys", [(MAX, "battery", 60, 9, [10, 20])]),
    ]
    last = seen[-1]
    assert isinstance(last, UserToys)
    assert {t.id: (t.status, t.battery) for t in last.toys}[MAX] == ("connected", 60)


async def test_get_user_before_pairing_after_it_and_after_forget(
    sim: Simulator, events: EventLog, producer: Producer
) -> None:
    """GetUser: paired false before, what the worker knows after pairing, paired false after a
    Forget, which also makes user.forgotten; never a call to Lovense, never the utoken."""
    uid = sim.apps[0].uid
    async with Worker(worker_settings(sim, utoken_secret=SECRET)) as worker:
        before = await producer.call({"command": "GetUser", "uid": uid})
        await post_callback(callback(sim, uid, toys={NORA: {"battery": 60}}))
        await until(lambda: worker.registry.get(uid) is not None)
        sim.clear()
        paired = await producer.call({"command": "GetUser", "uid": uid})
        dialled = list(sim.requests)
        forgotten = await producer.call({"command": "Forget", "uid": uid})
        [_, gone] = await events.wait(uid, 2)
        after = await producer.call({"command": "GetUser", "uid": uid})

    def shape(result: Result) -> tuple[Any, ...]:
        return result.status, result.via, result.code, result.attempts, result.fallback

    assert shape(before) == shape(paired) == shape(after) == ("ok", None, None, 0, False)
    assert before.data == after.data == {"paired": False}
    assert uid not in worker.registry
    data = paired.data
    assert set(data) == {"paired", "route", "toys", "lastSeenAt", "circuit"}
    assert (data["paired"], data["route"], data["circuit"]) == (True, "lan", "closed")
    assert data["toys"][:2] == [
        {"id": NORA, "name": "nora", "status": "connected", "battery": 60},
        {"id": MAX, "name": "max", "status": "connected", "battery": None}]
    assert data["lastSeenAt"].endswith("Z")
    assert dialled == []
    raw = msgspec.json.encode(paired).decode()
    assert "utoken" not in raw and utoken_for(uid, SECRET.reveal()) not in raw
    assert forgotten.status == "ok"
    assert isinstance(gone, UserForgotten) and gone.known is True


async def test_unreachable_when_the_circuit_opens_and_reachable_when_it_closes(
    sim: Simulator, events: EventLog, producer: Producer
) -> None:
    """The app going away opens this process's circuit (user.unreachable, its member id), a LAN
    call that reaches it again closes it (user.reachable); GetUser shows the circuit."""
    uid, app = sim.apps[0].uid, sim.apps[0]
    settings = worker_settings(sim, utoken_secret=SECRET, breaker_failures=2,
                               breaker_cooldown_s=1)
    async with Worker(settings) as worker:
        await post_callback(callback(sim, uid))
        await until(lambda: worker.registry.get(uid) is not None)
        await app.go_offline()
        for level in (1, 2):
            fell = await producer.call({"command": "Function", "uid": uid,
                                        "action": f"Vibrate:{level}", "timeSec": 2})
            assert (fell.via, fell.fallback) == ("server", True)
        [_, unreachable] = await events.wait(uid, 2)
        opened = await producer.call({"command": "GetUser", "uid": uid})
        await app.go_online()

        async def half_open() -> bool:
            answer = await producer.call({"command": "GetUser", "uid": uid})
            return bool(answer.data["circuit"] == "half-open")

        await until(half_open, what="the circuit's cool-down to end")
        back = await producer.call({"command": "Function", "uid": uid, "action": "Vibrate:3",
                                    "timeSec": 2})
        [*_, reachable] = await events.wait(uid, 3)
    assert isinstance(unreachable, UserUnreachable)
    assert (unreachable.replica, unreachable.cooldownS) == (worker.membership.me, 1)
    assert (opened.data["circuit"], opened.data["route"]) == ("open", "server")
    assert (back.via, back.fallback) == ("lan", False)
    assert isinstance(reachable, UserReachable) and reachable.replica == worker.membership.me
    assert "domain" not in msgspec.json.encode(unreachable).decode()


class Clock:
    """Epoch seconds that a test can move forward: the registry's clock, not the broker's."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


#: How often the workers under test look for expired users (their own ticks do it).
SWEEP_S = 0.3


def sweeping(worker: Worker) -> Worker:
    """Return the worker, made to send its sweep ticks every SWEEP_S instead of every minute."""
    worker.pairing.sweep_interval_s = SWEEP_S
    return worker


async def test_expired_when_no_callback_comes_within_the_ttl(
    sim: Simulator, events: EventLog, producer: Producer
) -> None:
    """A user whose app stays silent past LOVENSE_LAN_TTL_S makes one user.expired, found by
    the worker's own sweep ticks; GetUser then says paired false, and a callback pairs again."""
    uid = sim.apps[0].uid
    clock = Clock()
    worker = sweeping(Worker(worker_settings(sim, utoken_secret=SECRET), clock=clock))
    async with worker:
        await post_callback(callback(sim, uid))
        [paired] = await events.wait(uid, 1)
        seen = worker.registry.get(uid)
        assert seen is not None
        # A day of silence on the registry's clock: LOVENSE_LAN_TTL_S is at least a minute,
        # and the callback log's x-max-age is that TTL, shared by every test on the broker.
        clock.ahead = worker.settings.lan_ttl_s + 1
        # Every user the broker's log knows expires with this one: allow for thousands.
        [_, expired] = await events.wait(uid, 2, timeout=30)
        answer = await producer.call({"command": "GetUser", "uid": uid})
        await post_callback(callback(sim, uid))
        [*_, again] = await events.wait(uid, 3)
    assert isinstance(paired, UserPaired) and isinstance(expired, UserExpired)
    assert expired.lastSeenAt == rfc3339_s(seen.seen_s)
    assert answer.data == {"paired": False}
    assert isinstance(again, UserPaired) and again.reason == "first-callback"
    assert [e.kind for e in events.of(uid)] == ["user.paired", "user.expired", "user.paired"]


async def test_two_replicas_publish_one_event_per_change(
    sim: Simulator, events: EventLog, producer: Producer
) -> None:
    """With two replicas following the same log, each change makes exactly one event: paired,
    toys and expired from the replica validating callbacks, forgotten from the Forget's."""
    uid = sim.apps[0].uid
    clock = Clock()
    one, two = (sweeping(Worker(worker_settings(sim, utoken_secret=SECRET), clock=clock))
                for _ in (0, 1))
    async with one, two:
        both = (one, two)
        for body in (callback(sim, uid), callback(sim, uid), callback(sim, uid),
                     callback(sim, uid, toys={MAX: {"status": 0}})):
            await post_callback(body)
        await events.wait(uid, 2)
        await until(lambda: all(_toy_off(w, uid) for w in both), what="both registries")
        # Positive signal that the other replica derived the same events, and only held them.
        assert sorted(_published(w, "user.paired") for w in both) == [0, 1]
        validating, other = both if _published(one, "user.paired") else (two, one)
        assert other.pairing.claims is not None and len(other.pairing.claims) >= 4
        clock.ahead = one.settings.lan_ttl_s + 1
        await events.wait(uid, 3, timeout=30)
        # Both ticked; only the validating replica swept, then forgot the user. The other
        # still holds the stale entry (its own prune waits a few sweeps longer), silent.
        await until(lambda: uid not in validating.registry, what="dropped once reported")
        assert uid in other.registry
        clock.ahead = 0.0
        forgotten = await producer.call({"command": "Forget", "uid": uid})
        await events.wait(uid, 4)
        await until(lambda: all(uid not in w.registry for w in both), what="forgotten by both")
        totals = {kind: [_published(w, kind) for w in (validating, other)]
                  for kind in ("user.paired", "user.toys", "user.expired", "user.forgotten")}
    assert forgotten.status == "ok"
    assert [e.kind for e in events.of(uid)] == [
        "user.paired", "user.toys", "user.expired", "user.forgotten"]
    assert sum(totals["user.forgotten"]) == 1
    assert (totals["user.paired"], totals["user.toys"]) == ([1, 0], [1, 0])
    # Earlier tests' users in the log expired with this one: the other replica told of none.
    assert totals["user.expired"][0] >= 1 and totals["user.expired"][1] == 0


def _toy_off(worker: Worker, uid: str) -> bool:
    known = worker.registry.get(uid, fresh_only=False)
    toy = known.toy(MAX) if known is not None else None
    return toy is not None and toy[3] == 0


def _published(worker: Worker, kind: str) -> int:
    value = worker.metrics.registry.get_sample_value("lovense_worker_events_total",
                                                     {"type": kind})
    return int(value or 0)

