"""The LAN door over real sockets: forbidden targets are never dialled."""

from __future__ import annotations

import ipaddress

import pytest

from tests.integration.support import Listener, ResultLog, recording_client, worker_settings
from worker.adapters.amqp.producer import Producer
from worker.app import Worker
from worker.simulator import Simulator


def _lan_query(domain: str, port: int, ident: str) -> dict[str, object]:
    return {"command": "GetToyName", "uid": "u1", "id": ident, "mode": "lan",
            "lan": {"domain": domain, "httpsPort": port}}


async def test_loopback_target_outside_allow_list_gets_no_connection(
    sim: Simulator, listener: Listener, producer: Producer, results: ResultLog, clean_broker: None
) -> None:
    """127.0.0.2 outside a 127.0.0.1/32 allow list: failed result, and the listener sees nothing;
    with 127.0.0.2 allowed the same listener does see the worker connect."""
    async with Worker(worker_settings(sim)):
        ident = await producer.publish(_lan_query("127-0-0-2.lovense.club", listener.port, "x1"))
        result = await results.wait_for(ident)
    assert (result.status, result.via) == ("failed", "lan")
    assert result.message == ("LAN address 127.0.0.2 is outside LOVENSE_LAN_ALLOW; "
                              "the worker did not connect")
    assert listener.connections == 0

    allowed = (ipaddress.ip_network("127.0.0.2/32"),)
    async with Worker(worker_settings(sim, lan_allow=allowed)):
        ident = await producer.publish(_lan_query("127-0-0-2.lovense.club", listener.port, "x2"))
        result = await results.wait_for(ident)
    assert result.status == "failed"
    assert listener.connections >= 1


@pytest.mark.parametrize(
    ("domain", "port", "status"),
    [
        ("169-254-169-254.lovense.club", 80, "failed"),
        ("10-0-0-1.lovense.club", 34568, "failed"),
        ("192-168-1-44.lovense.club", 34568, "failed"),
        ("0-0-0-0.lovense.club", 34568, "failed"),
        ("metadata.google.internal", 80, "invalid"),
        ("192-168-1-44.lovense.club.attacker.net", 443, "invalid"),
        ("3232235820.lovense.club", 443, "invalid"),
        ("0300-0250-1-44.lovense.club", 443, "invalid"),
    ],
)
async def test_other_forbidden_targets_are_never_dialled(
    domain: str, port: int, status: str, sim: Simulator, producer: Producer, results: ResultLog,
    clean_broker: None,
) -> None:
    """Targets outside the allow list or not dashed IPv4 never reach the connect seam, while an
    allowed app in the same run does."""
    settings = worker_settings(sim)
    client, seam = recording_client(settings, sim)
    app = sim.apps[0]
    async with Worker(settings, client=client):
        bad = await producer.publish(_lan_query(domain, port, "forbidden"))
        good = await producer.publish(_lan_query(app.domain, app.https_port, "allowed"))
        forbidden, allowed = await results.wait_for(bad), await results.wait_for(good)
    assert forbidden.status == status, forbidden.message
    assert allowed.status == "ok", allowed.message
    assert seam.urls == [f"https://127.0.0.1:{app.https_port}/command"]
