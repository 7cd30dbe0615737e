"""Consume's `streams-start` initial metadata (contract additions, "Consume: start
offset and segment filter"): the first offset the read delivers, fixed when the
server takes the request, whether or not a record exists there yet."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from streams.v1 import streams_pb2 as pb

from .helpers import Stub, positions, produce, produce_writes, ts_plus, unique, write

START = "streams-start"


def start_of(stub: Stub, request: pb.ConsumeRequest) -> tuple[str, list[pb.Record]]:
    """The `streams-start` header of a Consume, and the records it delivered."""
    call = stub.Consume(request, timeout=10)
    headers = dict(call.initial_metadata())
    assert START in headers, f"no {START} in the initial metadata: {headers}"
    return headers[START], [r for response in call for r in response.records]


def follow_start(stub: Stub, request: pb.ConsumeRequest) -> str:
    """The header of a follow Consume that has nothing to deliver yet: it comes
    before any record, as soon as the start is fixed."""
    request.follow = True
    call = stub.Consume(request, timeout=10)
    try:
        return dict(call.initial_metadata())[START]
    finally:
        call.cancel()


@pytest.fixture
def filled(stub: Stub, space: str) -> list[pb.ProduceResponse]:
    """Positions: 1 a1, 2 a2, 3 b1, 4 a3, 5 b2, 6 b3 (four transactions)."""
    return [
        produce(stub, space, "a", [b"a1", b"a2"]),
        produce(stub, space, "b", [b"b1"]),
        produce_writes(stub, space, [write("a", [b"a3"]), write("b", [b"b2", b"b3"])]),
    ]


def test_no_start_is_offset_one(stub: Stub, space: str, filled: list) -> None:
    header, records = start_of(stub, pb.ConsumeRequest(space=space))
    assert header == "1"
    assert positions(records)[0] == 1


@pytest.mark.parametrize(("requested", "expected"), [(0, "1"), (1, "1"), (4, "4"), (6, "6")])
def test_from_offset_is_the_requested_offset(
    stub: Stub, space: str, filled: list, requested: int, expected: str
) -> None:
    header, records = start_of(stub, pb.ConsumeRequest(space=space, from_offset=requested))
    assert header == expected
    assert positions(records)[0] == int(expected)


def test_from_offset_past_the_end_is_that_offset(stub: Stub, space: str, filled: list) -> None:
    header, records = start_of(stub, pb.ConsumeRequest(space=space, from_offset=50))
    assert (header, records) == ("50", [])
    assert follow_start(stub, pb.ConsumeRequest(space=space, from_offset=50)) == "50"


def test_segment_offsets_are_sequences(stub: Stub, space: str, filled: list) -> None:
    header, records = start_of(stub, pb.ConsumeRequest(space=space, segment="b", from_offset=2))
    assert header == "2"
    assert [r.payload for r in records] == [b"b2", b"b3"]
    assert follow_start(stub, pb.ConsumeRequest(space=space, segment="b", from_end=True)) == "4"


def test_from_end_is_last_plus_one(stub: Stub, space: str, filled: list) -> None:
    assert start_of(stub, pb.ConsumeRequest(space=space, from_end=True)) == ("7", [])
    assert follow_start(stub, pb.ConsumeRequest(space=space, from_end=True)) == "7"


def test_from_end_of_an_unknown_space_is_one(stub: Stub) -> None:
    nowhere = unique("nowhere")
    assert follow_start(stub, pb.ConsumeRequest(space=nowhere, from_end=True)) == "1"
    assert start_of(stub, pb.ConsumeRequest(space=nowhere)) == ("1", [])


def test_from_timestamp_is_the_offset_found(stub: Stub, space: str, filled: list) -> None:
    third = filled[2]  # positions 4..6
    header, records = start_of(stub, pb.ConsumeRequest(space=space, from_timestamp=third.timestamp))
    assert header == "4"
    assert positions(records) == [4, 5, 6]
    # Between two transactions: the first record after that time.
    between = ts_plus(filled[0].timestamp, 1)
    header, records = start_of(stub, pb.ConsumeRequest(space=space, from_timestamp=between))
    assert int(header) == positions(records)[0] == 3


def test_from_timestamp_after_every_record_is_last_plus_one(
    stub: Stub, space: str, filled: list
) -> None:
    later = ts_plus(filled[-1].timestamp, 1)
    assert start_of(stub, pb.ConsumeRequest(space=space, from_timestamp=later)) == ("7", [])
    assert follow_start(stub, pb.ConsumeRequest(space=space, from_timestamp=later)) == "7"
    header, _ = start_of(stub, pb.ConsumeRequest(space=space, from_timestamp=Timestamp()))
    assert header == "1"


def test_from_consumer_is_committed_plus_one(stub: Stub, space: str, filled: list) -> None:
    consumer = unique("c")
    header, _ = start_of(stub, pb.ConsumeRequest(space=space, from_consumer=consumer))
    assert header == "1"  # none committed
    stub.Commit(pb.CommitRequest(consumer=consumer, space=space, offset=3), timeout=10)
    header, records = start_of(stub, pb.ConsumeRequest(space=space, from_consumer=consumer))
    assert header == "4"
    assert positions(records) == [4, 5, 6]
    stub.Commit(pb.CommitRequest(consumer=consumer, space=space, offset=6), timeout=10)
    assert follow_start(stub, pb.ConsumeRequest(space=space, from_consumer=consumer)) == "7"


def test_the_start_is_fixed_when_the_request_is_taken(stub: Stub, space: str) -> None:
    """A from_end follower resumes from the header and misses nothing written
    between its first call and its reconnect (issue 11 item 3)."""
    produce(stub, space, "a", [b"before"])
    first = stub.Consume(pb.ConsumeRequest(space=space, from_end=True, follow=True), timeout=10)
    start = dict(first.initial_metadata())[START]
    first.cancel()  # the connection drops before any record came
    produce(stub, space, "a", [b"after 1", b"after 2"])
    resumed = stub.Consume(
        pb.ConsumeRequest(space=space, from_offset=int(start), limit=2), timeout=10
    )
    assert [r.payload for response in resumed for r in response.records] == [
        b"after 1",
        b"after 2",
    ]


def test_a_refused_request_sends_no_start(stub: Stub, space: str) -> None:
    call = stub.Consume(pb.ConsumeRequest(space=space, max_batch=10_001), timeout=10)
    with pytest.raises(grpc.RpcError) as refused:
        list(call)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert START not in dict(call.initial_metadata())
