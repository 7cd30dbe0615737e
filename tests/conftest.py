"""Fixtures shared by every suite: ``inproc``, an in-process grpc.aio server
(tests/support/inproc.py) over a real RocksDB in a temporary folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.inproc import InProcessServer
from tests.support.nats import NatsCluster


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-seconds",
        type=float,
        default=None,
        help="how long the load soak (tests/reliability/test_soak.py) runs; default 60 "
        "(or STREAMS_SOAK_SECONDS)",
    )
    parser.addoption(
        "--sigterm-cycles",
        type=int,
        default=None,
        help="SIGTERM-under-load cycles of tests/reliability/test_sigterm.py; default 50 "
        "(or STREAMS_SIGTERM_CYCLES)",
    )


@pytest.fixture
def inproc(tmp_path: Path) -> Iterator[InProcessServer]:
    with InProcessServer(tmp_path / "data") as server:
        yield server


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A 3-node JetStream cluster (tests/support/nats.py) shared by the whole
    session: it starts once (about half a second here). Tests use their own
    stream names, and a test that kills nodes starts them again (``heal()``)."""
    with NatsCluster(tmp_path_factory.mktemp("nats")) as cluster:
        yield cluster
