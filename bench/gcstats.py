"""``python -m bench.gcstats ARGS``: ``lovense-worker ARGS`` with its garbage collector timed.

A diagnostic wrapper (``--gc-stats``), not a change to the worker: it registers
a :data:`gc.callbacks` hook that times every collection, runs the worker's own
``worker.cli.main``, and when the worker exits prints one JSON line to stderr
(the child's log): collections and seconds per generation, every collection
of 10 ms or more with its start time (epoch ms), and how many objects the
collector was tracking at the end.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from typing import Any

_stats: dict[int, list[float]] = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
_started: list[float] = [0.0]
#: Collections that took at least this long are listed with when they happened.
LONG_S = 0.01
_long: list[tuple[int, float, int]] = []  # (start, epoch ms; duration ms; generation)


def _hook(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        took = time.perf_counter() - _started[0]
        generation = int(info["generation"])
        entry = _stats[generation]
        entry[0] += 1
        entry[1] += took
        if took >= LONG_S:
            _long.append((int((time.time() - took) * 1000), round(took * 1000, 1), generation))


def report() -> dict[str, Any]:
    """Return the collector's figures so far."""
    return {
        "event": "bench_gc_stats",
        "collections": {str(g): int(v[0]) for g, v in _stats.items()},
        "seconds": {str(g): round(v[1], 3) for g, v in _stats.items()},
        "total_seconds": round(sum(v[1] for v in _stats.values()), 3),
        "tracked_objects": len(gc.get_objects()),
        "thresholds": gc.get_threshold(),
        "long_pauses": _long,
    }


def main() -> int:
    from worker.cli import main as worker_main

    gc.callbacks.append(_hook)
    try:
        return worker_main(sys.argv[1:])
    finally:
        print(json.dumps(report()), file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
