"""Waiting for a stream replay to catch up: as long as it moves, never longer once it stalls.

A replay's length depends on how much the stream holds (a million callbacks with
no snapshot take minutes), so a fixed timeout either kills a healthy start-up or
hides a stuck one. :func:`wait_caught_up` waits while the replay makes progress
and gives up only after ``stall_s`` seconds without a single message.

:class:`Replay` is what every stream follower of the worker does per message:
count it, and ack once per quarter of the prefetch window (``multiple=True``):
a stream's acks only hand back credit, and a stream loses nothing unacked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, Protocol

#: A replay that takes no message for this long is stuck (the broker, not the stream's size).
STALL_S: Final = 60.0


class ReplayStalled(TimeoutError):
    """A stream replay took no message for ``stall_s`` seconds before catching up."""


async def wait_caught_up(done: asyncio.Event, progress: Callable[[], int], what: str,
                         stall_s: float = STALL_S) -> None:
    """Wait for ``done`` while ``progress()`` (messages taken so far) keeps growing."""
    seen = progress()
    while True:
        try:
            await asyncio.wait_for(done.wait(), stall_s)
            return
        except TimeoutError:
            now = progress()
            if now == seen:
                raise ReplayStalled(
                    f"{what}: no message for {stall_s:.0f} s before catching up "
                    f"({now} taken); is RabbitMQ overloaded or the stream unreadable?"
                ) from None
            seen = now


class Ackable(Protocol):
    """A delivered message (aio-pika's ``AbstractIncomingMessage`` is one)."""

    async def ack(self, multiple: bool = False) -> None: ...


class Replay:
    """Count the messages a stream follower takes and hand back credit in batches."""

    def __init__(self, prefetch: int) -> None:
        self.taken = 0
        self._ack_every = max(1, prefetch // 4)

    async def took(self, message: Ackable, *, last: bool = False) -> None:
        """Count one message; ack it and everything before it every quarter window, or now."""
        self.taken += 1
        if last or self.taken % self._ack_every == 0:
            await message.ack(multiple=True)

    async def wait(self, done: asyncio.Event, what: str, stall_s: float = STALL_S) -> None:
        """Wait for ``done`` while messages keep coming (:func:`wait_caught_up`)."""
        await wait_caught_up(done, lambda: self.taken, what, stall_s)
