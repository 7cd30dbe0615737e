"""Trim, and reads after it (contract additions, "Numbers after deletion" and
"rpc Trim"): a trim removes a prefix, reads that start before the first
retained record start there, positions of a space read may jump, Peek of a
target with nothing retained is NOT_FOUND, numbers are never reused."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from streams.v1 import streams_pb2 as pb

from .helpers import (
    Stub,
    assert_status,
    consume_all,
    payloads_of,
    positions,
    produce,
    produce_writes,
    rec,
    seqs,
    ts_plus,
    unique,
    write,
)

START = "streams-start"
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def trim(stub: Stub, space: str, segment: str = "", **before: object) -> int:
    return stub.Trim(pb.TrimRequest(space=space, segment=segment, **before)).first_offset


def segment_info(stub: Stub, space: str, segment: str) -> pb.SegmentInfo:
    return stub.GetSegment(pb.GetSegmentRequest(space=space, segment=segment)).segment


def start_and_records(stub: Stub, request: pb.ConsumeRequest) -> tuple[int, list[pb.Record]]:
    call = stub.Consume(request, timeout=10)
    header = dict(call.initial_metadata())[START]
    return int(header), [r for response in call for r in response.records]


@pytest.fixture
def five(stub: Stub, space: str) -> str:
    """Segment "a" with sequences 1-5 (payloads a1..a5), one per transaction."""
    for i in range(1, 6):
        produce(stub, space, "a", [f"a{i}"])
    return space


def test_trim_segment_by_offset(stub: Stub, five: str) -> None:
    assert trim(stub, five, "a", before_offset=3) == 3
    assert seqs(consume_all(stub, five, "a")) == [3, 4, 5]
    info = segment_info(stub, five, "a")
    assert (info.first_sequence, info.last_sequence, info.record_count) == (3, 5, 3)
    assert info.bytes == sum(len(rec(f"a{i}").SerializeToString()) for i in (3, 4, 5))


def test_trim_to_last_plus_one_empties_the_target(stub: Stub, five: str) -> None:
    assert trim(stub, five, "a", before_offset=6) == 6
    assert consume_all(stub, five, "a") == []
    assert_status(lambda: stub.Peek(pb.PeekRequest(space=five, segment="a")), NOT_FOUND)
    info = segment_info(stub, five, "a")
    assert (info.first_sequence, info.last_sequence, info.record_count, info.bytes) == (6, 5, 0, 0)


def test_trim_past_last_plus_one_is_out_of_range(stub: Stub, five: str) -> None:
    assert_status(
        lambda: trim(stub, five, "a", before_offset=7),
        grpc.StatusCode.OUT_OF_RANGE,
        "before_offset",
        "7",
    )
    assert seqs(consume_all(stub, five, "a")) == [1, 2, 3, 4, 5]


def test_trim_below_first_changes_nothing(stub: Stub, five: str) -> None:
    assert trim(stub, five, "a", before_offset=4) == 4
    for before in (0, 1, 3, 4):
        assert trim(stub, five, "a", before_offset=before) == 4
    assert seqs(consume_all(stub, five, "a")) == [4, 5]


def test_numbers_continue_after_a_trim(stub: Stub, five: str) -> None:
    trim(stub, five, "a", before_offset=6)
    ack = produce(stub, five, "a", [b"a6"], expected_sequence=5)
    assert (ack.acks[0].first_sequence, ack.last_position) == (6, 6)
    assert payloads_of(consume_all(stub, five, "a")) == [b"a6"]


def test_trim_space_by_position_cuts_every_segment(stub: Stub, space: str) -> None:
    # Positions: 1 a1, 2 b1, 3 a2, 4 b2, 5 a3.
    for segment, payload in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("b", "b2"), ("a", "a3")]:
        produce(stub, space, segment, [payload])
    assert trim(stub, space, before_offset=4) == 4
    assert positions(consume_all(stub, space)) == [4, 5]
    assert payloads_of(consume_all(stub, space, "a")) == [b"a3"]
    assert payloads_of(consume_all(stub, space, "b")) == [b"b2"]
    assert segment_info(stub, space, "a").first_sequence == 3
    assert segment_info(stub, space, "b").first_sequence == 2
    info = stub.GetSpace(pb.GetSpaceRequest(space=space)).space
    assert (info.first_position, info.last_position, info.record_count) == (4, 5, 2)


def test_trim_of_a_segment_makes_space_positions_jump(stub: Stub, space: str) -> None:
    for segment, payload in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("b", "b2")]:
        produce(stub, space, segment, [payload])
    trim(stub, space, "a", before_offset=3)
    assert positions(consume_all(stub, space)) == [2, 4]
    header, records = start_and_records(stub, pb.ConsumeRequest(space=space, from_offset=1))
    assert positions(records) == [2, 4]
    # The space's first retained position is 2: the read starts there.
    assert header == 2


def test_trim_by_timestamp(stub: Stub, space: str) -> None:
    acks = [produce(stub, space, "a", [f"a{i}"]) for i in range(1, 5)]
    point = acks[2].timestamp
    first = trim(stub, space, "a", before_timestamp=point)
    # Every record stamped before the point goes, none at or after it.
    kept = [
        i + 1
        for i, ack in enumerate(acks)
        if ack.timestamp.ToNanoseconds() >= point.ToNanoseconds()
    ]
    assert first == kept[0]
    assert seqs(consume_all(stub, space, "a")) == kept


def test_trim_by_timestamp_after_everything_empties(stub: Stub, five: str) -> None:
    last = stub.Peek(pb.PeekRequest(space=five, segment="a")).record.timestamp
    assert trim(stub, five, "a", before_timestamp=ts_plus(last, 1)) == 6
    assert consume_all(stub, five, "a") == []


def test_trim_by_timestamp_before_everything_changes_nothing(stub: Stub, five: str) -> None:
    assert trim(stub, five, "a", before_timestamp=Timestamp(seconds=1)) == 1
    assert seqs(consume_all(stub, five, "a")) == [1, 2, 3, 4, 5]


def test_trim_of_a_whole_space_by_timestamp(stub: Stub, space: str) -> None:
    old = produce(stub, space, "a", [b"old"])
    ack = produce_writes(stub, space, [write("a", [b"new"]), write("b", [b"new"])])
    # One clock tick may stamp both transactions alike: then nothing is before the point.
    expected = 2 if old.timestamp.ToNanoseconds() < ack.timestamp.ToNanoseconds() else 1
    assert trim(stub, space, before_timestamp=ack.timestamp) == expected
    assert positions(consume_all(stub, space)) == list(range(expected, 4))


def test_trim_without_a_point_is_invalid_and_names_before(stub: Stub, five: str) -> None:
    assert_status(lambda: stub.Trim(pb.TrimRequest(space=five, segment="a")), INVALID, "before")
    assert len(consume_all(stub, five, "a")) == 5


def test_trim_with_bad_nanos_is_invalid(stub: Stub, five: str) -> None:
    request = pb.TrimRequest(space=five, before_timestamp=Timestamp(seconds=1, nanos=-1))
    assert_status(lambda: stub.Trim(request), INVALID, "before_timestamp.nanos")


def test_trim_of_unknown_targets_is_not_found(stub: Stub, five: str) -> None:
    assert_status(lambda: trim(stub, unique("none"), before_offset=1), NOT_FOUND)
    assert_status(lambda: trim(stub, five, "nope", before_offset=1), NOT_FOUND)
    assert_status(lambda: trim(stub, unique("none"), before_timestamp=Timestamp()), NOT_FOUND)


def test_trim_never_brings_a_record_back(stub: Stub, five: str) -> None:
    trim(stub, five, "a", before_offset=5)
    assert trim(stub, five, "a", before_offset=2) == 5
    assert trim(stub, five, "a", before_timestamp=Timestamp(seconds=1)) == 5
    assert seqs(consume_all(stub, five, "a")) == [5]


# -- reads that start before the first retained record -----------------------


@pytest.mark.parametrize("start", [{}, {"from_offset": 1}, {"from_offset": 2}])
def test_read_before_first_starts_at_first(stub: Stub, five: str, start: dict) -> None:
    trim(stub, five, "a", before_offset=4)
    header, records = start_and_records(stub, pb.ConsumeRequest(space=five, segment="a", **start))
    assert header == 4
    assert seqs(records) == [4, 5]


def test_read_from_timestamp_before_first_starts_at_first(stub: Stub, five: str) -> None:
    trim(stub, five, "a", before_offset=4)
    request = pb.ConsumeRequest(space=five, segment="a", from_timestamp=Timestamp(seconds=1))
    header, records = start_and_records(stub, request)
    assert (header, seqs(records)) == (4, [4, 5])


def test_from_consumer_below_first_starts_at_first_and_offset_is_kept(
    stub: Stub, five: str
) -> None:
    stub.Commit(pb.CommitRequest(consumer="c", space=five, segment="a", offset=1))
    trim(stub, five, "a", before_offset=4)
    header, records = start_and_records(
        stub, pb.ConsumeRequest(space=five, segment="a", from_consumer="c")
    )
    assert (header, seqs(records)) == (4, [4, 5])
    offset = stub.GetOffset(pb.GetOffsetRequest(consumer="c", space=five, segment="a")).offset
    assert offset == 1


def test_from_consumer_above_first_is_unchanged(stub: Stub, five: str) -> None:
    stub.Commit(pb.CommitRequest(consumer="c", space=five, segment="a", offset=4))
    trim(stub, five, "a", before_offset=3)
    header, records = start_and_records(
        stub, pb.ConsumeRequest(space=five, segment="a", from_consumer="c")
    )
    assert (header, seqs(records)) == (5, [5])


def test_follow_of_an_emptied_target_starts_after_it(stub: Stub, five: str) -> None:
    trim(stub, five, "a", before_offset=6)
    call = stub.Consume(
        pb.ConsumeRequest(space=five, segment="a", follow=True, limit=1), timeout=10
    )
    assert dict(call.initial_metadata())[START] == "6"
    produce(stub, five, "a", [b"a6"])
    assert [r.sequence for response in call for r in response.records] == [6]


def test_peek_after_trim_is_the_last_retained(stub: Stub, five: str) -> None:
    trim(stub, five, "a", before_offset=5)
    assert stub.Peek(pb.PeekRequest(space=five, segment="a")).record.sequence == 5
    assert stub.Peek(pb.PeekRequest(space=five)).record.position == 5
    trim(stub, five, before_offset=6)
    assert_status(lambda: stub.Peek(pb.PeekRequest(space=five)), NOT_FOUND)
    assert_status(lambda: stub.Peek(pb.PeekRequest(space=five, segment="a")), NOT_FOUND)


@pytest.mark.parametrize(("space", "segment"), [("$parked", ""), ("$", "a"), ("ok", "$x")])
def test_trim_of_a_reserved_name_is_invalid(stub: Stub, space: str, segment: str) -> None:
    request = pb.TrimRequest(space=space, segment=segment, before_offset=1)
    assert_status(lambda: stub.Trim(request), INVALID, ("space", "segment"), "reserved")
