"""requeue-dead sends dead letters back to where they came from."""

from __future__ import annotations

import aio_pika

from tests.integration.support import AMQP_URL, ResultLog, dead_letters
from worker.adapters.amqp.dead_letters import requeue_dead
from worker.adapters.amqp.producer import Producer
from worker.app import Worker
from worker.cli import main
from worker.contract import topology
from worker.simulator import Simulator


async def test_requeue_dead_republishes_matching_letters_only(
    sim: Simulator, worker: Worker, producer: Producer, results: ResultLog
) -> None:
    """A fixed dead letter goes back to lovense.commands and runs; others stay dead."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        dead = await channel.get_exchange(topology.DEAD_EXCHANGE)
        for ident, error in (("fixed", "upstream said 501 invalid token"),
                             ("other", "callback refused: utoken: missing")):
            await dead.publish(aio_pika.Message(
                b'{"command": "Stop", "uid": "dl-user", "mode": "server"}', message_id=ident,
                headers={topology.ERROR_HEADER: error,
                         topology.ORIGIN_EXCHANGE_HEADER: topology.COMMANDS_EXCHANGE,
                         topology.ORIGIN_ROUTING_KEY_HEADER: "dl-user"}), routing_key="")
    dry = await requeue_dead(AMQP_URL, "501", None, dry_run=True)
    assert (dry.requeued, dry.kept) == (1, 1)
    done = await requeue_dead(AMQP_URL, "501", None)
    assert (done.requeued, done.kept) == (1, 1)
    result = await results.wait_for("fixed")
    assert (result.status, result.command) == ("ok", "Stop")
    [left] = await dead_letters(1)
    assert left.message_id == "other"


async def test_invalid_message_dead_letter_records_its_origin(
    sim: Simulator, worker: Worker, producer: Producer, results: ResultLog
) -> None:
    """A dead-lettered command remembers the exchange and routing key it came through."""
    await producer.publish({"command": "Function", "uid": "o1", "action": "Wiggle:1",
                            "timeSec": 2}, message_id="bad-origin")
    await results.wait_for("bad-origin")
    [letter] = await dead_letters(1)
    assert letter.headers[topology.ORIGIN_EXCHANGE_HEADER] == topology.COMMANDS_EXCHANGE
    assert letter.headers[topology.ORIGIN_ROUTING_KEY_HEADER] == "o1"


def test_requeue_dead_cli_reports_counts(capsys: object) -> None:
    """The CLI prints what it did (nothing to do on an empty queue)."""
    assert main(["requeue-dead", "--match", "no-such-error-text", "--dry-run"]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert out.startswith("would requeue 0, left ")
