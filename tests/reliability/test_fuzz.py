"""Bad input: every RPC fuzzed with random and adversarial fields (hypothesis).

Each case goes to a real server subprocess over a raw channel (request bytes
built by us, no client-side validation), and is checked against the contract:

- the status is one the contract names for that RPC, never UNKNOWN or INTERNAL;
- where the contract fixes the status (a bad name, a limit, a page token the
  server did not issue, bytes that are not valid protobuf...) it is exactly
  that one; a request over 16 MiB is RESOURCE_EXHAUSTED;
- a rejected Produce, Commit, Trim, Delete* or ConfigureSpace writes nothing:
  the space list (with every space's last position), the segment list of the
  space named (with each segment's numbers), the space's info and config and
  the consumer offset named are the same before and after;
- the lifecycle RPCs (Trim, DeleteSegment, DeleteSpace, ConfigureSpace,
  GetSpace, GetSegment, WatchSegments) are fuzzed like the others; names
  starting with ``$`` are INVALID_ARGUMENT wherever a client writes them;
  WatchSegments streams until its deadline, its snapshot in name order, each
  name matching the prefix;
- Subscribe gets random streams of messages (a join, valid or not, first or
  not; then acks, nacks, joins, empty and undecodable messages): the status is
  the one the contract names (a bad first message or field INVALID_ARGUMENT,
  an unknown group NOT_FOUND, else OK once the client half-closes), the first
  response is ``joined`` with an id, then non-empty deliveries of the space;
- the server process is alive after every case and still answers at the end.

What the server sees is known by parsing the same bytes locally with the same
protobuf runtime: bytes that do not parse must be INVALID_ARGUMENT.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import limits
from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.process import ServerProcess

from .support import SERVICE, bytes_field, count, key, list_all_spaces, varint

U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
MIB = 1024 * 1024
MAX_REQUEST = 16 * MIB
Code = grpc.StatusCode

REQUEST_TYPES: dict[str, type[Message]] = {
    "Produce": pb.ProduceRequest,
    "Consume": pb.ConsumeRequest,
    "Peek": pb.PeekRequest,
    "Commit": pb.CommitRequest,
    "GetOffset": pb.GetOffsetRequest,
    "ListSpaces": pb.ListSpacesRequest,
    "ListSegments": pb.ListSegmentsRequest,
    "Trim": pb.TrimRequest,
    "DeleteSegment": pb.DeleteSegmentRequest,
    "DeleteSpace": pb.DeleteSpaceRequest,
    "ConfigureSpace": pb.ConfigureSpaceRequest,
    "GetSpace": pb.GetSpaceRequest,
    "GetSegment": pb.GetSegmentRequest,
    "WatchSegments": pb.WatchSegmentsRequest,
}
RESPONSE_TYPES: dict[str, type[Message]] = {
    "Produce": pb.ProduceResponse,
    "Consume": pb.ConsumeResponse,
    "Peek": pb.PeekResponse,
    "Commit": pb.CommitResponse,
    "GetOffset": pb.GetOffsetResponse,
    "ListSpaces": pb.ListSpacesResponse,
    "ListSegments": pb.ListSegmentsResponse,
    "Trim": pb.TrimResponse,
    "DeleteSegment": pb.DeleteSegmentResponse,
    "DeleteSpace": pb.DeleteSpaceResponse,
    "ConfigureSpace": pb.ConfigureSpaceResponse,
    "GetSpace": pb.GetSpaceResponse,
    "GetSegment": pb.GetSegmentResponse,
    "WatchSegments": pb.WatchSegmentsResponse,
}
# Server-streaming RPCs; a valid WatchSegments (and a Consume with follow) runs
# until its deadline.
STREAMING = frozenset({"Consume", "WatchSegments"})
# RPCs that write: a rejected one must leave the store as it was.
WRITERS = frozenset({"Produce", "Commit", "Trim", "DeleteSegment", "DeleteSpace", "ConfigureSpace"})
# What a request the contract accepts may still answer, per RPC.
VALID_CODES: dict[str, frozenset[Code]] = {
    "Produce": frozenset({Code.OK, Code.FAILED_PRECONDITION, Code.ALREADY_EXISTS}),
    "Consume": frozenset({Code.OK}),
    "Peek": frozenset({Code.OK, Code.NOT_FOUND}),
    # NOT_FOUND: the target was deleted (fuzzed deletes run too).
    "Commit": frozenset({Code.OK, Code.FAILED_PRECONDITION, Code.OUT_OF_RANGE, Code.NOT_FOUND}),
    "GetOffset": frozenset({Code.OK, Code.NOT_FOUND}),
    "ListSpaces": frozenset({Code.OK}),
    "ListSegments": frozenset({Code.OK}),
    "Trim": frozenset({Code.OK, Code.NOT_FOUND, Code.OUT_OF_RANGE}),
    "DeleteSegment": frozenset({Code.OK, Code.FAILED_PRECONDITION}),
    "DeleteSpace": frozenset({Code.OK}),
    "ConfigureSpace": frozenset({Code.OK}),
    "GetSpace": frozenset({Code.OK, Code.NOT_FOUND}),
    "GetSegment": frozenset({Code.OK, Code.NOT_FOUND}),
    "WatchSegments": frozenset({Code.DEADLINE_EXCEEDED}),
}
# google.protobuf.Duration's range (about 10,000 years), in seconds; the
# server's retention ages go up to limits.MAX_AGE_NS.
MAX_DURATION_SECONDS = 315_576_000_000
FOLLOW_DEADLINE = 0.3
CALL_DEADLINE = 30.0

# A few spaces with records, segments and offsets, so that reads, peeks and
# commits meet real data; the fuzzer draws most names from this pool.
SEED_SPACES = ("fz-0", "fz-1", "é" * 127 + "z")  # the last is 255 bytes
SEED_SEGMENTS = ("a", "ab", "b/c:d")
SEED_CONSUMERS = ("c", "c2")
# Groups the fuzzed Subscribe streams join (the fuzzer deletes neither them nor their spaces).
FUZZ_GROUPS = (
    ("fz-0", "g", pb.ORDERING_PER_SEGMENT),
    ("fz-many", "gn", pb.ORDERING_NONE),
)
SUBSCRIBE_DEADLINE = 10.0
# Page tokens the server issued, by listing scope; any other token is garbage.
ISSUED: dict[str, set[str]] = {}


# -- the contract's rules, written from the contract ------------------------


def bad_name(value: str) -> bool:
    """UTF-8, 1 to 255 bytes, no U+0000-U+001F or U+007F."""
    size = len(value.encode("utf-8"))
    return not 1 <= size <= 255 or any(ord(c) < 0x20 or c == "\x7f" for c in value)


def reserved(value: str) -> bool:
    """A name the server keeps for itself (contract, "Reserved names")."""
    return value.startswith("$")


def _utf8_len(value: str) -> int:
    return len(value.encode("utf-8"))


def wrong_wire_types(m: Message, path: str = "") -> list[str]:
    """A known field number with a wire type not its own reaches the parser as an
    unknown field; read as empty it would change the request's meaning. Checked
    in the request and in every message in it."""
    out = []
    known = m.DESCRIPTOR.fields_by_number
    unknown = UnknownFieldSet(m)
    for i in range(len(unknown)):
        if unknown[i].field_number in known:
            out.append(f"{path}{known[unknown[i].field_number].name}: wrong wire type")
    for field, value in m.ListFields():
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        items = value if field.is_repeated else [value]
        for item in items:
            out.extend(wrong_wire_types(item, f"{path}{field.name}."))
    return out


def violations(method: str, m: Any) -> list[str]:
    """Why the contract says INVALID_ARGUMENT for the parsed request ``m`` (empty: valid)."""
    out: list[str] = []

    def check_name(field: str, value: str, *, empty_ok: bool = False) -> None:
        if not (empty_ok and value == "") and bad_name(value):
            out.append(f"{field} {value[:20]!r}")

    def check_written(field: str, value: str, *, empty_ok: bool = False) -> None:
        check_name(field, value, empty_ok=empty_ok)
        if reserved(value):
            out.append(f"{field} {value[:20]!r} is reserved")

    def check_token(scope: str, token: str) -> None:
        if token and token not in ISSUED.get(scope, set()):
            out.append(f"page_token {token[:20]!r}")

    out.extend(wrong_wire_types(m))

    if method == "Produce":
        check_written("space", m.space)
        if not m.writes:
            out.append("no writes")
        if _utf8_len(m.transaction_id) > 128:
            out.append("transaction_id over 128 bytes")
        if sum(len(w.records) for w in m.writes) > 10_000:
            out.append("over 10,000 records")
        seen: set[str] = set()
        for w in m.writes:
            check_written("segment", w.segment)
            if w.segment in seen:
                out.append("segment twice")
            seen.add(w.segment)
            if not w.records:
                out.append("no records")
            for r in w.records:
                if len(r.payload) > MIB:
                    out.append("payload over 1 MiB")
                if len(r.metadata) > 64:
                    out.append("over 64 metadata pairs")
                for k, v in r.metadata.items():
                    if _utf8_len(k) > 255 or _utf8_len(v) > 4096:
                        out.append("metadata key or value too long")
    elif method == "Consume":
        check_name("space", m.space)
        check_name("segment", m.segment, empty_ok=True)
        start = m.WhichOneof("start")
        if start == "from_consumer":
            check_name("from_consumer", m.from_consumer)
        if start == "from_timestamp" and not 0 <= m.from_timestamp.nanos <= 999_999_999:
            out.append("from_timestamp.nanos out of range")
        if m.max_batch > 10_000:
            out.append("max_batch over 10,000")
    elif method == "Peek":
        check_name("space", m.space)
        check_name("segment", m.segment, empty_ok=True)
    elif method == "Commit":
        check_written("consumer", m.consumer)
        check_name("space", m.space)
        check_name("segment", m.segment, empty_ok=True)
    elif method == "GetOffset":
        check_name("consumer", m.consumer)
        check_name("space", m.space)
        check_name("segment", m.segment, empty_ok=True)
    elif method == "ListSpaces":
        if m.page_size < 0:
            out.append("negative page_size")
        check_token("spaces", m.page_token)
    elif method == "ListSegments":
        check_name("space", m.space)
        if m.page_size < 0:
            out.append("negative page_size")
        check_token(f"segments/{m.space}", m.page_token)
    elif method == "Trim":
        check_written("space", m.space)
        check_written("segment", m.segment, empty_ok=True)
        before = m.WhichOneof("before")
        if before is None:
            out.append("no before_offset nor before_timestamp")
        if before == "before_timestamp" and not 0 <= m.before_timestamp.nanos <= 999_999_999:
            out.append("before_timestamp.nanos out of range")
    elif method in ("DeleteSegment", "GetSegment"):
        # Deletes of reserved names are allowed (names stored before they were reserved).
        check_name("space", m.space)
        check_name("segment", m.segment)
    elif method in ("DeleteSpace", "GetSpace"):
        check_name("space", m.space)
    elif method == "ConfigureSpace":
        check_written("space", m.space)
        age = m.config.retention.max_age
        if (
            age.seconds < 0
            or not 0 <= age.nanos <= 999_999_999
            or age.seconds * 1_000_000_000 + age.nanos > limits.MAX_AGE_NS
        ):
            out.append(
                f"config.retention.max_age {age.seconds}s {age.nanos}ns is not a duration >= 0"
            )
    elif method == "WatchSegments":
        check_name("space", m.space)
        if _utf8_len(m.prefix) > 255 or any(ord(c) < 0x20 or c == "\x7f" for c in m.prefix):
            out.append(f"prefix {m.prefix[:20]!r}")
    return out


# -- calling the server with raw bytes --------------------------------------


@dataclass
class Outcome:
    code: Code
    details: str
    responses: list[bytes]


def invoke(channel: grpc.Channel, method: str, body: bytes, timeout: float) -> Outcome:
    path = SERVICE + method
    responses: list[bytes] = []
    try:
        if method in STREAMING:
            stream = channel.unary_stream(
                path, request_serializer=None, response_deserializer=None
            )(body, timeout=timeout)
            for raw in stream:
                responses.append(raw)
            return Outcome(Code.OK, "", responses)
        call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        return Outcome(Code.OK, "", [call(body, timeout=timeout)])
    except grpc.RpcError as err:
        # What a stream sent before it ended is checked too.
        return Outcome(err.code(), err.details() or "", responses)


@dataclass
class Fuzz:
    server: ServerProcess
    channel: grpc.Channel
    stub: pb_grpc.StreamsServiceStub


def _state(stub: pb_grpc.StreamsServiceStub, method: str, m: Any) -> tuple[object, ...]:
    """What a rejected write must leave unchanged."""
    spaces = list_all_spaces(stub)
    segments: object = None
    space_info: object = None
    if not bad_name(m.space):
        listing = stub.ListSegments(
            pb.ListSegmentsRequest(space=m.space, page_size=1000), timeout=CALL_DEADLINE
        )
        segments = [
            (s.name, s.last_sequence, s.last_position, s.first_sequence, s.record_count)
            for s in listing.segments
        ]
        try:
            space_info = stub.GetSpace(
                pb.GetSpaceRequest(space=m.space), timeout=CALL_DEADLINE
            ).SerializeToString(deterministic=True)
        except grpc.RpcError as err:
            space_info = err.code()
    offset: object = None
    if method == "Commit":
        try:
            offset = stub.GetOffset(
                pb.GetOffsetRequest(consumer=m.consumer, space=m.space, segment=m.segment),
                timeout=CALL_DEADLINE,
            ).offset
        except grpc.RpcError as err:
            offset = err.code()
    return spaces, segments, space_info, offset


def check_watch(m: pb.WatchSegmentsRequest, responses: list[Any], where: str) -> None:
    """The snapshot: in name order, every name matching the prefix, then live changes."""
    snapshot: list[bytes] = []
    complete = 0
    for response in responses:
        for info in response.segments:
            assert info.name.startswith(m.prefix), f"{info.name!r} outside the prefix: {where}"
        assert all(name.startswith(m.prefix) for name in response.deleted), where
        if not complete:
            assert not response.deleted, f"a deletion inside the snapshot: {where}"
            snapshot.extend(info.name.encode() for info in response.segments)
        complete += response.snapshot_complete
    assert complete <= 1, f"snapshot_complete in {complete} messages: {where}"
    assert snapshot == sorted(snapshot) and len(set(snapshot)) == len(snapshot), (
        f"snapshot not in name order: {where}"
    )


def check_case(fz: Fuzz, method: str, body: bytes) -> Outcome:
    """Sends ``body`` to ``method`` and checks the answer against the contract."""
    count("fuzz cases tried")
    count(f"fuzz cases tried: {method}")
    try:
        m: Any = REQUEST_TYPES[method].FromString(body)
    except DecodeError:
        m = None
    follow = m is not None and ((method == "Consume" and m.follow) or method == "WatchSegments")
    writer = method in WRITERS and m is not None and len(body) <= MAX_REQUEST
    before = _state(fz.stub, method, m) if writer else None

    outcome = invoke(fz.channel, method, body, FOLLOW_DEADLINE if follow else CALL_DEADLINE)
    assert fz.server.alive(), f"the server died on {method} {body[:200]!r}"
    where = f"{method} ({len(body)} bytes) {body[:160]!r} -> {outcome.code.name}: "
    where += outcome.details[:300]

    assert outcome.code not in (Code.UNKNOWN, Code.INTERNAL), where
    if len(body) > MAX_REQUEST:
        expected = frozenset({Code.RESOURCE_EXHAUSTED})
    elif m is None:
        expected = frozenset({Code.INVALID_ARGUMENT})
    elif why := violations(method, m):
        expected = frozenset({Code.INVALID_ARGUMENT})
        where += f" (invalid because: {'; '.join(why)})"
    else:
        expected = VALID_CODES[method] | ({Code.DEADLINE_EXCEEDED} if follow else frozenset())
    assert outcome.code in expected, f"expected one of {sorted(c.name for c in expected)}: {where}"
    if outcome.code is not Code.OK:
        assert outcome.details, f"an error must say what is wrong: {where}"

    if outcome.code in (Code.OK, Code.DEADLINE_EXCEEDED):
        responses = [RESPONSE_TYPES[method].FromString(raw) for raw in outcome.responses]
        if method == "WatchSegments":
            check_watch(m, responses, where)
        for response in responses:
            if method == "Consume":
                assert 1 <= len(response.records) <= (m.max_batch or 10_000), where
            if method == "Trim":
                assert response.first_offset >= 1, where
            if method == "ConfigureSpace":
                assert response.config == m.config, f"config not as sent: {where}"
            if method == "GetSpace":
                info = response.space
                assert info.name == m.space, where
                assert info.first_position <= info.last_position + 1, where
                assert info.record_count <= info.last_position - info.first_position + 1, where
            if method == "GetSegment":
                info = response.segment
                assert info.name == m.segment, where
                assert info.record_count == info.last_sequence - info.first_sequence + 1, (
                    f"a segment's retained records are dense: {where}"
                )
            if method in ("ListSpaces", "ListSegments") and response.next_page_token:
                scope = "spaces" if method == "ListSpaces" else f"segments/{m.space}"
                ISSUED.setdefault(scope, set()).add(response.next_page_token)
    if before is not None and outcome.code is not Code.OK:
        after = _state(fz.stub, method, m)
        assert after == before, f"a rejected {method} changed the store: {where}"
    return outcome


@pytest.fixture(scope="module")
def fz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    (tmp / "data").mkdir()
    server = ServerProcess(tmp / "data", tmp / "server.log")
    server.start()
    assert server.channel is not None
    try:
        stub = server.stub
        for space in SEED_SPACES:
            for segment in SEED_SEGMENTS:
                stub.Produce(
                    pb.ProduceRequest(
                        space=space,
                        writes=[
                            pb.SegmentWrite(
                                segment=segment,
                                records=[pb.RecordInput(payload=b"seed", metadata={"k": "v"})] * 3,
                            )
                        ],
                    )
                )
            for consumer in SEED_CONSUMERS:
                stub.Commit(pb.CommitRequest(consumer=consumer, space=space, offset=2))
        # Enough segments in one space for ListSegments to issue real tokens.
        stub.Produce(
            pb.ProduceRequest(
                space="fz-many",
                writes=[
                    pb.SegmentWrite(segment=f"s{i:03}", records=[pb.RecordInput(payload=b"x")])
                    for i in range(30)
                ],
            )
        )
        for space, group, ordering in FUZZ_GROUPS:
            stub.CreateGroup(
                pb.CreateGroupRequest(group=pb.Group(name=group, space=space, ordering=ordering))
            )
        yield Fuzz(server, server.channel, stub)
        # Still answering after everything the fuzzer threw at it.
        assert server.alive(), f"server died; log:\n{server.log_path.read_text()[-4000:]}"
        list_all_spaces(stub)
    finally:
        server.close()


# -- strategies -------------------------------------------------------------

CONTROL = [chr(c) for c in range(0x20)] + ["\x7f"]
MULTIBYTE = ["é", "€", "𝄞", "中", "\u200b", "\ufeff", "ß"]


def _exact_bytes(total: int, char: str) -> str:
    """A name of exactly ``total`` UTF-8 bytes: multi-byte chars, padded with ASCII."""
    name = ""
    while _utf8_len(name + char) <= total:
        name += char
    return name + "a" * (total - _utf8_len(name))


names = st.one_of(
    st.sampled_from(SEED_SPACES + SEED_SEGMENTS + SEED_CONSUMERS + ("fz-many",)),
    st.text(max_size=12),
    st.text(alphabet=st.sampled_from([*CONTROL, "a", "é"]), min_size=1, max_size=6),
    st.builds(
        _exact_bytes, st.sampled_from([254, 255, 256, 257]), st.sampled_from([*MULTIBYTE, "a"])
    ),
    st.builds(lambda n, c: c * n, st.sampled_from([1_000, 70_000]), st.sampled_from(["x", "é"])),
    st.just(""),
    st.sampled_from(["/", ":", "a/b:c", " ", "\u0080", "\u009f", "\U0010ffff", "fz-0\x00"]),
    st.sampled_from(["$", "$parked", "$x/y", "a$"]),
)
u64 = st.one_of(
    st.integers(0, 8),
    st.sampled_from([U64_MAX, U64_MAX - 1, 2**63, 2**63 - 1, 2**32, 2**53 + 1]),
    st.integers(0, U64_MAX),
)
payloads = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([MIB, MIB + 1]).map(lambda n: b"\x00" * n),
)
small_text = st.text(max_size=8)
metadata = st.one_of(
    st.dictionaries(small_text, small_text, max_size=4),
    st.just({f"k{i}": "v" for i in range(65)}),
    st.just({"k" * 256: "v"}),
    st.just({"k": "v" * 4097}),
    st.just({"é" * 127 + "a": "€" * 1365}),  # 255-byte key, 4095-byte value: allowed
    st.dictionaries(st.sampled_from([*CONTROL, ""]), st.sampled_from(CONTROL), max_size=3),
)
records = st.builds(pb.RecordInput, payload=payloads, metadata=metadata)


@st.composite
def segment_writes(draw: st.DrawFn) -> pb.SegmentWrite:
    write = pb.SegmentWrite(
        segment=draw(names), records=draw(st.lists(records, min_size=0, max_size=3))
    )
    if draw(st.booleans()):
        write.expected_sequence = draw(u64)
    return write


@st.composite
def produce_requests(draw: st.DrawFn) -> pb.ProduceRequest:
    request = pb.ProduceRequest(
        space=draw(names),
        writes=draw(st.lists(segment_writes(), max_size=3)),
        transaction_id=draw(
            st.one_of(
                st.just(""),
                st.sampled_from(["tx-1", "tx-2"]),
                st.text(max_size=10),
                st.builds(_exact_bytes, st.sampled_from([128, 129]), st.sampled_from(MULTIBYTE)),
            )
        ),
    )
    if request.writes and draw(st.integers(0, 30)) == 0:
        # Over the records limit by one, across the writes.
        request.writes[0].records.extend(pb.RecordInput() for _ in range(10_001))
    return request


@st.composite
def consume_requests(draw: st.DrawFn) -> pb.ConsumeRequest:
    request = pb.ConsumeRequest(
        space=draw(names),
        segment=draw(st.one_of(st.just(""), names)),
        to_offset=draw(u64),
        limit=draw(u64),
        max_batch=draw(st.one_of(st.integers(0, 3), st.sampled_from([10_000, 10_001, U32_MAX]))),
        follow=draw(st.integers(0, 4)) == 0,
    )
    start = draw(st.sampled_from(["none", "offset", "timestamp", "consumer", "end"]))
    if start == "offset":
        request.from_offset = draw(u64)
    elif start == "timestamp":
        request.from_timestamp.seconds = draw(
            st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(0, 2**34))
        )
        request.from_timestamp.nanos = draw(
            st.one_of(st.integers(0, 999_999_999), st.integers(I32_MIN, I32_MAX))
        )
    elif start == "consumer":
        request.from_consumer = draw(names)
    elif start == "end":
        request.from_end = True
    return request


@st.composite
def commit_requests(draw: st.DrawFn) -> pb.CommitRequest:
    request = pb.CommitRequest(
        consumer=draw(names),
        space=draw(names),
        segment=draw(st.one_of(st.just(""), names)),
        offset=draw(u64),
    )
    if draw(st.booleans()):
        request.expected_offset = draw(u64)
    return request


@st.composite
def trim_requests(draw: st.DrawFn) -> pb.TrimRequest:
    request = pb.TrimRequest(space=draw(names), segment=draw(st.one_of(st.just(""), names)))
    before = draw(st.sampled_from(["none", "offset", "offset", "timestamp"]))
    if before == "offset":
        request.before_offset = draw(u64)
    elif before == "timestamp":
        request.before_timestamp.seconds = draw(
            st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(0, 2**34))
        )
        request.before_timestamp.nanos = draw(
            st.one_of(st.integers(0, 999_999_999), st.integers(I32_MIN, I32_MAX))
        )
    return request


@st.composite
def delete_segment_requests(draw: st.DrawFn) -> pb.DeleteSegmentRequest:
    request = pb.DeleteSegmentRequest(space=draw(names), segment=draw(names))
    if draw(st.booleans()):
        request.expected_sequence = draw(u64)
    return request


durations = st.one_of(
    st.tuples(st.integers(0, 10**6), st.integers(0, 999_999_999)),
    st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(I32_MIN, I32_MAX)),
    st.sampled_from(
        [
            (0, 0),
            (-1, 0),
            (0, -1),
            (1, -1),
            (MAX_DURATION_SECONDS, 999_999_999),
            (MAX_DURATION_SECONDS + 1, 0),
            (2**62, 0),
        ]
    ),
)


@st.composite
def configure_requests(draw: st.DrawFn) -> pb.ConfigureSpaceRequest:
    request = pb.ConfigureSpaceRequest(space=draw(names))
    if draw(st.integers(0, 5)):
        retention = request.config.retention
        seconds, nanos = draw(durations)
        retention.max_age.seconds = seconds
        retention.max_age.nanos = nanos
        retention.max_records_per_segment = draw(u64)
        retention.max_bytes = draw(u64)
    elif draw(st.booleans()):
        request.config.SetInParent()  # a config with no retention policy
    return request


page_sizes = st.one_of(
    st.integers(-2, 3),
    st.sampled_from([1000, 1001, I32_MAX, I32_MIN, -1]),
    st.integers(I32_MIN, I32_MAX),
)


def _tamper(token: str, index: int, char: str) -> str:
    if not token:
        return char
    index %= len(token)
    return token[:index] + char + token[index + 1 :]


@st.composite
def page_tokens(draw: st.DrawFn, scope: str) -> str:
    # The same draws whatever ISSUED holds (hypothesis replays draws): only the
    # value picked from the pool depends on which tokens the server has issued.
    kind = draw(st.sampled_from(["empty", "text", "b64", "issued", "tampered", "other", "huge"]))
    text = draw(st.text(min_size=1, max_size=40))
    b64 = draw(st.from_regex(r"\A[A-Za-z0-9_\-]{1,40}={0,2}\Z"))
    pick, at = draw(st.integers(0, 10_000)), draw(st.integers(0, 200))
    char = draw(st.sampled_from("AZaz09-_=!é"))
    issued = sorted(ISSUED.get(scope, set())) or ["AQAAAABh"]
    others = sorted(t for s, ts in ISSUED.items() if s != scope for t in ts) or ["AQAAAABhYg"]
    match kind:
        case "empty":
            return ""
        case "text":
            return text
        case "b64":
            return b64
        case "huge":
            return "A" * (1_000 if pick % 2 else 100_000)
        case "issued":
            return issued[pick % len(issued)]
        case "other":  # a real token, but from another listing
            return others[pick % len(others)]
        case _:
            return _tamper(issued[pick % len(issued)], at, char)


SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(request=produce_requests())
def test_produce_fuzz(fz: Fuzz, request: pb.ProduceRequest) -> None:
    check_case(fz, "Produce", request.SerializeToString())


@SETTINGS
@given(request=consume_requests())
def test_consume_fuzz(fz: Fuzz, request: pb.ConsumeRequest) -> None:
    check_case(fz, "Consume", request.SerializeToString())


@settings(SETTINGS, max_examples=100)
@given(space=names, segment=st.one_of(st.just(""), names))
def test_peek_fuzz(fz: Fuzz, space: str, segment: str) -> None:
    check_case(fz, "Peek", pb.PeekRequest(space=space, segment=segment).SerializeToString())


@SETTINGS
@given(request=commit_requests())
def test_commit_fuzz(fz: Fuzz, request: pb.CommitRequest) -> None:
    check_case(fz, "Commit", request.SerializeToString())


@settings(SETTINGS, max_examples=100)
@given(consumer=names, space=names, segment=st.one_of(st.just(""), names))
def test_get_offset_fuzz(fz: Fuzz, consumer: str, space: str, segment: str) -> None:
    request = pb.GetOffsetRequest(consumer=consumer, space=space, segment=segment)
    check_case(fz, "GetOffset", request.SerializeToString())


@settings(SETTINGS, max_examples=150)
@given(data=st.data())
def test_list_spaces_fuzz(fz: Fuzz, data: st.DataObject) -> None:
    request = pb.ListSpacesRequest(
        page_size=data.draw(page_sizes), page_token=data.draw(page_tokens("spaces"))
    )
    check_case(fz, "ListSpaces", request.SerializeToString())


@settings(SETTINGS, max_examples=150)
@given(data=st.data())
def test_list_segments_fuzz(fz: Fuzz, data: st.DataObject) -> None:
    space = data.draw(st.one_of(st.just("fz-many"), names))
    request = pb.ListSegmentsRequest(
        space=space,
        page_size=data.draw(page_sizes),
        page_token=data.draw(page_tokens(f"segments/{space}")),
    )
    check_case(fz, "ListSegments", request.SerializeToString())


@SETTINGS
@given(request=trim_requests())
def test_trim_fuzz(fz: Fuzz, request: pb.TrimRequest) -> None:
    check_case(fz, "Trim", request.SerializeToString())


@settings(SETTINGS, max_examples=100)
@given(request=delete_segment_requests())
def test_delete_segment_fuzz(fz: Fuzz, request: pb.DeleteSegmentRequest) -> None:
    check_case(fz, "DeleteSegment", request.SerializeToString())


@settings(SETTINGS, max_examples=60)
@given(space=names)
def test_delete_space_fuzz(fz: Fuzz, space: str) -> None:
    if space in {sp for sp, _, _ in FUZZ_GROUPS}:
        space = "fz-gone"  # a DeleteSpace removes its groups: keep the ones Subscribe joins
    check_case(fz, "DeleteSpace", pb.DeleteSpaceRequest(space=space).SerializeToString())


@SETTINGS
@given(request=configure_requests())
def test_configure_space_fuzz(fz: Fuzz, request: pb.ConfigureSpaceRequest) -> None:
    check_case(fz, "ConfigureSpace", request.SerializeToString())


@settings(SETTINGS, max_examples=100)
@given(space=names)
def test_get_space_fuzz(fz: Fuzz, space: str) -> None:
    check_case(fz, "GetSpace", pb.GetSpaceRequest(space=space).SerializeToString())


@settings(SETTINGS, max_examples=100)
@given(space=names, segment=names)
def test_get_segment_fuzz(fz: Fuzz, space: str, segment: str) -> None:
    request = pb.GetSegmentRequest(space=space, segment=segment)
    check_case(fz, "GetSegment", request.SerializeToString())


@settings(SETTINGS, max_examples=40)
@given(space=st.one_of(st.just("fz-many"), names), prefix=st.one_of(st.just(""), names))
def test_watch_segments_fuzz(fz: Fuzz, space: str, prefix: str) -> None:
    request = pb.WatchSegmentsRequest(space=space, prefix=prefix)
    check_case(fz, "WatchSegments", request.SerializeToString())


def test_watch_segments_snapshot_completes(fz: Fuzz) -> None:
    """The snapshot of a space ends with snapshot_complete (also for no
    segment), read until that message, not until a deadline."""
    # A space of its own (the fuzzed deletes may have removed the others).
    fz.stub.Produce(
        pb.ProduceRequest(
            space="fz-watch",
            writes=[
                pb.SegmentWrite(segment=f"s{i:03}", records=[pb.RecordInput(payload=b"x")])
                for i in range(30)
            ],
        )
    )
    for space, prefix, want in (
        ("fz-watch", "s00", [f"s{i:03}" for i in range(10)]),
        ("fz-watch", "", [f"s{i:03}" for i in range(30)]),
        ("fz-never-written", "", []),
        ("fz-watch", "zz", []),
    ):
        stream = fz.stub.WatchSegments(
            pb.WatchSegmentsRequest(space=space, prefix=prefix), timeout=CALL_DEADLINE
        )
        names_seen: list[str] = []
        try:
            for response in stream:
                names_seen.extend(info.name for info in response.segments)
                if response.snapshot_complete:
                    break
            else:
                pytest.fail(f"WatchSegments {space}/{prefix!r} ended without snapshot_complete")
        finally:
            stream.cancel()
        assert names_seen == want, (space, prefix, names_seen)


# -- malformed protobuf bytes -----------------------------------------------

INVALID_UTF8 = [
    b"\xff",
    b"\xc3",  # truncated 2-byte sequence
    b"a\x80b",  # lone continuation byte
    b"\xc0\xaf",  # overlong "/"
    b"\xed\xa0\x80",  # UTF-16 surrogate
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"fz-0\xfe",
]
# Field numbers of every string field, per request type: (path of sub-message
# fields, string field). Strings nested in Produce sit in SegmentWrite (2) and
# in RecordInput (2 -> 2), whose metadata entries are messages of key 1, value 2.
STRING_FIELDS: dict[str, list[int]] = {
    "Produce": [1, 3],
    "Consume": [1, 2, 5],
    "Peek": [1, 2],
    "Commit": [1, 2, 3],
    "GetOffset": [1, 2, 3],
    "ListSpaces": [2],
    "ListSegments": [1, 3],
    "Trim": [1, 2],
    "DeleteSegment": [1, 2],
    "DeleteSpace": [1],
    "ConfigureSpace": [1],
    "GetSpace": [1],
    "GetSegment": [1, 2],
    "WatchSegments": [1, 2],
}
methods = st.sampled_from(sorted(REQUEST_TYPES))


def _valid_body(method: str) -> bytes:
    """A request the server accepts, to mutate."""
    message: Message = {
        "Produce": pb.ProduceRequest(
            space="fz-0",
            writes=[pb.SegmentWrite(segment="a", records=[pb.RecordInput(payload=b"p")])],
        ),
        "Consume": pb.ConsumeRequest(space="fz-0", segment="a", from_offset=2, limit=3),
        "Peek": pb.PeekRequest(space="fz-0", segment="a"),
        "Commit": pb.CommitRequest(consumer="c", space="fz-0", segment="a", offset=1),
        "GetOffset": pb.GetOffsetRequest(consumer="c", space="fz-0"),
        "ListSpaces": pb.ListSpacesRequest(page_size=2),
        "ListSegments": pb.ListSegmentsRequest(space="fz-many", page_size=2),
        # The writes act on spaces of their own, so that the other cases keep meeting data.
        "Trim": pb.TrimRequest(space="fz-trim", segment="a", before_offset=1),
        "DeleteSegment": pb.DeleteSegmentRequest(space="fz-gone", segment="a"),
        "DeleteSpace": pb.DeleteSpaceRequest(space="fz-gone"),
        "ConfigureSpace": pb.ConfigureSpaceRequest(space="fz-configured"),
        "GetSpace": pb.GetSpaceRequest(space="fz-0"),
        "GetSegment": pb.GetSegmentRequest(space="fz-0", segment="a"),
        "WatchSegments": pb.WatchSegmentsRequest(space="fz-many", prefix="s01"),
    }[method]
    return message.SerializeToString()


def _nested_group(depth: int) -> bytes:
    """Unknown field 15 as nested groups (wire types 3 and 4), ``depth`` deep."""
    return key(15, 3) * depth + key(15, 4) * depth


@st.composite
def malformed(draw: st.DrawFn) -> tuple[str, bytes]:
    method = draw(methods)
    valid = _valid_body(method)
    kind = draw(
        st.sampled_from(
            [
                "random",
                "truncated",
                "flipped",
                "appended",
                "bad_utf8",
                "bad_utf8_nested",
                "wrong_wire_type",
                "truncated_varint",
                "overlong_varint",
                "length_past_end",
                "groups",
                "field_zero",
            ]
        )
    )
    if kind == "random":
        body = draw(st.binary(max_size=200))
    elif kind == "truncated":
        body = valid[: draw(st.integers(0, max(0, len(valid) - 1)))]
    elif kind == "flipped":
        at = draw(st.integers(0, len(valid) - 1))
        body = valid[:at] + bytes([valid[at] ^ draw(st.integers(1, 255))]) + valid[at + 1 :]
    elif kind == "appended":
        body = valid + draw(st.binary(min_size=1, max_size=20))
    elif kind == "bad_utf8":
        field = draw(st.sampled_from(STRING_FIELDS[method]))
        body = valid + bytes_field(field, draw(st.sampled_from(INVALID_UTF8)))
    elif kind == "bad_utf8_nested":
        bad = draw(st.sampled_from(INVALID_UTF8))
        where = draw(st.sampled_from(["segment", "meta_key", "meta_value", "txid"]))
        if where == "segment":
            write = bytes_field(1, bad) + bytes_field(2, bytes_field(1, b"p"))
        else:
            entry = bytes_field(1, bad) if where == "meta_key" else bytes_field(2, bad)
            write = bytes_field(1, b"a") + bytes_field(2, bytes_field(2, entry))
        body = bytes_field(1, b"fz-0") + bytes_field(2, write)
        if where == "txid":
            body = _valid_body("Produce") + bytes_field(3, bad)
        method = "Produce"
    elif kind == "wrong_wire_type":
        # A known field number with a wire type that is not its own.
        field = draw(st.integers(1, 10))
        body = valid + draw(
            st.sampled_from(
                [
                    key(field, 0) + varint(7),
                    key(field, 1) + b"\x00" * 8,
                    key(field, 2) + varint(3) + b"abc",
                    key(field, 5) + b"\x00" * 4,
                ]
            )
        )
    elif kind == "truncated_varint":
        field = draw(st.integers(1, 10))
        body = valid + key(field, 0) + b"\xff" * draw(st.integers(1, 9))
    elif kind == "overlong_varint":
        field = draw(st.integers(1, 10))
        body = valid + key(field, 0) + b"\xff" * 10 + b"\x01"
    elif kind == "length_past_end":
        field = draw(st.integers(1, 10))
        body = valid + key(field, 2) + varint(draw(st.sampled_from([5, 2**31, 2**63]))) + b"ab"
    elif kind == "groups":
        body = valid + draw(
            st.sampled_from(
                [_nested_group(3), _nested_group(200), key(15, 4), key(15, 3), key(1, 3)]
            )
        )
    else:  # field number 0 is never valid
        body = key(0, 0) + varint(1) + valid
    return method, body


@settings(SETTINGS, max_examples=1000)
@given(case=malformed())
def test_malformed_protobuf(fz: Fuzz, case: tuple[str, bytes]) -> None:
    method, body = case
    check_case(fz, method, body)


@pytest.mark.parametrize("method", sorted(REQUEST_TYPES))
@pytest.mark.parametrize("bad", INVALID_UTF8)
def test_invalid_utf8_in_every_string_field(fz: Fuzz, method: str, bad: bytes) -> None:
    """Invalid UTF-8 in any top-level string field: INVALID_ARGUMENT, nothing written."""
    for field in STRING_FIELDS[method]:
        outcome = check_case(fz, method, _valid_body(method) + bytes_field(field, bad))
        assert outcome.code is Code.INVALID_ARGUMENT, (method, field, outcome)


# -- oversize requests and the biggest accepted ones -------------------------


def _big_produce(payload_bytes: int, records: int, space: str = "fz-big") -> bytes:
    return pb.ProduceRequest(
        space=space,
        writes=[
            pb.SegmentWrite(
                segment="big", records=[pb.RecordInput(payload=b"\x01" * payload_bytes)] * records
            )
        ],
    ).SerializeToString()


OVERSIZE: dict[str, Callable[[], tuple[str, bytes]]] = {
    # 17 payloads of 1 MiB: over the 16 MiB request limit.
    "produce_17_mib": lambda: ("Produce", _big_produce(MIB, 17)),
    "produce_payload_1mib_plus_1": lambda: ("Produce", _big_produce(MIB + 1, 1)),
    "produce_10001_records": lambda: ("Produce", _big_produce(0, 10_001)),
    "produce_metadata_70000_pairs": lambda: (
        "Produce",
        pb.ProduceRequest(
            space="fz-big",
            writes=[
                pb.SegmentWrite(
                    segment="big",
                    records=[pb.RecordInput(metadata={str(i): "v" for i in range(70_000)})],
                )
            ],
        ).SerializeToString(),
    ),
    "produce_metadata_value_10_mib": lambda: (
        "Produce",
        pb.ProduceRequest(
            space="fz-big",
            writes=[
                pb.SegmentWrite(
                    segment="big", records=[pb.RecordInput(metadata={"k": "v" * MIB * 10})]
                )
            ],
        ).SerializeToString(),
    ),
    "consume_space_20_mib": lambda: ("Consume", bytes_field(1, b"x" * 20 * MIB)),
    "peek_space_16_mib_plus_1": lambda: ("Peek", bytes_field(1, b"x" * (MAX_REQUEST + 1))),
    "list_spaces_token_17_mib": lambda: ("ListSpaces", bytes_field(2, b"A" * 17 * MIB)),
    "commit_consumer_1_mib": lambda: (
        "Commit",
        pb.CommitRequest(consumer="c" * MIB, space="fz-0", offset=1).SerializeToString(),
    ),
}


@pytest.mark.parametrize("case", sorted(OVERSIZE))
def test_oversize_request(fz: Fuzz, case: str) -> None:
    method, body = OVERSIZE[case]()
    outcome = check_case(fz, method, body)
    assert outcome.code in (Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED), outcome.code


def test_largest_accepted_produce_reads_back(fz: Fuzz) -> None:
    """15 records of 1 MiB each (just under 16 MiB) are accepted and read back whole."""
    before = list_all_spaces(fz.stub).get("fz-max", 0)
    outcome = check_case(fz, "Produce", _big_produce(MIB, 15, space="fz-max"))
    assert outcome.code is Code.OK, outcome
    got = [
        r
        for response in fz.stub.Consume(pb.ConsumeRequest(space="fz-max", from_offset=before + 1))
        for r in response.records
    ]
    assert [len(r.payload) for r in got] == [MIB] * 15


@pytest.mark.parametrize("expected", [2**63 - 1, 2**63, U64_MAX])
def test_transaction_id_with_huge_expected_sequence(fz: Fuzz, expected: int) -> None:
    """Found by the fuzzer: expected_sequence is a uint64, so any value up to 2**64-1
    with a transaction_id is a plain mismatch (FAILED_PRECONDITION), never INTERNAL."""
    write = pb.SegmentWrite(segment="a", records=[pb.RecordInput(payload=b"p")])
    write.expected_sequence = expected
    request = pb.ProduceRequest(space="fz-1", writes=[write], transaction_id=f"tx-{expected}")
    outcome = check_case(fz, "Produce", request.SerializeToString())
    assert outcome.code is Code.FAILED_PRECONDITION, outcome


# -- Subscribe: streams of random messages -------------------------------------------

MAX_MAX_IN_FLIGHT = 10_000
MAX_SETTLE_POSITIONS = 20_000


def subscribe_codes(bodies: list[bytes]) -> tuple[frozenset[Code], str]:
    """The statuses the contract allows for a Subscribe stream that sends
    ``bodies`` and half-closes, with why."""
    allowed: set[Code] = set()

    def invalid(why: str) -> tuple[frozenset[Code], str]:
        return frozenset(allowed | {Code.INVALID_ARGUMENT}), why

    try:
        first = pb.SubscribeRequest.FromString(bodies[0])
    except DecodeError:
        return invalid("the first message does not decode")
    if first.WhichOneof("kind") != "join" or wrong_wire_types(first):
        return invalid("the first message is not a join")
    join = first.join
    for field, value in (("space", join.space), ("group", join.group)):
        if bad_name(value):
            return invalid(f"join.{field} {value[:20]!r}")
    if _utf8_len(join.member_name) > 255:
        return invalid("join.member_name over 255 bytes")
    if any(ch in CONTROL for ch in join.member_name):
        return invalid("join.member_name has a control character")
    if join.max_in_flight > MAX_MAX_IN_FLIGHT:
        return invalid("join.max_in_flight over 10,000")
    if (join.space, join.group) not in {(sp, g) for sp, g, _ in FUZZ_GROUPS}:
        return frozenset({Code.NOT_FOUND}), "no such group"
    for i, body in enumerate(bodies[1:], 1):
        try:
            m = pb.SubscribeRequest.FromString(body)
        except DecodeError:
            return invalid(f"message {i} does not decode")
        kind = m.WhichOneof("kind")
        if kind not in ("ack", "nack") or wrong_wire_types(m):
            return invalid(f"message {i} is {kind or 'empty'}")
        settle = m.ack if kind == "ack" else m.nack
        # Positions this member does not hold are ignored, however many (up to
        # --max-group-settle-positions per message); a reason over 4 KiB is cut.
        if len(settle.positions) > MAX_SETTLE_POSITIONS:
            return invalid(f"message {i}: over {MAX_SETTLE_POSITIONS} positions")
        if kind == "nack" and m.nack.action not in (0, 1, 2):
            return invalid(f"message {i}: nack.action {m.nack.action}")
    return frozenset(allowed | {Code.OK}), "valid"


def check_subscribe(fz: Fuzz, bodies: list[bytes]) -> Outcome:
    count("fuzz cases tried")
    count("fuzz cases tried: Subscribe")
    call = fz.channel.stream_stream(
        SERVICE + "Subscribe", request_serializer=None, response_deserializer=None
    )
    responses: list[bytes] = []
    try:
        for raw in call(iter(bodies), timeout=SUBSCRIBE_DEADLINE):
            responses.append(raw)
        outcome = Outcome(Code.OK, "", responses)
    except grpc.RpcError as err:
        outcome = Outcome(err.code(), err.details() or "", responses)
    assert fz.server.alive(), f"the server died on Subscribe {bodies!r:.300}"
    count(f"fuzz Subscribe streams ending {outcome.code.name}")
    count("fuzz Subscribe deliveries", max(0, len(outcome.responses) - 1))
    expected, why = subscribe_codes(bodies)
    where = (
        f"Subscribe {[b[:60] for b in bodies]!r:.400} -> {outcome.code.name}: "
        f"{outcome.details[:300]} (expected {sorted(c.name for c in expected)}: {why})"
    )
    assert outcome.code in expected, where
    if outcome.code is not Code.OK:
        assert outcome.details, f"an error must say what is wrong: {where}"
    parsed = [pb.SubscribeResponse.FromString(raw) for raw in responses]
    if parsed:
        assert parsed[0].WhichOneof("kind") == "joined" and parsed[0].joined.member_id, where
        space = pb.SubscribeRequest.FromString(bodies[0]).join.space
        for response in parsed[1:]:
            assert response.WhichOneof("kind") == "deliveries", where
            assert response.deliveries.deliveries, f"empty deliveries: {where}"
            for d in response.deliveries.deliveries:
                assert d.attempt >= 1 and d.record.space == space, where
    elif outcome.code is Code.OK:
        pytest.fail(f"a stream ended OK without joined: {where}")
    return outcome


join_messages = st.builds(
    pb.SubscribeJoin,
    space=st.one_of(st.sampled_from([sp for sp, _, _ in FUZZ_GROUPS]), names),
    group=st.one_of(st.sampled_from([g for _, g, _ in FUZZ_GROUPS] + ["nope"]), names),
    member_name=st.one_of(
        small_text,
        st.builds(_exact_bytes, st.sampled_from([255, 256]), st.sampled_from(MULTIBYTE)),
        st.text(alphabet=st.sampled_from(CONTROL), max_size=3),
    ),
    max_in_flight=st.one_of(
        st.sampled_from([0, 1, 2, 100, MAX_MAX_IN_FLIGHT, MAX_MAX_IN_FLIGHT + 1, U32_MAX]),
        st.integers(0, 5),
        st.integers(0, U32_MAX),
    ),
)
positions_lists = st.lists(st.one_of(u64, st.integers(1, 40)), max_size=4)
settle_messages = st.one_of(
    st.builds(lambda ps: pb.SubscribeRequest(ack=pb.SubscribeAck(positions=ps)), positions_lists),
    st.builds(
        lambda ps, action, reason: pb.SubscribeRequest(
            nack=pb.SubscribeNack(positions=ps, action=action, reason=reason)
        ),
        positions_lists,
        st.one_of(st.sampled_from([0, 1, 2, 3, -1, I32_MAX, I32_MIN]), st.integers(0, 3)),
        st.one_of(
            small_text,
            st.builds(_exact_bytes, st.sampled_from([4096, 4097]), st.sampled_from(MULTIBYTE)),
        ),
    ),
)


@st.composite
def subscribe_streams(draw: st.DrawFn) -> list[bytes]:
    """Mostly a valid join to a real group, then 0 to 5 acks and nacks; now
    and then a bad first message, a second join, an empty or undecodable
    message, or a known field with the wrong wire type."""
    if draw(st.integers(0, 2)) == 0:
        first = pb.SubscribeRequest(join=draw(join_messages))
    else:
        space, group, _ = draw(st.sampled_from(FUZZ_GROUPS))
        first = pb.SubscribeRequest(
            join=pb.SubscribeJoin(
                space=space, group=group, max_in_flight=draw(st.sampled_from([0, 1, 3]))
            )
        )
    bodies = [first.SerializeToString()]
    kind = draw(st.integers(0, 9))
    if kind == 0:
        bodies[0] = draw(
            st.sampled_from(
                [
                    b"",
                    *(
                        m.SerializeToString()
                        for m in (
                            pb.SubscribeRequest(ack=pb.SubscribeAck(positions=[1])),
                            pb.SubscribeRequest(nack=pb.SubscribeNack(positions=[1])),
                        )
                    ),
                ]
            )
        )
    elif kind == 1:
        bodies[0] = draw(st.binary(max_size=40))
    for _ in range(draw(st.integers(0, 5))):
        roll = draw(st.integers(0, 19))
        if roll == 0:
            bodies.append(bodies[0])  # a second join
        elif roll == 1:
            bodies.append(b"")  # an empty SubscribeRequest
        elif roll == 2:
            bodies.append(draw(st.binary(min_size=1, max_size=30)))
        elif roll == 3:
            # positions (field 1 of SubscribeAck) as a fixed64: a wrong wire type
            bodies.append(bytes_field(2, key(1, 1) + b"\x01" * 8))
        else:
            bodies.append(draw(settle_messages).SerializeToString())
    return bodies


@settings(SETTINGS, max_examples=150)
@given(bodies=subscribe_streams())
def test_subscribe_fuzz(fz: Fuzz, bodies: list[bytes]) -> None:
    check_subscribe(fz, bodies)


# -- the group RPCs ----------------------------------------------------------------

DAY_SECONDS = 86_400
MAX_MAX_ATTEMPTS = 1_000


def create_group_violations(m: pb.CreateGroupRequest) -> list[str]:
    """Why the contract (and issue 15's decisions) make a CreateGroup INVALID_ARGUMENT."""
    out = list(wrong_wire_types(m))
    g = m.group
    for field, value in (("group.name", g.name), ("group.space", g.space)):
        if bad_name(value) or reserved(value):
            out.append(f"{field} {value[:20]!r}")
    if g.dead_letter_space and bad_name(g.dead_letter_space):
        out.append(f"group.dead_letter_space {g.dead_letter_space[:20]!r}")
    if g.dead_letter_space == g.space:
        out.append("the dead-letter space is the group's own")
    if g.dead_letter_segment and bad_name(g.dead_letter_segment):
        out.append(f"group.dead_letter_segment {g.dead_letter_segment[:20]!r}")
    if (
        not g.dead_letter_segment
        and not bad_name(g.space)
        and not bad_name(g.name)
        and _utf8_len(f"{g.space}/{g.name}") > 255
    ):
        out.append("the default dead-letter segment is over 255 bytes")
    if g.HasField("ack_timeout"):
        t = g.ack_timeout
        if t.seconds < 0 or not 0 <= t.nanos <= 999_999_999:
            out.append("group.ack_timeout not a duration >= 0")
        elif t.seconds * 10**9 + t.nanos > DAY_SECONDS * 10**9:
            out.append("group.ack_timeout over a day")
    if g.max_attempts > MAX_MAX_ATTEMPTS:
        out.append("group.max_attempts over 1,000")
    if g.ordering not in (0, 1, 2):
        out.append(f"group.ordering {g.ordering}")
    if g.WhichOneof("start") == "from_timestamp" and not 0 <= g.from_timestamp.nanos < 10**9:
        out.append("group.from_timestamp.nanos out of range")
    return out


@st.composite
def create_group_requests(draw: st.DrawFn) -> pb.CreateGroupRequest:
    g = pb.Group(
        name=draw(st.one_of(st.sampled_from(["g", "fz-g", "fz-h"]), names)),
        space=draw(st.one_of(st.sampled_from(SEED_SPACES), names)),
        ordering=draw(st.one_of(st.integers(0, 2), st.sampled_from([3, -1, I32_MAX]))),
        max_attempts=draw(st.one_of(st.integers(0, 6), st.sampled_from([1_000, 1_001, U32_MAX]))),
        dead_letter_space=draw(st.one_of(st.just(""), st.sampled_from(["$parked", "dlq"]), names)),
        dead_letter_segment=draw(st.one_of(st.just(""), names)),
    )
    start = draw(st.sampled_from(["none", "offset", "timestamp", "end"]))
    if start == "offset":
        g.from_offset = draw(u64)
    elif start == "timestamp":
        g.from_timestamp.seconds = draw(st.integers(-(2**40), 2**40))
        g.from_timestamp.nanos = draw(
            st.one_of(st.integers(0, 999_999_999), st.integers(I32_MIN, I32_MAX))
        )
    elif start == "end":
        g.from_end = True
    if draw(st.booleans()):
        g.ack_timeout.seconds = draw(
            st.one_of(st.integers(0, 3), st.sampled_from([DAY_SECONDS, DAY_SECONDS + 1, -1]))
        )
        g.ack_timeout.nanos = draw(st.one_of(st.just(0), st.integers(I32_MIN, I32_MAX)))
    return pb.CreateGroupRequest(group=g)


@settings(SETTINGS, max_examples=150)
@given(request=create_group_requests())
def test_create_group_fuzz(fz: Fuzz, request: pb.CreateGroupRequest) -> None:
    """A CreateGroup the contract refuses is INVALID_ARGUMENT naming the field,
    and no group appears; one it takes comes back with its defaults resolved
    and GetGroup returns the same settings."""
    count("fuzz cases tried")
    count("fuzz cases tried: CreateGroup")
    g = request.group
    listed = _group_state(fz, g)
    outcome = invoke(fz.channel, "CreateGroup", request.SerializeToString(), CALL_DEADLINE)
    assert fz.server.alive(), f"the server died on CreateGroup {request}"
    where = f"CreateGroup {request} -> {outcome.code.name}: {outcome.details[:300]}"
    count(f"fuzz CreateGroup answered {outcome.code.name}")
    assert outcome.code not in (Code.UNKNOWN, Code.INTERNAL), where
    if why := create_group_violations(request):
        assert outcome.code is Code.INVALID_ARGUMENT, f"{where} (invalid because {why})"
    else:
        allowed = {Code.OK, Code.ALREADY_EXISTS, Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED}
        assert outcome.code in allowed, where
    if outcome.code is not Code.OK:
        assert outcome.details, where
        if listed is None:  # a refused create made no group
            assert _group_state(fz, g) is None, f"a refused create made a group: {where}"
        return
    made = pb.CreateGroupResponse.FromString(outcome.responses[0]).group
    assert (made.name, made.space) == (g.name, g.space), where
    assert made.ordering in (pb.ORDERING_PER_SEGMENT, pb.ORDERING_NONE), where
    assert made.max_attempts == (g.max_attempts or 5) or listed is not None, where
    assert made.ack_timeout.ToNanoseconds() > 0, where
    assert made.dead_letter_space == (g.dead_letter_space or "$parked") or listed, where
    assert made.dead_letter_segment == (g.dead_letter_segment or f"{g.space}/{g.name}") or listed, (
        where
    )
    assert _group_state(fz, g) == made, where


def _group_state(fz: Fuzz, g: pb.Group) -> pb.Group | None:
    if bad_name(g.space) or bad_name(g.name):
        return None
    try:
        return fz.stub.GetGroup(
            pb.GetGroupRequest(space=g.space, group=g.name), timeout=CALL_DEADLINE
        ).group
    except grpc.RpcError as err:
        assert err.code() in (Code.NOT_FOUND, Code.INVALID_ARGUMENT), err
        return None


@settings(SETTINGS, max_examples=100)
@given(
    method=st.sampled_from(["GetGroup", "ListGroups", "DeleteGroup"]),
    space=st.one_of(st.sampled_from(SEED_SPACES), names),
    group=st.one_of(st.sampled_from(["g", "fz-g", "nope"]), names),
    page_size=page_sizes,
    token=st.one_of(st.just(""), st.text(max_size=20)),
)
def test_group_reads_and_deletes_fuzz(
    fz: Fuzz, method: str, space: str, group: str, page_size: int, token: str
) -> None:
    """GetGroup, ListGroups and DeleteGroup with random names: bad names are
    INVALID_ARGUMENT, an unknown group NOT_FOUND (DeleteGroup is idempotent:
    OK), never INTERNAL; the fuzzer never deletes the groups Subscribe joins."""
    count("fuzz cases tried")
    count(f"fuzz cases tried: {method}")
    if method == "DeleteGroup" and (space, group) in {(sp, gr) for sp, gr, _ in FUZZ_GROUPS}:
        group = "fz-deleted"
    request: Message
    if method == "GetGroup":
        request = pb.GetGroupRequest(space=space, group=group)
    elif method == "DeleteGroup":
        request = pb.DeleteGroupRequest(space=space, group=group)
    else:
        request = pb.ListGroupsRequest(space=space, page_size=page_size, page_token=token)
    outcome = invoke(fz.channel, method, request.SerializeToString(), CALL_DEADLINE)
    assert fz.server.alive()
    where = f"{method} {request} -> {outcome.code.name}: {outcome.details[:300]}"
    assert outcome.code not in (Code.UNKNOWN, Code.INTERNAL), where
    bad = bad_name(space) or (method != "ListGroups" and bad_name(group))
    if bad or (method == "ListGroups" and page_size < 0):
        assert outcome.code is Code.INVALID_ARGUMENT, where
    elif method == "GetGroup":
        assert outcome.code in (Code.OK, Code.NOT_FOUND), where
    elif method == "DeleteGroup":
        # Deletes of reserved names are allowed (as DeleteSegment's are), or refused.
        assert (
            outcome.code in (Code.OK, Code.INVALID_ARGUMENT)
            if reserved(space)
            else (outcome.code is Code.OK)
        ), where
    else:
        # A page token the server did not issue is INVALID_ARGUMENT.
        assert outcome.code is (Code.INVALID_ARGUMENT if token else Code.OK), where
    if outcome.code is not Code.OK:
        assert outcome.details, where


def test_group_still_delivers_after_fuzzing(fz: Fuzz) -> None:
    """After the fuzzed streams, a member of each group gets a record, acks
    it, half-closes, and its stream ends OK."""
    for space, group, _ in FUZZ_GROUPS:
        fz.stub.Produce(
            pb.ProduceRequest(
                space=space, writes=[pb.SegmentWrite(segment="fz-sub", records=[pb.RecordInput()])]
            )
        )
        outbox: queue.Queue[pb.SubscribeRequest | None] = queue.Queue()
        outbox.put(pb.SubscribeRequest(join=pb.SubscribeJoin(space=space, group=group)))
        responses = fz.stub.Subscribe(iter(outbox.get, None), timeout=CALL_DEADLINE)
        assert next(responses).joined.member_id
        delivery = next(responses).deliveries.deliveries[0]
        assert delivery.record.space == space
        outbox.put(pb.SubscribeRequest(ack=pb.SubscribeAck(positions=[delivery.record.position])))
        outbox.put(None)  # half-close: the member leaves
        for response in responses:
            assert response.WhichOneof("kind") == "deliveries"


def test_server_still_serves_after_fuzzing(fz: Fuzz) -> None:
    """Runs last in the module: the process is alive and answers every RPC."""
    assert fz.server.alive()
    stub = fz.stub
    for space, group, _ in FUZZ_GROUPS:
        stub.GetGroup(pb.GetGroupRequest(space=space, group=group))
    with contextlib.suppress(grpc.RpcError):
        stub.GetOffset(pb.GetOffsetRequest(consumer="c", space="fz-0"))
    ack = stub.Produce(
        pb.ProduceRequest(
            space="fz-0", writes=[pb.SegmentWrite(segment="a", records=[pb.RecordInput()])]
        )
    )
    assert stub.Peek(pb.PeekRequest(space="fz-0", segment="a")).record.sequence == (
        ack.acks[0].last_sequence
    )
