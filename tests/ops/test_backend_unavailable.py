"""A backend whose module or client library cannot be imported (an install
without it) refuses to start like any bad option: exit 2, one line naming
--storage and what is missing, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

from .test_startup_errors import assert_refused, run_server


def test_jetstream_without_its_client_library_refuses_to_start(tmp_path: Path) -> None:
    hidden = tmp_path / "hide"
    hidden.mkdir()
    # Shadows nats-py, as an install without it would be.
    (hidden / "nats.py").write_text("raise ImportError(\"No module named 'nats'\")\n")
    path = os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")])
    result = run_server(
        "--listen", "127.0.0.1:0", "--data", str(tmp_path / "data"),
        "--storage", "jetstream", "--nats-url", "nats://127.0.0.1:4222",
        env={"PYTHONPATH": path},
    )  # fmt: skip
    line = assert_refused(result, "--storage", "jetstream", "nats")
    assert "cannot load streams.storage.jetstream.store" in line
