"""Reserved names (contract, "Reserved names"): a name starting with `$` is the
server's; a client may not write to it, and may still read it."""

from __future__ import annotations

import grpc
import pytest

from streams.v1 import streams_pb2 as pb

from .helpers import Stub, assert_status, consume_all, produce, produce_writes, write

INVALID = grpc.StatusCode.INVALID_ARGUMENT
RESERVED = ["$", "$parked", "$x/y"]


@pytest.mark.parametrize("reserved", RESERVED)
def test_produce_to_reserved_space_rejected(stub: Stub, reserved: str) -> None:
    assert_status(lambda: produce(stub, reserved, "seg"), INVALID, "space", reserved, "reserved")
    assert stub.ListSegments(pb.ListSegmentsRequest(space=reserved)).segments == []


@pytest.mark.parametrize("reserved", RESERVED)
def test_produce_to_reserved_segment_rejected(stub: Stub, space: str, reserved: str) -> None:
    writes = [write("ok", [b"x"]), write(reserved, [b"y"])]
    assert_status(
        lambda: produce_writes(stub, space, writes), INVALID, "writes[1].segment", reserved
    )
    assert consume_all(stub, space) == []


@pytest.mark.parametrize("reserved", RESERVED)
def test_commit_by_reserved_consumer_rejected(stub: Stub, space: str, reserved: str) -> None:
    produce(stub, space, "seg", [b"1"])
    request = pb.CommitRequest(consumer=reserved, space=space, segment="seg", offset=1)
    assert_status(lambda: stub.Commit(request), INVALID, "consumer", reserved, "reserved")
    get = pb.GetOffsetRequest(consumer=reserved, space=space, segment="seg")
    assert_status(lambda: stub.GetOffset(get), grpc.StatusCode.NOT_FOUND, "consumer")


def test_dollar_inside_a_name_is_not_reserved(stub: Stub, space: str) -> None:
    produce(stub, space + "$", "a$b", [b"1"])
    commit = pb.CommitRequest(consumer="c$", space=space + "$", segment="a$b", offset=1)
    assert stub.Commit(commit).offset == 1


def test_reads_of_reserved_names_allowed(stub: Stub) -> None:
    space, segment = "$parked", "$seg"
    assert consume_all(stub, space) == []
    assert consume_all(stub, space, segment) == []
    assert_status(
        lambda: stub.Peek(pb.PeekRequest(space=space, segment=segment)),
        grpc.StatusCode.NOT_FOUND,
        "segment",
    )
    assert stub.ListSegments(pb.ListSegmentsRequest(space=space)).segments == []
    get = pb.GetOffsetRequest(consumer="$c", space=space, segment=segment)
    assert_status(lambda: stub.GetOffset(get), grpc.StatusCode.NOT_FOUND, "consumer")
