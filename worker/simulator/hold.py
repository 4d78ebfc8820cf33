"""Holding simulated requests at the door: a way for a test to get a call "in flight".

A :class:`Hold` keeps every request that reaches the simulator (server API and
apps alike, ``/_sim/*`` controls excepted) waiting before it is handled,
recorded or answered, until :meth:`Hold.release`. A test waits for the calls it
needs in flight with :meth:`Hold.arrived` instead of racing a delay::

    gate = sim.hold()
    await producer.publish(first)
    await gate.arrived(1)       # the worker's call is now in flight, unanswered
    ...                         # publish what must meet it there, wait for its effect
    gate.release()              # held requests go on in arrival order; later ones pass
"""

from __future__ import annotations

import asyncio


class Hold:
    """Keep arriving requests waiting until released; count them as they arrive."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._changed = asyncio.Event()
        self._arrivals = 0

    @property
    def arrivals(self) -> int:
        """Return how many requests reached the door since the hold began."""
        return self._arrivals

    @property
    def released(self) -> bool:
        """Tell whether :meth:`release` was called."""
        return self._open.is_set()

    async def arrived(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until ``count`` requests have arrived; TimeoutError after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while self._arrivals < count:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"hold: {self._arrivals} of {count} requests arrived within {timeout} s"
            ) from None

    def release(self) -> None:
        """Let every held request go on, in arrival order; later requests are not held."""
        self._open.set()

    async def enter(self) -> None:
        """Count one request and keep it waiting until the hold is released."""
        self._arrivals += 1
        self._changed.set()
        await self._open.wait()
