"""What Lovense is sent: the request body for each command and route, as the docs show it.

Pure functions. The worker adds what producers must not send themselves: the
developer token, ``apiVer``/``v`` and the comma-joined ``uid`` list.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Final

from worker.contract.messages import Command, GetQrCode, Position, Stop
from worker.core import rules

#: Commands whose documented examples carry no apiVer.
_NO_API_VER: Final = frozenset({"GetToys", "GetToyName"})


def _number(value: float) -> float | int:
    # 20.0 goes out as 20, as in the docs' examples.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def stop_body(toys: list[str] | None) -> dict[str, Any]:
    """Return the docs' Function Stop, for some toys or all."""
    body: dict[str, Any] = {"command": "Function", "action": "Stop", "timeSec": 0}
    if toys is not None:
        body["toy"] = toys[0] if len(toys) == 1 else toys
    body["apiVer"] = 1
    return body


def pattern_v2_stop_body(toys: list[str] | None) -> dict[str, Any]:
    """Return the PatternV2 Stop that ends a position pattern's playback."""
    body: dict[str, Any] = {"command": "PatternV2", "type": "Stop"}
    if toys is not None:
        body["toy"] = toys[0] if len(toys) == 1 else toys
    body["apiVer"] = 1
    return body


def _cap_time(body: dict[str, Any], max_time_sec: int) -> None:
    # A platform that loses track of a user must not leave a toy running for ever.
    seconds = body.get("timeSec")
    if max_time_sec and seconds is not None and body.get("action") != "Stop" and (
        seconds == 0 or seconds > max_time_sec
    ):
        body["timeSec"] = max_time_sec


def command_fields(cmd: Command, max_time_sec: int = 0) -> dict[str, Any]:
    """Return the Lovense fields of a command: ``command``, its own fields, ``toy``, ``apiVer``.

    With ``max_time_sec`` set, ``timeSec`` 0 and longer times are capped to it.
    """
    if isinstance(cmd, Stop):
        body: dict[str, Any] = {"command": "Function", "action": "Stop", "timeSec": 0}
    else:
        body = {"command": cmd.kind}
        for name in cmd.lovense_fields:
            value = getattr(cmd, name)
            if value is not None:
                body[name] = _number(value) if isinstance(value, float) else value
        if isinstance(cmd, Position):
            body["value"] = rules.position_value(cmd)
    if cmd.toy is not None:
        body["toy"] = cmd.toy
    if body["command"] not in _NO_API_VER:
        body["apiVer"] = getattr(cmd, "apiVer", 1)
    _cap_time(body, max_time_sec)
    return body


def lan_body(cmd: Command, max_time_sec: int = 0) -> dict[str, Any]:
    """Return the body POSTed to a Lovense Remote app's ``/command``."""
    return command_fields(cmd, max_time_sec)


def server_body(
    cmd: Command, token: str, uids: list[str], max_time_sec: int = 0
) -> dict[str, Any]:
    """Return the body POSTed to ``/api/lan/v2/command`` for these users."""
    return {"token": token, "uid": ",".join(uids), **command_fields(cmd, max_time_sec)}


def utoken_for(uid: str, secret: str) -> str:
    """Return the per-user token Lovense echoes in the user's callback: HMAC-SHA256(uid)."""
    if not secret:
        return ""
    return hmac.new(secret.encode(), uid.encode(), hashlib.sha256).hexdigest()


def qr_body(cmd: GetQrCode, token: str, utoken: str) -> dict[str, Any]:
    """Return the body POSTed to ``/api/lan/getQrCode``."""
    uid = cmd.targets[0]
    return {
        "token": token,
        "uid": uid,
        "uname": cmd.uname if cmd.uname is not None else uid,
        "utoken": utoken,
        "v": cmd.v,
    }
