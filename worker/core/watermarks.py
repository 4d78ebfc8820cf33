"""Stop watermarks: per user, the latest Stop for each set of toys, within a memory budget.

Pure, no clock of its own. A watermark is a Stop's publish time: every command
for an overlapping toy published no later than it is cancelled. A Stop's mark
(time, id, toys) is one object shared by all of its users, so a Stop for 10,000
users and 32 toys costs 10,000 list slots, not 320,000 marks: a burst of wide
Stops leaves few small objects behind to pin the memory it passed through.

Over its budget, a user's marks merge into one mark for every toy at the latest
of their times: the merged mark covers at least what each covered (a Stop wins
more, never less). No mark is dropped before the caller expires it (the Stop
log's hour): a mark is only ever replaced by one that covers it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

#: What a mark costs in memory, about (the object, its list slot, a share of the dict).
MARK_BYTES: Final = 120
#: A user with more marks than this has them merged into one, whatever the budget.
MARKS_PER_UID: Final = 8


@dataclass(eq=False, slots=True)
class Mark:
    """One Stop as a watermark: its publish time, id and toys (None: every toy).

    Shared by every user the Stop names, so never changed once made.
    """

    ms: float
    ident: str
    toys: frozenset[str] | None
    #: The same Stop for every toy, made once when users' marks merge into it.
    _everything: Mark | None = None

    def everything(self) -> Mark:
        """Return this Stop's mark widened to every toy (self, when it is one already)."""
        if self.toys is None:
            return self
        if self._everything is None:
            self._everything = Mark(self.ms, self.ident, None)
        return self._everything


def _covers(mark: Mark, toys: Iterable[str] | None) -> bool:
    return mark.toys is None or toys is None or not mark.toys.isdisjoint(toys)


class Watermarks:
    """The Stop marks of every user, merged when a user has many or memory runs short."""

    def __init__(self, budget_bytes: int = 32 * 1024 * 1024) -> None:
        self._budget = max(MARK_BYTES, budget_bytes)
        # Least recently raised first: merging starts with users Stopped longest ago.
        self._by_uid: OrderedDict[str, list[Mark]] = OrderedDict()
        self._count = 0
        self._shrink_above = self._budget

    def __len__(self) -> int:
        """Return how many marks are kept."""
        return self._count

    @property
    def size_bytes(self) -> int:
        """Return the estimated memory the marks take."""
        return self._count * MARK_BYTES

    def raise_mark(self, uid: str, mark: Mark) -> None:
        """Record a Stop's ``mark`` for ``uid`` (the same Mark for every user of one Stop)."""
        marks = self._by_uid.get(uid)
        if marks is None:
            self._by_uid[uid] = [mark]
            self._count += 1
        else:
            self._by_uid.move_to_end(uid)
            self._count -= len(marks)
            marks = self._merge_into(marks, mark)
            if len(marks) > MARKS_PER_UID:
                marks = [_merged(marks)]
            self._by_uid[uid] = marks
            self._count += len(marks)
        if self._count * MARK_BYTES > self._shrink_above:
            self._shrink()

    def covering(self, uid: str, toys: Iterable[str] | None) -> tuple[float, str] | None:
        """Return the latest Stop (publish ms, id) that covers these toys of ``uid``."""
        marks = self._by_uid.get(uid)
        if not marks:
            return None
        best: Mark | None = None
        for mark in marks:
            if (best is None or mark.ms > best.ms) and _covers(mark, toys):
                best = mark
        return None if best is None else (best.ms, best.ident)

    def expire(self, horizon_ms: float) -> None:
        """Drop every mark published before ``horizon_ms``."""
        for uid in list(self._by_uid):
            marks = self._by_uid[uid]
            kept = [m for m in marks if m.ms >= horizon_ms]
            self._count -= len(marks) - len(kept)
            if kept:
                self._by_uid[uid] = kept
            else:
                del self._by_uid[uid]
        self._shrink_above = max(self._budget, min(self._shrink_above,
                                                   self._count * MARK_BYTES + self._budget // 4))

    @staticmethod
    def _merge_into(marks: list[Mark], new: Mark) -> list[Mark]:
        if new.toys is None:
            # A later mark for every toy covers every earlier one.
            marks = [m for m in marks if m.ms > new.ms]
        for index, mark in enumerate(marks):
            if mark.toys == new.toys:
                if new.ms > mark.ms:
                    marks[index] = new
                return marks
        marks.append(new)
        return marks

    def _shrink(self) -> None:
        """Merge users' marks, longest-stopped users first, until well within the budget."""
        target = self._budget * 3 // 4
        for uid, marks in self._by_uid.items():
            if self._count * MARK_BYTES <= target:
                break
            if len(marks) > 1:
                self._by_uid[uid] = [_merged(marks)]
                self._count -= len(marks) - 1
        # When every user is down to one mark, nothing younger than the horizon may go: the
        # next pass waits for a quarter budget more, so passes stay O(1) a mark overall.
        self._shrink_above = max(self._budget, self._count * MARK_BYTES + self._budget // 4)


def _merged(marks: list[Mark]) -> Mark:
    return max(marks, key=lambda m: m.ms).everything()
