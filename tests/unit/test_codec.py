"""Hand-built protobuf bytes parse as the messages they stand for."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from streams import codec, status
from streams.v1 import streams_pb2 as pb

u64 = st.integers(min_value=1, max_value=2**64 - 1)


@given(u64)
def test_varint_is_protobufs(value: int) -> None:
    assert pb.GetOffsetResponse(offset=value).SerializeToString() == b"\x08" + codec.varint(value)


@given(
    st.lists(st.binary(max_size=20_000), min_size=1, max_size=5),
)
def test_consume_response_frames_stored_records(payloads: list[bytes]) -> None:
    header = codec.record_header("space", "segment", 1_700_000_000_123_456_789, "tx")
    stored = [
        codec.record(header, i + 1, i + 10, pb.RecordInput(payload=p).SerializeToString())
        for i, p in enumerate(payloads)
    ]
    framed = codec.consume_response(stored)
    assert len(framed) == sum(codec.framed_size(s) for s in stored)
    parsed = pb.ConsumeResponse.FromString(framed)
    assert [r.payload for r in parsed.records] == payloads
    assert [(r.sequence, r.position) for r in parsed.records] == [
        (i + 1, i + 10) for i in range(len(payloads))
    ]
    assert {(r.space, r.segment, r.transaction_id) for r in parsed.records} == {
        ("space", "segment", "tx")
    }
    assert codec.record_timestamp_ns(stored[0]) == 1_700_000_000_123_456_789


@given(st.integers(min_value=1, max_value=5), st.integers(min_value=1, max_value=4000))
def test_take_cuts_by_count_and_bytes_but_keeps_one(count: int, max_bytes: int) -> None:
    records = [b"x" * 1000] * 5
    taken = codec.take(records, count, max_bytes)
    assert 1 <= len(taken) <= count
    assert len(taken) == 1 or sum(codec.framed_size(r) for r in taken) <= max_bytes
    if len(taken) < count:
        assert sum(codec.framed_size(r) for r in records[: len(taken) + 1]) > max_bytes


def test_invariants_hold_without_asserts() -> None:
    """Checks that always run, also under ``python -O``."""
    with pytest.raises(ValueError, match="varint"):
        codec.varint(-1)
    with pytest.raises(ValueError, match="varint"):
        codec.varint(1 << 64)
    with pytest.raises(ValueError, match="max_records"):
        codec.take([b"x"], 0, 100)


def test_record_timestamp_reads_past_fields_it_does_not_need() -> None:
    """A stored record's time is found even when its other fields do not parse
    (invalid UTF-8 in a string, as records stored before issue 10 may hold)."""
    header = codec.record_header("space", "segment", 1_700_000_000_000_000_001, "")
    stored = codec.record(header, 1, 1, b"\x1a\x01\xff")
    with pytest.raises(DecodeError):
        pb.Record.FromString(stored)
    assert codec.record_timestamp_ns(stored) == 1_700_000_000_000_000_001


def test_a_damaged_record_is_corrupt_record_not_a_decode_error() -> None:
    header = codec.record_header("space", "segment", 5, "")
    damaged = codec.record(header, 1, 1, b"")[:-3] + b"\x3a\x7f"
    with pytest.raises(codec.CorruptRecord, match="does not parse") as info:
        codec.record_timestamp_ns(damaged)
    assert status.code_of(info.value) is grpc.StatusCode.DATA_LOSS


@given(
    space=st.text(min_size=1, max_size=255).filter(lambda s: len(s.encode()) <= 255),
    transaction_id=st.text(max_size=128).filter(lambda s: len(s.encode()) <= 128),
    ts_ns=st.integers(0, (253_402_300_799 + 1) * codec.NANOS - 1),
    sequence=u64,
    position=u64,
    body=st.binary(max_size=300),
)
def test_record_overhead_bounds_what_commit_adds(
    space: str, transaction_id: str, ts_ns: int, sequence: int, position: int, body: bytes
) -> None:
    header = codec.record_header(space, "segment", ts_ns, transaction_id)
    stored = codec.record(header, sequence, position, body)
    assert len(stored) <= len(body) + codec.record_overhead(space, "segment", transaction_id)
