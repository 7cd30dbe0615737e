"""Fixtures of the operations tests (helpers live in helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import InProc, Pki, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and client certificates."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def inproc(tmp_path: Path) -> Iterator[InProc]:
    """A plain in-process server (no auth, no TLS, no metrics)."""
    with InProc(tmp_path / "data") as server:
        yield server
