"""The callback endpoint's gate: who may post, how often, and what it may post.

The Lovense Remote app POSTs its callback to a public URL, so anyone can post
there. :class:`Gate` decides each request in the order that costs a forger
least: the rate limits first (per source address and for the whole process,
before a byte of the body is read), then the body's size, its shape and its
``utoken``. Only a callback that passes everything is published; the worker
still checks its address against the LAN door when it applies it.

Pure: the caller passes the clock reading, the peer address and the body.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from worker.core import callbacks
from worker.core.lan import Networks
from worker.core.ratelimit import Limit, TokenBucket

#: At most this many source addresses are tracked; the least recently seen is dropped
#: first (a dropped source starts again with a full burst, which is what an idle one has).
MAX_SOURCES: Final = 100_000


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to answer: an HTTP status and, when refused, why (for the poster and the log)."""

    status: int
    reason: str = ""

    @property
    def accepted(self) -> bool:
        """Return whether the callback is to be published."""
        return self.status == 200


ACCEPTED: Final = Verdict(200)
TOO_MANY_FROM_SOURCE: Final = Verdict(429, "too many callbacks from this address")
TOO_MANY: Final = Verdict(429, "too many callbacks; try again on the next heartbeat")
TOO_LARGE: Final = Verdict(413, f"body larger than {callbacks.MAX_CALLBACK_BYTES} bytes")


def client_address(peer: str | None, forwarded_for: str | None, trusted: Networks) -> str:
    """Return the address a request came from.

    ``X-Forwarded-For`` is believed only from a trusted proxy, and then only as far
    back as the proxies are trusted: the rightmost address that is not a trusted
    proxy is the source (a client can put anything on the left of the header).
    """
    source = peer or "unknown"
    if not forwarded_for or not trusted or not _within(source, trusted):
        return source
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        if not hop:
            continue
        if not _within(hop, trusted):
            return hop if _is_ip(hop) else source
        source = hop
    return source


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _within(text: str, networks: Networks) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return any(address in net for net in networks)


class Gate:
    """Rate limits per source and per process, then the checks on the body."""

    def __init__(
        self,
        *,
        source_rate: float,
        source_burst: int,
        rate: float,
        secret: str,
        allow_unverified: bool,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self._source_limit = Limit(source_rate, source_burst)
        # The process takes up to one second's worth at once.
        self._process_limit = Limit(rate, max(1.0, rate))
        self._process: TokenBucket | None = None
        self._sources: OrderedDict[str, TokenBucket] = OrderedDict()
        self._max_sources = max_sources
        self._secret = secret
        self._allow_unverified = allow_unverified

    @property
    def sources(self) -> int:
        """Return how many source addresses are being tracked."""
        return len(self._sources)

    def admit(self, source: str, now_ms: float) -> Verdict:
        """Return 200 when ``source`` may post now (``now_ms`` on a monotonic clock), else 429."""
        bucket = self._sources.get(source)
        if bucket is None:
            bucket = self._sources[source] = TokenBucket(self._source_limit, now_ms)
            if len(self._sources) > self._max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(source)
        if not bucket.take(now_ms):
            return TOO_MANY_FROM_SOURCE
        if self._process is None:
            self._process = TokenBucket(self._process_limit, now_ms)
        if not self._process.take(now_ms):
            return TOO_MANY
        return ACCEPTED

    def check(self, body: bytes) -> Verdict:
        """Return 200 for a callback to publish, else 413, 400 or 403 and why."""
        if len(body) > callbacks.MAX_CALLBACK_BYTES:
            return TOO_LARGE
        try:
            callback = callbacks.decode(body)
        except callbacks.CallbackRefused as exc:
            return Verdict(400, str(exc))
        try:
            callbacks.verify(callback, self._secret, self._allow_unverified)
        except callbacks.CallbackRefused as exc:
            return Verdict(403, str(exc))
        return ACCEPTED

