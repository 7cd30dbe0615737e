"""WatchSegments calls that never take their responses (HTTP/2 window 0, see
tests/memory/stalled.py) hold no more than the memory budget: a watch builds
its next message only once the budget has room for it, cut to what the
budget allows (as Consume cuts its batches), and never holds a message built
ahead of the one gRPC is sending.

The server is a process with an 8 MiB budget (tests/memory/budget_server.py)
on the memory backend, its slow-consumer deadline far beyond the test's.
"""

from __future__ import annotations

from pathlib import Path

import h2.events

from streams.v1 import streams_pb2 as pb
from tests.memory.budget_server import BUDGET, MIB, SLACK, Server
from tests.memory.stalled import StalledClient
from tests.ops.helpers import wait_until

# What one stalled call costs outside the budget (its call, task and buffers).
PER_CALL = 64 * 1024
PATIENT = 600  # --slow-consumer-seconds: never reached
SEGMENTS = 4000
# Long names, so a snapshot takes more than one full (1 MiB) message.
NAME_PAD = "n" * 240


def answered(clients: list[StalledClient]) -> int:
    """Calls whose response headers arrived (the server sent them a message)."""
    return sum(
        isinstance(event, h2.events.ResponseReceived)
        for client in clients
        for event in list(client.events)
    )


def test_stalled_watchers_hold_no_more_than_the_budget(tmp_path: Path) -> None:
    server = Server(tmp_path, "watchers", storage="memory", slow_consumer_seconds=PATIENT)
    try:
        server.produce("probe", {"a": [b"probe"]})
        for first in range(0, SEGMENTS, 1000):
            names = [f"{NAME_PAD}-{i:05d}" for i in range(first, first + 1000)]
            server.produce("wide", {name: [b"x"] for name in names})
        server.mark()
        watchers = 120  # each snapshot is over 1 MiB: 120 of them held, over 120 MiB
        bound = BUDGET + watchers * PER_CALL + SLACK
        request = pb.WatchSegmentsRequest(space="wide").SerializeToString()
        clients = [StalledClient(server.process.target) for _ in range(3)]
        try:
            for i in range(watchers):
                clients[i % 3].call("WatchSegments", request)
            wait_until(
                lambda: answered(clients) == watchers or server.growth() > bound,
                timeout=60,
                what="every watcher holding its first message, or memory past the bound",
            )
            assert server.growth() <= bound, f"RSS grew {server.growth() / MIB:.1f} MiB"
            assert answered(clients) == watchers
            assert server.metric("streams_active_consume_streams") == watchers  # all still open
            server.probe()
        finally:
            for client in clients:
                client.close()
    finally:
        server.close()
