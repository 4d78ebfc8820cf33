"""The Lovense client seam: requests as sent, replies as parsed, failures as classified."""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.adapters.http.lovense import AiohttpSender, LovenseClient, Post, classify, read_capped
from worker.config import Settings
from worker.contract.errors import MaybeDelivered, NotDelivered, UpstreamError
from worker.core.lan import LanAddress
from worker.core.replies import MAX_REPLY_BYTES, Reply, parse_reply


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


# --- Hostile replies: every body becomes a Reply or an UpstreamError -------------------------

TOKEN = "FAKEdevTOKEN_0123456789-abcdefABCDEF"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"code":"²"}'.encode(), "Lovense server answered without a numeric code"),
        ('{"code":"٢٠٠"}'.encode(), "Lovense server answered without a numeric code"),
        (b'{"code":"' + b"9" * 5000 + b'"}', "Lovense server answered without a numeric code"),
        (b'{"code":"1234567"}', "Lovense server answered without a numeric code"),
        (b"[" * 100_000, "Lovense server answered JSON nested too deeply to read"),
        (b'{"code":200,"data":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
         "Lovense server answered JSON nested too deeply to read"),
        (b'{"code":200,"data":' + b"[" * 500 + b"]" * 500 + b"}",
         "Lovense server answered JSON nested too deeply to read"),
    ],
)
def test_hostile_codes_and_nesting_are_upstream_errors(content: bytes, message: str) -> None:
    """Non-ASCII or over-long code strings and nesting bombs raise MaybeDelivered, nothing else."""
    with pytest.raises(MaybeDelivered) as caught:
        parse_reply("server", 200, content)
    assert str(caught.value) == message


def test_six_digit_code_string_is_a_code() -> None:
    """A code given as a string of up to six ASCII digits is read as that number."""
    assert parse_reply("lan", 200, b'{"code":"123456"}') == Reply(
        code=123456, ok=False, message="Lovense answered with undocumented code 123456")


@pytest.mark.parametrize("code", [1_000_000, 123_456_789_012_345, -1_000_000,
                                  18_446_744_073_709_551_615])
def test_out_of_range_integer_code_is_undocumented_without_a_code(code: int) -> None:
    """An integer code beyond six digits is an undocumented failure carrying no code."""
    text = str(code)
    shown = text if len(text) <= 12 else text[:12] + "…"
    assert parse_reply("server", 200, b'{"code":%d}' % code) == Reply(
        code=None, ok=False, message=f"Lovense answered with undocumented code {shown}")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
_codes = (st.integers() | st.text(max_size=10) | st.from_regex(r"\A[0-9]{1,9}\Z")
          | st.sampled_from(["²", "٣", "200", " 200", "0x1f"]) | _json_values)
_objects = st.fixed_dictionaries(
    {}, optional={"code": _codes, "message": _json_values, "data": _json_values,
                  "result": _json_values},
)
_bodies = st.binary(max_size=300) | _objects.map(json.dumps).map(str.encode) | st.builds(
    lambda depth, tail: b"[" * depth + tail, st.integers(0, 200_000), st.binary(max_size=20))


@settings(max_examples=500, deadline=None)
@given(route=st.sampled_from(["lan", "server"]), status=st.integers(100, 599), content=_bodies)
def test_any_reply_is_a_reply_or_an_upstream_error(
    route: str, status: int, content: bytes
) -> None:
    """Whatever the bytes and status, parse_reply returns a Reply or raises UpstreamError."""
    try:
        reply = parse_reply(route, status, content)  # type: ignore[arg-type]
    except UpstreamError as exc:
        message = str(exc)
    else:
        assert isinstance(reply, Reply)
        assert reply.code is None or -999_999 <= reply.code <= 999_999
        message = reply.message
    assert len(message) <= 300
    assert message.isprintable()


# --- What a reply body may put into a result ------------------------------------------------

@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'bad request {"token":"' + TOKEN.encode() + b'","uid":"u1","command":"Function"}',
         "Lovense server answered with something that is not JSON: "
         "'bad request {\"token\":\"…\",\"uid\":\"u1\",\"co…'"),
        (b"token: abcdEFGH12345678 refused",
         "Lovense server answered with something that is not JSON: 'token: … refused'"),
        (b"<p>\x00\x1b[31mred\x07</p>\n<p>" + TOKEN.encode() + b"</p>",
         "Lovense server answered with something that is not JSON: '<p>[31mred</p> <p>…</p>'"),
        (("é" * 60).encode(),
         "Lovense server answered with something that is not JSON: '" + "é" * 39 + "…'"),
    ],
    ids=["reflected-token", "token-16", "control-chars", "multibyte"],
)
def test_non_json_excerpt_is_short_printable_and_scrubbed(content: bytes, message: str) -> None:
    """A non-JSON answer is quoted by at most 40 printable chars with token-like runs removed."""
    with pytest.raises(MaybeDelivered) as caught:
        parse_reply("server", 200, content)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        ("word " * 100, ("word " * 40)[:199] + "…"),
        ("Suc\x00cess\nnow", "Success now"),
        (f"Success, token {TOKEN}", "Success, token …"),
    ],
)
def test_ok_reply_message_is_clipped_printable_and_scrubbed(message: str, kept: str) -> None:
    """An ok reply's own message is kept to 200 printable chars with token-like runs removed."""
    content = json.dumps({"code": 200, "message": message}).encode()
    assert parse_reply("server", 200, content) == Reply(code=200, ok=True, message=kept)


# --- The bounded read ------------------------------------------------------------------------

class FakeStream:
    """A StreamReader-like body: hands out at most ``chunk`` bytes per read, counts them."""

    def __init__(self, size: int, chunk: int = 65_536) -> None:
        self.left = size
        self.chunk = chunk
        self.consumed = 0

    async def read(self, n: int = -1) -> bytes:
        take = self.left if n < 0 else min(n, self.chunk, self.left)
        self.left -= take
        self.consumed += take
        return b"x" * take


async def test_capped_read_returns_a_body_up_to_the_cap() -> None:
    """A body of exactly MAX_REPLY_BYTES is read whole, in chunks."""
    stream = FakeStream(MAX_REPLY_BYTES)
    assert await read_capped(stream, "lan") == b"x" * MAX_REPLY_BYTES
    assert (MAX_REPLY_BYTES, stream.consumed) == (1_048_576, 1_048_576)


async def test_capped_read_stops_one_byte_past_the_cap() -> None:
    """A body over the cap raises MaybeDelivered after reading exactly cap + 1 bytes."""
    stream = FakeStream(5 * MAX_REPLY_BYTES)
    with pytest.raises(MaybeDelivered) as caught:
        await read_capped(stream, "server")
    assert str(caught.value) == "Lovense server answered more than 1 MiB"
    assert stream.consumed == MAX_REPLY_BYTES + 1


class FakeResponse:
    """An aiohttp response stand-in: status, a content stream, read(), close()."""

    def __init__(self, size: int) -> None:
        self.status = 200
        self.content = FakeStream(size)
        self.closed = False
        self.released = False

    async def read(self) -> bytes:
        return await self.content.read(-1)

    def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> FakeResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.released = True


class FakeSession:
    """An aiohttp session stand-in answering every post with one FakeResponse."""

    def __init__(self, response: FakeResponse) -> None:
        self.response = response

    def post(self, url: str, **kwargs: Any) -> FakeResponse:
        return self.response

    async def close(self) -> None:
        pass


async def test_sender_refuses_an_answer_over_the_cap_and_closes_it() -> None:
    """AiohttpSender turns a 2 MiB answer into MaybeDelivered and closes the response."""
    sender = AiohttpSender(connections=1, lan_ca_file=None)
    response = FakeResponse(2 * MAX_REPLY_BYTES)
    sender._sessions["server"] = FakeSession(response)  # type: ignore[assignment]
    post = Post("server", "http://127.0.0.1:9/x", {}, b"{}", None, 1.0)
    with pytest.raises(MaybeDelivered) as caught:
        await sender(post)
    await sender.aclose()
    assert str(caught.value) == "Lovense server answered more than 1 MiB"
    assert (response.content.consumed, response.closed, response.released) == (
        MAX_REPLY_BYTES + 1, True, True)


async def test_sender_returns_an_answer_under_the_cap() -> None:
    """AiohttpSender returns the status and the whole body of an answer under the cap."""
    sender = AiohttpSender(connections=1, lan_ca_file=None)
    response = FakeResponse(100)
    sender._sessions["lan"] = FakeSession(response)  # type: ignore[assignment]
    post = Post("lan", "https://192.168.1.2:1/command", {}, b"{}", None, 1.0)
    assert await sender(post) == (200, b"x" * 100)
    await sender.aclose()
    assert (response.closed, response.released) == (False, True)


def test_token_head_cut_by_the_excerpt_window_is_dropped() -> None:
    """A token cut by the look-at window after filler that is dropped leaves none of its chars."""
    with pytest.raises(MaybeDelivered) as caught:
        parse_reply("lan", 200, b"\x00" * 1014 + TOKEN.encode())
    assert str(caught.value) == "Lovense Remote app answered with something that is not JSON: ''"
    content = json.dumps({"code": 200, "message": "\x00" * 1590 + TOKEN}).encode()
    assert parse_reply("lan", 200, content) == Reply(code=200, ok=True, message="OK")


def test_data_nested_within_the_limit_is_kept() -> None:
    """A reply whose data nests 31 levels (32 with the reply itself) keeps its data."""
    data: Any = "leaf"
    for _ in range(31):
        data = [data]
    content = json.dumps({"code": 200, "data": data}).encode()
    assert parse_reply("lan", 200, content) == Reply(code=200, ok=True, message="OK", data=data)
