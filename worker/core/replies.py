"""Lovense's answers as data: whatever bytes come back become a Reply or a MaybeDelivered.

Pure: the HTTP client (:mod:`worker.adapters.http.lovense`) reads at most
:data:`MAX_REPLY_BYTES` and hands the status and bytes to :func:`parse_reply`.
Only a short scrubbed :func:`excerpt` of an answer can reach a result.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from worker.contract.errors import MaybeDelivered
from worker.core import codes
from worker.core.outcomes import Route

SERVER_COMMAND_PATH: Final = "/api/lan/v2/command"
SERVER_QR_PATH: Final = "/api/lan/getQrCode"
#: The most bytes read of one answer; GetToys, the largest, is a few KiB.
MAX_REPLY_BYTES: Final = 1 << 20
#: The deepest nesting kept (Lovense's answers are 3 deep): results must encode again.
MAX_REPLY_DEPTH: Final = 32
#: A code given as a string has at most this many ASCII digits.
_CODE_DIGITS: Final = 6
#: Integer codes beyond this magnitude are not codes Lovense could mean.
_CODE_LIMIT: Final = 10**_CODE_DIGITS
#: How much of a non-JSON answer is quoted, and of an ok answer's own message.
_EXCERPT_CHARS: Final = 40
_MESSAGE_CHARS: Final = 200
#: How many bytes of a non-JSON answer are looked at to make its excerpt.
_EXCERPT_WINDOW: Final = 1024
#: Any long opaque run (tokens are such runs), and a shorter one after the word token.
_OPAQUE_RUN: Final = re.compile(r"[A-Za-z0-9+/=_\-]{20,}")
_AFTER_TOKEN: Final = re.compile(r"(?i)(token[\"'\s:=]{0,4})[A-Za-z0-9_\-]{16,}")
_RUN_CHARS: Final = string.ascii_letters + string.digits + "+/=_-"
_decode = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class Reply:
    """What Lovense answered: its code, whether that means success, its words, its data."""

    code: int | None
    ok: bool
    message: str
    data: Any = None


def excerpt(text: str, limit: int) -> str:
    """Return text as at most limit printable chars, with anything token-like replaced by "…".

    The developer token cannot be recognised here, so every run that could be a
    secret goes: any opaque run of 20 or more, then a shorter one after the word token.
    """
    if len(text) > limit * 8:
        text = _cut(text[: limit * 8])
    text = "".join(c if c.isprintable() else " " if c.isspace() else "" for c in text)
    text = _AFTER_TOKEN.sub(r"\1…", _OPAQUE_RUN.sub("…", text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def speaker(route: Route) -> str:
    """Name who answered on a route, for messages: the server or the app."""
    return "Lovense server" if route == "server" else "Lovense Remote app"


def _cut(head: str) -> str:
    """Return the head of a longer text without its last run: that may be a token's start."""
    return head.rstrip(_RUN_CHARS)


def _quote(content: bytes) -> str:
    text = content[:_EXCERPT_WINDOW].decode("utf-8", "replace")
    if len(content) > _EXCERPT_WINDOW:
        text = _cut(text)
    return excerpt(text, _EXCERPT_CHARS)


def too_deep(value: object, limit: int) -> bool:
    """Return whether decoded JSON nests deeper than ``limit`` (checked without recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children: Iterable[object] = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ())
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _decode_object(where: str, content: bytes) -> dict[str, Any]:
    deep = MaybeDelivered(f"{where} answered JSON nested too deeply to read")
    try:
        body = _decode(content)
    except RecursionError:
        raise deep from None
    except ValueError:  # msgspec.DecodeError, and any other way the bytes are not JSON
        raise MaybeDelivered(
            f"{where} answered with something that is not JSON: {_quote(content)!r}"
        ) from None
    if not isinstance(body, dict):
        raise MaybeDelivered(f"{where} answered JSON that is not an object")
    if too_deep(body, MAX_REPLY_DEPTH):
        raise deep
    return body


def parse_reply(route: Route, status: int, content: bytes) -> Reply:
    """Turn an HTTP answer from Lovense into a Reply, or raise MaybeDelivered.

    Nothing else escapes, whatever the bytes: a Stop's retry loop depends on it.
    """
    where = speaker(route)
    if status >= 500:
        raise MaybeDelivered(f"{where} answered HTTP {status}")
    if status >= 400:
        return Reply(code=None, ok=False, message=f"{where} answered HTTP {status}")
    body = _decode_object(where, content)
    code = body.get("code")
    if isinstance(code, str) and len(code) <= _CODE_DIGITS and code.isascii() and code.isdigit():
        code = int(code)
    if not isinstance(code, int) or isinstance(code, bool):
        raise MaybeDelivered(f"{where} answered without a numeric code")
    if not -_CODE_LIMIT < code < _CODE_LIMIT:
        return Reply(code=None, ok=False, message=codes.describe(code, route))
    ok = codes.is_success(code, route)
    message = body.get("message")
    message = excerpt(message, _MESSAGE_CHARS) if ok and isinstance(message, str) else ""
    return Reply(code=code, ok=ok, message=message or codes.describe(code, route),
                 data=body.get("data"))
