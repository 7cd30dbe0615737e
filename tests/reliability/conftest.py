"""Options and the end-of-run figures of the reliability suites.

``--soak-seconds`` is known to pytest only when this directory (or a file in
it) is on the command line: ``pytest tests/reliability --soak-seconds 600``.
``STREAMS_SOAK_SECONDS=600`` works however pytest is started.
"""

from __future__ import annotations

import os

import pytest

from .support import COUNTERS


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-seconds",
        type=float,
        default=None,
        help="how long the load soak (tests/reliability/test_soak.py) runs; default 60 "
        "(or STREAMS_SOAK_SECONDS)",
    )


@pytest.fixture
def soak_seconds(request: pytest.FixtureRequest) -> float:
    value = request.config.getoption("--soak-seconds", default=None)
    if value is None:
        value = os.environ.get("STREAMS_SOAK_SECONDS", 60.0)
    return float(value)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if COUNTERS:
        terminalreporter.write_sep("-", "reliability figures")
        for name, value in sorted(COUNTERS.items()):
            terminalreporter.write_line(f"{name}: {value}")
