"""A bounded memory of finished commands, so one identity never runs twice in a process.

A redelivered message (after a channel or connection drop) or a producer's
repeat with the same ``id`` is answered with the result already given, marked
``redelivered`` when it was, and no second call is made. A message arriving
while its twin is still being carried waits for the twin's result.

Finished results are kept encoded (one ``bytes`` each): a hundred thousand
``Result`` structs with their lists would be objects the garbage collector walks
on every full collection, for an answer that is almost never asked for again.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import msgspec

from worker.messages import Result, encoder
from worker.results import Handled

_decode = msgspec.json.Decoder(Result).decode


class Recent:
    """The last ``size`` finished results by command identity, and those in progress."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._done: OrderedDict[str, tuple[bytes, str | None]] = OrderedDict()
        self._running: dict[str, asyncio.Future[Handled]] = {}

    def get(self, ident: str) -> Handled | asyncio.Future[Handled] | None:
        """Return the finished result, the future of one in progress, or None."""
        done = self._done.get(ident)
        if done is not None:
            return Handled(_decode(done[0]), dead_letter=done[1])
        return self._running.get(ident)

    def running(self, ident: str, future: asyncio.Future[Handled]) -> None:
        """Note that ``ident`` is being carried out."""
        self._running[ident] = future

    def finished(self, ident: str, handled: Handled | None) -> None:
        """Note that ``ident`` ended (None when it ended without a result, e.g. shutdown)."""
        self._running.pop(ident, None)
        if handled is None or self._size == 0:
            return
        self._done[ident] = (encoder.encode(handled.result), handled.dead_letter)
        self._done.move_to_end(ident)
        while len(self._done) > self._size:
            self._done.popitem(last=False)
