"""Fixtures of the operations tests (helpers live in helpers.py; ``inproc`` is
tests/conftest.py's)."""

from __future__ import annotations

import pytest

from .helpers import Pki, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and client certificates."""
    return make_pki(tmp_path_factory.mktemp("pki"))
