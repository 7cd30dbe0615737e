"""Findings 1-3 of issue 10: what a producer smuggles into a RecordInput.

Unknown fields of a RecordInput used to be stored with its body and served in
the Record, where Record's own field numbers gave them meaning: a producer
could forge the server's fields, store invalid UTF-8 that made a space
unreadable, and grow a record past every limit. The server now stores a
record's known fields only, and max_record_bytes bounds the stored record.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.limits import MIB, Limits
from streams.v1 import streams_pb2 as pb

from ..conftest import InProcessServer
from .support import Ledger, assert_handled, call, verify
from .wire import VARINT, inject, length_delimited, tag, varint

LIMITS = Limits()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def produce_request(space: str, *payloads: bytes, transaction_id: str = "") -> pb.ProduceRequest:
    records = [pb.RecordInput(payload=p) for p in payloads]
    return pb.ProduceRequest(
        space=space,
        writes=[pb.SegmentWrite(segment="seg", records=records)],
        transaction_id=transaction_id,
    )


def produce(server: InProcessServer, ledger: Ledger, data: bytes) -> pb.ProduceResponse:
    outcome = call(server.channel, "Produce", data)
    assert outcome.code is grpc.StatusCode.OK, f"{outcome.code.name}: {outcome.details}"
    ledger.acked(data, outcome.responses[0])
    return pb.ProduceResponse.FromString(outcome.responses[0])


# Record's own fields, each sent inside a RecordInput with a value of its type.
FORGED = {
    "space": length_delimited(pb.Record.SPACE_FIELD_NUMBER, b"someone-elses-space"),
    "segment": length_delimited(pb.Record.SEGMENT_FIELD_NUMBER, b"someone-elses-segment"),
    "sequence": tag(pb.Record.SEQUENCE_FIELD_NUMBER, VARINT) + varint(999_999),
    "position": tag(pb.Record.POSITION_FIELD_NUMBER, VARINT) + varint(999_999),
    "timestamp": length_delimited(
        pb.Record.TIMESTAMP_FIELD_NUMBER, Timestamp(seconds=1).SerializeToString()
    ),
    "transaction_id": length_delimited(pb.Record.TRANSACTION_ID_FIELD_NUMBER, b"forged-tx"),
}


@pytest.mark.parametrize("forged", sorted(FORGED))
def test_a_producer_cannot_forge_a_server_field(
    server: InProcessServer, ledger: Ledger, forged: str
) -> None:
    space = unique("forge")
    produce(server, ledger, produce_request(space, b"before").SerializeToString())
    request = produce_request(space, b"forged", b"after", transaction_id=unique("tx"))
    ack = produce(server, ledger, inject(request, ("writes", 0, "records", 0), FORGED[forged]))
    peeked = server.stub.Peek(pb.PeekRequest(space=space, segment="seg")).record
    assert (peeked.sequence, peeked.position, peeked.timestamp) == (3, 3, ack.timestamp)
    verify(server.channel, ledger, space, LIMITS)


# Bytes that are not UTF-8: a lone continuation byte, a surrogate, an overlong
# NUL, a code point past U+10FFFF, a truncated sequence.
BAD_UTF8 = (b"\xff", b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82")
RECORD_STRINGS = ("space", "segment", "transaction_id")


@pytest.mark.parametrize("bad", BAD_UTF8, ids=lambda b: b.hex())
@pytest.mark.parametrize("string", RECORD_STRINGS)
def test_invalid_utf8_smuggled_into_a_record_leaves_the_space_readable(
    server: InProcessServer, ledger: Ledger, string: str, bad: bytes
) -> None:
    space = unique("utf8")
    number = pb.Record.DESCRIPTOR.fields_by_name[string].number
    request = produce_request(space, b"good", b"smuggler", b"good too")
    produce(
        server, ledger, inject(request, ("writes", 0, "records", 1), length_delimited(number, bad))
    )
    # The whole space, each segment, Peek and a from_timestamp search: all read.
    verify(server.channel, ledger, space, LIMITS)
    assert server.stub.Peek(pb.PeekRequest(space=space)).record.payload == b"good too"


@pytest.mark.parametrize("wire_type", ["len", "group"])
def test_an_unknown_field_cannot_bypass_the_record_limit(
    server: InProcessServer, ledger: Ledger, wire_type: str
) -> None:
    space = unique("big")
    filler = b"\x00" * (6 * MIB)
    extra = (
        length_delimited(99, filler)
        if wire_type == "len"
        else tag(99, 3) + length_delimited(1, filler) + tag(99, 4)
    )
    request = produce_request(space, b"x", b"next")
    produce(server, ledger, inject(request, ("writes", 0, "records", 0), extra))
    # A default client (4 MiB receive limit) reads past it.
    verify(server.channel, ledger, space, LIMITS)


def test_a_retry_with_other_unknown_fields_is_a_duplicate(
    server: InProcessServer, ledger: Ledger
) -> None:
    """The dedupe fingerprint covers what is stored, so bytes the server drops
    do not make a retry look like another transaction."""
    space = unique("dedupe")
    request = produce_request(space, b"once", transaction_id="tx-1")
    first = produce(server, ledger, inject(request, ("writes", 0, "records", 0), FORGED["space"]))
    retry = produce(
        server, ledger, inject(request, ("writes", 0, "records", 0), FORGED["position"])
    )
    assert retry.duplicate and (retry.first_position, retry.last_position) == (1, 1)
    assert retry.timestamp == first.timestamp
    verify(server.channel, ledger, space, LIMITS)


def test_the_default_record_limit_admits_the_largest_record_of_the_other_limits(
    server: InProcessServer, ledger: Ledger
) -> None:
    space = unique("s").ljust(255, "s")
    record = pb.RecordInput(
        payload=b"p" * LIMITS.max_payload_bytes,
        metadata={
            f"{i:03}".ljust(LIMITS.max_metadata_key_bytes, "k"): "v"
            * LIMITS.max_metadata_value_bytes
            for i in range(LIMITS.max_metadata_pairs)
        },
    )
    request = pb.ProduceRequest(
        space=space,
        writes=[pb.SegmentWrite(segment="g" * 255, records=[record])],
        transaction_id="t" * 128,
    )
    produce(server, ledger, request.SerializeToString())
    verify(server.channel, ledger, space, LIMITS)


SMALL = Limits(
    max_payload_bytes=1024,
    max_metadata_key_bytes=255,
    max_metadata_value_bytes=1024,
    max_record_bytes=2048,
)


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    server = InProcessServer(tmp_path_factory.mktemp("small") / "data", limits=SMALL)
    try:
        yield server
    finally:
        server.stop()


def test_a_record_over_max_record_bytes_is_refused_and_nothing_written(
    small_server: InProcessServer,
) -> None:
    space = unique("limit")
    record = pb.RecordInput(payload=b"p" * 1024, metadata={"k": "v" * 1024})
    request = pb.ProduceRequest(
        space=space,
        writes=[
            pb.SegmentWrite(segment="ok", records=[pb.RecordInput(payload=b"fine")]),
            pb.SegmentWrite(segment="big", records=[pb.RecordInput(), record]),
        ],
    )
    outcome = call(small_server.channel, "Produce", request.SerializeToString())
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "writes[1].records[1]" in outcome.details
    assert "max_record_bytes (2048)" in outcome.details
    listed = small_server.stub.ListSegments(pb.ListSegmentsRequest(space=space))
    assert not listed.segments


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payload=st.integers(0, 1024),
    values=st.lists(st.integers(0, 1024), max_size=3),
    segment=st.integers(1, 255),
    transaction_id=st.integers(0, 128),
)
def test_no_stored_record_exceeds_max_record_bytes(
    small_server: InProcessServer,
    payload: int,
    values: list[int],
    segment: int,
    transaction_id: int,
) -> None:
    ledger = Ledger()
    space = unique("bound")
    record = pb.RecordInput(
        payload=b"p" * payload, metadata={f"k{i}": "v" * size for i, size in enumerate(values)}
    )
    request = pb.ProduceRequest(
        space=space,
        writes=[pb.SegmentWrite(segment="g" * segment, records=[record])],
        transaction_id=unique("t").ljust(transaction_id, "t") if transaction_id else "",
    )
    data = request.SerializeToString()
    outcome = call(small_server.channel, "Produce", data)
    assert_handled(outcome, "Produce")
    if outcome.code is grpc.StatusCode.OK:
        ledger.acked(data, outcome.responses[0])
    else:
        assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT
        assert "max_record_bytes" in outcome.details
    verify(small_server.channel, ledger, space, SMALL)
