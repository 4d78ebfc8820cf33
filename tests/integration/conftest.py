"""Integration fixtures: the real RabbitMQ, the project's simulator, an in-process worker.

Every test here talks over real loopback sockets. When RabbitMQ is missing the
tests fail (they do not skip): CI must not go green without a broker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest

from tests.integration.support import (
    AMQP_URL,
    Listener,
    ResultLog,
    capturing_results,
    purge_topology,
    worker_settings,
)
from tests.logging_state import logging_restored
from worker.adapters.amqp.producer import Producer
from worker.app import Worker
from worker.simulator import SIMULATOR_TOKEN, Simulator


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo what an in-process CLI call configured (`requeue-dead` logs to the test's stderr,
    which is closed once the test ends)."""
    with logging_restored():
        yield


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(token=SIMULATOR_TOKEN) as simulator:
        yield simulator


@pytest.fixture
async def clean_broker() -> None:
    try:
        await purge_topology(AMQP_URL)
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        pytest.fail(f"RabbitMQ is not reachable at {AMQP_URL}: {exc} "
                    "(run scripts/ensure-rabbitmq.sh)")


@pytest.fixture
async def worker(sim: Simulator, clean_broker: None) -> AsyncIterator[Worker]:
    async with Worker(worker_settings(sim)) as running:
        yield running


@pytest.fixture
async def results(clean_broker: None) -> AsyncIterator[ResultLog]:
    async with capturing_results(ResultLog()) as log:
        yield log


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    """A TCP listener on 127.0.0.2, outside the tests' 127.0.0.1/32 allow list."""
    listening = Listener()
    await listening.start("127.0.0.2")
    yield listening
    await listening.stop()


@pytest.fixture
async def producer(clean_broker: None) -> AsyncIterator[Producer]:
    """A producer, once the topology is declared (a fresh broker has none)."""
    async with Producer(AMQP_URL) as connected:
        yield connected


