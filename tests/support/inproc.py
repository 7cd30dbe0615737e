"""A StreamsServer in this process: its own event loop in a thread, an
ephemeral loopback port, a real RocksDB in the given folder, and a stub over a
real channel. Tests reach server-side state through ``server`` and run
coroutines on its loop with ``run``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc

from streams.auth import TokenAuth
from streams.config import Config
from streams.server import StreamsServer
from streams.v1 import streams_pb2_grpc as pb_grpc

T = TypeVar("T")


class InProcessServer:
    """A started server plus a stub, optionally with token auth and a clock of
    the test's; ``overrides`` go to :class:`Config` (listen defaults to
    127.0.0.1:0)."""

    def __init__(
        self,
        data: Path,
        auth: TokenAuth | None = None,
        clock: Callable[[], int] = time.time_ns,
        **overrides: Any,
    ) -> None:
        self.config = dataclasses.replace(Config(listen="127.0.0.1:0", data=data), **overrides)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = StreamsServer(self.config, auth, clock=clock)
        self.port = self.run(self.server.start())
        self.target = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = pb_grpc.StreamsServiceStub(self.channel)
        self._stopping: concurrent.futures.Future[None] | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def begin_stop(self, grace: float) -> concurrent.futures.Future[None]:
        """Starts a graceful stop without waiting for it."""
        self._stopping = asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop)
        return self._stopping

    def stop(self) -> None:
        """Stops the server (finishing a ``begin_stop``, or again, harmlessly,
        if a test stopped it) and its loop."""
        if self.loop.is_closed():
            return
        self.channel.close()
        if self._stopping is not None:
            self._stopping.result(30)
        else:
            self.run(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> InProcessServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
