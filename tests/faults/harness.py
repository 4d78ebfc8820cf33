"""The fault suite's load, worker processes and checker.

A load is thousands of commands for hundreds of users, each command's Lovense
body unique (its own ``timeSec``), so every request the simulator records can be
traced back to the command that caused it. The checker reads every result and
the simulator's log and counts what the suite promises never happens.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

from tests.integration.support import ResultLog
from worker.adapters.amqp.producer import Producer
from worker.contract.messages import Result
from worker.contract.topology import PUBLISHED_MS_HEADER
from worker.simulator import Simulator

TERMINAL = {"ok", "failed", "invalid", "superseded", "expired", "dropped"}
#: Requests take a moment from leaving the worker to arriving at the simulator.
TRANSIT_SLACK_MS = 100


@dataclass(frozen=True, slots=True)
class Sent:
    """One command the load published."""

    ident: str
    uid: str
    key: float  # the command's unique timeSec; Stops have 0
    published_ms: int
    deadline_ms: int
    stop: bool


@dataclass(slots=True)
class Load:
    """What a scenario published."""

    sent: list[Sent] = field(default_factory=list)


async def publish_load(producer: Producer, scenario: str, commands: int, users: int,
                       ttl_ms: int, rate_per_s: float) -> Load:
    """Publish the load at a steady rate: mostly Functions, one Stop in 25."""
    load, rng = Load(), random.Random(scenario)
    gap = 1.0 / rate_per_s
    started = time.monotonic()
    for n in range(commands):
        uid = f"{scenario}-u{rng.randrange(users)}"
        ident = f"{scenario}-{n}"
        if n % 25 == 24:
            # A toy only this Stop names makes its request traceable too; a Stop for one
            # toy still overlaps every command that names no toy.
            body: dict[str, Any] = {"command": "Stop", "uid": uid, "id": ident,
                                    "mode": "server", "toy": f"stop{n}"}
            key = 0.0
        else:
            key = round(2 + (n + 1) / 10_000, 4)
            body = {"command": "Function", "uid": uid, "id": ident, "mode": "server",
                    "action": f"Vibrate:{1 + n % 20}", "timeSec": key, "ttlMs": ttl_ms}
        now_ms = await publish_until_sent(producer, body)
        load.sent.append(Sent(ident, uid, key, now_ms, now_ms + ttl_ms, key == 0.0))
        pause = started + (n + 1) * gap - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)  # deliberate timing: the load's steady publish rate
    return load


async def publish_until_sent(producer: Producer, body: dict[str, Any]) -> int:
    """Publish, retrying while the broker is away, as a careful producer does; return the
    publish time (ms) of the attempt that went through.

    A retry after a lost confirm may publish a command twice; the worker answers
    the repeat from its memory of finished ids, without a second call.
    """
    for _ in range(120):
        published_ms = int(time.time() * 1000)
        try:
            await producer.publish(body, headers={PUBLISHED_MS_HEADER: published_ms})
            return published_ms
        except Exception:  # noqa: BLE001 - any broker trouble: wait and try again
            await asyncio.sleep(0.5)  # deliberate timing: a careful producer's retry pause
    raise RuntimeError("the broker did not come back within a minute")


@dataclass(slots=True)
class Report:
    """What the checker found for one scenario."""

    scenario: str
    commands: int
    by_status: dict[str, int]
    dead: int
    duplicates: int
    explained_duplicates: int
    late: int
    after_stop: int
    lost: int
    repeated_results: int

    def row(self) -> str:
        statuses = " ".join(f"{k}={v}" for k, v in sorted(self.by_status.items()))
        return (f"{self.scenario:<18} {self.commands:>6}  {statuses:<58} dead={self.dead:<3} "
                f"dup={self.duplicates}({self.explained_duplicates} explained) "
                f"late={self.late} after-stop={self.after_stop} lost={self.lost}")


def check(scenario: str, load: Load, results: ResultLog, sim: Simulator,
          dead_ids: set[str], killed: bool) -> Report:
    """Check every promise of the suite against results and the simulator's log."""
    by_id = {s.ident: s for s in load.sent}
    finals: dict[str, Result] = {i: results.by_id[i] for i in by_id if i in results.by_id}
    by_status: dict[str, int] = {}
    for result in finals.values():
        by_status[result.status] = by_status.get(result.status, 0) + 1
    lost = sum(1 for i in by_id if i not in finals and i not in dead_ids)

    calls: dict[tuple[str, float], list[int]] = {}
    stop_arrivals: dict[str, int] = {}
    for request in sim.requests:
        body = request.body
        if not isinstance(body, dict) or request.side != "server":
            continue
        uid = str(body.get("uid", ""))
        if body.get("action") == "Stop":
            toy = str(body.get("toy", ""))
            stop_arrivals[toy] = min(stop_arrivals.get(toy, request.received_ms),
                                     request.received_ms)
        elif "timeSec" in body:
            calls.setdefault((uid, float(body["timeSec"])), []).append(request.received_ms)

    duplicates = explained = late = after_stop = 0
    stops = [s for s in load.sent if s.stop]
    for sent in load.sent:
        if sent.stop:
            continue
        arrivals = calls.get((sent.uid, sent.key), [])
        if len(arrivals) > 1:
            duplicates += 1
            final = finals.get(sent.ident)
            if final is not None and (final.attempts > 1 or final.redelivered or killed):
                explained += 1
        overdue = [at - sent.deadline_ms for at in arrivals
                   if at > sent.deadline_ms + TRANSIT_SLACK_MS]
        if overdue:
            print(f"late: {sent.ident} arrived {overdue} ms after its deadline; "
                  f"result {finals.get(sent.ident)}")
        late += len(overdue)
        after_stop += _after_stop(sent, arrivals, stops, stop_arrivals)
    return Report(
        scenario=scenario, commands=len(load.sent), by_status=by_status, dead=len(dead_ids),
        duplicates=duplicates, explained_duplicates=explained, late=late,
        after_stop=after_stop, lost=lost,
        repeated_results=0,
    )


def _after_stop(sent: Sent, arrivals: list[int], stops: list[Sent],
                stop_arrivals: dict[str, int]) -> int:
    """Count arrivals of a command after a Stop for its uid published no earlier than it."""
    count = 0
    for stop in stops:
        if stop.uid != sent.uid or stop.published_ms < sent.published_ms:
            continue
        landed = stop_arrivals.get(f"stop{stop.ident.rsplit('-', 1)[1]}")
        if landed is not None:
            # The Stop waits for calls in flight to answer, so they arrive first.
            count += sum(1 for at in arrivals if at > landed)
    return count


async def wait_for_all(results: ResultLog, load: Load, timeout: float) -> None:
    """Wait until every command of the load has a result (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(s.ident in results.by_id for s in load.sent):
            return
        await asyncio.sleep(0.2)  # this condition's poll; missing results are counted as lost
