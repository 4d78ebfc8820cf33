"""The runtime shell with a fake Lovense: coalescing, Stops, batching and folding, end to end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from worker.config import Secret, Settings
from worker.core.jobs import epoch_ms, job_class, published_ms
from worker.core.lan import LanAddress
from worker.core.replies import Reply
from worker.core.results import Delivery, Handled
from worker.metrics import Metrics
from worker.services.dispatch import Dispatcher
from worker.services.runtime import Runtime

OK = Reply(code=200, ok=True, message="Success")


class GatedUpstream:
    """A fake Lovense that records calls and answers when its gate is open."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.answer: dict[str, Reply] = {}

    async def server(self, path: str, body: Mapping[str, Any]) -> Reply:
        self.calls.append(dict(body))
        await self.gate.wait()
        return self.answer.get(str(body.get("uid")), OK)

    async def lan(self, address: LanAddress, body: Mapping[str, Any]) -> Reply:
        self.calls.append(dict(body))
        await self.gate.wait()
        return Reply(code=200, ok=True, message="OK")


def settings(**values: Any) -> Settings:
    base: dict[str, Any] = {"developer_token": Secret("tok"), "server_rate": 1000.0,
                            "server_burst": 1000, "batch_window_ms": 0}
    base.update(values)
    return Settings(**base)


@pytest.fixture
async def upstream() -> GatedUpstream:
    return GatedUpstream()


async def make_runtime(upstream: GatedUpstream, **values: Any) -> Runtime:
    config = settings(**values)
    runtime = Runtime(config, Dispatcher(config, upstream, Metrics()), Metrics())
    runtime.start()
    return runtime


@pytest.fixture
async def runtime(upstream: GatedUpstream) -> AsyncIterator[Runtime]:
    running = await make_runtime(upstream)
    yield running
    await running.close()


def delivery(command: dict[str, Any], published: float | None = None) -> Delivery:
    headers = {"x-lovense-published-ms": int(published if published is not None else epoch_ms())}
    return Delivery(body=msgspec.json.encode(command), message_id=command.get("id"),
                    headers=headers)


def start(runtime: Runtime, command: dict[str, Any], **kw: Any) -> asyncio.Task[Handled]:
    return asyncio.get_running_loop().create_task(runtime.handle(delivery(command, **kw)))


async def settle() -> None:
    """Wait until the event loop is quiet: no task can run before a gate opens or a timer fires.

    A condition, not a time: the loop's ready queue is empty once everything runnable
    has run (every task is blocked on a future, a gate or a timer).
    """
    loop = asyncio.get_running_loop()
    # asyncio's queue of runnable callbacks (CPython's BaseEventLoop keeps it there).
    ready = loop._ready  # type: ignore[attr-defined]
    for _ in range(100_000):
        await asyncio.sleep(0)  # the condition's poll: one pass of the loop, then look again
        if not ready:
            return
    raise AssertionError("the event loop never went quiet")


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``check()`` holds, looking again after every pass of the loop."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0)  # the condition's poll: one pass of the loop


def vibrate(ident: str, uid: str = "u", level: int = 5, **extra: Any) -> dict[str, Any]:
    return {"command": "Function", "uid": uid, "id": ident, "action": f"Vibrate:{level}",
            "timeSec": 10, **extra}


async def test_latest_wins_while_a_call_is_in_flight(
    runtime: Runtime, upstream: GatedUpstream
) -> None:
    """Commands queued behind an in-flight call are replaced by the newest one."""
    upstream.gate.clear()
    first = start(runtime, vibrate("c1", level=1))
    await settle()
    middle = [start(runtime, vibrate(f"c{n}", level=n)) for n in range(2, 6)]
    await settle()
    upstream.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *middle), 5)
    results = [t.result() for t in [first, *middle]]
    assert [r.result.status for r in results] == ["ok", "superseded", "superseded",
                                                  "superseded", "ok"]
    assert [r.result.supersededBy for r in results] == [None, "c3", "c4", "c5", None]
    assert [c["action"] for c in upstream.calls] == ["Vibrate:1", "Vibrate:5"]


async def test_stop_cancels_pending_and_lands_after_the_call_in_flight(
    runtime: Runtime, upstream: GatedUpstream
) -> None:
    """A Stop supersedes pending work and is sent only after the in-flight call answers."""
    upstream.gate.clear()
    first = start(runtime, vibrate("c1"))
    await settle()
    pending = start(runtime, vibrate("c2", level=9))
    await settle()
    stop = start(runtime, {"command": "Stop", "uid": "u", "id": "s1"})
    await settle()
    assert [c["action"] for c in upstream.calls] == ["Vibrate:5"]
    upstream.gate.set()
    done = await asyncio.wait_for(asyncio.gather(first, pending, stop), 5)
    assert [(h.result.status, h.result.supersededBy) for h in done] == [
        ("ok", None), ("superseded", "s1"), ("ok", None)]
    assert [c["action"] for c in upstream.calls] == ["Vibrate:5", "Stop"]


async def test_command_published_before_an_earlier_seen_stop_never_fires(
    runtime: Runtime, upstream: GatedUpstream
) -> None:
    """A command that arrives after a Stop but was published before it is superseded unsent."""
    now = epoch_ms()
    await runtime.handle(delivery({"command": "Stop", "uid": "u", "id": "s1"}, published=now))
    late = await runtime.handle(delivery(vibrate("old"), published=now - 50))
    assert (late.result.status, late.result.supersededBy) == ("superseded", "s1")
    assert [c["action"] for c in upstream.calls] == ["Stop"]


async def test_expired_on_arrival_is_never_sent(runtime: Runtime, upstream: GatedUpstream) -> None:
    """A command older than its TTL gets status expired and no call."""
    handled = await runtime.handle(delivery(vibrate("old", ttlMs=100), published=epoch_ms() - 500))
    assert (handled.result.status, handled.result.message) == ("expired",
                                                               "not sent by its deadline")
    assert upstream.calls == []


async def test_queue_overflow_drops_the_oldest(upstream: GatedUpstream) -> None:
    """stopPrevious 0 commands beyond LOVENSE_KEY_QUEUE drop the oldest waiting one."""
    runtime = await make_runtime(upstream, key_queue=2)
    upstream.gate.clear()
    tasks = [start(runtime, vibrate("q0", stopPrevious=0))]
    await settle()
    tasks += [start(runtime, vibrate(f"q{n}", stopPrevious=0)) for n in range(1, 4)]
    await settle()
    upstream.gate.set()
    done = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    await runtime.close()
    assert [h.result.status for h in done] == ["ok", "dropped", "ok", "ok"]


async def test_identical_commands_share_one_server_call(upstream: GatedUpstream) -> None:
    """Identical toy-less commands for different users within the window become one call."""
    runtime = await make_runtime(upstream, batch_window_ms=50)
    tasks = [start(runtime, vibrate(f"b{n}", uid=f"user{n}")) for n in range(3)]
    done = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    await runtime.close()
    assert [c["uid"] for c in upstream.calls] == ["user0,user1,user2"]
    assert {h.result.status for h in done} == {"ok"}


async def test_multi_user_message_splits_into_calls_and_folds_partial_failure(
    upstream: GatedUpstream,
) -> None:
    """A uids message goes out in calls of at most N users; a failed call lists its users."""
    runtime = await make_runtime(upstream, max_uids_per_call=2, batch_window_ms=20)
    upstream.answer["c"] = Reply(code=507, ok=False, message="Lovense app is offline")
    handled = await asyncio.wait_for(runtime.handle(delivery(
        {"command": "Preset", "uids": ["a", "b", "c"], "name": "wave", "timeSec": 5, "id": "m"})),
        5)
    await runtime.close()
    assert sorted(c["uid"] for c in upstream.calls) == ["a,b", "c"]
    result = handled.result
    assert (result.status, result.failedUids, result.attempts) == ("failed", ["c"], 2)
    assert result.message == "1 of 3 users failed: Lovense app is offline"


async def test_per_uid_rate_limit_does_not_delay_other_uids(upstream: GatedUpstream) -> None:
    """A uid out of tokens waits while another uid's command goes out at once."""
    runtime = await make_runtime(upstream, server_rate=1.0, server_burst=1)
    await runtime.handle(delivery(vibrate("a1", uid="a")))
    waiting = start(runtime, vibrate("a2", uid="a", level=6))
    other = await asyncio.wait_for(runtime.handle(delivery(vibrate("b1", uid="b"))), 0.5)
    assert other.result.status == "ok"
    assert not waiting.done()
    assert (await asyncio.wait_for(waiting, 2)).result.status == "ok"
    await runtime.close()


def test_published_ms_header_parsing() -> None:
    """The publish-time header is read as a number; anything else counts as absent."""
    assert published_ms({"x-lovense-published-ms": 1700000000123}) == 1700000000123
    assert published_ms({"x-lovense-published-ms": b"1700000000123"}) == 1700000000123
    assert published_ms({"x-lovense-published-ms": "soon"}) is None
    assert published_ms({"x-lovense-published-ms": True}) is None
    assert published_ms(None) is None


def test_job_classes_follow_the_commands() -> None:
    """Functions replace or queue by stopPrevious; Stops stop; PatternV2 keeps order."""
    from worker.contract.messages import command_decoder

    def kind(raw: str) -> str:
        return job_class(command_decoder.decode(raw.encode()))

    assert kind('{"command":"Function","uid":"u","action":"Vibrate:1","timeSec":2}') == "replace"
    assert kind('{"command":"Function","uid":"u","action":"Vibrate:1","timeSec":2,'
                '"stopPrevious":0}') == "queue"
    assert kind('{"command":"Function","uid":"u","action":"Stop"}') == "stop"
    assert kind('{"command":"Stop","uid":"u"}') == "stop"
    assert kind('{"command":"PatternV2","uid":"u","type":"Stop"}') == "ordered"
    assert kind('{"command":"Preset","uid":"u","name":"wave","timeSec":0}') == "replace"


def test_rfc3339_is_utc_with_milliseconds() -> None:
    """Result times are RFC 3339 UTC with milliseconds."""
    from worker.core.results import rfc3339

    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)) == "2026-01-02T03:04:05.678Z"


async def test_same_identity_twice_is_answered_again_without_a_second_call(
    runtime: Runtime, upstream: GatedUpstream
) -> None:
    """A redelivered message whose id already finished gets the same result, marked redelivered,
    and Lovense is called once."""
    first = await runtime.handle(delivery(vibrate("dup")))
    again = await runtime.handle(Delivery(body=msgspec.json.encode(vibrate("dup")),
                                          redelivered=True))
    assert len(upstream.calls) == 1
    assert again.result == msgspec.structs.replace(first.result, redelivered=True)


async def test_twin_in_flight_waits_for_the_first(
    runtime: Runtime, upstream: GatedUpstream
) -> None:
    """A message arriving while its twin is still being carried out shares the twin's call."""
    upstream.gate.clear()
    one = start(runtime, vibrate("twin"))
    await settle()
    two = start(runtime, vibrate("twin"))
    await settle()
    upstream.gate.set()
    first, second = await asyncio.wait_for(asyncio.gather(one, two), 5)
    assert len(upstream.calls) == 1
    assert first.result == second.result


async def test_poison_message_is_given_up_after_max_deliveries(
    runtime: Runtime, upstream: GatedUpstream
) -> None:
    """A message delivered LOVENSE_MAX_DELIVERIES times already ends failed and dead-lettered."""
    poisoned = Delivery(body=msgspec.json.encode(vibrate("p")),
                        headers={"x-delivery-count": 5}, redelivered=True)
    handled = await runtime.handle(poisoned)
    assert upstream.calls == []
    assert handled.result.status == "failed"
    assert handled.dead_letter == handled.result.message
    assert handled.result.message.startswith("gave up after 5 deliveries")


class FlakyLan(GatedUpstream):
    """A Remote app that answers 506 a few times before it works."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def lan(self, address: LanAddress, body: Mapping[str, Any]) -> Reply:
        self.calls.append(dict(body))
        if self.failures:
            self.failures -= 1
            return Reply(code=506, ok=False, message="Server error, restart Lovense Remote")
        return Reply(code=200, ok=True, message="OK")


async def test_lan_506_is_retried_within_the_deadline() -> None:
    """A 506 from the app is retried with backoff until it succeeds; attempts are counted."""
    import ipaddress

    flaky = FlakyLan(failures=2)
    runtime = await make_runtime(flaky, lan_allow=(ipaddress.ip_network("192.168.0.0/16"),))
    command = vibrate("r1", mode="lan", lan={"domain": "192-168-1-2.lovense.club",
                                             "httpsPort": 34568})
    handled = await asyncio.wait_for(runtime.handle(delivery(command)), 5)
    await runtime.close()
    assert (handled.result.status, handled.result.attempts, len(flaky.calls)) == ("ok", 3, 3)


async def test_final_codes_are_not_retried(upstream: GatedUpstream) -> None:
    """A 503 (invalid user id) from the server is not retried."""
    upstream.answer["u"] = Reply(code=503, ok=False, message="Invalid user ID")
    runtime = await make_runtime(upstream)
    handled = await asyncio.wait_for(runtime.handle(delivery(vibrate("f1"))), 5)
    await runtime.close()
    assert (handled.result.status, handled.result.attempts, len(upstream.calls)) == (
        "failed", 1, 1)


async def test_idle_says_whether_anything_is_in_progress(
    runtime: Runtime, upstream: GatedUpstream
) -> None:
    """The runtime is idle before work, busy while a call is in flight, idle once answered."""
    assert runtime.idle
    upstream.gate.clear()
    task = start(runtime, vibrate("busy"))
    await until(lambda: len(upstream.calls) == 1)
    assert not runtime.idle
    upstream.gate.set()
    assert (await asyncio.wait_for(task, 5)).result.status == "ok"
    await until(lambda: runtime.idle)
