"""The runtime against careless or hostile producers: reused ids, long ids, oversized Stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from tests.unit.test_runtime import (
    GatedUpstream,
    delivery,
    make_runtime,
    settle,
    start,
    until,
    vibrate,
)
from worker.contract.messages import Result
from worker.core.jobs import epoch_ms
from worker.core.results import Delivery, Handled
from worker.services.recent import Recent
from worker.services.runtime import Runtime


@pytest.fixture
async def upstream() -> GatedUpstream:
    return GatedUpstream()


@pytest.fixture
async def runtime(upstream: GatedUpstream) -> AsyncIterator[Runtime]:
    running = await make_runtime(upstream)
    yield running
    await running.close()


async def run(runtime: Runtime, command: dict[str, Any], **kw: Any) -> Handled:
    return await asyncio.wait_for(start(runtime, command, **kw), 5)


async def test_an_id_reused_for_a_different_command_is_invalid(
    runtime: Runtime, upstream: GatedUpstream
) -> None:
    """A second, different command under a finished command's id is refused, never sent."""
    assert (await run(runtime, vibrate("job-1", level=3))).result.status == "ok"
    again = await run(runtime, vibrate("job-1", level=9))
    assert (again.result.status, again.result.message) == (
        "invalid", "id: already used by a different command")
    assert again.dead_letter == "id: already used by a different command"
    assert [c["action"] for c in upstream.calls] == ["Vibrate:3"]


async def test_a_retry_serialised_differently_is_a_repeat(
    runtime: Runtime, upstream: GatedUpstream
) -> None:
    """The same command with its keys in another order and other spacing is answered again."""
    first = await run(runtime, vibrate("job-2", level=4))
    body = b'{ "timeSec":10,  "action":"Vibrate:4","id":"job-2","uid":"u", "command":"Function"}'
    twin = Delivery(body=body, headers={"x-lovense-published-ms": int(epoch_ms())})
    again = await asyncio.wait_for(runtime.handle(twin), 5)
    assert again.result == first.result
    assert len(upstream.calls) == 1


async def test_a_twin_in_flight_with_another_body_is_refused(
    runtime: Runtime, upstream: GatedUpstream
) -> None:
    """While a command runs, a different command reusing its id is invalid at once."""
    upstream.gate.clear()
    first = start(runtime, vibrate("job-3", level=1))
    await settle()
    other = await run(runtime, vibrate("job-3", level=2))
    assert other.result.message == "id: already used by a different command"
    upstream.gate.set()
    assert (await asyncio.wait_for(first, 5)).result.status == "ok"


async def test_a_stop_reusing_a_functions_id_is_sent(
    runtime: Runtime, upstream: GatedUpstream
) -> None:
    """A Stop is never answered from the memory of finished ids: it reaches Lovense."""
    await run(runtime, {**vibrate("job-42", level=20), "timeSec": 0})
    stop = await run(runtime, {"command": "Stop", "uid": "u", "id": "job-42"})
    assert (stop.result.command, stop.result.status) == ("Stop", "ok")
    assert [c["action"] for c in upstream.calls] == ["Vibrate:20", "Stop"]
    redelivered = await run(runtime, {"command": "Stop", "uid": "u", "id": "job-42"})
    assert redelivered.result.status == "ok"
    assert [c["action"] for c in upstream.calls] == ["Vibrate:20", "Stop", "Stop"]
    # The Function's answer is kept: its own redelivery is still a repeat, not a new call.
    assert (await run(runtime, {**vibrate("job-42", level=20), "timeSec": 0})).result.status == "ok"
    assert len(upstream.calls) == 3


@pytest.mark.parametrize(("ident", "fits"), [
    ("a" * 255, True), ("a" * 256, False), ("é" * 127 + "a", True), ("é" * 128, False),
])
async def test_a_command_id_longer_than_255_bytes_is_invalid(
    runtime: Runtime, upstream: GatedUpstream, ident: str, fits: bool
) -> None:
    """An id must fit an AMQP short string (255 UTF-8 bytes); the result carries it unchanged."""
    handled = await run(runtime, vibrate(ident))
    assert handled.result.id == ident
    if fits:
        assert handled.result.status == "ok"
    else:
        assert (handled.result.status, handled.result.message) == (
            "invalid", "id: longer than 255 bytes")
        assert upstream.calls == []


async def test_a_stop_with_a_long_id_runs_under_the_workers_id(
    runtime: Runtime, upstream: GatedUpstream
) -> None:
    """A Stop is never refused for its id: it is sent, and its result keeps the producer's id."""
    ident = "é" * 200
    handled = await run(runtime, {"command": "Stop", "uid": "u", "id": ident})
    assert (handled.result.id, handled.result.status) == (ident, "ok")
    assert "id: longer than 255 bytes: carried out as stop-" in handled.result.message
    assert [c["action"] for c in upstream.calls] == ["Stop"]


async def test_a_stop_naming_too_many_toys_stops_every_toy(
    runtime: Runtime, upstream: GatedUpstream
) -> None:
    """A Stop over the toy cap is carried out for every toy of its user, and says so."""
    toys = [f"t{n}" for n in range(100_000)]
    handled = await run(runtime, {"command": "Stop", "uid": "u", "id": "s", "toy": toys})
    assert handled.result.status == "ok"
    assert "every toy of its users was stopped" in handled.result.message
    assert upstream.calls == [{"token": "tok", "uid": "u", "command": "Function",
                               "action": "Stop", "timeSec": 0, "apiVer": 1}]


async def test_a_command_naming_too_many_toys_is_invalid(
    runtime: Runtime, upstream: GatedUpstream
) -> None:
    """Any other command over the toy cap is refused with what to fix."""
    handled = await run(runtime, vibrate("v", toy=[f"t{n}" for n in range(33)]))
    assert handled.result.message == (
        "toy: at most 32 toy ids per command (LOVENSE_MAX_TOYS), got 33")
    assert upstream.calls == []


async def test_a_publish_stamp_from_the_future_does_not_escape_a_stop(
    runtime: Runtime, upstream: GatedUpstream
) -> None:
    """A command claiming to be published after it arrived counts as published on arrival."""
    upstream.gate.clear()
    busy = start(runtime, vibrate("busy", level=1))
    await settle()
    future = start(runtime, vibrate("future", level=2), published=epoch_ms() + 3_600_000)
    await settle()
    stop = start(runtime, {"command": "Stop", "uid": "u", "id": "stop"})
    await settle()
    upstream.gate.set()
    assert (await asyncio.wait_for(future, 5)).result.status == "superseded"
    await asyncio.wait_for(asyncio.gather(busy, stop), 5)
    assert [c["action"] for c in upstream.calls] == ["Vibrate:1", "Stop"]


async def test_a_multi_user_stop_from_the_log_cancels_for_every_user(
    runtime: Runtime, upstream: GatedUpstream
) -> None:
    """A Stop learned from the Stop log cancels the waiting commands of all of its users."""
    upstream.gate.clear()
    published = epoch_ms() - 1_000
    busy = [start(runtime, vibrate(f"busy-{u}", uid=u), published=published) for u in "abc"]
    await settle()
    waiting = [start(runtime, vibrate(f"wait-{u}", uid=u, level=9), published=published)
               for u in "abc"]
    await settle()
    log_entry = delivery({"command": "Stop", "uids": ["a", "b", "c"], "id": "remote"},
                         published=published + 1)
    assert runtime.remote_stop(log_entry) is True
    assert [(await asyncio.wait_for(t, 5)).result.supersededBy for t in waiting] == [
        "remote", "remote", "remote"]
    upstream.gate.set()
    await asyncio.wait_for(asyncio.gather(*busy), 5)
    await until(lambda: len(upstream.calls) == 6)
    last = {call["uid"]: call["action"] for call in upstream.calls}
    assert last == {"a": "Stop", "b": "Stop", "c": "Stop"}


async def test_stop_log_entries_that_are_not_stops_are_skipped(runtime: Runtime) -> None:
    """The Stop log follower is told which entries it could not apply, instead of raising."""
    bomb = b'{"uid":' + b"[" * 1000 + b"]" * 1000 + b',"command":"Stop"}'
    assert runtime.remote_stop(Delivery(body=bomb)) is False
    assert runtime.remote_stop(delivery(vibrate("x"))) is False
    assert runtime.remote_stop(Delivery(body=b"\xff\xfe")) is False


def test_finished_ids_are_bounded_in_bytes_oldest_first() -> None:
    """A few huge results push the oldest out: the memory stays within its byte budget."""
    recent = Recent(size=1_000, budget_bytes=1_000_000)
    big = Result(id="", command="GetToys", uids=[f"user-{n:06}" for n in range(20_000)],
                 status="failed")
    for n in range(10):
        recent.finished(f"id-{n}", Handled(msgspec.structs.replace(big, id=f"id-{n}")), b"d")
        assert recent.size_bytes <= 1_000_000
    assert recent.get("id-0") is None
    assert recent.get("id-9") is not None


async def test_a_multi_user_stop_naming_toys_stops_those_toys_of_each_user(
    runtime: Runtime, upstream: GatedUpstream
) -> None:
    """A Stop for several users and some toys is carried out, one call per user with its toys."""
    handled = await run(runtime, {"command": "Stop", "uids": ["a", "b"], "toy": ["t1", "t2"],
                                  "id": "s"})
    assert handled.result.status == "ok"
    assert sorted((c["uid"], c["toy"]) for c in upstream.calls) == [
        ("a", ["t1", "t2"]), ("b", ["t1", "t2"])]


async def test_a_command_reusing_a_stops_id_is_invalid(
    runtime: Runtime, upstream: GatedUpstream
) -> None:
    """A Stop's id stays taken: a different command reusing it is refused, never sent."""
    await run(runtime, {"command": "Stop", "uid": "u", "id": "s-1"})
    again = await run(runtime, vibrate("s-1"))
    assert again.result.message == "id: already used by a different command"
    assert [c["action"] for c in upstream.calls] == ["Stop"]


async def test_single_user_stops_go_ahead_of_a_wide_stops_calls(
    upstream: GatedUpstream
) -> None:
    """With one Stop sender, a single-user Stop is sent before the wide Stop's remaining users."""
    runtime = await make_runtime(upstream, http_connections=1)
    try:
        upstream.gate.clear()
        wide = start(runtime, {"command": "Stop", "uids": [f"w{n}" for n in range(5)], "id": "w"})
        await settle()
        single = start(runtime, {"command": "Stop", "uid": "solo", "id": "s"})
        await settle()
        upstream.gate.set()
        await asyncio.wait_for(asyncio.gather(wide, single), 5)
        assert [c["uid"] for c in upstream.calls] == ["w0", "solo", "w1", "w2", "w3", "w4"]
    finally:
        await runtime.close()


async def test_a_wide_stop_marks_every_user_before_it_has_room(upstream: GatedUpstream) -> None:
    """Waiting for room, a wide Stop has already cancelled its users' waiting commands."""
    runtime = await make_runtime(upstream, wide_stop_users=2)
    try:
        upstream.gate.clear()
        first = start(runtime, {"command": "Stop", "uids": ["a", "b"], "id": "first"})
        busy = start(runtime, vibrate("busy", uid="d", level=1), published=epoch_ms() - 9)
        await settle()
        waiting = start(runtime, vibrate("v", uid="d", level=3), published=epoch_ms() - 5)
        await settle()
        second = start(runtime, {"command": "Stop", "uids": ["c", "d"], "id": "second"})
        await settle()
        assert runtime.scheduler.watermark("d", None) is not None
        assert (await asyncio.wait_for(waiting, 5)).result.supersededBy == "second"
        assert sorted((c["uid"], c["action"]) for c in upstream.calls) == [
            ("a", "Stop"), ("b", "Stop"), ("d", "Vibrate:1")]
        upstream.gate.set()
        await asyncio.wait_for(asyncio.gather(first, second, busy), 5)
        # d's call in flight when the Stop was marked is followed by a Stop once it settles;
        # the Stop's own call for d comes when there is room (a second, harmless Stop).
        last = {c["uid"]: c["action"] for c in upstream.calls}
        assert last == {"a": "Stop", "b": "Stop", "c": "Stop", "d": "Stop"}
        assert [c["action"] for c in upstream.calls if c["uid"] == "d"] == [
            "Vibrate:1", "Stop", "Stop"]
    finally:
        await runtime.close()
