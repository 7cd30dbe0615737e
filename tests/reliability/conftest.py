"""Fixtures and the end-of-run figures of the reliability suites.

The soak's length: ``--soak-seconds 600`` (registered in tests/conftest.py so
that it works however pytest is started) or ``STREAMS_SOAK_SECONDS=600``; the
SIGTERM cycles: ``--sigterm-cycles 500`` or ``STREAMS_SIGTERM_CYCLES=500``.
The consumer-group runs (test_group_ordering.py, test_group_crash.py):
``STREAMS_GROUP_SEED``, ``STREAMS_GROUP_RECORDS``, ``STREAMS_GROUP_SEGMENTS``,
``STREAMS_GROUP_CRASHES``; a failed run writes its event trace to
``STREAMS_GROUP_TRACE_DIR`` (default: the test's temporary folder).
"""

from __future__ import annotations

import os

import pytest

from .support import COUNTERS


@pytest.fixture
def soak_seconds(request: pytest.FixtureRequest) -> float:
    value = request.config.getoption("--soak-seconds", default=None)
    if value is None:
        value = os.environ.get("STREAMS_SOAK_SECONDS", 60.0)
    return float(value)


@pytest.fixture
def sigterm_cycles(request: pytest.FixtureRequest) -> int:
    value = request.config.getoption("--sigterm-cycles", default=None)
    if value is None:
        value = os.environ.get("STREAMS_SIGTERM_CYCLES", 50)
    return int(value)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if COUNTERS:
        terminalreporter.write_sep("-", "reliability figures")
        for name, value in sorted(COUNTERS.items()):
            terminalreporter.write_line(f"{name}: {value}")
