"""The scheduling shell: deliveries in, the scheduler and batcher deciding, calls out, results back.

One command message becomes one *share* per user (a :class:`~worker.core.scheduler.Job`).
The scheduler says which shares go when; server shares that are identical
(same Lovense fields, no toy) are merged by the batcher into multi-user calls;
each call is carried by :class:`~worker.services.dispatch.Dispatcher`. When every share
of a message has ended, its one result is folded (:func:`worker.core.results.fold`)
and handed back to the broker, which publishes it and acks.

Stops take the same path with a different class: never rate-limited, merged
or expired, they cancel what is pending and wait for calls in flight.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import msgspec
import structlog

from worker.config import Settings
from worker.contract.errors import InvalidCommand
from worker.contract.messages import Command, Forget, GetQrCode, GetUser, LanTarget
from worker.core import bodies, intake, rules
from worker.core.batching import Batcher
from worker.core.jobs import (
    delivery_count,
    epoch_ms,
    job_class,
    published_ms,
    toy_list,
    toys_of,
)
from worker.core.outcomes import Outcome, Plan
from worker.core.ratelimit import Limit, TokenBucket
from worker.core.results import Delivery, Handled, ShareEnd, fold, make_result
from worker.core.rules import is_stop
from worker.core.scheduler import Finished, Job, Limits, Scheduler
from worker.metrics import Metrics
from worker.services.admission import Room
from worker.services.dispatch import Dispatcher
from worker.services.recent import Prior, Recent
from worker.services.users import Users
from worker.tracing import OFF, Tracing

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = structlog.get_logger("worker.services.runtime")

#: A Stop goes out on every route its uid used within this window.
RECENT_ROUTE_MS: Final = 60_000.0
_UNSENT_WORDS: Final = {
    "expired": "not sent by its deadline",
    "dropped": "dropped: LOVENSE_KEY_QUEUE newer commands of its kind (stopPrevious 0, or "
               "PatternV2 and queries) wait for its uid and toys",
}


@dataclass(eq=False, slots=True)
class _Message:
    ident: str
    #: The id results carry: the producer's, even when too long to be the worker's own.
    result_id: str
    notes: tuple[str, ...]
    cmd: Command
    delivery: Delivery
    received: datetime
    published_ms: float
    accepted_ms: float
    future: asyncio.Future[Handled]
    remaining: int
    ends: list[ShareEnd] = field(default_factory=list)
    calls: int = 0
    signature: bytes | None = None
    lan_slots: asyncio.Semaphore | None = None
    #: Its ``lovense.schedule`` span, when tracing is on.
    span: Span | None = None


@dataclass(frozen=True, slots=True)
class Share:
    """One user's share of a command message, on its planned route."""

    message: _Message
    uid: str
    plan: Plan


@dataclass(frozen=True, slots=True)
class StopShare:
    """One user's share of a Stop: every route it goes out on."""

    message: _Message
    uid: str
    plans: list[Plan]


#: What the scheduler's jobs carry for the runtime (a follow-up Stop carries none: it
#: names the job it follows).
Work = Share | StopShare
WorkJob = Job[Work]


def _share(job: WorkJob) -> Share:
    assert isinstance(job.payload, Share), job.payload
    return job.payload


def _clamped(stamp: float | None, now_ms: float) -> float:
    """Return a message's publish time: its stamp, but never later than it arrived.

    A stamp from the future would let a command slip past every Stop published
    before that moment. Whole milliseconds, as stamps are: a tie goes to the Stop.
    """
    arrived = float(math.floor(now_ms))
    return arrived if stamp is None else min(stamp, arrived)

#: Appends a Stop that came in on lovense.commands to the Stop log (the publisher's).
AnnounceStop = Callable[[Delivery], Coroutine[object, object, None]]


class Runtime:
    """Carry deliveries through the scheduler to Lovense and back to one result each."""

    def __init__(
        self,
        settings: Settings,
        dispatcher: Dispatcher,
        metrics: Metrics,
        *,
        announce_stop: AnnounceStop | None = None,
        users: Users | None = None,
        tracing: Tracing = OFF,
        clock_ms: Callable[[], float] = epoch_ms,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._tracing = tracing
        self._clock_ms = clock_ms
        self._now = now
        limits = Limits(
            server=Limit(settings.server_rate, settings.server_burst),
            lan=Limit(settings.lan_rate, settings.lan_burst),
            key_queue=settings.key_queue,
            watermark_bytes=settings.watermark_bytes,
            route_memory_ms=RECENT_ROUTE_MS,
        )
        self._caps = settings.caps
        self.scheduler: Scheduler[Work] = Scheduler(limits, clock_ms)
        self._batcher: Batcher[WorkJob] = Batcher(
            settings.batch_window_ms, settings.max_uids_per_call, clock_ms
        )
        self._server_max_rps = settings.server_max_rps
        self._server_cap = TokenBucket(self._server_cap_share(1), clock_ms())
        self._cap_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._messages: set[_Message] = set()
        self._loop: asyncio.Task[None] | None = None
        self._recent = Recent(settings.recent_ids, settings.recent_bytes)
        metrics.recent_ids.set_function(self._recent.__len__)
        metrics.recent_bytes.set_function(lambda: self._recent.size_bytes)
        metrics.stop_marks.set_function(self.scheduler.watermarks.__len__)
        self._stops: deque[WorkJob] = deque()
        self._wide_stops: deque[WorkJob] = deque()
        self._stop_runners = 0
        self._wide_room = Room(settings.wide_stop_users)
        self._announce_stop = announce_stop
        self._users = users if users is not None else Users(settings, dispatcher, now=now)

    # ------------------------------------------------------------------ lifecycle

    def _server_cap_share(self, members: int) -> Limit:
        rate = self._server_max_rps / max(1, members)
        return Limit(rate, max(1.0, rate))

    def share_server_cap(self, members: int) -> None:
        """Take this process's share of the account-wide server-route cap among live members."""
        self._server_cap = TokenBucket(self._server_cap_share(members), self._clock_ms())

    def start(self) -> None:
        """Start the scheduling loop."""
        self._loop = asyncio.get_running_loop().create_task(self._run(), name="scheduler")

    @property
    def idle(self) -> bool:
        """Return whether nothing is in progress: no message unanswered, no call, nothing queued.

        For tests and shutdown checks: ``await until(lambda: runtime.idle)``.
        """
        return (not self._messages and not self._tasks and self.scheduler.pending == 0
                and len(self._batcher) == 0 and not self._stops and not self._wide_stops)

    async def close(self) -> None:
        """Stop the loop; messages not finished stay unacked and return to RabbitMQ."""
        if self._loop is not None:
            self._loop.cancel()
        for task in list(self._tasks):
            task.cancel()
        for message in list(self._messages):
            message.future.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ input

    async def handle(self, delivery: Delivery) -> Handled:
        """Take one delivery and return its result once every share has ended."""
        received = self._now()
        try:
            admitted = intake.admit(delivery.body, self._caps)
        except InvalidCommand as exc:
            return self._invalid(delivery, str(exc), received)
        cmd = admitted.cmd
        stop = is_stop(cmd)
        ident = cmd.id or delivery.message_id or (
            intake.stop_ident(delivery.body) if stop else uuid.uuid4().hex)
        digest = intake.digest(cmd)
        # A Stop is never answered from memory: it is always sent (it is idempotent).
        prior = None if stop else self._recent.get(ident)
        if prior is not None:
            return await self._again(prior, digest, delivery, cmd, ident, received)
        deliveries = delivery_count(delivery.headers)
        result_id = admitted.long_id or ident
        if deliveries >= self._settings.max_deliveries:
            return self._give_up(delivery, cmd, result_id, deliveries, received)
        now_ms = self._clock_ms()
        message = _Message(
            ident=ident, result_id=result_id, notes=admitted.notes, cmd=cmd,
            delivery=delivery, received=received,
            published_ms=_clamped(published_ms(delivery.headers), now_ms),
            accepted_ms=now_ms,
            future=asyncio.get_running_loop().create_future(), remaining=len(cmd.targets),
        )
        structlog.contextvars.bind_contextvars(
            message_id=message.ident,
            uid=cmd.uid if cmd.uid is not None else f"{len(cmd.targets)} users",
        )
        if isinstance(cmd, Forget | GetUser):
            return await self._about_user(message)
        if self._tracing.enabled:
            message.span = self._tracing.schedule(cmd.kind, len(cmd.targets))
            self._tracing.uid(message.span, cmd.uid, len(cmd.targets))
        del cmd, admitted  # from here on message.cmd, which a waiting wide Stop lightens
        self._messages.add(message)
        if not stop:
            self._recent.running(ident, message.future, digest)
        room = 0
        try:
            if stop:
                room = await self._start_stop(message)
                if delivery.lane == "commands" and self._announce_stop is not None:
                    self._spawn(self._announce_stop(delivery), [])
            else:
                self._submit(message)
            self._wake.set()
            handled = await message.future
        except BaseException:
            if not stop:
                self._recent.finished(ident, None)
            raise
        finally:
            self._messages.discard(message)
            if room:
                self._wide_room.leave(room)
        self._recent.finished(ident, handled, digest, answer=not stop)
        return handled

    async def _start_stop(self, message: _Message) -> int:
        """Apply a Stop's watermarks now and start its calls; return the room a wide one took.

        A Stop for several users marks every one of them at once (cancelling what waits,
        following up calls in flight, as a Stop from the log does), then waits for room
        among the users of wide Stops in progress before its calls start.
        """
        cmd, seen = message.cmd, self._stop_key(message.ident, message.delivery)
        room = 0
        if len(cmd.targets) > 1:
            for finished in self.scheduler.remote_stop(
                    seen, cmd.targets, toys_of(cmd), message.published_ms, message.ident):
                self._finish_unsent(finished)
            self._wake.set()
            # While it waits, a wide Stop holds its body, not thousands of decoded user ids:
            # a burst of them would otherwise hold (and fragment) tens of megabytes.
            users = len(cmd.targets)
            message.cmd = msgspec.structs.replace(cmd, uids=[])
            del cmd
            room = await self._wide_room.enter(users)
            message.cmd = intake.admit(message.delivery.body, self._caps).cmd
        else:
            self.scheduler.note_stop(seen)
        try:
            self._submit_stop(message)
        except BaseException:
            if room:
                self._wide_room.leave(room)
            raise
        return room

    async def _again(self, prior: Prior, digest: bytes, delivery: Delivery, cmd: Command,
                     ident: str, received: datetime) -> Handled:
        """Answer a repeat of a known id: its first result, or invalid for another command."""
        outcome = prior.outcome
        if prior.digest != digest or outcome is None:
            reason = "id: already used by a different command"
            return self._refuse(delivery, cmd.kind, cmd.targets, ident, reason, received)
        # Carried out already (or now): answer again, never call twice.
        earlier = outcome if isinstance(outcome, Handled) else await asyncio.shield(outcome)
        self._metrics.duplicates.inc()
        again = msgspec.structs.replace(
            earlier.result, redelivered=earlier.result.redelivered or delivery.redelivered)
        return Handled(again, dead_letter=earlier.dead_letter)

    @staticmethod
    def _stop_key(ident: str, delivery: Delivery) -> str:
        """Return what names one Stop message on every replica (see Scheduler.note_stop)."""
        return f"{ident}@{published_ms(delivery.headers)}#{intake.stop_ident(delivery.body)}"

    def _give_up(self, delivery: Delivery, cmd: Command, ident: str, deliveries: int,
                 received: datetime) -> Handled:
        """End a message that keeps coming back (poison): failed result, then lovense.dead."""
        reason = (f"gave up after {deliveries} deliveries (LOVENSE_MAX_DELIVERIES="
                  f"{self._settings.max_deliveries}): the worker never finished handling it")
        result = make_result(
            ident, cmd.kind, cmd.targets, Outcome(status="failed", message=reason),
            superseded_by=None, redelivered=delivery.redelivered, received=received,
            completed=self._now(),
        )
        self._metrics.child(self._metrics.messages, cmd.kind, "failed").inc()
        log.error("command_poisoned", message_id=ident, deliveries=deliveries)
        return Handled(result, dead_letter=reason)

    def remote_stop(self, delivery: Delivery) -> bool:
        """Apply a Stop from the Stop log (sent by whichever replica consumed it).

        Return False when the entry is not a Stop the worker can apply (the caller
        counts it and moves on).
        """
        try:
            cmd = intake.admit(delivery.body, self._caps).cmd
        except InvalidCommand:
            return False
        if not is_stop(cmd):
            return False
        ident = cmd.id or delivery.message_id or intake.stop_ident(delivery.body)
        at = _clamped(published_ms(delivery.headers), self._clock_ms())
        seen = self._stop_key(ident, delivery)
        for finished in self.scheduler.remote_stop(seen, cmd.targets, toys_of(cmd), at, ident):
            self._finish_unsent(finished)
        self._wake.set()
        return True

    def _plans(self, cmd: Command) -> Callable[[str], Plan | Outcome]:
        cache: dict[LanTarget | None, Plan | Outcome] = {}

        def plan(uid: str) -> Plan | Outcome:
            endpoint = self._dispatcher.endpoint_for(cmd, uid)
            if endpoint not in cache:
                cache[endpoint] = self._dispatcher.plan(cmd, endpoint)
            return cache[endpoint]

        return plan

    def _submit(self, message: _Message) -> None:
        cmd = message.cmd
        deadline = message.published_ms + (cmd.ttlMs or self._settings.default_ttl_ms)
        cls, toys, multi = job_class(cmd), toys_of(cmd), len(cmd.targets) > 1
        if multi:
            message.lan_slots = asyncio.Semaphore(self._settings.lan_fanout)
        if cmd.toy is None and not isinstance(cmd, GetQrCode):
            message.signature = msgspec.json.encode(
                bodies.command_fields(cmd, self._settings.max_time_sec)
            )
        plan_for = self._plans(cmd)
        for uid in cmd.targets:
            plan = plan_for(uid)
            problem = self._dispatcher.toy_problem(cmd, uid)
            if problem is not None:
                plan = Outcome(status="invalid", message=problem)
            if isinstance(plan, Outcome):
                self._end(message, ShareEnd(uid, plan))
                continue
            job: WorkJob = Job(
                ident=message.ident, uid=uid, toys=toys, cls="ordered" if multi else cls,
                route=plan.route, published_ms=message.published_ms, deadline_ms=deadline,
                payload=Share(message, uid, plan), multi=multi)
            for finished in self.scheduler.submit(job):
                self._finish_unsent(finished)

    def _submit_stop(self, message: _Message) -> None:
        cmd = message.cmd
        plan_for = self._plans(cmd)
        toys, multi = toys_of(cmd), len(cmd.targets) > 1
        # Most users share their plans: one list each, not one a user.
        shared: dict[tuple[Plan, ...], list[Plan]] = {}
        for uid in cmd.targets:
            plan = plan_for(uid)
            recent = self.scheduler.recent_routes(uid, RECENT_ROUTE_MS)
            # On every route this uid used recently (both, if both), else on its plan's route.
            candidates = [Plan("server")] if plan == Plan("server") else [Plan("server"), plan]
            plans = [p for p in candidates if isinstance(p, Plan)
                     and p.route in recent and (p.route == "server" or p.address is not None)]
            if not plans and isinstance(plan, Plan):
                plans = [plan]
            if not plans:
                assert isinstance(plan, Outcome)
                self._end(message, ShareEnd(uid, plan))
                continue
            plans = shared.setdefault(tuple(plans), plans)
            job: WorkJob = Job(ident=message.ident, uid=uid, toys=toys, cls="stop",
                               route=plans[0].route, published_ms=message.published_ms,
                               payload=StopShare(message, uid, plans), multi=multi)
            for finished in self.scheduler.submit(job):
                self._finish_unsent(finished)

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            tick = self.scheduler.poll()
            for finished in tick.finished:
                self._finish_unsent(finished)
            for job in tick.send:
                self._launch(job)
            groups, batch_wake = self._batcher.due()
            for group in groups:
                self._spawn(self._send_server(group), group)
            self._metrics.pending.set(self.scheduler.pending + len(self._batcher))
            wakes = [w for w in (tick.wake_ms, batch_wake) if w is not None]
            timer = None
            if wakes:
                # A timer sets the event: no task per wait (wait_for would make one).
                delay = max(0.0, (min(wakes) - self._clock_ms()) / 1000)
                timer = asyncio.get_running_loop().call_later(delay, self._wake.set)
            await self._wake.wait()
            if timer is not None:
                timer.cancel()

    def _spawn(self, work: Coroutine[object, object, None], jobs: list[WorkJob]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            if finished.cancelled() or finished.exception() is None:
                return
            exc = finished.exception()
            log.error("call_crashed", error=repr(exc), exc_info=exc)
            for job in jobs:
                if job.state != "done":
                    failure = Outcome(status="failed", message=f"internal error: {exc!r}")
                    self._settle(job, failure)

        task.add_done_callback(done)

    def _launch(self, job: WorkJob) -> None:
        if job.cls == "stop":
            # Shares of multi-user Stops queue behind single-user ones: a Stop for 10,000
            # users must not make a Stop for one wait.
            (self._wide_stops if job.multi else self._stops).append(job)
            while self._stop_runners < self._settings.http_connections and (
                    self._stops or self._wide_stops):
                self._stop_runners += 1
                self._spawn(self._run_stops(), [])
            return
        share = _share(job)
        message, plan = share.message, share.plan
        waited_ms = max(0.0, self._clock_ms() - message.accepted_ms)
        self._metrics.child(self._metrics.rate_limit_wait, plan.route).observe(waited_ms / 1000)
        if message.span is not None:
            message.span.set_attribute("lovense.rate_limit_wait_ms", round(waited_ms, 3))
        if plan.route == "lan":
            self._spawn(self._send_lan(job), [job])
        elif message.signature is None:
            self._spawn(self._send_server([job]), [job])
        elif (group := self._batcher.add(message.signature, job)) is not None:
            self._spawn(self._send_server(group), group)

    # ------------------------------------------------------------------ calls

    def _still_wanted(self, jobs: list[WorkJob]) -> list[WorkJob]:
        """Drop shares that expired or were overtaken by a Stop while they waited to go out."""
        now, live = self._clock_ms(), []
        for job in jobs:
            mark = self.scheduler.watermark(job.uid, job.toys)
            if job.deadline_ms <= now:
                self._settle(job, Outcome(status="expired", message=_UNSENT_WORDS["expired"]))
            elif mark is not None and job.published_ms <= mark[0]:
                self._settle(job, Outcome(status="superseded", message=f"superseded by {mark[1]}"),
                             superseded_by=mark[1])
            else:
                live.append(job)
        return live

    async def _take_server_slot(self) -> None:
        if self._server_cap.take(self._clock_ms()):
            return
        # At the cap, callers queue on a lock: one sleeper at a time, first come first
        # served, instead of every waiter waking for the same token.
        async with self._cap_lock:
            while not self._server_cap.take(self._clock_ms()):
                await asyncio.sleep(self._server_cap.wait_ms(self._clock_ms()) / 1000)

    async def _send_server(self, jobs: list[WorkJob]) -> None:
        await self._take_server_slot()
        live = self._still_wanted(jobs)
        if not live:
            return
        message = _share(live[0]).message
        deadline = min(job.deadline_ms for job in live)
        carried = list(dict.fromkeys(_share(job).message for job in live))
        if message.span is not None:
            for each in carried:
                if each.span is not None:
                    each.span.set_attribute("lovense.batched_uids", len(live))
                    each.span.set_attribute("lovense.batched_commands", len(carried))
        with self._tracing.calls_under(message.span, [each.span for each in carried]):
            outcome = await self._dispatcher.server(
                message.cmd, [job.uid for job in live], deadline)
        self._metrics.batch_uids.observe(len(live))
        for each in carried:
            each.calls += outcome.attempts
        for job in live:
            plan = _share(job).plan
            if plan.fallback:
                self._metrics.child(self._metrics.fallbacks, message.cmd.kind).inc()
            self._settle(job, replace(outcome, fallback=True) if plan.fallback else outcome)

    async def _send_lan(self, job: WorkJob) -> None:
        share = _share(job)
        message, plan = share.message, share.plan
        with self._tracing.calls_under(message.span):
            if message.lan_slots is not None:
                async with message.lan_slots:
                    await self._send_lan_now(job, message, plan)
            else:
                await self._send_lan_now(job, message, plan)

    async def _send_lan_now(self, job: WorkJob, message: _Message, plan: Plan) -> None:
        if not self._still_wanted([job]):
            return
        assert plan.address is not None
        outcome = await self._dispatcher.lan(
            message.cmd, plan.address, job.deadline_ms,
            fallback_possible=self._may_fall_back(message, job), uid=job.uid,
        )
        message.calls += outcome.attempts
        if outcome.not_delivered and self._may_fall_back(message, job):
            # The app provably never got it: the server carries it, within the deadline.
            await self._take_server_slot()
            if self._still_wanted([job]):
                outcome = replace(
                    await self._dispatcher.server(message.cmd, [job.uid], job.deadline_ms),
                    fallback=True)
                message.calls += outcome.attempts
                self._metrics.child(self._metrics.fallbacks, message.cmd.kind).inc()
            else:
                return
        self._settle(job, outcome)

    def _may_fall_back(self, message: _Message, job: WorkJob) -> bool:
        cmd = message.cmd
        return (
            cmd.mode == "auto" and bool(self._settings.developer_token)
            and not rules.needs_lan(cmd) and job.deadline_ms > self._clock_ms()
        )

    async def _run_stops(self) -> None:
        """Send Stops one after another while any wait: a bounded pool, not a task a user."""
        try:
            while self._stops or self._wide_stops:
                job = (self._stops or self._wide_stops).popleft()
                try:
                    await self._send_stop(job)
                except Exception as exc:  # noqa: BLE001 - end this share, keep the pool going
                    log.error("call_crashed", error=repr(exc), exc_info=exc)
                    if job.state != "done":
                        self._settle(job, Outcome(status="failed",
                                                  message=f"internal error: {exc!r}"))
        finally:
            self._stop_runners -= 1

    async def _send_stop(self, job: WorkJob) -> None:
        give_up_at = time.monotonic() + self._settings.stop_retry_s
        if job.follows is not None:
            # A Stop learned from the log, after this replica's own call settled: on that
            # call's route; nothing of ours waits for its answer.
            followed = _share(job.follows)
            with self._tracing.calls_under(followed.message.span):
                await self._dispatcher.stop(job.uid, toy_list(job), followed.plan, give_up_at)
            self.scheduler.settled(job)
            self._wake.set()
            return
        assert isinstance(job.payload, StopShare), job.payload
        message, uid, plans = job.payload.message, job.payload.uid, job.payload.plans
        with self._tracing.calls_under(message.span):
            outcomes = await asyncio.gather(
                *(self._dispatcher.stop(uid, toy_list(job), p, give_up_at) for p in plans)
            )
        self._metrics.stop_seconds.observe(
            max(0.0, self._clock_ms() - message.published_ms) / 1000
        )
        message.calls += sum(o.attempts for o in outcomes)
        landed = [o for o in outcomes if o.status == "ok"]
        self._settle(job, landed[0] if landed else outcomes[0])

    # ------------------------------------------------------------------ endings

    def _settle(self, job: WorkJob, outcome: Outcome, superseded_by: str | None = None) -> None:
        self.scheduler.settled(job)
        if job.payload is not None:  # a follow-up Stop answers no message of its own
            self._end(job.payload.message, ShareEnd(job.payload.uid, outcome, superseded_by))
        self._wake.set()

    def _finish_unsent(self, finished: Finished[Work]) -> None:
        job = finished.job
        if job.payload is None:
            return
        message, uid = job.payload.message, job.payload.uid
        if finished.status == "superseded":
            self._metrics.child(self._metrics.coalesced, message.cmd.kind).inc()
            words = f"superseded by {finished.by}"
        else:
            words = _UNSENT_WORDS[finished.status]
        self._end(message, ShareEnd(uid, Outcome(status=finished.status, message=words),
                                    finished.by))

    def _end(self, message: _Message, end: ShareEnd) -> None:
        message.ends.append(end)
        message.remaining -= 1
        if message.remaining == 0 and not message.future.done():
            self._complete(message)

    def _complete(self, message: _Message) -> None:
        outcome, by = fold(message.ends, message.calls)
        if message.notes:
            outcome = replace(outcome, message=" ".join((outcome.message, *(
                f"({note})" for note in message.notes))))
        completed = self._now()
        result = make_result(
            message.result_id, message.cmd.kind, message.cmd.targets, outcome, superseded_by=by,
            redelivered=message.delivery.redelivered, received=message.received,
            completed=completed,
        )
        self._metrics.child(self._metrics.messages, result.command, result.status).inc()
        self._metrics.child(self._metrics.end_to_end, result.command).observe(
            max(0.0, self._clock_ms() - message.published_ms) / 1000,
            self._tracing.exemplar(message.span) if message.span is not None else None,
        )
        if message.span is not None:
            self._tracing.scheduled(message.span, result.status, by, result.code, message.calls)
        log.info(
            "command_completed", message_id=message.ident, command=result.command,
            status=result.status, via=result.via, code=result.code,
            ms=round((completed - message.received).total_seconds() * 1000, 1),
            **({"reason": result.message} if result.status != "ok" else {}),
        )
        dead = outcome.message if outcome.status == "invalid" else None
        message.future.set_result(Handled(result, dead_letter=dead))

    async def _about_user(self, message: _Message) -> Handled:
        """Answer a worker command (Forget, GetUser): no scheduling, no call to Lovense."""
        uid = message.cmd.targets[0]
        if isinstance(message.cmd, Forget):
            outcome = await self._users.forget(uid)
        else:
            outcome = self._users.describe(uid)
        message.ends.append(ShareEnd(uid, outcome))
        self._complete(message)
        return message.future.result()

    def _invalid(self, delivery: Delivery, reason: str, received: datetime) -> Handled:
        command, uids, peeked = intake.peek(delivery.body)
        ident = peeked or delivery.message_id or uuid.uuid4().hex
        return self._refuse(delivery, command, uids, ident, reason, received)

    def _refuse(self, delivery: Delivery, command: str, uids: list[str], ident: str,
                reason: str, received: datetime) -> Handled:
        """Answer ``invalid`` (and dead-letter): whatever the id, this cannot fail on it."""
        structlog.contextvars.bind_contextvars(message_id=ident[:256])
        result = make_result(
            ident, command, uids, Outcome(status="invalid", message=reason), superseded_by=None,
            redelivered=delivery.redelivered, received=received, completed=self._now(),
        )
        self._metrics.child(self._metrics.messages, command, "invalid").inc()
        log.warning("command_rejected", command=command, reason=reason)
        return Handled(result, dead_letter=reason)

    def crashed(self, delivery: Delivery, error: BaseException) -> Handled:
        """Answer a delivery whose handling raised: ``failed``, dead-lettered with the reason."""
        command, uids, peeked = intake.peek(delivery.body)
        reason = f"internal error while handling it: {type(error).__name__}"
        result = make_result(
            peeked or delivery.message_id or uuid.uuid4().hex, command, uids,
            Outcome(status="failed", message=reason), superseded_by=None,
            redelivered=delivery.redelivered, received=self._now(), completed=self._now(),
        )
        self._metrics.child(self._metrics.messages, command, "failed").inc()
        return Handled(result, dead_letter=reason)
