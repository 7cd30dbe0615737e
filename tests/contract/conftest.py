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

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.limits import Limits
from streams.storage import registry
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.ops.helpers import write_tokens
from tests.support.process import ServerProcess

from .helpers import unique
from .launch import Launcher

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


@pytest.fixture(scope="module")
def launch(request: pytest.FixtureRequest, storage: str) -> Launcher:
    """Starts servers on the module's backend (the cluster starts only for jetstream)."""
    cluster = request.getfixturevalue("nats_cluster") if storage == "jetstream" else None
    return Launcher(storage, cluster)


@pytest.fixture(scope="module")
def max_records(storage: str) -> int:
    """The most records one Produce may hold on the module's backend (the
    contract's 10,000, or a backend's lower limit: JetStream's atomic batch)."""
    return registry.get(storage).limits(Limits()).max_records_per_produce


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, launch: Launcher) -> Iterator[ServerProcess]:
    """One server per test module; tests isolate themselves with the `space` fixture."""
    with launch(tmp_path_factory.mktemp("server")) as server:
        yield server


@pytest.fixture
def fresh_server(tmp_path: Path, launch: Launcher) -> Iterator[ServerProcess]:
    """A server of its own on an empty store (ListSpaces, restarts)."""
    with launch(tmp_path) as server:
        yield server


@pytest.fixture
def stub(server: ServerProcess) -> pb_grpc.StreamsServiceStub:
    return server.stub


@pytest.fixture
def space() -> str:
    """A space name no other test uses."""
    return unique("space")


# The tokens of the access tests (test_lifecycle_access.py, test_groups.py):
# one that may do anything, one that only reads, one scoped to spaces `mine-*`.
ACCESS_TOKENS = [
    {"token": "rw", "spaces": ["*"], "access": ["read", "write"]},
    {"token": "ro", "spaces": ["*"], "access": ["read"]},
    {"token": "mine", "spaces": ["mine-*"], "access": ["read", "write"]},
]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, launch: Launcher) -> Iterator[ServerProcess]:
    """A server of the module's backend that checks ACCESS_TOKENS."""
    tmp = tmp_path_factory.mktemp("secured")
    tokens = write_tokens(tmp / "tokens.json", ACCESS_TOKENS)
    with launch(tmp, "--auth-tokens", str(tokens)) as server:
        yield server
