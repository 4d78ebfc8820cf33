"""The ``/_sim/*`` controls of pairing: scan a code, switch a toy, take an app offline, look.

Each control decodes its JSON body into a Struct (an unknown field or a wrong
type is HTTP 400) and calls the :class:`~worker.simulator.Simulator` method of
the same meaning; :meth:`ServerApi.add_control` serves them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from worker.simulator import Simulator

Control = Callable[[Any], Any]


class Scan(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /_sim/scan``: the code a getQrCode answer gave."""

    code: str


class ToySwitch(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /_sim/toy``: switch one toy of one app off or on."""

    uid: str
    toy: str
    on: bool


class Presence(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /_sim/app``: take one app offline or bring it back."""

    uid: str
    online: bool


def pairing_controls(sim: Simulator) -> dict[tuple[str, str], Control]:
    """Return the pairing controls of ``sim`` by (method, name under ``/_sim/``)."""

    async def scan(body: Any) -> dict[str, Any]:
        posted, post = await sim.dashboard.scan(msgspec.convert(body, Scan).code)
        return {
            "uid": posted["uid"],
            "callbackUrl": sim.callback_url,
            "status": post.status if post is not None else None,
            "body": posted,
        }

    def toy(body: Any) -> dict[str, Any]:
        switch = msgspec.convert(body, ToySwitch)
        sim.switch_toy(switch.uid, switch.toy, switch.on)
        return {"uid": switch.uid, "toy": switch.toy, "status": 1 if switch.on else 0}

    async def app(body: Any) -> dict[str, Any]:
        presence = msgspec.convert(body, Presence)
        await sim.set_online(presence.uid, presence.online)
        return {"uid": presence.uid, "online": presence.online}

    return {
        ("POST", "scan"): scan,
        ("POST", "toy"): toy,
        ("POST", "app"): app,
        ("GET", "callbacks"): lambda _: sim.callbacks,
        ("GET", "state"): lambda _: sim.state(),
    }
