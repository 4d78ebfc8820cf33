"""Several broker addresses against the real RabbitMQ: dead nodes in LOVENSE_AMQP_URL are
skipped, the node connected to is exported, and the producer reconnects by itself.

Everything runs in a vhost of its own (``lovense-nodes``), so closing its connections
server-side never touches another test's (``close_all_connections -p``, never ``--global``).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import httpx
import msgspec
import pytest

from tests.integration.support import SHARDS, WorkerProcess, free_port, purge_topology, until
from tests.integration.test_callback_endpoint import endpoint_settings
from worker.adapters.amqp.nodes import NoNodeAnswered, connect_first
from worker.adapters.amqp.producer import Producer
from worker.contract import topology
from worker.core.brokers import connect_order, parse_brokers
from worker.endpoint import CallbackService
from worker.simulator import Simulator

VHOST = "lovense-nodes"
LIVE = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
#: Port 1 and a port just found free: nothing listens on either, so both refuse at once.
NODES = f"amqp://guest:guest@127.0.0.1:1/{VHOST},amqp://guest:guest@127.0.0.1:{free_port()}/{VHOST},{LIVE}"  # noqa: E501
NODE_GAUGE = 'lovense_worker_broker_node_info{node="127.0.0.1:5672"}'


def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl (the tests' broker is local) and return its output."""
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        pytest.fail("rabbitmqctl is not installed: these tests manage a vhost of their own")
    return subprocess.run([tool, *args], check=True, capture_output=True, text=True,
                          timeout=60).stdout


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    """A vhost of this module's own, guest allowed everywhere in it; deleted afterwards."""
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    yield VHOST
    rabbitmqctl("delete_vhost", VHOST)


@pytest.fixture
async def topology_declared(vhost: str) -> None:
    """The worker's topology in the vhost, its shard and dead-letter queues empty."""
    await purge_topology(LIVE)


@pytest.fixture
async def worker(sim: Simulator, topology_declared: None) -> AsyncIterator[WorkerProcess]:
    """A `lovense-worker run` process given the list whose live node comes last."""
    process = WorkerProcess(sim, LOVENSE_AMQP_URL=NODES, LOVENSE_SHARDS=str(SHARDS))
    await process.start()
    yield process
    await process.signal(signal.SIGTERM)


def seed_trying_live_last() -> int:
    """Return a seed whose shuffle of NODES tries both dead nodes before the live one."""
    brokers = parse_brokers(NODES)
    return next(seed for seed in range(100)
                if connect_order(brokers, random.Random(seed))[-1] == brokers.nodes[-1])


async def test_connect_first_passes_over_dead_nodes(vhost: str) -> None:
    """In an order that tries both dead nodes first, the live node is the one connected to;
    with only dead nodes, the error names each node and why, and no password."""
    brokers = parse_brokers(NODES)
    connection, node = await connect_first(brokers, "nodes-test",
                                           random.Random(seed_trying_live_last()))
    async with connection:
        assert (node, connection.is_closed) == (brokers.nodes[-1], False)
    dead = parse_brokers(NODES.rsplit(",", 1)[0].replace("guest:guest", "guest:s3cret"))
    with pytest.raises(NoNodeAnswered) as caught:
        await connect_first(dead, "nodes-test", random.Random(0))
    text = str(caught.value)
    assert text.startswith("no RabbitMQ node answered: ")
    assert sorted(part.split(" ", 1)[0] for part in text.split(": ", 1)[1].split("; ")) == \
        sorted(n.name for n in dead.nodes)
    assert "s3cret" not in text


async def test_callback_endpoint_exports_its_node(topology_declared: None) -> None:
    """`lovense-worker callbacks` given the list connects to the live node and exports it."""
    async with CallbackService(endpoint_settings(amqp_url=NODES)) as service:
        assert await service.forwarder.wait_connected(30)
        assert service.health is not None
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"http://127.0.0.1:{service.health.port}/metrics")).text
    assert [line for line in metrics.splitlines()
            if line.startswith("lovense_callback_broker_node_info{")] == [
        'lovense_callback_broker_node_info{node="127.0.0.1:5672"} 1.0']


def function(uid: str) -> dict[str, Any]:
    return {"command": "Function", "uid": uid, "action": "Vibrate:5", "timeSec": 2}


async def cli(*args: str) -> tuple[int, str, str]:
    """Run ``lovense-worker`` with ``args`` (JSON logs); return its exit code, stdout, stderr."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", *args, env={**os.environ, "LOVENSE_LOG_FORMAT": "json"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode is not None
    return child.returncode, out.decode(), err.decode()


async def test_worker_given_dead_nodes_connects_to_the_live_one(worker: WorkerProcess) -> None:
    """Given two dead addresses before the live node, the worker connects to the live one,
    answers a command, and exports that node (and no other) at 1."""
    async with Producer(NODES) as producer:
        result = await producer.call(function("nodes-user-1"), timeout=15)
        assert producer.node is not None and producer.node.name == "127.0.0.1:5672"
    assert (result.status, result.command, result.uids) == ("ok", "Function", ["nodes-user-1"])
    assert await worker.metric(NODE_GAUGE) == 1.0
    assert await worker.metric("lovense_worker_broker_node_info") == 1.0
    assert await worker.metric("lovense_worker_broker_connected") == 1.0


async def test_publish_and_requeue_dead_take_the_list(worker: WorkerProcess) -> None:
    """`publish --wait` and `requeue-dead` given the list reach the live node: the command is
    answered (stdout holds only the result; logs go to stderr), and a dead letter goes back
    to where it came from."""
    code, out, err = await cli("publish", "--amqp-url", NODES, "--wait", "--timeout", "15",
                               msgspec.json.encode(function("nodes-user-2")).decode())
    assert (code, msgspec.json.decode(out)["status"]) == (0, "ok")
    assert "Traceback" not in err  # a dead node tried first is logged, not raised

    connection = await aio_pika.connect(LIVE)
    async with connection:
        channel = await connection.channel()
        back = await channel.declare_queue("lovense-nodes-requeued", exclusive=True)
        await back.bind("amq.direct", routing_key=back.name)
        dead = await channel.get_queue(topology.DEAD_QUEUE)
        await dead.purge()
        await channel.default_exchange.publish(aio_pika.Message(b"{}", headers={
            topology.ERROR_HEADER: "nodes-test: fixed now",
            topology.ORIGIN_EXCHANGE_HEADER: "amq.direct",
            topology.ORIGIN_ROUTING_KEY_HEADER: back.name,
        }), routing_key=topology.DEAD_QUEUE)
        code, out, err = await cli("requeue-dead", "--amqp-url", NODES, "--match", "nodes-test")
        assert (code, out) == (0, f"requeued 1, left 0 in {topology.DEAD_QUEUE}\n"), err
        message = await back.get(timeout=10)
        assert (message.body, topology.ERROR_HEADER in (message.headers or {})) == (b"{}", False)


async def test_producer_reconnects_after_the_broker_closes_it(sim: Simulator,
                                                              topology_declared: None) -> None:
    """A call waiting when RabbitMQ closes the producer's connection raises ConnectionError;
    the producer reconnects by itself to a node of the list, and its next call is answered."""
    async with Producer(NODES) as producer:
        # No worker yet: the call waits for a result that cannot come.
        pending = asyncio.create_task(producer.call(function("nodes-user-3"), timeout=60))
        await until(lambda: bool(producer._waiting), what="the call is waiting for its result")
        rabbitmqctl("close_all_connections", "-p", VHOST, "lovense-nodes test: closed")
        with pytest.raises(ConnectionError) as caught:
            await asyncio.wait_for(pending, 30)
        assert str(caught.value) == ("the connection to 127.0.0.1:5672 was lost before the "
                                     "result came")
        await until(lambda: producer._channel is not None, 30, what="the producer reconnected")
        assert producer.node == parse_brokers(NODES).nodes[-1]
        process = WorkerProcess(sim, LOVENSE_AMQP_URL=NODES, LOVENSE_SHARDS=str(SHARDS))
        await process.start()
        try:
            result = await producer.call(function("nodes-user-4"), timeout=15)
        finally:
            await process.signal(signal.SIGTERM)
    assert (result.status, result.uids) == ("ok", ["nodes-user-4"])
