"""Room for wide work: a weighted, first-come first-served admission gate.

A Stop for 10,000 users is 10,000 shares, each a job and, in time, a call. The
runtime lets wide Stops start their calls only while the users they carry fit
in a budget (``LOVENSE_WIDE_STOP_USERS``), so a burst of them cannot hold
hundreds of megabytes at once. Their watermarks do not wait: they are cheap and
applied on arrival.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Room:
    """Admit work by weight within a budget, in arrival order."""

    def __init__(self, budget: int) -> None:
        self._budget = max(1, budget)
        self._used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def used(self) -> int:
        """Return the weight admitted and not yet released."""
        return self._used

    async def enter(self, weight: int) -> int:
        """Wait until ``weight`` fits (all of the budget at most); return what was taken."""
        weight = min(max(1, weight), self._budget)
        if not self._waiting and self._used + weight <= self._budget:
            self._used += weight
            return weight
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (weight, future)
        self._waiting.append(entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.leave(weight)  # admitted just as the wait was cancelled: give it back
            else:
                self._waiting.remove(entry)
            raise
        return weight

    def leave(self, weight: int) -> None:
        """Give back what :meth:`enter` took, admitting whoever now fits, in order."""
        self._used -= weight
        while self._waiting and self._used + self._waiting[0][0] <= self._budget:
            admitted, future = self._waiting.popleft()
            if not future.cancelled():
                self._used += admitted
                future.set_result(None)
