"""Scenarios ``registry`` and ``registry_after`` (bench/README.md)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import secrets
import time
from typing import Any, Final

import aio_pika
import msgspec

from bench.fastpub import FastPublisher
from bench.figures import check_lines, mb, metric, recorded_env, render, rounded
from bench.harness import Harness, Outcome
from bench.procs import BenchError, Proc, free_port
from worker.config import Settings
from worker.contract import topology

FULL: Final = 1_000_000
QUICK: Final = 50_000
SNAPSHOT_INTERVAL_S: Final = 20
RSS_TARGET_MB: Final = 300.0
START_TARGET_S: Final = 60.0
LAN_ALLOW: Final = "10.0.0.0/8"
_encode = msgspec.json.Encoder().encode


def callback_body(i: int, key: bytes) -> bytes:
    """Return user i's callback, in the shape the Lovense Remote app posts."""
    uid, toy = f"reg-{i:07d}", f"{i:012x}"
    a, d = divmod(i, 254)
    return _encode({
        "uid": uid, "appVersion": "7.76.0",
        "toys": {toy: {"nickName": "", "name": "nora", "id": toy, "status": 1}},
        "wssPort": "34568", "httpPort": "34567", "wsPort": "34567", "appType": "remote",
        "domain": f"10-{(a >> 8) & 255}-{a & 255}-{d + 1}.lovense.club",
        "utoken": hmac.new(key, uid.encode(), hashlib.sha256).hexdigest(),
        "httpsPort": str(30_000 + i % 30_000), "version": "", "platform": "android"})


async def reset_streams(url: str, *, redeclare: int | None) -> dict[str, int | None]:
    """Delete the callback log and the snapshot stream (refusing if consumed), then redeclare
    the log for a worker whose LOVENSE_LAN_TTL_S is ``redeclare`` (if given); return counts."""
    counts: dict[str, int | None] = {}
    connection = await aio_pika.connect(url, client_properties={"connection_name": "bench-prep"})
    async with connection:
        for name in (topology.CALLBACKS_LOG, topology.SNAPSHOTS):
            channel = await connection.channel()
            try:
                declared = (await channel.declare_queue(name, passive=True)).declaration_result
            except aio_pika.exceptions.ChannelClosed:
                counts[name] = None
                continue
            if declared.consumer_count:
                raise BenchError(f"{name} has {declared.consumer_count} consumer(s): a worker "
                                 "runs on this vhost; stop it and run again")
            counts[name] = declared.message_count
            await channel.queue_delete(name)
        if redeclare is not None:
            arguments = topology.callbacks_log_arguments(redeclare)
            await (await connection.channel()).declare_queue(topology.CALLBACKS_LOG, durable=True,
                                                               arguments=arguments)
    return counts


async def _users(proc: Proc) -> int | None:
    value = metric(await proc.metrics(), "lovense_worker_registry_users")
    return None if value is None else int(value)


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
    rate = None if first is None or full is None or full <= first else round(users / (full - first))
    return {"first_user_s": first, "all_users_s": full, "messages_per_s": rate}


async def _snapshot(a: Proc, users: int, last_offset: int) -> dict[str, Any]:
    """Wait for A's snapshot saying every user whose log offset reaches ``last_offset``."""
    snapshot: dict[str, Any] | None = None
    t0 = time.monotonic()
    while snapshot is None and time.monotonic() < t0 + 2 * SNAPSHOT_INTERVAL_S + 300 and a.alive:
        snapshot = next((e for e in a.events("registry_snapshot_written") if e.get("users") == users
                         and int(e.get("log_offset", -1)) >= last_offset), None)
        await asyncio.sleep(0.5)
    return {"snapshot_event": snapshot, "snapshot_wait_s": round(time.monotonic() - t0, 1)}


async def _worker_b(h: Harness, env: dict[str, str], users: int,
                    last_offset: int, a_snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Start worker B on A's log and snapshots; return its start-up figures."""
    b = await h.worker("registry-B", {**env, "LOVENSE_METRICS_PORT": str(free_port())}, wait=False)
    failure = None
    try:
        await b.wait_ready(timeout=max(300.0, START_TARGET_S * 5), poll_s=0.05)
    except BenchError as exc:
        failure = f"B: {exc}"
    b_users = await _users(b)
    return {
        "log_replayed_after_snapshot": None if not a_snapshots
            else last_offset - int(a_snapshots[-1].get("log_offset", 0)),
        "ready_s": rounded(b.ready_s, 2), "users": b_users,
        "registry_ready_event": b.event("registry_ready"), "cpu_s": rounded(b.cpu(), 2),
        "memory_mb": mb(b.memory_kb()), "log_file": str(b.log), "exit_code": await h.stop(b),
        "failure": failure,
    }


async def run_mode(a_start: str, h: Harness) -> Outcome:
    """Run the scenario with worker A started ``during`` or ``after`` publishing."""
    users, during = h.opts.size(FULL, QUICK), a_start == "during"
    secret = secrets.token_hex(16)
    env = h.worker_env(None, log_level="info", extra={
        "LOVENSE_LAN_ALLOW": LAN_ALLOW, "LOVENSE_UTOKEN_SECRET": secret,
        "LOVENSE_SNAPSHOT_INTERVAL_S": str(SNAPSHOT_INTERVAL_S)})
    before = await reset_streams(h.opts.amqp_url, redeclare=Settings.from_env(env).lan_ttl_s)
    published: dict[str, float] = {}

    async def publish() -> None:
        began = time.monotonic()
        async with FastPublisher(h.opts.amqp_url, name="bench-registry") as publisher:
            await publisher.publish((topology.CALLBACKS_LOG, callback_body(i, secret.encode()),
                                     None) for i in range(users))
            await publisher.wait_confirmed(timeout=600)
        published["s"] = time.monotonic() - began
        print(f"  published {users} callbacks in {published['s']:.1f} s "
              f"({users / published['s']:.0f}/s)", flush=True)

    samples: list[tuple[float, int]] = []
    if not during:
        await publish()
    a = await h.worker("registry-A", env, wait=during, ready_timeout=120)
    cpu0 = a.cpu()
    publishing = asyncio.ensure_future(publish() if during else asyncio.sleep(0))
    try:
        reason = await _follow(a, users, h.opts.timeout_s or 1200.0, samples)
        await publishing
    finally:
        publishing.cancel()
    cpu_replay = None if cpu0 is None or (cpu1 := a.cpu()) is None else cpu1 - cpu0
    a_memory_all = a.memory_kb()
    print(f"  A has {samples[-1] if samples else '?'} (s after spawn, users); waiting for its "
          "snapshot", flush=True)
    # The stream is new, so its offsets start at 0; A appends one marker at start-up
    # (before the callbacks when it starts first, after them otherwise).
    last_offset = users if during else users - 1
    snap = dict.fromkeys(("snapshot_event", "snapshot_wait_s"))
    if reason is None:
        snap = await _snapshot(a, users, last_offset)
        if snap["snapshot_event"] is None:
            reason = (f"A wrote no snapshot covering log offset {last_offset} within "
                      f"{snap['snapshot_wait_s']} s")
    a_memory = a.memory_kb()
    a_snapshots = a.events("registry_snapshot_written")
    a_code = await h.stop(a)
    b_figures: dict[str, Any] = {}
    if reason is None:
        b_figures = await _worker_b(h, env, users, last_offset, a_snapshots)
        reason = b_figures.pop("failure")
    after = await reset_streams(h.opts.amqp_url, redeclare=None)
    rss, hwm = mb(a_memory).get("VmRSS"), mb(a_memory).get("VmHWM")
    rss_met = None if rss is None or snap["snapshot_event"] is None else (
        rss <= RSS_TARGET_MB and (hwm or 0) <= RSS_TARGET_MB)
    start_met = None if b_figures.get("ready_s") is None else (
        b_figures["ready_s"] <= START_TARGET_S and b_figures.get("users") == users)
    checks = {
        "A replayed every user": bool(samples) and samples[-1][1] == users,
        "A wrote a snapshot covering every user": snap["snapshot_event"] is not None,
        "B became ready with every user": b_figures.get("users") == users,
        "workers exited 0": a_code == 0 and b_figures.get("exit_code", 0) == 0,
        "no run failure": reason is None,
    }
    data: dict[str, Any] = {
        "users": users, "published": "straight to the lovense.callbacks.log stream (validating "
        "queue bypassed)", "a_started": f"{a_start} publishing", "streams_before": before,
        "publish_s": rounded(published.get("s"), 1),
        "publish_per_s": round(users / published["s"]) if published.get("s") else None,
        "worker_env": recorded_env(env),
        "a": {
            "ready_s": rounded(a.ready_s, 2), "registry_ready_event": a.event("registry_ready"),
            "replay": _replay_rate(samples, users), "replay_cpu_s": rounded(cpu_replay, 1),
            "replay_cpu_us_per_message": None if cpu_replay is None
                else round(cpu_replay * 1e6 / users, 1),
            "users_samples": samples, "memory_mb_with_all_users": mb(a_memory_all), **snap,
            "last_callback_offset": last_offset, "snapshots_written": len(a_snapshots),
            "memory_mb": {"VmRSS": rss, "VmHWM": hwm},
            "bytes_per_user_rss": None if rss is None else round(rss * 1024 * 1024 / users),
            "exit_code": a_code, "log_file": str(a.log),
        },
        "b": {**b_figures, "snapshots_in_stream": len(a_snapshots),
              "snapshot_chunks_in_stream": sum(int(e.get("chunks", 0)) for e in a_snapshots)},
        "streams_after": after, "failure": reason, "checks": checks,
        "target": {
            "rss": {"what": f"A's VmRSS and VmHWM <= {RSS_TARGET_MB:g} MB with {users} users",
                    "met": rss_met},
            "start": {"what": f"B: spawn -> /readyz 200 <= {START_TARGET_S:g} s, with every "
                              "user", "met": start_met},
            "met": bool(rss_met and start_met),
        },
    }
    return Outcome("registry" if during else "registry_after", data, table(data),
                   all(checks.values()))


run = functools.partial(run_mode, "during")
run_after = functools.partial(run_mode, "after")


def table(data: dict[str, Any]) -> str:
    lines = render(
        data,
        "published {users} callbacks in {publish_s} s ({publish_per_s}/s), straight to the "
        "log; A started {a_started}",
        "A: ready {a[ready_s]} s after spawn; log applied at {a[replay][messages_per_s]}/s "
        "(users > 0 at {a[replay][first_user_s]} s, all at {a[replay][all_users_s]} s), "
        "{a[replay_cpu_us_per_message]} µs CPU/message",
        "A: snapshot covering log offset {a[snapshot_event][log_offset]} (every user) in "
        "{a[snapshot_event][chunks]} chunks {a[snapshot_wait_s]} s after it had every user; RSS "
        "{a[memory_mb][VmRSS]} MB, peak {a[memory_mb][VmHWM]} MB (before the snapshot: "
        "{a[memory_mb_with_all_users][VmRSS]} MB), {a[bytes_per_user_rss]} B/user -> "
        f"{{target[rss][met]!v}} (<= {RSS_TARGET_MB:g} MB)",
        "B: spawn -> /readyz {b[ready_s]} s with {b[users]} users, {b[snapshots_in_stream]} "
        "snapshots ({b[snapshot_chunks_in_stream]} chunks) in the stream (its registry_ready: "
        "{b[registry_ready_event][seconds]} s, from snapshot "
        "{b[registry_ready_event][from_snapshot]}), RSS {b[memory_mb][VmRSS]} MB -> "
        f"{{target[start][met]!v}} (<= {START_TARGET_S:g} s)",
        "B: callback-log messages after its snapshot: {b[log_replayed_after_snapshot]}")
    return "\n".join(lines + check_lines(data))
