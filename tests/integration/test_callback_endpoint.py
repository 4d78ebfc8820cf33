"""The callback URL over real sockets: what it publishes, what it refuses, and what it counts.

Every refusal is checked for its status and for what reached RabbitMQ: nothing.
An absence is asserted only after a valid callback posted after the refused
ones has arrived (one connection, one channel: RabbitMQ keeps their order).
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import httpx
import msgspec
import pytest
from aio_pika.abc import AbstractIncomingMessage

from tests.integration.support import AMQP_URL, free_port, until
from worker.config import Secret, Settings
from worker.contract import topology
from worker.core.bodies import utoken_for
from worker.endpoint import CallbackService

SECRET = "endpoint-secret"


def endpoint_settings(**overrides: Any) -> Settings:
    """Return settings for an endpoint on loopback, with the test secret and its own ports."""
    values: dict[str, Any] = {
        "amqp_url": AMQP_URL, "utoken_secret": Secret(SECRET), "callback_host": "127.0.0.1",
        "callback_port": 0, "metrics_port": free_port(), "metrics_host": "127.0.0.1",
        "log_level": "warning", "log_format": "json",
    }
    values.update(overrides)
    return Settings(**values)


def callback(uid: str, utoken: str | None = None, **extra: Any) -> bytes:
    """Return a callback body as the Lovense Remote app posts it (ports as strings)."""
    body: dict[str, Any] = {
        "uid": uid, "appVersion": "4.0.3", "toys": {
            "fc9f37e96593": {"id": "fc9f37e96593", "name": "nora", "nickName": "",
                             "status": "1"}},
        "wssPort": "34568", "httpPort": "34567", "wsPort": "34567", "appType": "remote",
        "domain": "127-0-0-1.lovense.club", "utoken": utoken_for(uid, SECRET)
        if utoken is None else utoken,
        "httpsPort": "34568", "version": "101", "platform": "android",
    }
    body.update(extra)
    return msgspec.json.encode(body)


class Captured:
    """Every message published to lovense.callbacks while a test runs, in order."""

    def __init__(self) -> None:
        self.messages: list[AbstractIncomingMessage] = []

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.messages.append(message)

    @property
    def bodies(self) -> list[bytes]:
        return [m.body for m in self.messages]


@pytest.fixture
async def captured(clean_broker: None) -> AsyncIterator[Captured]:
    capture = Captured()
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            topology.CALLBACKS_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange)
        await queue.consume(capture.on_message, no_ack=True)
        yield capture


@pytest.fixture
async def service(captured: Captured) -> AsyncIterator[CallbackService]:
    async with CallbackService(endpoint_settings()) as running:
        assert await running.forwarder.wait_connected(10)
        yield running


async def post(service: CallbackService, body: bytes, headers: dict[str, str] | None = None,
               ) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(service.url, content=body, headers=headers)


def answered(service: CallbackService, status: int) -> float:
    value = service.metrics.registry.get_sample_value(
        "lovense_callback_requests_total", {"status": str(status)})
    return value or 0.0


async def test_a_verified_callback_is_published_unchanged(service: CallbackService,
                                                          captured: Captured) -> None:
    body = callback("ep-user-1")
    answer = await post(service, body, {"Content-Type": "application/json"})
    # The answer comes after the confirm: the message is in the queue already.
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})
    await until(lambda: len(captured.messages) == 1, 5, "the callback reached RabbitMQ")
    message = captured.messages[0]
    assert message.body == body
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert isinstance((message.headers or {}).get(topology.PUBLISHED_MS_HEADER), int)
    assert answered(service, 200) == 1


HOSTILE: dict[str, tuple[bytes, int, str]] = {
    "forged utoken": (callback("ep-victim", utoken=utoken_for("ep-victim", "guess")), 403,
                      "utoken: does not match"),
    "another user's utoken": (callback("ep-victim", utoken=utoken_for("ep-other", SECRET)),
                              403, "utoken: does not match"),
    "no utoken": (callback("ep-victim", utoken=""), 403, "utoken: missing"),
    "not JSON": (b"uid=ep-victim&domain=evil.example", 400, "callback: JSON is malformed"),
    "a JSON array": (b"[1, 2, 3]", 400, "callback: Expected `object`"),
    "a JSON string": (b'"ep-victim"', 400, "callback: Expected `object`"),
    "no domain": (b'{"uid": "ep-victim", "httpsPort": 1}', 400, "callback: Object missing"),
    "nested": (b'{"uid": "ep-victim", "toys": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", 400,
               "callback:"),
    "over 64 KiB": (callback("ep-victim", version="v" * 70_000), 413,
                    "body larger than 65536 bytes"),
}


@pytest.mark.parametrize("case", HOSTILE, ids=HOSTILE.keys())
async def test_hostile_callbacks_are_refused_counted_and_never_published(
    service: CallbackService, captured: Captured, case: str,
) -> None:
    body, status, reason = HOSTILE[case]
    answer = await post(service, body)
    assert answer.status_code == status
    assert answer.json()["error"].startswith(reason), answer.json()
    assert answered(service, status) == 1
    # The positive signal: a valid callback posted afterwards arrives, and alone.
    marker = callback("ep-marker")
    assert (await post(service, marker)).status_code == 200
    await until(lambda: marker in captured.bodies, 5, "the marker callback arrived")
    assert captured.bodies == [marker]


async def test_an_oversized_body_without_a_length_is_cut_at_the_cap(
    service: CallbackService, captured: Captured,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):  # 4 MiB, streamed: no Content-Length to refuse up front
            yield b" " * 65536

    async with httpx.AsyncClient() as client:
        answer = await client.post(service.url, content=chunks())
    assert answer.status_code == 413
    assert answered(service, 413) == 1


async def test_a_flood_from_one_source_is_refused_before_its_body_is_read(
    captured: Captured,
) -> None:
    settings = endpoint_settings(callback_source_burst=3, callback_source_rate=0.1)
    async with CallbackService(settings) as service:
        assert await service.forwarder.wait_connected(10)
        bodies = [callback(f"ep-flood-{n}") for n in range(6)]
        statuses = [(await post(service, body)).status_code for body in bodies]
        # A forged X-Forwarded-For from a peer that is not a trusted proxy buys nothing.
        spoofed = await post(service, callback("ep-flood-x"), {"X-Forwarded-For": "192.0.2.1"})
        assert statuses == [200, 200, 200, 429, 429, 429]
        assert spoofed.status_code == 429
        assert spoofed.headers["Retry-After"] == "1"
        await until(lambda: len(captured.messages) == 3, 5, "the admitted callbacks arrived")
        assert captured.bodies == bodies[:3]
        assert answered(service, 429) == 4
        assert service.metrics.registry.get_sample_value("lovense_callback_sources") == 1


async def test_behind_a_trusted_proxy_each_client_has_its_own_limit(captured: Captured) -> None:
    settings = endpoint_settings(callback_source_burst=1, callback_source_rate=0.1,
                         callback_trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    async with CallbackService(settings) as service:
        assert await service.forwarder.wait_connected(10)
        first = await post(service, callback("ep-proxied-1"), {"X-Forwarded-For": "192.0.2.1"})
        again = await post(service, callback("ep-proxied-2"), {"X-Forwarded-For": "192.0.2.1"})
        other = await post(service, callback("ep-proxied-3"), {"X-Forwarded-For": "192.0.2.2"})
    assert [first.status_code, again.status_code, other.status_code] == [200, 429, 200]


async def test_the_process_limit_holds_across_sources(captured: Captured) -> None:
    settings = endpoint_settings(callback_rate=2.0, callback_trusted_proxies=(
        ipaddress.ip_network("127.0.0.0/8"),))
    async with CallbackService(settings) as service:
        assert await service.forwarder.wait_connected(10)
        statuses = [(await post(service, callback(f"ep-busy-{n}"),
                                {"X-Forwarded-For": f"192.0.2.{n}"})).status_code
                    for n in range(4)]
    assert statuses == [200, 200, 429, 429]


async def test_without_a_utoken_secret_every_callback_is_forbidden(captured: Captured) -> None:
    async with CallbackService(endpoint_settings(utoken_secret=Secret(""))) as service:
        assert await service.forwarder.wait_connected(10)
        answer = await post(service, callback("ep-user-1"))
    assert answer.status_code == 403
    assert "LOVENSE_UTOKEN_SECRET" in answer.json()["error"]


async def test_health_metrics_and_readiness(service: CallbackService) -> None:
    assert service.health is not None
    base = f"http://127.0.0.1:{service.health.port}"
    await post(service, callback("ep-user-1"))
    async with httpx.AsyncClient() as client:
        ready = await client.get(base + "/readyz")
        alive = await client.get(base + "/healthz")
        metrics = (await client.get(base + "/metrics")).text
    assert (ready.status_code, alive.status_code) == (200, 200)
    assert 'lovense_callback_requests_total{status="200"} 1.0' in metrics
    assert "lovense_callback_broker_connected 1.0" in metrics
    assert "lovense_callback_request_seconds_count 1.0" in metrics


async def test_without_rabbitmq_it_answers_503_and_is_not_ready(captured: Captured) -> None:
    # Nothing listens on this port: the endpoint serves, unready, and answers 503.
    settings = endpoint_settings(amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    async with CallbackService(settings) as service:
        assert service.health is not None
        answer = await post(service, callback("ep-user-1"))
        async with httpx.AsyncClient() as client:
            ready = await client.get(f"http://127.0.0.1:{service.health.port}/readyz")
    assert answer.status_code == 503
    assert answer.json() == {"error": "not connected to RabbitMQ"}
    assert answer.headers["Retry-After"] == "1"
    assert ready.status_code == 503


async def test_only_post_on_the_callback_path(service: CallbackService) -> None:
    base = service.url.removesuffix(service.settings.callback_path)
    async with httpx.AsyncClient() as client:
        wrong_method = await client.get(service.url)
        wrong_path = await client.post(base + "/metrics", content=callback("ep-user-1"))
    assert (wrong_method.status_code, wrong_path.status_code) == (405, 404)

