"""The ``servers`` fixture: memory-budget servers (budget_server.py), started
on demand, each with a probe record, all stopped at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.memory.budget_server import Server


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(name: str, **kwargs: float) -> Server:
        server = Server(tmp_path, name, **kwargs)
        started.append(server)
        server.produce("probe", {"a": [b"probe"]})
        return server

    yield start
    for server in started:
        server.close()
