"""The local 3-node cluster, started once for this folder's tests and always stopped.

Skipped (with the reason) only where rabbitmq-server is not installed: the cluster is
three more nodes of the same installation, never the system node on 5672.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster import support
from tests.integration.conftest import sim

__all__ = ["sim"]


@pytest.fixture(scope="package")
def cluster() -> Iterator[support.Cluster]:
    """Start the three nodes, clustered, topology declared and checked; stop them after."""
    if support.rabbitmq_server() is None:
        pytest.skip("rabbitmq-server is not installed: the local cluster needs it "
                    "(apt-get install rabbitmq-server)")
    try:
        yield support.start()
    finally:
        support.stop()
