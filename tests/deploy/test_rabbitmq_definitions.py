"""deploy/k8s/rabbitmq/definitions.json pre-declares exactly the topology the worker declares.

RabbitMQ refuses to redeclare a queue with other arguments, so a definitions
file that differs from the worker's own declarations would stop the worker at
start-up. The worker's declaring code runs here against a recording channel
(no socket) and the file must match it item for item.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aio_pika.abc import ExchangeType

from tests.deploy.support import DEPLOY, load_json
from worker.adapters.amqp.declare import declare as declare_topology
from worker.adapters.amqp.link import Link, Session
from worker.adapters.amqp.registry_log import RegistryLog
from worker.config import Settings
from worker.contract import topology
from worker.metrics import Metrics

DEFINITIONS = DEPLOY / "k8s" / "rabbitmq" / "definitions.json"


class _Recorder:
    def __init__(self) -> None:
        self.exchanges: dict[str, dict[str, Any]] = {}
        self.queues: dict[str, dict[str, Any]] = {}
        self.bindings: list[dict[str, Any]] = []

    def exchange(self, name: str, **fields: Any) -> None:
        entry = {"name": name, "vhost": "/", **fields}
        assert self.exchanges.setdefault(name, entry) == entry, f"{name} declared two ways"

    def queue(self, name: str, **fields: Any) -> None:
        entry = {"name": name, "vhost": "/", **fields}
        assert self.queues.setdefault(name, entry) == entry, f"{name} declared two ways"


class _Exchange:
    def __init__(self, name: str) -> None:
        self.name = name


class _Queue:
    def __init__(self, recorder: _Recorder, name: str) -> None:
        self._recorder, self.name = recorder, name

    async def bind(self, exchange: _Exchange, routing_key: str = "",
                   arguments: dict[str, Any] | None = None, **_: Any) -> None:
        self._recorder.bindings.append({
            "source": exchange.name, "vhost": "/", "destination": self.name,
            "destination_type": "queue", "routing_key": routing_key,
            "arguments": dict(arguments or {}),
        })


class _Channel:
    def __init__(self, recorder: _Recorder) -> None:
        self._recorder = recorder

    async def declare_exchange(self, name: str, type: ExchangeType | str = ExchangeType.DIRECT,
                               durable: bool = False, auto_delete: bool = False,
                               internal: bool = False, passive: bool = False,
                               arguments: dict[str, Any] | None = None, **_: Any) -> _Exchange:
        assert not passive
        kind = type.value if isinstance(type, ExchangeType) else type
        self._recorder.exchange(name, type=kind, durable=durable, auto_delete=auto_delete,
                                internal=internal, arguments=dict(arguments or {}))
        return _Exchange(name)

    async def declare_queue(self, name: str, *, durable: bool = False, exclusive: bool = False,
                            passive: bool = False, auto_delete: bool = False,
                            arguments: dict[str, Any] | None = None, **_: Any) -> _Queue:
        assert not passive and not exclusive
        self._recorder.queue(name, durable=durable, auto_delete=auto_delete,
                             arguments=dict(arguments or {}))
        return _Queue(self._recorder, name)


class _Connection:
    def __init__(self, recorder: _Recorder) -> None:
        self._recorder = recorder

    async def channel(self, *_: Any, **__: Any) -> _Channel:
        return _Channel(self._recorder)


async def _refuse(*_: Any) -> None:
    raise AssertionError("declaring dead-letters nothing")


def declared() -> _Recorder:
    """Return what the worker declares with the default settings."""
    settings, recorder = Settings(), _Recorder()

    async def declare() -> None:
        channel = _Channel(recorder)
        await declare_topology(channel, settings.shards)  # type: ignore[arg-type]
        # The registry log declares on the link's session: a connected one, made of recorders.
        link = Link(settings.brokers, settings.shards, Metrics())
        link._session = Session(_Connection(recorder), _Connection(recorder),  # type: ignore[arg-type]
                                channel, _Exchange("results"), _Exchange("dead"),  # type: ignore[arg-type]
                                _Exchange("events"))  # type: ignore[arg-type]
        registry = RegistryLog(link, None, settings.lan_ttl_s,  # type: ignore[arg-type]
                               settings.snapshot_interval_s, Metrics(), dead_letter=_refuse)
        await registry.declare()
        # Presence.start declares the presence exchange (its queue is exclusive).
        await channel.declare_exchange(topology.PRESENCE_EXCHANGE, ExchangeType.FANOUT,
                                       durable=True)

    asyncio.run(declare())
    return recorder


def _key(binding: dict[str, Any]) -> tuple[str, str, str]:
    return (binding["source"], binding["destination"], binding["routing_key"])


def test_definitions_declare_the_workers_exchanges() -> None:
    """Every exchange the worker declares is in definitions.json with its type and flags."""
    assert sorted(load_json(DEFINITIONS)["exchanges"], key=lambda e: e["name"]) == sorted(
        declared().exchanges.values(), key=lambda e: e["name"])


def test_definitions_declare_the_workers_queues_with_their_exact_arguments() -> None:
    """Every queue and stream is in definitions.json with exactly the worker's arguments."""
    assert sorted(load_json(DEFINITIONS)["queues"], key=lambda q: q["name"]) == sorted(
        declared().queues.values(), key=lambda q: q["name"])


def test_definitions_bind_as_the_worker_binds() -> None:
    """Every binding (shard weights included) is in definitions.json, and no other."""
    assert sorted(load_json(DEFINITIONS)["bindings"], key=_key) == sorted(
        declared().bindings, key=_key)


def test_policies_apply_to_lovense_queues_and_set_no_argument_the_worker_sets() -> None:
    """Policies match only lovense.* queues and never restate a queue argument (those win)."""
    policies = load_json(DEFINITIONS)["policies"]
    assert policies, "definitions.json has no policies"
    arguments = {k.removeprefix("x-") for q in declared().queues.values() for k in q["arguments"]}
    for policy in policies:
        assert policy["pattern"].startswith("^lovense\\."), policy
        assert policy["apply-to"] == "queues", policy
        assert not set(policy["definition"]) & arguments, policy


def test_the_recorder_sees_every_shard() -> None:
    """The recording channel captured one weight-"1" binding per default shard."""
    shards = [b for b in declared().bindings if b["source"] == topology.COMMANDS_EXCHANGE]
    assert sorted(b["destination"] for b in shards) == [
        topology.shard_queue(i) for i in range(Settings().shards)]
    assert {b["routing_key"] for b in shards} == {"1"}
