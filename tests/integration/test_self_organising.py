"""Worker processes with identical settings share eight shards by themselves: under load a fifth
joins and one is SIGKILLed, and every process works, each uid's calls keep their order, and
every command gets its result."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator

import aio_pika
import pytest

from tests.integration.support import AMQP_URL, SHARDS, ResultLog, WorkerProcess, until
from worker.adapters.amqp.producer import Producer
from worker.contract import topology
from worker.simulator import Simulator

EIGHT = 8
USERS = [f"member-user-{n}" for n in range(40)]
#: Between two rounds (one command per user): about 400 commands a second.
ROUND_S = 0.1
# Each round is `stopPrevious: 0`, queued per uid: a key queue of 1,000 holds the backlog of a
# handover pause (about 4 s, 40 rounds) where the default 16 would drop the oldest, by design.
SAME = {"LOVENSE_SHARDS": str(EIGHT), "LOVENSE_BATCH_WINDOW_MS": "0",
        "LOVENSE_SERVER_RATE": "100", "LOVENSE_SERVER_BURST": "100", "LOVENSE_KEY_QUEUE": "1000"}


async def drop_extra_shards() -> None:
    """Delete the shard queues beyond the suite's four, so later tests route only to those."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for index in range(SHARDS, EIGHT):
            await channel.queue_delete(topology.shard_queue(index))


@pytest.fixture
async def members(sim: Simulator, clean_broker: None) -> AsyncIterator[list[WorkerProcess]]:
    """Four processes identical but for their metrics ports, each holding two of eight shards."""
    started = [WorkerProcess(sim, **SAME) for _ in range(4)]
    try:
        await asyncio.gather(*(m.start() for m in started))
        await until(lambda: shares(started, [2.0] * 4), 30,
                    what="four members holding two shards each")
        yield started
    finally:
        for member in started:
            if member.process is not None and member.process.returncode is None:
                await member.signal(signal.SIGTERM)
        await drop_extra_shards()


async def shares(processes: list[WorkerProcess], expected: list[float]) -> bool:
    """Return whether the processes hold these numbers of shards (in any order) and each
    counts them all as members."""
    held = [await p.metric("lovense_worker_shards_consumed") for p in processes]
    live = [await p.metric("lovense_worker_members") for p in processes]
    return sorted(held) == sorted(expected) and live == [float(len(processes))] * len(processes)


class Load:
    """Rounds of one server Function per user, each user's numbered in publish order."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.rounds = 0
        self.idents: list[str] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            self.rounds += 1
            # A round's commands go out at once; each user's rounds one after another.
            self.idents += await asyncio.gather(*(self.producer.publish({
                "command": "Function", "uid": uid, "id": f"{uid}-{self.rounds}",
                "mode": "server", "action": f"Vibrate:{self.rounds % 20 + 1}",
                "timeSec": self.rounds + 1, "stopPrevious": 0, "ttlMs": 120_000})
                for uid in USERS))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), ROUND_S)

    async def rounds_more(self, count: int) -> None:
        target = self.rounds + count
        await until(lambda: self.rounds >= target, 30, what=f"{count} more rounds published")

    def stop(self) -> None:
        self._stop.set()


def rounds_by_uid(sim: Simulator) -> dict[str, list[int]]:
    """Return, per uid, the round (its `timeSec` - 1) of every server call naming it, in arrival
    order; a call repeated back to back (redelivered after a kill) counts once."""
    calls: dict[str, list[int]] = {}
    for request in sim.requests:
        body = request.body if isinstance(request.body, dict) else {}
        if request.side == "server" and body.get("command") == "Function":
            seen = calls.setdefault(str(body.get("uid")), [])
            step = int(body.get("timeSec", 0)) - 1
            if not seen or seen[-1] != step:
                seen.append(step)
    return calls


@pytest.mark.timeout(180)
async def test_identical_processes_share_shards_through_a_join_and_a_kill(
    sim: Simulator, members: list[WorkerProcess], producer: Producer, results: ResultLog
) -> None:
    """Under load a fifth identical process joins and takes shards, one is SIGKILLed and its
    shards are taken over; all five did work, each uid's calls arrive in publish order with
    none skipped, every command's result is ok, and the four left hold two shards each."""
    load = Load(producer)
    publishing = asyncio.get_running_loop().create_task(load.run())
    try:
        await load.rounds_more(10)
        fifth = WorkerProcess(sim, **SAME)
        members.append(fifth)
        await fifth.start()
        await until(lambda: shares(members, [2.0, 2.0, 2.0, 1.0, 1.0]), 30,
                    what="five members holding 2, 2, 2, 1 and 1 shards")
        await until(lambda: did_work(fifth), 30, what="the fifth member handling commands")
        await load.rounds_more(10)

        killed = members[1]
        assert await did_work(killed)
        await killed.signal(signal.SIGKILL)
        survivors = [m for m in members if m is not killed]
        killed_at = time.monotonic()
        await until(lambda: shares(survivors, [2.0] * 4), 30,
                    what="four survivors holding two shards each")
        pause = time.monotonic() - killed_at
        await load.rounds_more(10)
    finally:
        load.stop()
        await publishing

    handled = [await m.metric("lovense_worker_messages_total") for m in survivors]
    assert all(count > 0 for count in handled), handled
    assert killed.process is not None and killed.process.returncode == -signal.SIGKILL
    await until(lambda: all(i in results.by_id for i in load.idents), 60,
                what=f"a result for each of {len(load.idents)} commands")
    assert {results.by_id[i].status for i in load.idents} == {"ok"}
    await until(lambda: sum(map(len, rounds_by_uid(sim).values())) >= len(load.idents), 30,
                what="every call recorded by the simulator")
    expected = list(range(1, load.rounds + 1))
    assert {uid: steps for uid, steps in rounds_by_uid(sim).items() if steps != expected} == {}
    print(f"\n{len(load.idents)} commands in {load.rounds} rounds; shards back in the hands "
          f"of four members {pause:.1f} s after the SIGKILL; handled {handled}")


async def did_work(process: WorkerProcess) -> bool:
    return await process.metric("lovense_worker_messages_total") > 0
