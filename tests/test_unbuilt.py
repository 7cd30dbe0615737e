"""The contract's RPCs that are not built yet: each answers UNIMPLEMENTED naming
itself, but only after the token, the names and the access are checked (so a
bad request gets the answer it will get once the RPC is built)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from streams.auth import TokenAuth
from streams.unbuilt import UNBUILT
from streams.v1 import streams_pb2 as pb
from tests.ops.helpers import bearer, write_tokens
from tests.support.inproc import InProcessServer

TIMEOUT = 10.0
Stub = Any
Metadata = tuple[tuple[str, str], ...] | None
# RPC -> f(stub, space, name, metadata): a call of it on ``space`` in which
# every other name (segment, group) is ``name``.
Call = Callable[[Stub, str, str, Metadata], Any]


def _subscribe(stub: Stub, first: pb.SubscribeRequest, metadata: Metadata) -> list[Any]:
    return list(stub.Subscribe(iter([first]), metadata=metadata, timeout=TIMEOUT))


CALLS: dict[str, Call] = {
    "CreateGroup": lambda stub, sp, n, m: stub.CreateGroup(
        pb.CreateGroupRequest(group=pb.Group(name=n, space=sp)), metadata=m, timeout=TIMEOUT
    ),
    "GetGroup": lambda stub, sp, n, m: stub.GetGroup(
        pb.GetGroupRequest(space=sp, group=n), metadata=m, timeout=TIMEOUT
    ),
    "ListGroups": lambda stub, sp, n, m: stub.ListGroups(
        pb.ListGroupsRequest(space=sp), metadata=m, timeout=TIMEOUT
    ),
    "DeleteGroup": lambda stub, sp, n, m: stub.DeleteGroup(
        pb.DeleteGroupRequest(space=sp, group=n), metadata=m, timeout=TIMEOUT
    ),
    "Subscribe": lambda stub, sp, n, m: _subscribe(
        stub, pb.SubscribeRequest(join=pb.SubscribeJoin(space=sp, group=n)), m
    ),
}
# RPCs whose request also names a segment or group (besides the space).
NAMES_TWO = {"CreateGroup", "GetGroup", "DeleteGroup"}
WRITES = {"CreateGroup", "DeleteGroup"}
# Where the contract makes a `$` name INVALID_ARGUMENT, even before storage is asked.
RESERVED_REFUSED = {"CreateGroup"}
TOKENS = [
    {"token": "rw", "spaces": ["*"], "access": ["read", "write"]},
    {"token": "ro", "spaces": ["*"], "access": ["read"]},
]


def error_of(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    tmp = tmp_path_factory.mktemp("unbuilt")
    auth = TokenAuth.load(write_tokens(tmp / "tokens.json", TOKENS))
    with InProcessServer(tmp / "data", auth=auth) as srv:
        yield srv


def test_every_unbuilt_rpc_is_tested() -> None:
    service = pb.DESCRIPTOR.services_by_name["StreamsService"]
    built = {"Produce", "Consume", "Peek", "Commit", "GetOffset", "ListSpaces", "ListSegments"}
    built |= {"Trim", "DeleteSegment", "DeleteSpace", "ConfigureSpace", "GetSpace", "GetSegment"}
    built |= {"WatchSegments"}
    assert set(CALLS) == set(UNBUILT) == set(service.methods_by_name) - built


@pytest.mark.parametrize("rpc", CALLS)
def test_valid_call_is_unimplemented_naming_the_rpc(server: InProcessServer, rpc: str) -> None:
    err = error_of(lambda: CALLS[rpc](server.stub, "space", "name", bearer("rw")))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED, err.details()
    assert rpc in err.details() and "not built yet" in err.details()


@pytest.mark.parametrize("rpc", CALLS)
@pytest.mark.parametrize("bad", ["", "bad\x00name", "x" * 256])
def test_bad_space_is_invalid_argument_first(server: InProcessServer, rpc: str, bad: str) -> None:
    err = error_of(lambda: CALLS[rpc](server.stub, bad, "name", bearer("rw")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "space" in err.details()


@pytest.mark.parametrize("rpc", sorted(NAMES_TWO))
def test_bad_second_name_is_invalid_argument_first(server: InProcessServer, rpc: str) -> None:
    err = error_of(lambda: CALLS[rpc](server.stub, "space", "bad\x07", bearer("rw")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "bad" in err.details()


@pytest.mark.parametrize("rpc", sorted(RESERVED_REFUSED))
def test_reserved_name_written_is_invalid_argument(server: InProcessServer, rpc: str) -> None:
    err = error_of(lambda: CALLS[rpc](server.stub, "$parked", "name", bearer("rw")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "$parked" in err.details() and "reserved" in err.details()


@pytest.mark.parametrize("rpc", CALLS)
def test_token_checked_before_unimplemented(server: InProcessServer, rpc: str) -> None:
    err = error_of(lambda: CALLS[rpc](server.stub, "space", "name", None))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
    read_only = error_of(lambda: CALLS[rpc](server.stub, "space", "name", bearer("ro")))
    expected = grpc.StatusCode.PERMISSION_DENIED if rpc in WRITES else grpc.StatusCode.UNIMPLEMENTED
    assert read_only.code() == expected, read_only.details()


def test_create_group_dead_letter_space_equal_to_space_rejected(server: InProcessServer) -> None:
    group = pb.Group(name="g", space="orders", dead_letter_space="orders")
    err = error_of(
        lambda: server.stub.CreateGroup(
            pb.CreateGroupRequest(group=group), metadata=bearer("rw"), timeout=TIMEOUT
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dead_letter_space" in err.details()


@pytest.mark.parametrize(
    "first",
    [
        pb.SubscribeRequest(ack=pb.SubscribeAck(positions=[1])),
        pb.SubscribeRequest(nack=pb.SubscribeNack(positions=[1])),
        pb.SubscribeRequest(),
    ],
    ids=["ack", "nack", "empty"],
)
def test_subscribe_must_start_with_join(server: InProcessServer, first: Any) -> None:
    err = error_of(lambda: _subscribe(server.stub, first, bearer("rw")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "join" in err.details()


def test_subscribe_without_any_message_is_invalid_argument(server: InProcessServer) -> None:
    stream = server.stub.Subscribe(iter([]), metadata=bearer("rw"), timeout=TIMEOUT)
    err = error_of(lambda: list(stream))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "Subscribe" in err.details()


def test_server_still_serves_after_unbuilt_calls(server: InProcessServer) -> None:
    for rpc in CALLS:
        error_of(lambda rpc=rpc: CALLS[rpc](server.stub, "space", "name", bearer("rw")))
    write = pb.SegmentWrite(segment="s", records=[pb.RecordInput(payload=b"p")])
    ack = server.stub.Produce(
        pb.ProduceRequest(space="after", writes=[write]), metadata=bearer("rw"), timeout=TIMEOUT
    )
    assert ack.last_position == 1
