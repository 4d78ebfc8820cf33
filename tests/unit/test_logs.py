"""Log redaction: secrets never reach a log line."""

from __future__ import annotations

from worker.logs import Redactor


def test_secret_keys_and_values_are_redacted() -> None:
    """Secrets are hidden by key anywhere, and by value inside any string or nested field."""
    redact = Redactor(["tok-abcdef"])
    event = redact(None, "info", {
        "event": "command_failed",
        "token": "anything",
        "reason": "upstream echoed tok-abcdef back",
        "body": {"utoken": "u", "uid": "x", "items": ["a tok-abcdef b"]},
    })
    assert event == {
        "event": "command_failed",
        "token": "[redacted]",
        "reason": "upstream echoed [redacted] back",
        "body": {"utoken": "[redacted]", "uid": "x", "items": ["a [redacted] b"]},
    }
