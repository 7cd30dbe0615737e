"""Runs the Streams gRPC server: storage, service, health, reflection, metrics,
TLS, auth, background work, signals and the start-up line.

Health: ``""`` is SERVING while the server serves (reads work);
``streams.v1.StreamsService`` is SERVING only while the store also accepts
writes (NOT_SERVING after a full disk or a failed fsync, SERVING again when
writes resume). Both turn NOT_SERVING when shutdown starts.

Example (in-process, as the tests do)::

    server = StreamsServer(Config(listen="127.0.0.1:0", data=Path(tmp)))
    port = await server.start()
    ...
    await server.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from streams import config as config_module
from streams import logs, startup
from streams.auth import AuthFileError, TokenAuth
from streams.config import Config, OptionError
from streams.errors import DataLoss
from streams.groups import Groups
from streams.limits import Limits
from streams.memory import MemoryBudget
from streams.metrics import Metrics
from streams.page_tokens import PageKeyError, PageTokens
from streams.service import SERVICE_NAME, StreamsService
from streams.storage import registry
from streams.storage.backend import BackendUnavailable, Setup
from streams.storage.port import Store
from streams.supervisor import Supervisor
from streams.v1 import streams_pb2

log = logging.getLogger("streams")
HEALTH_SERVICES = ("", SERVICE_NAME)
# How often the store's write state is carried to health, metric and log.
WRITE_CHECK_SECONDS = 0.5


# Opens the server's store from what every backend gets (the default: --storage's backend).
StoreOpener = Callable[[Setup], Awaitable[Store]]


class ShutdownError(RuntimeError):
    """A step of stop() failed; every other step still ran (see the log)."""


class StreamsServer:
    """The store, the service and the gRPC server, started and stopped together."""

    def __init__(
        self,
        config: Config,
        auth: TokenAuth | None = None,
        pages: PageTokens | None = None,
        clock: Callable[[], int] = time.time_ns,
        *,
        open_store: StoreOpener | None = None,
        handlers: Sequence[grpc.GenericRpcHandler] = (),
        reuse_port: bool = False,
        fair_share_bytes: int | None = None,
    ) -> None:
        """``clock`` stamps transactions (nanoseconds since the epoch); tests pin it.

        A front process (:mod:`streams.workers`) passes ``open_store`` (its
        remote store), ``handlers`` that take some RPCs before the service does
        (the proxy to the writer) and ``reuse_port`` (the fronts share one port
        through SO_REUSEPORT). ``config.listen`` may be ``unix:PATH``.

        ``fair_share_bytes``: the most a response (or a consumer group's
        unacknowledged deliveries) may hold before the memory budget counts it
        as large; by default the budget over --max-concurrent-streams. Workers
        pass the whole server's, so that a process's share of the budget does
        not shrink it: a group member would wait for its own acks to get
        deliveries it may hold by --max-in-flight.
        """
        self.config = config
        self._clock = clock
        self._open_store = open_store
        self._handlers = tuple(handlers)
        self._reuse_port = reuse_port
        self._fair_share_bytes = fair_share_bytes
        self.auth = auth
        self.pages = pages or PageTokens.load(config.page_token_key)
        self.port = 0
        self.metrics_port = 0
        self.metrics = Metrics(config.data, config.metrics_lag_series)
        self._store: Store | None = None
        self._server: grpc.aio.Server | None = None
        self._service: StreamsService | None = None
        self._groups: Groups | None = None
        self._health = health.aio.HealthServicer()
        self._metrics_http: tuple[WSGIServer, threading.Thread] | None = None
        self.background = Supervisor(
            on_failure=lambda name: self.metrics.background_failures.labels(name).inc()
        )
        self._writable = True
        self._stopping = False

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the server is not started")
        return self._store

    @property
    def address(self) -> str:
        """HOST:PORT with the real port, once started."""
        if self.config.listen.startswith("unix:"):
            return self.config.listen
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> int:
        """Opens the store and starts serving; returns the bound port.

        Raises OptionError (naming the option) for an address that does not
        bind, an unusable data directory or unreadable TLS files, DataLoss for a
        damaged store (the storage backend names its own options); what was
        started is stopped again first.
        """
        try:
            return await self._start()
        except BaseException:
            with contextlib.suppress(ShutdownError):  # each failed step is logged
                await self.stop(0)
            raise

    async def _start(self) -> int:
        cfg = self.config
        for service in HEALTH_SERVICES:
            await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        credentials = self._credentials() if cfg.tls_cert else None
        # A unix socket's folder is the caller's; a shared port is held by the writer.
        if not (cfg.listen.startswith("unix:") or self._reuse_port):
            startup.check_bindable("--listen", cfg.listen)
        if cfg.metrics_listen:
            startup.check_bindable("--metrics-listen", cfg.metrics_listen)
        backend = registry.get(cfg.storage)
        lim = backend.limits(cfg.limits)
        # One budget for the tail's windows and the service's buffered responses.
        memory = MemoryBudget(lim.memory_budget_bytes, self._fair_share_bytes or fair_share(lim))
        try:
            self._store = await (self._open_store or backend.open)(
                Setup(
                    data=cfg.data,
                    sync=cfg.sync,
                    dedupe_window_ns=int(cfg.dedupe_window_seconds * 1e9),
                    follow_linger=cfg.follow_linger_ms / 1000,
                    memory=memory,
                    options=cfg.storage_options,
                    on_fsync=self.metrics.fsync_seconds.observe,
                    clock=self._clock,
                    watch_change_bytes=lim.max_watch_change_bytes,
                )
            )
        except BackendUnavailable as exc:
            raise OptionError("--storage", cfg.storage, str(exc)) from None
        self.metrics.watch_store(self._store)
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", lim.max_request_bytes),
                ("grpc.max_allowed_incoming_connections", lim.max_connections),
                ("grpc.max_concurrent_streams", lim.max_streams_per_connection),
                ("grpc.so_reuseport", int(self._reuse_port)),
                *keepalive_options(cfg.keepalive_seconds, cfg.keepalive_timeout_seconds),
            ]
        )
        self._groups = Groups(self._store, lim, memory)
        self.metrics.watch_groups(self._groups, self._store)
        self._service = StreamsService(
            self._store, lim, self.metrics, self.auth, self.pages, memory,
            cfg.slow_consumer_seconds, self._groups,
        )  # fmt: skip
        # gRPC asks each handler in turn: the injected ones take their RPCs first.
        self._server.add_generic_rpc_handlers((*self._handlers, self._service.handler()))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        # The descriptor pool must know the service for reflection to describe it
        # (importing the generated module registers it).
        streams_pb2.DESCRIPTOR.services_by_name["StreamsService"]
        try:
            self.port = (
                self._server.add_secure_port(cfg.listen, credentials)
                if credentials
                else self._server.add_insecure_port(cfg.listen)
            )
        except RuntimeError as exc:  # it bound a moment ago: something took it since
            raise OptionError("--listen", cfg.listen, f"cannot listen there: {exc}") from None
        if cfg.metrics_listen:
            try:
                self._metrics_http = self.metrics.serve(cfg.metrics_listen, self._serving)
            except OSError as exc:
                raise OptionError(
                    "--metrics-listen", cfg.metrics_listen, exc.strerror or str(exc)
                ) from None
            self.metrics_port = self._metrics_http[0].server_port
        await self._server.start()
        for service_name in HEALTH_SERVICES:
            await self._health.set(service_name, health_pb2.HealthCheckResponse.SERVING)
        for task in self._store.background():
            self.background.every(task.name, task.interval, task.step)
        self.background.every("write-state", WRITE_CHECK_SECONDS, self._check_writes)
        self.background.every("retention", cfg.retention_interval, self._enforce_retention)
        return self.port

    @property
    def metrics_address(self) -> str | None:
        """HOST:PORT of /metrics with the real port, once started; None when off."""
        if not self.metrics_port:
            return None
        host = self.config.metrics_listen.rsplit(":", 1)[0]
        return f"{host}:{self.metrics_port}"

    def _credentials(self) -> grpc.ServerCredentials:
        cfg = self.config
        if cfg.tls_cert is None or cfg.tls_key is None:
            raise ValueError("TLS needs both tls_cert and tls_key")
        cert, key = startup.read_tls_pair(cfg.tls_cert, cfg.tls_key)
        client_ca = startup.read_client_ca(cfg.tls_client_ca) if cfg.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(key, cert)],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    async def _enforce_retention(self) -> None:
        """One retention pass: each space's policy, or the server's default."""
        started = time.perf_counter()
        removed = await self.store.enforce_retention(self.config.retention)
        self.metrics.removed("retention", removed)
        if removed.records:
            log.info(
                "retention removed %d records (%d bytes) in %.3fs",
                removed.records, removed.bytes, time.perf_counter() - started,
                extra={"task": "retention", "records": removed.records, "bytes": removed.bytes},
            )  # fmt: skip

    async def _check_writes(self) -> None:
        """Carries the store's write state to health, the metric and the log."""
        error = self.store.write_error
        if (error is None) == self._writable:
            return
        self._writable = error is None
        self.metrics.store_writable.set(int(self._writable))
        if self._writable:
            log.warning("the store accepts writes again")
            status = health_pb2.HealthCheckResponse.SERVING
        else:
            log.error("the store refuses writes (reads go on): %s", error)
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        await self._health.set(SERVICE_NAME, status)

    async def end_groups(self) -> None:
        """Ends every Subscribe with UNAVAILABLE once its settle writes are done,
        and refuses new ones: a writer's first shutdown step (streams.workers),
        so that the streams its fronts proxy to it do not hold their drains."""
        if self._groups is not None:
            await self._groups.close()

    def reload_auth(self) -> None:
        """Re-reads the token file (SIGHUP); a bad file keeps the old tokens."""
        if self.auth is None:
            log.warning("SIGHUP: no --auth-tokens file to reload")
            return
        try:
            done = self.auth.reload()
        except AuthFileError as exc:
            log.error("SIGHUP: kept the previous tokens: %s", exc)
            return
        log.info("SIGHUP: reloaded %d tokens from %s", done.tokens, self.auth.path)
        if done.ended:
            log.warning("SIGHUP: ended %d open streams the new tokens no longer allow", done.ended)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, ends follow streams, answers new calls UNAVAILABLE while
        the running ones finish (up to ``grace`` seconds), then closes the store.

        Every step runs even when one before it failed (each failure is
        logged); then ShutdownError names the steps that failed.
        """
        grace = grace or 0.0
        self._stopping = True
        deadline = asyncio.get_running_loop().time() + grace
        store, service, server, groups = self._store, self._service, self._server, self._groups

        def remaining() -> float:
            return max(0.0, deadline - asyncio.get_running_loop().time())

        steps: list[tuple[str, Callable[[], Awaitable[object] | None]]] = [
            ("health", self._health.enter_graceful_shutdown),
            ("background tasks", self.background.stop),
            # Followers would otherwise wait out the grace period: end them now
            # with UNAVAILABLE, so their clients reconnect elsewhere or later.
            ("follow streams", store.end_subscriptions if store else _nothing),
            # Ends every Subscribe with UNAVAILABLE once its settle writes are done.
            ("consumer groups", groups.close if groups else _nothing),
            ("drain", (lambda: service.drain(grace)) if service else _nothing),
            ("gRPC server", (lambda: server.stop(remaining())) if server else _nothing),
            ("store", store.close if store else _nothing),
            ("metrics endpoint", self._stop_metrics_http),
        ]
        failed = []
        for name, step in steps:
            try:
                result = step()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("shutdown: %s failed; going on with the rest", name)
                failed.append(name)
        if failed:
            raise ShutdownError(f"shutdown: {', '.join(failed)} failed (see the log)")

    def _serving(self) -> bool:
        """What /healthz says: serving from start until shutdown begins."""
        return self._server is not None and not self._stopping

    def _stop_metrics_http(self) -> None:
        if self._metrics_http is not None:
            http, self._metrics_http = self._metrics_http[0], None
            http.shutdown()
            http.server_close()

    async def wait_for_termination(self) -> None:
        if self._server is None:
            raise RuntimeError("the server is not started")
        await self._server.wait_for_termination()


def fair_share(lim: Limits) -> int:
    """What one response may hold of the budget before it counts as large."""
    return lim.memory_budget_bytes // lim.max_concurrent_streams


def keepalive_options(every: float, timeout: float) -> list[tuple[str, int]]:
    """gRPC server options that ping each connection after ``every`` seconds
    without traffic and close it when no answer comes within ``timeout``: a
    client whose machine or network died (no FIN, no RST) would otherwise hold
    its streams, and a Subscribe its records, for hours (TCP's own timeouts)."""
    return [
        ("grpc.keepalive_time_ms", round(every * 1000)),
        ("grpc.keepalive_timeout_ms", round(timeout * 1000)),
        # gRPC 1.85 waits for a keepalive ping's ack by this one (default a
        # minute or more, measured: no close after 15 s), not keepalive_timeout_ms.
        ("grpc.http2.ping_timeout_ms", round(timeout * 1000)),
        # Also on connections with no call, and on a stream where nothing flows
        # (a group member waiting for records): gRPC stops pinging after 2
        # pings without data unless told otherwise.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def _nothing() -> None:
    return None


async def _run(cfg: Config, auth: TokenAuth | None, pages: PageTokens) -> None:
    server = StreamsServer(cfg, auth, pages)
    # Handlers first: a signal that comes as soon as the ready line is out (or
    # during the start) stops the server gracefully rather than killing it.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_auth)
    await server.start()
    print(f"listening on {server.address}", flush=True)
    log.info(
        "serving on %s, metrics %s",
        server.address,
        f"on http://{server.metrics_address}/metrics" if server.metrics_address else "off",
        extra={"listen": server.address, "storage": cfg.storage, "data": str(cfg.data),
               "sync": cfg.sync,
               "tls": cfg.tls_cert is not None, "auth": auth is not None,
               "metrics": server.metrics_address},
    )  # fmt: skip
    await stop.wait()
    log.info("shutting down, grace %.1fs", cfg.shutdown_grace)
    try:
        await server.stop(cfg.shutdown_grace)
    except ShutdownError as exc:
        log.error("%s", exc)
        sys.exit(1)
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
        pages = PageTokens.load(cfg.page_token_key)
    except PageKeyError as exc:
        print(f"streams-server: --page-token-key: {exc}", file=sys.stderr)
        sys.exit(2)
    if cfg.workers > 1:
        from streams.workers import pool  # loads the store host only where it runs

        given = list(sys.argv[1:] if argv is None else argv)
        runner = pool.run(cfg, given, auth, pages)  # every process signs with this key
    else:
        runner = _run(cfg, auth, pages)
    try:
        asyncio.run(runner)
    except OptionError as exc:
        print(f"streams-server: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except DataLoss as exc:  # only opening the store lets it through: the data is damaged
        print(f"streams-server: refusing to start: {exc}", file=sys.stderr)
        sys.exit(2)
