"""Every server of the contract suite starts through :class:`Launcher` (the
``launch`` fixture of conftest.py), so that each runs on the backend under
test with that backend's settings."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from streams.storage import registry
from tests.support.fronts import SpreadServer
from tests.support.nats import NatsCluster
from tests.support.process import ServerProcess


class Launcher:
    """Starts servers on the module's backend: every server of the contract
    suite starts here, so that each runs on the backend under test.

    ``with launch(tmp, *flags) as server`` starts one on ``tmp/data`` with
    ``flags`` after the backend's own (a jetstream server gets the session
    cluster's URLs and a ``--nats-prefix`` of its own: an empty store).
    ``via_env=True`` passes the backend's settings as ``STREAMS_*`` variables
    instead, as the server's listen address and data folder then are.
    ``workers`` >= 2 starts a writer and that many fronts, whose ``stub``
    spreads its calls over every front (tests/support/fronts.py).
    """

    def __init__(self, storage: str, cluster: NatsCluster | None, workers: int = 1) -> None:
        self.storage = storage
        self._cluster = cluster
        self.workers = workers

    def settings(self) -> dict[str, str]:
        """The options that choose this backend, by flag name (a new prefix
        each time: a new, empty store)."""
        if self.storage == registry.DEFAULT:
            return {}
        if self._cluster is None:
            return {"storage": self.storage}
        return {
            "storage": self.storage,
            "nats-url": ",".join(self._cluster.urls),
            "nats-prefix": f"t{uuid.uuid4().hex[:16]}",
        }

    @contextlib.contextmanager
    def __call__(self, tmp: Path, *flags: str, via_env: bool = False) -> Iterator[ServerProcess]:
        data = tmp / "data"
        data.mkdir()
        settings = self.settings()
        if via_env:
            env = {"STREAMS_" + k.upper().replace("-", "_"): v for k, v in settings.items()}
            backend: tuple[str, ...] = ()
        else:
            env = {}
            backend = tuple(part for k, v in settings.items() for part in (f"--{k}", v))
        kind = ServerProcess if self.workers == 1 else SpreadServer
        server = kind(
            data,
            tmp / "server.log",
            flags=(*backend, *flags),
            env=env,
            via_env=via_env,
            workers=self.workers,
        )
        try:
            yield server.start()
        finally:
            server.close()
