"""A server on the JetStream backend that cannot reach NATS refuses to start:
exit code 2, one line naming --nats-url, no traceback, and no endless retry."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_an_unreachable_nats_url_ends_the_server_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"nats://127.0.0.1:{s.getsockname()[1]}"
    flags = ["--storage", "jetstream", "--nats-url", url, "--listen", "127.0.0.1:0"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), *flags, "--data", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "--nats-url" in lines[0] and url in lines[0]
