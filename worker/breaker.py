"""Per-endpoint circuit breakers for the LAN route: stop calling a dead app for a while.

Pure, on an injected clock (seconds). After ``failures`` calls in a row that
provably never reached an app (refused, TLS failure, connect timeout), its
circuit opens: commands skip the LAN for ``cooldown_s`` (falling back to the
server in ``auto`` mode). Then one trial call is let through (half-open); its
success closes the circuit, its failure opens it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half-open"]


@dataclass(slots=True)
class _Circuit:
    failures: int = 0
    opened_at: float | None = None
    trial: bool = False


class Breakers:
    """One circuit per endpoint, keyed by ``ip:port``."""

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float]) -> None:
        self._threshold = failures
        self._cooldown = cooldown_s
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}

    def state(self, endpoint: str) -> State:
        """Return the circuit's state now."""
        circuit = self._circuits.get(endpoint)
        if circuit is None or circuit.opened_at is None:
            return "closed"
        if self._clock() - circuit.opened_at >= self._cooldown:
            return "half-open"
        return "open"

    def allow(self, endpoint: str) -> bool:
        """Return whether a call may go to this endpoint now (taking the half-open trial)."""
        state = self.state(endpoint)
        if state == "closed":
            return True
        if state == "half-open":
            circuit = self._circuits[endpoint]
            if not circuit.trial:
                circuit.trial = True
                return True
        return False

    def success(self, endpoint: str) -> None:
        """Record a call that reached the app: the circuit closes."""
        self._circuits.pop(endpoint, None)

    def failure(self, endpoint: str) -> bool:
        """Record a call that never reached the app; return whether the circuit just opened."""
        circuit = self._circuits.setdefault(endpoint, _Circuit())
        circuit.failures += 1
        was_open = circuit.opened_at is not None
        if circuit.trial or circuit.failures >= self._threshold:
            circuit.opened_at = self._clock()
            circuit.trial = False
            return not was_open
        return False

    def open_count(self) -> int:
        """Return how many circuits are open or half-open."""
        return sum(1 for c in self._circuits.values() if c.opened_at is not None)
