"""Request validation: wire requests in, validated commands out.

Every check raises :class:`~streams.errors.InvalidArgument` with a message that
names the field and the value at fault; nothing reaches storage unchecked.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.descriptor_pb2 import FieldDescriptorProto
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.unknown_fields import UnknownFieldSet

from streams import codec, limits
from streams.errors import InvalidArgument
from streams.limits import Limits
from streams.model import (
    GroupConfig,
    GroupStart,
    Ordering,
    RetentionPolicy,
    SegmentAppend,
    SpaceConfig,
    Target,
    Transaction,
)
from streams.v1 import streams_pb2 as pb

_CONTROL = re.compile("[\x00-\x1f\x7f]")
_SHOWN_CHARS = 80
# Names the server keeps for itself (such as the dead-letter space `$parked`).
RESERVED_PREFIX = "$"
_RECORDS_FIELD = pb.SegmentWrite.RECORDS_FIELD_NUMBER
_PAYLOAD_TAG = pb.RecordInput.PAYLOAD_FIELD_NUMBER << 3 | 2
_WIRE_TYPES = ("varint", "fixed64", "length-delimited", "group start", "group end", "fixed32")


def show(value: object) -> str:
    """A value as it appears in an error message, shortened when long."""
    text = repr(value)
    if len(text) > _SHOWN_CHARS:
        return f"{text[:_SHOWN_CHARS]}... ({len(text)} chars)"
    return text


def name(field: str, value: str) -> str:
    """Checks a space, segment or consumer name."""
    if not value:
        raise InvalidArgument(f"{field}: must not be empty")
    return name_prefix(field, value)


def written_name(field: str, value: str) -> str:
    """Checks a name a client writes to: a name starting with ``$`` is the
    server's (contract, "Reserved names"); reads of such names stay allowed."""
    name(field, value)
    if value.startswith(RESERVED_PREFIX):
        raise InvalidArgument(
            f"{field}: {show(value)} starts with {RESERVED_PREFIX!r}, reserved for the server"
        )
    return value


def name_prefix(field: str, value: str) -> str:
    """Checks the start of a name (empty allowed): what a name may hold, no more."""
    size = len(value.encode("utf-8"))
    if size > limits.MAX_NAME_BYTES:
        raise InvalidArgument(
            f"{field}: {show(value)} is {size} bytes, over the {limits.MAX_NAME_BYTES}-byte limit"
        )
    _no_control(field, value)
    return value


def _no_control(field: str, value: str) -> None:
    bad = _CONTROL.search(value)
    if bad:
        raise InvalidArgument(
            f"{field}: {show(value)} contains control character "
            f"U+{ord(bad.group()):04X} at index {bad.start()}"
        )


def known_fields(message: Message, field: str = "") -> None:
    """Drops ``message``'s unknown fields (its own, not its submessages'), or
    raises InvalidArgument when one has a known field's number: that field came
    with the wrong wire type (or, for a map, as a malformed entry), which the
    parser keeps as an unknown field instead of refusing, so the field would
    silently read as empty. Truly unknown numbers stay ignored, as protobuf
    wants of fields from a newer schema."""
    unknown = UnknownFieldSet(message)
    if not len(unknown):
        return
    by_number = message.DESCRIPTOR.fields_by_number
    for index in range(len(unknown)):
        item = unknown[index]
        known = by_number.get(item.field_number)
        if known is None:
            continue
        where = f"{field}.{known.name}" if field else known.name
        wire = _WIRE_TYPES[item.wire_type] if item.wire_type < len(_WIRE_TYPES) else "?"
        if known.message_type is not None and known.message_type.GetOptions().map_entry:
            raise InvalidArgument(
                f"{where}: a map entry whose key or value has the wrong wire type"
            )
        kind = FieldDescriptorProto.Type.Name(known.type).removeprefix("TYPE_").lower()  # type: ignore[arg-type]
        raise InvalidArgument(f"{where}: wrong wire type ({wire}) for a {kind} field")
    message.DiscardUnknownFields()


def target(space: str, segment: str, segment_field: str = "segment") -> Target:
    """A segment target, or a whole-space target when ``segment`` is empty."""
    return Target(name("space", space), name(segment_field, segment) if segment else "")


def transaction(request: pb.ProduceRequest, lim: Limits) -> Transaction:
    """The Produce as a transaction of record bodies ready to store.

    Drops the request's unknown fields, at every depth (see :func:`known_fields`):
    a record is stored as its known fields only, so bytes a producer adds can
    neither stand for a server field (space, sequence, timestamp...) nor make it
    unreadable, and a known field of the wrong wire type is refused.
    """
    known_fields(request)
    space = written_name("space", request.space)
    if not request.writes:
        raise InvalidArgument("writes: must hold at least one SegmentWrite")
    txid = request.transaction_id
    txid_size = len(txid.encode("utf-8"))
    if txid_size > limits.MAX_TRANSACTION_ID_BYTES:
        raise InvalidArgument(
            f"transaction_id: {show(txid)} is {txid_size} bytes, "
            f"over the {limits.MAX_TRANSACTION_ID_BYTES}-byte limit"
        )
    total = sum(len(write.records) for write in request.writes)
    if total > lim.max_records_per_produce:
        raise InvalidArgument(
            f"writes: {total} records in the request, over max_records_per_produce "
            f"({lim.max_records_per_produce})"
        )
    seen: set[str] = set()
    appends = []
    for i, write in enumerate(request.writes):
        known_fields(write, f"writes[{i}]")
        segment = written_name(f"writes[{i}].segment", write.segment)
        if segment in seen:
            raise InvalidArgument(
                f"writes[{i}].segment: {show(segment)} is named twice in one request"
            )
        seen.add(segment)
        if not write.records:
            raise InvalidArgument(f"writes[{i}].records: must hold at least one record")
        # What a record's body may weigh once commit adds its header and numbers.
        budget = lim.max_record_bytes - codec.record_overhead(space, segment, txid)
        bodies = _bodies(i, write, lim, budget)
        expected = write.expected_sequence if write.HasField("expected_sequence") else None
        appends.append(SegmentAppend(segment, bodies, expected))
    return Transaction(space, tuple(appends), txid, _fingerprint(appends) if txid else b"")


def _bodies(i: int, write: pb.SegmentWrite, lim: Limits, budget: int) -> tuple[bytes, ...]:
    """The serialized bodies of ``writes[i]``'s records, each checked (at most
    ``budget`` bytes of body).

    This runs for every record of every Produce, so the write is serialized
    once and each record's bytes are read out of it (a submessage's bytes in
    its parent are its own serialization) instead of a Python object and a
    serialization per record. A body that is one payload field within the
    limits (no metadata, no unknown field: the common case) is taken as it is;
    any other goes through :func:`_record_body`, which checks, cleans or
    refuses it.
    """
    # Deterministic, so a retry of the same request has the same fingerprint. The
    # write's bytes are a transient copy, gone before the handler's next await:
    # one write's worth at a time in the whole server.
    raw = codec.submessages(write.SerializeToString(deterministic=True), _RECORDS_FIELD)
    bodies = []
    for j, body in enumerate(raw):
        if 0 <= _payload_size(body) <= lim.max_payload_bytes and len(body) <= budget:
            bodies.append(body)
        else:
            bodies.append(_record_body(i, j, write.records[j], lim, budget))
    return tuple(bodies)


def _payload_size(body: bytes) -> int:
    """The payload's size if ``body`` (a serialized RecordInput) is its payload
    field alone, of under 16 KiB (or nothing: an empty payload), else -1."""
    size = len(body)
    if not size:
        return 0
    if size < 3 or body[0] != _PAYLOAD_TAG:
        return -1
    if body[1] < 0x80:
        return body[1] if size == 2 + body[1] else -1
    length = (body[1] & 0x7F) | body[2] << 7
    return length if body[2] < 0x80 and size == 3 + length else -1


def _record_body(i: int, j: int, record: pb.RecordInput, lim: Limits, budget: int) -> bytes:
    """The record's serialized body, once its payload, metadata and stored size
    (at most ``budget`` bytes of body) are checked."""
    # Deterministic, so a retry of the same request has the same fingerprint.
    body = record.SerializeToString(deterministic=True)
    # A body longer than its payload's field holds unknown fields (or metadata).
    if record.metadata or len(body) != _payload_field_bytes(len(record.payload)):
        known_fields(record, f"writes[{i}].records[{j}]")
        body = record.SerializeToString(deterministic=True)
    size = len(body)
    # The body holds the payload, so only a body over the limit can hide one.
    if size > lim.max_payload_bytes and len(record.payload) > lim.max_payload_bytes:
        raise InvalidArgument(
            f"writes[{i}].records[{j}].payload: {len(record.payload)} bytes, over "
            f"max_payload_bytes ({lim.max_payload_bytes})"
        )
    if record.metadata:
        _check_metadata(f"writes[{i}].records[{j}].metadata", record.metadata, lim)
    if size > budget:
        stored = size + lim.max_record_bytes - budget
        raise InvalidArgument(
            f"writes[{i}].records[{j}]: {stored} bytes once stored (payload "
            f"{len(record.payload)} bytes, {len(record.metadata)} metadata pairs, space, "
            f"segment and transaction_id), over max_record_bytes ({lim.max_record_bytes})"
        )
    return body


def _payload_field_bytes(size: int) -> int:
    """The bytes of a RecordInput.payload of ``size`` bytes on the wire (tag 1
    byte, varint length, bytes); proto3 leaves an empty one out."""
    return 1 + (size.bit_length() + 6) // 7 + size if size else 0


def _check_metadata(field: str, metadata: Mapping[str, str], lim: Limits) -> None:
    if len(metadata) > lim.max_metadata_pairs:
        raise InvalidArgument(
            f"{field}: {len(metadata)} pairs, over max_metadata_pairs ({lim.max_metadata_pairs})"
        )
    for key, value in metadata.items():
        key_size = len(key.encode("utf-8"))
        if key_size > lim.max_metadata_key_bytes:
            raise InvalidArgument(
                f"{field}: key {show(key)} is {key_size} bytes, over "
                f"max_metadata_key_bytes ({lim.max_metadata_key_bytes})"
            )
        value_size = len(value.encode("utf-8"))
        if value_size > lim.max_metadata_value_bytes:
            raise InvalidArgument(
                f"{field}[{show(key)}]: value {show(value)} is {value_size} bytes, "
                f"over max_metadata_value_bytes ({lim.max_metadata_value_bytes})"
            )


def _fingerprint(appends: list[SegmentAppend]) -> bytes:
    digest = hashlib.sha256()
    for append in appends:
        segment = append.segment.encode("utf-8")
        has_expected = append.expected_sequence is not None
        expected = append.expected_sequence or 0
        digest.update(struct.pack(">I?Q", len(segment), has_expected, expected) + segment)
        digest.update(struct.pack(">I", len(append.bodies)))
        for body in append.bodies:
            digest.update(struct.pack(">I", len(body)) + body)
    return digest.digest()


@dataclass(frozen=True, slots=True)
class ConsumeQuery:
    """A validated Consume: where it starts, where it stops, how it is cut."""

    target: Target
    start: str | None  # which field of the `start` oneof is set
    from_offset: int
    from_timestamp_ns: int
    from_consumer: str
    to_offset: int  # 0 = no bound
    limit: int  # 0 = no limit
    max_batch: int
    follow: bool
    segment_prefix: bytes = b""  # UTF-8; empty: every segment


def consume(request: pb.ConsumeRequest, lim: Limits) -> ConsumeQuery:
    known_fields(request)
    if request.HasField("from_timestamp"):
        known_fields(request.from_timestamp, "from_timestamp")
    where = target(request.space, request.segment)
    prefix = name_prefix("segment_prefix", request.segment_prefix)
    if prefix and not where.is_space:
        raise InvalidArgument(
            f"segment_prefix: {show(prefix)} filters a space read; leave it empty when "
            f"segment is set ({show(where.segment)})"
        )
    start = request.WhichOneof("start")
    consumer = name("from_consumer", request.from_consumer) if start == "from_consumer" else ""
    ts_ns = _timestamp("from_timestamp", request.from_timestamp) if start == "from_timestamp" else 0
    if request.max_batch > lim.max_batch:
        raise InvalidArgument(f"max_batch: {request.max_batch} is over the limit ({lim.max_batch})")
    return ConsumeQuery(
        target=where,
        start=start,
        from_offset=request.from_offset,
        from_timestamp_ns=ts_ns,
        from_consumer=consumer,
        to_offset=request.to_offset,
        limit=request.limit,
        max_batch=request.max_batch or lim.default_batch,
        follow=request.follow,
        segment_prefix=prefix.encode("utf-8"),
    )


def _timestamp(field: str, ts: Timestamp) -> int:
    if not 0 <= ts.nanos < codec.NANOS:
        raise InvalidArgument(f"{field}.nanos: {ts.nanos} is outside 0..999999999")
    return max(0, codec.timestamp_ns(ts))


def page_size(value: int) -> int:
    if value < 0:
        raise InvalidArgument(f"page_size: {value} is negative")
    return min(value or limits.DEFAULT_PAGE_SIZE, limits.MAX_PAGE_SIZE)


@dataclass(frozen=True, slots=True)
class TrimQuery:
    """A validated Trim: the target and where its retained records start, as
    an offset or (``before_offset`` None) as a timestamp."""

    target: Target
    before_offset: int | None
    before_timestamp_ns: int


def trim(request: pb.TrimRequest) -> TrimQuery:
    space = written_name("space", request.space)
    segment = written_name("segment", request.segment) if request.segment else ""
    match request.WhichOneof("before"):
        case "before_offset":
            return TrimQuery(Target(space, segment), request.before_offset, 0)
        case "before_timestamp":
            known_fields(request.before_timestamp, "before_timestamp")
            ts_ns = _timestamp("before_timestamp", request.before_timestamp)
            return TrimQuery(Target(space, segment), None, ts_ns)
        case _:
            raise InvalidArgument(
                "before: set before_offset or before_timestamp (the trim point is required)"
            )


def space_config(message: pb.SpaceConfig, field: str = "config") -> SpaceConfig:
    """A ConfigureSpace's config; no retention: the server's default policy."""
    known_fields(message, field)
    if not message.HasField("retention"):
        return SpaceConfig(None)
    retention = message.retention
    where = f"{field}.retention"
    known_fields(retention, where)
    max_age_ns = 0
    if retention.HasField("max_age"):
        known_fields(retention.max_age, f"{where}.max_age")
        max_age_ns = _duration(f"{where}.max_age", retention.max_age)
    return SpaceConfig(
        RetentionPolicy(max_age_ns, retention.max_records_per_segment, retention.max_bytes)
    )


def _duration(field: str, value: Duration, most: int = limits.MAX_AGE_NS) -> int:
    """A non-negative duration in nanoseconds, at most ``most``."""
    seconds, nanos = value.seconds, value.nanos
    if not 0 <= nanos < codec.NANOS:
        raise InvalidArgument(f"{field}.nanos: {nanos} is outside 0..999999999")
    if seconds < 0:
        raise InvalidArgument(f"{field}.seconds: {seconds} is negative")
    total = seconds * codec.NANOS + nanos
    if total > most:
        raise InvalidArgument(
            f"{field}: {seconds}.{nanos:09d} s is over the longest duration "
            f"({most // codec.NANOS} s)"
        )
    return total


# -- consumer groups ---------------------------------------------------------

# Defaults of a Group's zero fields (contract, "Consumer groups"), resolved at
# CreateGroup and returned, so a second create compares resolved settings.
DEFAULT_ACK_TIMEOUT_NS = 30 * codec.NANOS
MAX_ACK_TIMEOUT_NS = 24 * 3600 * codec.NANOS
# Shorter, a delivery would time out before it could reach the client, burning
# attempts it never saw.
MIN_ACK_TIMEOUT_NS = 10 * codec.NANOS // 1000
DEFAULT_MAX_ATTEMPTS = 5
MAX_MAX_ATTEMPTS = 1_000
DEFAULT_DEAD_LETTER_SPACE = "$parked"
DEFAULT_MAX_IN_FLIGHT = 100
MAX_MAX_IN_FLIGHT = 10_000
MAX_MEMBER_NAME_BYTES = 255
_ORDERINGS = {
    pb.ORDERING_UNSPECIFIED: Ordering.PER_SEGMENT,
    pb.ORDERING_PER_SEGMENT: Ordering.PER_SEGMENT,
    pb.ORDERING_NONE: Ordering.NONE,
}


def group(message: pb.Group) -> GroupConfig:
    """A CreateGroup's group, checked, with its defaults resolved."""
    known_fields(message, "group")
    space = written_name("group.space", message.space)
    group_name = written_name("group.name", message.name)
    ordering = _ORDERINGS.get(message.ordering)
    if ordering is None:
        raise InvalidArgument(f"group.ordering: {message.ordering} is not an Ordering")
    ack_timeout_ns = DEFAULT_ACK_TIMEOUT_NS
    if message.HasField("ack_timeout"):
        known_fields(message.ack_timeout, "group.ack_timeout")
        ack_timeout_ns = _duration("group.ack_timeout", message.ack_timeout, MAX_ACK_TIMEOUT_NS)
        if 0 < ack_timeout_ns < MIN_ACK_TIMEOUT_NS:
            raise InvalidArgument(
                f"group.ack_timeout: {ack_timeout_ns} ns is under the shortest "
                f"({MIN_ACK_TIMEOUT_NS // 1_000_000} ms; 0 = the default, 30 s)"
            )
        ack_timeout_ns = ack_timeout_ns or DEFAULT_ACK_TIMEOUT_NS
    if message.max_attempts > MAX_MAX_ATTEMPTS:
        raise InvalidArgument(
            f"group.max_attempts: {message.max_attempts} is over the most ({MAX_MAX_ATTEMPTS})"
        )
    # The server writes the dead letters: a `$` name is allowed there.
    dead_space = DEFAULT_DEAD_LETTER_SPACE
    if message.dead_letter_space:
        dead_space = name("group.dead_letter_space", message.dead_letter_space)
    if dead_space == space:
        raise InvalidArgument(
            f"group.dead_letter_space: {show(dead_space)} is the group's own space"
        )
    dead_segment = message.dead_letter_segment
    if dead_segment:
        name("group.dead_letter_segment", dead_segment)
    else:
        dead_segment = f"{space}/{group_name}"
        size = len(dead_segment.encode("utf-8"))
        if size > limits.MAX_NAME_BYTES:
            raise InvalidArgument(
                f"group.dead_letter_segment: the default {show(dead_segment)} "
                f"(<space>/<group>) is {size} bytes, over the {limits.MAX_NAME_BYTES}-byte "
                "limit; set group.dead_letter_segment"
            )
    return GroupConfig(
        space=space,
        name=group_name,
        ordering=ordering,
        start=_group_start(message),
        ack_timeout_ns=ack_timeout_ns,
        max_attempts=message.max_attempts or DEFAULT_MAX_ATTEMPTS,
        dead_letter_space=dead_space,
        dead_letter_segment=dead_segment,
    )


def _group_start(message: pb.Group) -> GroupStart:
    match message.WhichOneof("start"):
        case "from_offset":
            return GroupStart("offset", message.from_offset)
        case "from_timestamp":
            known_fields(message.from_timestamp, "group.from_timestamp")
            return GroupStart(
                "timestamp", _timestamp("group.from_timestamp", message.from_timestamp)
            )
        case "from_end":
            return GroupStart("end")
        case _:
            return GroupStart()


def group_ref(space: str, group_name: str) -> tuple[str, str]:
    """The space and group of GetGroup and DeleteGroup (reads of `$` names allowed)."""
    return name("space", space), name("group", group_name)


@dataclass(frozen=True, slots=True)
class Join:
    """A validated SubscribeJoin."""

    space: str
    group: str
    member_name: str
    max_in_flight: int


def join(request: pb.SubscribeRequest) -> Join:
    """Subscribe's first message: it must be a join."""
    known_fields(request)
    kind = request.WhichOneof("kind")
    if kind != "join":
        raise InvalidArgument(
            f"kind: the first SubscribeRequest must be a join, not {kind or 'empty'}"
        )
    message = request.join
    known_fields(message, "join")
    space = name("join.space", message.space)
    group_name = name("join.group", message.group)
    member = message.member_name
    size = len(member.encode("utf-8"))
    if size > MAX_MEMBER_NAME_BYTES:
        raise InvalidArgument(
            f"join.member_name: {show(member)} is {size} bytes, over the "
            f"{MAX_MEMBER_NAME_BYTES}-byte limit"
        )
    # Shown to operators (GetGroup, `streams group info`): no terminal escapes.
    _no_control("join.member_name", member)
    if message.max_in_flight > MAX_MAX_IN_FLIGHT:
        raise InvalidArgument(
            f"join.max_in_flight: {message.max_in_flight} is over the most ({MAX_MAX_IN_FLIGHT})"
        )
    return Join(space, group_name, member, message.max_in_flight or DEFAULT_MAX_IN_FLIGHT)


@dataclass(frozen=True, slots=True)
class Settle:
    """A validated ack (``nack`` False) or nack of a subscribed member."""

    positions: tuple[int, ...]
    nack: bool = False
    park: bool = False
    reason: str = ""


_NACK_ACTIONS = {
    pb.NACK_ACTION_UNSPECIFIED: False,
    pb.NACK_ACTION_RETRY: False,
    pb.NACK_ACTION_PARK: True,
}


def settle(request: pb.SubscribeRequest, lim: Limits) -> Settle:
    """A message of Subscribe after its join. Positions the member does not
    hold are the dispatcher's to ignore (the contract); only their number is
    bounded here, by ``max_group_settle_positions``, before they are copied."""
    known_fields(request)
    kind = request.WhichOneof("kind")
    if kind not in ("ack", "nack"):
        raise InvalidArgument(
            f"kind: after the join, a SubscribeRequest must be an ack or a nack, not "
            f"{kind or 'empty'}"
        )
    message = request.ack if kind == "ack" else request.nack
    known_fields(message, kind)
    count = len(message.positions)
    most = lim.max_group_settle_positions
    if count > most:
        raise InvalidArgument(
            f"{kind}.positions: {count} positions, over max_group_settle_positions ({most}); "
            "a member holds at most its max_in_flight records: settle them in smaller messages"
        )
    positions = tuple(message.positions)
    if kind == "ack":
        return Settle(positions)
    nack = request.nack
    park = _NACK_ACTIONS.get(nack.action)
    if park is None:
        raise InvalidArgument(f"nack.action: {nack.action} is not a NackAction")
    return Settle(positions, nack=True, park=park, reason=_cut(nack.reason, lim))


def _cut(reason: str, lim: Limits) -> str:
    """A nack reason within ``max_metadata_value_bytes`` (it becomes a parked
    record's metadata value): cut there, on a character boundary, rather than
    refused. It is free text (often an exception's), and refusing it would end
    the member's stream over one record, which would then never be parked."""
    most = lim.max_metadata_value_bytes
    if len(reason) * 4 <= most:  # at most 4 bytes a character: no need to encode
        return reason
    encoded = reason.encode("utf-8")
    if len(encoded) <= most:
        return reason
    # The bytes are valid UTF-8: "ignore" drops only a character the cut split.
    return encoded[:most].decode("utf-8", "ignore")
