"""The Consumer's commits: a transient failure (the server unreachable or slow,
after the client's own retries) is logged and tried again; any other error
(PermissionDenied, say) reaches the application instead of being retried
forever in silence.

The faults come from a real gRPC proxy in front of a real server: it passes
every call through as bytes, except the Commit calls it is told to fail."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from streams import AsyncClient, Client, Consumer, RetryPolicy
from streams.client import AsyncConsumer
from streams.errors import PermissionDenied
from tests.support.inproc import InProcessServer

from .fault_proxy import FaultProxy, Forward

ONCE = RetryPolicy(attempts=1)  # every failed commit reaches the consumer


class CommitFaults(FaultProxy):
    """The pass-through proxy, failing Commit calls on demand."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.queued: list[grpc.StatusCode] = []  # the next commits fail with these
        self.always: grpc.StatusCode | None = None  # then every commit fails with this
        self.failed = 0
        self.hooks["Commit"] = self._commit

    def _commit(self, forward: Forward, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            fault = self.queued.pop(0) if self.queued else self.always
            self.failed += fault is not None
        if fault is not None:
            context.abort(fault, f"injected by the test proxy: {fault.name}")
        return forward()


@pytest.fixture
def proxy(inproc: InProcessServer) -> Iterator[CommitFaults]:
    faults = CommitFaults(inproc.target)
    yield faults
    faults.close()


def test_a_denied_commit_reaches_the_application(
    proxy: CommitFaults, caplog: pytest.LogCaptureFixture
) -> None:
    proxy.always = grpc.StatusCode.PERMISSION_DENIED
    with Client(proxy.target, retry=ONCE) as client:
        client.produce("s", "a", [b"1", b"2"])
        consumer = Consumer(client, "c", "s", commit_every=1000, commit_interval=0.05)
        outcome: dict[str, Any] = {"got": []}

        def read() -> None:
            try:
                for record in consumer:
                    outcome["got"].append(record.position)
            except Exception as exc:
                outcome["error"] = exc

        reader = threading.Thread(target=read, daemon=True)
        with caplog.at_level(logging.WARNING, logger="streams.client"):
            reader.start()
            # Waiting for a third record, the reader must learn of the timer's failed commit.
            reader.join(15)
            assert not reader.is_alive(), "the denied commit never reached the application"
            assert isinstance(outcome.get("error"), PermissionDenied), outcome
            assert outcome["got"] == [1, 2]
            with pytest.raises(PermissionDenied):
                consumer.close()  # its final commit is denied too, and says so
        assert "commit of offset" in caplog.text and "PERMISSION_DENIED" in caplog.text
        assert client.get_offset("c", "s") is None


def test_a_transient_commit_failure_is_logged_and_tried_again(
    proxy: CommitFaults, caplog: pytest.LogCaptureFixture
) -> None:
    proxy.queued = [grpc.StatusCode.UNAVAILABLE] * 2
    with Client(proxy.target, retry=ONCE) as client:
        client.produce("s", "a", [b"1", b"2"])
        consumer = Consumer(client, "c", "s", commit_every=1000, commit_interval=0.05)
        reader = threading.Thread(target=lambda: list(consumer), daemon=True)
        with caplog.at_level(logging.WARNING, logger="streams.client"):
            reader.start()
            committed = threading.Event()
            for _ in range(300):  # the timer commits offset 2 once the faults are used up
                if client.get_offset("c", "s") == 2:
                    committed.set()
                    break
                committed.wait(0.05)
            assert committed.is_set(), f"never committed; {proxy.failed} commits failed"
        assert proxy.failed == 2
        retried = [r for r in caplog.records if "retrying later" in r.getMessage()]
        assert len(retried) == 2, caplog.text
        consumer.close()
        reader.join(10)
        assert not reader.is_alive()


def test_the_async_consumer_raises_a_denied_commit(proxy: CommitFaults) -> None:
    proxy.always = grpc.StatusCode.PERMISSION_DENIED

    async def scenario() -> list[int]:
        got: list[int] = []
        async with AsyncClient(proxy.target, retry=ONCE) as client:
            await client.produce("s", "a", [b"1", b"2"])
            consumer = AsyncConsumer(client, "c", "s", commit_every=1000, commit_interval=0.05)
            with pytest.raises(PermissionDenied):
                async for record in consumer:
                    got.append(record.position)
            with pytest.raises(PermissionDenied):
                await consumer.close()
        return got

    assert asyncio.run(asyncio.wait_for(scenario(), 15)) == [1, 2]
