"""The fault suite: a load of thousands of commands for hundreds of users while a fault hits.

After each scenario the checker asserts: every command has a terminal result or
is in lovense.dead (0 lost); exactly one result each, except commands in flight
at a SIGKILL; no command reached the simulator twice unless its result shows
retries, a redelivery or a SIGKILL; none reached it after its deadline or after
a later Stop for its key. The table is printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import pytest

from tests.faults.harness import (
    DurableResults,
    Report,
    assert_promises,
    check,
    dead_ids,
    publish_load,
    wait_for_all,
)
from tests.integration.support import AMQP_URL, WorkerProcess, close_worker_connections
from worker.adapters.amqp.producer import Producer
from worker.contract import topology
from worker.simulator import Simulator

COMMANDS = 1500
USERS = 150
RATE = 500.0
TTL_MS = 8000


@pytest.fixture
async def durable_results(clean_broker: None) -> AsyncIterator[DurableResults]:
    log = DurableResults()
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.RESULTS_EXCHANGE)
        queue = await channel.declare_queue("faults.results", durable=True)
        await queue.bind(exchange, routing_key="#")
        await queue.purge()
        await queue.consume(log.on_message)
        yield log
        await queue.delete(if_unused=False, if_empty=False)


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, text=True,
                          timeout=120).stdout


Fault = Callable[[Simulator, list[WorkerProcess]], Awaitable[None]]


async def run_scenario(name: str, sim: Simulator, results: DurableResults, fault: Fault,
                       *, killed: bool = False) -> Report:
    """Start a worker, publish the load while the fault hits, drain, check, report."""
    workers = [WorkerProcess(sim)]
    await workers[0].start()
    try:
        async with Producer(AMQP_URL) as producer:
            publishing = asyncio.create_task(
                publish_load(producer, name, COMMANDS, USERS, TTL_MS, RATE))
            await asyncio.sleep(1.0)  # deliberate fault timing: the fault hits a running load
            await fault(sim, workers)
            load = await publishing
        sim.set_faults()
        await wait_for_all(results, load, timeout=60)
    finally:
        for worker in workers:
            await worker.signal(signal.SIGTERM)
    report = check(name, load, results, sim, await dead_ids(AMQP_URL), killed)
    report.repeated_results = sum(1 for s in load.sent if results.counts.get(s.ident, 0) > 1)
    assert_promises(report, load, results, killed=killed)
    return report


async def sigkill_and_restart(sim: Simulator, workers: list[WorkerProcess]) -> None:
    await workers[0].signal(signal.SIGKILL)
    workers.append(WorkerProcess(sim))
    await workers[-1].start()


async def sigterm_and_replace(sim: Simulator, workers: list[WorkerProcess]) -> None:
    assert await workers[0].signal(signal.SIGTERM) == 0  # graceful: exit code 0
    workers.append(WorkerProcess(sim))
    await workers[-1].start()


async def close_connections(sim: Simulator, workers: list[WorkerProcess]) -> None:
    assert await asyncio.to_thread(close_worker_connections) >= 1


async def rabbitmq_down_10s(sim: Simulator, workers: list[WorkerProcess]) -> None:
    await asyncio.to_thread(rabbitmqctl, "stop_app")
    try:
        await asyncio.sleep(10)  # deliberate fault timing: the scenario is 10 s without a broker
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")


def upstream(delay_ms: int | None = None, code: int | None = None, share: float = 1.0,
             mode: str | None = None) -> Fault:
    """Return a fault that sets the simulator's faults (Simulator.set_faults' keywords)."""
    async def apply(sim: Simulator, workers: list[WorkerProcess]) -> None:
        sim.set_faults(delay_ms=delay_ms, code=code, share=share, mode=mode)

    return apply


async def mix(sim: Simulator, workers: list[WorkerProcess]) -> None:
    sim.set_faults(mode="reset", share=0.1)
    await asyncio.to_thread(close_worker_connections)
    await asyncio.sleep(0.7)  # deliberate fault timing: the SIGKILL hits mid-reconnect
    await sigkill_and_restart(sim, workers)
    sim.set_faults(code=500, share=0.2)


SCENARIOS: dict[str, tuple[Fault, bool]] = {
    "sigkill-restart": (sigkill_and_restart, True),
    "sigterm": (sigterm_and_replace, False),
    "close-connection": (close_connections, False),
    "rabbitmq-down-10s": (rabbitmq_down_10s, False),
    "upstream-500": (upstream(code=500, share=0.3), False),
    "upstream-506": (upstream(code=506, share=0.3), False),
    "upstream-reset": (upstream(mode="reset", share=0.2), False),
    "upstream-timeout": (upstream(mode="hang", share=0.1), False),
    "upstream-slow-5s": (upstream(delay_ms=5000), False),
    "mix": (mix, True),
}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_fault_scenario(name: str, sim: Simulator, durable_results: DurableResults) -> None:
    """Under this fault: nothing lost, nothing unexplained twice, nothing late or after a Stop."""
    fault, killed = SCENARIOS[name]
    await run_scenario(name, sim, durable_results, fault, killed=killed)
