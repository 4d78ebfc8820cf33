"""The wide-work gate: weighted admission within a budget, in arrival order."""

from __future__ import annotations

import asyncio

from worker.services.admission import Room


async def one_turn() -> None:
    """Let every task that is ready run until it next waits, before this one goes on."""
    # The loop runs ready callbacks in FIFO order, so tasks started (or woken) before this
    # call have taken their step when it returns.
    await asyncio.sleep(0)  # one event-loop turn, not a wait on time


async def test_work_within_the_budget_enters_at_once_and_the_rest_waits_in_order() -> None:
    """What fits enters; later work waits, and is admitted in arrival order as room frees."""
    room = Room(10)
    assert await room.enter(6) == 6
    second = asyncio.ensure_future(room.enter(6))
    third = asyncio.ensure_future(room.enter(1))  # would fit, but must not overtake
    await one_turn()
    assert (second.done(), third.done(), room.used) == (False, False, 6)
    room.leave(6)
    await one_turn()
    assert (second.result(), third.result(), room.used) == (6, 1, 7)


async def test_work_larger_than_the_budget_takes_all_of_it() -> None:
    """A single piece of work wider than the budget still runs, alone."""
    room = Room(10)
    assert await room.enter(50_000) == 10
    waiting = asyncio.ensure_future(room.enter(1))
    await one_turn()
    assert not waiting.done()
    room.leave(10)
    assert await waiting == 1


async def test_a_cancelled_wait_gives_nothing_away() -> None:
    """Work cancelled while it waits leaves the budget as it was and blocks no one."""
    room = Room(4)
    await room.enter(4)
    cancelled = asyncio.ensure_future(room.enter(3))
    behind = asyncio.ensure_future(room.enter(2))
    await one_turn()
    cancelled.cancel()
    await one_turn()
    room.leave(4)
    assert await behind == 2
    assert room.used == 2
