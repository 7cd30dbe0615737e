"""Access to the lifecycle and catalog RPCs (contract additions): Trim,
Delete* and ConfigureSpace need write access to the space; GetSpace,
GetSegment and WatchSegments read access; no token is UNAUTHENTICATED."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from tests.ops.helpers import bearer
from tests.support.process import ServerProcess

from .helpers import code_of, unique

Metadata = tuple[tuple[str, str], ...] | None


def _watch(stub: Any, space: str, metadata: Metadata) -> object:
    call = stub.WatchSegments(pb.WatchSegmentsRequest(space=space), metadata=metadata, timeout=10)
    try:
        return next(call)
    finally:
        call.cancel()


CALLS: dict[str, Callable[[Any, str, Metadata], object]] = {
    "Trim": lambda stub, sp, m: stub.Trim(
        pb.TrimRequest(space=sp, segment="a", before_offset=1), metadata=m
    ),
    "DeleteSegment": lambda stub, sp, m: stub.DeleteSegment(
        pb.DeleteSegmentRequest(space=sp, segment="gone"), metadata=m
    ),
    "DeleteSpace": lambda stub, sp, m: stub.DeleteSpace(
        pb.DeleteSpaceRequest(space=sp + "-gone"), metadata=m
    ),
    "ConfigureSpace": lambda stub, sp, m: stub.ConfigureSpace(
        pb.ConfigureSpaceRequest(space=sp, config=pb.SpaceConfig()), metadata=m
    ),
    "GetSpace": lambda stub, sp, m: stub.GetSpace(pb.GetSpaceRequest(space=sp), metadata=m),
    "GetSegment": lambda stub, sp, m: stub.GetSegment(
        pb.GetSegmentRequest(space=sp, segment="a"), metadata=m
    ),
    "WatchSegments": _watch,
}
WRITES = {"Trim", "DeleteSegment", "DeleteSpace", "ConfigureSpace"}


def filled(server: ServerProcess, prefix: str) -> str:
    space = unique(prefix)
    write = pb.SegmentWrite(segment="a", records=[pb.RecordInput(payload=b"x")])
    server.stub.Produce(pb.ProduceRequest(space=space, writes=[write]), metadata=bearer("rw"))
    return space


@pytest.mark.parametrize("rpc", CALLS)
def test_access_rules(secured: ServerProcess, rpc: str) -> None:
    stub, call = secured.stub, CALLS[rpc]
    space = filled(secured, "mine")
    assert code_of(lambda: call(stub, space, None)) == grpc.StatusCode.UNAUTHENTICATED
    read_only = code_of(lambda: call(stub, space, bearer("ro")))
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert read_only == (denied if rpc in WRITES else grpc.StatusCode.OK)
    other = filled(secured, "theirs")
    assert code_of(lambda: call(stub, other, bearer("mine"))) == denied
    assert code_of(lambda: call(stub, space, bearer("mine"))) == grpc.StatusCode.OK


def test_a_refused_write_changes_nothing(secured: ServerProcess) -> None:
    stub, ro = secured.stub, bearer("ro")
    space = filled(secured, "mine")
    denied = grpc.StatusCode.PERMISSION_DENIED
    for call in (
        lambda: stub.Trim(pb.TrimRequest(space=space, before_offset=2), metadata=ro),
        lambda: stub.DeleteSegment(pb.DeleteSegmentRequest(space=space, segment="a"), metadata=ro),
        lambda: stub.DeleteSpace(pb.DeleteSpaceRequest(space=space), metadata=ro),
    ):
        assert code_of(call) == denied
    info = stub.GetSegment(pb.GetSegmentRequest(space=space, segment="a"), metadata=ro).segment
    assert (info.first_sequence, info.record_count) == (1, 1)
