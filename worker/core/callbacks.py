"""The Lovense Remote app's callback: its shape, its size limit, and its proof of origin.

A platform forwards the app's callback body unchanged to ``lovense.callbacks``.
This module decodes it (ports may be strings or numbers, as apps send them),
checks the LAN door's rules on the address it names, and verifies ``utoken``,
the HMAC-SHA256 of the uid under ``LOVENSE_UTOKEN_SECRET`` that the app echoes
from its QR code, in constant time. A utoken proves which user a callback is
for, not where that user's app is: the address still has to pass the door.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Final

import msgspec
from msgspec import Meta, Struct

from worker.contract.errors import InvalidCommand, LovenseWorkerError, NotDelivered
from worker.core.bodies import utoken_for
from worker.core.lan import LanAddress, Networks, open_door

MAX_CALLBACK_BYTES: Final = 64 * 1024
Port = Annotated[int, Meta(ge=0, le=1_000_000)] | Annotated[str, Meta(max_length=8)]


class CallbackRefused(LovenseWorkerError):
    """A callback that must change nothing; the message says why."""


class CallbackToy(Struct, frozen=True):
    """One toy as the callback lists it."""

    id: Annotated[str, Meta(min_length=1, max_length=64)]
    name: Annotated[str, Meta(max_length=64)] = ""
    nickName: Annotated[str, Meta(max_length=64)] = ""
    status: int | Annotated[str, Meta(max_length=8)] = 1
    #: Percent, when the app reports it (not in the docs' example; some app versions send it).
    battery: int | Annotated[str, Meta(max_length=8)] | None = None


class Callback(Struct, frozen=True):
    """The body the Lovense Remote app POSTs to the platform's callback URL."""

    uid: Annotated[str, Meta(min_length=1, max_length=256)]
    domain: Annotated[str, Meta(max_length=253)]
    httpsPort: Port
    utoken: Annotated[str, Meta(max_length=256)] = ""
    toys: dict[str, CallbackToy] = msgspec.field(default_factory=dict)
    platform: Annotated[str, Meta(max_length=32)] = ""
    appType: Annotated[str, Meta(max_length=32)] = ""
    version: Annotated[str, Meta(max_length=32)] = ""
    appVersion: Annotated[str, Meta(max_length=32)] = ""
    httpPort: Port | None = None
    wsPort: Port | None = None
    wssPort: Port | None = None


_decoder: Final = msgspec.json.Decoder(Callback)


def _port(value: int | str, field: str) -> int:
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit():
            raise CallbackRefused(f"{field}: must be a port number, got {value!r}")
        value = int(value)
    if not 1 <= value <= 65535:
        raise CallbackRefused(f"{field}: must be 1–65535, got {value}")
    return value


def decode(body: bytes) -> Callback:
    """Decode a callback body, refusing anything oversized, malformed or mistyped."""
    if len(body) > MAX_CALLBACK_BYTES:
        raise CallbackRefused(f"callback: larger than {MAX_CALLBACK_BYTES} bytes ({len(body)})")
    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CallbackRefused(f"callback: {exc}") from None
    except UnicodeDecodeError:
        raise CallbackRefused("callback: a string is not valid UTF-8") from None
    except RecursionError:
        raise CallbackRefused("callback: nested too deeply") from None


def verify(callback: Callback, secret: str, allow_unverified: bool) -> bool:
    """Check the callback's utoken; return whether it was verified (raise when refused)."""
    if not secret:
        if allow_unverified:
            return False
        raise CallbackRefused(
            "utoken: cannot be verified without LOVENSE_UTOKEN_SECRET "
            "(set LOVENSE_ALLOW_UNVERIFIED_CALLBACKS=1 to accept unverified callbacks)"
        )
    if not callback.utoken:
        raise CallbackRefused("utoken: missing; the app echoes the utoken of its QR code")
    expected = utoken_for(callback.uid, secret)
    if not hmac.compare_digest(callback.utoken.encode(), expected.encode()):
        raise CallbackRefused("utoken: does not match the uid (forged or for another user)")
    return True


def address(callback: Callback, allow: Networks) -> LanAddress:
    """Return the app address the callback names, if the LAN door lets it through."""
    port = _port(callback.httpsPort, "httpsPort")
    try:
        return open_door(callback.domain, port, allow)
    except (InvalidCommand, NotDelivered) as exc:
        raise CallbackRefused(str(exc).replace("lan.domain", "domain")) from None
