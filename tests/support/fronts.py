"""Which front process of a ``--workers N`` server serves a client connection.

The fronts share one port (SO_REUSEPORT) and the kernel hands each new TCP
connection to one of them, so a test that must reach a given front opens
connections until one lands there. A connection is told apart by the client
socket's local port: /proc/net/tcp maps the server side of that connection
(local port = the server's, remote port = the client's) to a socket inode, and
the front holding that inode among its /proc/<pid>/fd links is the one serving it.

Each channel gets a TCP connection of its own (``grpc.use_local_subchannel_pool``
and a distinct channel argument): gRPC otherwise shares one connection among
channels to the same target.

    fronts = front_pids(server.pid)                  # the writer's front children
    chans = channels_per_front(server.port, fronts)  # {front pid: [channel, ...]}

:class:`SpreadServer` is a ServerProcess whose ``stub`` takes turns over a
connection to each front.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from streams.v1 import streams_pb2_grpc as pb_grpc

from .process import DEFAULT_DEADLINE, ServerProcess, _DefaultDeadline
from .waiting import wait_until

FRONT_MODULE = "streams.workers.front"
CONNECT_TIMEOUT = 10.0
# Every attempt is a fresh connection that the kernel hashes to a front: with
# 2 fronts, 40 misses in a row happen once in 2^40.
MAX_ATTEMPTS = 40
_ESTABLISHED = "01"
_LISTEN = "0A"
_serial = itertools.count()
_connecting = threading.Lock()


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _ppid(int(entry)) == pid and alive(int(entry)):
            found.append(int(entry))
    return sorted(found)


def front_pids(
    writer: int, count: int | None = None, timeout: float = CONNECT_TIMEOUT
) -> list[int]:
    """The front processes the writer ``writer`` started (children running
    streams.workers.front); with ``count``, waits until there are that many."""

    def fronts() -> list[int]:
        return [p for p in children(writer) if FRONT_MODULE in _cmdline(p)]

    if count is None:
        return fronts()
    return wait_until(
        lambda: (lambda f: f if len(f) == count else None)(fronts()),
        timeout,
        f"{count} front processes under the writer {writer}",
    )


def fronts_of(data: Path) -> list[int]:
    """Every live front process serving the data folder ``data``, whatever its
    parent now (a front outliving its writer is reparented)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            argv = _cmdline(int(entry))
            if FRONT_MODULE in argv and str(data) in argv and alive(int(entry)):
                found.append(int(entry))
    return sorted(found)


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets ``pid`` holds open."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            link = os.readlink(fd_dir / name)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def _tcp_sockets(state: str) -> Iterator[tuple[int, int, int]]:
    """(local port, remote port, inode) of every TCP socket in ``state``."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != state:
                continue
            local = int(fields[1].rsplit(":", 1)[1], 16)
            remote = int(fields[2].rsplit(":", 1)[1], 16)
            yield local, remote, int(fields[9])


def _tcp_connections() -> Iterator[tuple[int, int, int]]:
    """(local port, remote port, inode) of every established TCP connection."""
    return _tcp_sockets(_ESTABLISHED)


def listening_inodes(port: int) -> set[int]:
    """The inodes of the sockets listening on TCP ``port``."""
    return {inode for local, _, inode in _tcp_sockets(_LISTEN) if local == port}


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on."""
    mine = socket_inodes(pid)
    return {local for local, _, inode in _tcp_sockets(_LISTEN) if inode in mine}


def client_ports(server_port: int) -> set[int]:
    """The local ports of this process's connections to ``server_port``."""
    mine = socket_inodes(os.getpid())
    return {
        local
        for local, remote, inode in _tcp_connections()
        if remote == server_port and inode in mine
    }


def front_serving(server_port: int, client_port: int, fronts: Sequence[int]) -> int | None:
    """The front (of ``fronts``) holding the server side of the connection
    from ``client_port`` to ``server_port``, or None."""
    inodes = {
        inode
        for local, remote, inode in _tcp_connections()
        if local == server_port and remote == client_port
    }
    for pid in fronts:
        if inodes & socket_inodes(pid):
            return pid
    return None


def open_channel(target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A channel with a TCP connection of its own, connected."""
    channel = grpc.insecure_channel(
        target,
        options=[
            ("grpc.use_local_subchannel_pool", 1),
            ("streams.test.connection", next(_serial)),
            *options,
        ],
    )
    grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT)
    return channel


def connect(
    server_port: int, fronts: Sequence[int], options: Sequence[tuple[str, Any]] = ()
) -> tuple[grpc.Channel, int]:
    """A new channel to 127.0.0.1:``server_port`` and the front serving it."""
    with _connecting:  # one new connection at a time, so the new port is ours
        before = client_ports(server_port)
        channel = open_channel(f"127.0.0.1:{server_port}", options)
        try:
            new = wait_until(
                lambda: client_ports(server_port) - before, CONNECT_TIMEOUT, "the new connection"
            )
            (port,) = new
            front = wait_until(
                lambda: front_serving(server_port, port, fronts),
                CONNECT_TIMEOUT,
                f"the front serving client port {port}",
            )
        except BaseException:
            channel.close()
            raise
    return channel, front


def channels_per_front(
    server_port: int,
    fronts: Sequence[int],
    per_front: int = 1,
    options: Sequence[tuple[str, Any]] = (),
) -> dict[int, list[grpc.Channel]]:
    """``per_front`` connected channels to each front: new connections until
    every front has its share (the others are closed)."""
    got: dict[int, list[grpc.Channel]] = {pid: [] for pid in fronts}
    for _ in range(MAX_ATTEMPTS * per_front * len(fronts)):
        if all(len(chans) >= per_front for chans in got.values()):
            return got
        channel, front = connect(server_port, fronts, options)
        if len(got[front]) < per_front:
            got[front].append(channel)
        else:
            channel.close()
    for chans in got.values():
        for channel in chans:
            channel.close()
    raise AssertionError(
        f"the kernel did not spread {MAX_ATTEMPTS * per_front * len(fronts)} connections "
        f"over the fronts {list(fronts)} (does every front serve the port?)"
    )


class SpreadStub:
    """A StreamsService stub whose calls take turns over channels to different
    fronts, so that a write through one front is read through another."""

    def __init__(
        self, channels: Sequence[grpc.Channel], wrap: Callable[[grpc.Channel], grpc.Channel]
    ) -> None:
        self._stubs = [pb_grpc.StreamsServiceStub(wrap(c)) for c in channels]
        self._turn = itertools.cycle(range(len(self._stubs)))
        self._lock = threading.Lock()

    def __getattr__(self, method: str) -> Any:
        with self._lock:
            index = next(self._turn)
        return getattr(self._stubs[index], method)


class ServerGone(ValueError):
    """The server exited while a stub was being made: what a call on a closed
    channel raises (ValueError), so harnesses treat it as an unknown outcome."""


class _Unreachable:
    """A stub of a server that has exited: every call raises ServerGone."""

    def __init__(self, why: ServerGone) -> None:
        self._why = why

    def __getattr__(self, method: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise ServerGone(f"{method}: {self._why}")

        return call


class SpreadServer(ServerProcess):
    """A ``--workers N`` server whose ``stub`` takes turns over one connection
    to each front (``channel`` is a single connection, to whichever front)."""

    def __init__(self, *args: Any, workers: int, **kwargs: Any) -> None:
        super().__init__(*args, workers=workers, **kwargs)
        self.workers = workers
        self._spread: list[grpc.Channel] = []
        self._making = threading.Lock()  # the harnesses' threads ask for the stub at once

    def fronts(self) -> list[int]:
        """The front processes serving now (all ``workers`` of them); ServerGone
        once the writer has exited."""
        writer = self.pid

        def found() -> list[int] | None:
            if not alive(writer):
                raise ServerGone(f"the writer {writer} exited")
            fronts = front_pids(writer)
            return fronts if len(fronts) == self.workers else None

        return wait_until(
            found, CONNECT_TIMEOUT, f"{self.workers} fronts under the writer {writer}"
        )

    @property
    def stub(self) -> Any:
        """The spreading stub; once the server has exited, a stub whose every
        call raises ServerGone (as a closed channel's would: the harnesses'
        threads fetch the stub outside their try blocks)."""
        with self._making:
            try:
                return self._make_stub()
            except ServerGone as gone:
                return _Unreachable(gone)

    def _make_stub(self) -> Any:
        if self._stub is None:
            fronts = self.fronts()
            try:
                per_front = channels_per_front(self.port, fronts)
            except (AssertionError, grpc.FutureTimeoutError):
                if all(alive(pid) for pid in (self.pid, *fronts)):
                    raise
                raise ServerGone(f"the server exited: {self.pid} and fronts {fronts}") from None
            self._spread = [channel for chans in per_front.values() for channel in chans]
            self._stub = SpreadStub(
                self._spread,
                lambda c: grpc.intercept_channel(c, _DefaultDeadline(DEFAULT_DEADLINE)),
            )
        return self._stub

    def close_channel(self) -> None:
        with self._making:
            for channel in self._spread:
                channel.close()
            self._spread = []
            super().close_channel()
