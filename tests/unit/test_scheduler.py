"""The scheduler on a fake clock: coalescing, rate limits, Stops, deadlines, and its invariants."""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.ratelimit import Limit
from worker.core.scheduler import Finished, Job, Limits, Scheduler, Toys, overlaps

#: Jobs here carry any payload, or none: the scheduler never looks at it.
TJob = Job[object]
TFinished = Finished[object]


@dataclass
class Clock:
    """A fake epoch-milliseconds clock."""

    ms: float = 1_000_000.0

    def __call__(self) -> float:
        return self.ms


def job(ident: str, uid: str = "u", toys: Toys = None, cls: Any = "replace",
        route: Any = "server", published: float = 1_000_000.0,
        deadline: float = float("inf"), multi: bool = False) -> TJob:
    return TJob(ident=ident, uid=uid, toys=toys, cls=cls, route=route, published_ms=published,
               deadline_ms=deadline, multi=multi)


def ids(jobs: list[TJob]) -> list[str]:
    return [j.ident for j in jobs]


def fin(finished: list[TFinished]) -> list[tuple[str, str, str | None]]:
    return [(f.job.ident, f.status, f.by) for f in finished]


def make(**limits: Any) -> tuple[Scheduler[object], Clock]:
    clock = Clock()
    return Scheduler[object](Limits(**limits), clock), clock


def test_latest_wins_for_a_key() -> None:
    """A newer replace job supersedes the not-yet-sent one for the same key."""
    s, _ = make(server=Limit(rate=1, burst=1))
    s.submit(job("a"))
    assert ids(s.poll().send) == ["a"]
    assert fin(s.submit(job("b"))) == []
    assert fin(s.submit(job("c"))) == [("b", "superseded", "c")]
    assert s.poll().send == []  # a is still in flight
    assert s.pending == 1


def test_star_replace_sweeps_every_toy_of_the_uid() -> None:
    """A replace job for every toy supersedes pending jobs of each toy key of that uid."""
    s, _ = make()
    s.submit(job("busy", toys=("t1",)))
    s.submit(job("busy2", toys=("t2",)))
    s.poll()
    s.submit(job("t1", toys=("t1",)))
    s.submit(job("t2", toys=("t2",)))
    assert sorted(fin(s.submit(job("all")))) == [("t1", "superseded", "all"),
                                                 ("t2", "superseded", "all")]


def test_toy_replace_leaves_other_toys_alone() -> None:
    """A replace job for one toy does not touch another toy's pending job."""
    s, _ = make()
    s.submit(job("busy", toys=("t1",)))
    s.submit(job("busy2", toys=("t2",)))
    s.poll()
    s.submit(job("x", toys=("t2",)))
    assert fin(s.submit(job("y", toys=("t1",)))) == []


def test_stop_previous_zero_queues_in_order_and_overflow_drops_oldest() -> None:
    """stopPrevious 0 jobs keep order in a bounded queue; overflow drops the oldest."""
    s, _ = make(key_queue=2, server=Limit(rate=1000, burst=1000))
    s.submit(job("busy"))
    [busy] = s.poll().send
    s.submit(job("q1", cls="queue"))
    s.submit(job("q2", cls="queue"))
    assert fin(s.submit(job("q3", cls="queue"))) == [("q1", "dropped", "q3")]
    s.settled(busy)
    assert ids(s.poll().send) == ["q2"]


def test_ordered_jobs_are_bounded_per_key_too() -> None:
    """A flood of PatternV2-like jobs for one key keeps only the newest key_queue waiting."""
    s, _ = make(key_queue=2, lan=Limit(rate=1000, burst=1000))
    s.submit(job("busy", cls="ordered", route="lan"))
    [busy] = s.poll().send
    s.submit(job("o1", cls="ordered", route="lan"))
    s.submit(job("o2", cls="ordered", route="lan"))
    assert fin(s.submit(job("o3", cls="ordered", route="lan"))) == [("o1", "dropped", "o3")]
    # stopPrevious 0 jobs have a queue of their own: neither pushes the other out.
    assert fin(s.submit(job("q1", cls="queue", route="lan"))) == []
    s.settled(busy)
    assert ids(s.poll().send) == ["o2"]


def test_multi_user_shares_are_not_bounded() -> None:
    """Shares of multi-user messages are never dropped for a full key queue."""
    s, _ = make(key_queue=1)
    s.submit(job("busy"))
    s.poll()
    for n in range(3):
        assert fin(s.submit(job(f"m{n}", cls="ordered", multi=True))) == []
    assert s.pending == 3


def test_replace_supersedes_queued_stop_previous_zero() -> None:
    """A stopPrevious 1 command replaces queued stopPrevious 0 ones."""
    s, _ = make()
    s.submit(job("busy"))
    s.poll()
    s.submit(job("q1", cls="queue"))
    assert fin(s.submit(job("r"))) == [("q1", "superseded", "r")]


def test_ordered_jobs_are_never_merged() -> None:
    """PatternV2-like ordered jobs keep their order and are not replaced."""
    s, _ = make(server=Limit(rate=1000, burst=1000))
    for name in ("setup", "play"):
        s.submit(job(name, cls="ordered", route="lan"))
    assert fin(s.submit(job("v", route="lan"))) == []
    sent = []
    for _ in range(3):
        tick = s.poll()
        sent += tick.send
        for j in tick.send:
            s.settled(j)
    assert ids(sent) == ["setup", "play", "v"]


def test_single_user_command_never_supersedes_a_multi_user_share() -> None:
    """A single-user replace leaves a pending share of a multi-user message alone."""
    s, _ = make()
    s.submit(job("busy"))
    s.poll()
    s.submit(job("broadcast", cls="ordered", multi=True))
    assert fin(s.submit(job("mine"))) == []


def test_rate_limit_waits_without_blocking_other_uids() -> None:
    """A uid out of tokens waits; another uid is sent at once."""
    s, clock = make(server=Limit(rate=2, burst=1))
    s.submit(job("a1", uid="a"))
    first = s.poll()
    s.settled(first.send[0])
    s.submit(job("a2", uid="a"))
    s.submit(job("b1", uid="b"))
    tick = s.poll()
    assert ids(tick.send) == ["b1"]
    assert tick.wake_ms == clock.ms + 500
    clock.ms += 500
    assert ids(s.poll().send) == ["a2"]


def test_stop_cancels_pending_and_waits_for_inflight() -> None:
    """A Stop supersedes pending work and is released only after the in-flight call settles."""
    s, clock = make()
    s.submit(job("a"))
    inflight = s.poll().send[0]
    s.submit(job("b"))
    clock.ms += 10
    assert fin(s.submit(job("stop", cls="stop", published=clock.ms))) == [
        ("b", "superseded", "stop")]
    assert s.poll().send == []
    s.settled(inflight)
    assert ids(s.poll().send) == ["stop"]


def test_command_published_before_a_stop_is_refused_later() -> None:
    """A command arriving after a Stop but published before it is superseded by the Stop."""
    s, clock = make()
    s.submit(job("stop", cls="stop", published=clock.ms))
    assert fin(s.submit(job("old", published=clock.ms - 5))) == [("old", "superseded", "stop")]
    assert fin(s.submit(job("new", published=clock.ms + 5))) == []


def test_keys_wait_for_a_pending_stop() -> None:
    """A newer command for the Stop's key is sent only after the Stop settles."""
    s, clock = make()
    s.submit(job("stop", cls="stop", published=clock.ms))
    s.submit(job("new", published=clock.ms + 1))
    tick = s.poll()
    assert ids(tick.send) == ["stop"]
    assert s.poll().send == []
    s.settled(tick.send[0])
    assert ids(s.poll().send) == ["new"]


def test_toy_stop_cancels_star_commands_but_not_other_toys() -> None:
    """A Stop for one toy cancels pending every-toy jobs and that toy's, not another toy's."""
    s, clock = make()
    for name, toys in (("b1", None), ("b2", ("t1",)), ("b3", ("t2",))):
        s.submit(job(name, toys=toys))
    s.poll()
    for name, toys in (("all", None), ("one", ("t1",)), ("two", ("t2",))):
        s.submit(job(name, toys=toys))
    assert sorted(fin(s.submit(job("stop", cls="stop", toys=("t1",),
                                   published=clock.ms)))) == [
        ("all", "superseded", "stop"), ("one", "superseded", "stop")]


def test_deadline_expires_waiting_job() -> None:
    """A job still waiting at its deadline is expired and never sent."""
    s, clock = make(server=Limit(rate=0.1, burst=1))
    s.submit(job("a"))
    s.settled(s.poll().send[0])
    s.submit(job("b", deadline=clock.ms + 100))
    clock.ms += 100
    tick = s.poll()
    assert (tick.send, fin(tick.finished)) == ([], [("b", "expired", None)])


def test_past_deadline_is_expired_on_arrival() -> None:
    """A job whose deadline has passed on arrival is expired at once."""
    s, clock = make()
    assert fin(s.submit(job("late", deadline=clock.ms - 1))) == [("late", "expired", None)]


def test_remote_stop_follows_up_an_inflight_call() -> None:
    """A Stop seen from another replica while a call is in flight is re-sent after it settles."""
    s, clock = make()
    s.submit(job("a"))
    inflight = s.poll().send[0]
    assert s.remote_stop("remote-stop@1", ["u"], None, clock.ms, "remote-stop") == []
    assert s.remote_stop("remote-stop@1", ["u"], None, clock.ms, "remote-stop") == []  # once
    s.settled(inflight)
    follow = s.poll().send
    assert [(j.ident, j.cls) for j in follow] == [("remote-stop:after:a", "stop")]


# --------------------------------------------------------------------------- properties

@dataclass
class Trace:
    """What happened in one random run."""

    sent: list[tuple[float, TJob]] = field(default_factory=list)
    finished: list[TFinished] = field(default_factory=list)
    stops_submitted: list[tuple[float, TJob]] = field(default_factory=list)
    #: Event order: when each job was sent and when each Stop was submitted.
    order: dict[str, int] = field(default_factory=dict)


op = st.tuples(
    st.sampled_from(["replace", "queue", "ordered", "stop", "wait", "settle"]),
    st.sampled_from(["a", "b"]),
    st.sampled_from([None, ("t1",), ("t2",), ("t1", "t2")]),
    st.sampled_from(["lan", "server"]),
    st.integers(min_value=0, max_value=300),
    st.integers(min_value=1, max_value=2000),
)


def run(ops: list[tuple[str, str, Toys, str, int, int]]) -> tuple[Trace, list[TJob]]:
    s, clock = make(server=Limit(rate=2, burst=4), lan=Limit(rate=10, burst=10), key_queue=3)
    trace = Trace()
    inputs: list[TJob] = []
    inflight: list[TJob] = []
    for n, (kind, uid, toys, route, skew, ttl) in enumerate(ops):
        if kind == "wait":
            clock.ms += skew
        elif kind == "settle":
            if inflight:
                s.settled(inflight.pop(skew % len(inflight)))
        else:
            j = job(f"j{n}", uid=uid, toys=toys, cls=kind, route=route,
                    published=clock.ms - skew, deadline=clock.ms - skew + ttl)
            inputs.append(j)
            if kind == "stop":
                trace.stops_submitted.append((clock.ms, j))
                trace.order["submit:" + j.ident] = len(trace.order)
            trace.finished += s.submit(j)
        tick = s.poll()
        trace.finished += tick.finished
        for sent in tick.send:
            trace.sent.append((clock.ms, sent))
            trace.order["send:" + sent.ident] = len(trace.order)
            inflight.append(sent)
            if sent not in inputs:
                inputs.append(sent)
    # Drain: settle everything, let time pass until nothing is left.
    for _ in range(200):
        while inflight:
            s.settled(inflight.pop())
        clock.ms += 100
        tick = s.poll()
        trace.finished += tick.finished
        for sent in tick.send:
            trace.sent.append((clock.ms, sent))
            trace.order["send:" + sent.ident] = len(trace.order)
            inflight.append(sent)
            if sent not in inputs:
                inputs.append(sent)
        if not inflight and not tick.send and s.pending == 0:
            break
    return trace, inputs


@settings(max_examples=200, deadline=None)
@given(st.lists(op, max_size=80))
def test_property_every_job_ends_exactly_once(ops: list[Any]) -> None:
    """Every job is either sent once or finished unsent once, never both, never lost."""
    trace, inputs = run(ops)
    ends = [j.ident for _, j in trace.sent] + [f.job.ident for f in trace.finished]
    assert sorted(ends) == sorted(j.ident for j in inputs)


@settings(max_examples=200, deadline=None)
@given(st.lists(op, max_size=80))
def test_property_nothing_sent_after_a_later_stop(ops: list[Any]) -> None:
    """No job is sent after a Stop that was submitted earlier and published no earlier than it,
    for an overlapping key."""
    trace, _ = run(ops)
    for _, sent in trace.sent:
        if sent.cls == "stop":
            continue
        for _, stop in trace.stops_submitted:
            if stop.uid == sent.uid and overlaps(stop.toys, sent.toys):
                stop_first = trace.order["submit:" + stop.ident] < trace.order["send:" + sent.ident]
                assert not (stop_first and sent.published_ms <= stop.published_ms)


@settings(max_examples=200, deadline=None)
@given(st.lists(op, max_size=80))
def test_property_rate_limits_hold_in_every_window(ops: list[Any]) -> None:
    """Per uid and route, calls in any window of t ms never exceed burst + rate × t."""
    trace, _ = run(ops)
    limits = {"server": (2.0, 4.0), "lan": (10.0, 10.0)}
    for (uid, route), (rate, burst) in [((u, r), limits[r]) for u in "ab" for r in limits]:
        times = sorted(t for t, j in trace.sent
                       if j.uid == uid and j.route == route and j.cls != "stop")
        for i, start in enumerate(times):
            for k in range(i, len(times)):
                window = times[k] - start
                assert k - i + 1 <= burst + rate * window / 1000 + 1e-9


@settings(max_examples=200, deadline=None)
@given(st.lists(op, max_size=80))
def test_property_nothing_sent_after_its_deadline(ops: list[Any]) -> None:
    """No job is sent at or after its deadline; Stops have none."""
    trace, _ = run(ops)
    for sent_at, sent in trace.sent:
        if sent.cls != "stop":
            assert sent_at < sent.deadline_ms


def test_stop_seen_in_the_log_first_is_sent_once() -> None:
    """A Stop the log announced before its own delivery arrived is sent once, not twice."""
    s, clock = make()
    s.submit(job("a"))
    inflight = s.poll().send[0]
    s.remote_stop("stop-1@1", ["u"], None, clock.ms, "stop-1")
    s.submit(job("stop-1", cls="stop", published=clock.ms))
    s.settled(inflight)
    assert ids(s.poll().send) == ["stop-1"]


class _Payload:
    """Something a job carries, to see whether the scheduler still holds it."""


def test_sent_jobs_are_let_go_before_their_deadline() -> None:
    """Work that was sent and settled is not kept until its (far) deadline."""
    s, clock = make(server=Limit(rate=1e9, burst=1e9))
    refs = []
    for n in range(5_000):
        payload = _Payload()
        refs.append(weakref.ref(payload))
        j = job(f"j{n}", uid=f"u{n}", deadline=clock.ms + 3_600_000)
        j.payload = payload
        s.submit(j)
        for sent in s.poll().send:
            s.settled(sent)
        del payload, j
    gc.collect()
    alive = sum(1 for r in refs if r() is not None)
    # The deadline heap is compacted once stale entries pass a fixed slack (1024).
    assert alive <= 1100
    assert s.pending == 0


def test_a_superseded_job_is_let_go_before_its_deadline() -> None:
    """Replaced jobs are dropped from the deadline heap too, and expiry still works after."""
    s, clock = make(server=Limit(rate=1, burst=1))
    s.submit(job("first", deadline=clock.ms + 3_600_000))
    s.poll()  # in flight
    refs = []
    for n in range(3_000):
        j = job(f"r{n}", deadline=clock.ms + 3_600_000)
        j.payload = _Payload()
        refs.append(weakref.ref(j.payload))
        s.submit(j)
        del j
    assert sum(1 for r in refs if r() is not None) <= 1100
    clock.ms += 3_600_001
    tick = s.poll()
    assert [f.job.ident for f in tick.finished] == ["r2999"]
    assert [f.status for f in tick.finished] == ["expired"]


@settings(max_examples=150, deadline=None)
@given(
    users=st.lists(st.sampled_from([f"u{n}" for n in range(8)]), min_size=1, max_size=8,
                   unique=True),
    busy=st.sets(st.sampled_from([f"u{n}" for n in range(8)]), max_size=8),
    waiting=st.sets(st.sampled_from([f"u{n}" for n in range(8)]), max_size=8),
    toys=st.one_of(st.none(), st.tuples(st.sampled_from(["t1", "t2"]))),
)
def test_a_multi_user_stop_from_the_log_covers_every_user(
    users: list[str], busy: set[str], waiting: set[str], toys: Toys,
) -> None:
    """A Stop for many users learned from the log cancels and follows up for every one of them."""
    s, clock = make(server=Limit(rate=1e9, burst=1e9))
    inflight = {}
    for uid in sorted(busy):
        s.submit(job(f"busy-{uid}", uid=uid))
    for sent in s.poll().send:
        inflight[sent.uid] = sent
    for uid in sorted(waiting):
        s.submit(job(f"wait-{uid}", uid=uid, cls="queue"))
    finished = s.remote_stop("stop@1", users, toys, clock.ms, "stop")
    assert sorted(f.job.uid for f in finished) == sorted(set(waiting) & set(users))
    assert all(f.status == "superseded" and f.by == "stop" for f in finished)
    for uid in users:
        assert s.watermark(uid, None) == (clock.ms, "stop")
    clock.ms += 1
    for sent in inflight.values():
        s.settled(sent)
    follow = s.poll().send
    assert sorted(j.uid for j in follow if j.cls == "stop") == sorted(busy & set(users))
    assert fin(s.submit(job("late", uid=users[-1], published=clock.ms - 1))) == [
        ("late", "superseded", "stop")]


def test_a_stop_message_seen_before_changes_nothing_for_any_user() -> None:
    """The log's copy of a Stop this replica already sent is skipped as a whole, once."""
    s, clock = make()
    assert s.note_stop("s@1")
    assert s.remote_stop("s@1", ["a", "b"], None, clock.ms, "s") == []
    assert s.watermark("a", None) is None and s.watermark("b", None) is None
    assert s.remote_stop("s2@1", ["a", "b"], None, clock.ms, "s2") == []
    assert (s.watermark("a", None), s.watermark("b", None)) == ((clock.ms, "s2"), (clock.ms, "s2"))


def test_routes_are_remembered_for_the_route_memory_only() -> None:
    """The routes a uid used are kept for `route_memory_ms` (what a Stop asks about), not for
    the watermarks' hour: 10,000 uids commanded once leave nothing behind a minute later."""
    s, clock = make(server=Limit(rate=1e9, burst=1e9), route_memory_ms=60_000.0)
    for n in range(10_000):
        s.submit(job(f"j{n}", uid=f"u{n}", route="server" if n % 2 else "lan"))
        for sent in s.poll().send:
            s.settled(sent)
    assert s.recent_routes("u1", 60_000.0) == ["server"]
    assert s.recent_routes("u2", 60_000.0) == ["lan"]
    clock.ms += 30_000
    s.poll()
    assert s.recent_routes("u1", 60_000.0) == ["server"]
    assert s.recent_routes("u1", 10_000.0) == []
    clock.ms += 40_000
    s.poll()  # housekeeping runs (every 10 s of the clock) and forgets them
    assert len(s._last_route) == 0
    assert s.recent_routes("u1", 60_000.0) == []
    with pytest.raises(ValueError, match="remembered for 60000 ms, not 3.6e"):
        s.recent_routes("u1", 3_600_000.0)
