"""The Lovense client seam: requests as sent, replies as parsed, failures as classified."""

from __future__ import annotations

import ssl

import aiohttp
import httpx
import pytest

from worker.config import Settings
from worker.errors import MaybeDelivered, NotDelivered
from worker.lan import LanAddress
from worker.lovense import LovenseClient, Reply, classify, parse_reply


def _connector_error(exc: OSError) -> aiohttp.ClientConnectorError:
    key = aiohttp.client_reqrep.ConnectionKey(
        "127.0.0.1", 1, False, True, None, None, None
    )
    return aiohttp.ClientConnectorError(key, exc)


def _wrapped(root: BaseException) -> httpx.ConnectTimeout:
    # httpx-aiohttp reports nearly every aiohttp error as ConnectTimeout.
    try:
        raise httpx.ConnectTimeout("boom") from root
    except httpx.ConnectTimeout as exc:
        return exc


@pytest.mark.parametrize(
    ("root", "kind"),
    [
        (_connector_error(ConnectionRefusedError(111, "refused")), NotDelivered),
        (aiohttp.ConnectionTimeoutError("connect"), NotDelivered),
        (ssl.SSLCertVerificationError("bad cert"), NotDelivered),
        (aiohttp.ServerDisconnectedError(), MaybeDelivered),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), MaybeDelivered),
        (aiohttp.SocketTimeoutError("read"), MaybeDelivered),
        (TimeoutError(), MaybeDelivered),
    ],
)
def test_failures_are_classified_from_the_aiohttp_cause(
    root: BaseException, kind: type
) -> None:
    """Whether a request may have reached Lovense is judged from the root cause, not its name."""
    assert type(classify(_wrapped(root))) is kind


@pytest.mark.parametrize(
    ("route", "status", "content", "reply"),
    [
        ("server", 200, b'{"result":true,"code":200,"message":"Success"}',
         Reply(code=200, ok=True, message="Success")),
        ("server", 200, b'{"result":false,"code":507,"message":""}',
         Reply(code=507, ok=False, message="Lovense app is offline")),
        ("lan", 200, b'{"code":200,"type":"ok"}', Reply(code=200, ok=True, message="OK")),
        ("lan", 200, b'{"code":"402","type":"error"}',
         Reply(code=402, ok=False, message="Toy not connected")),
        ("server", 200, b'{"code":0,"result":true,"message":"Success","data":{"qr":"q"}}',
         Reply(code=0, ok=True, message="Success", data={"qr": "q"})),
    ],
)
def test_replies_map_codes_to_meanings(
    route: str, status: int, content: bytes, reply: Reply
) -> None:
    """Every Lovense code becomes a reply with its documented meaning."""
    assert parse_reply(route, status, content) == reply  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "content", "message"),
    [
        (200, b"<html>oops</html>",
         "Lovense server answered with something that is not JSON: '<html>oops</html>'"),
        (200, b"[1]", "Lovense server answered JSON that is not an object"),
        (200, b'{"result":true}', "Lovense server answered without a numeric code"),
        (502, b"bad gateway", "Lovense server answered HTTP 502"),
    ],
)
def test_malformed_answers_are_failures_not_exceptions(
    status: int, content: bytes, message: str
) -> None:
    """A malformed upstream answer raises MaybeDelivered with what was wrong."""
    with pytest.raises(MaybeDelivered) as caught:
        parse_reply("server", status, content)
    assert str(caught.value) == message


async def test_lan_call_dials_the_ip_and_verifies_the_name() -> None:
    """A LAN call goes to https://<ip>:<port>/command with X-platform, Host and SNI of the name."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"code": 200, "type": "ok"})

    client = LovenseClient(Settings(platform="my-app"), lan_transport=httpx.MockTransport(answer))
    address = LanAddress(ip="192.168.1.44", port=34568, domain="192-168-1-44.lovense.club")
    reply = await client.lan(address, {"command": "GetToys"})
    await client.aclose()

    assert reply == Reply(code=200, ok=True, message="OK")
    [request] = seen
    assert str(request.url) == "https://192.168.1.44:34568/command"
    assert request.headers["x-platform"] == "my-app"
    assert request.headers["host"] == "192-168-1-44.lovense.club:34568"
    assert request.extensions["sni_hostname"] == "192-168-1-44.lovense.club"
    assert request.content == b'{"command":"GetToys"}'


async def test_server_call_posts_json_to_the_api_base() -> None:
    """A server call POSTs the JSON body to LOVENSE_API_BASE plus the path."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"result": True, "code": 200, "message": "Success"})

    client = LovenseClient(Settings(api_base="http://127.0.0.1:9"),
                           server_transport=httpx.MockTransport(answer))
    reply = await client.server("/api/lan/v2/command", {"uid": "u"})
    await client.aclose()
    assert reply.ok is True
    [request] = seen
    assert (request.method, str(request.url)) == ("POST", "http://127.0.0.1:9/api/lan/v2/command")
    assert request.headers["content-type"] == "application/json"
