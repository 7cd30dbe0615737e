"""The wire form of consumer groups: Group and GroupInfo as CreateGroup,
GetGroup and ListGroups send them, and Subscribe's responses.

Deliveries are framed by hand around the stored record bytes (as Consume's
responses are, see :mod:`streams.codec`), so a delivery never decodes or
re-encodes a record.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import text_format
from google.protobuf.duration_pb2 import Duration

from streams import codec
from streams.model import GroupConfig, GroupProgress, Ordering
from streams.v1 import streams_pb2 as pb

_ORDERINGS = {Ordering.PER_SEGMENT: pb.ORDERING_PER_SEGMENT, Ordering.NONE: pb.ORDERING_NONE}
_DELIVERY_RECORD_TAG = b"\x0a"  # Delivery.record = 1, length-delimited
_DELIVERY_ATTEMPT_TAG = b"\x10"  # Delivery.attempt = 2, varint
_FIRST_ATTEMPT = _DELIVERY_ATTEMPT_TAG + b"\x01"
_DELIVERIES_TAG = b"\x0a"  # SubscribeDeliveries.deliveries = 1, length-delimited
_RESPONSE_DELIVERIES_TAG = b"\x12"  # SubscribeResponse.deliveries = 2, length-delimited
# SubscribeResponse's tag and the longest length varint a response can have (4 MiB: 4 bytes).
_RESPONSE_OVERHEAD = 1 + 4


def group(config: GroupConfig) -> pb.Group:
    """A stored group: defaults resolved, its start as it was given."""
    seconds, nanos = divmod(config.ack_timeout_ns, codec.NANOS)
    message = pb.Group(
        name=config.name,
        space=config.space,
        ordering=_ORDERINGS[config.ordering],
        ack_timeout=Duration(seconds=seconds, nanos=nanos),
        max_attempts=config.max_attempts,
        dead_letter_space=config.dead_letter_space,
        dead_letter_segment=config.dead_letter_segment,
    )
    start = config.start
    match start.kind:
        case "offset":
            message.from_offset = start.value
        case "timestamp":
            message.from_timestamp.CopyFrom(codec.timestamp(start.value))
        case "end":
            message.from_end = True
    return message


def differences(stored: GroupConfig, given: GroupConfig) -> str:
    """The settings of ``given`` that the ``stored`` group does not have, by
    their wire names (for ALREADY_EXISTS)."""
    old, new = group(stored), group(given)
    return "; ".join(
        f"group.{name} is {_shown(old, name)}, not {_shown(new, name)}"
        for name in pb.Group.DESCRIPTOR.fields_by_name
        if _shown(old, name) != _shown(new, name)
    )


def _shown(message: pb.Group, name: str) -> str:
    field = message.DESCRIPTOR.fields_by_name[name]
    has_presence = field.containing_oneof is not None or field.message_type is not None
    if has_presence and not message.HasField(name):
        return "unset"
    value = getattr(message, name)
    if field.message_type is not None:
        return "{" + text_format.MessageToString(value, as_one_line=True) + "}"
    if field.enum_type is not None:
        return field.enum_type.values_by_number[value].name
    return repr(value)


def durable_acked_through(progress: GroupProgress, first_retained: int) -> int:
    """The group's ``acked_through`` as its durable progress says, where no
    member works on it: positions below the space's first retained one will
    never be delivered, so they count as settled, and so do settled ranges
    that then join it."""
    through = max(progress.acked_through, first_retained - 1)
    for first, last in progress.settled:
        if first > through + 1:
            break
        through = max(through, last)
    return through


def joined(member_id: str) -> bytes:
    return pb.SubscribeResponse(joined=pb.SubscribeJoined(member_id=member_id)).SerializeToString()


def deliveries(records: Sequence[tuple[bytes, int]], max_bytes: int) -> list[bytes]:
    """Serialized ``SubscribeResponse`` messages holding the stored records
    with their attempts, in order, each at most ``max_bytes`` (one delivery
    always goes, however large). Each response is joined once: the record
    bytes are copied once, as Consume's are. The framing around a record
    depends only on its length and attempt: made once per pair in a call."""
    responses: list[bytes] = []
    parts: list[bytes] = []
    size = 0  # of the SubscribeDeliveries in ``parts``
    framing: dict[tuple[int, int], tuple[bytes, bytes, int]] = {}
    for stored, attempt in records:
        key = (len(stored), attempt)
        found = framing.get(key)
        if found is None:
            found = framing[key] = _framing(len(stored), attempt)
        head, tail, added = found
        if parts and _RESPONSE_OVERHEAD + size + added > max_bytes:
            responses.append(_response(parts, size))
            parts, size = [], 0
        parts += (head, stored, tail)
        size += added
    if parts:
        responses.append(_response(parts, size))
    return responses


def _framing(length: int, attempt: int) -> tuple[bytes, bytes, int]:
    """The bytes before and after a stored record of ``length`` bytes in its
    ``Delivery`` (and the delivery's tag and length), and the size of it all."""
    record_length = codec.varint(length)
    tail = _FIRST_ATTEMPT if attempt == 1 else _DELIVERY_ATTEMPT_TAG + codec.varint(attempt)
    delivery_size = 1 + len(record_length) + length + len(tail)
    delivery_length = codec.varint(delivery_size)
    head = _DELIVERIES_TAG + delivery_length + _DELIVERY_RECORD_TAG + record_length
    return head, tail, 1 + len(delivery_length) + delivery_size


def _response(parts: list[bytes], size: int) -> bytes:
    return b"".join((_RESPONSE_DELIVERIES_TAG, codec.varint(size), *parts))
