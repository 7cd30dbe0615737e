"""Consumer groups, the unary RPCs (contract additions, "Consumer groups"):
CreateGroup (defaults resolved and returned, the start resolved once,
idempotence, ALREADY_EXISTS, validation of every field), GetGroup, ListGroups
(paged), DeleteGroup (idempotent), the per-space limit, access rules; on the
jetstream backend every group RPC is UNIMPLEMENTED once the request is valid
and allowed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from streams.v1 import streams_pb2 as pb
from tests.ops.helpers import bearer
from tests.support.process import ServerProcess

from .helpers import Stub, assert_status, code_of, name_of_bytes, produce, unique
from .launch import Launcher

INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNIMPLEMENTED_ON = {"jetstream"}


@pytest.fixture(autouse=True)
def _groups_built(request: pytest.FixtureRequest, storage: str) -> None:
    """On a backend without groups, only the test of that runs."""
    if storage in UNIMPLEMENTED_ON and not request.node.name.startswith("test_unimplemented"):
        pytest.skip(f"{storage}: consumer groups are UNIMPLEMENTED (test_unimplemented_*)")


def create(stub: Stub, space: str, name: str = "g", **fields: Any) -> pb.Group:
    return stub.CreateGroup(
        pb.CreateGroupRequest(group=pb.Group(name=name, space=space, **fields))
    ).group


def get(stub: Stub, space: str, name: str = "g") -> pb.GetGroupResponse:
    return stub.GetGroup(pb.GetGroupRequest(space=space, group=name))


# -- CreateGroup ---------------------------------------------------------------


def test_create_returns_the_defaults_resolved(stub: Stub, space: str) -> None:
    group = create(stub, space, "workers")
    assert group.name == "workers" and group.space == space
    assert group.ordering == pb.ORDERING_PER_SEGMENT
    assert (group.ack_timeout.seconds, group.ack_timeout.nanos) == (30, 0)
    assert group.max_attempts == 5
    assert group.dead_letter_space == "$parked"
    assert group.dead_letter_segment == f"{space}/workers"
    assert group.WhichOneof("start") is None


def test_create_keeps_what_is_given(stub: Stub, space: str) -> None:
    given = pb.Group(
        name="g",
        space=space,
        ordering=pb.ORDERING_NONE,
        from_offset=7,
        ack_timeout=Duration(seconds=2, nanos=500_000_000),
        max_attempts=9,
        dead_letter_space="dead",
        dead_letter_segment="letters",
    )
    got = stub.CreateGroup(pb.CreateGroupRequest(group=given)).group
    assert got == given


def test_the_ack_timeout_range_ends_are_allowed(stub: Stub, space: str) -> None:
    for name, timeout in (
        ("short", Duration(nanos=10_000_000)),
        ("long", Duration(seconds=86_400)),
    ):
        assert create(stub, space, name, ack_timeout=timeout).ack_timeout == timeout


def test_create_again_with_the_same_settings_is_ok(stub: Stub, space: str) -> None:
    first = create(stub, space)
    # The defaults written out are the same settings as the defaults left out.
    again = create(
        stub,
        space,
        ordering=pb.ORDERING_PER_SEGMENT,
        ack_timeout=Duration(seconds=30),
        max_attempts=5,
        dead_letter_space="$parked",
        dead_letter_segment=f"{space}/g",
    )
    assert again == first


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {"ordering": pb.ORDERING_NONE},
            "group.ordering is ORDERING_PER_SEGMENT, not ORDERING_NONE",
        ),
        ({"max_attempts": 6}, "group.max_attempts is 5, not 6"),
        (
            {"ack_timeout": Duration(seconds=31)},
            "group.ack_timeout is {seconds: 30}, not {seconds: 31}",
        ),
        ({"dead_letter_segment": "other"}, "group.dead_letter_segment"),
        ({"from_offset": 1}, "group.from_offset is unset, not 1"),
        ({"from_end": True}, "group.from_end is unset, not True"),
    ],
)
def test_create_again_with_other_settings_is_already_exists(
    stub: Stub, space: str, change: dict[str, Any], field: str
) -> None:
    first = create(stub, space)
    assert_status(lambda: create(stub, space, **change), grpc.StatusCode.ALREADY_EXISTS, field)
    assert get(stub, space).group == first


def test_create_before_the_space_has_records(stub: Stub, space: str) -> None:
    create(stub, space)
    info = get(stub, space).info
    assert (info.acked_through, info.last_position, info.in_flight, info.parked) == (0, 0, 0, 0)
    assert not info.members


def test_the_start_is_resolved_once_at_create(stub: Stub, space: str) -> None:
    produce(stub, space, "a", [b"1", b"2", b"3"])
    stamp = produce(stub, space, "b", [b"4", b"5"]).timestamp
    produce(stub, space, "a", [b"6"])
    create(stub, space, "first")
    create(stub, space, "offset", from_offset=3)
    create(stub, space, "offset0", from_offset=0)
    create(stub, space, "time", from_timestamp=stamp)
    create(stub, space, "end", from_end=True)
    produce(stub, space, "a", [b"7"])
    through = {n: get(stub, space, n).info.acked_through for n in ("first", "offset", "offset0")}
    assert through == {"first": 0, "offset": 2, "offset0": 0}
    assert get(stub, space, "time").info.acked_through == 3
    assert get(stub, space, "end").info.acked_through == 6
    assert get(stub, space, "end").info.last_position == 7
    # Kept as given, not as resolved.
    assert get(stub, space, "time").group.from_timestamp == stamp
    assert get(stub, space, "end").group.from_end


def test_positions_never_delivered_count_as_settled(stub: Stub, space: str) -> None:
    produce(stub, space, "a", [b"1", b"2", b"3"])
    create(stub, space)
    stub.Trim(pb.TrimRequest(space=space, before_offset=3))
    assert get(stub, space).info.acked_through == 2


def test_delete_space_removes_its_groups(stub: Stub, space: str) -> None:
    produce(stub, space, "a", [b"1", b"2"])
    create(stub, space)
    create(stub, space, "h")
    other = unique("other")
    create(stub, other)
    stub.DeleteSpace(pb.DeleteSpaceRequest(space=space))
    assert_status(lambda: get(stub, space), grpc.StatusCode.NOT_FOUND, "'g'")
    assert not stub.ListGroups(pb.ListGroupsRequest(space=space)).groups
    assert get(stub, other).group.name == "g"
    # A space that only has groups (no record, no config): deleted all the same.
    create(stub, space)
    stub.DeleteSpace(pb.DeleteSpaceRequest(space=space))
    assert_status(lambda: get(stub, space), grpc.StatusCode.NOT_FOUND, "'g'")


# -- validation ----------------------------------------------------------------

LONG_SPACE = name_of_bytes(200, prefix="s")
BAD_GROUPS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "name empty": ({"name": ""}, ("group.name", "empty")),
    "name control": ({"name": "bad\x07"}, ("group.name", "U+0007")),
    "name too long": ({"name": "n" * 256}, ("group.name", "256 bytes")),
    "name reserved": ({"name": "$g"}, ("group.name", "$g", "reserved")),
    "space empty": ({"space": ""}, ("group.space", "empty")),
    "space reserved": ({"space": "$parked"}, ("group.space", "$parked", "reserved")),
    "space control": ({"space": "a\nb"}, ("group.space", "U+000A")),
    "dead-letter space bad": ({"dead_letter_space": "x\x00"}, ("group.dead_letter_space",)),
    "dead-letter space too long": (
        {"dead_letter_space": "d" * 256},
        ("group.dead_letter_space", "256 bytes"),
    ),
    "dead-letter space is the space": (
        {"space": "orders", "dead_letter_space": "orders"},
        ("group.dead_letter_space", "'orders'", "own space"),
    ),
    "dead-letter segment bad": ({"dead_letter_segment": "x\x1f"}, ("group.dead_letter_segment",)),
    "default dead-letter segment too long": (
        {"space": LONG_SPACE, "name": "n" * 60},
        ("group.dead_letter_segment", "261 bytes", "set group.dead_letter_segment"),
    ),
    "ack_timeout negative": (
        {"ack_timeout": Duration(seconds=-1)},
        ("group.ack_timeout", "-1", "negative"),
    ),
    "ack_timeout nanos": (
        {"ack_timeout": Duration(seconds=1, nanos=1_000_000_000)},
        ("group.ack_timeout.nanos", "1000000000"),
    ),
    "ack_timeout negative nanos": (
        {"ack_timeout": Duration(nanos=-1)},
        ("group.ack_timeout.nanos", "-1"),
    ),
    "ack_timeout under 10 ms": (
        {"ack_timeout": Duration(nanos=9_999_999)},
        ("group.ack_timeout", "9999999 ns", "10 ms"),
    ),
    "ack_timeout 1 ns": ({"ack_timeout": Duration(nanos=1)}, ("group.ack_timeout", "1 ns")),
    "ack_timeout over a day": (
        {"ack_timeout": Duration(seconds=86_400, nanos=1)},
        ("group.ack_timeout", "86400.000000001", "86400"),
    ),
    "max_attempts over 1000": ({"max_attempts": 1001}, ("group.max_attempts", "1001", "1000")),
    "ordering unknown": ({"ordering": 7}, ("group.ordering", "7")),
    "from_timestamp nanos": (
        {"from_timestamp": Timestamp(seconds=1, nanos=-1)},
        ("group.from_timestamp.nanos", "-1"),
    ),
}


@pytest.mark.parametrize("case", BAD_GROUPS)
def test_a_bad_group_is_invalid_argument_naming_the_field(
    stub: Stub, space: str, case: str
) -> None:
    fields, words = BAD_GROUPS[case]
    group = pb.Group(**{"name": "g", "space": space, **fields})
    assert_status(lambda: stub.CreateGroup(pb.CreateGroupRequest(group=group)), INVALID, *words)
    # Nothing was written.
    if group.space and not group.space.startswith("$") and "\n" not in group.space:
        listed = stub.ListGroups(pb.ListGroupsRequest(space=group.space)).groups
        assert group.name not in [g.name for g in listed]


def test_the_limits_themselves_are_allowed(stub: Stub, space: str) -> None:
    group = create(
        stub,
        space,
        ack_timeout=Duration(seconds=86_400),
        max_attempts=1000,
        dead_letter_space="$anything",
        dead_letter_segment="$too",
    )
    assert group.max_attempts == 1000 and group.ack_timeout.seconds == 86_400
    assert (group.dead_letter_space, group.dead_letter_segment) == ("$anything", "$too")
    longest = name_of_bytes(255 - len(space.encode()) - 1)
    assert create(stub, space, longest).dead_letter_segment == f"{space}/{longest}"


@pytest.mark.parametrize(
    "call",
    [
        lambda stub, bad: stub.GetGroup(pb.GetGroupRequest(space=bad, group="g")),
        lambda stub, bad: stub.GetGroup(pb.GetGroupRequest(space="s", group=bad)),
        lambda stub, bad: stub.DeleteGroup(pb.DeleteGroupRequest(space=bad, group="g")),
        lambda stub, bad: stub.DeleteGroup(pb.DeleteGroupRequest(space="s", group=bad)),
        lambda stub, bad: stub.ListGroups(pb.ListGroupsRequest(space=bad)),
    ],
    ids=["get space", "get group", "delete space", "delete group", "list space"],
)
@pytest.mark.parametrize("bad", ["", "bad\x00", "x" * 256])
def test_bad_names_elsewhere_are_invalid_argument(
    stub: Stub, call: Callable[[Stub, str], object], bad: str
) -> None:
    assert_status(lambda: call(stub, bad), INVALID, ("space", "group"))


def test_reserved_names_are_read(stub: Stub) -> None:
    assert_status(
        lambda: get(stub, "$parked", "g"), grpc.StatusCode.NOT_FOUND, "group", "'g'", "'$parked'"
    )
    assert not stub.ListGroups(pb.ListGroupsRequest(space="$parked")).groups
    stub.DeleteGroup(pb.DeleteGroupRequest(space="$parked", group="$g"))


# -- GetGroup, ListGroups, DeleteGroup --------------------------------------------


def test_get_unknown_is_not_found(stub: Stub, space: str) -> None:
    assert_status(lambda: get(stub, space, "nope"), grpc.StatusCode.NOT_FOUND, "'nope'", space)


def test_list_pages_by_name(stub: Stub, space: str) -> None:
    names = ["b", "a", "é", "c/d", "Z"]
    for name in names:
        create(stub, space, name)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = stub.ListGroups(pb.ListGroupsRequest(space=space, page_size=2, page_token=token))
        assert len(page.groups) <= 2
        seen += [g.name for g in page.groups]
        assert all(g.space == space and g.max_attempts == 5 for g in page.groups)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(names, key=lambda n: n.encode())
    assert pages == 3
    whole = stub.ListGroups(pb.ListGroupsRequest(space=space))
    assert [g.name for g in whole.groups] == seen and not whole.next_page_token


def test_list_of_a_space_without_groups_is_empty(stub: Stub, space: str) -> None:
    assert stub.ListGroups(pb.ListGroupsRequest(space=space)) == pb.ListGroupsResponse()


def test_list_refuses_bad_page_arguments(stub: Stub, space: str) -> None:
    for name in ("a", "b"):
        create(stub, space, name)
    assert_status(
        lambda: stub.ListGroups(pb.ListGroupsRequest(space=space, page_size=-1)),
        INVALID,
        "page_size",
    )
    assert_status(
        lambda: stub.ListGroups(pb.ListGroupsRequest(space=space, page_token="forged")),
        INVALID,
        "page_token",
    )
    token = stub.ListGroups(pb.ListGroupsRequest(space=space, page_size=1)).next_page_token
    # A token is bound to its listing: another space's, or ListSpaces', is refused.
    assert_status(
        lambda: stub.ListGroups(pb.ListGroupsRequest(space=space + "x", page_token=token)),
        INVALID,
        "page_token",
    )
    assert_status(
        lambda: stub.ListSpaces(pb.ListSpacesRequest(page_token=token)), INVALID, "page_token"
    )


def test_delete_is_idempotent(stub: Stub, space: str) -> None:
    create(stub, space, "a")
    create(stub, space, "b")
    stub.DeleteGroup(pb.DeleteGroupRequest(space=space, group="a"))
    assert_status(lambda: get(stub, space, "a"), grpc.StatusCode.NOT_FOUND)
    stub.DeleteGroup(pb.DeleteGroupRequest(space=space, group="a"))
    stub.DeleteGroup(pb.DeleteGroupRequest(space=space, group="never"))
    assert [g.name for g in stub.ListGroups(pb.ListGroupsRequest(space=space)).groups] == ["b"]
    # Created again, it starts afresh.
    produce(stub, space, "s", [b"1"])
    assert create(stub, space, "a", from_end=True).from_end
    assert get(stub, space, "a").info.acked_through == 1


def test_groups_per_space_are_limited(tmp_path: Path, launch: Launcher) -> None:
    with launch(tmp_path, "--max-groups-per-space", "2") as server:
        stub, space = server.stub, unique("space")
        create(stub, space, "a")
        create(stub, space, "b")
        assert_status(
            lambda: create(stub, space, "c"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "max_groups_per_space",
        )
        create(stub, space, "a")  # the same again is no new group
        create(stub, space + "-other", "c")
        stub.DeleteGroup(pb.DeleteGroupRequest(space=space, group="a"))
        create(stub, space, "c")


@pytest.mark.durable
def test_groups_survive_a_restart(fresh_server: ServerProcess) -> None:
    stub, space = fresh_server.stub, unique("space")
    produce(stub, space, "a", [b"1", b"2"])
    group = create(stub, space, "g", from_offset=2, ordering=pb.ORDERING_NONE)
    fresh_server.restart()
    stub = fresh_server.stub
    got = get(stub, space)
    assert got.group == group and got.info.acked_through == 1
    assert [g.name for g in stub.ListGroups(pb.ListGroupsRequest(space=space)).groups] == ["g"]


# -- access --------------------------------------------------------------------

Metadata = tuple[tuple[str, str], ...] | None


def _subscribe(stub: Any, space: str, metadata: Metadata) -> object:
    """Joins and takes the `joined` answer (then leaves)."""
    join = pb.SubscribeRequest(join=pb.SubscribeJoin(space=space, group="g"))
    call = stub.Subscribe(iter([join]), metadata=metadata, timeout=10)
    try:
        return next(call)
    finally:
        call.cancel()


ACCESS_CALLS: dict[str, Callable[[Any, str, Metadata], object]] = {
    "CreateGroup": lambda stub, sp, m: stub.CreateGroup(
        pb.CreateGroupRequest(group=pb.Group(name="g", space=sp)), metadata=m
    ),
    "GetGroup": lambda stub, sp, m: stub.GetGroup(
        pb.GetGroupRequest(space=sp, group="g"), metadata=m
    ),
    "ListGroups": lambda stub, sp, m: stub.ListGroups(pb.ListGroupsRequest(space=sp), metadata=m),
    "Subscribe": _subscribe,
    "DeleteGroup": lambda stub, sp, m: stub.DeleteGroup(
        pb.DeleteGroupRequest(space=sp, group="gone"), metadata=m
    ),
}
WRITES = {"CreateGroup", "DeleteGroup"}


def _with_group(server: ServerProcess, prefix: str) -> str:
    space = unique(prefix)
    ACCESS_CALLS["CreateGroup"](server.stub, space, bearer("rw"))
    return space


@pytest.mark.parametrize("rpc", ACCESS_CALLS)
def test_access_rules(secured: ServerProcess, rpc: str) -> None:
    stub, call = secured.stub, ACCESS_CALLS[rpc]
    space = _with_group(secured, "mine")
    assert code_of(lambda: call(stub, space, None)) == grpc.StatusCode.UNAUTHENTICATED
    read_only = code_of(lambda: call(stub, space, bearer("ro")))
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert read_only == (denied if rpc in WRITES else grpc.StatusCode.OK)
    other = _with_group(secured, "theirs")
    assert code_of(lambda: call(stub, other, bearer("mine"))) == denied
    assert code_of(lambda: call(stub, space, bearer("mine"))) == grpc.StatusCode.OK


def test_a_named_dead_letter_space_needs_write_access(secured: ServerProcess) -> None:
    stub, mine = secured.stub, bearer("mine")
    space = unique("mine")

    def create_with(dead: str) -> object:
        group = pb.Group(name=unique("g"), space=space, dead_letter_space=dead)
        return stub.CreateGroup(pb.CreateGroupRequest(group=group), metadata=mine)

    err = assert_status(lambda: create_with("theirs"), grpc.StatusCode.PERMISSION_DENIED)
    assert "group.dead_letter_space" in (err.details() or ""), err.details()
    assert "theirs" in (err.details() or "")
    assert code_of(lambda: create_with("mine-dead")) == grpc.StatusCode.OK
    # The default `$parked` is the server's to write: no grant needed.
    assert code_of(lambda: create_with("")) == grpc.StatusCode.OK
    listed = stub.ListGroups(pb.ListGroupsRequest(space=space), metadata=mine).groups
    assert len(listed) == 2


def test_the_returned_group_sent_again_needs_no_grant_on_parked(secured: ServerProcess) -> None:
    stub, mine = secured.stub, bearer("mine")
    request = pb.CreateGroupRequest(group=pb.Group(name="g", space=unique("mine")))
    first = stub.CreateGroup(request, metadata=mine).group
    assert first.dead_letter_space == "$parked"
    # The default written out is the default: the server's to write, no grant needed.
    again = stub.CreateGroup(pb.CreateGroupRequest(group=first), metadata=mine).group
    assert again == first


# -- jetstream -----------------------------------------------------------------

UNIMPLEMENTED_CALLS: dict[str, Callable[[Stub, str], object]] = {
    "CreateGroup": lambda stub, sp: stub.CreateGroup(
        pb.CreateGroupRequest(group=pb.Group(name="g", space=sp))
    ),
    "GetGroup": lambda stub, sp: stub.GetGroup(pb.GetGroupRequest(space=sp, group="g")),
    "ListGroups": lambda stub, sp: stub.ListGroups(pb.ListGroupsRequest(space=sp)),
    "DeleteGroup": lambda stub, sp: stub.DeleteGroup(pb.DeleteGroupRequest(space=sp, group="g")),
    "Subscribe": lambda stub, sp: list(
        stub.Subscribe(
            iter([pb.SubscribeRequest(join=pb.SubscribeJoin(space=sp, group="g"))]), timeout=10
        )
    ),
}


@pytest.mark.parametrize("rpc", UNIMPLEMENTED_CALLS)
def test_unimplemented_where_groups_are_not_built(
    storage: str, stub: Stub, space: str, rpc: str
) -> None:
    if storage not in UNIMPLEMENTED_ON:
        pytest.skip(f"{storage} builds consumer groups")
    call = UNIMPLEMENTED_CALLS[rpc]
    assert_status(
        lambda: call(stub, space), grpc.StatusCode.UNIMPLEMENTED, "consumer groups", storage
    )
    # Validation comes first.
    assert_status(lambda: call(stub, "bad\x00"), INVALID, "space")


@pytest.mark.parametrize("rpc", ACCESS_CALLS)
def test_unimplemented_only_after_the_token_and_access(
    storage: str, secured: ServerProcess, rpc: str
) -> None:
    if storage not in UNIMPLEMENTED_ON:
        pytest.skip(f"{storage} builds consumer groups")
    stub, call, space = secured.stub, ACCESS_CALLS[rpc], unique("mine")
    assert code_of(lambda: call(stub, space, None)) == grpc.StatusCode.UNAUTHENTICATED
    read_only = code_of(lambda: call(stub, space, bearer("ro")))
    unimplemented = grpc.StatusCode.UNIMPLEMENTED
    assert read_only == (grpc.StatusCode.PERMISSION_DENIED if rpc in WRITES else unimplemented)
    assert code_of(lambda: call(stub, space, bearer("rw"))) == unimplemented
