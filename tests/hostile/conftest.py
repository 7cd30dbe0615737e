"""One in-process server per module, attacked with raw bytes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..conftest import InProcessServer
from .support import Ledger


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    server = InProcessServer(tmp_path_factory.mktemp("hostile") / "data")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()
