"""Fixtures for the client, CLI and interop tests: real servers, no mocks.

``server_process`` starts ``python server.py`` as the contract says and waits for
its ``listening on HOST:PORT`` line; it can be stopped and started again on the
same port and data (to test reconnects and retries). The in-process ``inproc``
fixture of tests/conftest.py serves the tests that need no restart.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"listening on (\S+):(\d+)")
_counter = itertools.count()


def unique(prefix: str) -> str:
    """A name no other test uses (servers may be shared by a module)."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python server.py`` on ``port`` (0 = any) over ``data``; restartable."""

    def __init__(self, data: Path, port: int = 0) -> None:
        self.data = data
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "server.py", "--listen", f"127.0.0.1:{self.port}",
             "--data", str(self.data)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        ready = threading.Event()

        def pump(stream: IO[str]) -> None:
            for line in stream:
                self.output.append(line)
                if m := _LISTENING.search(line):
                    self.port = int(m[2])
                    ready.set()

        assert self.proc.stdout is not None
        threading.Thread(target=pump, args=(self.proc.stdout,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("server did not start:\n" + "".join(self.output))
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for a whole module; tests keep apart by unique space names."""
    server = ServerProcess(tmp_path_factory.mktemp("shared") / "data")
    try:
        yield server.start()
    finally:
        server.stop()
