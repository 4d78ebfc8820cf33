"""Per-endpoint circuit breakers for the LAN route: stop calling a dead app for a while.

Pure, on an injected clock (seconds). After ``failures`` calls in a row that
provably never reached an app (refused, TLS failure, connect timeout), its
circuit opens: commands skip the LAN for ``cooldown_s`` (falling back to the
server in ``auto`` mode). Then one trial call is let through (half-open); its
success closes the circuit, its failure opens it again.

Memory is bounded: a closed circuit untouched for longer than the cool-down is
forgotten when the next failure is recorded, and beyond ``max_circuits`` the
circuit touched longest ago goes. Closed and open circuits are kept apart, each
in touch order, so every operation, :meth:`Breakers.open_count` included, is O(1)
(amortised).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Literal

State = Literal["closed", "open", "half-open"]


@dataclass(slots=True)
class _Circuit:
    failures: int = 0
    opened_at: float | None = None
    trial: bool = False
    #: When and in which order (ties on a coarse clock) the circuit was last touched.
    touched_at: float = 0.0
    touch: int = 0


class Breakers:
    """One circuit per endpoint, keyed by ``ip:port``."""

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float],
                 *, max_circuits: int = 100_000) -> None:
        if max_circuits < 1:
            raise ValueError(f"max_circuits must be at least 1, not {max_circuits}")
        self._threshold = failures
        self._cooldown = cooldown_s
        self._clock = clock
        self._max = max_circuits
        self._touches = count(1)
        #: Circuits with failures but not open, and open or half-open ones (opened_at set).
        self._closed: OrderedDict[str, _Circuit] = OrderedDict()
        self._open: OrderedDict[str, _Circuit] = OrderedDict()

    def __len__(self) -> int:
        """Return how many circuits are remembered."""
        return len(self._closed) + len(self._open)

    def state(self, endpoint: str) -> State:
        """Return the circuit's state now."""
        circuit = self._open.get(endpoint)
        if circuit is None or circuit.opened_at is None:
            return "closed"
        if self._clock() - circuit.opened_at >= self._cooldown:
            return "half-open"
        return "open"

    def allow(self, endpoint: str) -> bool:
        """Return whether a call may go to this endpoint now (taking the half-open trial)."""
        state = self.state(endpoint)
        self._touch(endpoint)
        if state == "closed":
            return True
        if state == "half-open":
            circuit = self._open[endpoint]
            if not circuit.trial:
                circuit.trial = True
                return True
        return False

    def success(self, endpoint: str) -> bool:
        """Record a call that reached the app: the circuit closes; return whether it was open."""
        self._closed.pop(endpoint, None)
        return self._open.pop(endpoint, None) is not None

    def failure(self, endpoint: str) -> bool:
        """Record a call that never reached the app; return whether the circuit just opened."""
        circuit = self._touch(endpoint)
        if circuit is None:
            circuit = self._closed[endpoint] = _Circuit(
                touched_at=self._clock(), touch=next(self._touches))
        circuit.failures += 1
        was_open = circuit.opened_at is not None
        opened = False
        if circuit.trial or circuit.failures >= self._threshold:
            circuit.opened_at = self._clock()
            circuit.trial = False
            if not was_open:
                del self._closed[endpoint]
                self._open[endpoint] = circuit
                opened = True
        self._forget()
        return opened

    def open_count(self) -> int:
        """Return how many circuits are open or half-open."""
        return len(self._open)

    def _touch(self, endpoint: str) -> _Circuit | None:
        """Mark a known circuit as used now (last in its order) and return it."""
        for circuits in (self._open, self._closed):
            circuit = circuits.get(endpoint)
            if circuit is not None:
                circuits.move_to_end(endpoint)
                circuit.touched_at = self._clock()
                circuit.touch = next(self._touches)
                return circuit
        return None

    def _forget(self) -> None:
        """Drop idle closed circuits, then the least recently touched beyond the bound."""
        now = self._clock()
        while self._closed:
            oldest = next(iter(self._closed.values()))
            if now - oldest.touched_at <= self._cooldown:
                break
            self._closed.popitem(last=False)
        while len(self) > self._max:
            closed = next(iter(self._closed.values()), None)
            opened = next(iter(self._open.values()), None)
            if opened is None or (closed is not None and closed.touch < opened.touch):
                self._closed.popitem(last=False)
            else:
                self._open.popitem(last=False)
