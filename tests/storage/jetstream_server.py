"""A single local nats-server for the conformance suite's jetstream harness
until tests/support/nats.py (js-cluster) provides the cluster."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

_URLS: tuple[str, ...] = ()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_urls() -> tuple[str, ...]:
    global _URLS
    if _URLS:
        return _URLS
    if os.environ.get("STREAMS_TEST_NATS_URL"):
        _URLS = tuple(os.environ["STREAMS_TEST_NATS_URL"].split(","))
        return _URLS
    binary = shutil.which("nats-server", path=str(Path(os.sys.executable).parent))
    store = tempfile.mkdtemp(prefix="nats-")
    port = _free_port()
    process = subprocess.Popen(
        [binary or "nats-server", "-js", "-sd", store, "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(lambda: (process.kill(), shutil.rmtree(store, ignore_errors=True)))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    _URLS = (f"nats://127.0.0.1:{port}",)
    return _URLS
