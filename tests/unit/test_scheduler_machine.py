"""The scheduler as a state machine: remote Stops, multi-user jobs and restarts on a fake clock.

A :class:`~hypothesis.stateful.RuleBasedStateMachine` drives one
:class:`~worker.core.scheduler.Scheduler` the way :mod:`worker.services.runtime` does:
commands of every class become shares (single-user or multi-user), local Stops are
noted and submitted, the Stop log applies Stops with ``remote_stop`` (again, too: the
log replays and echoes), ready work is polled and settled, time passes, and a replica
restarts (a fresh scheduler replays the whole Stop log, then RabbitMQ redelivers what
was unacked). A small model keeps what must be true: every answer the scheduler gives
is checked as it comes, the model's state after every step, and at the end the
scheduler is run to idle so that every job has ended exactly once and every Stop went out.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Final, Literal

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from worker.contract.messages import (
    Command,
    Function,
    GetToys,
    Pattern,
    PatternV2,
    Position,
    Preset,
    Stop,
)
from worker.core.jobs import job_class, toys_of
from worker.core.outcomes import Route
from worker.core.ratelimit import Limit
from worker.core.scheduler import Finished, Job, Key, Limits, Scheduler, Tick, Toys, overlaps

#: Small buckets and queues, a short watermark life: every limit is reached in a few steps.
LIMITS: Final = Limits(server=Limit(rate=2.0, burst=3.0), lan=Limit(rate=10.0, burst=4.0),
                       key_queue=2, watermark_ttl_ms=20_000.0)
#: What the runtime gives a command without ``ttlMs`` (LOVENSE_DEFAULT_TTL_MS, shortened).
DEFAULT_TTL_MS: Final = 6_000
#: Longer than a watermark's life plus the scheduler's housekeeping period: marks expire.
LONG_PAUSE_MS: Final = 31_000
#: How late a ready job may be sent after its key's waiting head ended unsent (expired,
#: Stop-cancelled or swept): none. The machine found it waited up to 1000 / rate ms for the
#: head's wake; the scheduler now looks at the key again at once (``Scheduler._rewake``).
REWAKE_SLACK_MS: Final = 0.0
#: Whether poll may ask to be polled again at the very same time: never. The machine found
#: a bucket refilled to 0.9999999999999999 tokens asking for a 5e-14 ms wait (``now + wait ==
#: now``); ``TokenBucket.wait_ms`` now counts such a bucket as holding its token.
WAKE_NOW_TOLERATED: Final = False
START_MS: Final = 1_000_000.0
USERS: Final = ("a", "b", "c")
#: Every toy selection a command can make here, as ``toys_of`` returns it.
SELECTIONS: Final[tuple[Toys, ...]] = (None, ("t1",), ("t2",), ("t1", "t2"))

JobKind = Literal["Function", "Function0", "Function1", "Pattern", "Preset", "Position",
                  "PatternV2", "GetToys"]
StopKind = Literal["Stop", "FunctionStop"]
Ending = Literal["sent", "superseded", "expired", "dropped", "abandoned"]
ToyArg = str | list[str] | None
Expected = dict[int, tuple[Ending, set[str | None]]]
JOB_KINDS: Final[tuple[JobKind, ...]] = ("Function", "Function0", "Function1", "Pattern",
                                         "Preset", "Position", "PatternV2", "GetToys")
STOP_KINDS: Final[tuple[StopKind, ...]] = ("Stop", "FunctionStop")

toy_args = st.sampled_from([None, "t1", "t2", ["t2", "t1"], ["t1", "t1"]])
users = st.sampled_from(USERS)
routes = st.sampled_from(["server", "lan"])
#: How long before it arrived a message was published (a tie with a Stop is likely; a
#: message that waited longer than a watermark lives may run past an expired one).
skews = st.one_of(st.just(0), st.integers(min_value=0, max_value=1_500), st.just(25_000))
ttls = st.one_of(st.none(), st.integers(min_value=1, max_value=4_000), st.just(60_000))


def command(kind: JobKind | StopKind, targets: Sequence[str], toy: ToyArg,
            ttl: int | None = None) -> Command:
    """Return a command of this kind for these users, as a producer would send it."""
    uid, uids = (targets[0], None) if len(targets) == 1 else (None, list(targets))
    if kind in ("Function", "Function0", "Function1", "FunctionStop"):
        stop_previous: Literal[0, 1] | None = (
            0 if kind == "Function0" else 1 if kind == "Function1" else None)
        action = "Stop" if kind == "FunctionStop" else "Vibrate:5"
        return Function(uid=uid, uids=uids, toy=toy, ttlMs=ttl, action=action,
                        stopPrevious=stop_previous)
    if kind == "Pattern":
        return Pattern(uid=uid, uids=uids, toy=toy, ttlMs=ttl, rule="V:1;F:v;S:1000#",
                       strength="5;10")
    if kind == "Preset":
        return Preset(uid=uid, uids=uids, toy=toy, ttlMs=ttl, name="pulse")
    if kind == "Position":
        return Position(uid=uid, uids=uids, toy=toy, ttlMs=ttl, value=50)
    if kind == "PatternV2":
        return PatternV2(uid=uid, uids=uids, toy=toy, ttlMs=ttl, type="Play")
    if kind == "GetToys":
        return GetToys(uid=uid, uids=uids, toy=toy, ttlMs=ttl)
    return Stop(uid=uid, uids=uids, toy=toy)


@dataclass(eq=False)
class StopMsg:
    """One Stop message: its users, toys and publish time, as the Stop log carries it."""

    n: int
    ident: str
    uids: tuple[str, ...]
    toys: Toys
    published: float

    @property
    def seen(self) -> str:
        """Return the key naming this message on every replica (``Scheduler.note_stop``)."""
        return f"{self.ident}@{self.published}"

    def covers(self, job: Job[None]) -> bool:
        """Return whether this Stop cancels ``job`` (its user, a shared toy, not newer)."""
        return (job.uid in self.uids and overlaps(self.toys, job.toys)
                and job.published_ms <= self.published)


@dataclass(eq=False)
class Rec:
    """One job as the model sees it: where it came from and how it ended."""

    job: Job[None]
    n: int
    gen: int
    #: For a Stop's share or a follow-up Stop: the Stop message it carries out.
    stop: StopMsg | None = None
    #: Stops covering the job that may have expired when it arrived (it may run anyway).
    may_pass: frozenset[int] = frozenset()
    end: Ending | None = None
    settled: bool = False
    #: Remote Stops seen while the job's call was in flight (owed after it settles).
    followups: list[StopMsg] = field(default_factory=list)

    @property
    def is_stop(self) -> bool:
        return self.job.cls == "stop"

    @property
    def inflight(self) -> bool:
        return self.end == "sent" and not self.settled


@dataclass(eq=False)
class Owed:
    """A follow-up Stop the scheduler owes: ``stop`` again, after ``after``'s call settled."""

    stop: StopMsg
    after: Rec


def label(job: Job[None]) -> str:
    return f"{job.ident}[{job.uid} {job.toys} {job.cls} {job.route} p={job.published_ms}]"


def tokens_after(times: list[float], now: float, limit: Limit) -> Fraction:
    """Return a full-at-start bucket's tokens at ``now`` after a token was taken at each time."""
    burst, rate = Fraction(limit.burst), Fraction(limit.rate) / 1000
    tokens, at = burst, Fraction(times[0]) if times else Fraction(now)
    for t in times:
        tokens = min(burst, tokens + (Fraction(t) - at) * rate) - 1
        at = Fraction(t)
    return min(burst, tokens + (Fraction(now) - at) * rate)


@settings(max_examples=100, stateful_step_count=50, deadline=None)
class SchedulerMachine(RuleBasedStateMachine):
    """Drive the scheduler like the runtime and the Stop log do; check it against a model."""

    def __init__(self) -> None:
        super().__init__()
        self.now = START_MS
        self.gen = 0
        self.sched: Scheduler[None] = Scheduler(LIMITS, self.clock)
        self.numbers = itertools.count(1)
        self.recs: list[Rec] = []
        self.by_job: dict[int, Rec] = {}
        self.log: list[StopMsg] = []
        self.delivered: set[int] = set()
        # Per scheduler (each restart starts these again):
        self.current: list[Rec] = []
        self.applied: list[StopMsg] = []
        self.seen: set[str] = set()
        self.owed: list[Owed] = []
        self.sends: dict[tuple[str, Route], list[float]] = {}
        self.last_sent: dict[Key, int] = {}
        #: When a waiting job of the key last ended unsent (see REWAKE_SLACK_MS).
        self.unsent_at: dict[Key, float] = {}
        self.failed = False

    def clock(self) -> float:
        return self.now

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.failed = True  # the model is off from here: teardown must not drain
            raise AssertionError(message)

    # ------------------------------------------------------------------ model views

    def waiting(self) -> list[Rec]:
        return [r for r in self.current if r.end is None and not r.is_stop]

    def inflight(self) -> list[Rec]:
        return [r for r in self.current if r.inflight]

    def live(self, stop: StopMsg) -> bool:
        """Return whether a Stop's watermark must still be in force (younger than its ttl)."""
        return stop.published >= self.now - LIMITS.watermark_ttl_ms

    def unsettled_stops(self, uid: str, toys: Toys) -> list[str]:
        """Return the Stops of ``uid`` reaching ``toys`` not yet settled (waiting or in flight)."""
        found = [r.job.ident for r in self.current if r.is_stop and not r.settled
                 and r.end != "abandoned" and r.job.uid == uid and overlaps(r.job.toys, toys)]
        return found + [f"{o.stop.ident}:after:{o.after.job.ident}" for o in self.owed
                        if o.after.job.uid == uid and overlaps(o.after.job.toys, toys)]

    def add(self, rec: Rec) -> Rec:
        self.recs.append(rec)
        self.current.append(rec)
        self.by_job[id(rec.job)] = rec
        return rec

    def end(self, rec: Rec, ending: Ending) -> None:
        self.check(rec.gen == self.gen, f"{label(rec.job)} ended by a scheduler it never met")
        self.check(rec.end is None, f"{label(rec.job)} ended twice: {rec.end}, then {ending}")
        rec.end = ending

    def take(self, finished: list[Finished[None]],
             expected: Expected) -> None:
        """Check jobs the scheduler finished unsent against the model's expectation, exactly."""
        got = {id(f.job): f for f in finished}
        self.check(len(got) == len(finished), f"a job finished twice in one answer: {finished}")
        unexpected = [label(f.job) + f" {f.status}" for k, f in got.items() if k not in expected]
        missing = [label(self.by_job[k].job) for k in expected if k not in got]
        self.check(not unexpected and not missing,
                   f"finished unsent: unexpected {unexpected}, missing {missing}")
        for key, fin in got.items():
            status, by = expected[key]
            self.check(fin.status == status and fin.by in by,
                       f"{label(fin.job)} finished {fin.status} by {fin.by}, not {status} by {by}")
            self.end(self.by_job[key], fin.status)
            self.unsent_at[fin.job.key] = self.now

    # ------------------------------------------------------------------ the runtime's calls

    def submit(self, job: Job[None]) -> None:
        """Submit a share (``Runtime._submit``) and check what it finishes at once."""
        covering = [s for s in self.applied if s.covers(job)]
        live = [s for s in covering if self.live(s)]
        expected = self.coalesced(job)
        rec = self.add(Rec(job, next(self.numbers), self.gen,
                           may_pass=frozenset(s.n for s in covering if not self.live(s))))
        finished = self.sched.submit(job)
        refused = [f for f in finished if f.job is job]
        if not refused:
            self.check(not live,
                       f"{label(job)} accepted though Stops {[s.ident for s in live]} cover it")
            self.check(job.deadline_ms > self.now, f"{label(job)} accepted past its deadline")
            self.take(finished, expected)
            return
        self.check(finished == refused, f"{label(job)} refused, yet finished others: {finished}")
        fin = refused[0]
        if fin.status == "superseded":
            self.check(fin.by in {s.ident for s in covering},
                       f"{label(job)} refused by {fin.by}, which is no Stop covering it")
        else:
            self.check(fin.status == "expired" and not live and job.deadline_ms <= self.now,
                       f"{label(job)} refused {fin.status} by {fin.by}")
        self.end(rec, fin.status)

    def coalesced(self, job: Job[None]) -> Expected:
        """Return what accepting ``job`` finishes: latest-wins, then the bounded queue."""
        if job.multi:
            return {}
        mine = [r for r in self.waiting() if r.job.uid == job.uid and not r.job.multi]
        expected: Expected = {}
        if job.cls == "replace":
            for r in mine:
                if r.job.cls in ("replace", "queue") and job.toys in (None, r.job.toys):
                    expected[id(r.job)] = ("superseded", {job.ident})
        if job.cls in ("queue", "ordered"):
            queued = [r for r in mine if r.job.key == job.key and r.job.cls == job.cls]
            if len(queued) >= LIMITS.key_queue:
                expected[id(queued[0].job)] = ("dropped", {job.ident})
        return expected

    def cancelled_by(self, stop: StopMsg, uids: Sequence[str]) -> Expected:
        return {id(r.job): ("superseded", {stop.ident}) for r in self.waiting()
                if r.job.uid in uids and stop.covers(r.job)}

    def arrive(self, stop: StopMsg, local: bool) -> None:
        """A new Stop goes into the log, and is delivered here or applied from the log."""
        self.log.append(stop)
        if local:
            self.delivered.add(stop.n)
            self.deliver_stop(stop)
        else:
            self.remote(stop)

    def remote(self, stop: StopMsg) -> None:
        """Apply a Stop from the log (``Runtime.remote_stop``), or a wide one of our own."""
        new = stop.seen not in self.seen
        expected = self.cancelled_by(stop, stop.uids) if new else {}
        if new:
            for r in self.inflight():
                if not r.is_stop and stop.covers(r.job):
                    r.followups.append(stop)
        finished = self.sched.remote_stop(stop.seen, list(stop.uids), stop.toys,
                                          stop.published, stop.ident)
        self.take(finished, expected)
        if new:
            self.seen.add(stop.seen)
            self.applied.append(stop)

    def deliver_stop(self, stop: StopMsg) -> None:
        """Take a Stop delivered to this replica (``Runtime._start_stop``)."""
        if len(stop.uids) > 1:
            self.remote(stop)
        else:
            new = self.sched.note_stop(stop.seen)
            self.check(new == (stop.seen not in self.seen), f"note_stop({stop.seen}) said {new}")
            self.seen.add(stop.seen)
        for uid in stop.uids:
            job: Job[None] = Job(ident=stop.ident, uid=uid, toys=stop.toys, cls="stop",
                                 route="server", published_ms=stop.published,
                                 multi=len(stop.uids) > 1)
            self.add(Rec(job, next(self.numbers), self.gen, stop=stop))
            expected = self.cancelled_by(stop, [uid])
            # This replica sends the Stop itself: no follow-up for it is owed any more.
            for r in self.inflight():
                if r.job.uid == uid:
                    r.followups = [f for f in r.followups
                                   if (f.ident, f.published) != (stop.ident, stop.published)]
            self.take(self.sched.submit(job), expected)
        if stop not in self.applied:
            self.applied.append(stop)

    def poll(self) -> Tick[None]:
        """Poll, check what expired and every job sent, and that nothing ready was held."""
        tick = self.sched.poll()
        expired: Expected = {id(r.job): ("expired", {None}) for r in self.waiting()
                             if r.job.deadline_ms <= self.now}
        self.take(tick.finished, expired)
        for job in tick.send:
            if job.cls == "stop":
                self.sent_stop(job)
            else:
                self.sent_job(job)
        self.check(tick.wake_ms is None or tick.wake_ms > self.now
                   or (WAKE_NOW_TOLERATED and tick.wake_ms == self.now),
                   f"poll at {self.now} asks to be polled again at {tick.wake_ms}")
        self.check_nothing_held()
        return tick

    def sent_stop(self, job: Job[None]) -> None:
        """Check a Stop handed out: known (or owed as a follow-up) and landing last."""
        if job.follows is None:
            rec = self.by_job.get(id(job))
            self.check(rec is not None and rec.gen == self.gen, f"unknown Stop {label(job)}")
            assert rec is not None
        else:
            owed = [o for o in self.owed if o.after.job is job.follows
                    and o.stop.published == job.published_ms
                    and job.ident == f"{o.stop.ident}:after:{job.follows.ident}"]
            self.check(bool(owed), f"follow-up Stop {label(job)} owed to no one")
            after = owed[0].after.job
            self.check((job.uid, job.toys, job.route) == (after.uid, after.toys, after.route),
                       f"follow-up {label(job)} is not on {label(after)}'s toys and route")
            self.owed.remove(owed[0])
            rec = self.add(Rec(job, next(self.numbers), self.gen, stop=owed[0].stop))
        busy = [label(r.job) for r in self.inflight()
                if not r.is_stop and r.job.uid == job.uid and overlaps(r.job.toys, job.toys)]
        self.check(not busy, f"Stop {label(job)} sent while {busy} in flight: it must land last")
        self.end(rec, "sent")

    def sent_job(self, job: Job[None]) -> None:
        """Check a job handed out against deadlines, Stops, its key's order and rate limits."""
        rec = self.by_job.get(id(job))
        self.check(rec is not None and rec.gen == self.gen, f"unknown job sent: {label(job)}")
        assert rec is not None
        self.check(self.now < job.deadline_ms, f"{label(job)} sent at {self.now}, past deadline")
        # Nothing published before a Stop runs after it, applied here or from the log.
        late = [s.ident for s in self.applied if s.covers(job) and s.n not in rec.may_pass]
        self.check(not late, f"{label(job)} sent after Stop {late} that covers it")
        stops = self.unsettled_stops(job.uid, job.toys)
        self.check(not stops, f"{label(job)} sent before Stops {stops} settled")
        busy = [label(r.job) for r in self.inflight() if not r.is_stop and r.job.key == job.key]
        self.check(not busy, f"{label(job)} sent while its key has {busy} in flight")
        self.check(rec.n > self.last_sent.get(job.key, 0), f"{label(job)} overtook its key")
        self.last_sent[job.key] = rec.n
        self.check_rate(job)
        self.end(rec, "sent")

    def check_rate(self, job: Job[None]) -> None:
        """Check that in any window of t ms, calls never exceed burst + rate × t."""
        limit = LIMITS.server if job.route == "server" else LIMITS.lan
        times = self.sends.setdefault((job.uid, job.route), [])
        times.append(self.now)
        for i, start in enumerate(times):
            allowed = limit.burst + limit.rate * (self.now - start) / 1000 + 1e-9
            self.check(len(times) - i <= allowed,
                       f"{label(job)}: {len(times) - i} calls for {job.uid}/{job.route} "
                       f"in {self.now - start} ms, more than {allowed:.3f}")

    def check_nothing_held(self) -> None:
        """After a poll, a Stop waits only for a call in flight and a ready job is sent."""
        for r in self.current:
            if r.is_stop and r.end is None:
                self.check(bool(self.blockers(r.job.uid, r.job.toys)),
                           f"Stop {label(r.job)} held though nothing it covers is in flight")
        for o in self.owed:
            self.check(bool(self.blockers(o.after.job.uid, o.after.job.toys)),
                       f"follow-up of {o.stop.ident} after {label(o.after.job)} held")
        heads: dict[Key, Rec] = {}
        for r in self.waiting():
            heads.setdefault(r.job.key, r)
        busy = {r.job.key for r in self.inflight() if not r.is_stop}
        for key, head in heads.items():
            if key in busy or self.unsettled_stops(*key):
                continue
            if self.now < self.unsent_at.get(key, -REWAKE_SLACK_MS) + REWAKE_SLACK_MS:
                continue  # see REWAKE_SLACK_MS
            limit = LIMITS.server if head.job.route == "server" else LIMITS.lan
            tokens = tokens_after(self.sends.get((head.job.uid, head.job.route), []),
                                  self.now, limit)
            self.check(tokens < Fraction(1) + Fraction(1, 10**6),
                       f"{label(head.job)} held with {float(tokens):.4f} tokens and its key idle")

    def blockers(self, uid: str, toys: Toys) -> list[Rec]:
        return [r for r in self.inflight()
                if not r.is_stop and r.job.uid == uid and overlaps(r.job.toys, toys)]

    def settle(self, rec: Rec) -> None:
        self.sched.settled(rec.job)
        rec.settled = True
        self.owed += [Owed(stop, rec) for stop in rec.followups]

    # ------------------------------------------------------------------ rules

    def share_job(self, cmd: Command, uid: str, route: Route, published: float) -> Job[None]:
        """Return one user's share of a command, as ``Runtime._submit`` makes it."""
        multi = len(cmd.targets) > 1
        return Job(ident=f"J{next(self.numbers)}", uid=uid, toys=toys_of(cmd),
                   cls="ordered" if multi else job_class(cmd), route=route,
                   published_ms=published,
                   deadline_ms=published + (cmd.ttlMs or DEFAULT_TTL_MS), multi=multi)

    @rule(jobs=st.lists(st.tuples(st.sampled_from(JOB_KINDS), users, toy_args, routes, skews,
                                  ttls), min_size=1, max_size=3))
    def single_user_jobs(
        self, jobs: list[tuple[JobKind, str, ToyArg, Route, int, int | None]]
    ) -> None:
        for kind, uid, toy, route, skew, ttl in jobs:
            cmd = command(kind, [uid], toy, ttl)
            self.submit(self.share_job(cmd, uid, route, self.now - skew))

    @rule(kind=st.sampled_from(JOB_KINDS),
          people=st.lists(users, min_size=2, max_size=3, unique=True), toy=toy_args,
          lan=st.sets(users), skew=skews, ttl=ttls)
    def multi_user_job(self, kind: JobKind, people: list[str], toy: ToyArg, lan: set[str],
                       skew: int, ttl: int | None) -> None:
        cmd = command(kind, people, toy, ttl)
        first = self.share_job(cmd, people[0], "server", self.now - skew)
        for uid in cmd.targets:  # every share of one message: one ident, one deadline
            self.submit(Job(ident=first.ident, uid=uid, toys=first.toys, cls=first.cls,
                            route="lan" if uid in lan else "server",
                            published_ms=first.published_ms, deadline_ms=first.deadline_ms,
                            multi=True))

    @rule(local=st.booleans(), kind=st.sampled_from(STOP_KINDS),
          people=st.lists(users, min_size=1, max_size=3, unique=True), toy=toy_args,
          skew=skews)
    def stop_arrives(self, local: bool, kind: StopKind, people: list[str], toy: ToyArg,
                     skew: int) -> None:
        """A Stop delivered here (sent here, announced on the log), or one the log applies."""
        cmd = command(kind, people, toy)
        n = next(self.numbers)
        self.arrive(StopMsg(n, f"S{n}", tuple(cmd.targets), toys_of(cmd), self.now - skew),
                    local)

    @precondition(lambda self: any(r.inflight and not r.is_stop for r in self.current))
    @rule(pick=st.integers(min_value=0, max_value=99), others=st.sets(users),
          every_toy=st.booleans(), local=st.booleans())
    def stop_during_a_call(self, pick: int, others: set[str], every_toy: bool,
                           local: bool) -> None:
        """A Stop for a user whose call is in flight: sent here after it, or a follow-up."""
        calls = [r.job for r in self.inflight() if not r.is_stop]
        call = calls[pick % len(calls)]
        n = next(self.numbers)
        stop = StopMsg(n, f"S{n}", tuple(sorted({call.uid, *others})),
                       None if every_toy else call.toys, self.now)
        self.arrive(stop, local)

    @precondition(lambda self: bool(self.log))
    @rule(pick=st.integers(min_value=0, max_value=99), deliver=st.booleans())
    def stop_log_again(self, pick: int, deliver: bool) -> None:
        """A Stop of the log again: delivered here after the log told of it, or its echo."""
        stop = self.log[pick % len(self.log)]
        if deliver and stop.n not in self.delivered:
            self.delivered.add(stop.n)
            self.deliver_stop(stop)
        else:
            self.remote(stop)

    @rule(ms=st.sampled_from([1, 7, 50, 125, 250, 333, 500, 1_000, 2_500, LONG_PAUSE_MS]))
    def time_passes(self, ms: int) -> None:
        self.now += ms

    @rule()
    def take_ready_work(self) -> None:
        self.poll()

    @precondition(lambda self: any(r.inflight for r in self.current))
    @rule(pick=st.integers(min_value=0, max_value=99))
    def call_settles(self, pick: int) -> None:
        calls = self.inflight()
        self.settle(calls[pick % len(calls)])

    @rule()
    def restart(self) -> None:
        """A fresh scheduler replays the Stop log, then gets back every unacked message."""
        unacked = [r for r in self.current if r.end is None or r.inflight]
        for r in unacked:
            if r.end is None:
                r.end = "abandoned"
            r.settled = True
        self.gen += 1
        self.sched = Scheduler(LIMITS, self.clock)
        self.current, self.applied, self.seen, self.owed = [], [], set(), []
        self.sends, self.last_sent, self.unsent_at = {}, {}, {}
        for stop in self.log:
            self.remote(stop)
        redelivered: set[int] = set()
        for r in unacked:
            if r.stop is not None:
                if r.job.follows is None and r.stop.n not in redelivered:
                    redelivered.add(r.stop.n)
                    self.deliver_stop(r.stop)
                continue
            job = r.job
            self.submit(Job(ident=job.ident, uid=job.uid, toys=job.toys, cls=job.cls,
                            route=job.route, published_ms=job.published_ms,
                            deadline_ms=job.deadline_ms, multi=job.multi))

    def drain(self) -> None:
        """Settle every call and poll when asked to, until nothing is left."""
        for _ in range(1_000):
            for r in self.inflight():
                self.settle(r)
            tick = self.poll()
            if tick.send:
                continue
            if self.sched.pending == 0:
                return
            self.check(tick.wake_ms is not None and tick.wake_ms < float("inf"),
                       f"{self.sched.pending} jobs wait with no call in flight and no wake time")
            assert tick.wake_ms is not None
            # A real clock moves on between polls (see WAKE_NOW_TOLERATED): so does this one.
            self.now = max(tick.wake_ms, math.nextafter(self.now, math.inf))
        self.check(False, "the scheduler did not run dry in 1000 polls")

    # ------------------------------------------------------------------ invariants

    @invariant()
    def pending_is_what_waits(self) -> None:
        expected = sum(1 for r in self.current if r.end is None) + len(self.owed)
        self.check(self.sched.pending == expected,
                   f"scheduler has {self.sched.pending} pending, the model {expected}")

    @invariant()
    def latest_wins_and_queues_are_bounded(self) -> None:
        single = [r for r in self.waiting() if not r.job.multi]
        for r in single:
            same = [q for q in single if q.job.key == r.job.key and q.job.cls == r.job.cls]
            self.check(len(same) <= LIMITS.key_queue or r.job.cls == "replace",
                       f"{len(same)} {r.job.cls} jobs wait on {r.job.key}")
            if r.job.cls == "replace":
                older = [label(q.job) for q in single if q.n < r.n and q.job.uid == r.job.uid
                         and q.job.cls in ("replace", "queue")
                         and r.job.toys in (None, q.job.toys)]
                self.check(not older, f"{older} still wait behind newer {label(r.job)}")

    @invariant()
    def watermarks_hold_every_live_stop(self) -> None:
        for uid in USERS:
            for toys in SELECTIONS:
                mark = self.sched.watermark(uid, toys)
                covering = [s for s in self.applied if uid in s.uids and overlaps(s.toys, toys)]
                live = [s.published for s in covering if self.live(s)]
                if live:
                    self.check(mark is not None and mark[0] >= max(live),
                               f"watermark of {uid} {toys} is {mark}, a live Stop at {live}")
                if mark is not None:
                    self.check(mark in {(s.published, s.ident) for s in covering},
                               f"watermark of {uid} {toys} is {mark}: no Stop applied here")

    def teardown(self) -> None:
        if self.failed:
            return
        self.drain()
        self.check(not self.owed, f"follow-up Stops never sent: {self.owed}")
        for r in self.recs:
            self.check(r.end is not None and (r.end != "sent" or r.settled),
                       f"{label(r.job)} never ended")
            if r.is_stop:
                self.check(r.end in ("sent", "abandoned"), f"Stop {label(r.job)} was {r.end}")


TestSchedulerMachine = SchedulerMachine.TestCase
