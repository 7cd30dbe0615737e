"""The server under ``python -O``, which strips every ``assert``: invariants
checked by asserts with side effects (the group-commit ticket was taken inside
one, so every Produce hung) or relied on to stop a bad read must not change
behaviour."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.process import ServerProcess

DEADLINE = 10.0


@pytest.fixture
def optimized_server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data", command=(sys.executable, "-O", "server.py"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def produce(stub: pb_grpc.StreamsServiceStub, payloads: list[bytes]) -> pb.ProduceResponse:
    records = [pb.RecordInput(payload=p) for p in payloads]
    request = pb.ProduceRequest(space="opt", writes=[pb.SegmentWrite(segment="a", records=records)])
    return stub.Produce(request, timeout=DEADLINE)


def test_produce_consume_and_follow_under_python_O(optimized_server: ServerProcess) -> None:
    assert optimized_server.proc is not None
    assert "-O" in optimized_server.proc.args, "the server must run with asserts stripped"
    with grpc.insecure_channel(optimized_server.target) as channel:
        stub = pb_grpc.StreamsServiceStub(channel)
        ack = produce(stub, [b"one", b"two"])
        assert (ack.acks[0].first_sequence, ack.acks[0].last_sequence) == (1, 2)

        consumed = [
            r.payload
            for response in stub.Consume(
                pb.ConsumeRequest(space="opt", segment="a"), timeout=DEADLINE
            )
            for r in response.records
        ]
        assert consumed == [b"one", b"two"]

        follow = stub.Consume(
            pb.ConsumeRequest(space="opt", segment="a", from_offset=3, follow=True),
            timeout=DEADLINE,
        )
        try:
            produce(stub, [b"three"])
            followed = next(r for response in follow for r in response.records)
        finally:
            follow.cancel()
        assert (followed.sequence, followed.payload) == (3, b"three")
