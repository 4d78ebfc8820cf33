"""``python -m bench.registry_memory --users N``: where a registry of N users keeps its bytes.

Builds the same registry the ``registry`` scenario makes worker A build, through
the worker's own code path (``Pairing.apply`` on each callback body, as the log
follower calls it), without RabbitMQ. Prints one JSON line: RSS before and
after, the sizes of the registry's dict, its keys (uids) and its values (compact
blobs), and tracemalloc's top allocation sites on a sample, scaled up.
Nothing of the worker is changed; only its objects are measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import secrets
import sys
import time
import tracemalloc
from typing import Any

from bench.procs import memory_kb
from bench.registry import LAN_ALLOW, callback_body
from worker.config import Settings
from worker.core.registry import Registry
from worker.metrics import Metrics
from worker.services.pairing import Pairing


def _build(users: int, start: int = 0) -> Registry:
    secret = secrets.token_hex(16)
    settings = Settings.from_env(environ={}, overrides={
        "LOVENSE_LAN_ALLOW": LAN_ALLOW, "LOVENSE_UTOKEN_SECRET": secret})
    registry = Registry(settings.lan_ttl_s, time.time)
    pairing = Pairing(settings, registry, Metrics())
    key = secret.encode()
    for i in range(start, start + users):
        pairing.apply(callback_body(i, key), {}, i)
    return registry


def measure(users: int, sample: int) -> dict[str, Any]:
    """Build a registry of ``users`` users; return where its memory is.

    The full registry is built without tracing (RSS, object sizes); tracemalloc's
    allocation sites come from a second registry of ``sample`` users (tracing
    makes each allocation several times slower), scaled to per-user bytes.
    """
    gc.collect()
    rss_before = memory_kb(os.getpid()).get("VmRSS", 0)
    started = time.perf_counter()
    registry = _build(users)
    build_s = time.perf_counter() - started
    gc.collect()
    rss_after = memory_kb(os.getpid()).get("VmRSS", 0)
    entries: dict[str, bytes] = registry._entries  # noqa: SLF001 - measured, not changed
    dict_bytes = sys.getsizeof(entries)
    key_bytes = sum(sys.getsizeof(k) for k in entries)
    blob_bytes = sum(sys.getsizeof(v) for v in entries.values())
    blob_payload = sum(len(v) for v in entries.values())
    n = max(1, len(entries))

    sample = min(sample, users)
    tracemalloc.start(1)
    kept = _build(sample, start=users)
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    traced, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    top = [{"where": str(stat.traceback), "bytes_per_user": round(stat.size / sample, 1),
            "mb": round(stat.size / sample * n / 2**20, 1)}
           for stat in snapshot.statistics("lineno")[:8]]
    del kept
    return {
        "event": "registry_memory",
        "users": len(entries),
        "build_s": round(build_s, 1),
        "apply_us_per_callback": round(build_s * 1e6 / n, 1),
        "rss_mb": round(rss_after / 1024, 1),
        "rss_before_mb": round(rss_before / 1024, 1),
        "rss_growth_mb": round((rss_after - rss_before) / 1024, 1),
        "dict_mb": round(dict_bytes / 2**20, 1),
        "uid_keys_mb": round(key_bytes / 2**20, 1),
        "blobs_mb": round(blob_bytes / 2**20, 1),
        "per_user_bytes": {
            "dict_slot": round(dict_bytes / n), "uid_str": round(key_bytes / n),
            "blob_object": round(blob_bytes / n), "blob_payload": round(blob_payload / n),
        },
        "traced_sample_users": sample,
        "traced_mb": round(traced / sample * n / 2**20, 1),
        "top": top,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.registry_memory")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=50_000,
                        help="users built under tracemalloc for the allocation sites")
    args = parser.parse_args()
    print(json.dumps(measure(args.users, args.sample)), flush=True)


if __name__ == "__main__":
    main()
