"""RPCs of the contract that this server does not build yet.

Each is answered UNIMPLEMENTED with a message naming it (contract: "A feature
that this backend does not support yet answers UNIMPLEMENTED with a message
that says so"), but only after what can be checked cheaply is: the caller's
token (by the service), the names, and the caller's access to the space. So a
client gets the same INVALID_ARGUMENT or PERMISSION_DENIED it will get once the
RPC is built, and UNIMPLEMENTED only for a request that would reach storage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from streams import validation
from streams.auth import Action
from streams.errors import InvalidArgument, Unimplemented
from streams.v1 import streams_pb2 as pb

UNARY, BIDI = "unary", "bidi"


@dataclass(frozen=True, slots=True)
class Unbuilt:
    """An RPC not built yet: its shape, the access it needs, and how to find
    (and check) the space it acts on in its request (its first, for Subscribe)."""

    kind: str
    request_type: type[Message]
    action: Action
    space_of: Callable[[Any], str]


def _optional(field: str, value: str, check: Callable[[str, str], str]) -> None:
    if value:
        check(field, value)


def _space_and(field: str) -> Callable[[Any], str]:
    """The space of a request that also names one ``field`` (segment, group)."""

    def space_of(request: Any) -> str:
        validation.name(field, getattr(request, field))
        return validation.name("space", request.space)

    return space_of


def _space(request: Any) -> str:
    return validation.name("space", request.space)


def _create_group(request: pb.CreateGroupRequest) -> str:
    group = request.group
    validation.written_name("group.name", group.name)
    space = validation.written_name("group.space", group.space)
    _optional("group.dead_letter_space", group.dead_letter_space, validation.name)
    _optional("group.dead_letter_segment", group.dead_letter_segment, validation.name)
    if group.dead_letter_space == space:
        raise InvalidArgument(
            f"group.dead_letter_space: {validation.show(space)} is the group's own space"
        )
    return space


def _list_groups(request: pb.ListGroupsRequest) -> str:
    validation.page_size(request.page_size)
    return _space(request)


def _subscribe(request: pb.SubscribeRequest) -> str:
    kind = request.WhichOneof("kind")
    if kind != "join":
        raise InvalidArgument(f"kind: the first SubscribeRequest must be a join, not {kind}")
    return _space_and("group")(request.join)


UNBUILT: dict[str, Unbuilt] = {
    "CreateGroup": Unbuilt(UNARY, pb.CreateGroupRequest, "write", _create_group),
    "GetGroup": Unbuilt(UNARY, pb.GetGroupRequest, "read", _space_and("group")),
    "ListGroups": Unbuilt(UNARY, pb.ListGroupsRequest, "read", _list_groups),
    "DeleteGroup": Unbuilt(UNARY, pb.DeleteGroupRequest, "write", _space_and("group")),
    "Subscribe": Unbuilt(BIDI, pb.SubscribeRequest, "read", _subscribe),
}


def refuse(name: str) -> Unimplemented:
    """The answer to a valid call of an RPC that is not built yet."""
    return Unimplemented(f"{name}: not built yet on this server (see the README, RPC support)")
