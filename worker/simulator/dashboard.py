"""The simulated developer dashboard: scans, and the callbacks the Remote apps POST to its URL.

Scanning a QR code (:meth:`Dashboard.scan`) makes the Lovense Remote app of the
code's uid (started on demand) POST the callback body of Lovense's docs, step 2
(ports as strings, the utoken of the QR request), to the configured callback
URL, then POST it again every heartbeat with its toys' current status, as the
dashboard's "Heartbeat" setting makes Lovense Remote do. An offline app posts
nothing. A callback URL that is down or refuses is logged and tried again on the
next beat; heartbeats end when the simulator stops.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import aiohttp
import msgspec
import structlog

from worker.simulator.lan_app import SimApp
from worker.simulator.pairing import Clock, QrBook

#: How often a paired app re-posts its callback unless told otherwise.
DEFAULT_HEARTBEAT_S: Final = 60.0
#: How long one callback POST may take before it counts as failed.
POST_TIMEOUT_S: Final = 5.0
#: How many callback POSTs the journal keeps (the oldest go first).
JOURNAL_SIZE: Final = 1000

log = structlog.get_logger("worker.simulator.dashboard")
_encode = msgspec.json.Encoder().encode


class CallbackFailed(Exception):
    """The callback URL did not take a scan's callback (the app stays paired; heartbeats retry)."""

    def __init__(self, message: str, post: CallbackPost) -> None:
        super().__init__(message)
        self.post = post


class CallbackPost(msgspec.Struct, frozen=True, rename="camel"):
    """One callback POST a simulated app made: HTTP ``status`` (None: no answer) or ``error``."""

    uid: str
    reason: Literal["scan", "heartbeat"]
    at_ms: int
    status: int | None
    error: str | None
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        """Tell whether the callback URL answered 2xx."""
        return self.status is not None and 200 <= self.status < 300


def check_callback_url(url: str | None) -> str | None:
    """Return ``url`` if it is an http(s) URL with a host (or None); raise ValueError if not."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"callback_url: {url!r} is not an http:// or https:// URL with a host")
    return url


class Dashboard:
    """Pair apps by scan, post their callbacks to the callback URL, and beat while running."""

    def __init__(
        self,
        *,
        qr_book: QrBook,
        app_for: Callable[[str], Awaitable[SimApp]],
        callback_url: str | None,
        heartbeat_s: float,
        clock: Clock,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        if heartbeat_s < 0:
            raise ValueError(f"heartbeat_s: {heartbeat_s} is negative")
        self.callback_url = check_callback_url(callback_url)
        self.heartbeat_s = heartbeat_s
        self.posts: collections.deque[CallbackPost] = collections.deque(maxlen=JOURNAL_SIZE)
        self._qr_book = qr_book
        self._app_for = app_for
        self._clock = clock
        self._announce = announce
        self._paired: dict[str, tuple[SimApp, str]] = {}  # uid -> (app, utoken)
        self._beats: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._running = False

    @property
    def beating(self) -> list[str]:
        """Return the uids whose heartbeat task runs now."""
        return sorted(uid for uid, task in self._beats.items() if not task.done())

    def start(self) -> None:
        """Let heartbeats run; after a restart, resume those of every paired app."""
        self._running = True
        for uid in self._paired:
            self._ensure_beat(uid)

    async def close(self) -> None:
        """Stop every heartbeat, waiting for posts in flight to be cancelled, and close HTTP."""
        self._running = False
        beats, self._beats = list(self._beats.values()), {}
        for task in beats:
            task.cancel()
        await asyncio.gather(*beats, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def scan(self, code: str) -> tuple[dict[str, Any], CallbackPost | None]:
        """Scan ``code``: pair its uid's app and post its callback (none without a callback URL).

        Raises ScanRefused for an unknown or expired code, and CallbackFailed when the
        callback URL did not answer 2xx (the app is paired all the same).
        """
        issued = self._qr_book.scan(code)
        app = await self._app_for(issued.uid)
        self._paired[issued.uid] = (app, issued.utoken)
        body = app.callback_body(issued.utoken)
        if self.callback_url is None:
            self._say(f"[{issued.uid}] Lovense Remote: scanned {code}, paired (no callback URL)")
            return body, None
        self._ensure_beat(issued.uid)
        post = await self.post(issued.uid, "scan")
        self._say(f"[{issued.uid}] Lovense Remote: scanned {code}, callback to "
                  f"{self.callback_url}: {_outcome(post)}")
        if not post.ok:
            raise CallbackFailed(
                f"callback: {self.callback_url} did not take {issued.uid}'s callback "
                f"({_outcome(post)}); {issued.uid} is paired and its heartbeats will retry",
                post,
            )
        return post.body, post

    def utoken(self, uid: str) -> str | None:
        """Return the utoken of the QR code that paired ``uid``, or None if it never paired."""
        paired = self._paired.get(uid)
        return paired[1] if paired is not None else None

    async def post(self, uid: str, reason: Literal["scan", "heartbeat"]) -> CallbackPost:
        """POST the current callback of ``uid``'s app to the callback URL; never raise for HTTP."""
        app, utoken = self._paired[uid]
        body = app.callback_body(utoken)
        status: int | None = None
        error: str | None = None
        try:
            session = self._http()
            assert self.callback_url is not None
            async with session.post(
                self.callback_url, data=_encode(body), headers={"Content-Type": "application/json"}
            ) as response:
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        post = CallbackPost(uid, reason, self._clock(), status, error, body)
        self.posts.append(post)
        if not post.ok:
            log.warning("callback_post_failed", uid=uid, reason=reason, url=self.callback_url,
                        status=status, error=error)
        return post

    def _say(self, line: str) -> None:
        if self._announce is not None:
            self._announce(line)

    def _ensure_beat(self, uid: str) -> None:
        if not self._running or self.callback_url is None or self.heartbeat_s == 0:
            return
        task = self._beats.get(uid)
        if task is None or task.done():
            self._beats[uid] = asyncio.create_task(self._beat(uid), name=f"heartbeat {uid}")

    async def _beat(self, uid: str) -> None:
        """Re-post ``uid``'s callback every heartbeat while its app is online."""
        while True:
            await asyncio.sleep(self.heartbeat_s)  # the dashboard's heartbeat period
            app, _ = self._paired[uid]
            if app.offline:
                continue
            try:
                await self.post(uid, "heartbeat")
            except Exception:  # post() reports HTTP failures; nothing else may end the beat
                log.exception("heartbeat_failed", uid=uid)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=POST_TIMEOUT_S)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session


def _outcome(post: CallbackPost) -> str:
    return f"HTTP {post.status}" if post.status is not None else f"no answer: {post.error}"
