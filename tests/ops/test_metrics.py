"""Prometheus metrics at /metrics on --metrics-listen; off unless set."""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from tests.support.fronts import listening_ports
from tests.support.inproc import InProcessServer
from tests.support.process import ServerProcess

from .helpers import (
    CALL_TIMEOUT,
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


def scrape_once_counted(port: int, *series: tuple[str, dict[str, str]]) -> Any:
    """A scrape that has every one of ``series``: a call is counted as it ends,
    which its client may see before the server has counted it."""
    keys = [(name, frozenset(labels.items())) for name, labels in series]

    def counted() -> Any:
        samples = scrape(port)
        return samples if all(key in samples for key in keys) else None

    return wait_until(counted, what=f"{series} counted")


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

    after = scrape_once_counted(
        port,
        ("streams_errors_total", {"method": "Produce", "code": "INVALID_ARGUMENT"}),
        ("streams_errors_total", {"method": "Peek", "code": "NOT_FOUND"}),
    )
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


def get(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` of the metrics endpoint: status and body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_requests_are_counted_by_method_and_code_ok_included(server: InProcessServer) -> None:
    port = server.server.metrics_port
    stub = server.stub
    produce(stub, "orders", "eu", [b"a"])
    produce(stub, "orders", "eu", [b"b"])
    bad = pb.ProduceRequest(space="orders", writes=[])
    assert rpc_code(lambda: stub.Produce(bad, timeout=CALL_TIMEOUT)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    read_all(stub, "orders")
    after = scrape_once_counted(
        port,
        ("streams_requests_total", {"method": "Produce", "code": "INVALID_ARGUMENT"}),
        ("streams_requests_total", {"method": "Consume", "code": "OK"}),
    )
    assert sample(after, "streams_requests_total", method="Produce", code="OK") == 2
    assert sample(after, "streams_requests_total", method="Produce", code="INVALID_ARGUMENT") == 1
    assert sample(after, "streams_requests_total", method="Consume", code="OK") == 1
    # The error ratio, as an alert would compute it.
    produced = [
        v
        for (name, labels), v in after.items()
        if name == "streams_requests_total" and ("method", "Produce") in labels
    ]
    assert sum(produced) == 3


def test_every_rpc_has_a_latency_histogram_follow_streams_excluded(server: InProcessServer) -> None:
    port = server.server.metrics_port
    stub = server.stub
    produce(stub, "s", "a", [b"x"])
    read_all(stub, "s")
    stub.Peek(pb.PeekRequest(space="s"), timeout=CALL_TIMEOUT)
    stub.Commit(pb.CommitRequest(consumer="c", space="s", offset=1), timeout=CALL_TIMEOUT)
    stub.GetOffset(pb.GetOffsetRequest(consumer="c", space="s"), timeout=CALL_TIMEOUT)
    stub.ListSpaces(pb.ListSpacesRequest(), timeout=CALL_TIMEOUT)
    stub.ListSegments(pb.ListSegmentsRequest(space="s"), timeout=CALL_TIMEOUT)
    follow = stub.Consume(pb.ConsumeRequest(space="s", follow=True), timeout=30)
    next(follow)
    follow.cancel()
    # Polled for presence: sample() fails at once on a series not exported yet.
    labels = frozenset({("method", "Consume"), ("code", "CANCELLED")})
    cancelled = ("streams_requests_total", labels)
    wait_until(lambda: cancelled in scrape(port), what="the cancelled follow stream to be counted")
    after = scrape(port)
    for method in ("Produce", "Peek", "Commit", "GetOffset", "ListSpaces", "ListSegments"):
        assert sample(after, "streams_request_duration_seconds_count", method=method) == 1
        assert sample(after, "streams_request_duration_seconds_sum", method=method) > 0
    # The stored read is timed; the follow stream, which lasts as long as its client, is not.
    assert sample(after, "streams_request_duration_seconds_count", method="Consume") == 1


def test_no_created_series(server: InProcessServer) -> None:
    produce(server.stub, "s", "a", [b"x"])
    status, text = get(server.server.metrics_port, "/metrics")
    assert status == 200
    assert "streams_requests_total" in text
    assert "_created" not in text


def test_healthz_has_its_own_answer_and_other_paths_are_not_found(server: InProcessServer) -> None:
    port = server.server.metrics_port
    status, body = get(port, "/healthz")
    assert (status, body) == (200, "serving\n")
    assert "streams_" not in body
    for path in ("/", "/other", "/metricsx"):
        status, body = get(port, path)
        assert status == 404 and "streams_" not in body, path


def test_consumer_lag_per_committed_consumer(server: InProcessServer) -> None:
    port = server.server.metrics_port
    stub = server.stub
    produce(stub, "orders", "eu", [b"1", b"2", b"3"])
    produce(stub, "orders", "us", [b"4", b"5"])
    commit = stub.Commit
    commit(pb.CommitRequest(consumer="billing", space="orders", offset=2), timeout=CALL_TIMEOUT)
    commit(
        pb.CommitRequest(consumer="billing", space="orders", segment="us", offset=1),
        timeout=CALL_TIMEOUT,
    )
    commit(pb.CommitRequest(consumer="audit", space="orders", offset=5), timeout=CALL_TIMEOUT)
    lag = scrape(port)
    assert sample(lag, "streams_consumer_lag", consumer="billing", space="orders", segment="") == 3
    assert (
        sample(lag, "streams_consumer_lag", consumer="billing", space="orders", segment="us") == 1
    )
    assert sample(lag, "streams_consumer_lag", consumer="audit", space="orders", segment="") == 0
    assert sample(lag, "streams_consumer_lag_truncated") == 0
    produce(stub, "orders", "us", [b"6"])
    lag = scrape(port)
    assert sample(lag, "streams_consumer_lag", consumer="billing", space="orders", segment="") == 4
    assert sample(lag, "streams_consumer_lag", consumer="audit", space="orders", segment="") == 1


def test_consumer_lag_series_are_bounded(tmp_path: Path) -> None:
    with InProcessServer(
        tmp_path / "data", metrics_listen="127.0.0.1:0", metrics_lag_series=2
    ) as server:
        produce(server.stub, "s", "a", [b"x"] * 4)
        for consumer in ("c1", "c2", "c3"):
            server.stub.Commit(
                pb.CommitRequest(consumer=consumer, space="s", offset=1), timeout=CALL_TIMEOUT
            )
        lag = scrape(server.server.metrics_port)
        series = {
            dict(labels)["consumer"] for name, labels in lag if name == "streams_consumer_lag"
        }
        assert series == {"c1", "c2"}
        assert sample(lag, "streams_consumer_lag_truncated") == 1


def test_the_log_names_the_metrics_port_actually_bound(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", flags=["--metrics-listen", "127.0.0.1:0"])
    with server.start():
        produce(server.stub, "s", "a", [b"x"])
        found = wait_until(
            lambda: re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", server.stderr()),
            what="the serving log line",
        )
        port = int(found.group(1))
        assert port != 0
        assert sample(scrape(port), "streams_produced_records_total") == 1
