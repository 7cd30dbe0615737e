"""Fixtures shared by the white-box tests: an in-process grpc.aio server.

The server runs on its own event loop in a thread, on an ephemeral loopback
port, over a real RocksDB in a temporary folder; tests talk to it through the
generated stubs over a real channel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from streams.config import Config
from streams.server import StreamsServer
from streams.v1 import streams_pb2_grpc

T = TypeVar("T")


class InProcessServer:
    """A started server plus a stub; ``run`` executes a coroutine on its loop."""

    def __init__(self, data: Path, **overrides: Any) -> None:
        self.config = dataclasses.replace(Config(listen="127.0.0.1:0", data=data), **overrides)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = StreamsServer(self.config)
        self.port = self.run(self.server.start())
        self.target = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = streams_pb2_grpc.StreamsServiceStub(self.channel)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Stops the server (again, harmlessly, if a test stopped it) and its loop."""
        if self.loop.is_closed():
            return
        self.channel.close()
        self.run(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-seconds",
        type=float,
        default=None,
        help="how long the load soak (tests/reliability/test_soak.py) runs; default 60 "
        "(or STREAMS_SOAK_SECONDS)",
    )
    parser.addoption(
        "--sigterm-cycles",
        type=int,
        default=None,
        help="SIGTERM-under-load cycles of tests/reliability/test_sigterm.py; default 50 "
        "(or STREAMS_SIGTERM_CYCLES)",
    )


@pytest.fixture
def inproc(tmp_path: Path) -> Iterator[InProcessServer]:
    server = InProcessServer(tmp_path / "data")
    try:
        yield server
    finally:
        server.stop()
