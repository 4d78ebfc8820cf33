"""A bounded memory of finished commands, so one identity never runs twice in a process.

A redelivered message (after a channel or connection drop) or a producer's
repeat with the same ``id`` is answered with the result already given, marked
``redelivered`` when it was, and no second call is made. A message arriving
while its twin is still being carried waits for the twin's result.

An id names one command: each entry keeps a digest of the decoded command it
was given for (:func:`worker.core.intake.digest`), so the runtime can tell a repeat
from a different command reusing the id.

Finished results are kept encoded (one ``bytes`` each): a hundred thousand
``Result`` structs with their lists would be objects the garbage collector walks
on every full collection, for an answer that is almost never asked for again.
The memory is bounded twice: by count and by bytes (a result for 10,000 users
is megabytes), the oldest going first.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

import msgspec

from worker.contract.messages import Result, encoder
from worker.core.results import Handled

_decode = msgspec.json.Decoder(Result).decode
#: What an entry costs beyond its encoded result and its id, about.
ENTRY_OVERHEAD: Final = 200


@dataclass(frozen=True, slots=True)
class Prior:
    """What the memory knows of an id: the command it named, and its result or future."""

    digest: bytes
    #: None for a command that is never answered from memory (a Stop): only its digest is kept.
    outcome: Handled | asyncio.Future[Handled] | None


class Recent:
    """The last finished results by command identity, and those in progress."""

    def __init__(self, size: int, budget_bytes: int = 64 * 1024 * 1024) -> None:
        self._size = size
        self._budget = budget_bytes
        self._bytes = 0
        self._done: OrderedDict[str, tuple[bytes, str | None, bytes]] = OrderedDict()
        self._running: dict[str, tuple[asyncio.Future[Handled], bytes]] = {}

    def __len__(self) -> int:
        """Return how many finished results are kept."""
        return len(self._done)

    @property
    def size_bytes(self) -> int:
        """Return the estimated memory the finished results take."""
        return self._bytes

    def get(self, ident: str) -> Prior | None:
        """Return the finished result or the future of one in progress, with its digest."""
        done = self._done.get(ident)
        if done is not None:
            if not done[0]:
                return Prior(done[2], None)
            return Prior(done[2], Handled(_decode(done[0]), dead_letter=done[1]))
        running = self._running.get(ident)
        return None if running is None else Prior(running[1], running[0])

    def running(self, ident: str, future: asyncio.Future[Handled], digest: bytes) -> None:
        """Note that ``ident`` is being carried out."""
        self._running[ident] = (future, digest)

    def finished(self, ident: str, handled: Handled | None, digest: bytes = b"", *,
                 answer: bool = True) -> None:
        """Note that ``ident`` ended (None when it ended without a result, e.g. shutdown).

        With ``answer=False`` (a Stop: never answered from memory) only the digest is
        kept, so a different command reusing the id is still told, and an id already
        remembered keeps its entry (a Stop reusing a command's id must not replace that
        command's answer).
        """
        self._running.pop(ident, None)
        if handled is None or self._size == 0 or (not answer and ident in self._done):
            return
        body = encoder.encode(handled.result) if answer else b""
        cost = _cost(ident, body)
        if cost > self._budget:
            return  # larger than the whole budget: remembering it would forget everything else
        old = self._done.pop(ident, None)
        if old is not None:
            self._bytes -= _cost(ident, old[0])
        self._done[ident] = (body, handled.dead_letter, digest)
        self._bytes += cost
        while len(self._done) > self._size or self._bytes > self._budget:
            gone, entry = self._done.popitem(last=False)
            self._bytes -= _cost(gone, entry[0])


def _cost(ident: str, body: bytes) -> int:
    return len(body) + len(ident) + ENTRY_OVERHEAD
