"""Fixtures shared by every suite: ``inproc``, an in-process grpc.aio server
(tests/support/inproc.py) over a real RocksDB in a temporary folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.inproc import InProcessServer


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
