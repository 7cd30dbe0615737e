"""Fixtures for the client, CLI and interop tests: real servers, no mocks.

``server_process`` starts ``python server.py`` (tests/support/process.py) on a
fixed port, so it can be stopped and started again on the same port and data
(to test reconnects and retries). The in-process ``inproc`` fixture of
tests/conftest.py serves the tests that need no restart.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.process import ServerProcess, free_port

_counter = itertools.count()


def unique(prefix: str) -> str:
    """A name no other test uses (servers may be shared by a module)."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data", port=free_port())
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for a whole module; tests keep apart by unique space names."""
    server = ServerProcess(tmp_path_factory.mktemp("shared") / "data")
    try:
        yield server.start()
    finally:
        server.close()
