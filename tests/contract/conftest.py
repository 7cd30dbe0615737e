"""Fixtures for the contract tests: the real server as a subprocess
(tests/support/process.py), started exactly as the contract says:
``python server.py --listen 127.0.0.1:0 --data DIR`` from the repo root, and
ready once it prints a line containing ``listening on HOST:PORT``.

Every test runs against each storage backend: ``rocksdb`` (the default,
started as above), ``memory`` (``--storage memory``) and ``jetstream``
(gateways over the session's 3-node cluster, ``nats_cluster``, each server
with a ``--nats-prefix`` of its own: an empty store that a restart keeps).
Tests marked ``durable`` (what survives a restart) skip the memory backend.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.storage import registry
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.nats import NatsCluster
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


def _flags(request: pytest.FixtureRequest, storage: str) -> tuple[str, ...]:
    """The server flags that choose ``storage`` (the cluster starts only for
    jetstream)."""
    if storage == registry.DEFAULT:
        return ()
    if storage != "jetstream":
        return ("--storage", storage)
    cluster: NatsCluster = request.getfixturevalue("nats_cluster")
    urls = ",".join(cluster.urls)
    return ("--storage", storage, "--nats-url", urls, "--nats-prefix", f"t{uuid.uuid4().hex[:16]}")


def _server(tmp: Path, flags: tuple[str, ...]) -> Iterator[ServerProcess]:
    data_dir = tmp / "data"
    data_dir.mkdir()
    server = ServerProcess(data_dir, tmp / "server.log", flags=flags)
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, storage: str
) -> Iterator[ServerProcess]:
    """One server per test module; tests isolate themselves with the `space` fixture."""
    yield from _server(tmp_path_factory.mktemp("server"), _flags(request, storage))


@pytest.fixture
def fresh_server(
    request: pytest.FixtureRequest, tmp_path: Path, storage: str
) -> Iterator[ServerProcess]:
    """A server of its own on an empty store (ListSpaces, restarts)."""
    yield from _server(tmp_path, _flags(request, storage))


@pytest.fixture
def stub(server: ServerProcess) -> pb_grpc.StreamsServiceStub:
    return server.stub


@pytest.fixture
def space() -> str:
    """A space name no other test uses."""
    return unique("space")
