"""Failures stay visible: background work is supervised (logged, counted,
retried), shutdown always drains and closes the store, and a store that
cannot write says so on health, in a metric and in the log.

The disk-full cases put the data folder on a small tmpfs (root needed: they
skip elsewhere, and fail when CI is set)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from streams.model import Target
from streams.storage.rocksdb.store import RocksStore
from streams.supervisor import Supervisor
from streams.v1 import streams_pb2 as pb
from tests.reliability.support import fill, tmpfs
from tests.support.inproc import InProcessServer

from .helpers import NOT_SERVING, SERVICE, SERVING, health_status, wait_until

RECORD = b"r" * (256 * 1024)


def test_a_failing_step_is_logged_counted_retried_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures: list[str] = []
    runs: list[int] = []

    async def scenario() -> None:
        recovered = asyncio.Event()

        async def flaky() -> None:
            runs.append(len(runs))
            if len(runs) <= 3:
                raise OSError(28, "No space left on device")
            recovered.set()

        supervisor = Supervisor(on_failure=failures.append, initial_backoff=0.01, max_backoff=0.02)
        supervisor.every("flaky", 3600, flaky)
        await asyncio.wait_for(recovered.wait(), 5)
        assert supervisor.running == ["flaky"]
        await supervisor.stop()  # never raises what the step raised
        assert supervisor.running == []

    with caplog.at_level(logging.WARNING, logger="streams.supervisor"):
        asyncio.run(scenario())
    assert failures == ["flaky"] * 3
    assert len(runs) == 4
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3 and all(r.exc_info for r in errors), (
        "each failure logged with its trace"
    )
    assert "No space left" in caplog.text
    assert "recovered after 3 failures" in caplog.text


# -- a full disk, in process ---------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "fs", "64m") as mount:
        yield mount


def produce_until_refused(server: InProcessServer, txid_prefix: str) -> int:
    """Produces big records (with transaction ids) until one is refused."""
    for n in range(1000):
        request = pb.ProduceRequest(
            space="full",
            transaction_id=f"{txid_prefix}-{n}",
            writes=[pb.SegmentWrite(segment="s", records=[pb.RecordInput(payload=RECORD)])],
        )
        try:
            server.stub.Produce(request, timeout=30)
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
            return n
    pytest.fail("the disk never filled up")


def failures(server: InProcessServer, task: str) -> float:
    registry = server.server.metrics.registry
    return registry.get_sample_value("streams_background_failures_total", {"task": task}) or 0.0


def test_a_failing_background_task_is_retried_and_shutdown_still_closes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue: the dedupe sweeper died silently when it raised (on a full disk,
    from which the store now recovers by itself), then stop() re-raised its error
    and never drained or closed the store. Any background step that raises must
    be logged, counted and retried, and must not keep stop() from closing."""
    data = tmp_path / "data"
    server = InProcessServer(data)
    try:
        produced = server.stub.Produce(
            pb.ProduceRequest(
                space="full", writes=[pb.SegmentWrite(segment="s", records=[pb.RecordInput()])]
            ),
            timeout=10,
        )
        assert produced.last_position == 1

        async def no_space() -> None:
            raise OSError(28, "No space left on device")

        with caplog.at_level(logging.ERROR, logger="streams.supervisor"):
            server.run(_start(server, no_space))
            wait_until(lambda: failures(server, "failing-step") >= 2, 15, "a retried step")
        assert "failing-step failed" in caplog.text
        assert "failing-step" in server.server.background.running
    finally:
        server.stop()  # stop() must not raise the step's error

    # The store was closed: RocksDB's lock is free, and every ack is there.
    async def reopen() -> int:
        reopened = RocksStore.open(data)
        try:
            return await reopened.last_offset(Target("full", "s"))
        finally:
            await reopened.close()

    assert asyncio.run(reopen()) == 1


async def _start(server: InProcessServer, step: Callable[[], Awaitable[None]]) -> None:
    server.server.background.every("failing-step", 3600, step)


def test_health_metric_and_log_follow_the_stores_write_state(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with InProcessServer(small_disk / "data") as server:
        health = health_pb2_grpc.HealthStub(server.channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=60)
        statuses: list[int] = []
        changed = threading.Condition()

        def read() -> None:
            try:
                for reply in watch:
                    with changed:
                        statuses.append(reply.status)
                        changed.notify_all()
            except grpc.RpcError:
                pass

        reader = threading.Thread(target=read, daemon=True)
        reader.start()

        def wait_for(status: int) -> None:
            with changed:
                assert changed.wait_for(lambda: statuses and statuses[-1] == status, 15), statuses

        wait_for(SERVING)
        fill(small_disk / "filler", 4 << 20)
        with caplog.at_level(logging.ERROR, logger="streams"):
            produce_until_refused(server, "h")
            wait_for(NOT_SERVING)
        assert "refuses writes" in caplog.text
        registry = server.server.metrics.registry
        assert registry.get_sample_value("streams_store_writable") == 0
        # Reads still work, and the server as a whole stays SERVING.
        assert health_status(server.channel, "") == SERVING
        assert server.stub.Peek(pb.PeekRequest(space="full"), timeout=10).record.payload == RECORD
        # Room again: the next write reopens the store, and health follows.
        (small_disk / "filler").unlink()
        wait_until(lambda: _produce_small(server), 15, "a write once space is back")
        wait_for(SERVING)
        assert registry.get_sample_value("streams_store_writable") == 1
        watch.cancel()
        reader.join(5)


def _produce_small(server: InProcessServer) -> bool:
    request = pb.ProduceRequest(
        space="full", writes=[pb.SegmentWrite(segment="s", records=[pb.RecordInput(payload=b"x")])]
    )
    try:
        server.stub.Produce(request, timeout=10)
    except grpc.RpcError:
        return False
    return True
