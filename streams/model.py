"""The validated commands and results that flow between the service and storage.

Validation turns wire requests into these; a storage backend takes and returns
only these, never gRPC or protobuf objects (see :mod:`streams.storage.port`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Offsets, sequences and positions are uint64 on the wire.
MAX_OFFSET = 2**64 - 1


@dataclass(frozen=True, slots=True)
class SegmentAppend:
    """Records to append to one segment; each record is its body: the serialized
    ``RecordInput`` of its known fields (payload, metadata), nothing else."""

    segment: str
    bodies: tuple[bytes, ...]
    expected_sequence: int | None


@dataclass(frozen=True, slots=True)
class Transaction:
    """One Produce: appends to segments of one space, all or nothing."""

    space: str
    appends: tuple[SegmentAppend, ...]
    transaction_id: str
    # Digest of the appends, set when transaction_id is: tells a retry from a
    # different request reusing the id.
    fingerprint: bytes

    @property
    def record_count(self) -> int:
        return sum(len(append.bodies) for append in self.appends)


@dataclass(frozen=True, slots=True)
class SegmentAck:
    """The sequences one write of a transaction got in its segment."""

    segment: str
    first_sequence: int
    last_sequence: int


@dataclass(frozen=True, slots=True)
class ProduceResult:
    acks: tuple[SegmentAck, ...]
    first_position: int
    last_position: int
    timestamp_ns: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    """What a read or an offset is about: a segment, or (segment "") a whole space."""

    space: str
    segment: str = ""

    @property
    def is_space(self) -> bool:
        return not self.segment

    def describe(self) -> str:
        if self.is_space:
            return f"space {self.space!r}"
        return f"segment {self.segment!r} of space {self.space!r}"


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """When records of a space are removed by the background retention pass;
    0 means no limit of that kind."""

    max_age_ns: int = 0
    max_records_per_segment: int = 0
    # The space's bytes (see SpaceInfo.bytes) after a pass, at most.
    max_bytes: int = 0

    @property
    def limited(self) -> bool:
        return bool(self.max_age_ns or self.max_records_per_segment or self.max_bytes)


@dataclass(frozen=True, slots=True)
class SpaceConfig:
    """A space's stored configuration, replaced whole by ConfigureSpace.
    ``retention`` None: the server's default policy applies."""

    retention: RetentionPolicy | None = None


@dataclass(frozen=True, slots=True)
class SpaceInfo:
    """A space's numbers. ``first_position`` is the first retained position
    (``last_position + 1`` when none is retained); ``bytes`` is the sum of
    :func:`record_bytes` over its retained records; ``config`` is None until
    ConfigureSpace stores one."""

    name: str
    last_position: int
    last_timestamp_ns: int
    first_position: int
    record_count: int
    bytes: int
    config: SpaceConfig | None


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """A segment's numbers; ``first_sequence`` as SpaceInfo's first position.
    ``deleted``: DeleteSegment (or DeleteSpace) removed it and it was not
    written since (such infos appear only where a caller asks for them)."""

    name: str
    last_sequence: int
    last_position: int
    last_timestamp_ns: int
    first_sequence: int
    record_count: int
    bytes: int
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class Removed:
    """What a trim, delete or retention pass removed."""

    records: int = 0
    bytes: int = 0

    def __add__(self, other: Removed) -> Removed:
        return Removed(self.records + other.records, self.bytes + other.bytes)


def record_bytes(body: bytes) -> int:
    """A record's size as SpaceInfo/SegmentInfo ``bytes`` and ``max_bytes``
    count it: its stored body (payload and metadata, with their few bytes of
    framing), the same in every backend."""
    return len(body)


@dataclass(frozen=True, slots=True)
class Record:
    """A committed record: where it is, when and by which transaction it was
    written, and its body as it was produced (see :class:`SegmentAppend`)."""

    space: str
    segment: str
    sequence: int
    position: int
    timestamp_ns: int
    transaction_id: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Cut:
    """How much one step of a read may return, and (filtered by segment) skip."""

    max_records: int
    max_bytes: int
    max_skip_bytes: int = 0

    def __post_init__(self) -> None:
        if self.max_records < 1 or self.max_bytes < 1 or self.max_skip_bytes < 0:
            raise ValueError(
                f"max_records ({self.max_records}) and max_bytes ({self.max_bytes}) must be "
                f"positive, max_skip_bytes ({self.max_skip_bytes}) not negative"
            )


# -- consumer groups ---------------------------------------------------------


class Ordering(enum.Enum):
    """How a group orders deliveries (the wire's ``Ordering``)."""

    # Each segment belongs to one live member at a time; strictly in sequence order.
    PER_SEGMENT = "per_segment"
    # Any record to any member.
    NONE = "none"


@dataclass(frozen=True, slots=True)
class GroupStart:
    """Where a group starts: ``kind`` is "first" (value 0), "offset" (a
    position), "timestamp" (ns) or "end" (value 0). Kept as given: the
    position it resolves to is the group's first ``acked_through``."""

    kind: str = "first"
    value: int = 0


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """A consumer group's settings, defaults resolved (validation fills them
    in), so two creates with the same settings compare equal."""

    space: str
    name: str
    ordering: Ordering
    start: GroupStart
    ack_timeout_ns: int
    max_attempts: int
    dead_letter_space: str
    dead_letter_segment: str


@dataclass(frozen=True, slots=True)
class GroupProgress:
    """A group's durable progress: every position up to ``acked_through`` is
    settled (acked, parked, or never to be delivered); ``settled`` are the
    positions above it settled too, as sorted disjoint inclusive ranges
    ``(first, last)`` each starting above ``acked_through + 1``; ``parked``
    counts every record the group ever parked."""

    acked_through: int
    settled: tuple[tuple[int, int], ...] = ()
    parked: int = 0


@dataclass(frozen=True, slots=True)
class GroupState:
    config: GroupConfig
    progress: GroupProgress
