"""Runs the Streams gRPC server: storage, service, signals, start-up line.

Example (in-process, as the tests do)::

    server = StreamsServer(Config(listen="127.0.0.1:0", data=Path(tmp)))
    port = await server.start()
    ...
    await server.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

import grpc

from streams import config as config_module
from streams.config import Config
from streams.service import StreamsService
from streams.storage.rocksdb import RocksStore, StoreOptions

log = logging.getLogger("streams")


class StreamsServer:
    """The store, the service and the gRPC server, started and stopped together."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.port = 0
        self._store: RocksStore | None = None
        self._server: grpc.aio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def store(self) -> RocksStore:
        assert self._store is not None, "not started"
        return self._store

    @property
    def address(self) -> str:
        """HOST:PORT with the real port, once started."""
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> int:
        """Opens the store and starts serving; returns the bound port."""
        cfg = self.config
        self._store = RocksStore.open(
            cfg.data,
            StoreOptions(sync=cfg.sync, dedupe_window_ns=int(cfg.dedupe_window_seconds * 1e9)),
        )
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", cfg.limits.max_request_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        self._server.add_generic_rpc_handlers((StreamsService(self._store, cfg.limits).handler(),))
        self.port = self._server.add_insecure_port(cfg.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {cfg.listen}")
        await self._server.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_dedupe())
        return self.port

    async def _sweep_dedupe(self) -> None:
        assert self._store is not None
        while True:
            await asyncio.sleep(self.config.dedupe_sweep_seconds)
            # A full sweep means more may be waiting: go on without sleeping.
            while self._store.sweep_expired_dedupe() == self._store.sweep_limit:
                await asyncio.sleep(0)

    async def stop(self, grace: float | None = None) -> None:
        """Refuses new calls, lets in-flight ones finish (up to ``grace``), closes the store."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._store is not None:
            # Followers would otherwise wait out the grace period: end them now
            # with UNAVAILABLE, so their clients reconnect elsewhere or later.
            self._store.end_subscriptions()
        if self._server is not None:
            await self._server.stop(grace)
        if self._store is not None:
            await self._store.close()

    async def wait_for_termination(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


async def _run(cfg: Config) -> None:
    server = StreamsServer(cfg)
    await server.start()
    print(f"listening on {server.address}", flush=True)
    log.info("serving data=%s sync=%s", cfg.data, cfg.sync)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down, grace %.1fs", cfg.shutdown_grace_seconds)
    await server.stop(cfg.shutdown_grace_seconds)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python server.py`` and the ``streams-server`` script."""
    cfg = config_module.parse(argv)
    logging.basicConfig(
        level=cfg.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(_run(cfg))
