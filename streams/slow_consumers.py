"""Slow consumers: a client that does not take a response within
``--slow-consumer-seconds`` has its connection closed, as NATS does with its
write deadline.

A response handed to gRPC stays in memory (ours and gRPC core's) until the
client's HTTP/2 flow-control window lets it out. A client that never opens its
window would hold it for as long as it keeps the connection up. gRPC's Python
server cannot cancel one call in its core (cancelling the handler's task ends
the handler but leaves the call, and the response buffered for it, in place:
measured, 100 stalled 2 MiB responses kept 400 MiB after every task was
cancelled). Shutting the connection's socket down makes gRPC end every call on
it and free their buffers, so that is what is cut: the connection. Its calls end
UNAVAILABLE on the client's side (when it reads again at all), which clients
retry.

Example::

    slow = SlowConsumers(10.0, on_cut=metrics.slow_consumers.inc)
    timer = slow.watch(context.peer(), "Consume", size)
    ...  # gRPC takes the response
    timer.cancel()
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

_Address = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


class SlowConsumers:
    """Arms a deadline for each response handed to gRPC; closes the connection
    of a client that has not taken it when the deadline passes."""

    def __init__(self, seconds: float, on_cut: Callable[[], None]) -> None:
        if seconds <= 0:
            raise ValueError(f"slow-consumer deadline must be positive, got {seconds}")
        self.seconds = seconds
        self._on_cut = on_cut
        # Connections closed lately (peer -> loop time): each is counted and
        # logged once, however many of its calls were stalled.
        self._closed: dict[str, float] = {}

    def watch(self, peer: str, method: str, size: int) -> asyncio.TimerHandle:
        """Starts the deadline of a response of ``size`` bytes to ``peer``;
        cancel the returned timer once gRPC has taken it."""
        return asyncio.get_running_loop().call_later(self.seconds, self._cut, peer, method, size)

    def _cut(self, peer: str, method: str, size: int) -> None:
        now = asyncio.get_running_loop().time()
        self._closed = {p: t for p, t in self._closed.items() if now - t < self.seconds}
        if peer in self._closed:
            return
        closed = close_connection(peer)
        self._closed[peer] = now
        if not closed:
            log.warning(
                "slow consumer %s: a %s response (%d bytes) not taken in %.1fs, but its "
                "connection was not found to close",
                peer, method, size, self.seconds,
                extra={"peer": peer, "method": method},
            )  # fmt: skip
            return
        self._on_cut()
        log.warning(
            "slow consumer %s: a %s response (%d bytes) not taken in %.1fs "
            "(--slow-consumer-seconds); closed its connection",
            peer, method, size, self.seconds,
            extra={"peer": peer, "method": method},
        )  # fmt: skip


def close_connection(peer: str) -> bool:
    """Shuts down this process's TCP socket connected to ``peer`` (as gRPC
    names it: ``ipv4:10.0.0.1:5000``, ``ipv6:[::1]:5000``); True if one was
    found. gRPC core, which owns the socket, then ends its calls and closes it.

    Each descriptor is duplicated before it is looked at, so one that gRPC
    closes meanwhile (and a new connection that reuses its number) cannot be
    mistaken for the peer's: only a socket whose peer address matches is shut.
    """
    wanted = _peer_address(peer)
    if wanted is None:
        return False
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:  # not Linux
        return False
    for name in descriptors:
        try:
            fd = os.dup(int(name))
        except (OSError, ValueError):
            continue
        try:
            sock = socket.socket(fileno=fd)
        except OSError:  # not a socket
            os.close(fd)
            continue
        with sock:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                host, port = sock.getpeername()[:2]
            except OSError:  # a listener, or not connected
                continue
            if _normal(host, port) == wanted:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # already closed by the peer or gRPC
                    return False
                return True
    return False


def _peer_address(peer: str) -> _Address | None:
    scheme, _, rest = peer.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return None
    host, _, port = rest.rpartition(":")
    try:
        return _normal(host.strip("[]"), int(port))
    except ValueError:
        return None


def _normal(host: str, port: int) -> _Address:
    """An address as comparable: an IPv4 client of a dual-stack socket is
    ``::ffff:a.b.c.d`` to the socket and ``ipv4:a.b.c.d`` to gRPC."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address, port
