"""Batching: identical commands within the window share a call of at most N users."""

from __future__ import annotations

from worker.core.batching import Batcher


class Clock:
    ms = 0.0

    def __call__(self) -> float:
        return self.ms


def test_identical_items_within_window_form_one_group() -> None:
    """Items with one signature inside the window are flushed together when it ends."""
    clock = Clock()
    batcher: Batcher[str] = Batcher(20, 50, clock)
    assert batcher.add(b"vibrate", "a") is None
    clock.ms = 10
    assert batcher.add(b"vibrate", "b") is None
    assert batcher.add(b"preset", "c") is None
    assert batcher.due() == ([], 20)
    clock.ms = 20
    assert batcher.due() == ([["a", "b"]], 30)
    clock.ms = 30
    assert batcher.due() == ([["c"]], None)


def test_group_is_flushed_when_full() -> None:
    """A group that reaches the most users per call is returned at once."""
    batcher: Batcher[int] = Batcher(20, 3, Clock())
    assert [batcher.add("s", i) for i in range(4)] == [None, None, [0, 1, 2], None]
    assert len(batcher) == 1


def test_zero_window_turns_merging_off() -> None:
    """With a window of 0 every item is its own call."""
    batcher: Batcher[str] = Batcher(0, 50, Clock())
    assert batcher.add("s", "a") == ["a"]
