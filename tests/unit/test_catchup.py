"""Replays wait while they move and give up once they stall."""

from __future__ import annotations

import asyncio

import pytest

from worker.services.catchup import Replay, ReplayStalled, wait_caught_up


async def test_a_slow_replay_that_keeps_moving_is_waited_for() -> None:
    """Longer than the stall limit in all, but never still for that long: no error."""
    done, taken = asyncio.Event(), [0]

    async def replay() -> None:
        for _ in range(10):
            await asyncio.sleep(0.05)  # deliberate timing: a replay slower than stall_s in all
            taken[0] += 1
        done.set()

    task = asyncio.create_task(replay())
    await wait_caught_up(done, lambda: taken[0], "test log", stall_s=0.25)
    await task
    assert taken[0] == 10


async def test_a_stalled_replay_raises_with_what_and_how_far() -> None:
    """No message for the stall limit: ReplayStalled names the stream and the count."""
    done, taken = asyncio.Event(), [0]

    async def replay() -> None:
        await asyncio.sleep(0.02)  # deliberate timing: moves once, early, then stalls
        taken[0] = 3  # then nothing more

    task = asyncio.create_task(replay())
    with pytest.raises(ReplayStalled, match=r"test log: no message for 0 s .*\(3 taken\)"):
        await wait_caught_up(done, lambda: taken[0], "test log", stall_s=0.1)
    await task


class _Message:
    def __init__(self, tag: int, acks: list[tuple[int, bool]]) -> None:
        self.tag, self._acks = tag, acks

    async def ack(self, multiple: bool = False) -> None:
        self._acks.append((self.tag, multiple))


async def test_replay_acks_once_per_quarter_window_and_at_the_end() -> None:
    """Credit goes back in batches (multiple=True), and the last message is always acked."""
    acks: list[tuple[int, bool]] = []
    replay = Replay(prefetch=8)
    for tag in range(1, 8):
        await replay.took(_Message(tag, acks), last=tag == 7)
    assert acks == [(2, True), (4, True), (6, True), (7, True)]
    assert replay.taken == 7
