"""Scenario ``registry``: 1,000,000 paired users; replay, snapshot, RSS, a second start-up.

1. The bench resets the registry's two streams **in the bench vhost**
   (``lovense.callbacks.log`` and ``lovense.registry.snapshots`` are deleted and
   the log re-declared with the worker's own arguments), refusing if anyone
   consumes them, so the run starts from an empty registry and no snapshot.
2. It appends 1,000,000 distinct valid callbacks straight to the stream
   ``lovense.callbacks.log`` (default exchange, routing key = the stream name),
   **bypassing the validating queue** ``lovense.callbacks``: uids
   ``reg-0000000``…, each a different private address ``10.b.c.d`` as
   ``10-b-c-d.lovense.club``, its own ``httpsPort``, one toy, ``utoken`` =
   HMAC-SHA256 of the uid under a random secret (``worker.core.bodies.utoken_for``).
   It publishes with :class:`bench.fastpub.FastPublisher` (confirms, batches of
   2,000 per socket write, at most 20,000 unconfirmed).
3. **After** publishing, worker A starts (``LOVENSE_LAN_ALLOW=10.0.0.0/8``, the
   secret, ``LOVENSE_SNAPSHOT_INTERVAL_S=20``, info JSON logs): it replays the
   whole log before it is ready. The bench samples A's
   ``lovense_worker_registry_users`` every second, waits for /readyz, then for
   A's ``registry_snapshot_written`` line with every user, and reads A's
   VmRSS / VmHWM from ``/proc``. A is then stopped (SIGTERM).
4. Worker B (same settings) starts: process spawn to /readyz 200 (polled every
   50 ms), then its ``registry_users``; B loads A's snapshot and replays only
   the log after it.
5. Both streams are deleted again, so other scenarios' workers do not start
   with a million users.

With ``--profile``, py-spy records A during its replay and B during its
start-up. When A's RSS misses the target, a child process
(``python -m bench.registry_memory``) rebuilds the same registry through the
worker's own ``Pairing.apply`` under tracemalloc and says where the bytes are.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Final

import aio_pika
import msgspec

from bench import profile
from bench.common import (
    fmt,
    metric,
    recorded_env,
    scrape,
    verdict,
    worker_env,
)
from bench.fastpub import FastPublisher
from bench.procs import BenchError, Proc, Procs, free_port
from bench.scenario import Options, Outcome
from worker.contract import topology

FULL: Final = 1_000_000
QUICK: Final = 50_000
SNAPSHOT_INTERVAL_S: Final = 20
RSS_TARGET_MB: Final = 300.0
START_TARGET_S: Final = 60.0
LAN_ALLOW: Final = "10.0.0.0/8"
#: The worker's default LOVENSE_LAN_TTL_S: the log's x-max-age must match what it declares.
LAN_TTL_S: Final = 86_400
USERS_METRIC: Final = "lovense_worker_registry_users"
_encode = msgspec.json.Encoder().encode


def uid_of(i: int) -> str:
    """Return user i's uid."""
    return f"reg-{i:07d}"


def callback_body(i: int, key: bytes) -> bytes:
    """Return user i's callback, in the shape the Lovense Remote app posts."""
    uid = uid_of(i)
    a, d = divmod(i, 254)
    toy = f"{i:012x}"
    return _encode({
        "uid": uid,
        "appVersion": "7.76.0",
        "toys": {toy: {"nickName": "", "name": "nora", "id": toy, "status": 1}},
        "wssPort": "34568",
        "httpPort": "34567",
        "wsPort": "34567",
        "appType": "remote",
        "domain": f"10-{(a >> 8) & 255}-{a & 255}-{d + 1}.lovense.club",
        "utoken": hmac.new(key, uid.encode(), hashlib.sha256).hexdigest(),
        "httpsPort": str(30_000 + i % 30_000),
        "version": "",
        "platform": "android",
    })


def bodies(users: int, key: bytes) -> Iterator[bytes]:
    """Yield every user's callback."""
    for i in range(users):
        yield callback_body(i, key)


async def _streams(url: str, *, redeclare: bool) -> dict[str, int | None]:
    """Delete the callback log and the snapshot stream (refusing if consumed); return counts."""
    counts: dict[str, int | None] = {}
    connection = await aio_pika.connect(url, client_properties={"connection_name": "bench-prep"})
    async with connection:
        for name in (topology.CALLBACKS_LOG, topology.SNAPSHOTS):
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                counts[name] = None
                continue
            declared = queue.declaration_result
            if declared.consumer_count:
                raise BenchError(f"{name} has {declared.consumer_count} consumer(s): a worker "
                                 "runs on this vhost; stop it and run again")
            counts[name] = declared.message_count
            await channel.queue_delete(name)
        if redeclare:
            channel = await connection.channel()
            await channel.declare_queue(topology.CALLBACKS_LOG, durable=True,
                                        arguments=topology.callbacks_log_arguments(LAN_TTL_S))
    return counts


def _events(proc: Proc, name: str) -> list[dict[str, Any]]:
    """Return the child's JSON log events called ``name``."""
    found = []
    for line in proc.log_lines():
        if f'"{name}"' in line:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == name:
                found.append(event)
    return found


async def _users(proc: Proc) -> int | None:
    value = metric(await scrape(proc), USERS_METRIC)
    return None if value is None else int(value)


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


async def _follow(proc: Proc, users: int, timeout: float,
                  samples: list[tuple[float, int]]) -> str | None:
    """Sample the users gauge every second until ready and complete; return why not."""
    ready = asyncio.ensure_future(proc.wait_ready(timeout=timeout, poll_s=0.1))
    try:
        while True:
            count = await _users(proc)
            if count is not None:
                samples.append((round(time.monotonic() - proc.started_at, 2), count))
            if ready.done():
                if ready.exception() is not None:
                    return str(ready.exception())
                if count == users:
                    return None
            if not proc.alive:
                return f"{proc.name} exited with code {proc.process.returncode}"
            if time.monotonic() > proc.started_at + timeout:
                return f"timed out after {timeout:.0f} s ({count} users, ready {proc.ready_s})"
            await asyncio.sleep(1.0)
    finally:
        ready.cancel()


def _replay_rate(samples: list[tuple[float, int]], users: int) -> dict[str, Any]:
    first = next((t for t, n in samples if n > 0), None)
    full = next((t for t, n in samples if n >= users), None)
    if first is None or full is None or full <= first:
        return {"first_user_s": first, "all_users_s": full, "messages_per_s": None}
    return {"first_user_s": first, "all_users_s": full,
            "messages_per_s": round(users / (full - first))}


async def _spy(procs: Procs, opts: Options, target: Proc, name: str) -> Proc | None:
    if not opts.profile:
        return None
    return await profile.attach(procs, target, opts.log_dir / f"{name}.pyspy.txt")


async def _unspy(procs: Procs, opts: Options, spy: Proc | None, name: str,
                 cpu_s: float | None, units: int) -> dict[str, Any] | None:
    if spy is None:
        return None
    await profile.detach(procs, spy)
    raw = opts.log_dir / f"{name}.pyspy.txt"
    if not raw.exists():
        return {"samples": 0, "file": str(raw)}
    return profile.summarize(raw, None if cpu_s is None else cpu_s * 1000 / units, units)


async def _memory_breakdown(procs: Procs, opts: Options, users: int) -> dict[str, Any] | None:
    child = await procs.start("registry-memory", [
        sys.executable, "-m", "bench.registry_memory", "--users", str(users)])
    try:
        event = await child.ready_line(timeout=900)
    except BenchError as exc:
        return {"error": str(exc)}
    finally:
        await procs.stop(child)
    return event


async def run(procs: Procs, opts: Options) -> Outcome:
    """Publish the callbacks, replay them in A, snapshot, then time B's start-up."""
    return await run_mode(procs, opts, "during")


async def run_after(procs: Procs, opts: Options) -> Outcome:
    """The same, but worker A starts only after every callback is in the log."""
    return await run_mode(procs, opts, "after")


async def run_mode(procs: Procs, opts: Options, a_start: str) -> Outcome:
    """Run the scenario with worker A started ``during`` or ``after`` publishing."""
    users = opts.size(FULL, QUICK)
    secret = secrets.token_hex(16)
    key = secret.encode()
    print(f"  {users} callbacks appended to {topology.CALLBACKS_LOG} (bypassing the "
          f"validating queue); worker A started {a_start} publishing; then worker B",
          flush=True)
    before = await _streams(opts.amqp_url, redeclare=True)

    env = worker_env(opts.amqp_url, None, opts=opts, log_level="info", extra={
        "LOVENSE_LAN_ALLOW": LAN_ALLOW,
        "LOVENSE_UTOKEN_SECRET": secret,
        "LOVENSE_SNAPSHOT_INTERVAL_S": str(SNAPSHOT_INTERVAL_S),
    })
    published: dict[str, float] = {}

    async def publish() -> None:
        began = time.monotonic()
        async with FastPublisher(opts.amqp_url, name="bench-registry") as publisher:
            await publisher.publish_many(bodies(users, key), topology.CALLBACKS_LOG)
            await publisher.wait_confirmed(timeout=600)
        published["s"] = time.monotonic() - began
        print(f"  published {users} callbacks in {published['s']:.1f} s "
              f"({users / published['s']:.0f}/s)", flush=True)

    replay_timeout = opts.timeout_or(1200.0)
    samples: list[tuple[float, int]] = []
    if a_start == "after":
        await publish()
        a = await procs.worker("registry-A", env, wait=False)
        spy = await _spy(procs, opts, a, "registry-A")
        cpu0 = a.cpu()
        reason = await _follow(a, users, replay_timeout, samples)
    else:
        a = await procs.worker("registry-A", env, ready_timeout=120)
        print(f"  A ready after {a.ready_s:.1f} s (empty log); publishing while it follows",
              flush=True)
        spy = await _spy(procs, opts, a, "registry-A")
        cpu0 = a.cpu()
        publishing = asyncio.ensure_future(publish())
        try:
            reason = await _follow(a, users, replay_timeout, samples)
            await publishing
        finally:
            publishing.cancel()
    publish_s = published.get("s")
    cpu1 = a.cpu()
    cpu_replay = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    a_profile = await _unspy(procs, opts, spy, "registry-A", cpu_replay, users)
    a_ready = _events(a, "registry_ready")
    a_memory_all = a.memory_kb()
    print(f"  A has {samples[-1][1] if samples else '?'} users "
          f"{samples[-1][0] if samples else '?'} s after it was spawned; waiting for its "
          "snapshot", flush=True)

    # The log line's "users" is the registry's size once the chunks are out, not what
    # they hold: a snapshot covers every user when its log offset (taken before its
    # first chunk) reaches the last callback's. The stream is new, so its offsets
    # start at 0; A appends one marker at start-up (before the callbacks when it
    # starts first, after them otherwise).
    last_offset = users if a_start == "during" else users - 1
    first_full: dict[str, Any] | None = None
    snapshot: dict[str, Any] | None = None
    snap_wait_s = None
    if reason is None:
        t0 = time.monotonic()
        deadline = t0 + 2 * SNAPSHOT_INTERVAL_S + 300
        while snapshot is None and time.monotonic() < deadline and a.alive:
            written = _events(a, "registry_snapshot_written")
            first_full = first_full or next(
                (e for e in written if e.get("users") == users), None)
            snapshot = next((e for e in written if e.get("users") == users
                             and int(e.get("log_offset", -1)) >= last_offset), None)
            await asyncio.sleep(0.5)
        snap_wait_s = round(time.monotonic() - t0, 1)
        if snapshot is None:
            reason = (f"A wrote no snapshot covering log offset {last_offset} within "
                      f"{snap_wait_s} s")
    a_memory = a.memory_kb()
    a_snapshots = _events(a, "registry_snapshot_written")
    a_code = await procs.stop(a)

    b_figures: dict[str, Any] = {}
    b_profile = None
    if reason is None:
        env_b = {**env, "LOVENSE_METRICS_PORT": str(free_port())}
        b = await procs.worker("registry-B", env_b, wait=False)
        b_spawn_wall = time.time() - (time.monotonic() - b.started_at)
        spy = await _spy(procs, opts, b, "registry-B")
        try:
            await b.wait_ready(timeout=max(300.0, START_TARGET_S * 5), poll_s=0.05)
        except BenchError as exc:
            reason = f"B: {exc}"
        b_users = await _users(b)
        b_profile = await _unspy(procs, opts, spy, "registry-B", b.cpu(), users)
        b_ready = _events(b, "registry_ready")
        steps = {}
        for name in ("stop_log_replayed", "registry_ready", "worker_started"):
            found = _events(b, name)
            if found and "timestamp" in found[0]:
                at = datetime.fromisoformat(str(found[0]["timestamp"]).replace("Z", "+00:00"))
                steps[name] = round(at.timestamp() - b_spawn_wall, 2)
        b_figures = {
            "log_lines_at_s_after_spawn": steps,
            "log_replayed_after_snapshot": None if not a_snapshots
                else last_offset - int(a_snapshots[-1].get("log_offset", 0)),
            "ready_s": None if b.ready_s is None else round(b.ready_s, 2),
            "users": b_users,
            "registry_ready_event": b_ready[0] if b_ready else None,
            "cpu_s": None if b.cpu() is None else round(b.cpu() or 0.0, 2),
            "memory_mb": {k: _mb(v) for k, v in b.memory_kb().items()},
            "log_file": str(b.log),
        }
        b_figures["exit_code"] = await procs.stop(b)

    after = await _streams(opts.amqp_url, redeclare=False)
    rss = _mb(a_memory.get("VmRSS"))
    hwm = _mb(a_memory.get("VmHWM"))
    rss_met = None if rss is None or snapshot is None else (rss <= RSS_TARGET_MB
                                                           and (hwm or 0) <= RSS_TARGET_MB)
    b_ready_s = b_figures.get("ready_s")
    start_met = None if b_ready_s is None else (b_ready_s <= START_TARGET_S
                                                and b_figures.get("users") == users)
    breakdown = None
    if rss_met is False or opts.profile:
        print("  measuring where the registry's memory goes (tracemalloc, in a child)",
              flush=True)
        breakdown = await _memory_breakdown(procs, opts, users)
    checks = {
        "A replayed every user": bool(samples) and samples[-1][1] == users,
        "A wrote a snapshot covering every user": snapshot is not None,
        "B became ready with every user": b_figures.get("users") == users,
        "workers exited 0": a_code == 0 and b_figures.get("exit_code", 0) == 0,
        "no run failure": reason is None,
    }
    data: dict[str, Any] = {
        "users": users,
        "published": "straight to the lovense.callbacks.log stream (validating queue "
                     "bypassed)",
        "a_started": f"{a_start} publishing",
        "streams_before": before,
        "publish_s": None if publish_s is None else round(publish_s, 1),
        "publish_per_s": None if not publish_s else round(users / publish_s),
        "worker_env": recorded_env(env),
        "a": {
            "ready_s": None if a.ready_s is None else round(a.ready_s, 2),
            "registry_ready_event": a_ready[0] if a_ready else None,
            "replay": _replay_rate(samples, users),
            "replay_cpu_s": None if cpu_replay is None else round(cpu_replay, 1),
            "replay_cpu_us_per_message": None if cpu_replay is None
                else round(cpu_replay * 1e6 / users, 1),
            "users_samples": samples,
            "memory_mb_with_all_users": {k: _mb(v) for k, v in a_memory_all.items()},
            "snapshot_event": snapshot,
            "first_snapshot_event_saying_all_users": first_full,
            "last_callback_offset": last_offset,
            "snapshots_written": len(a_snapshots),
            "snapshot_wait_s": snap_wait_s,
            "memory_mb": {"VmRSS": rss, "VmHWM": hwm},
            "bytes_per_user_rss": None if rss is None else round(rss * 1024 * 1024 / users),
            "exit_code": a_code,
            "log_file": str(a.log),
        },
        "b": {**b_figures,
              "snapshots_in_stream": len(a_snapshots),
              "snapshot_chunks_in_stream": sum(int(e.get("chunks", 0)) for e in a_snapshots)},
        "memory_breakdown": breakdown,
        "profiles": {"worker A, following the log (µs per message)": a_profile,
                     "worker B, start-up (µs per user)": b_profile},
        "streams_after": after,
        "failure": reason,
        "checks": checks,
        "target": {
            "rss": {"what": f"A's VmRSS and VmHWM <= {RSS_TARGET_MB:g} MB with {users} users",
                    "met": rss_met},
            "start": {"what": f"B: spawn -> /readyz 200 <= {START_TARGET_S:g} s, with every "
                              "user", "met": start_met},
            "met": bool(rss_met and start_met),
        },
    }
    name = "registry" if a_start == "during" else "registry_after"
    return Outcome(name, data, table(data), all(checks.values()))


def table(data: dict[str, Any]) -> str:
    """Return the scenario's figures as text."""
    a, b, t = data["a"], data["b"], data["target"]
    replay = a["replay"]
    snap = a["snapshot_event"] or {}
    b_event = b.get("registry_ready_event") or {}
    a_event = a.get("registry_ready_event") or {}
    lines = [
        f"published {data['users']} callbacks in {fmt(data['publish_s'])} s "
        f"({fmt(data['publish_per_s'])}/s), straight to the log; A started {data['a_started']}",
        f"A: ready {fmt(a['ready_s'])} s after spawn (its registry_ready: "
        f"{fmt(a_event.get('seconds'))} s); log applied at {fmt(replay['messages_per_s'])} "
        f"messages/s (gauge first > 0 at {fmt(replay['first_user_s'])} s, all at "
        f"{fmt(replay['all_users_s'])} s), {fmt(a['replay_cpu_us_per_message'])} µs CPU/message",
        f"A: snapshot covering log offset {fmt(snap.get('log_offset'))} (every user) in "
        f"{fmt(snap.get('chunks'))} chunks {fmt(a['snapshot_wait_s'])} s after it had every "
        f"user; RSS "
        f"{fmt(a['memory_mb']['VmRSS'])} MB, peak {fmt(a['memory_mb']['VmHWM'])} MB (before the "
        f"snapshot: {fmt(a['memory_mb_with_all_users'].get('VmRSS'))} MB), "
        f"{fmt(a['bytes_per_user_rss'])} B/user -> {verdict(t['rss']['met'])} "
        f"(<= {RSS_TARGET_MB:g} MB)",
        f"B: spawn -> /readyz {fmt(b.get('ready_s'))} s with {fmt(b.get('users'))} users, "
        f"{fmt(b.get('snapshots_in_stream'))} snapshots ({fmt(b.get('snapshot_chunks_in_stream'))}"
        f" chunks) in the stream "
        f"(its registry_ready: {fmt(b_event.get('seconds'))} s, from snapshot "
        f"{fmt(b_event.get('from_snapshot'))}), RSS {fmt((b.get('memory_mb') or {}).get('VmRSS'))}"
        f" MB -> {verdict(t['start']['met'])} (<= {START_TARGET_S:g} s)",
        "B: log lines at (s after spawn): "
        + ", ".join(f"{k} {v}" for k, v in (b.get("log_lines_at_s_after_spawn") or {}).items())
        + "; callback-log messages after its snapshot: "
        + fmt(b.get("log_replayed_after_snapshot")),
    ]
    breakdown = data.get("memory_breakdown")
    if breakdown and "top" in breakdown:
        lines.append(f"memory breakdown (tracemalloc, {breakdown.get('users')} users through "
                     f"Pairing.apply): {breakdown.get('traced_mb')} MB traced, RSS "
                     f"{breakdown.get('rss_mb')} MB")
        for row in breakdown["top"][:8]:
            lines.append(f"  {row['mb']:>8.1f} MB  {row['where']}")
    lines += [f"check: {name}: {'yes' if good else 'NO'}" for name, good in data["checks"].items()]
    if data["failure"]:
        lines.append(f"FAILED: {data['failure']}")
    return "\n".join(lines)
