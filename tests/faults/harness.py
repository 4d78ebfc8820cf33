"""The fault suite's load, worker processes and checker.

A load is thousands of commands for hundreds of users, each command's Lovense
body unique (its own ``timeSec``), so every request the simulator records can be
traced back to the command that caused it. The checker reads every result and
the simulator's log and counts what the suite promises never happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import msgspec
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from tests.integration.support import ResultLog
from worker.adapters.amqp.nodes import NoNodeAnswered, connect_first
from worker.adapters.amqp.producer import Producer
from worker.contract import topology
from worker.contract.messages import Result, result_decoder
from worker.contract.topology import PUBLISHED_MS_HEADER
from worker.core.brokers import parse_brokers
from worker.simulator import Simulator

TERMINAL = {"ok", "failed", "invalid", "superseded", "expired", "dropped"}
#: Requests take a moment from leaving the worker to arriving at the simulator.
TRANSIT_SLACK_MS = 100
#: What each scenario found, printed as the fault table at the end of the run.
REPORTS: list[Report] = []


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
                       ttl_ms: int, rate_per_s: float, *,
                       until: asyncio.Event | None = None) -> Load:
    """Publish the load at a steady rate: mostly Functions, one Stop in 25.

    With ``until``, publish until it is set (``commands`` is then the most it publishes).
    """
    load, rng = Load(), random.Random(scenario)
    gap = 1.0 / rate_per_s
    started = time.monotonic()
    for n in range(commands):
        if until is not None and until.is_set():
            break
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
    #: The longest time (ms) no request of the scenario reached Lovense while its commands
    #: were being sent: how long consumption paused.
    pause_ms: int

    def row(self) -> str:
        statuses = " ".join(f"{k}={v}" for k, v in sorted(self.by_status.items()))
        return (f"{self.scenario:<24} {self.commands:>6}  {statuses:<58} dead={self.dead:<3} "
                f"dup={self.duplicates}({self.explained_duplicates} explained) "
                f"late={self.late} after-stop={self.after_stop} lost={self.lost} "
                f"pause={self.pause_ms / 1000:.1f}s")


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
    arrived: list[int] = []
    for request in sim.requests:
        body = request.body
        if not isinstance(body, dict) or request.side != "server":
            continue
        uid = str(body.get("uid", ""))
        if uid.startswith(f"{scenario}-u") or f",{scenario}-u" in uid:
            arrived.append(request.received_ms)
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
        repeated_results=0, pause_ms=longest_gap(arrived),
    )


def longest_gap(times_ms: list[int]) -> int:
    """Return the longest gap between consecutive times (0 for fewer than two)."""
    ordered = sorted(times_ms)
    return max((b - a for a, b in zip(ordered, ordered[1:], strict=False)), default=0)


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


class DurableResults(ResultLog):
    """Results through a durable queue, so a broker restart loses none; counts repeats."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self.all: dict[str, list[Result]] = {}

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        # Acked once recorded: with no_ack, results already sent to this consumer when the
        # broker stopped were lost with the connection, and counted against the worker.
        try:
            result = result_decoder.decode(message.body)
        except msgspec.ValidationError:
            result = None
        if result is not None:
            self.counts[result.id] = self.counts.get(result.id, 0) + 1
            self.all.setdefault(result.id, []).append(result)
            await super().on_message(message)
        with contextlib.suppress(Exception):  # a channel lost mid-ack: it comes again
            await message.ack()


async def follow_results(urls: str, log: DurableResults, queue_name: str,
                         ready: asyncio.Event) -> None:
    """Consume every result into ``log`` through a durable quorum queue, reconnecting to any
    node of ``urls`` (a ``LOVENSE_AMQP_URL`` list) whenever the connection is lost.

    Runs until cancelled; ``ready`` is set once the queue is first bound.
    """
    brokers, rng, last = parse_brokers(urls), random.Random(), None
    while True:
        try:
            connection, last = await connect_first(brokers, "fault-suite-results", rng,
                                                   last=last, timeout=3)
        except NoNodeAnswered:
            await asyncio.sleep(0.5)  # deliberate timing: a careful consumer's retry pause
            continue
        try:
            await _consume_until_lost(connection, log, queue_name, ready)
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError):
            await asyncio.sleep(0.5)  # deliberate timing: the node went away mid-setup
        finally:
            with contextlib.suppress(Exception):  # already closed by the broker
                await connection.close()


async def _consume_until_lost(connection: AbstractConnection, log: DurableResults,
                              queue_name: str, ready: asyncio.Event) -> None:
    lost = asyncio.Event()
    connection.close_callbacks.add(lambda *_: lost.set())
    channel = await connection.channel()
    channel.close_callbacks.add(lambda *_: lost.set())
    exchange = await channel.get_exchange(topology.RESULTS_EXCHANGE)
    queue = await channel.declare_queue(
        queue_name, durable=True, arguments={"x-queue-type": "quorum"})
    await queue.bind(exchange, routing_key="#")
    await queue.consume(log.on_message)
    ready.set()
    await lost.wait()


async def dead_ids(url: str) -> set[str]:
    """Return the ids in lovense.dead (taking them), each checked to say why it is there."""
    connection = await aio_pika.connect(url)
    found: set[str] = set()
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.DEAD_QUEUE)
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            assert topology.ERROR_HEADER in (message.headers or {})
            if message.message_id:
                found.add(message.message_id)
    return found


def assert_promises(report: Report, load: Load, results: DurableResults, *,
                    killed: bool) -> None:
    """Assert what the suite promises for every scenario, and record its row."""
    REPORTS.append(report)
    statuses = {results.by_id[s.ident].status for s in load.sent if s.ident in results.by_id}
    assert statuses <= TERMINAL
    assert report.lost == 0, report.row()
    assert report.duplicates == report.explained_duplicates, report.row()
    assert (report.late, report.after_stop) == (0, 0), report.row()
    # A repeat comes only from a redelivery (an ack lost with a killed worker or a closed
    # connection) or a producer's retry, and says the same as the first, but redelivered.
    # After a SIGKILL the new process has no memory of what was in flight: those may
    # run again and answer differently (counted above as explained duplicates). A Stop is
    # never answered from memory: a redelivered or re-published one is sent again, so only
    # its times and attempts may differ.
    for sent in load.sent if not killed else ():
        answers = results.all.get(sent.ident, [])
        for repeat in answers[1:]:
            first = answers[0]
            if sent.stop:
                repeat = msgspec.structs.replace(
                    repeat, receivedAt=first.receivedAt, completedAt=first.completedAt,
                    attempts=first.attempts)
            assert repeat == msgspec.structs.replace(first, redelivered=repeat.redelivered)
