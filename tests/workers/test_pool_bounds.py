"""``--workers N``: the bounds of the writer around its fronts (final read of
issue 16): the /metrics scrape of the fronts, their stop, the port lock files,
the page-token key, the writer's secrets line."""

from __future__ import annotations

import asyncio
import fcntl
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import prometheus_client as prom
import pytest

from streams.v1 import streams_pb2_grpc as pb_grpc
from streams.workers import pool as pool_module
from streams.workers.front import FrontArgs
from streams.workers.metrics import merged_registry
from tests.ops.helpers import scrape
from tests.support.process import ServerProcess
from tests.support.waiting import wait_until
from tests.workers.test_pool import DEADLINE, parse_error, produce

# -- /metrics ------------------------------------------------------------------


def test_the_front_scrape_ignores_http_proxy(tmp_path: Path) -> None:
    # Final read 1: urlopen took the proxy from the environment; the fronts' series were lost.
    flags = ["--metrics-listen", "127.0.0.1:0"]
    env = {"http_proxy": "http://proxy.invalid:3128", "HTTP_PROXY": "http://proxy.invalid:3128"}
    with ServerProcess(tmp_path / "data", workers=2, flags=flags, env=env).start() as server:
        found = wait_until(
            lambda: re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", server.stderr()),
            timeout=DEADLINE,
            what="the metrics address in the log",
        )
        with grpc.insecure_channel(server.target) as channel:
            produce(pb_grpc.StreamsServiceStub(channel), "orders", b"a")
        samples = scrape(int(found.group(1)))
        fronts = {
            dict(labels)["front"]
            for (name, labels), _ in samples.items()
            if name == "streams_memory_budget_bytes" and dict(labels).get("front")
        }
        assert fronts == {"0", "1"}
        assert "did not answer" not in server.stderr()


class _Page(http.server.BaseHTTPRequestHandler):
    body = b""
    stall: threading.Event | None = None

    def do_GET(self) -> None:
        if self.stall is not None:
            self.stall.wait()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def pages() -> Iterator[Callable[..., int]]:
    servers: list[http.server.ThreadingHTTPServer] = []
    released = threading.Event()

    def serve(body: bytes, stall: bool = False) -> int:
        handler = type("H", (_Page,), {"body": body, "stall": released if stall else None})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return int(server.server_address[1])

    yield serve
    released.set()
    for server in servers:
        server.shutdown()
        server.server_close()


def _writer() -> prom.CollectorRegistry:
    registry = prom.CollectorRegistry()
    prom.Gauge("streams_memory_budget_bytes", "budget", registry=registry).set(1)
    return registry


GOOD = b"# TYPE streams_memory_budget_bytes gauge\nstreams_memory_budget_bytes 5.0\n"


def _fronts_in(registry: prom.CollectorRegistry) -> set[str]:
    return {
        s.labels["front"]
        for family in registry.collect()
        for s in family.samples
        if "front" in s.labels
    }


def test_a_malformed_front_page_leaves_out_that_front_only(pages: Callable[..., int]) -> None:
    # Final read 1: the parser's ValueError failed the whole /metrics request.
    fronts = [(0, pages(b"streams_memory_budget_bytes{ not a page\n")), (1, pages(GOOD))]
    assert _fronts_in(merged_registry(_writer(), lambda: fronts, 5.0)) == {"1"}


def test_one_budget_bounds_the_whole_front_scrape(pages: Callable[..., int]) -> None:
    # Final read 1: each front had its own --front-scrape-seconds, one after another.
    wait, stalled = 1.0, 8
    fronts = [(i, pages(GOOD, stall=True)) for i in range(stalled)] + [(stalled, pages(GOOD))]
    began = time.monotonic()
    assert _fronts_in(merged_registry(_writer(), lambda: fronts, wait)) == set()
    # One after another, the stalled fronts took stalled * wait (8 s); the margin
    # is for a loaded machine.
    assert time.monotonic() - began < wait * 4


# -- stop ----------------------------------------------------------------------

_STUBBORN = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def test_hung_fronts_are_killed_within_one_grace_budget() -> None:
    # Final read 2: each front got a fresh grace, one after another (N x grace).
    async def main() -> tuple[bool, float]:
        fronts = pool_module._Fronts()
        for _ in range(4):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _STUBBORN, stdout=asyncio.subprocess.PIPE
            )
            fronts.procs.append(proc)
            assert proc.stdout is not None
            assert await proc.stdout.readline() == b"ready\n"  # SIGTERM is ignored from now
        began = asyncio.get_running_loop().time()
        clean = await fronts.stop(1.0)
        return clean, asyncio.get_running_loop().time() - began

    clean, took = asyncio.run(main())
    assert not clean
    assert took < 3.0  # one budget (1 s) for all four, not 4 s; the rest is margin


def test_front_exit_seconds_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    # Final read 15: 0 was accepted, unlike its two siblings.
    err = parse_error(capsys, ["--front-exit-seconds", "0"], {})
    assert "--front-exit-seconds 0.0: must be positive" in err


# -- port lock files -------------------------------------------------------------


@pytest.fixture
def temp() -> Iterator[Path]:
    # Short: socket paths have at most 107 bytes (see test_pool's sweep test).
    folder = Path(tempfile.mkdtemp(prefix="pl-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_port_lock_files_do_not_pile_up(tmp_path: Path, temp: Path) -> None:
    # Final read 4: each run left $TMPDIR/streams-port-HOST-PORT.lock behind.
    stale = temp / "streams-port-127.0.0.1-1.lock"  # a killed writer's: nobody holds it
    stale.touch()
    held = temp / "streams-port-127.0.0.1-2.lock"  # a running writer's: kept
    with open(held, "wb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        for _ in range(2):
            server = ServerProcess(tmp_path / "data", workers=2, env={"TMPDIR": str(temp)})
            with server.start():
                assert not stale.exists()
                assert held.exists()
                mine = sorted(p.name for p in temp.glob("streams-port-*.lock"))
                assert mine == [held.name, f"streams-port-127.0.0.1-{server.port}.lock"]
                assert server.stop() == 0
            assert sorted(temp.glob("streams-port-*.lock")) == [held]


def test_a_port_lock_removed_by_its_holder_is_taken_again(temp: Path) -> None:
    # The open/lock race of a released lock: the next writer locks a live file.
    os.environ["TMPDIR"], before = str(temp), os.environ.get("TMPDIR")
    tempfile.tempdir = None
    try:
        first = pool_module._lock_port("127.0.0.1", 7)
        assert first is not None
        assert pool_module._lock_port("127.0.0.1", 7) is None  # held
        first.release()
        second = pool_module._lock_port("127.0.0.1", 7)
        assert second is not None
        assert (temp / "streams-port-127.0.0.1-7.lock").exists()
        second.release()
    finally:
        if before is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = before
        tempfile.tempdir = None


# -- the page-token key ------------------------------------------------------------


def test_the_page_token_key_is_read_once(tmp_path: Path) -> None:
    # Final read 5: the pool read --page-token-key a second time (a FIFO written
    # once: the second read waited for ever; a changed file: another key).
    fifo = tmp_path / "key"
    os.mkfifo(fifo)

    def write_once() -> None:
        with open(fifo, "wb") as out:
            out.write(b"k" * 40)

    writer = threading.Thread(target=write_once, daemon=True)
    writer.start()
    server = ServerProcess(tmp_path / "data", workers=2, flags=["--page-token-key", str(fifo)])
    try:
        server.start(timeout=DEADLINE)
    finally:
        server.close()
        if writer.is_alive():  # unblock it
            with open(fifo, "rb"):
                pass


def test_an_unreadable_page_token_key_with_workers_is_named(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", workers=2, flags=["--page-token-key", str(tmp_path)])
    with server:
        server.spawn(stdout=subprocess.DEVNULL)
        assert server.wait() == 2
        assert "--page-token-key:" in server.stderr()
        assert "Traceback" not in server.stderr()


# -- the secrets line ----------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        b'{"front_secret": "x"}\n',
        b'{"page_token_key": "zz", "front_secret": "x"}\n',
    ],
)
def test_a_malformed_secrets_line_ends_a_front_cleanly(tmp_path: Path, line: bytes) -> None:
    # Final read 14: it ended the front with a traceback.
    front = FrontArgs(0, tmp_path / "host.sock", tmp_path / "writer.sock", 1, 1 << 26, 1 << 20)
    done = subprocess.run(
        [sys.executable, "-m", "streams.workers.front", *front.argv(), "--",
         "--data", str(tmp_path / "data")],
        input=line, capture_output=True, timeout=DEADLINE, check=False,
        env={**os.environ, "STREAMS_WORKERS": "2"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert b"the writer's secrets line is malformed" in done.stderr
    assert b"Traceback" not in done.stderr
