"""Fixtures for the contract tests: the real server as a subprocess
(tests/support/process.py), started exactly as the contract says:
``python server.py --listen 127.0.0.1:0 --data DIR`` from the repo root, and
ready once it prints a line containing ``listening on HOST:PORT``.

Every test runs against each storage backend: ``rocksdb`` (the default,
started as above) and ``memory`` (``--storage memory``). Tests marked
``durable`` (what survives a restart) run on rocksdb only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.storage import registry
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.process import ServerProcess

from .helpers import unique

# Backends that lose everything at a restart.
NOT_DURABLE = {"memory"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "durable: checks what survives a restart (skipped on the memory backend)"
    )


@pytest.fixture(scope="module", params=sorted(registry.backends(), reverse=True))
def storage(request: pytest.FixtureRequest) -> str:
    """The backend the module's servers run on."""
    return str(request.param)


@pytest.fixture(autouse=True)
def _durable_only_where_kept(request: pytest.FixtureRequest, storage: str) -> None:
    if storage in NOT_DURABLE and request.node.get_closest_marker("durable"):
        pytest.skip(f"{storage}: nothing survives a restart")


def _server(tmp: Path, storage: str) -> Iterator[ServerProcess]:
    data_dir = tmp / "data"
    data_dir.mkdir()
    flags = () if storage == registry.DEFAULT else ("--storage", storage)
    server = ServerProcess(data_dir, tmp / "server.log", flags=flags)
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, storage: str) -> Iterator[ServerProcess]:
    """One server per test module; tests isolate themselves with the `space` fixture."""
    yield from _server(tmp_path_factory.mktemp("server"), storage)


@pytest.fixture
def fresh_server(tmp_path: Path, storage: str) -> Iterator[ServerProcess]:
    """A server of its own on an empty data dir (ListSpaces, restarts)."""
    yield from _server(tmp_path, storage)


@pytest.fixture
def stub(server: ServerProcess) -> pb_grpc.StreamsServiceStub:
    return server.stub


@pytest.fixture
def space() -> str:
    """A space name no other test uses."""
    return unique("space")
