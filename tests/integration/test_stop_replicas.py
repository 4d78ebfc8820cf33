"""A multi-user Stop on the Stop lane wins for every one of its users, on both replicas: the
replica that learns of it from the Stop log cancels its waiting commands for each user and
stops again after its calls in flight."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest

from tests.integration.support import ResultLog, WorkerProcess, unanswered, until
from worker.adapters.amqp.producer import Producer
from worker.simulator import Simulator

USERS = [f"stop-replica-user-{n}" for n in range(12)]
STEPS = 4


@pytest.fixture
async def two_replicas(sim: Simulator, clean_broker: None) -> AsyncIterator[list[WorkerProcess]]:
    """Two identical worker processes sharing four shards, two each."""
    started = [WorkerProcess(sim, LOVENSE_SHARDS="4", LOVENSE_SERVER_RATE="0.25",
                             LOVENSE_SERVER_BURST="1", LOVENSE_BATCH_WINDOW_MS="0",
                             LOVENSE_SERVER_TIMEOUT_MS="5000", LOVENSE_SHUTDOWN_GRACE_S="2")
               for _ in range(2)]
    try:
        await asyncio.gather(*(r.start() for r in started))

        async def each_owns_two() -> bool:
            counts = [await r.metric("lovense_worker_shards_consumed") for r in started]
            return counts == [2.0, 2.0]

        # The two members hear each other and share the four shards out.
        await until(each_owns_two, 20, what="each process consumes two shards")
        yield started
    finally:
        for replica in started:
            if replica.process is not None:
                await replica.signal(signal.SIGTERM)


def calls_by_uid(sim: Simulator) -> dict[str, list[str]]:
    """Return, per uid, the action of every server call naming it, in arrival order."""
    calls: dict[str, list[str]] = {}
    for request in sim.requests:
        body = request.body if isinstance(request.body, dict) else {}
        if request.side == "server":
            for uid in str(body.get("uid", "")).split(","):
                calls.setdefault(uid, []).append(str(body.get("action")))
    return calls


@pytest.mark.timeout(90)
async def test_multi_user_stop_wins_for_every_user_on_both_replicas(
    sim: Simulator, two_replicas: list[WorkerProcess], producer: Producer, results: ResultLog
) -> None:
    """With commands waiting on both replicas, a Stop for all their users is, for every user,
    the last call Lovense sees, and nothing published before it reaches Lovense after it."""
    sim.set_faults(delay_ms=500)
    idents = []
    for step in range(STEPS):
        for uid in USERS:
            idents.append(await producer.publish({
                "command": "Function", "uid": uid, "id": f"{uid}-{step}", "mode": "server",
                "action": f"Vibrate:{step + 1}", "timeSec": 5, "stopPrevious": 0,
                "ttlMs": 30_000}))

    async def both_waiting() -> bool:
        pending = [await r.metric("lovense_worker_pending") for r in two_replicas]
        return all(count > 0 for count in pending)

    # Rate limits hold each user's later commands: both replicas have some waiting.
    await until(both_waiting, 10, what="commands waiting on both replicas")
    stop_id = await producer.publish({"command": "Stop", "uids": USERS, "mode": "server",
                                      "id": "multi-user-stop"})
    stop = await results.wait_for(stop_id, 20)
    assert (stop.status, stop.command) == ("ok", "Stop"), stop.message
    # Every command has its result: none of them will be sent any more.
    assert await unanswered(results, idents, 30) == []
    assert {results.by_id[i].status for i in idents} <= {"ok", "superseded"}

    def last_calls() -> dict[str, str]:
        return {uid: calls[-1] for uid, calls in calls_by_uid(sim).items()}

    # A replica stops again once its call in flight for the user settles.
    await until(lambda: last_calls() == dict.fromkeys(USERS, "Stop"), 10,
                what="a Stop is every user's last call")
    after_stop = {uid: calls[calls.index("Stop"):] for uid, calls in calls_by_uid(sim).items()}
    late = {uid: calls for uid, calls in after_stop.items() if set(calls) != {"Stop"}}
    assert late == {}
