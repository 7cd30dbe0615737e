"""Shutdown drains: calls already running finish and are acked; calls that
arrive meanwhile get UNAVAILABLE (which clients retry), not CANCELLED."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from tests.support.inproc import InProcessServer
from tests.support.waiting import wait_until


def produce(server: InProcessServer, payload: bytes) -> pb.ProduceResponse:
    return server.stub.Produce(
        pb.ProduceRequest(
            space="s",
            writes=[pb.SegmentWrite(segment="a", records=[pb.RecordInput(payload=payload)])],
        ),
        timeout=30,
    )


def refused_as_draining(server: InProcessServer) -> bool:
    try:
        server.stub.Peek(pb.PeekRequest(space="s", segment="a"), timeout=5)
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in exc.details()
    return False


def test_running_produce_is_acked_and_new_calls_are_unavailable(tmp_path: Path) -> None:
    server = InProcessServer(tmp_path / "data")
    try:
        group = server.server.store._group  # the store's group commit
        real_sync = group._sync
        assert real_sync is not None
        syncing, gate = threading.Event(), threading.Event()
        group._sync = lambda: (syncing.set(), gate.wait(20), real_sync())

        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(produce, server, b"in flight")
            assert syncing.wait(20), "the Produce never reached its fsync"
            stopping = pool.submit(server.run, server.server.stop(20), 30)
            # A read is refused once the drain has begun (it never waits on the
            # gated fsync, so probing cannot hold the shutdown).
            wait_until(lambda: refused_as_draining(server), what="the drain to refuse calls")
            with pytest.raises(grpc.RpcError) as refused:
                produce(server, b"too late")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in refused.value.details()
            assert not stopping.done(), "shutdown must wait for the running Produce"
            assert not running.done(), "the Produce must still wait for its fsync"
            gate.set()
            acked = running.result(20)
            stopping.result(30)
        assert (acked.first_position, acked.last_position) == (1, 1)
    finally:
        server.stop()

    restarted = InProcessServer(tmp_path / "data")
    try:
        peeked = restarted.stub.Peek(pb.PeekRequest(space="s", segment="a"))
        assert (peeked.record.payload, peeked.record.sequence) == (b"in flight", 1)
    finally:
        restarted.stop()
