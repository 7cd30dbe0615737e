"""A known field sent with the wrong wire type (the adversary's minor finding of issue 10).

The parser keeps such a field as an unknown field instead of refusing it, so a
RecordInput.payload sent as a varint was stored as an empty record and a map
entry whose key was a varint was dropped with its metadata. Both are malformed
input: INVALID_ARGUMENT naming the field, and nothing written. Field numbers
that no field has stay ignored, as protobuf wants of fields from a newer schema.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import grpc
import pytest

from streams.v1 import streams_pb2 as pb

from ..conftest import InProcessServer
from .support import call
from .wire import I32, VARINT, length_delimited, tag, varint


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def produce(space: str, record: bytes, segment_extra: bytes = b"", top_extra: bytes = b"") -> bytes:
    """A Produce of one segment write whose records are ``b"ok"`` then ``record``."""
    records = length_delimited(2, pb.RecordInput(payload=b"ok").SerializeToString())
    records += length_delimited(2, record)
    write = length_delimited(1, b"seg") + records + segment_extra
    return length_delimited(1, space.encode()) + length_delimited(2, write) + top_extra


MALFORMED: dict[str, tuple[Callable[[str], bytes], str]] = {
    "payload as a varint": (
        lambda space: produce(space, tag(1, VARINT) + varint(5)),
        "writes[0].records[1].payload: wrong wire type (varint) for a bytes field",
    ),
    "map entry key as a varint": (
        lambda space: produce(
            space,
            length_delimited(1, b"x")
            + length_delimited(2, tag(1, VARINT) + varint(1) + length_delimited(2, b"v")),
        ),
        "writes[0].records[1].metadata: a map entry whose key or value has the wrong wire type",
    ),
    "segment as a fixed32": (
        lambda space: produce(space, b"", segment_extra=tag(1, I32) + b"\x00\x00\x00\x00"),
        "writes[0].segment: wrong wire type (fixed32) for a string field",
    ),
    "expected_sequence as bytes": (
        lambda space: produce(space, b"", segment_extra=length_delimited(3, b"\x01")),
        "writes[0].expected_sequence: wrong wire type (length-delimited) for a uint64 field",
    ),
    "transaction_id as a varint": (
        lambda space: produce(space, b"", top_extra=tag(3, VARINT) + varint(7)),
        "transaction_id: wrong wire type (varint) for a string field",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_known_field_of_the_wrong_wire_type_is_refused(
    server: InProcessServer, case: str
) -> None:
    space = unique("wire")
    request, message = MALFORMED[case]
    outcome = call(server.channel, "Produce", request(space))
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, (outcome.code, outcome.details)
    assert message in outcome.details, outcome.details
    # Nothing written: not even the valid record before the malformed one.
    spaces = server.stub.ListSpaces(pb.ListSpacesRequest(page_size=1000)).spaces
    assert space not in {s.name for s in spaces}


def test_unknown_field_numbers_stay_ignored(server: InProcessServer) -> None:
    space = unique("wire")
    record = pb.RecordInput(payload=b"data").SerializeToString() + tag(9, VARINT) + varint(1)
    data = produce(space, record, segment_extra=length_delimited(7, b"x"))
    outcome = call(server.channel, "Produce", data + tag(15, VARINT) + varint(2))
    assert outcome.code is grpc.StatusCode.OK, outcome.details
    stored = [
        r.payload
        for m in server.stub.Consume(pb.ConsumeRequest(space=space), timeout=30)
        for r in m.records
    ]
    assert stored == [b"ok", b"data"]


def test_a_consume_field_of_the_wrong_wire_type_is_refused(server: InProcessServer) -> None:
    """to_offset sent as bytes used to read as 0: no bound at all."""
    request = length_delimited(1, b"any-space") + length_delimited(6, b"\x05")
    outcome = call(server.channel, "Consume", request)
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, (outcome.code, outcome.details)
    assert "to_offset: wrong wire type (length-delimited) for a uint64 field" in outcome.details


@pytest.mark.parametrize(
    ("method", "field_number", "name"),
    [
        ("Peek", 1, "space"),
        ("Commit", 4, "offset"),
        ("GetOffset", 1, "consumer"),
        ("ListSpaces", 1, "page_size"),
        ("ListSegments", 1, "space"),
    ],
)
def test_every_rpc_refuses_a_known_field_with_the_wrong_wire_type(
    server: InProcessServer, method: str, field_number: int, name: str
) -> None:
    """Sent as fixed32, a field the RPC knows (string or integer) would read as
    empty or 0 if the parser's unknown field were dropped."""
    raw = tag(field_number, I32) + b"\x01\x02\x03\x04"
    rpc = server.channel.unary_unary(f"/streams.v1.StreamsService/{method}")
    with pytest.raises(grpc.RpcError) as caught:
        rpc(raw, timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert name in (caught.value.details() or "")
