"""The writer process of ``--workers N`` (N >= 2): the store, once, and N fronts.

The process the user starts becomes the writer. It

1. makes a private folder (mode 0700) for its two Unix sockets;
2. reserves the public port: binds (without listening) a socket on
   ``--listen``, then turns SO_REUSEPORT on and keeps it, so that ``HOST:0``
   becomes one concrete port every front then binds, no other program takes
   it meanwhile, and a port already held (by another workers server too) is
   refused;
3. starts its own StreamsServer on ``unix:DIR/writer.sock`` (the store, the
   consumer groups, retention and background tasks, /metrics) and a store
   host on ``DIR/host.sock`` for the fronts' store calls;
4. spawns N front processes (:mod:`streams.workers.front`, with
   ``subprocess``: grpc and fork do not mix), each with its share of
   ``--memory-budget-bytes``, and prints ``listening on HOST:PORT`` once every
   one of them serves.

SIGHUP is passed on to the fronts (and reloads the writer's own tokens: the
proxied group RPCs are checked there). SIGTERM/SIGINT: the writer's consumer
groups end their streams, the fronts stop gracefully within --shutdown-grace
(their writes still go through the host), then the writer's server, the host
and the store stop. A front that exits on its own is logged and everything
stops the same way, exit status 1: an orchestrator restarts the whole server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO
from wsgiref.simple_server import WSGIServer

from streams import metrics_http, startup
from streams.auth import TokenAuth
from streams.config import Config, OptionError
from streams.limits import Limits, process_share
from streams.page_tokens import PageTokens
from streams.server import ShutdownError, StreamsServer, fair_share
from streams.storage import registry
from streams.workers.front import READY, FrontArgs, secrets_line
from streams.workers.host import StoreHost
from streams.workers.metrics import merged_registry
from streams.workers.proxy import FrontsOnly

# Port 0: a port another writer locked meanwhile is given up for another.
_RESERVE_TRIES = 10
log = logging.getLogger("streams.workers")
# gRPC's cap on HTTP/2 streams per connection.
_MAX_STREAMS = 2**31 - 1
# The longest Unix socket path (sun_path is 108 bytes with its terminating NUL).
_MAX_SOCKET_PATH = 107
_SOCKETS = ("host.sock", "writer.sock")


_PREFIX = "streams-workers-"


def sweep(parent: Path) -> list[Path]:
    """Removes the port lock files nobody holds, and the private folders in
    ``parent`` that writers of this uid left (killed before any front could
    remove it): both sockets refuse
    connections. A writer still starting has its writer socket listening
    before it makes its host socket, so it is never taken for dead."""
    swept = []
    for path in parent.glob("streams-port-*.lock"):
        # Only a killed writer's is left (release removes it): a lock nobody holds.
        with contextlib.suppress(OSError), open(path, "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: in use, kept
            if os.fstat(lock.fileno()).st_ino == os.stat(path).st_ino:
                path.unlink()
                swept.append(path)
    for folder in parent.glob(f"{_PREFIX}*"):
        with contextlib.suppress(OSError):
            if folder.is_symlink() or folder.lstat().st_uid != os.getuid():
                continue
            if all(_refuses(folder / name) for name in _SOCKETS):
                shutil.rmtree(folder)
                swept.append(folder)
    return swept


def _refuses(path: Path) -> bool:
    """True if ``path`` is a Unix socket nobody listens on any more."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


@contextlib.contextmanager
def private_folder(workers: int) -> Iterator[Path]:
    """A fresh folder only this user can enter (0700), for the Unix sockets,
    removed afterwards; OptionError (naming TMPDIR) when none can be made.
    Folders that killed writers left are removed first (:func:`sweep`)."""
    for left in sweep(Path(tempfile.gettempdir())):
        # A folder held sockets and a key; a lock file is an empty leftover.
        level = logging.DEBUG if left.suffix == ".lock" else logging.WARNING
        log.log(level, "removed %s, left by a writer that was killed", left)
    try:
        folder = Path(tempfile.mkdtemp(prefix=_PREFIX))
    except OSError as exc:
        raise OptionError(
            "--workers", workers,
            f"cannot make a private folder for its sockets in TMPDIR "
            f"({os.environ.get('TMPDIR', '/tmp')}): {exc.strerror or exc}; "
            "set TMPDIR to a writable folder or run --workers 1",
        ) from None  # fmt: skip
    try:
        longest = max(len(str(folder / name)) for name in _SOCKETS)
        if longest > _MAX_SOCKET_PATH:
            raise OptionError(
                "--workers", workers,
                f"the socket paths under {folder} are over {_MAX_SOCKET_PATH} bytes; "
                "set TMPDIR to a shorter folder",
            )  # fmt: skip
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def reserve(listen: str) -> tuple[int, list[socket.socket], PortLock]:
    """Binds ``listen`` (HOST:PORT, port 0: any free one) without listening, on
    every address its host resolves to, and locks the port against other
    workers servers; returns the port, the sockets and the lock, to keep while
    the fronts serve it."""
    for _ in range(_RESERVE_TRIES):
        port, held = _bind(listen)
        lock = _lock_port(listen.rpartition(":")[0], port)
        if lock is not None:
            return port, held, lock
        for sock in held:
            sock.close()
        if int(listen.rpartition(":")[2]) != 0:
            break
    raise OptionError("--listen", listen, "cannot listen there: another Streams server holds it")


class PortLock:
    """A held lock on a port's lock file (:func:`_lock_port`)."""

    def __init__(self, path: Path, file: IO[bytes]) -> None:
        self._path = path
        self._file = file

    def release(self) -> None:
        """Removes the file while still holding it (so files of finished runs do
        not pile up in TMPDIR), then unlocks: a writer that opened the file
        before sees it gone once it locks, and tries again (:func:`_lock_port`)."""
        with contextlib.suppress(OSError):
            self._path.unlink()
        self._file.close()


def _lock_port(host: str, port: int) -> PortLock | None:
    """An exclusive lock on HOST:PORT among workers servers, or None when one
    holds it. Two reservations do not refuse each other: neither listens, and
    both allow address reuse (a restart binds over TIME_WAIT), so until the
    first one's fronts listen, a second writer could bind the port too and the
    kernel would share connections between two stores."""
    name = "".join(c if c.isalnum() or c in ".-" else "_" for c in host) or "any"
    path = Path(tempfile.gettempdir()) / f"streams-port-{name}-{port}.lock"
    for _ in range(_RESERVE_TRIES):
        lock = os.fdopen(os.open(path, os.O_RDONLY | os.O_CREAT, 0o644), "rb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Its holder may have removed it (release, sweep) between our open and lock.
            if os.fstat(lock.fileno()).st_ino == os.stat(path).st_ino:
                return PortLock(path, lock)
        except BlockingIOError:
            lock.close()
            return None
        except FileNotFoundError:
            pass
        lock.close()
    return None


def _bind(listen: str) -> tuple[int, list[socket.socket]]:
    host, _, text = listen.rpartition(":")
    host = host.strip("[]")
    try:
        found = socket.getaddrinfo(host, int(text), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OptionError("--listen", listen, f"cannot resolve {host!r}: {exc.strerror}") from None
    port, held, reasons = int(text), [], []
    for family, kind, proto, _, where in found:
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT binds, as gRPC's
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            # Bound before SO_REUSEPORT is on: a port that anyone holds, another
            # workers server included (whose sockets all allow reuse), is refused.
            sock.bind((where[0], port, *where[2:]))
        except OSError as exc:
            sock.close()
            reasons.append(exc.strerror or str(exc))
            continue
        # From now on the fronts (same user, SO_REUSEPORT) may bind it too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        port = sock.getsockname()[1]
        held.append(sock)
    if not held:
        raise OptionError("--listen", listen, f"cannot listen there: {reasons[0]}")
    return port, held


def writer_limits(lim: Limits, workers: int) -> Limits:
    """The writer's server's limits: its share of the memory budget, and caps
    that leave the fronts' own to bind (each front's proxied calls ride one
    connection to it). The Subscribe streams of all fronts together stay under
    one --max-concurrent-streams, as in one process: there is one registry."""
    return dataclasses.replace(
        lim,
        memory_budget_bytes=process_share(lim.memory_budget_bytes, workers),
        max_connections=max(lim.max_connections, workers),
        max_streams_per_connection=min(
            _MAX_STREAMS, lim.max_connections * lim.max_streams_per_connection
        ),
        max_inflight_request_bytes=lim.max_inflight_request_bytes * workers,
    )


class _Fronts:
    """The front processes: spawned, signalled, awaited."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        # Where each front serves its metrics (index, loopback port), once ready.
        self.metrics: list[tuple[int, int]] = []
        # A front takes SIGHUP once it serves (before, it would end the front);
        # after a reload was asked, each front that comes to serve reloads too
        # (one may be starting that is not in procs yet: a spare reload is harmless).
        self._serving: set[int] = set()
        self._reloaded = False

    def spawned(self, pid: int) -> bool:
        """Whether ``pid`` is one of these fronts (the store host admits only them)."""
        return any(proc.pid == pid for proc in self.procs)

    async def spawn(self, front: FrontArgs, argv: Sequence[str], secrets: bytes) -> None:
        # The package may not be installed (``python server.py`` from a checkout).
        root = str(Path(__file__).resolve().parents[2])
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streams.workers.front", *front.argv(), "--", *argv,
            stdin=asyncio.subprocess.PIPE,  # its end tells the front the writer is gone
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )  # fmt: skip
        self.procs.append(proc)
        if proc.stdin is None:
            raise RuntimeError("a front's input is not a pipe")
        # Secrets go on the pipe: a command line and an environment are readable by others.
        proc.stdin.write(secrets)
        await proc.stdin.drain()

    async def ready(self, wait: float) -> None:
        """Waits until every front prints its ready line; raises FrontFailed
        for one that exits first."""

        async def one(index: int, proc: asyncio.subprocess.Process) -> None:
            if proc.stdout is None:
                raise RuntimeError("a front's output is not a pipe")
            while line := await proc.stdout.readline():
                word, _, port = line.decode(errors="replace").strip().partition(" ")
                if word == READY:
                    if port.isdigit() and int(port):
                        self.metrics.append((index, int(port)))
                    self._serving.add(proc.pid)
                    if self._reloaded:
                        self.signal(signal.SIGHUP, proc)
                    return
            # It failed to start; it waits for this line to know the writer is here
            # (else it takes the writer for gone and removes the private folder).
            if proc.stdin is not None and not proc.stdin.is_closing():
                with contextlib.suppress(ConnectionError):
                    proc.stdin.write(b"here\n")
                    await proc.stdin.drain()
            code = await proc.wait()
            raise FrontFailed(f"front {index} (pid {proc.pid}) exited with status {code} "
                              "before serving (see its log above)", code)  # fmt: skip

        async with asyncio.timeout(wait):
            await asyncio.gather(*(one(i, proc) for i, proc in enumerate(self.procs)))

    async def first_exit(self) -> tuple[int, asyncio.subprocess.Process]:
        """The first front to exit."""
        waits = {asyncio.create_task(proc.wait()): i for i, proc in enumerate(self.procs)}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        index = waits[next(iter(done))]
        return index, self.procs[index]

    def reload(self) -> None:
        """SIGHUP (token reload) to every front, once it serves."""
        self._reloaded = True
        for proc in self.procs:
            if proc.pid in self._serving:
                self.signal(signal.SIGHUP, proc)

    def signal(self, signum: signal.Signals, *only: asyncio.subprocess.Process) -> None:
        for proc in only or self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    async def stop(self, grace: float) -> bool:
        """SIGTERM to every front, then waits for them all; one still there
        ``grace`` seconds after the SIGTERM is killed. False if one had
        to be killed or exited with a failure."""
        self.signal(signal.SIGTERM)
        clean = True
        deadline = asyncio.get_running_loop().time() + grace  # one budget for all fronts
        for index, proc in enumerate(self.procs):
            try:
                async with asyncio.timeout_at(deadline):
                    code = await proc.wait()
            except TimeoutError:
                log.error("front %d (pid %d) did not stop in time; killing it", index, proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                code = await proc.wait()
            if code not in (0, -signal.SIGTERM):
                clean = False
        return clean


class FrontFailed(Exception):
    """A front process exited while it should have served."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


async def run(cfg: Config, argv: Sequence[str], auth: TokenAuth | None, pages: PageTokens) -> None:
    """Runs the writer and its fronts until SIGTERM/SIGINT (then returns) or a
    front's failure (exits 1). ``argv`` are the server's arguments, which the
    fronts parse again (with the same environment and folder). ``pages`` is the
    page-token key every process signs with (a listing may go on through another
    front); a random one never touches the disk: the fronts get it on their pipe."""
    if cfg.tls_cert is not None and cfg.tls_key is not None:
        # The fronts read them; a bad file is named before any process starts.
        startup.read_tls_pair(cfg.tls_cert, cfg.tls_key)
        if cfg.tls_client_ca is not None:
            startup.read_client_ca(cfg.tls_client_ca)
    if cfg.metrics_listen:
        startup.check_bindable("--metrics-listen", cfg.metrics_listen)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    port, reserved, port_lock = reserve(cfg.listen)
    fronts = _Fronts()
    with private_folder(cfg.workers) as folder:
        front_secret = secrets.token_hex(32)
        writer_cfg = dataclasses.replace(
            cfg,
            listen=f"unix:{folder / 'writer.sock'}",
            metrics_listen="",  # served below, with the fronts' series
            tls_cert=None,
            tls_key=None,
            tls_client_ca=None,
            limits=writer_limits(cfg.limits, cfg.workers),
        )
        # The fronts' limits, which size the frames both ends accept.
        limits = registry.get(cfg.storage).limits(cfg.limits)
        server = StreamsServer(
            writer_cfg,
            auth,
            pages,
            fair_share_bytes=fair_share(limits),
            handlers=(FrontsOnly(front_secret),),
        )
        host: StoreHost | None = None

        def hangup() -> None:
            server.reload_auth()
            fronts.reload()

        loop.add_signal_handler(signal.SIGHUP, hangup)
        failed: FrontFailed | None = None
        try:
            await server.start()  # on failure it has stopped what it started
        except BaseException:
            for sock in reserved:
                sock.close()
            port_lock.release()
            raise
        try:
            host = StoreHost(
                server.store, folder / "host.sock", limits=limits, allow_peer=fronts.spawned
            )
            await host.start()
            for index in range(cfg.workers):
                front = FrontArgs(
                    index, folder / "host.sock", folder / "writer.sock", port,
                    process_share(cfg.limits.memory_budget_bytes, cfg.workers),
                    fair_share(limits),
                )  # fmt: skip
                await fronts.spawn(front, argv, secrets_line(pages.key, front_secret))
            started = asyncio.create_task(fronts.ready(cfg.front_start_seconds))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait((started, stopped), return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if started.done():
                started.result()  # FrontFailed, or a start that took too long
                http = _serve_metrics(cfg, server, fronts, stop)
                try:
                    failed = await _serve(cfg, port, fronts, stop, http)
                finally:
                    if http is not None:
                        http.shutdown()
                        http.server_close()
            else:
                started.cancel()
        except FrontFailed as exc:
            log.error("%s; stopping", exc)
            failed = exc
        except TimeoutError:
            log.error(
                "the fronts did not all start within --front-start-seconds %.1f; stopping",
                cfg.front_start_seconds,
            )
            failed = FrontFailed("start timed out", 1)
        finally:
            clean = await _stop(cfg, server, host, fronts)
            for sock in reserved:
                sock.close()
            port_lock.release()
    if failed is not None:
        # A front killed by a signal has a negative code: the server's status is 1.
        sys.exit(failed.code if failed.code > 0 else 1)
    if not clean:
        sys.exit(1)
    log.info("stopped")


def _serve_metrics(
    cfg: Config, server: StreamsServer, fronts: _Fronts, stop: asyncio.Event
) -> WSGIServer | None:
    """/metrics and /healthz on --metrics-listen: the writer's series and the fronts'."""
    if not cfg.metrics_listen:
        return None
    registry = merged_registry(
        server.metrics.registry, lambda: list(fronts.metrics), cfg.front_scrape_seconds
    )
    try:
        http, _ = metrics_http.serve(cfg.metrics_listen, registry, lambda: not stop.is_set())
    except OSError as exc:
        raise OptionError(
            "--metrics-listen", cfg.metrics_listen, exc.strerror or str(exc)
        ) from None
    return http


async def _serve(
    cfg: Config, port: int, fronts: _Fronts, stop: asyncio.Event, http: WSGIServer | None
) -> FrontFailed | None:
    """Announces the port and serves until SIGTERM/SIGINT (None) or a front's exit."""
    host = cfg.listen.rsplit(":", 1)[0]
    print(f"listening on {host}:{port}", flush=True)
    metrics = None
    if http is not None:
        metrics = f"{cfg.metrics_listen.rsplit(':', 1)[0]}:{http.server_port}"
    log.info(
        "serving on %s:%d with %d front processes, metrics %s",
        host, port, cfg.workers, f"on http://{metrics}/metrics" if metrics else "off",
        extra={"listen": f"{host}:{port}", "workers": cfg.workers, "storage": cfg.storage,
               "data": str(cfg.data), "sync": cfg.sync, "metrics": metrics},
    )  # fmt: skip
    exited = asyncio.create_task(fronts.first_exit())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait((exited, stopped), return_when=asyncio.FIRST_COMPLETED)
    if stopped.done():
        exited.cancel()
        return None
    stopped.cancel()
    index, proc = exited.result()
    log.error(
        "front %d (pid %d) exited unexpectedly with status %s; stopping the server",
        index, proc.pid, proc.returncode,
    )  # fmt: skip
    return FrontFailed(f"front {index} exited", 1)


async def _stop(
    cfg: Config, server: StreamsServer, host: StoreHost | None, fronts: _Fronts
) -> bool:
    """Graceful stop of everything, in order; False if a step failed."""
    log.info("shutting down, grace %.1fs", cfg.shutdown_grace)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cfg.shutdown_grace
    clean = True
    # The proxied Subscribe streams end first (UNAVAILABLE, settle writes done),
    # or each front's drain would wait for them through the whole grace.
    try:
        await server.end_groups()
    except Exception:
        log.exception("shutdown: consumer groups failed; going on with the rest")
        clean = False
    clean = await fronts.stop(cfg.shutdown_grace + cfg.front_exit_seconds) and clean
    if host is not None:
        try:
            await host.close()
        except Exception:
            log.exception("shutdown: store host failed; going on with the rest")
            clean = False
    try:
        await server.stop(max(0.0, deadline - loop.time()))
    except ShutdownError as exc:
        log.error("%s", exc)
        clean = False
    return clean
