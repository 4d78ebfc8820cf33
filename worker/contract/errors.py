"""Every error the worker raises on purpose.

::

    LovenseWorkerError
    ├── ConfigError            a LOVENSE_* setting is missing or malformed (start-up)
    ├── InvalidCommand         the producer's message breaks the contract or a Lovense rule
    │                          (permanent: fix the message; status ``invalid``)
    └── UpstreamError          a call to Lovense did not produce an answer
        ├── NotDelivered       provably never reached Lovense (refused, TLS, connect
        │                      timeout, forbidden address): safe to try elsewhere
        └── MaybeDelivered     the request may have been received (reset after send,
                               read timeout, malformed answer): never repeated elsewhere

Third-party exceptions are translated once, at the seam that sees them
(:mod:`worker.adapters.http.lovense` for aiohttp), with ``raise ... from exc``.
"""

from __future__ import annotations


class LovenseWorkerError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(LovenseWorkerError):
    """A setting is missing or malformed; the message names the variable."""


class InvalidCommand(LovenseWorkerError):
    """A command breaks the contract; the message names the field and the rule.

    Messages read ``"<field>: <what is wrong>"`` so a producer knows what to fix,
    e.g. ``"action: Vibrate level 25 is out of range 0–20"``.
    """


class UpstreamError(LovenseWorkerError):
    """A Lovense call ended without a usable answer."""


class NotDelivered(UpstreamError):
    """The request provably never reached Lovense."""


class MaybeDelivered(UpstreamError):
    """The request may have reached Lovense; repeating it elsewhere is unsafe."""
