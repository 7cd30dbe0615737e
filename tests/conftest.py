"""Fixtures shared by every suite: ``inproc``, an in-process grpc.aio server
(tests/support/inproc.py) over a real RocksDB in a temporary folder; and the
long mode (``--long`` or ``STREAMS_LONG_TESTS=1``), which also runs the cases
of :data:`LONG_ONLY` that the default run (CI) skips for time."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.inproc import InProcessServer
from tests.support.nats import NatsCluster


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-seconds",
        type=float,
        default=None,
        help="how long the load soak (tests/reliability/test_soak.py) runs; default 60 "
        "(or STREAMS_SOAK_SECONDS)",
    )
    parser.addoption(
        "--sigterm-cycles",
        type=int,
        default=None,
        help="SIGTERM-under-load cycles of tests/reliability/test_sigterm.py; default 50 "
        "(or STREAMS_SIGTERM_CYCLES)",
    )
    parser.addoption(
        "--long",
        action="store_true",
        help="also run the cases the default run skips for time (LONG_ONLY in tests/conftest.py; "
        "or STREAMS_LONG_TESTS=1)",
    )


# Cases the default run skips: each is the JetStream run of a test whose subject
# is the service's or a shared module's (covered by the same test on rocksdb and
# memory), at a scale that costs JetStream 10-25 s (a stream per space, a
# subject listing per page); what JetStream itself does there is covered by the
# cheaper cases named beside each. Node id -> what still covers it.
LONG_ONLY = {
    "tests/contract/test_lists.py::test_list_spaces[jetstream]": (
        "paging is the service's; JetStream's list_spaces: tests/storage/test_port_rules.py "
        "test_names_lists_page_and_filter and test_names_are_prefix_safe_and_listed_in_utf8_order"
    ),
    "tests/contract/test_lists.py::test_segments_paging_covers_everything_once[jetstream-1]": (
        "the same test on jetstream with page sizes 7, 100, 350 and 1000"
    ),
    "tests/contract/test_lists.py::test_segments_page_size_capped_at_1000[jetstream]": (
        "the cap is the service's; JetStream's 1,000-name pages: the paging test, page size 1000"
    ),
    "tests/contract/test_watch_segments.py::"
    "test_a_large_snapshot_comes_in_several_bounded_messages[jetstream]": (
        "cutting the snapshot is the service's; JetStream's listing of many segments: the paging "
        "tests"
    ),
    "tests/storage/test_port_lifecycle.py::test_watched_overflow_is_reported_as_none[jetstream]": (
        "the overflow is streams/storage/watches.py's; JetStream's feed of changes: the other "
        "test_watched_* cases on jetstream"
    ),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--long") or os.environ.get("STREAMS_LONG_TESTS", "") not in ("", "0"):
        return
    for item in items:
        why = LONG_ONLY.get(item.nodeid)
        if why is not None:
            item.add_marker(pytest.mark.skip(reason=f"long mode only (--long); covered: {why}"))


@pytest.fixture
def inproc(tmp_path: Path) -> Iterator[InProcessServer]:
    with InProcessServer(tmp_path / "data") as server:
        yield server


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A 3-node JetStream cluster (tests/support/nats.py) shared by the whole
    session: it starts once (about half a second here). Tests use their own
    stream names, and a test that kills nodes starts them again (``heal()``)."""
    with NatsCluster(tmp_path_factory.mktemp("nats")) as cluster:
        yield cluster
