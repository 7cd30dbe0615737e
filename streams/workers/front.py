"""A front process: a StreamsServer over the writer's store, on the shared port.

Started by the writer (:mod:`streams.workers.pool`), never by hand::

    python -m streams.workers.front --index 0 --host-socket DIR/host.sock \\
        --writer-socket DIR/writer.sock --port 50051 --memory-budget-bytes B \\
        --fair-share-bytes F -- <the server's own arguments>

Its standard input is a pipe from the writer: the first line is a JSON object
of what must not be on a command line or in the environment (``page_token_key``,
hex: the key every process signs page tokens with; ``front_secret``: what the
writer's server takes calls with, see streams.workers.proxy); its end tells the
front that the writer is gone.

It parses the server's arguments as the writer did (same environment, same
folder), then serves ``--listen``'s host on ``--port`` with SO_REUSEPORT: its
store is a RemoteStore (calls to the writer's store host), the group RPCs are
forwarded to the writer (:mod:`streams.workers.proxy`), everything else is the
ordinary service. It prints ``ready PORT`` once it serves (PORT: where its
metrics are, for the writer's /metrics; 0 without --metrics-listen).

SIGTERM: graceful stop within --shutdown-grace. SIGHUP: token reload. SIGINT
is the writer's to act on (a terminal's Ctrl-C reaches the whole group). It
exits at once, status 1, when the writer is gone: the store host's connection
closed (``RemoteStore.lost``) or its standard input, a pipe from the writer,
reached its end. A writer that is gone (killed) cannot remove its private
folder: the front that notices does, whether it was serving or still starting.
A front that fails to start closes its standard output and waits for the
writer's answer on standard input (a line: the writer is there and removes the
folder itself) or its end (the writer is gone: the front removes the folder).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import grpc

from streams import config as config_module
from streams import logs, metrics_http
from streams.auth import AuthFileError, TokenAuth
from streams.config import Config, OptionError
from streams.page_tokens import PageTokens
from streams.server import ShutdownError, StreamsServer
from streams.slow_consumers import SlowConsumers
from streams.storage import registry
from streams.storage.backend import Setup
from streams.storage.port import Store
from streams.workers import remote
from streams.workers.proxy import CHANNEL_OPTIONS, WriterProxy

log = logging.getLogger("streams.workers")
READY = "ready"


@dataclasses.dataclass(frozen=True, slots=True)
class FrontArgs:
    """What the writer tells a front besides the server's own arguments."""

    index: int
    host_socket: Path
    writer_socket: Path
    port: int
    memory_budget_bytes: int
    fair_share_bytes: int

    def argv(self) -> list[str]:
        return [
            "--index", str(self.index),
            "--host-socket", str(self.host_socket),
            "--writer-socket", str(self.writer_socket),
            "--port", str(self.port),
            "--memory-budget-bytes", str(self.memory_budget_bytes),
            "--fair-share-bytes", str(self.fair_share_bytes),
        ]  # fmt: skip


def _parse(argv: Sequence[str]) -> tuple[FrontArgs, list[str]]:
    parser = argparse.ArgumentParser(prog="streams-front")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--host-socket", type=Path, required=True)
    parser.add_argument("--writer-socket", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--memory-budget-bytes", type=int, required=True)
    parser.add_argument("--fair-share-bytes", type=int, required=True)
    parser.add_argument("server_argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    rest = args.server_argv[1:] if args.server_argv[:1] == ["--"] else args.server_argv
    del args.server_argv
    return FrontArgs(**vars(args)), rest


def front_config(server: Config, front: FrontArgs) -> Config:
    """The server's configuration as one front serves it: the shared port, its
    share of the memory budget, no /metrics (the writer serves it) and no
    further workers. Its page-token key is the writer's, from the pipe."""
    host = server.listen.rsplit(":", 1)[0]
    return dataclasses.replace(
        server,
        listen=f"{host}:{front.port}",
        workers=1,
        metrics_listen="",
        page_token_key=None,
        limits=dataclasses.replace(server.limits, memory_budget_bytes=front.memory_budget_bytes),
    )


class _FrontField(logging.Filter):
    """Adds ``front`` (the index) to each record: a key of ``--log-format json``."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self._index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.front = self._index
        return True


def secrets_line(page_token_key: bytes, front_secret: str) -> bytes:
    """The first line the writer sends each front on its standard input."""
    given = {"page_token_key": page_token_key.hex(), "front_secret": front_secret}
    return json.dumps(given).encode() + b"\n"


class _WriterPipe(asyncio.Protocol):
    """Standard input, the writer's pipe: its first line (the secrets) sets
    ``secrets``; a later line ``answered`` (the writer is there); its end ``gone``."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()
        self.answered = asyncio.Event()
        self.secrets: asyncio.Future[dict[str, str]] = asyncio.Future()
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        if self.secrets.done():
            self.answered.set()
            return
        self._buffer += data
        line, found, rest = self._buffer.partition(b"\n")
        if found:
            self._buffer = b""
            try:
                self.secrets.set_result(json.loads(line))
            except ValueError as exc:
                self.secrets.set_exception(exc)
            if rest:
                self.answered.set()

    def eof_received(self) -> bool | None:
        self._ended()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended()

    def _ended(self) -> None:
        self.gone.set()
        if not self.secrets.done():
            self.secrets.set_exception(EOFError("the writer closed the pipe before its secrets"))


def _writer_is_gone(folder: Path) -> NoReturn:
    """Exits at once (status 1), removing the private folder a killed writer left."""
    shutil.rmtree(folder, ignore_errors=True)
    logging.shutdown()
    os._exit(1)


async def _ask_writer(pipe: _WriterPipe, stop: asyncio.Event) -> bool:
    """After a failed start: True if the writer is gone. Closing standard output
    makes the writer answer on the pipe if it is there (or stop this front)."""
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    events = (pipe.answered, pipe.gone, stop)
    waits = [asyncio.create_task(event.wait()) for event in events]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in waits:
        task.cancel()
    return not (pipe.answered.is_set() or stop.is_set())


async def serve(
    cfg: Config, front: FrontArgs, auth: TokenAuth | None, metrics: bool = False
) -> int:
    """Serves until SIGTERM (0 once stopped) or the writer's end (exits the
    process, 1). With ``metrics`` its series are served on a loopback port for
    the writer's /metrics (streams.workers.metrics), told in the ready line."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    folder = front.host_socket.parent
    watch, pipe = await loop.connect_read_pipe(_WriterPipe, sys.stdin)
    try:
        given = await pipe.secrets
        pages = PageTokens(bytes.fromhex(given["page_token_key"]))
        secret = given["front_secret"]
    except EOFError:
        _writer_is_gone(folder)
    except (ValueError, KeyError, TypeError) as exc:  # PageKeyError is a ValueError
        # The writer is trusted: a bad line is its bug, told plainly rather than as a traceback.
        log.error("front %d: the writer's secrets line is malformed: %r", front.index, exc)
        return 2
    channel = grpc.aio.insecure_channel(f"unix:{front.writer_socket}", options=CHANNEL_OPTIONS)
    server: StreamsServer | None = None

    def cut() -> None:
        if server is not None:
            server.metrics.slow_consumers.inc()

    async def open_store(setup: Setup) -> Store:
        return await remote.connect(
            front.host_socket, setup, limits=registry.get(cfg.storage).limits(cfg.limits)
        )

    async def barrier() -> None:
        if server is not None:
            await server.store.barrier()  # type: ignore[attr-defined]  # a RemoteStore

    proxy = WriterProxy(
        channel,
        SlowConsumers(cfg.slow_consumer_seconds, cut),
        secret=secret,
        barrier=barrier,
    )
    server = StreamsServer(
        cfg,
        auth,
        pages,
        open_store=open_store,
        handlers=(proxy,),
        reuse_port=True,
        fair_share_bytes=front.fair_share_bytes,
    )
    loop.add_signal_handler(signal.SIGHUP, server.reload_auth)
    try:
        await server.start()
    except Exception:
        # A writer killed while this front starts: its host refuses the connection.
        if pipe.gone.is_set() or await _ask_writer(pipe, stop):
            log.error("front %d: the writer is gone; exiting", front.index)
            _writer_is_gone(folder)
        raise
    lost: asyncio.Event = server.store.lost  # type: ignore[attr-defined]  # a RemoteStore
    http = metrics_http.serve("127.0.0.1:0", server.metrics.registry, lambda: True)[0] if (
        metrics
    ) else None  # fmt: skip
    print(f"{READY} {http.server_port if http else 0}", flush=True)
    log.info("front %d (pid %d) serving on %s", front.index, os.getpid(), server.address)
    waits = [asyncio.create_task(event.wait()) for event in (stop, pipe.gone, lost)]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    if not stop.is_set():
        # Nothing can be written or read any more; calls in flight fail as the connection did.
        log.error("front %d: the writer is gone; exiting", front.index)
        _writer_is_gone(folder)
    for task in waits:
        task.cancel()
    proxy.close()
    try:
        await server.stop(cfg.shutdown_grace)
    except ShutdownError as exc:
        log.error("front %d: %s", front.index, exc)
        return 1
    finally:
        await channel.close()
        watch.close()
        if http is not None:
            http.shutdown()
            http.server_close()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    front, server_argv = _parse(sys.argv[1:] if argv is None else argv)
    given = config_module.parse(server_argv)
    cfg = front_config(given, front)
    logs.setup(cfg.log_level, cfg.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_FrontField(front.index))
    # The writer's Ctrl-C handling stops this process (SIGTERM), in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        auth = TokenAuth.load(cfg.auth_tokens) if cfg.auth_tokens is not None else None
        sys.exit(asyncio.run(serve(cfg, front, auth, metrics=bool(given.metrics_listen))))
    except (AuthFileError, OptionError) as exc:
        print(f"streams-server: front {front.index}: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
