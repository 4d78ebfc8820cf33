"""What every scenario takes and gives back; scenarios are registered in ``bench.__main__``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import Procs


@dataclass(frozen=True)
class Options:
    """What a scenario is asked to do (from the command line)."""

    amqp_url: str
    #: ``--commands``: the scenario's main size (commands, uids, backlog, users); None = its own.
    commands: int | None
    #: ``--delays``: simulator delays in ms; None = the scenario's own.
    delays: tuple[int, ...] | None
    #: ``--timeout``: seconds to wait for one run's results; None = the scenario's own.
    timeout_s: float | None
    log_dir: Path
    profile: bool = False
    #: ``--repeat``: rounds per delay; None = the scenario's own.
    repeat: int | None = None
    #: Extra LOVENSE_* variables for the worker (``--worker-env``), e.g. batching off.
    worker_env: tuple[tuple[str, str], ...] = ()
    quick: bool = False
    #: ``--rate``: flood's publish rate (commands/s); None = its own (1,000).
    rate: float | None = None
    #: ``--gc-stats``: run workers under ``python -m bench.gcstats`` (collector timed).
    gc_stats: bool = False

    def size(self, full: int, quick: int) -> int:
        """Return the scenario's main size: ``--commands``, else ``quick`` or ``full``."""
        return self.commands or (quick if self.quick else full)

    def rounds_or(self, default: int) -> int:
        """Return ``--repeat`` if given, else 1 with ``--quick``, else the scenario's own."""
        if self.repeat is not None:
            return self.repeat
        return 1 if self.quick else default

    def delays_or(self, default: tuple[int, ...]) -> tuple[int, ...]:
        """Return ``--delays`` if given, else the scenario's own delays."""
        return self.delays or default

    def timeout_or(self, default: float) -> float:
        """Return ``--timeout`` if given, else the scenario's own timeout."""
        return self.timeout_s or default


@dataclass
class Outcome:
    """A scenario's figures for results.json (under ``key``), its table, and whether it passed."""

    key: str
    data: dict[str, Any]
    table: str
    ok: bool


Scenario = Callable[[Procs, Options], Awaitable[Outcome]]
