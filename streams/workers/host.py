"""The store host: serves the writer's store to front processes over a Unix
socket (see :mod:`streams.workers`)."""

from __future__ import annotations

from pathlib import Path

from streams.limits import Limits
from streams.storage.port import Store


class StoreHost:
    """Serves one store to front processes over a Unix socket.

    Example::

        host = StoreHost(store, Path(private_dir) / "store.sock")
        await host.start()      # fronts may connect now
        ...
        await host.close()      # fronts' calls then raise Unavailable
    """

    def __init__(self, store: Store, path: Path, *, limits: Limits | None = None) -> None:
        """``limits``: the server's (frame sizes follow its request and
        response limits); the defaults when None."""
        self._store = store
        self._path = path
        self._limits = limits or Limits()

    async def start(self) -> None:
        """Listens on ``path``; fronts may connect once it returns."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stops listening and drops every front's connection (their calls then
        raise Unavailable). Leaves the store open: its owner closes it."""
        raise NotImplementedError
