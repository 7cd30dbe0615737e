"""Fixtures for the contract tests: the real server as a subprocess
(tests/support/process.py), started exactly as the contract says:
``python server.py --listen 127.0.0.1:0 --data DIR`` from the repo root, and
ready once it prints a line containing ``listening on HOST:PORT``.

Every test runs against each storage backend: ``rocksdb`` (the default,
started as above), ``memory`` (``--storage memory``) and ``jetstream``
(gateways over the session's 3-node cluster, ``nats_cluster``, each server
with a ``--nats-prefix`` of its own: an empty store that a restart keeps).
Tests marked ``durable`` (what survives a restart) skip the memory backend.

The modules of :data:`WORKERS_MODULES` also run over a ``--workers 2`` RocksDB
server (``rocksdb-workers2``: a writer process and two gRPC fronts sharing the
port), whose ``stub`` takes turns over a connection to each front, so that what
is written through one front is read, followed and committed through the other
(tests/support/fronts.py). A module restricts its backends with ``BACKENDS``.
"""

from __future__ import annotations

import dataclasses
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
# The modules that also run over a --workers 2 server: the guarantees a front
# process could break (writes, reads, follow, offsets, groups, access, removals,
# page tokens, watches). The rest is the service's code, which a front runs unchanged;
# restarts of a --workers 2 server: tests/reliability/test_crash_workers.py.
WORKERS_MODULES = frozenset(
    {
        "test_produce",
        "test_consume",
        "test_consume_start",
        "test_offsets",
        "test_peek",
        "test_groups",
        "test_groups_subscribe",
        "test_lifecycle_access",
        "test_lists",
        "test_trim",
        "test_trim_races",
        "test_delete",
        "test_watch_segments",
    }
)
WORKERS = 2


@dataclasses.dataclass(frozen=True)
class Deployment:
    """How a module's servers run: the backend and ``--workers``."""

    storage: str
    workers: int = 1

    def __str__(self) -> str:
        return self.storage if self.workers == 1 else f"{self.storage}-workers{self.workers}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "durable: checks what survives a restart (skipped on the memory backend)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "deployment" not in metafunc.fixturenames:
        return
    backends = getattr(metafunc.module, "BACKENDS", None) or sorted(
        registry.backends(), reverse=True
    )
    deployments = [Deployment(backend) for backend in backends]
    if metafunc.module.__name__.rpartition(".")[2] in WORKERS_MODULES:
        deployments.append(Deployment(registry.DEFAULT, WORKERS))
    metafunc.parametrize("deployment", deployments, ids=str, indirect=True, scope="module")


@pytest.fixture(scope="module")
def deployment(request: pytest.FixtureRequest) -> Deployment:
    """The backend and worker count of the module's servers (pytest_generate_tests)."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def storage(deployment: Deployment) -> str:
    """The backend the module's servers run on."""
    return deployment.storage


@pytest.fixture(autouse=True)
def _durable_only_where_kept(request: pytest.FixtureRequest, storage: str) -> None:
    if storage in NOT_DURABLE and request.node.get_closest_marker("durable"):
        pytest.skip(f"{storage}: nothing survives a restart")


@pytest.fixture(scope="module")
def launch(request: pytest.FixtureRequest, deployment: Deployment) -> Launcher:
    """Starts servers on the module's backend (the cluster starts only for jetstream)."""
    storage = deployment.storage
    cluster = request.getfixturevalue("nats_cluster") if storage == "jetstream" else None
    return Launcher(storage, cluster, deployment.workers)


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
