"""Protobuf bytes that storage keeps and the service sends, built by hand where
it pays.

A stored record is a serialized ``Record`` message, built once at commit time:
the fields shared by a segment write (space, segment, timestamp, transaction
id) are serialized once, and each record appends its sequence, position and
its ``RecordInput`` body (``payload`` and ``metadata`` share field numbers
with ``Record``). Validation builds that body from the known fields only, so
nothing a producer sends can stand for a field of the server's. A
``ConsumeResponse`` is the stored records framed as its repeated field 1, so
a read never decodes or re-encodes a record. Protobuf parsers accept fields in
any order, so these bytes parse as the messages they stand for in every
language.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from streams.errors import DataLoss, InvariantViolation
from streams.model import ProduceResult, Record, SegmentAck
from streams.v1 import streams_pb2 as pb

NANOS = 1_000_000_000
_SEQUENCE_TAG = b"\x28"  # Record.sequence = 5, varint
_POSITION_TAG = b"\x30"  # Record.position = 6, varint
_RECORDS_TAG = b"\x0a"  # ConsumeResponse.records = 1, length-delimited
_SPACE_TAG = 0x1A  # Record.space = 3, length-delimited
_SEGMENT_TAG = 0x22  # Record.segment = 4, length-delimited
_U64_MAX = (1 << 64) - 1
log = logging.getLogger(__name__)


class CorruptRecord(DataLoss):
    """A stored record does not parse: the store holds bytes it never wrote."""


def _encode_varint(value: int) -> bytes:
    if not 0 <= value <= _U64_MAX:
        raise ValueError(f"varint: {value} is outside 0..2**64-1")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Varints under 2**28 are looked up, not encoded: framing runs once per record
# read, and numbering twice per record written. Values under 16 KiB (two varint
# bytes) are one entry; larger ones (sequences and positions) are their low 14
# bits as two continued bytes, then the rest (about 1 MiB for both tables).
_SHORT_VARINTS = tuple(_encode_varint(n) for n in range(1 << 14))
_CONTINUED_14_BITS = tuple(bytes((n & 0x7F | 0x80, n >> 7 | 0x80)) for n in range(1 << 14))


def varint(value: int) -> bytes:
    # Negative values fall through to _encode_varint, which refuses them.
    if 0 <= value < 1 << 14:
        return _SHORT_VARINTS[value]
    if 0 < value < 1 << 28:
        return _CONTINUED_14_BITS[value & 0x3FFF] + _SHORT_VARINTS[value >> 14]
    return _encode_varint(value)


def timestamp(ns: int) -> Timestamp:
    return Timestamp(seconds=ns // NANOS, nanos=ns % NANOS)


def timestamp_ns(ts: Timestamp) -> int:
    return ts.seconds * NANOS + ts.nanos


def record_header(space: str, segment: str, ts_ns: int, transaction_id: str) -> bytes:
    """The fields that every record of one segment write shares."""
    return pb.Record(
        space=space, segment=segment, timestamp=timestamp(ts_ns), transaction_id=transaction_id
    ).SerializeToString()


def record(header: bytes, sequence: int, position: int, body: bytes) -> bytes:
    """A serialized ``Record``: its header, numbers and ``RecordInput`` body."""
    return b"".join(
        (header, _SEQUENCE_TAG, varint(sequence), _POSITION_TAG, varint(position), body)
    )


def stored(rec: Record) -> bytes:
    """The serialized ``Record`` of a domain record (what :func:`record` builds)."""
    header = record_header(rec.space, rec.segment, rec.timestamp_ns, rec.transaction_id)
    return record(header, rec.sequence, rec.position, rec.body)


def parse_stored(raw: bytes) -> Record:
    """The domain record of bytes that :func:`record` built; its body is the
    bytes after the numbers, as they were produced. :class:`CorruptRecord` if
    the bytes were not built so."""
    try:
        msg = pb.Record.FromString(raw)
    except DecodeError as exc:
        raise CorruptRecord(f"a stored record ({len(raw)} bytes) does not parse ({exc})") from None
    ts = timestamp_ns(msg.timestamp)
    head = b"".join(
        (
            record_header(msg.space, msg.segment, ts, msg.transaction_id),
            _SEQUENCE_TAG,
            varint(msg.sequence),
            _POSITION_TAG,
            varint(msg.position),
        )
    )
    if not raw.startswith(head):
        raise CorruptRecord(f"a stored record ({len(raw)} bytes) does not start with its header")
    return Record(
        msg.space, msg.segment, msg.sequence, msg.position, ts, msg.transaction_id, raw[len(head) :]
    )


def split_framed(framed: bytes) -> list[bytes]:
    """The ``Record`` bytes of records framed as a ``ConsumeResponse``'s ``records``."""
    out = []
    at = 0
    try:
        while at < len(framed):
            if framed[at] != _RECORDS_TAG[0]:
                raise IndexError
            length, at = _read_varint(framed, at + 1)
            if at + length > len(framed):
                raise IndexError
            out.append(framed[at : at + length])
            at += length
    except IndexError:
        raise CorruptRecord(f"framed records ({len(framed)} bytes) are cut short at {at}") from None
    return out


def segment_span(buffer: bytes, start: int = 0) -> tuple[int, int]:
    """Where the segment name (UTF-8) of the stored record at ``start`` of
    ``buffer`` lies, read in place: a record leads with its header (see
    :func:`record_header`), whose fields are serialized in number order: space,
    then segment. :class:`CorruptRecord` if the bytes do not say so."""
    try:
        if buffer[start] != _SPACE_TAG:
            raise IndexError
        length, at = _read_varint(buffer, start + 1)
        at += length
        if buffer[at] != _SEGMENT_TAG:
            raise IndexError
        length, at = _read_varint(buffer, at + 1)
    except IndexError:
        raise CorruptRecord(
            f"a stored record at byte {start} does not start with its space and segment: "
            "the store is damaged"
        ) from None
    if at + length > len(buffer):
        raise CorruptRecord(
            f"a stored record at byte {start} names a segment of {length} bytes past its end: "
            "the store is damaged"
        )
    return at, at + length


def in_segments(buffer: bytes, start: int, prefix: bytes) -> bool:
    """Whether the stored record at ``start`` of ``buffer`` belongs to a segment
    whose name starts with ``prefix`` (UTF-8 bytes: a string prefix is a byte
    prefix in UTF-8)."""
    begin, end = segment_span(buffer, start)
    return end - begin >= len(prefix) and buffer.startswith(prefix, begin)


def submessages(data: bytes, number: int) -> list[bytes]:
    """The values of the length-delimited field ``number`` (a repeated
    submessage's serializations, in order) in ``data``, a message this process
    serialized: the other fields are skipped. :class:`InvariantViolation` if
    ``data`` holds a wire type protobuf does not write (groups)."""
    tag = number << 3 | 2
    out = []
    at = 0
    end = len(data)
    while at < end:
        key = data[at]
        if key & 0x80:
            key, at = _read_varint(data, at)
        else:
            at += 1
        wire = key & 7
        if wire == 2:
            length = data[at]
            if length & 0x80:
                length, at = _read_varint(data, at)
            else:
                at += 1
            if key == tag:
                out.append(data[at : at + length])
            at += length
        elif wire == 0:
            _, at = _read_varint(data, at)
        elif wire == 1 or wire == 5:
            at += 8 if wire == 1 else 4
        else:
            raise InvariantViolation(f"serialized message: wire type {wire} at byte {at}")
    if at != end:
        raise InvariantViolation(f"serialized message: {end} bytes, a field runs to {at}")
    return out


def _read_varint(buffer: bytes, at: int) -> tuple[int, int]:
    """The varint at ``at`` and the index after it; IndexError when cut short."""
    value = shift = 0
    while shift < 64:
        byte = buffer[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
    raise IndexError("varint: longer than 10 bytes")


# The largest timestamp field (seconds and nanos of 9999-12-31T23:59:59.999999999Z)
# and sequence and position fields a stored record can carry: validation bounds a
# record's stored size before the commit gives it these values.
_MAX_TIMESTAMP_FIELD_BYTES = pb.Record(
    timestamp=Timestamp(seconds=253_402_300_799, nanos=NANOS - 1)
).ByteSize()
_MAX_NUMBER_FIELDS_BYTES = pb.Record(sequence=_U64_MAX, position=_U64_MAX).ByteSize()


def record_overhead(space: str, segment: str, transaction_id: str) -> int:
    """Bytes that commit adds to a record's body, at most: its header and numbers."""
    names = pb.Record(space=space, segment=segment, transaction_id=transaction_id).ByteSize()
    return names + _MAX_TIMESTAMP_FIELD_BYTES + _MAX_NUMBER_FIELDS_BYTES


def _timestamp_reader() -> type[pb.Record]:
    """A message holding only ``Record.timestamp`` (field 7): reading a time
    skips the payload and does not depend on the record's other fields."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="streams/internal/record_timestamp.proto",
        package="streams.internal",
        syntax="proto3",
        dependency=[Timestamp.DESCRIPTOR.file.name],
    )
    proto.message_type.add(name="RecordTimestamp").field.add(
        name="timestamp",
        number=pb.Record.TIMESTAMP_FIELD_NUMBER,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        type_name=".google.protobuf.Timestamp",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(Timestamp.DESCRIPTOR.file.serialized_pb)
    pool.AddSerializedFile(proto.SerializeToString())
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("streams.internal.RecordTimestamp")
    )


_RecordTimestamp = _timestamp_reader()


def record_timestamp_ns(stored: bytes) -> int:
    """The timestamp of a stored record; :class:`CorruptRecord` if it has none."""
    try:
        return timestamp_ns(_RecordTimestamp.FromString(stored).timestamp)
    except DecodeError as exc:
        log.error("a stored record of %d bytes does not parse: %s", len(stored), exc)
        raise CorruptRecord(
            f"a stored record ({len(stored)} bytes) does not parse ({exc}): the store is damaged"
        ) from None


def framed_size(stored: bytes) -> int:
    """Bytes that one record adds to a ``ConsumeResponse``."""
    size = len(stored)
    return 1 + max(1, (size.bit_length() + 6) // 7) + size


def take(records: Iterable[bytes], max_records: int, max_bytes: int) -> list[bytes]:
    """The leading ``records`` that fit one response: at most ``max_records``, and
    at most ``max_bytes`` once framed, except that the first always goes."""
    if max_records < 1:
        raise ValueError(f"max_records: {max_records} is not positive")
    out: list[bytes] = []
    size = 0
    for stored in records:
        size += framed_size(stored)
        if out and size > max_bytes:
            break
        out.append(stored)
        if len(out) == max_records:
            break
    return out


def consume_response(records: Iterable[bytes]) -> bytes:
    """A serialized ``ConsumeResponse`` holding the stored ``records`` as they are."""
    parts: list[bytes] = []
    for stored in records:
        parts += (_RECORDS_TAG, varint(len(stored)), stored)
    return b"".join(parts)


def produce_response(result: ProduceResult) -> pb.ProduceResponse:
    return pb.ProduceResponse(
        acks=[
            pb.SegmentAck(
                segment=ack.segment,
                first_sequence=ack.first_sequence,
                last_sequence=ack.last_sequence,
            )
            for ack in result.acks
        ],
        first_position=result.first_position,
        last_position=result.last_position,
        timestamp=timestamp(result.timestamp_ns),
        duplicate=result.duplicate,
    )


def parse_produce_response(raw: bytes) -> ProduceResult:
    msg = pb.ProduceResponse.FromString(raw)
    return ProduceResult(
        acks=tuple(SegmentAck(a.segment, a.first_sequence, a.last_sequence) for a in msg.acks),
        first_position=msg.first_position,
        last_position=msg.last_position,
        timestamp_ns=timestamp_ns(msg.timestamp),
        duplicate=msg.duplicate,
    )
