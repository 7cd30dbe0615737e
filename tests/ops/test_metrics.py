"""Prometheus metrics at /metrics on --metrics-listen; off unless set."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from tests.support.inproc import InProcessServer

from .helpers import (
    CALL_TIMEOUT,
    listening_ports,
    produce,
    read_all,
    rpc_code,
    sample,
    scrape,
    wait_until,
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[InProcessServer]:
    with InProcessServer(tmp_path / "data", metrics_listen="127.0.0.1:0") as srv:
        yield srv


def test_counters_histograms_and_storage_follow_the_calls(server: InProcessServer) -> None:
    port = server.server.metrics_port
    assert port != 0
    before = scrape(port)
    assert sample(before, "streams_produced_records_total") == 0
    assert sample(before, "streams_produce_latency_seconds_count") == 0
    stub = server.stub
    payloads = [b"x" * 1000, b"y" * 2000, b"z" * 3000]
    meta = {"type": "created"}
    produce(stub, "orders", "eu", payloads[:2], record_metadata=meta)
    produce(stub, "orders", "us", payloads[2:], record_metadata=meta)
    assert len(read_all(stub, "orders", "eu")) == 2
    assert len(read_all(stub, "orders")) == 3
    invalid = pb.ProduceRequest(space="", writes=[])
    assert rpc_code(lambda: stub.Produce(invalid, timeout=CALL_TIMEOUT)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert rpc_code(lambda: stub.Peek(pb.PeekRequest(space="nothing"), timeout=CALL_TIMEOUT)) == (
        grpc.StatusCode.NOT_FOUND
    )

    after = scrape(port)
    assert sample(after, "streams_produced_records_total") == 3
    written = sum(len(p) + len("type") + len("created") for p in payloads)
    produced_bytes = sample(after, "streams_produced_bytes_total")
    # Payload and metadata bytes, give or take a few bytes of framing per record.
    assert written <= produced_bytes <= written + 3 * 32
    assert sample(after, "streams_consumed_records_total") == 2 + 3
    # Two acked Produce calls; the invalid one never reached the store.
    assert sample(after, "streams_produce_latency_seconds_count") == 2
    assert sample(after, "streams_produce_latency_seconds_sum") > 0
    assert sample(after, "streams_fsync_seconds_count") > 0
    assert sample(after, "streams_errors_total", method="Produce", code="INVALID_ARGUMENT") == 1
    assert sample(after, "streams_errors_total", method="Peek", code="NOT_FOUND") == 1
    assert sample(after, "streams_active_consume_streams") == 0
    assert sample(after, "streams_storage_bytes") > 0


def test_active_consume_streams_counts_open_followers(server: InProcessServer) -> None:
    port = server.server.metrics_port
    stub = server.stub
    produce(stub, "live", "s", [b"first"])
    follow = stub.Consume(pb.ConsumeRequest(space="live", follow=True), timeout=30)
    follow.initial_metadata()  # the server has fixed the start: the stream is open
    assert sample(scrape(port), "streams_active_consume_streams") == 1
    second = stub.Consume(pb.ConsumeRequest(space="idle", segment="s", follow=True), timeout=30)
    second.initial_metadata()
    assert sample(scrape(port), "streams_active_consume_streams") == 2
    assert [r.payload for r in next(follow).records] == [b"first"]
    produce(stub, "live", "s", [b"second"])
    assert [r.payload for r in next(follow).records] == [b"second"]
    wait_until(
        lambda: sample(scrape(port), "streams_consumed_records_total") == 2,
        what="consumed records to count the followed record",
    )
    follow.cancel()
    wait_until(
        lambda: sample(scrape(port), "streams_active_consume_streams") == 1,
        what="the gauge to drop after a cancel",
    )
    second.cancel()
    wait_until(
        lambda: sample(scrape(port), "streams_active_consume_streams") == 0,
        what="the gauge to come back to 0",
    )


def test_storage_bytes_grow_with_the_data(server: InProcessServer) -> None:
    port = server.server.metrics_port
    before = sample(scrape(port), "streams_storage_bytes")
    for _ in range(4):
        produce(server.stub, "big", "s", [bytes(100_000)] * 5)
    after = sample(scrape(port), "streams_storage_bytes")
    # 2 MB of payload, stored twice (segment and space keys) in the WAL at least.
    assert after - before >= 2_000_000


def test_metrics_are_off_unless_asked_for(tmp_path: Path) -> None:
    before = listening_ports(os.getpid())
    with InProcessServer(tmp_path / "data") as server:
        assert server.server.metrics_port == 0
        # The server opened the gRPC port and nothing else (the subprocess
        # variant of this check, with the real defaults, is in test_config.py).
        assert listening_ports(os.getpid()) - before == {server.port}
