"""A following ``Consumer`` and a producing ``Client``, both with default settings,
ride out a server stopped for ``OUTAGE_SECONDS`` (20 by default, as issue 11
asks; ``STREAMS_TEST_OUTAGE_SECONDS`` changes it) and started again on the same
port and data: both continue, nothing acknowledged is lost, nothing is written
twice, and the consumer sees every record once, in order.

A real server process, stopped with SIGTERM. The test waits for events (records
seen, acknowledgements, the server's ``listening`` line); only the outage itself
is a timed wait, since it is the scenario.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.client import Client, Consumer
from tests.support.process import ServerProcess, free_port

OUTAGE_SECONDS = float(os.environ.get("STREAMS_TEST_OUTAGE_SECONDS", "20"))
PROGRESS_TIMEOUT = 60.0


class Progress:
    """What the producer and the consumer threads did, and a way to wait on it."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.acked: list[bytes] = []
        self.seen: list[bytes] = []
        self.errors: list[BaseException] = []

    def add(self, items: list[bytes], item: bytes) -> None:
        with self.changed:
            items.append(item)
            self.changed.notify_all()

    def failed(self, exc: BaseException) -> None:
        with self.changed:
            self.errors.append(exc)
            self.changed.notify_all()

    def wait(self, what: str, predicate: Callable[[], bool]) -> None:
        with self.changed:
            done = self.changed.wait_for(lambda: predicate() or self.errors, PROGRESS_TIMEOUT)
            assert not self.errors, f"{what}: {self.errors!r}"
            assert done, f"timed out waiting until {what}"


@pytest.mark.parametrize("outage", [OUTAGE_SECONDS], ids=lambda s: f"{s:g}s")
def test_a_consumer_and_a_producer_ride_out_a_server_stop(
    tmp_path: Path, outage: float, caplog: pytest.LogCaptureFixture
) -> None:
    # A fixed port: the restarted server must be where the clients reconnect.
    server = ServerProcess(tmp_path / "data", port=free_port()).start()
    progress = Progress()
    stop_producing = threading.Event()
    try:
        with Client(server.target) as client, caplog.at_level(logging.WARNING, "streams.client"):
            consumer = Consumer(client, "projector", "orders")

            def produce() -> None:
                n = 0
                try:
                    while not stop_producing.is_set():
                        n += 1
                        payload = str(n).encode()
                        client.produce("orders", f"customer-{n % 3}", payload)
                        progress.add(progress.acked, payload)
                except BaseException as exc:
                    progress.failed(exc)

            def consume() -> None:
                try:
                    for record in consumer:
                        progress.add(progress.seen, record.payload)
                except BaseException as exc:
                    progress.failed(exc)

            producer = threading.Thread(target=produce, name="producer")
            reader = threading.Thread(target=consume, name="consumer")
            producer.start()
            reader.start()
            progress.wait("the consumer saw 20 records", lambda: len(progress.seen) >= 20)

            server.stop()  # SIGTERM: drains, then exits
            acked_before = len(progress.acked)
            time.sleep(outage)  # the outage: the scenario, not a synchronisation
            assert producer.is_alive() and reader.is_alive(), progress.errors
            server.start()  # same port and data; returns on its "listening" line

            progress.wait(
                "the producer went on after the restart",
                lambda: len(progress.acked) >= acked_before + 20,
            )
            stop_producing.set()
            producer.join(PROGRESS_TIMEOUT)
            assert not producer.is_alive()
            progress.wait(
                "the consumer caught up", lambda: len(progress.seen) >= len(progress.acked)
            )
            consumer.close()
            reader.join(PROGRESS_TIMEOUT)
            assert not reader.is_alive() and not progress.errors, progress.errors

            stored = [record.payload for record in client.consume("orders")]
            committed = client.get_offset("projector", "orders")
    finally:
        stop_producing.set()
        server.stop()

    assert sorted(stored) == sorted(progress.acked), "an acknowledged record was lost or doubled"
    assert progress.seen == stored, "the consumer missed, doubled or reordered records"
    assert committed == len(stored)
    retried = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert any(line.startswith("Produce orders:") for line in retried), retried
    assert any(line.startswith("Consume orders (follow):") for line in retried), retried
