"""The client's public API is typed: mypy passes on the client and the CLI."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.support.process import REPO_ROOT

CACHE = REPO_ROOT / ".pytest_cache" / "mypy"  # ignored by git, kept between runs


def test_mypy_passes_on_the_client_and_cli() -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (it comes with the dev extra)")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(CACHE), "--disallow-untyped-defs",
         "--disallow-incomplete-defs", "--follow-imports=silent",
         "streams/client", "streams/cli.py", "streams/__init__.py"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
