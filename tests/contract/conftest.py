"""Fixtures for the contract tests: the real server as a subprocess
(tests/support/process.py), started exactly as the contract says:
``python server.py --listen 127.0.0.1:0 --data DIR`` from the repo root, and
ready once it prints a line containing ``listening on HOST:PORT``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.process import ServerProcess

from .helpers import unique


def _server(tmp: Path) -> Iterator[ServerProcess]:
    data_dir = tmp / "data"
    data_dir.mkdir()
    server = ServerProcess(data_dir, tmp / "server.log")
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per test module; tests isolate themselves with the `space` fixture."""
    yield from _server(tmp_path_factory.mktemp("server"))


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of its own on an empty data dir (ListSpaces, restarts)."""
    yield from _server(tmp_path)


@pytest.fixture
def stub(server: ServerProcess) -> pb_grpc.StreamsServiceStub:
    return server.stub


@pytest.fixture
def space() -> str:
    """A space name no other test uses."""
    return unique("space")
