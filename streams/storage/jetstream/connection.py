"""The gateway's connection to the NATS cluster: a bounded first connect (a
server that cannot reach NATS refuses to start, naming ``--nats-url``), then
reconnecting for as long as it runs; the client's errors are logged as one
line each (nats-py logs a traceback per failed attempt by default)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import nats
from nats.aio.client import Client

from streams.storage.backend import BackendUnavailable

log = logging.getLogger("streams.storage.jetstream")

# Attempts per server before the first connect gives up, and the pause between them.
CONNECT_ATTEMPTS = 3
CONNECT_WAIT_SECONDS = 0.5
CONNECT_TIMEOUT_SECONDS = 2.0


async def _disconnected() -> None:
    log.warning("NATS connection lost: reconnecting")


async def _reconnected() -> None:
    log.info("NATS connection back")


async def connect(servers: Sequence[str]) -> Client:
    connected = False

    async def error(error: Exception) -> None:
        # Before the first connect succeeds, its failure is reported once, below.
        level = logging.WARNING if connected else logging.DEBUG
        log.log(level, "NATS connection: %s", error or type(error).__name__)

    try:
        nc = await nats.connect(
            list(servers),
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            max_reconnect_attempts=CONNECT_ATTEMPTS,
            reconnect_time_wait=CONNECT_WAIT_SECONDS,
            # Removal notices (feed.py): a gateway hears only the other gateways'.
            no_echo=True,
            error_cb=error,
            disconnected_cb=_disconnected,
            reconnected_cb=_reconnected,
        )
    except Exception as error:
        raise BackendUnavailable(
            f"--nats-url {','.join(servers)}: no NATS server answered "
            f"({CONNECT_ATTEMPTS} attempts each): {error or type(error).__name__}"
        ) from None
    # Connected once: from now on it reconnects for as long as the server runs
    # (nats-py reads this option at each reconnect).
    nc.options["max_reconnect_attempts"] = -1
    connected = True
    return nc
