"""Stop watermarks: what each user's marks cover, merging, budget, and the hour they keep."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.watermarks import MARK_BYTES, MARKS_PER_UID, Mark, Watermarks


def test_a_mark_covers_its_toys_and_every_toy_selection_that_overlaps() -> None:
    """A Stop for toy t1 covers jobs for t1 and for every toy, not jobs for t2 only."""
    marks = Watermarks()
    marks.raise_mark("u", Mark(10.0, "s1", frozenset({"t1"})))
    assert marks.covering("u", ("t1",)) == (10.0, "s1")
    assert marks.covering("u", None) == (10.0, "s1")
    assert marks.covering("u", ("t2",)) is None
    assert marks.covering("other", None) is None


def test_the_latest_covering_mark_wins() -> None:
    """Of several Stops covering a job, the latest one is its watermark."""
    marks = Watermarks()
    marks.raise_mark("u", Mark(10.0, "all", None))
    marks.raise_mark("u", Mark(20.0, "t1", frozenset({"t1"})))
    assert marks.covering("u", ("t1",)) == (20.0, "t1")
    assert marks.covering("u", ("t2",)) == (10.0, "all")


def test_a_later_stop_for_every_toy_replaces_the_marks_it_covers() -> None:
    """A Stop for every toy leaves one mark: the earlier per-toy marks are covered by it."""
    marks = Watermarks()
    for n in range(5):
        marks.raise_mark("u", Mark(float(n), f"s{n}", frozenset({f"t{n}"})))
    marks.raise_mark("u", Mark(10.0, "all", None))
    assert len(marks) == 1
    assert marks.covering("u", ("t3",)) == (10.0, "all")


def test_many_toy_marks_of_one_user_merge_into_one_that_covers_them_all() -> None:
    """Past MARKS_PER_UID marks, a user's marks merge into one for every toy at the latest time."""
    marks = Watermarks()
    for n in range(MARKS_PER_UID + 1):
        marks.raise_mark("u", Mark(float(n), f"s{n}", frozenset({f"t{n}"})))
    assert len(marks) == 1
    assert marks.covering("u", ("t0",)) == (float(MARKS_PER_UID), f"s{MARKS_PER_UID}")
    assert marks.covering("u", ("never-named",)) == (float(MARKS_PER_UID), f"s{MARKS_PER_UID}")


def test_over_budget_users_stopped_longest_ago_are_merged_first() -> None:
    """Over the byte budget, the oldest users' marks merge; the newest user's stay apart."""
    marks = Watermarks(budget_bytes=12 * MARK_BYTES)
    for user in range(4):
        for n in range(4):
            marks.raise_mark(f"u{user}", Mark(float(n), f"s{n}", frozenset({f"t{n}"})))
    assert len(marks) == 10  # u0 and u1 merged to one mark each, u2 and u3 keep four
    assert marks.covering("u0", ("other",)) == (3.0, "s3")  # merged: covers every toy
    assert marks.covering("u3", ("other",)) is None  # the newest user kept its own marks


def test_one_mark_per_user_is_never_dropped_for_the_budget() -> None:
    """However far over budget, no user's Stop is forgotten before it expires."""
    marks = Watermarks(budget_bytes=10 * MARK_BYTES)
    for user in range(1_000):
        marks.raise_mark(f"u{user}", Mark(5.0, "s", None))
    assert len(marks) == 1_000
    assert all(marks.covering(f"u{user}", None) == (5.0, "s") for user in range(1_000))
    marks.expire(6.0)
    assert len(marks) == 0 and marks.covering("u1", None) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]),
                          st.one_of(st.none(), st.frozensets(st.sampled_from(["t1", "t2", "t3"]),
                                                             min_size=1)),
                          st.integers(0, 100)), max_size=60),
       st.integers(1, 30))
def test_merging_never_covers_less_than_the_stops_raised(
    raised: list[tuple[str, frozenset[str] | None, int]], budget_marks: int,
) -> None:
    """Whatever the budget, every job a raised Stop covers is still covered at least as late."""
    marks = Watermarks(budget_bytes=budget_marks * MARK_BYTES)
    for uid, toys, ms in raised:
        marks.raise_mark(uid, Mark(float(ms), f"s{ms}", toys))
    for uid, toys, ms in raised:
        for probe in (None, ("t1",), ("t2",), ("t3",), ("t1", "t2")):
            if toys is None or probe is None or not toys.isdisjoint(probe):
                found = marks.covering(uid, probe)
                assert found is not None and found[0] >= ms
