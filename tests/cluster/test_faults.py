"""The fault suite on the 3-node cluster: nodes die, leaders move, every node restarts in
turn, one node stays down for a minute, all while a steady load with Stops runs.

Each scenario runs one `lovense-worker run` process given all three nodes
(`LOVENSE_AMQP_URL` as a list); the load's producer and the results consumer take the
same list and reconnect by themselves. The checker and its promises are the fault
suite's (tests/faults/harness.py): 0 lost, 0 unexplained duplicates, 0 late sends,
0 sends after a Stop; each row also says how long consumption paused. Every scenario
ends with all three nodes running again, so the next starts from a whole cluster.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Awaitable, Callable

import aio_pika
import httpx
import pytest

from tests.cluster import support
from tests.cluster.support import NODES, SHARDS, Cluster, node_name
from tests.faults.harness import (
    DurableResults,
    Report,
    assert_promises,
    check,
    dead_ids,
    follow_results,
    publish_load,
    wait_for_all,
)
from tests.integration.support import WorkerProcess, purge_topology
from worker.adapters.amqp.producer import Producer
from worker.contract import topology
from worker.simulator import Simulator

# The longest scenario keeps a node down for 60 s; the load runs 2 s either side of the
# fault, then every result is awaited (up to 60 s).
pytestmark = pytest.mark.timeout(300)

#: The load: the fault suite's mix (Functions for 150 users, one Stop in 25, 8 s
#: deadlines), at a steady 200 commands/s for as long as the fault lasts.
USERS = 150
RATE = 200.0
TTL_MS = 8000
MOST_COMMANDS = 40_000
#: Load before the fault hits and after it ends.
AROUND_S = 1.0

Fault = Callable[[Cluster, WorkerProcess], Awaitable[None]]
_NODE_INFO = re.compile(r'^lovense_worker_broker_node_info\{node="[^"]*:(\d+)"\} 1\.0$')


async def connected_node(worker: WorkerProcess) -> int | None:
    """Return the cluster node (1–3) the worker says it is connected to, or None."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{worker.port}/metrics")).text
    for line in text.splitlines():
        if found := _NODE_INFO.match(line):
            return int(found.group(1)) - 5680
    return None


async def until_connected(worker: WorkerProcess, ok: Callable[[int | None], bool],
                          timeout: float, what: str) -> int | None:
    """Wait until the worker's node satisfies ``ok``; return it."""
    deadline = time.monotonic() + timeout
    while True:
        node = await connected_node(worker)
        if ok(node):
            return node
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what} (the worker is on {node})")
        await asyncio.sleep(0.2)  # this condition's poll: the worker's /metrics


async def cli(*args: str, timeout: float = 120.0) -> str:
    """Run the cluster script off the event loop (the load keeps publishing meanwhile)."""
    return await asyncio.to_thread(support.run, *args, timeout=timeout)


async def until_whole(cluster: Cluster, timeout: float = 60.0) -> None:
    """Wait until all three nodes run and no node is critical to any quorum queue."""
    deadline = time.monotonic() + timeout
    while True:
        running = await asyncio.to_thread(cluster.running)
        if running == {node_name(n) for n in NODES} and all(
                await asyncio.gather(*(_not_critical(n) for n in NODES))):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the cluster is not whole within {timeout} s: {running}")
        await asyncio.sleep(0.5)  # this condition's poll: each try is a CLI round trip


async def _not_critical(n: int) -> bool:
    """Return whether node ``n`` can stop without a quorum queue losing its majority (every
    queue's other members are in sync): what the cluster operator checks before a restart."""
    try:
        await cli("queues", str(n), "check_if_node_is_quorum_critical", timeout=60)
    except AssertionError:
        return False
    return True


async def shard_leaders(cluster: Cluster, asked: int) -> dict[str, str]:
    rows = await asyncio.to_thread(cluster.queues, asked)
    shards = {topology.shard_queue(i) for i in range(SHARDS)}
    return {row["name"]: row["leader"] for row in rows if row["name"] in shards}


# The faults. Each returns once the cluster is whole again.

async def kill_connected(cluster: Cluster, worker: WorkerProcess) -> None:
    """SIGKILL the node the worker is connected to; it moves to another; the node returns
    after about 6 s."""
    victim = await until_connected(worker, lambda n: n is not None, 10, "connected")
    assert victim is not None
    await cli("kill", str(victim))
    await until_connected(worker, lambda n: n not in (None, victim), 30,
                          f"the worker moves off node {victim}")
    await asyncio.sleep(4)  # deliberate fault timing: the node stays dead for about 6 s
    await cli("start-node", str(victim))
    await until_whole(cluster)


async def kill_shard_leader(cluster: Cluster, worker: WorkerProcess) -> None:
    """SIGKILL the node leading the most shard queues; each elects a leader on the other
    two; the node returns after about 6 s."""
    leaders = await shard_leaders(cluster, 1)
    victim = max(NODES, key=lambda n: sum(node == node_name(n) for node in leaders.values()))
    survivors = {node_name(n) for n in NODES if n != victim}
    await cli("kill", str(victim))
    deadline = time.monotonic() + 30
    while not set((await shard_leaders(cluster, min(n for n in NODES if n != victim)))
                  .values()) <= survivors:
        assert time.monotonic() < deadline, "the shard queues elect no leader on the others"
        await asyncio.sleep(0.5)  # this condition's poll: each try is a CLI round trip
    await asyncio.sleep(2)  # deliberate fault timing: the node stays dead for about 6 s
    await cli("start-node", str(victim))
    await until_whole(cluster)


async def rolling_restart(cluster: Cluster, worker: WorkerProcess) -> None:
    """Stop and start each node in turn, as an operator's rolling restart does: the next only
    once no quorum queue would lose its majority."""
    for n in NODES:
        await until_whole(cluster)
        await cli("stop-node", str(n))
        await cli("start-node", str(n))
    await until_whole(cluster)


async def node_down_60s(cluster: Cluster, worker: WorkerProcess) -> None:
    """Stop the worker's node for 60 s; the worker runs from the other two meanwhile."""
    victim = await until_connected(worker, lambda n: n is not None, 10, "connected")
    assert victim is not None
    await cli("stop-node", str(victim))
    await until_connected(worker, lambda n: n not in (None, victim), 30,
                          f"the worker moves off node {victim}")
    await asyncio.sleep(60)  # deliberate fault timing: the scenario is a node down for 60 s
    await cli("start-node", str(victim))
    await until_whole(cluster)


SCENARIOS: dict[str, Fault] = {
    "cluster-kill-connected": kill_connected,
    "cluster-kill-shard-leader": kill_shard_leader,
    "cluster-rolling-restart": rolling_restart,
    "cluster-node-down-60s": node_down_60s,
}


async def run_scenario(name: str, cluster: Cluster, sim: Simulator, fault: Fault) -> Report:
    """Start a worker on all three nodes, publish the load while the fault hits, drain,
    check, report."""
    urls = ",".join(cluster.urls)
    await until_whole(cluster)
    await purge_topology(cluster.url(1))
    results, ready = DurableResults(), asyncio.Event()
    queue_name = f"faults.{name}"
    following = asyncio.create_task(follow_results(urls, results, queue_name, ready))
    worker = WorkerProcess(sim, LOVENSE_AMQP_URL=urls, LOVENSE_SHARDS=str(SHARDS))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        await worker.start()
        async with Producer(urls, confirm_timeout=5) as producer:
            enough = asyncio.Event()
            publishing = asyncio.create_task(publish_load(
                producer, name, MOST_COMMANDS, USERS, TTL_MS, RATE, until=enough))
            try:
                await asyncio.sleep(AROUND_S)  # deliberate fault timing: a running load
                await fault(cluster, worker)
                await asyncio.sleep(AROUND_S)  # deliberate fault timing: load after the fault
            finally:
                enough.set()
                load = await publishing
        await wait_for_all(results, load, timeout=60)
        assert await worker.signal(signal.SIGTERM) == 0
    finally:
        if worker.process is not None and worker.process.returncode is None:
            await worker.signal(signal.SIGKILL)
        following.cancel()
    report = check(name, load, results, sim, await dead_ids(cluster.url(1)), killed=False)
    report.repeated_results = sum(1 for s in load.sent if results.counts.get(s.ident, 0) > 1)
    async with await aio_pika.connect(cluster.url(1)) as connection:
        channel = await connection.channel()
        await channel.queue_delete(queue_name)
    assert_promises(report, load, results, killed=False)
    return report


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_cluster_fault(name: str, cluster: Cluster, sim: Simulator) -> None:
    """Under this cluster fault: nothing lost, nothing unexplained twice, nothing late or
    after a Stop, and the worker consumes again by itself."""
    await run_scenario(name, cluster, sim, SCENARIOS[name])
