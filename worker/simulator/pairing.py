"""The QR codes the simulated Lovense server issued, and what scanning one finds.

Pure: the clock is injected (epoch milliseconds). Lovense's docs say a QR code
"will expire after 4 hours"; a scan later than that is refused, as is a code
never issued. Which uids are paired (scanned at least once) lives here too,
because strict uids answer only those.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

#: The docs: "The QR code will expire after 4 hours."
QR_TTL_MS: Final = 4 * 3600 * 1000
#: Expired codes are kept this long after issue so a late scan is told "expired", not "unknown".
FORGET_AFTER_MS: Final = 24 * 3600 * 1000
_ALPHABET: Final = string.ascii_letters + string.digits

Clock = Callable[[], int]


class ScanRefused(Exception):
    """A scan the simulated Lovense refuses; ``status`` is what ``/_sim/scan`` answers."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class IssuedQr:
    """One QR code: the user it pairs, the utoken the platform sent, when it was issued."""

    code: str
    uid: str
    utoken: str
    issued_ms: int

    @property
    def expires_ms(self) -> int:
        """Return when the code stops pairing."""
        return self.issued_ms + QR_TTL_MS


class QrBook:
    """Remember each issued QR code (code → uid, utoken, issue time) and every paired uid."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._codes: dict[str, IssuedQr] = {}
        self.paired: set[str] = set()

    def __len__(self) -> int:
        return len(self._codes)

    def issue(self, uid: str, utoken: str) -> IssuedQr:
        """Issue a new six-character code for ``uid``."""
        now = self._clock()
        self._forget_old(now)
        code = _new_code()
        while code in self._codes:
            code = _new_code()
        issued = IssuedQr(code=code, uid=uid, utoken=utoken, issued_ms=now)
        self._codes[code] = issued
        return issued

    def scan(self, code: str) -> IssuedQr:
        """Return the QR code scanned and mark its uid paired; raise ScanRefused if it cannot be."""
        issued = self._codes.get(code)
        if issued is None:
            raise ScanRefused(f"code: {code!r} was never issued by this simulator", 404)
        age = self._clock() - issued.issued_ms
        if age > QR_TTL_MS:
            raise ScanRefused(
                f"code: {code!r} expired; it was issued {age / 3_600_000:.1f} h ago for "
                f"{issued.uid!r} and QR codes expire after 4 hours (ask for a new one)",
                410,
            )
        self.paired.add(issued.uid)
        return issued

    def _forget_old(self, now: int) -> None:
        # Codes are kept in issue order, so the old ones are at the front.
        while self._codes:
            code, issued = next(iter(self._codes.items()))
            if now - issued.issued_ms <= FORGET_AFTER_MS:
                break
            del self._codes[code]


def _new_code() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(6))
