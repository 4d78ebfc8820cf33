"""The per-user scheduler: latest-wins coalescing, rate limits, Stops that win, deadlines.

Pure logic on an injected clock (epoch milliseconds); no I/O. The shell
(:mod:`worker.services.runtime`) submits jobs, polls for what to send, and reports when
a call settles. One *job* is one user's share of one command message.

* **Keys.** A job's key is ``(uid, sorted toy ids)`` or ``(uid, None)`` (``*``,
  every toy). At most one call per key is in flight, so a key's calls keep
  their order.
* **Coalescing.** A ``replace`` job (Function with stopPrevious 1, Pattern,
  Preset, Position) removes the key's not-yet-sent ``replace`` and ``queue``
  jobs, and every key of the uid when its own key is ``*``; they finish
  ``superseded``. ``queue`` jobs (stopPrevious 0) keep their order in a bounded
  queue whose overflow drops the oldest (``dropped``). ``ordered`` jobs
  (PatternV2, queries, shares of multi-user messages) are never merged away;
  single-user ones are bounded the same way, so a flood of them for one key
  cannot hold the prefetch window (every waiting job is an unacked message).
* **Rate limits.** A token bucket per (uid, route); a waiting key never delays
  another key.
* **Stops.** Never rate-limited, replaced or expired. A Stop records a
  watermark (its publish time) for its toys; every job of an overlapping key
  published no later than the watermark is cancelled (``superseded``) and is
  refused if it arrives later. A Stop waits for overlapping calls in flight to
  settle so it lands last, and overlapping keys wait for the Stop.
* **Deadlines.** A job not sent by its deadline finishes ``expired``.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, Literal, TypeVar

from worker.core.outcomes import Route
from worker.core.ratelimit import Limit, TokenBucket
from worker.core.watermarks import Mark, Watermarks

JobClass = Literal["replace", "queue", "ordered", "stop"]
#: What a job carries for its owner (the runtime's share of a message); opaque here.
W = TypeVar("W")
Toys = tuple[str, ...] | None
Key = tuple[str, Toys]
FinishStatus = Literal["superseded", "expired", "dropped"]

_SWEEPABLE: Final = frozenset({"replace", "queue"})
#: Classes kept in order in a queue of at most ``key_queue`` per key (oldest dropped).
_BOUNDED: Final = frozenset({"queue", "ordered"})
#: Stop messages remembered by key, so one read back from the Stop log after it was handled
#: here changes nothing. It comes back within seconds; forgetting one sooner costs only a
#: repeated Stop call (a Stop wins more, never less). 100,000 kept ~28 MB (about 280 bytes
#: a Stop) filling for the better part of an hour at 35 Stops/s; 10,000 cover ~5 minutes.
_SEEN_STOPS: Final = 10_000
_HOUSEKEEPING_MS: Final = 10_000.0
#: The deadline heap is rebuilt once it holds this many more entries than pending jobs.
_STALE_DEADLINES: Final = 1024


@dataclass(eq=False, slots=True)
class Job(Generic[W]):
    """One user's share of one command message, as the scheduler sees it."""

    ident: str
    uid: str
    toys: Toys
    cls: JobClass
    route: Route
    published_ms: float
    deadline_ms: float = float("inf")
    payload: W | None = None
    multi: bool = False
    seq: int = 0
    state: Literal["new", "pending", "sent", "done"] = "new"
    #: Remote Stops that arrived while this job's call was in flight.
    followups: list[tuple[str, float]] | None = None
    #: For a follow-up Stop: the job whose settled call it follows (its payload says where).
    follows: Job[W] | None = None

    @property
    def key(self) -> Key:
        """Return the coalescing key, ``(uid, toys)``."""
        return (self.uid, self.toys)


@dataclass(frozen=True, slots=True)
class Finished(Generic[W]):
    """A job the scheduler finished without sending it."""

    job: Job[W]
    status: FinishStatus
    by: str | None = None


@dataclass(slots=True)
class Tick(Generic[W]):
    """What to do now: jobs to send, jobs finished unsent, and when to poll again."""

    send: list[Job[W]]
    finished: list[Finished[W]]
    wake_ms: float | None


@dataclass(frozen=True, slots=True)
class Limits:
    """The scheduler's knobs."""

    server: Limit = Limit(rate=2.0, burst=4.0)
    lan: Limit = Limit(rate=10.0, burst=10.0)
    key_queue: int = 16
    watermark_ttl_ms: float = 3_600_000.0
    watermark_bytes: int = 32 * 1024 * 1024
    #: How long the routes a uid's calls used are remembered (``recent_routes``' widest
    #: window): per-uid state kept longer than it is ever read is memory that creeps.
    route_memory_ms: float = 60_000.0


def overlaps(a: Toys, b: Toys) -> bool:
    """Return whether two toy selections can reach the same toy (``None`` is every toy)."""
    return a is None or b is None or not set(a).isdisjoint(b)


@dataclass(slots=True)
class _KeyState(Generic[W]):
    pending: deque[Job[W]] = field(default_factory=deque)
    inflight: Job[W] | None = None


class Scheduler(Generic[W]):
    """Decide, per key, what is sent when, and what is never sent."""

    def __init__(self, limits: Limits, clock: Callable[[], float]) -> None:
        self._limits = limits
        self._clock = clock
        self._seq = itertools.count(1)
        self._keys: dict[Key, _KeyState[W]] = {}
        self._uid_keys: dict[str, set[Key]] = {}
        self._stops: dict[str, list[Job[W]]] = {}
        self._stops_inflight: dict[str, list[Job[W]]] = {}
        self._buckets: dict[tuple[str, Route], TokenBucket] = {}
        self._marks = Watermarks(limits.watermark_bytes)
        # The mark of the Stop whose users are being marked: one Mark for all of them.
        self._mark: tuple[Toys, float, str, Mark] | None = None
        self._last_route: dict[str, dict[Route, float]] = {}
        self._wake: list[tuple[float, int, str, Key | str]] = []
        self._deadlines: list[tuple[float, int, Job[W]]] = []
        self._seen_stops: OrderedDict[str, None] = OrderedDict()
        self._finished: list[Finished[W]] = []
        self._pending = 0
        self._housekeeping_at = clock() + _HOUSEKEEPING_MS

    # ------------------------------------------------------------------ queries

    @property
    def pending(self) -> int:
        """Return how many jobs wait to be sent (Stops included)."""
        return self._pending + sum(len(s) for s in self._stops.values())

    def recent_routes(self, uid: str, within_ms: float) -> list[Route]:
        """Return the routes this uid's calls used within the last ``within_ms`` (at most
        ``Limits.route_memory_ms``: older use is forgotten)."""
        if within_ms > self._limits.route_memory_ms:
            raise ValueError(f"routes are remembered for {self._limits.route_memory_ms:g} ms, "
                             f"not {within_ms:g}")
        now = self._clock()
        used = self._last_route.get(uid, {})
        return [route for route, at in used.items() if now - at <= within_ms]

    def watermark(self, uid: str, toys: Toys) -> tuple[float, str] | None:
        """Return the latest Stop (publish ms, id) that covers a job for these toys."""
        return self._marks.covering(uid, toys)

    @property
    def watermarks(self) -> Watermarks:
        """Return the Stop watermarks (for their size)."""
        return self._marks

    # ------------------------------------------------------------------ input

    def submit(self, job: Job[W]) -> list[Finished[W]]:
        """Take a new job; return the jobs this finishes at once (itself included, if so)."""
        now = self._clock()
        job.seq = next(self._seq)
        if job.cls == "stop":
            return self._submit_stop(job, now)
        mark = self.watermark(job.uid, job.toys)
        if mark is not None and job.published_ms <= mark[0]:
            job.state = "done"
            return [Finished(job, "superseded", mark[1])]
        if job.deadline_ms <= now:
            job.state = "done"
            return [Finished(job, "expired")]
        finished: list[Finished[W]] = []
        if job.cls == "replace" and not job.multi:
            keys = self._uid_keys.get(job.uid, set()) if job.toys is None else {job.key}
            for key in list(keys):
                finished += self._remove(key, job.ident, "superseded",
                                         lambda j: j.cls in _SWEEPABLE and not j.multi)
        state = self._state(job.key)
        if job.cls in _BOUNDED and not job.multi:
            queued = [j for j in state.pending if j.cls == job.cls and not j.multi]
            if len(queued) >= self._limits.key_queue:
                oldest = queued[0]
                state.pending.remove(oldest)
                self._done(oldest)
                finished.append(Finished(oldest, "dropped", job.ident))
        state.pending.append(job)
        job.state = "pending"
        self._pending += 1
        heapq.heappush(self._deadlines, (job.deadline_ms, job.seq, job))
        if len(self._deadlines) > 2 * self._pending + _STALE_DEADLINES:
            self._compact_deadlines()
        self._push(now, "key", job.key)
        return finished

    def note_stop(self, seen: str) -> bool:
        """Remember a Stop message by its key; return False when it was known already.

        The key names one message (the runtime makes it from the message's id, publish
        time and body), never one user of it: a Stop for many users is applied to all
        of them or, when seen before, to none.
        """
        if seen in self._seen_stops:
            return False
        self._seen_stops[seen] = None
        if len(self._seen_stops) > _SEEN_STOPS:
            self._seen_stops.popitem(last=False)
        return True

    def remote_stop(self, seen: str, uids: Sequence[str], toys: Toys, published_ms: float,
                    ident: str) -> list[Finished[W]]:
        """Apply a Stop another replica sends: cancel, raise watermarks, follow up in-flight.

        ``seen`` is the message's key (:meth:`note_stop`); a message already seen here,
        sent by this replica or applied from the log, changes nothing.
        """
        if not self.note_stop(seen):
            return []
        finished: list[Finished[W]] = []
        for uid in uids:
            finished += self._apply_watermark(uid, toys, published_ms, ident)
            for key in self._uid_keys.get(uid, ()):
                inflight = self._keys[key].inflight
                if inflight is not None and overlaps(key[1], toys) and (
                    inflight.published_ms <= published_ms
                ):
                    inflight.followups = [*(inflight.followups or ()), (ident, published_ms)]
        return finished

    def settled(self, job: Job[W]) -> None:
        """Report that a sent job's call has finished, whatever its outcome."""
        now = self._clock()
        job.state = "done"
        if job.cls == "stop":
            inflight = self._stops_inflight.get(job.uid, [])
            if job in inflight:
                inflight.remove(job)
            if not inflight:
                self._stops_inflight.pop(job.uid, None)
            for key in self._uid_keys.get(job.uid, ()):
                self._push(now, "key", key)
            self._push(now, "stops", job.uid)
            return
        state = self._keys.get(job.key)
        if state is not None and state.inflight is job:
            state.inflight = None
            self._push(now, "key", job.key)
            self._forget_if_idle(job.key)
        for stop_ident, stop_ms in job.followups or ():
            follow: Job[W] = Job(ident=f"{stop_ident}:after:{job.ident}", uid=job.uid,
                                 toys=job.toys, cls="stop", route=job.route,
                                 published_ms=stop_ms, follows=job)
            follow.seq = next(self._seq)
            self._stops.setdefault(job.uid, []).append(follow)
            follow.state = "pending"
        self._push(now, "stops", job.uid)

    # ------------------------------------------------------------------ output

    def poll(self) -> Tick[W]:
        """Return the jobs to send now, jobs finished unsent, and when to poll next."""
        now = self._clock()
        finished, self._finished = self._finished, []
        # Entries of jobs sent or finished since are dropped here too, not kept to their deadline.
        while self._deadlines and (self._deadlines[0][0] <= now
                                   or self._deadlines[0][2].state != "pending"):
            _, _, late = heapq.heappop(self._deadlines)
            if late.state == "pending":
                self._keys[late.key].pending.remove(late)
                self._done(late)
                self._rewake(late.key, now)
                finished.append(Finished(late, "expired"))
        due: dict[tuple[str, Key | str], None] = {}
        while self._wake and self._wake[0][0] <= now:
            _, _, kind, ref = heapq.heappop(self._wake)
            due[(kind, ref)] = None
        send: list[Job[W]] = []
        for _kind, ref in due:
            if isinstance(ref, str):  # a uid whose Stops may go ("stops"), else a key
                send += self._release_stops(ref)
            else:
                job = self._release_key(ref, now)
                if job is not None:
                    send.append(job)
        if now >= self._housekeeping_at:
            self._housekeeping(now)
        wake = min(
            (t for t in (self._wake[0][0] if self._wake else None,
                         self._deadlines[0][0] if self._deadlines else None) if t is not None),
            default=None,
        )
        return Tick(send, finished, wake)

    # ------------------------------------------------------------------ internals

    def _push(self, when: float, kind: str, ref: Key | str) -> None:
        heapq.heappush(self._wake, (when, next(self._seq), kind, ref))

    def _compact_deadlines(self) -> None:
        """Drop the entries of jobs no longer pending, so they (and their payloads) can go.

        A sent job's entry would otherwise live until its deadline (an hour, with a
        long TTL): a heap of finished work the garbage collector walks again and again.
        Rebuilt only when stale entries outnumber live ones, so the cost per job stays O(1).
        """
        self._deadlines = [entry for entry in self._deadlines if entry[2].state == "pending"]
        heapq.heapify(self._deadlines)

    def _state(self, key: Key) -> _KeyState[W]:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
            self._uid_keys.setdefault(key[0], set()).add(key)
        return state

    def _forget_if_idle(self, key: Key) -> None:
        state = self._keys.get(key)
        if state is not None and not state.pending and state.inflight is None:
            del self._keys[key]
            keys = self._uid_keys.get(key[0])
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._uid_keys[key[0]]

    def _done(self, job: Job[W]) -> None:
        if job.state == "pending":
            self._pending -= 1
        job.state = "done"

    def _remove(
        self, key: Key, by: str, status: FinishStatus, which: Callable[[Job[W]], bool]
    ) -> list[Finished[W]]:
        state = self._keys.get(key)
        if state is None:
            return []
        removed = [j for j in state.pending if which(j)]
        if removed:
            state.pending = deque(j for j in state.pending if not which(j))
            for job in removed:
                self._done(job)
            self._rewake(key, self._clock())
        return [Finished(j, status, by) for j in removed]

    def _rewake(self, key: Key, now: float) -> None:
        """After a key's waiting job ended unsent: forget the key, or look at its next job now.

        The next job may not need the wait its predecessor was scheduled for (another
        route's bucket, or no wait at all).
        """
        self._forget_if_idle(key)
        if key in self._keys:
            self._push(now, "key", key)

    def _mark_of(self, toys: Toys, published_ms: float, ident: str) -> Mark:
        # The shares of one message hold the same toys tuple: one Mark, not one a user.
        last = self._mark
        if last is None or last[0] is not toys or last[1] != published_ms or last[2] != ident:
            mark = Mark(published_ms, ident, None if toys is None else frozenset(toys))
            last = self._mark = (toys, published_ms, ident, mark)
        return last[3]

    def _apply_watermark(
        self, uid: str, toys: Toys, published_ms: float, ident: str
    ) -> list[Finished[W]]:
        self._marks.raise_mark(uid, self._mark_of(toys, published_ms, ident))
        finished: list[Finished[W]] = []
        for key in list(self._uid_keys.get(uid, ())):
            if overlaps(key[1], toys):
                finished += self._remove(key, ident, "superseded",
                                         lambda j: j.published_ms <= published_ms)
        return finished

    def _submit_stop(self, stop: Job[W], now: float) -> list[Finished[W]]:
        # The Stop log may have told us of this Stop first: it is sent now, so no follow-up.
        for key in self._uid_keys.get(stop.uid, ()):
            inflight = self._keys[key].inflight
            if inflight is not None and inflight.followups:
                inflight.followups = [f for f in inflight.followups
                                      if f != (stop.ident, stop.published_ms)]
        finished = self._apply_watermark(stop.uid, stop.toys, stop.published_ms, stop.ident)
        stop.state = "pending"
        self._stops.setdefault(stop.uid, []).append(stop)
        self._push(now, "stops", stop.uid)
        return finished

    def _release_stops(self, uid: str) -> list[Job[W]]:
        waiting = self._stops.get(uid)
        if not waiting:
            return []
        busy = [self._keys[k].inflight for k in self._uid_keys.get(uid, ())
                if self._keys[k].inflight is not None]
        ready = [s for s in waiting if not any(overlaps(s.toys, j.toys) for j in busy if j)]
        if not ready:
            return []
        self._stops[uid] = [s for s in waiting if s not in ready]
        if not self._stops[uid]:
            del self._stops[uid]
        self._stops_inflight.setdefault(uid, []).extend(ready)
        for stop in ready:
            stop.state = "sent"
        return ready

    def _blocked_by_stop(self, key: Key) -> bool:
        uid, toys = key
        for stops in (self._stops.get(uid, ()), self._stops_inflight.get(uid, ())):
            if any(overlaps(s.toys, toys) for s in stops):
                return True
        return False

    def _release_key(self, key: Key, now: float) -> Job[W] | None:
        state = self._keys.get(key)
        if state is None or state.inflight is not None or not state.pending:
            return None
        if self._blocked_by_stop(key):
            return None  # the Stop's settle wakes this key again
        job = state.pending[0]
        limit = self._limits.server if job.route == "server" else self._limits.lan
        bucket = self._buckets.get((job.uid, job.route))
        if bucket is None:
            bucket = self._buckets[(job.uid, job.route)] = TokenBucket(limit, now)
        wait = bucket.wait_ms(now)
        if wait > 0:
            self._push(now + wait, "key", key)
            return None
        bucket.take(now)
        state.pending.popleft()
        self._pending -= 1
        job.state = "sent"
        state.inflight = job
        self._last_route.setdefault(job.uid, {})[job.route] = now
        return job

    def _housekeeping(self, now: float) -> None:
        self._housekeeping_at = now + _HOUSEKEEPING_MS
        for bucket_key in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[bucket_key]
        self._marks.expire(now - self._limits.watermark_ttl_ms)
        forget = now - self._limits.route_memory_ms
        for uid in [u for u, r in self._last_route.items() if max(r.values()) < forget]:
            del self._last_route[uid]
