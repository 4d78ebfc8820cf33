"""The local 3-node cluster: clustered, replicated, the topology and definitions redeclare,
the worker runs against it, and it survives the loss of a node.

The tests share one cluster (the package fixture) and run in file order: the node-loss
test comes last and brings the node back before it ends.
"""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import msgspec
import pytest
from aio_pika.abc import AbstractIncomingMessage

from tests.cluster import support
from tests.cluster.support import NODES, SHARDS, Cluster, listen_to_results, node_name
from tests.integration.support import WorkerProcess
from worker.adapters.amqp.producer import Producer
from worker.contract import topology
from worker.contract.messages import Result, result_decoder
from worker.simulator import Simulator

# Starting the cluster (about 30 s on two busy cores) counts toward the first test's time.
pytestmark = pytest.mark.timeout(300)

QUORUM = {*(topology.shard_queue(i) for i in range(SHARDS)),
          topology.DEAD_QUEUE, topology.STOP_QUEUE, topology.CALLBACKS_QUEUE}
STREAMS = {topology.STOP_LOG, topology.CALLBACKS_LOG, topology.SNAPSHOTS}
ALL_NODES = [node_name(n) for n in NODES]
DEFS_VHOST = "lovense-defs"


def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``check()`` holds (each try is a CLI round trip); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what}")
        time.sleep(0.2)  # this condition's poll: the CLI call itself takes ~0.7 s


def declare_with_worker_code(url: str) -> str:
    """Run scripts/declare_topology.py against ``url``; return its log output."""
    done = subprocess.run([sys.executable, str(support.DECLARE), url], capture_output=True,
                          text=True, timeout=60, check=False, env=support.script_env())
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_three_nodes_run_clustered(cluster: Cluster) -> None:
    """Each node runs as its own process, and the cluster counts all three as running."""
    pids = [cluster.pid(n) for n in NODES]
    assert len(set(pids)) == 3
    for n, pid in zip(NODES, pids, strict=True):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"RABBITMQ_NODENAME={node_name(n)}".encode() in environ
    assert cluster.running() == set(ALL_NODES)
    assert cluster.urls == tuple(f"amqp://guest:guest@localhost:{5680 + n}/" for n in NODES)


def test_every_quorum_queue_and_stream_has_three_members(cluster: Cluster) -> None:
    """`start` ends with `check`: quorum_status and stream_status find three members on every
    queue the worker's code declared (and list_queues agrees)."""
    report = cluster.started.splitlines()
    assert report[-1] == "3 nodes running; every quorum queue and stream in vhost / has 3 members"
    assert sorted(line for line in report if line.startswith(("quorum ", "stream "))) == sorted(
        [f"quorum {name}: 3 members" for name in QUORUM]
        + [f"stream {name}: 3 members" for name in STREAMS])
    listed = {row["name"]: row for row in cluster.queues(2)}
    assert {name: row["type"] for name, row in listed.items()} == {
        **dict.fromkeys(QUORUM, "quorum"), **dict.fromkeys(STREAMS, "stream")}
    assert {name: sorted(row["members"]) for name, row in listed.items()} == dict.fromkeys(
        QUORUM | STREAMS, ALL_NODES)


def test_topology_redeclares_idempotently(cluster: Cluster) -> None:
    """The worker's own declaring code runs twice more, through two nodes, and changes nothing."""
    before = sorted(cluster.queues(1), key=lambda row: str(row["name"]))
    for n in (1, 2):
        output = declare_with_worker_code(cluster.url(n))
        # A stream declared with other arguments is only logged (the worker goes on with it).
        assert "stream_arguments_differ" not in output
    assert sorted(cluster.queues(1), key=lambda row: str(row["name"])) == before


def _definitions_in(vhost: str) -> dict[str, Any]:
    definitions: dict[str, Any] = json.loads(support.DEFINITIONS.read_text())
    moved = copy.deepcopy(definitions)
    for kind in ("exchanges", "queues", "bindings", "policies"):
        for item in moved[kind]:
            item["vhost"] = vhost
    return moved


def _exported(cluster: Cluster, tmp_path: Path) -> dict[str, Any]:
    target = tmp_path / "exported.json"
    cluster.ctl(1, "export_definitions", str(target))
    exported: dict[str, Any] = json.loads(target.read_text())
    return exported


def _assert_contains(exported: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Every item of ``wanted`` is in ``exported``, field for field.

    RabbitMQ 3.10 exports no ``internal`` for an exchange (so it must be false) and adds a
    ``type`` to each queue; every other field the file gives must come back as it is.
    """
    assert sorted(wanted["bindings"], key=repr) == sorted(
        (b for b in exported["bindings"] if b["vhost"] == wanted["bindings"][0]["vhost"]),
        key=repr)
    for kind in ("exchanges", "queues", "policies"):
        have = {(item["vhost"], item["name"]): item for item in exported[kind]}
        for item in wanted[kind]:
            got = have.get((item["vhost"], item["name"]))
            assert got is not None, f"{kind}: {item['name']} is not in the broker's definitions"
            assert {key: got.get(key, False if key == "internal" else None) for key in item} == item

def test_definitions_import_into_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    """definitions.json imports over the declared topology and into an empty vhost, replicated
    there on all three nodes, and the worker's code then redeclares both without complaint."""
    cluster.ctl(1, "import_definitions", str(support.DEFINITIONS))
    _assert_contains(_exported(cluster, tmp_path), _definitions_in("/"))

    cluster.ctl(1, "add_vhost", DEFS_VHOST)
    try:
        cluster.ctl(1, "set_permissions", "-p", DEFS_VHOST, "guest", ".*", ".*", ".*")
        moved = tmp_path / "definitions.json"
        moved.write_text(json.dumps(_definitions_in(DEFS_VHOST)))
        cluster.ctl(1, "import_definitions", str(moved))
        _assert_contains(_exported(cluster, tmp_path), _definitions_in(DEFS_VHOST))
        listed = cluster.queues(1, DEFS_VHOST)
        assert {row["name"]: sorted(row["members"]) for row in listed} == dict.fromkeys(
            QUORUM | STREAMS, ALL_NODES)
        output = declare_with_worker_code(cluster.url(3) + DEFS_VHOST)
        assert "stream_arguments_differ" not in output
    finally:
        cluster.ctl(1, "delete_vhost", DEFS_VHOST)


async def test_worker_answers_through_a_cluster_node(cluster: Cluster, sim: Simulator) -> None:
    """A `lovense-worker run` process on node 2 answers a command published through node 3."""
    answered: asyncio.Queue[Result] = asyncio.Queue()

    async def on_result(message: AbstractIncomingMessage) -> None:
        try:
            await answered.put(result_decoder.decode(message.body))
        except msgspec.ValidationError:
            pass  # not a result of ours

    worker = WorkerProcess(sim, LOVENSE_AMQP_URL=cluster.url(2), LOVENSE_SHARDS=str(SHARDS))
    try:
        await worker.start()
        async with await aio_pika.connect(cluster.url(1)) as connection:
            await listen_to_results(connection, on_result)
            ident = f"cluster-{uuid.uuid4()}"
            async with Producer(cluster.url(3)) as producer:
                await producer.publish({"command": "Function", "uid": "cluster-user",
                                        "id": ident, "action": "Vibrate:5", "timeSec": 10,
                                        "mode": "server"})
            result = await asyncio.wait_for(answered.get(), 30)
            assert (result.id, result.status) == (ident, "ok"), result.message
        assert [r.body["action"] for r in sim.requests
                if r.side == "server" and r.body.get("uid") == "cluster-user"] == ["Vibrate:5"]
    finally:
        code = await worker.signal(signal.SIGTERM) if worker.process is not None else None
    assert code == 0, "the worker did not stop cleanly on SIGTERM"


def _leaders(cluster: Cluster, asked: int) -> dict[str, str]:
    return {row["name"]: row["leader"] for row in cluster.queues(asked)
            if row["type"] == "quorum"}


async def _round_trip(url: str, queue_name: str) -> bytes:
    """Publish one message straight into ``queue_name`` (confirmed); return it once consumed.

    A consumer, not basic.get: quorum queues with single active consumer refuse basic.get.
    Anything older in the queue is taken (and acked) on the way.
    """
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        body = f"probe {uuid.uuid4()}".encode()
        await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue_name)
        queue = await channel.get_queue(queue_name)
        async with queue.iterator() as messages, asyncio.timeout(10):
            async for message in messages:
                await message.ack()
                if message.body == body:
                    return body
    raise AssertionError(f"{queue_name}: the probe never came back")


async def test_killing_a_leading_node_leaves_two_running_with_leaders(cluster: Cluster) -> None:
    """SIGKILL (by PID) of the node leading the most quorum queues leaves two running nodes,
    every quorum queue elects a leader on them and takes and delivers a message; the node
    then restarts and rejoins."""
    leaders = _leaders(cluster, 2)
    victim = max(NODES, key=lambda n: sum(leader == node_name(n) for leader in leaders.values()))
    survivors = [n for n in NODES if n != victim]
    pid = cluster.pid(victim)
    support.run("kill", str(victim))
    try:
        assert not Path(f"/proc/{pid}").exists()
        assert [cluster.alive(n) for n in NODES] == [n != victim for n in NODES]
        live = {node_name(n) for n in survivors}
        eventually(lambda: cluster.running() == live, 30, f"the cluster runs {sorted(live)}")
        eventually(lambda: set(_leaders(cluster, survivors[0]).values()) <= live, 60,
                   f"every quorum queue has its leader on {sorted(live)}")
        statuses = await asyncio.gather(*(asyncio.to_thread(
            support.run, "queues", str(survivors[0]), "quorum_status", name,
            "--formatter", "json") for name in sorted(QUORUM)))
        for name, status in zip(sorted(QUORUM), statuses, strict=True):
            states = {row["Node Name"]: row["Raft State"] for row in json.loads(status)}
            leading = [node for node, state in states.items() if state == "leader"]
            assert len(leading) == 1 and leading[0] in live, f"{name}: {states}"
            assert (await _round_trip(cluster.url(survivors[1]), name)).startswith(b"probe ")
    finally:
        support.run("start-node", str(victim))
    eventually(lambda: cluster.running() == set(ALL_NODES), 30, "all three nodes run again")
