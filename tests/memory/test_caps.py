"""The caps on concurrent Consume streams and on request bytes in flight:
RESOURCE_EXHAUSTED naming the limit and its value, and room again once freed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from streams.limits import Limits
from streams.model import Target
from streams.v1 import streams_pb2 as pb
from tests.ops.helpers import produce, sample, scrape, wait_until
from tests.support.inproc import InProcessServer


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[InProcessServer]:
    limits = Limits(
        max_concurrent_streams=3, max_request_bytes=1024, max_inflight_request_bytes=1024
    )
    with InProcessServer(tmp_path / "data", limits=limits, metrics_listen="127.0.0.1:0") as server:
        yield server


def metric(server: InProcessServer, name: str, **labels: str) -> float:
    return sample(scrape(server.server.metrics_port), name, **labels)


def follow(server: InProcessServer, space: str) -> grpc.Call:
    call = server.stub.Consume(pb.ConsumeRequest(space=space, from_end=True, follow=True))
    call.initial_metadata()  # the stream is open on the server
    return call


def test_streams_beyond_the_cap_are_refused_until_one_ends(capped: InProcessServer) -> None:
    calls = [follow(capped, "s") for _ in range(3)]
    refused = capped.stub.Consume(pb.ConsumeRequest(space="s", from_end=True, follow=True))
    with pytest.raises(grpc.RpcError) as caught:
        next(refused)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_concurrent_streams (3)" in caught.value.details()
    # Unary calls are not streams: they still run.
    produce(capped.stub, "s", "a", [b"x"])
    calls[0].cancel()
    wait_until(lambda: metric(capped, "streams_active_consume_streams") == 2)
    calls.append(follow(capped, "s"))
    for call in calls:
        call.cancel()


def test_request_bytes_in_flight_beyond_the_cap_are_refused(capped: InProcessServer) -> None:
    # A follow stream's request stays in flight as long as the stream: its bytes count.
    name = "n" * 255
    held = capped.stub.Consume(
        pb.ConsumeRequest(space=name, segment=name, from_consumer=name, follow=True)
    )
    held.initial_metadata()
    held_bytes = metric(capped, "streams_inflight_request_bytes")
    assert held_bytes > 700
    with pytest.raises(grpc.RpcError) as caught:
        produce(capped.stub, "s", "a", [b"x" * 400])
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_inflight_request_bytes (1024)" in caught.value.details()
    # Nothing was written.
    assert capped.run(capped.server.store.last_offset(Target("s"))) == 0
    held.cancel()
    wait_until(lambda: metric(capped, "streams_inflight_request_bytes") == 0)
    produce(capped.stub, "s", "a", [b"x" * 400])
