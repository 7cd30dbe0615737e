"""Produce's record bodies read out of the serialized write (the fast path of
validation._bodies) are what checking each record on its own gives: the same
bytes, and the same error for the same record."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import codec, validation
from streams.errors import InvalidArgument
from streams.limits import Limits
from streams.v1 import streams_pb2 as pb

# Payload sizes around the one- and two-byte length boundaries and the limits below.
sizes = st.one_of(st.integers(0, 300), st.integers(16_370, 16_400), st.sampled_from([1000, 20_000]))
extras = st.sampled_from(
    [
        b"",
        b"\x48\x01",  # an unknown field (9, varint): dropped
        b"\x08\x01",  # payload (1) as a varint: the wrong wire type, refused
    ]
)
records = st.tuples(
    sizes, st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2), extras
)
# The payload limit and the stored-size budget both fall among those sizes.
LIMITS = Limits(max_payload_bytes=16_380, max_record_bytes=16_420)


def _request(specs: list[tuple[int, dict[str, str], bytes]]) -> bytes:
    """A ProduceRequest of one write whose records are ``specs`` (payload size,
    metadata, raw bytes appended to the record)."""
    write = b"\x0a\x01s"  # segment "s"
    for size, metadata, extra in specs:
        body = pb.RecordInput(payload=b"p" * size, metadata=metadata).SerializeToString() + extra
        write += b"\x12" + codec.varint(len(body)) + body
    return b"\x0a\x01x\x12" + codec.varint(len(write)) + write


def _one_by_one(raw: bytes) -> tuple[bytes, ...] | str:
    """Each record checked on its own (validation._record_body), or the error."""
    write = pb.ProduceRequest.FromString(raw).writes[0]
    budget = LIMITS.max_record_bytes - codec.record_overhead("x", "s", "")
    try:
        return tuple(
            validation._record_body(0, j, record, LIMITS, budget)
            for j, record in enumerate(write.records)
        )
    except InvalidArgument as exc:
        return exc.message


@settings(max_examples=300, deadline=None)
@given(st.lists(records, min_size=1, max_size=6))
def test_bodies_are_each_record_checked_on_its_own(specs: list) -> None:
    raw = _request(specs)
    try:
        got: tuple[bytes, ...] | str = (
            validation.transaction(pb.ProduceRequest.FromString(raw), LIMITS).appends[0].bodies
        )
    except InvalidArgument as exc:
        got = exc.message
    assert got == _one_by_one(raw)


def test_submessages_reads_every_wire_type_protobuf_writes() -> None:
    message = pb.ProduceResponse(
        acks=[pb.SegmentAck(segment="a"), pb.SegmentAck(segment="b" * 200)],
        first_position=2**40,
        duplicate=True,
    )
    message.timestamp.seconds = 5
    acks = codec.submessages(message.SerializeToString(), 1)
    assert [pb.SegmentAck.FromString(a).segment for a in acks] == ["a", "b" * 200]


def test_submessages_refuses_bytes_cut_short() -> None:
    data = pb.SegmentWrite(records=[pb.RecordInput(payload=b"x" * 10)]).SerializeToString()
    with pytest.raises(RuntimeError, match="runs to"):
        codec.submessages(data[:-1], 2)
