"""Fixtures for the contract tests: the real server as a subprocess.

The server is started exactly as the contract says:
``python server.py --listen 127.0.0.1:0 --data DIR`` from the repo root, and is
ready once it prints a line containing ``listening on HOST:PORT``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import grpc
import pytest

from streams.v1 import streams_pb2_grpc as pb_grpc

from .helpers import unique

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
# Every RPC without its own deadline gets this one, so no test can hang forever.
DEFAULT_DEADLINE = 30.0
_LISTENING = re.compile(r"listening on (\[[^\]]+\]|[^\s:\[\]]+):(\d+)")


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _DefaultDeadline(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, timeout: float) -> None:
        self._timeout = timeout

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        if d.timeout is not None:
            return d
        return _CallDetails(
            d.method,
            self._timeout,
            d.metadata,
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, object], Any],
        client_call_details: grpc.ClientCallDetails,
        request: object,
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, object], Any],
        client_call_details: grpc.ClientCallDetails,
        request: object,
    ) -> Any:
        return continuation(self._details(client_call_details), request)


def _drain(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


class ServerProcess:
    """One server on one data directory; restartable."""

    def __init__(self, data_dir: Path, log_path: Path, *, via_env: bool = False) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        # Pass --listen/--data as flags (default) or as STREAMS_LISTEN/STREAMS_DATA.
        self.via_env = via_env
        self.proc: subprocess.Popen[str] | None = None
        self.target = ""
        self.channel: grpc.Channel | None = None
        self.stub: pb_grpc.StreamsServiceStub
        self._log: IO[str] | None = None

    def start(self) -> None:
        assert self.proc is None
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in _reap
        self._log.write(f"--- start {time.strftime('%H:%M:%S')}\n")
        self._log.flush()
        args = [sys.executable, "server.py"]
        env = {k: v for k, v in os.environ.items() if k not in ("STREAMS_LISTEN", "STREAMS_DATA")}
        # No PYTHONUNBUFFERED: the contract says the line is flushed.
        env.pop("PYTHONUNBUFFERED", None)
        if self.via_env:
            env.update(STREAMS_LISTEN="127.0.0.1:0", STREAMS_DATA=str(self.data_dir))
        else:
            args += ["--listen", "127.0.0.1:0", "--data", str(self.data_dir)]
        self.proc = subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=_drain, args=(self.proc.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        seen: list[str] = []
        while True:
            left = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                line = None
                left = 0
            if line is None:
                self._reap(signal.SIGKILL)
                pytest.fail(
                    "server did not print 'listening on HOST:PORT' "
                    f"({'timeout' if left <= 0 else 'exited'}); stdout: {''.join(seen)!r}; "
                    f"log:\n{self.log_path.read_text()[-4000:]}"
                )
            seen.append(line)
            match = _LISTENING.search(line)
            if match:
                break
        host, port = match.group(1), int(match.group(2))
        assert port != 0, f"the server must print the real port, not 0: {line!r}"
        self.target = f"{host}:{port}"
        self.channel = grpc.insecure_channel(self.target)
        grpc.channel_ready_future(self.channel).result(timeout=START_TIMEOUT)
        intercepted = grpc.intercept_channel(self.channel, _DefaultDeadline(DEFAULT_DEADLINE))
        self.stub = pb_grpc.StreamsServiceStub(intercepted)

    def _reap(self, sig: signal.Signals) -> int | None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(sig)
            try:
                code = proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        return self._reap(signal.SIGTERM)

    def restart(self) -> None:
        """Graceful stop (SIGTERM), then a new start on the same data dir."""
        self.stop()
        self.start()

    def kill9_and_restart(self) -> None:
        """SIGKILL, then a new start on the same data dir."""
        self._reap(signal.SIGKILL)
        self.start()

    def close(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._reap(signal.SIGTERM)


def _server(tmp: Path) -> Iterator[ServerProcess]:
    data_dir = tmp / "data"
    data_dir.mkdir()
    server = ServerProcess(data_dir, tmp / "server.log")
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per test module; tests isolate themselves with the `space` fixture."""
    yield from _server(tmp_path_factory.mktemp("server"))


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of its own on an empty data dir (ListSpaces, restarts)."""
    yield from _server(tmp_path)


@pytest.fixture
def stub(server: ServerProcess) -> pb_grpc.StreamsServiceStub:
    return server.stub


@pytest.fixture
def space() -> str:
    """A space name no other test uses."""
    return unique("space")
