"""Callback decoding against hostile bodies: every one is refused with a reason, none raises."""

from __future__ import annotations

import pytest

from worker.core import callbacks
from worker.core.callbacks import CallbackRefused

HOSTILE = {
    "nested toys": b'{"uid":"u","domain":"d","httpsPort":1,"toys":{"a":'
                   + b'{"x":' * 5000 + b"1" + b"}" * 5000 + b"}}",
    "nested uid": b'{"uid":' + b"[" * 1000 + b"]" * 1000 + b"}",
    "not UTF-8": b'{"uid":"\xff\xfe"}',
    "not JSON": b"uid=u&domain=d",
    "over 64 KiB": b'{"uid":"' + b"u" * 70_000 + b'"}',
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_callbacks_are_refused_not_raised(body: bytes) -> None:
    """A hostile callback body raises CallbackRefused (a reason to dead-letter), nothing else."""
    with pytest.raises(CallbackRefused) as refused:
        callbacks.decode(body)
    assert str(refused.value).startswith("callback: ")


def test_a_deeply_nested_callback_says_so() -> None:
    """A nesting bomb is refused as such, not as an internal error (a pin: it already was)."""
    with pytest.raises(CallbackRefused, match="^callback: nested too deeply$"):
        callbacks.decode(HOSTILE["nested toys"])
