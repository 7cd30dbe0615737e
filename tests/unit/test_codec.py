"""Hand-built protobuf bytes parse as the messages they stand for."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams import codec
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
