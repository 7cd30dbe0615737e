"""A tiny protobuf wire-format writer (and record reader) for hand-built attacks.

Written from the encoding spec, not from the library under test, so that the
bytes are what a hostile client can send: unknown fields of any wire type,
known fields with the wrong wire type, invalid UTF-8, deep nesting.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

VARINT, I64, LEN, SGROUP, EGROUP, I32 = range(6)
WIRE_TYPES = {"varint": VARINT, "i64": I64, "len": LEN, "group": SGROUP, "i32": I32}
MAX_FIELD_NUMBER = (1 << 29) - 1

Path = Sequence[str | int]


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, data: bytes) -> bytes:
    return tag(number, LEN) + varint(len(data)) + data


def field(number: int, wire_type: int, data: bytes = b"") -> bytes:
    """One field of ``wire_type``; ``data`` is the bytes of a LEN field or a
    group's contents (other types carry a fixed sample value)."""
    if wire_type == VARINT:
        return tag(number, VARINT) + varint((1 << 64) - 1)
    if wire_type == I64:
        return tag(number, I64) + bytes(range(1, 9))
    if wire_type == LEN:
        return length_delimited(number, data)
    if wire_type == SGROUP:
        return tag(number, SGROUP) + data + tag(number, EGROUP)
    if wire_type == I32:
        return tag(number, I32) + bytes(range(1, 5))
    raise ValueError(f"no field of wire type {wire_type}")


def wire_type_of(descriptor: FieldDescriptor) -> int:
    """The wire type a (non-packed) field is encoded with."""
    t = FieldDescriptor
    if descriptor.type in (t.TYPE_STRING, t.TYPE_BYTES, t.TYPE_MESSAGE):
        return LEN
    if descriptor.type in (t.TYPE_DOUBLE, t.TYPE_FIXED64, t.TYPE_SFIXED64):
        return I64
    if descriptor.type in (t.TYPE_FLOAT, t.TYPE_FIXED32, t.TYPE_SFIXED32):
        return I32
    return VARINT


def inject(message: Message, path: Path, extra: bytes) -> bytes:
    """``message`` serialized, with ``extra`` appended inside the sub-message at
    ``path``: field names, with an index after a repeated field and a key after
    a map field (the map entry itself); an empty path is the message itself."""
    if not path:
        return message.SerializeToString() + extra
    name, rest = str(path[0]), path[1:]
    descriptor = message.DESCRIPTOR.fields_by_name[name]
    rest_of = type(message)()
    rest_of.CopyFrom(message)
    rest_of.ClearField(name)
    parts = [rest_of.SerializeToString()]
    value = getattr(message, name)
    if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
        for key, item in value.items():
            entry = length_delimited(1, key.encode()) + length_delimited(2, item.encode())
            if key == rest[0]:
                entry += extra
            parts.append(length_delimited(descriptor.number, entry))
    elif descriptor.is_repeated:
        for index, child in enumerate(value):
            body = inject(child, rest[1:], extra) if index == rest[0] else child.SerializeToString()
            parts.append(length_delimited(descriptor.number, body))
    else:
        parts.append(length_delimited(descriptor.number, inject(value, rest, extra)))
    return b"".join(parts)


def message_paths(
    message: Message, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], Descriptor]]:
    """Every set (sub-)message of ``message``, map entries included, with its
    path (as :func:`inject` takes it) and its type, depth first."""
    yield path, message.DESCRIPTOR
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        if descriptor.message_type.GetOptions().map_entry:
            for key in value:
                yield (*path, descriptor.name, key), descriptor.message_type
        elif descriptor.is_repeated:
            for index, child in enumerate(value):
                yield from message_paths(child, (*path, descriptor.name, index))
        else:
            yield from message_paths(value, (*path, descriptor.name))


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7


def records_of(response: bytes) -> list[bytes]:
    """The stored records inside a serialized ConsumeResponse or PeekResponse
    (field 1, repeated or not), as the server sent them."""
    out = []
    at = 0
    while at < len(response):
        key, at = _read_varint(response, at)
        if key != tag(1, LEN)[0]:
            raise ValueError(f"unexpected field key {key} in a response")
        size, at = _read_varint(response, at)
        out.append(response[at : at + size])
        at += size
    return out
