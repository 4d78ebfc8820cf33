"""Token buckets: pure, on an injected clock (milliseconds).

A bucket of ``burst`` tokens refills at ``rate`` tokens per second. In any
window of length t it grants at most ``burst + rate × t`` tokens, which is the
invariant the scheduler's property tests pin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: Tokens lost to float rounding in refills; far below anything a rate can mean.
_EPSILON: Final = 1e-9


@dataclass(frozen=True, slots=True)
class Limit:
    """A rate in tokens per second and a burst size."""

    rate: float
    burst: float


class TokenBucket:
    """One bucket; ``take`` either grants a token now or says how long until one exists."""

    __slots__ = ("_rate_per_ms", "_burst", "_tokens", "_at")

    def __init__(self, limit: Limit, now_ms: float) -> None:
        self._rate_per_ms = limit.rate / 1000.0
        self._burst = limit.burst
        self._tokens = limit.burst
        self._at = now_ms

    def _refill(self, now_ms: float) -> None:
        if now_ms > self._at:
            self._tokens = min(self._burst, self._tokens + (now_ms - self._at) * self._rate_per_ms)
            self._at = now_ms

    def wait_ms(self, now_ms: float) -> float:
        """Return how many milliseconds until a token is available (0 when one is)."""
        self._refill(now_ms)
        # Refills add floats: a bucket a hair under one token (0.9999999999999999) has one,
        # else the wait rounds to nothing and the caller is told to come back *now*.
        if self._tokens >= 1.0 - _EPSILON:
            return 0.0
        if self._rate_per_ms <= 0:
            return float("inf")
        return (1.0 - self._tokens) / self._rate_per_ms

    def take(self, now_ms: float) -> bool:
        """Take a token if one is available now; return whether it was taken."""
        if self.wait_ms(now_ms) > 0:
            return False
        self._tokens -= 1.0
        return True

    def full(self, now_ms: float) -> bool:
        """Return whether the bucket is full again (so it can be forgotten)."""
        self._refill(now_ms)
        return self._tokens >= self._burst
