"""The real server as a child process, started as the contract says.

``python server.py --listen 127.0.0.1:PORT --data DIR`` from the repo root (or
another ``command``), ready once it prints ``listening on HOST:PORT``. Its
standard error goes to a log file; its standard output is read all along (the
pipe never fills). Restartable on the same data directory, and on the same
port when one was given.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import grpc
import pytest

from streams.v1 import streams_pb2_grpc as pb_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
# Every RPC of ``ServerProcess.stub`` without its own deadline gets this one,
# so no test can hang forever.
DEFAULT_DEADLINE = 30.0
_LISTENING = re.compile(r"listening on (\[[^\]]+\]|[^\s:\[\]]+):(\d+)")


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without STREAMS_* variables (a developer's
    settings must not leak into a test server) and without PYTHONUNBUFFERED
    (the contract says the server flushes its line itself), plus ``extra``.

    STREAMS_WORKERS is 1 unless ``extra`` says otherwise: the server's own
    default (one front per core) would make every test a multi-process one."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STREAMS_") and k != "PYTHONUNBUFFERED"
    }
    env["STREAMS_WORKERS"] = "1"
    env.update(extra or {})
    return env


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


class ServerProcess:
    """One server process on one data directory; restartable.

    ``flags`` follow ``--listen 127.0.0.1:PORT --data DATA`` on the command
    line (those two are left out with ``listen_flags=False``, or passed as
    STREAMS_LISTEN/STREAMS_DATA with ``via_env=True``); ``env`` adds
    variables to :func:`clean_env`. ``port`` 0 takes any free port at each
    start. Standard error goes to ``log_path`` (default ``DATA/../server.log``).
    ``workers`` is ``--workers`` (1: one process, as every test had before;
    N >= 2: a writer and N front processes, see streams.workers).

    ``channel`` (plain) and ``stub`` (with a default deadline) connect on first
    use and close when the process is stopped or started again.
    """

    def __init__(
        self,
        data: Path,
        log_path: Path | None = None,
        *,
        flags: Sequence[str] = (),
        env: dict[str, str] | None = None,
        port: int = 0,
        via_env: bool = False,
        listen_flags: bool = True,
        command: Sequence[str] = (sys.executable, "server.py"),
        workers: int = 1,
    ) -> None:
        self.data = data
        self.log_path = log_path or data.parent / "server.log"
        self.flags = list(flags)
        self.extra_env = {"STREAMS_WORKERS": str(workers), **(env or {})}
        self.listen_port = port
        self.via_env = via_env
        self.listen_flags = listen_flags
        self.command = list(command)
        self.proc: subprocess.Popen[str] | None = None
        self.port = port
        self.stdout_lines: list[str] = []
        self._log: IO[str] | None = None
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.StreamsServiceStub | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the server is not running"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> list[int]:
        """The server's child processes: its fronts with ``--workers`` N >= 2."""
        found: list[int] = []
        with contextlib.suppress(FileNotFoundError):
            for task in Path(f"/proc/{self.pid}/task").iterdir():
                with contextlib.suppress(FileNotFoundError):
                    found.extend(int(pid) for pid in (task / "children").read_text().split())
        return sorted(set(found))

    # -- starting --------------------------------------------------------------

    def argv(self, *extra: str) -> list[str]:
        listen = f"127.0.0.1:{self.listen_port}"
        head = []
        if self.listen_flags and not self.via_env:
            head = ["--listen", listen, "--data", str(self.data)]
        return [*self.command, *head, *self.flags, *extra]

    def spawn(self, *extra: str, stdout: int = subprocess.PIPE) -> subprocess.Popen[str]:
        """Starts the process (``extra`` flags after the others) without waiting."""
        assert not self.alive(), "the server is already running"
        self.close_channel()  # the last life's clients are done with it
        env = clean_env(self.extra_env)
        if self.via_env:
            env.update(STREAMS_LISTEN=f"127.0.0.1:{self.listen_port}", STREAMS_DATA=str(self.data))
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            self.argv(*extra),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=self._log,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
        )
        return self.proc

    def start(self, *extra: str, timeout: float = START_TIMEOUT) -> ServerProcess:
        """Spawns and waits for the ``listening on`` line; returns self."""
        proc = self.spawn(*extra)
        ready = threading.Event()
        found: list[int] = []

        def pump(stream: IO[str]) -> None:
            for line in stream:
                self.stdout_lines.append(line)
                match = _LISTENING.search(line)
                if match and not ready.is_set():
                    found.append(int(match.group(2)))
                    ready.set()
            ready.set()  # the process closed its output: it exited

        assert proc.stdout is not None
        threading.Thread(target=pump, args=(proc.stdout,), daemon=True).start()
        if not ready.wait(timeout) or not found:
            why = "exited" if ready.is_set() else f"nothing within {timeout}s"
            self.kill()
            pytest.fail(
                f"the server did not print 'listening on HOST:PORT' ({why}); "
                f"stdout {''.join(self.stdout_lines)!r}; log:\n{self.stderr()[-4000:]}"
            )
        assert found[0] != 0, "the server must print the real port, not 0"
        self.port = found[0]
        return self

    def restart(self) -> None:
        """Graceful stop (SIGTERM), then a new start on the same data."""
        self.stop()
        self.start()

    def kill9_and_restart(self) -> None:
        """SIGKILL, then a new start on the same data."""
        self.kill()
        self.start()

    # -- clients ---------------------------------------------------------------

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            assert self.port, "the server has not started"
            self._channel = grpc.insecure_channel(self.target)
            grpc.channel_ready_future(self._channel).result(timeout=START_TIMEOUT)
        return self._channel

    @property
    def stub(self) -> pb_grpc.StreamsServiceStub:
        if self._stub is None:
            intercepted = grpc.intercept_channel(self.channel, _DefaultDeadline(DEFAULT_DEADLINE))
            self._stub = pb_grpc.StreamsServiceStub(intercepted)
        return self._stub

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = None

    # -- stopping --------------------------------------------------------------

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None, "the server is not running"
        self.proc.send_signal(sig)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Waits for the exit; returns the exit code."""
        assert self.proc is not None, "the server is not running"
        code = self.proc.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def stop(
        self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT
    ) -> int | None:
        """Closes the channel, sends ``sig`` and waits; returns the exit code
        (None when not running). A server that does not exit is killed, and
        the timeout raised."""
        self.close_channel()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """``kill -9``: the process dies at once, with calls in flight (which
        then fail); the channel stays open until the next start or close."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(START_TIMEOUT)

    def close(self) -> None:
        """Stops the server whatever its state (for fixtures and ``with``)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.stop()
        self.close_channel()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self.close_channel()
