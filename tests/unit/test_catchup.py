"""Replays wait while they move and give up once they stall."""

from __future__ import annotations

import asyncio

import pytest

from worker.catchup import ReplayStalled, wait_caught_up


async def test_a_slow_replay_that_keeps_moving_is_waited_for() -> None:
    """Longer than the stall limit in all, but never still for that long: no error."""
    done, taken = asyncio.Event(), [0]

    async def replay() -> None:
        for _ in range(10):
            await asyncio.sleep(0.05)
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
        await asyncio.sleep(0.02)
        taken[0] = 3  # then nothing more

    task = asyncio.create_task(replay())
    with pytest.raises(ReplayStalled, match=r"test log: no message for 0 s .*\(3 taken\)"):
        await wait_caught_up(done, lambda: taken[0], "test log", stall_s=0.1)
    await task
