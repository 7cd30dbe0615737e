"""The in-memory progress of one consumer group: what it has read and not yet settled.

Positions below the cursor are settled (durably, or never to be delivered:
trimmed, deleted, before the group's start) unless the window holds them.
``acked_through`` is the first position the window holds, minus one; the
window keeps its positions in read order (a deque) beside a dict, and drops
settled ones from the front lazily, so finding it costs O(1) amortised.

Every record held is charged to the server's :class:`~streams.memory.MemoryBudget`
(not evictable, unlike the tail's windows) from when it is read until it is
settled, and the reader pauses at each bound: unsettled records, their bytes,
and how far the cursor runs past ``acked_through`` (the group's lead).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from streams import codec
from streams.errors import InvariantViolation
from streams.memory import MemoryBudget
from streams.model import MAX_OFFSET, GroupProgress
from streams.v1 import streams_pb2 as pb

if TYPE_CHECKING:
    from streams.groups.dispatcher import Member


class State(enum.Enum):
    WAITING = "waiting"  # to be delivered (perhaps after a back-off)
    IN_FLIGHT = "in flight"  # delivered to a member, not acked
    SETTLING = "settling"  # acked or to be parked, not yet durable
    WRITING = "writing"  # in the settle write in flight


# The states as plain names: an Enum member read through its class costs
# about half a microsecond (Python 3.11), and the dispatcher reads them per record.
WAITING, IN_FLIGHT, SETTLING, WRITING = State


class Entry:
    """One record the group has read and not settled. Slots, all set here:
    an instance dict that grows as the dispatcher sets more fields costs
    more than setting them all at once."""

    __slots__ = (
        "attempt",
        "deadline",
        "holder",
        "not_before",
        "park",
        "position",
        "queued",
        "reason",
        "segment",
        "size",
        "state",
        "stored",
    )

    def __init__(self, position: int, segment: str, stored: bytes) -> None:
        self.position = position
        self.segment = segment
        self.stored = stored  # the serialized Record, as delivered
        self.size = len(stored)
        self.attempt = 0  # deliveries sent so far (see Dispatcher.sent)
        self.state = WAITING
        self.holder: Member | None = None  # the member it is delivered to
        self.deadline = 0.0  # when an unacked delivery is due again
        self.not_before = 0.0  # a retry's back-off
        self.reason = ""  # the last nack's reason
        self.park = False  # settles by parking it (SETTLING, WRITING)
        self.queued = False  # in its holder's outbox, not sent yet


def _framed_records() -> type[Message]:
    """A message of ``repeated bytes records = 1``: a ConsumeResponse's records
    as their bytes, split by protobuf's C parser (a Python loop over the
    lengths costs ten times more)."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="streams/groups/framed.proto", package="streams.groups", syntax="proto3"
    )
    proto.message_type.add(name="FramedRecords").field.add(
        name="records",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    found = pool.FindMessageTypeByName("streams.groups.FramedRecords")
    return message_factory.GetMessageClass(found)


_FramedRecords = _framed_records()


def entries_of(framed: bytes) -> list[Entry]:
    """The records of a read (framed as a ConsumeResponse's ``records``, in
    position order) as entries: their stored bytes as they are, and each
    one's segment and position.

    Protobuf parses the first and the last record; a record whose bytes
    start as the one before did (a chunk is one segment write: same space
    and segment, which stored records hold first, canonically encoded) has
    its segment, and the positions of a read with no gap are the first
    one's on. Anything else is parsed."""
    try:
        stored = _FramedRecords.FromString(framed).records  # type: ignore[attr-defined]
    except DecodeError as exc:
        raise _damaged(framed, str(exc)) from None
    if not stored:
        raise _damaged(framed, "there are none")
    first, last = _parsed(stored[0]), _parsed(stored[-1])
    position = first.position
    dense = last.position - position + 1 == len(stored)
    entries: list[Entry] = []
    append = entries.append
    head = b"\xff"  # no stored record starts so
    segment = ""
    for raw in stored:
        if not raw.startswith(head):
            segment = _parsed(raw).segment
            head = pb.Record(space=first.space, segment=segment).SerializeToString()
            if not raw.startswith(head):  # not one space, or not encoded so
                head = b"\xff"
        append(Entry(position if dense else _parsed(raw).position, segment, raw))
        position += 1
    return entries


def _parsed(stored: bytes) -> pb.Record:
    try:
        return pb.Record.FromString(stored)
    except DecodeError as exc:
        raise _damaged(stored, str(exc)) from None


def _damaged(raw: bytes, why: str) -> codec.CorruptRecord:
    return codec.CorruptRecord(
        f"stored records ({len(raw)} bytes) do not parse ({why}): the store is damaged"
    )


@dataclass(frozen=True, slots=True)
class Bounds:
    """What the group may hold read and not settled (see :mod:`streams.limits`)."""

    records: int
    bytes: int
    lead: int


@dataclass(frozen=True, slots=True)
class ReadRange:
    """The next read's bounds: positions ``first..last``, at most ``records``
    records and ``bytes`` bytes."""

    first: int
    last: int
    records: int
    bytes: int


class Window:
    """A group's read cursor, its unsettled records and its memory charge."""

    def __init__(
        self,
        progress: GroupProgress,
        bounds: Bounds,
        memory: MemoryBudget,
        peer: str,
    ) -> None:
        self.bounds = bounds
        self.cursor = progress.acked_through + 1
        self.entries: dict[int, Entry] = {}
        self.bytes = 0
        self._order: deque[int] = deque()
        # Durable settled ranges above acked_through (loaded at start): skipped, never read.
        self._skip: deque[tuple[int, int]] = deque(progress.settled)
        self._memory = memory
        self._peer = peer

    # -- reading -----------------------------------------------------------

    def next_read(self, max_records: int, max_bytes: int) -> ReadRange | None:
        """Where and how much the reader may read now; None while a bound holds
        it (it resumes once records settle)."""
        self._skip_settled()
        held = len(self.entries)
        room_records = self.bounds.records - held
        room_bytes = self.bounds.bytes - self.bytes
        last = self.acked_through() + self.bounds.lead
        if room_records < 1 or (held and room_bytes < 1) or self.cursor > last:
            return None
        if self._skip:
            last = min(last, self._skip[0][0] - 1)
        return ReadRange(
            self.cursor,
            min(last, MAX_OFFSET),
            min(room_records, max_records),
            max(1, min(room_bytes, max_bytes)),
        )

    def _skip_settled(self) -> None:
        while self._skip and self._skip[0][0] <= self.cursor:
            last = self._skip.popleft()[1]
            self.cursor = max(self.cursor, last + 1)

    def add(self, entries: Sequence[Entry], after: int) -> None:
        """Holds records just read (in position order), charging their bytes;
        the next read starts at ``after``."""
        size = large = 0
        held, order = self.entries, self._order
        fair, memory, peer = self._memory.fair_share, self._memory, self._peer
        for entry in entries:
            position = entry.position
            held[position] = entry
            order.append(position)
            size += entry.size
            if entry.size > fair:
                memory.charge(entry.size, peer)
                large += entry.size
        self.bytes += size
        self._in_pieces(memory.charge, size - large)
        if after > self.cursor:
            self.cursor = after

    # -- settling ------------------------------------------------------------

    def acked_through(self) -> int:
        """Every position up to this one is durably settled (or never to be delivered)."""
        order, held = self._order, self.entries
        while order and order[0] not in held:
            order.popleft()
        return order[0] - 1 if order else self.cursor - 1

    def through_after_writing(self) -> int:
        """What ``acked_through`` becomes once the entries being written settle."""
        held = self.entries
        for position in self._order:
            entry = held.get(position)
            if entry is not None and entry.state is not WRITING:
                return position - 1
        return self.cursor - 1

    def remove(self, entries: Iterable[Entry]) -> None:
        """Drops settled records and gives their memory back."""
        held = self.entries
        size = large = 0
        fair, memory, peer = self._memory.fair_share, self._memory, self._peer
        for entry in entries:
            if held.pop(entry.position, None) is not entry:
                raise InvariantViolation(f"group window: position {entry.position} settled twice")
            size += entry.size
            if entry.size > fair:
                memory.refund(entry.size, peer)
                large += entry.size
        self.bytes -= size
        self._in_pieces(memory.refund, size - large)
        self.acked_through()  # drops settled positions from the front now: walks stay short

    def release(self) -> None:
        """Gives back all the memory held (the dispatcher stops)."""
        self.remove(list(self.entries.values()))
        self._order.clear()

    # -- memory ----------------------------------------------------------------

    def fits(self, size: int) -> bool:
        return self._memory.fits(size, self._peer)

    async def room_for(self, size: int) -> None:
        await self._memory.room_for(size, self._peer)

    def allowance(self) -> int:
        return self._memory.allowance(self._peer)

    # The budget tells large charges (over its fair share) from small ones by
    # size, and a refund must match its charge: a record larger than the fair
    # share is charged and refunded alone, the others in pieces no larger.

    def _in_pieces(self, apply: Callable[[int, str], None], size: int) -> None:
        fair = self._memory.fair_share
        while size > 0:
            piece = min(size, fair)
            apply(piece, self._peer)
            size -= piece
