"""Merging identical commands for different users into one multi-user server call.

Pure, on an injected clock (milliseconds). Items with the same *signature*
(the command's Lovense fields, without the uid) that arrive within the window
form one group; a group is flushed when its window ends or when it reaches the
most users one call may carry. Only commands without a ``toy`` are merged: the
server ignores ``toy`` when ``uid`` lists several users, so every toy would respond.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Group(Generic[T]):
    closes_at: float
    items: list[T] = field(default_factory=list)


class Batcher(Generic[T]):
    """Group items by signature within a time window, up to a size."""

    def __init__(self, window_ms: float, max_size: int, clock: Callable[[], float]) -> None:
        self._window = window_ms
        self._max = max_size
        self._clock = clock
        self._open: dict[Hashable, _Group[T]] = {}

    def __len__(self) -> int:
        return sum(len(g.items) for g in self._open.values())

    def add(self, signature: Hashable, item: T) -> list[T] | None:
        """Add an item; return a full group to send now, if this filled one."""
        if self._window <= 0:
            return [item]
        group = self._open.get(signature)
        if group is None:
            group = self._open[signature] = _Group(self._clock() + self._window)
        group.items.append(item)
        if len(group.items) >= self._max:
            del self._open[signature]
            return group.items
        return None

    def due(self) -> tuple[list[list[T]], float | None]:
        """Return the groups whose window has ended, and when the next one ends."""
        now = self._clock()
        ready = [sig for sig, g in self._open.items() if g.closes_at <= now]
        groups = [self._open.pop(sig).items for sig in ready]
        wake = min((g.closes_at for g in self._open.values()), default=None)
        return groups, wake

    def drain(self) -> list[list[T]]:
        """Return every open group at once (shutdown)."""
        groups = [g.items for g in self._open.values()]
        self._open.clear()
        return groups
