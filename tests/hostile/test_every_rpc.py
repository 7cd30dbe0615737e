"""Hand-built protobuf bytes against every RPC of StreamsService.

Each attack starts from a valid request and changes its bytes: unknown fields
of every wire type in every (sub-)message, known fields with the wrong wire
type, invalid UTF-8 in every string field, deep nesting, oversized unknown
fields, truncation, random mutations. Whatever the attack, the answer is OK or
a client error with a message (never INTERNAL or UNKNOWN), every record acked
so far reads back with the generated classes as its ack said and within the
record limit, and the server stays up.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.limits import MIB, Limits
from streams.v1 import streams_pb2 as pb

from ..conftest import InProcessServer
from .support import RPCS, Ledger, Outcome, assert_handled, call, verify
from .wire import (
    EGROUP,
    LEN,
    MAX_FIELD_NUMBER,
    SGROUP,
    VARINT,
    WIRE_TYPES,
    field,
    inject,
    length_delimited,
    message_paths,
    tag,
    wire_type_of,
)

LIMITS = Limits()
HYPOTHESIS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Bytes that are not UTF-8: a lone continuation byte, a surrogate, an overlong
# NUL, a code point past U+10FFFF, a truncated sequence.
BAD_UTF8 = (b"\xff", b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82")
# What a smuggled field carries: Record's sequence and space (bad UTF-8 included).
SMUGGLED = tag(5, VARINT) + b"\x63" + length_delimited(3, b"\xff")
DEPTH = 10_000


def unknown_fields(descriptor: Descriptor) -> Iterator[tuple[str, bytes]]:
    """Unknown fields of every wire type, under numbers around the known ones
    (Record's 3-8 among them) and the largest number there is."""
    known = {f.number for f in descriptor.fields}
    numbers = [n for n in range(1, 12) if n not in known] + [MAX_FIELD_NUMBER]
    for number in numbers:
        for name, wire_type in WIRE_TYPES.items():
            yield f"unknown {number} {name}", field(number, wire_type, SMUGGLED)


def wrong_wire_types(descriptor: Descriptor) -> Iterator[tuple[str, bytes]]:
    for known in descriptor.fields:
        for name, wire_type in WIRE_TYPES.items():
            if wire_type != wire_type_of(known):
                yield f"{known.name} as {name}", field(known.number, wire_type, SMUGGLED)


def bad_strings(descriptor: Descriptor) -> Iterator[tuple[str, bytes]]:
    for known in descriptor.fields:
        if known.type == FieldDescriptor.TYPE_STRING:
            for bad in BAD_UTF8:
                yield f"{known.name} = {bad!r}", length_delimited(known.number, bad)


def malformed(descriptor: Descriptor) -> Iterator[tuple[str, bytes]]:
    number = MAX_FIELD_NUMBER
    yield "end group alone", tag(number, EGROUP)
    yield "group never ended", tag(number, SGROUP) + field(1, VARINT)
    yield "group ended by another", tag(number, SGROUP) + tag(number - 1, EGROUP)
    yield "wire type 6", tag(number, 6) + b"\x00"
    yield "wire type 7", tag(number, 7) + b"\x00"
    yield "field number 0", tag(0, VARINT) + b"\x00"
    yield "length past the end", tag(number, LEN) + b"\x10abc"
    yield "varint of 11 bytes", tag(number, VARINT) + b"\xff" * 10 + b"\x01"


def deep(descriptor: Descriptor) -> Iterator[tuple[str, bytes]]:
    number = MAX_FIELD_NUMBER
    yield "10,000 nested groups", tag(number, SGROUP) * DEPTH + tag(number, EGROUP) * DEPTH
    nested = SMUGGLED
    for _ in range(DEPTH):
        nested = length_delimited(number, nested)
    yield "10,000 nested length-delimited fields", nested
    yield "10,000 groups, never ended", tag(number, SGROUP) * DEPTH


def oversized(descriptor: Descriptor) -> Iterator[tuple[str, bytes]]:
    yield "6 MiB unknown field", length_delimited(99, b"\x00" * (6 * MIB))


ATTACKS: dict[str, Callable[[Descriptor], Iterator[tuple[str, bytes]]]] = {
    "unknown fields": unknown_fields,
    "wrong wire types": wrong_wire_types,
    "invalid UTF-8": bad_strings,
    "malformed": malformed,
    "deep nesting": deep,
    "oversized unknown field": oversized,
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class Target:
    """The server under attack, what it has acked, and a valid request per RPC."""

    server: InProcessServer
    ledger: Ledger
    victim: str  # a space with records that reads and offsets point at
    requests: dict[str, Message]

    def base(self, rpc: str) -> Message:
        """A valid request of ``rpc``; each Produce goes to a space of its own."""
        if rpc != "Produce":
            return self.requests[rpc]
        return produce_request(unique("attacked"))

    def attack(self, rpc: str, data: bytes, what: str) -> Outcome:
        """Sends ``data``, checks the answer, and checks what a Produce stored."""
        outcome = call(self.server.channel, rpc, data)
        assert_handled(outcome, what)
        if rpc == "Produce" and outcome.code is grpc.StatusCode.OK:
            space = self.ledger.acked(data, outcome.responses[0])
            verify(self.server.channel, self.ledger, space, LIMITS)
        return outcome

    def check_victim(self) -> None:
        """The server is up and the records everyone reads are intact."""
        verify(self.server.channel, self.ledger, self.victim, LIMITS)


def produce_request(space: str) -> pb.ProduceRequest:
    """Two writes, three records, metadata, an expected sequence, a transaction id:
    every message and field of a Produce is there to attack."""
    return pb.ProduceRequest(
        space=space,
        writes=[
            pb.SegmentWrite(
                segment="a",
                records=[
                    pb.RecordInput(payload=b"first", metadata={"key": "value"}),
                    pb.RecordInput(payload=b"second"),
                ],
                expected_sequence=0,
            ),
            pb.SegmentWrite(segment="b", records=[pb.RecordInput(payload=b"third")]),
        ],
        transaction_id=unique("tx"),
    )


def _group(space: str, name: str) -> pb.Group:
    """A group with every field set (and a timestamp start: a submessage)."""
    return pb.Group(
        name=name,
        space=space,
        ordering=pb.ORDERING_NONE,
        from_timestamp=Timestamp(seconds=1, nanos=2),
        ack_timeout=Duration(seconds=3, nanos=4),
        max_attempts=3,
        dead_letter_space="dead",
        dead_letter_segment="letters",
    )


@pytest.fixture(scope="module")
def target(server: InProcessServer, ledger: Ledger) -> Target:
    victim = unique("victim")
    # Trims and deletes act on a space of their own: the ledger's stay whole.
    trimmed = unique("trimmed")
    for space in (victim, unique("other"), trimmed):
        data = produce_request(space).SerializeToString()
        outcome = call(server.channel, "Produce", data)
        assert outcome.code is grpc.StatusCode.OK, outcome.details
        if space != trimmed:
            ledger.acked(data, outcome.responses[0])
    stub = server.stub
    stub.Commit(pb.CommitRequest(consumer="c", space=victim, segment="a", offset=1))
    spaces_token = stub.ListSpaces(pb.ListSpacesRequest(page_size=1)).next_page_token
    segments_token = stub.ListSegments(
        pb.ListSegmentsRequest(space=victim, page_size=1)
    ).next_page_token
    assert spaces_token and segments_token
    for name in ("hg", "hg2"):
        stub.CreateGroup(pb.CreateGroupRequest(group=_group(victim, name)))
    groups_token = stub.ListGroups(pb.ListGroupsRequest(space=victim, page_size=1)).next_page_token
    requests: dict[str, Message] = {
        "Consume": pb.ConsumeRequest(
            space=victim,
            segment="a",
            from_timestamp=Timestamp(seconds=1, nanos=2),
            to_offset=50,
            limit=50,
            max_batch=10,
        ),
        "Peek": pb.PeekRequest(space=victim, segment="a"),
        "Commit": pb.CommitRequest(
            consumer="c", space=victim, segment="a", offset=1, expected_offset=1
        ),
        "GetOffset": pb.GetOffsetRequest(consumer="c", space=victim, segment="a"),
        "ListSpaces": pb.ListSpacesRequest(page_size=5, page_token=spaces_token),
        "ListSegments": pb.ListSegmentsRequest(
            space=victim, page_size=1, page_token=segments_token
        ),
        "Trim": pb.TrimRequest(
            space=trimmed, segment="a", before_timestamp=Timestamp(seconds=1, nanos=2)
        ),
        "DeleteSegment": pb.DeleteSegmentRequest(
            space=trimmed, segment="doomed", expected_sequence=0
        ),
        "DeleteSpace": pb.DeleteSpaceRequest(space=unique("doomed")),
        "ConfigureSpace": pb.ConfigureSpaceRequest(
            space=unique("configured"),
            config=pb.SpaceConfig(
                retention=pb.RetentionPolicy(
                    max_age=Duration(seconds=3600, nanos=5),
                    max_records_per_segment=10**6,
                    max_bytes=10**12,
                )
            ),
        ),
        "GetSpace": pb.GetSpaceRequest(space=victim),
        "GetSegment": pb.GetSegmentRequest(space=victim, segment="a"),
        "WatchSegments": pb.WatchSegmentsRequest(space=victim, prefix="a"),
        # The same group again: OK, every time.
        "CreateGroup": pb.CreateGroupRequest(group=_group(victim, "hg")),
        "GetGroup": pb.GetGroupRequest(space=victim, group="hg"),
        "ListGroups": pb.ListGroupsRequest(space=victim, page_size=1, page_token=groups_token),
        "DeleteGroup": pb.DeleteGroupRequest(space=victim, group="doomed"),
    }
    return Target(server, ledger, victim, requests)


def test_every_base_request_is_valid(target: Target) -> None:
    """The attacks start from requests the server accepts, so a refusal is the attack's."""
    for rpc in RPCS:
        outcome = target.attack(rpc, target.base(rpc).SerializeToString(), rpc)
        assert outcome.code is grpc.StatusCode.OK, f"{rpc}: {outcome.details}"
    consumer = pb.ConsumeRequest(space=target.victim, from_consumer="c")
    assert target.attack("Consume", consumer.SerializeToString(), "from_consumer").responses


@pytest.mark.parametrize("kind", sorted(ATTACKS))
@pytest.mark.parametrize("rpc", RPCS)
def test_attack_every_message_of_every_rpc(target: Target, rpc: str, kind: str) -> None:
    count = 0
    for path, descriptor in message_paths(target.base(rpc)):
        for what, extra in ATTACKS[kind](descriptor):
            # A fresh base each time: a Produce attack gets a space of its own.
            data = inject(target.base(rpc), path, extra)
            outcome = target.attack(rpc, data, f"{rpc} {'.'.join(map(str, path))}: {what}")
            if kind == "invalid UTF-8":
                assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, what
                assert "UTF-8" in outcome.details, outcome.details
            if kind == "malformed":
                assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, what
                assert f"not a valid {descriptor_of(rpc)}" in outcome.details
            count += 1
    assert count
    target.check_victim()


def descriptor_of(rpc: str) -> str:
    return pb.DESCRIPTOR.services_by_name["StreamsService"].methods_by_name[rpc].input_type.name


@pytest.mark.parametrize("rpc", RPCS)
def test_every_truncation_of_every_request(target: Target, rpc: str) -> None:
    data = target.base(rpc).SerializeToString()
    for size in range(len(data)):
        target.attack(rpc, data[:size], f"{rpc} cut to {size} of {len(data)} bytes")
    target.check_victim()


@pytest.mark.parametrize("rpc", RPCS)
def test_a_request_over_the_size_limit_is_resource_exhausted(target: Target, rpc: str) -> None:
    filler = length_delimited(99, b"\x00" * LIMITS.max_request_bytes)
    outcome = target.attack(rpc, target.base(rpc).SerializeToString() + filler, rpc)
    assert outcome.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    target.check_victim()


def paths_of(rpc: str, target: Target) -> list[tuple[str | int, ...]]:
    return [path for path, _ in message_paths(target.base(rpc))]


@HYPOTHESIS
@given(data=st.data())
def test_random_unknown_fields_anywhere(target: Target, data: st.DataObject) -> None:
    rpc = data.draw(st.sampled_from(RPCS))
    path = data.draw(st.sampled_from(paths_of(rpc, target)))
    extra = b"".join(
        data.draw(
            st.lists(
                st.builds(
                    field,
                    st.integers(1, MAX_FIELD_NUMBER),
                    st.sampled_from(sorted(WIRE_TYPES.values())),
                    st.binary(max_size=64),
                ),
                min_size=1,
                max_size=4,
            )
        )
    )
    target.attack(rpc, inject(target.base(rpc), path, extra), f"{rpc} {path}: {extra!r}")


def _never_follow(rpc: str, data: bytes) -> bytes:
    """A mutated Consume that asks to follow would wait for records forever: a
    last ``follow = false`` wins over it, whatever came before it."""
    if rpc != "Consume":
        return data
    try:
        if not pb.ConsumeRequest.FromString(data).follow:
            return data
    except DecodeError:
        return data
    return data + tag(pb.ConsumeRequest.FOLLOW_FIELD_NUMBER, VARINT) + b"\x00"


@HYPOTHESIS
@given(data=st.data())
def test_random_mutations_of_valid_requests(target: Target, data: st.DataObject) -> None:
    rpc = data.draw(st.sampled_from(RPCS))
    raw = bytearray(target.base(rpc).SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw)))
        match data.draw(st.sampled_from(["flip", "insert", "delete"])):
            case "flip" if at < len(raw):
                raw[at] ^= data.draw(st.integers(1, 255))
            case "insert":
                raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
            case "delete":
                del raw[at : at + data.draw(st.integers(1, 8))]
    mutated = _never_follow(rpc, bytes(raw))
    target.attack(rpc, mutated, f"{rpc}: {mutated!r}")


def test_the_server_is_still_up_and_everything_reads(target: Target) -> None:
    for space in target.ledger.spaces:
        verify(target.server.channel, target.ledger, space, LIMITS)
    peeked = target.server.stub.Peek(pb.PeekRequest(space=target.victim))
    assert peeked.record.position == max(target.ledger.spaces[target.victim])
