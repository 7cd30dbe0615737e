"""Runs the Streams gRPC server: storage, service, health, reflection, metrics,
TLS, auth, signals and the start-up line.

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
import threading
from collections.abc import Sequence
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from streams import config as config_module
from streams import logs
from streams.auth import AuthFileError, TokenAuth
from streams.config import Config
from streams.errors import DataLoss
from streams.metrics import Metrics
from streams.service import SERVICE_NAME, StreamsService
from streams.storage.rocksdb import RocksStore, StoreOptions
from streams.v1 import streams_pb2

log = logging.getLogger("streams")
HEALTH_SERVICES = ("", SERVICE_NAME)


class StreamsServer:
    """The store, the service and the gRPC server, started and stopped together."""

    def __init__(self, config: Config, auth: TokenAuth | None = None) -> None:
        self.config = config
        self.auth = auth
        self.port = 0
        self.metrics_port = 0
        self.metrics = Metrics(config.data)
        self._store: RocksStore | None = None
        self._server: grpc.aio.Server | None = None
        self._service: StreamsService | None = None
        self._health = health.aio.HealthServicer()
        self._metrics_http: tuple[WSGIServer, threading.Thread] | None = None
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
        for service in HEALTH_SERVICES:
            await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._store = RocksStore.open(
            cfg.data,
            StoreOptions(
                sync=cfg.sync,
                dedupe_window_ns=int(cfg.dedupe_window_seconds * 1e9),
                on_fsync=self.metrics.fsync_seconds.observe,
                follow_linger=cfg.follow_linger_ms / 1000,
            ),
        )
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", cfg.limits.max_request_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        self._service = StreamsService(self._store, cfg.limits, self.metrics, self.auth)
        self._server.add_generic_rpc_handlers((self._service.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        # The descriptor pool must know the service for reflection to describe it.
        assert streams_pb2.DESCRIPTOR.services_by_name["StreamsService"]
        self.port = (
            self._server.add_secure_port(cfg.listen, self._credentials())
            if cfg.tls_cert
            else self._server.add_insecure_port(cfg.listen)
        )
        if self.port == 0:
            raise OSError(f"cannot listen on {cfg.listen}")
        await self._server.start()
        if cfg.metrics_listen:
            self._metrics_http = self.metrics.serve(cfg.metrics_listen)
            self.metrics_port = self._metrics_http[0].server_port
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_dedupe())
        for service_name in HEALTH_SERVICES:
            await self._health.set(service_name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    def _credentials(self) -> grpc.ServerCredentials:
        cfg = self.config
        assert cfg.tls_cert is not None and cfg.tls_key is not None
        client_ca = cfg.tls_client_ca.read_bytes() if cfg.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    async def _sweep_dedupe(self) -> None:
        store = self.store
        while True:
            await asyncio.sleep(self.config.dedupe_sweep_seconds)
            # A full sweep means more may be waiting: go on without sleeping.
            while store.sweep_expired_dedupe() == store.sweep_limit:
                await asyncio.sleep(0)

    def reload_auth(self) -> None:
        """Re-reads the token file (SIGHUP); a bad file keeps the old tokens."""
        if self.auth is None:
            log.warning("SIGHUP: no --auth-tokens file to reload")
            return
        try:
            count = self.auth.reload()
        except AuthFileError as exc:
            log.error("SIGHUP: kept the previous tokens: %s", exc)
        else:
            log.info("SIGHUP: reloaded %d tokens from %s", count, self.auth.path)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, ends follow streams, answers new calls UNAVAILABLE while
        the running ones finish (up to ``grace`` seconds), then closes the store."""
        grace = grace or 0.0
        deadline = asyncio.get_running_loop().time() + grace
        await self._health.enter_graceful_shutdown()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._store is not None:
            # Followers would otherwise wait out the grace period: end them now
            # with UNAVAILABLE, so their clients reconnect elsewhere or later.
            self._store.end_subscriptions()
        if self._service is not None:
            await self._service.drain(grace)
        if self._server is not None:
            await self._server.stop(max(0.0, deadline - asyncio.get_running_loop().time()))
        if self._store is not None:
            await self._store.close()
        if self._metrics_http is not None:
            self._metrics_http[0].shutdown()
            self._metrics_http[0].server_close()
            self._metrics_http = None

    async def wait_for_termination(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


async def _run(cfg: Config, auth: TokenAuth | None) -> None:
    server = StreamsServer(cfg, auth)
    await server.start()
    print(f"listening on {server.address}", flush=True)
    log.info(
        "serving",
        extra={"listen": server.address, "data": str(cfg.data), "sync": cfg.sync,
               "tls": cfg.tls_cert is not None, "auth": auth is not None,
               "metrics": cfg.metrics_listen or None},
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_auth)
    await stop.wait()
    log.info("shutting down, grace %.1fs", cfg.shutdown_grace)
    await server.stop(cfg.shutdown_grace)
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python server.py`` and the ``streams-server`` script."""
    cfg = config_module.parse(argv)
    logs.setup(cfg.log_level, cfg.log_format)
    auth = None
    if cfg.auth_tokens is not None:
        try:
            auth = TokenAuth.load(cfg.auth_tokens)
        except AuthFileError as exc:
            print(f"streams-server: --auth-tokens: {exc}", file=sys.stderr)
            sys.exit(2)
    try:
        asyncio.run(_run(cfg, auth))
    except DataLoss as exc:  # only opening the store lets it through: the data is damaged
        print(f"streams-server: refusing to start: {exc}", file=sys.stderr)
        sys.exit(2)
