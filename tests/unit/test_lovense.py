"""The Lovense client seam: requests as sent, replies as parsed, failures as classified."""

from __future__ import annotations

import ssl

import aiohttp
import pytest

from worker.config import Settings
from worker.errors import MaybeDelivered, NotDelivered
from worker.lan import LanAddress
from worker.lovense import LovenseClient, Post, Reply, classify, parse_reply


def _connector_error(exc: OSError) -> aiohttp.ClientConnectorError:
    key = aiohttp.client_reqrep.ConnectionKey(
        "127.0.0.1", 1, False, True, None, None, None
    )
    return aiohttp.ClientConnectorError(key, exc)


def _caused(outer: BaseException, root: BaseException) -> BaseException:
    try:
        raise outer from root
    except BaseException as exc:  # noqa: BLE001 - building a chain for the test
        return exc


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (_connector_error(ConnectionRefusedError(111, "refused")), NotDelivered),
        (_connector_error(OSError(101, "Network is unreachable")), NotDelivered),
        (aiohttp.ConnectionTimeoutError("connect"), NotDelivered),
        (ssl.SSLCertVerificationError("bad cert"), NotDelivered),
        (_caused(RuntimeError("wrapped"), _connector_error(OSError(113, "no route"))),
         NotDelivered),
        (aiohttp.ServerDisconnectedError(), MaybeDelivered),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), MaybeDelivered),
        (aiohttp.SocketTimeoutError("read"), MaybeDelivered),
        (TimeoutError(), MaybeDelivered),
    ],
)
def test_failures_are_classified_by_whether_the_request_could_have_left(
    error: BaseException, kind: type
) -> None:
    """Connect-phase failures anywhere in the chain never delivered; anything later may have."""
    assert type(classify(error)) is kind


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


class FakeSender:
    """Answers every Post with a fixed reply and records it."""

    def __init__(self, status: int, body: bytes) -> None:
        self.answer = (status, body)
        self.posts: list[Post] = []

    async def __call__(self, post: Post) -> tuple[int, bytes]:
        self.posts.append(post)
        return self.answer


async def test_lan_call_dials_the_ip_and_verifies_the_name() -> None:
    """A LAN call goes to https://<ip>:<port>/command with X-platform, Host and the TLS name."""
    send = FakeSender(200, b'{"code": 200, "type": "ok"}')
    client = LovenseClient(Settings(platform="my-app", lan_timeout_ms=1500), send=send)
    address = LanAddress(ip="192.168.1.44", port=34568, domain="192-168-1-44.lovense.club")
    reply = await client.lan(address, {"command": "GetToys"})
    await client.aclose()

    assert reply == Reply(code=200, ok=True, message="OK")
    assert send.posts == [Post(
        route="lan", url="https://192.168.1.44:34568/command",
        headers={"Content-Type": "application/json", "X-platform": "my-app",
                 "Host": "192-168-1-44.lovense.club:34568"},
        body=b'{"command":"GetToys"}', server_hostname="192-168-1-44.lovense.club",
        timeout=1.5)]


async def test_server_call_posts_json_to_the_api_base() -> None:
    """A server call POSTs the JSON body to LOVENSE_API_BASE plus the path, no TLS name."""
    send = FakeSender(200, b'{"result": true, "code": 200, "message": "Success"}')
    client = LovenseClient(Settings(api_base="http://127.0.0.1:9"), send=send)
    reply = await client.server("/api/lan/v2/command", {"uid": "u"})
    await client.aclose()
    assert reply.ok is True
    [post] = send.posts
    assert (post.route, post.url, post.server_hostname, post.body) == (
        "server", "http://127.0.0.1:9/api/lan/v2/command", None, b'{"uid":"u"}')


async def test_transport_errors_are_raised_classified() -> None:
    """A refused connection surfaces as NotDelivered from the client."""
    async def refuse(post: Post) -> tuple[int, bytes]:
        raise _connector_error(ConnectionRefusedError(111, "refused"))

    client = LovenseClient(Settings(), send=refuse)
    with pytest.raises(NotDelivered):
        await client.server("/api/lan/v2/command", {})
