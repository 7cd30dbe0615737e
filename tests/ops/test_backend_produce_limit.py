"""A backend that takes fewer records per Produce than the server's
--max-records-per-produce (Backend.max_records_per_produce; JetStream: one
atomic batch) lowers the limit the service enforces: a larger Produce is
INVALID_ARGUMENT naming the limit and the count, and nothing of it is written.
A real in-process server on a test-only backend (tests/support/capped_backend.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from streams.limits import Limits
from streams.storage import registry
from tests.contract.helpers import (
    assert_status,
    consume_all,
    payloads_of,
    produce,
    produce_writes,
    write,
)
from tests.support import capped_backend
from tests.support.inproc import InProcessServer

CAP = capped_backend.CAP


@pytest.fixture
def capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InProcessServer]:
    monkeypatch.setattr(registry, "MODULES", (*registry.MODULES, capped_backend.__name__))
    with InProcessServer(tmp_path / "data", storage="capped-memory") as server:
        yield server


def test_a_produce_over_the_backends_limit_is_refused_and_writes_nothing(
    capped: InProcessServer,
) -> None:
    stub = capped.stub
    assert_status(
        lambda: produce(stub, "s", "a", [b"r"] * (CAP + 1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "max_records_per_produce",
        f"({CAP})",
        f"{CAP + 1} records",
    )
    # Counted over every write of the request, as the server's own limit is.
    two_writes = [write("a", [b"r"] * CAP), write("b", [b"r"])]
    assert_status(
        lambda: produce_writes(stub, "s", two_writes),
        grpc.StatusCode.INVALID_ARGUMENT,
        "max_records_per_produce",
    )
    assert consume_all(stub, "s") == []
    # The limit itself is accepted.
    produce(stub, "s", "a", [b"1", b"2", b"3"])
    assert payloads_of(consume_all(stub, "s", "a")) == [b"1", b"2", b"3"]


def test_the_servers_own_lower_limit_stays() -> None:
    backend = registry.get("memory")
    configured = Limits(max_records_per_produce=2)
    assert backend.limits(configured) is configured
    capped_limits = capped_backend.BACKEND.limits(Limits())
    assert capped_limits.max_records_per_produce == CAP
    assert capped_backend.BACKEND.limits(configured).max_records_per_produce == 2
