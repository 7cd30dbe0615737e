"""RemoteStore: a front process's :class:`~streams.storage.port.Store`, every
call served by the writer's :class:`~streams.workers.host.StoreHost`.

Followers are served from a local :class:`~streams.storage.tail.Tail`: per
followed target the host pushes each durable record once to this front, so
waking followers and reading the newest records costs no round trip.
``background()`` is empty and ``enforce_retention()`` removes nothing: the
writer runs them once for every front.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from streams.limits import Limits
from streams.storage.backend import Setup


class RemoteStore:
    """A :class:`~streams.storage.port.Store` over a connection to a StoreHost."""

    # Set when the connection to the host is gone (the writer died or closed
    # the host): every call raises Unavailable from then on.
    lost: asyncio.Event


async def connect(path: Path, setup: Setup, *, limits: Limits | None = None) -> RemoteStore:
    """Connects to the StoreHost listening on ``path``. ``setup.memory``,
    ``setup.follow_linger`` and ``setup.watch_change_bytes`` configure the
    local tail; ``limits`` (the server's; defaults when None) size frames."""
    raise NotImplementedError
