"""Chunks: runs of consecutive records stored under one RocksDB key.

A segment write of N records is stored as a few chunks rather than N keys,
so a Produce costs a few RocksDB puts and a read a few iterator steps, and a
read hands whole chunks to the wire: the body of a chunk is already framed as
``ConsumeResponse.records`` (tag, length, ``Record`` bytes per record).

    u32 count | count x u32 end offset of each framed record in the body | body

All little-endian. The end offsets make any run of records one slice.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

from streams import codec
from streams.model import Record

_U32 = struct.Struct("<I")


class MalformedChunk(ValueError):
    """A stored value is not a chunk: its header or framing does not add up."""


# A chunk closes once its body passes this size (a larger record gets one of
# its own): large enough that a Produce is a few puts, small enough that a
# read starting inside a chunk wastes little.
CHUNK_BYTES = 128 * 1024


def pack(records: Sequence[bytes], max_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, bytes]]:
    """Cuts ``records`` into chunks; yields (index of the chunk's first record, value)."""
    if not records or max_bytes < 1:
        raise ValueError(f"nothing to pack: {len(records)} records, max_bytes {max_bytes}")
    start = 0
    ends: list[int] = []
    parts: list[bytes] = []
    size = 0
    varint = codec.varint
    for i, stored in enumerate(records):
        length = varint(len(stored))
        parts += (b"\x0a", length, stored)  # framed as ConsumeResponse.records
        size += 1 + len(length) + len(stored)
        ends.append(size)
        if size >= max_bytes or i == len(records) - 1:
            header = struct.pack(f"<I{len(ends)}I", len(ends), *ends)
            yield start, header + b"".join(parts)
            start, ends, parts, size = i + 1, [], [], 0


def join(parts: Sequence[tuple[Chunk, int, int]]) -> bytes:
    """One chunk of the records ``start`` to ``stop - 1`` of each ``(chunk,
    start, stop)`` in turn (a merged run, see :mod:`.merge`), copied framed."""
    ends: list[int] = []
    bodies: list[bytes] = []
    size = 0
    for chunk, start, stop in parts:
        ends += [size + end for end in chunk.ends(start, stop)]
        bodies.append(chunk.framed(start, stop))
        size = ends[-1] if ends else size
    if not ends:
        raise ValueError("nothing to join: no records")
    return struct.pack(f"<I{len(ends)}I", len(ends), *ends) + b"".join(bodies)


class Chunk:
    """A stored chunk, read without copying more than the records asked for."""

    __slots__ = ("body", "count", "value")

    def __init__(self, value: bytes) -> None:
        self.value = value
        self.count = _U32.unpack_from(value)[0] if len(value) >= 4 else 0
        self.body = 4 + 4 * self.count
        if (
            self.count < 1
            or len(value) < self.body
            or len(value) < self.body + self._end(self.count - 1)
        ):
            raise MalformedChunk(
                f"a chunk of {len(value)} bytes claims {self.count} records: at least one "
                "record and its offsets must fit"
            )

    def _end(self, index: int) -> int:
        """Body offset after record ``index`` (0-based); 0 before the first."""
        return 0 if index < 0 else _U32.unpack_from(self.value, 4 + 4 * index)[0]

    def ends(self, start: int, stop: int) -> list[int]:
        """The end of each of records ``start`` to ``stop - 1`` in the framed
        bytes of those records (:meth:`framed`)."""
        base = self._end(start - 1)
        return [self._end(index) - base for index in range(start, stop)]

    def size(self, start: int, stop: int) -> int:
        """Framed bytes of records ``start`` to ``stop - 1``."""
        return self._end(stop - 1) - self._end(start - 1)

    def framed(self, start: int, stop: int) -> bytes:
        """Records ``start`` to ``stop - 1``, framed as ConsumeResponse records."""
        return self.value[self.body + self._end(start - 1) : self.body + self._end(stop - 1)]

    def record(self, index: int) -> bytes:
        """The ``Record`` bytes of record ``index``, without their framing."""
        return self.value[self.record_start(index) : self.body + self._end(index)]

    def record_start(self, index: int) -> int:
        """Where the ``Record`` bytes of record ``index`` start in :attr:`value`."""
        at = self.body + self._end(index - 1)
        end = self.body + self._end(index)
        if not at < end or self.value[at] != 0x0A:
            raise MalformedChunk(f"record {index} of a chunk is not framed as tag, length, record")
        at += 1
        while at < end and self.value[at] & 0x80:  # the varint's continuation bytes
            at += 1
        return min(at + 1, end)

    def fit(self, start: int, stop: int, budget: int, at_least_one: bool) -> int:
        """The largest ``end`` in ``start..stop`` whose records fit ``budget`` bytes
        (``start + 1`` at least when ``at_least_one``)."""
        if self.size(start, stop) <= budget:
            return stop
        low, high = start, stop  # size(start, low) fits, size(start, high) does not
        while high - low > 1:
            middle = (low + high) // 2
            if self.size(start, middle) <= budget:
                low = middle
            else:
                high = middle
        return max(low, start + 1) if at_least_one else low


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _stored_size(framed: int) -> int:
    """The length of a ``Record`` whose framing (tag, varint length, record)
    takes ``framed`` bytes."""
    size = framed - 2
    while 1 + _varint_size(size) + size > framed:
        size -= 1
    return size


def body_sizes(chunk: Chunk, head: Record, start: int, stop: int) -> list[int]:
    """The body sizes (what :func:`streams.model.record_bytes` counts) of records
    ``start`` to ``stop - 1`` of ``chunk``, whose first record is ``head``
    (parsed): a stored record is the header its chunk shares (one segment
    write), its numbers (consecutive in a chunk) and its body."""
    sequence, position = head.sequence, head.position
    header = len(chunk.record(0)) - len(head.body) - numbers_size(sequence, position)
    ends = struct.unpack_from(f"<{chunk.count}I", chunk.value, 4)
    sizes = []
    before = ends[start - 1] if start else 0
    for index in range(start, stop):
        end = ends[index]
        sizes.append(
            _stored_size(end - before) - header - numbers_size(sequence + index, position + index)
        )
        before = end
    return sizes


def numbers_size(sequence: int, position: int) -> int:
    """Bytes the tagged sequence and position take in a stored record."""
    return 2 + _varint_size(sequence) + _varint_size(position)
