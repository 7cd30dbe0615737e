"""Reads RocksDB's write-ahead log files and says where they stop being intact.

RocksDB's recovery modes cannot tell a write a crash cut short from damage to
a complete write (its own documentation calls *tolerate corrupted tail
records* "a heuristic mode"), and some damage it skips without a word: a
flipped length field in the last block reads as a cut, a flipped type byte as
the end of the file, seven zero bytes at a record start as padding. So the
log is read here first, byte by byte, with its checksums.

The format (LevelDB's log format): 32 KiB blocks of physical records, each a
header (masked CRC32C of type and payload, 2-byte length, 1-byte type) and a
payload that never crosses a block; a block's last bytes, too few for a
header, are padding. A write (one WriteBatch: 8-byte sequence, 4-byte count,
then its keys) is one FULL record, or FIRST, MIDDLE..., LAST fragments. A
write that starts near a block's end has a FIRST of fewer bytes than its
header (none at all 7 bytes before the end). The writes of one file number
on: each starts at the sequence where the one before it ended.

Where the log breaks, what follows the break says what it is:

- ``cut``: the file ends inside a record or a write. A crash leaves this.
- ``zeros``: from inside the broken record to the end of the file every byte
  is zero: the file grew but its last data never reached the disk, as a power
  cut can leave it.
- ``damage``: anything else, such as a complete record whose checksum fails,
  or intact records that are not the file's next write (too few bytes for a
  WriteBatch header, or a header that does not number on). A crash never
  leaves one (``kill -9`` keeps the page cache; a disk with atomic sector
  writes rarely does).

Writes that are intact after the break are found by resynchronising: byte by
byte to the end of the broken block, then at each block start (a writer
always starts a record there).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import google_crc32c

BLOCK = 32 * 1024
_HEADER = struct.Struct("<IHB")  # masked crc32c, payload length, type
_RECYCLED_EXTRA = 4  # log number after the header in recycled-file records
_BATCH_HEADER = struct.Struct("<QI")  # WriteBatch: first sequence, count of keys
_MASK_DELTA = 0xA282EAD8

_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
# Recycled log files use types 5-8 (FULL..LAST) and a longer header.
_RECYCLED = {5: _FULL, 6: _FIRST, 7: _MIDDLE, 8: _LAST}
# Records that carry no write (RocksDB's db/log_format.h): the compression type
# (9), timestamp sizes (10, 11), the previous log's last write (130, 131), and
# any other type with bit 7 set, which RocksDB skips by design.
_METADATA = frozenset((9, 10, 11, 130, 131))
_SAFE_IGNORE_BIT = 1 << 7
_LONG_HEADER = frozenset((*_RECYCLED, 11, 131))  # types whose header holds the log number
_STARTS = frozenset((_FULL, _FIRST, 5, 6))  # types that start a write

Kind = Literal["cut", "zeros", "damage"]


@dataclass(frozen=True, slots=True)
class Write:
    """One intact write: where it lies and its WriteBatch header."""

    file: Path
    start: int
    end: int
    sequence: int
    count: int

    @property
    def last_sequence(self) -> int:
        # RocksDB writes an empty batch after a point-in-time recovery: no sequence of its own.
        return self.sequence + self.count - 1


@dataclass(frozen=True, slots=True)
class Break:
    """Where the log stops being intact: bytes ``start``..``size`` of ``file``."""

    file: Path
    start: int
    size: int
    kind: Kind
    reason: str
    # The broken write's header as its bytes have it (unverified), if present.
    sequence: int | None
    count: int | None


@dataclass(frozen=True, slots=True)
class Scan:
    """What the log files hold: intact writes up to the break, and after it."""

    files: tuple[Path, ...]
    intact: int
    last_intact: Write | None
    broken: Break | None
    later: tuple[Write, ...]

    def describe_break(self) -> str:
        """The broken range and the write it held, for an operator."""
        broken = self.broken
        if broken is None:
            return "no break"
        after = self.last_intact.last_sequence if self.last_intact else None
        what = f"the write after sequence {after}" if after is not None else "a write"
        # Its header is trusted only when it numbers on from the write before it.
        if broken.sequence is not None and after is not None and broken.sequence == after + 1:
            what += f", {broken.count} keys by its header"
        return f"bytes {broken.start}-{broken.size} of {broken.file.name} ({what}): {broken.reason}"

    def describe_later(self) -> str:
        first, last = self.later[0], self.later[-1]
        files = sorted({w.file.name for w in self.later})
        return (
            f"{len(self.later)} intact writes after it (sequences {first.sequence}-"
            f"{last.last_sequence}, in {', '.join(files)})"
        )


def scan(files: Sequence[Path]) -> Scan:
    """Reads ``files`` (oldest first) and finds the first break and any intact
    write after it. Reads each file whole: the log is bounded by the memtable."""
    intact = 0
    last_found: tuple[Path, tuple[int, int, bytes]] | None = None
    broken: Break | None = None
    later: list[Write] = []
    for path in files:
        data = path.read_bytes()
        for event in _events(path, data):
            if isinstance(event, Break):
                broken = broken or event
                continue
            # Most writes only count: the header is read for the last one before the break.
            if broken is None:
                intact += 1
                last_found = path, event
            else:
                later.append(_write(path, event))
    last_intact = _write(*last_found) if last_found else None
    return Scan(tuple(files), intact, last_intact, broken, tuple(later))


@dataclass(slots=True)
class _Pending:
    """A fragmented write being assembled: where it starts, its first bytes."""

    start: int
    header: bytes


def _events(path: Path, data: bytes) -> Iterator[tuple[int, int, bytes] | Break]:
    """The intact writes of one file (start, end, header bytes) and its breaks,
    in file order."""
    size = len(data)
    pos = 0
    pending: _Pending | None = None
    # The sequence the next write must number from: RocksDB numbers the writes
    # of one log on, each from the end of the one before it.
    expected: int | None = None
    while pos < size:
        room = BLOCK - pos % BLOCK
        if room < _HEADER.size:  # padding at a block's end
            pos += room
            continue
        record = _read(data, pos, room)
        if record is None or record.bad is not None:
            start, header = (pending.start, pending.header) if pending else (pos, b"")
            if not header and record is not None:
                header = record.head(data, _BATCH_HEADER.size)
            reason = record.bad if record and record.bad else "the file ends inside a record header"
            yield _broken(path, data, start, pos, record, reason, header)
            pending, expected = None, None
            pos = _resync(data, pos)
            continue
        kind = _RECYCLED.get(record.type, record.type)
        if kind in (_FULL, _FIRST):
            if pending is not None:
                reason = "a write lost its end"
                yield _broken(path, data, pending.start, pos, record, reason, pending.header)
                expected = None
            pending = _Pending(pos, b"")
        # A MIDDLE or LAST with no FIRST before it is the rest of a write whose
        # break was already reported; other types carry no write.
        if pending is not None and kind in (_FULL, _FIRST, _MIDDLE, _LAST):
            # A write's header may start in a tiny FIRST (a write that starts
            # less than 12 bytes of payload before a block's end) and go on in
            # the next fragment: each fragment gives its own payload, never
            # the bytes after it.
            pending.header += record.head(data, _BATCH_HEADER.size - len(pending.header))
            if kind in (_FULL, _LAST):
                event, expected = _complete(path, data, pending, record.end, expected)
                yield event
                pending = None
        pos = record.end
    if pending is not None:
        reason = "the file ends inside it"
        yield _broken(path, data, pending.start, size, None, reason, pending.header)


def _complete(
    path: Path, data: bytes, write: _Pending, end: int, expected: int | None
) -> tuple[tuple[int, int, bytes] | Break, int | None]:
    """A write whose records are intact, or a break when what they hold is not
    the next write of the file (a checksum proves only that the bytes are as
    some writer wrote them); and the sequence the write after it starts at."""
    header = write.header
    if len(header) < _BATCH_HEADER.size:
        reason = (
            f"intact records holding {len(header)} bytes, too few for a write "
            f"(a WriteBatch header is {_BATCH_HEADER.size})"
        )
    else:
        sequence, count = _BATCH_HEADER.unpack(header)
        if expected is None or sequence == expected:
            return (write.start, end, header), sequence + count
        reason = (
            f"intact records whose WriteBatch header says sequence {sequence}, but the "
            f"write before it in this file ends at sequence {expected - 1}"
        )
    return Break(path, write.start, len(data), "damage", reason, *_batch(header)), None


def _resync(data: bytes, bad: int) -> int:
    """Where reading goes on after the bad record at ``bad``: the next intact
    write start in its block, else the next block (a record starts there)."""
    block_end = min(len(data), bad - bad % BLOCK + BLOCK)
    for pos in range(bad + 1, block_end - _HEADER.size + 1):
        if data[pos + 6] in _STARTS:
            record = _read(data, pos, BLOCK - pos % BLOCK)
            if record is not None and record.bad is None:
                return pos
    return block_end


@dataclass(frozen=True, slots=True)
class _Record:
    type: int
    payload: int  # offset of the payload
    end: int
    bad: str | None  # why the record is not intact
    cut: bool = False  # the file ends inside it

    def head(self, data: bytes, size: int) -> bytes:
        """Up to ``size`` first bytes of its payload (fewer if it is shorter)."""
        return data[self.payload : min(self.end, self.payload + size)]


def _read(data: bytes, pos: int, room: int) -> _Record | None:
    """The physical record at ``pos``; None when the file ends inside its header."""
    if len(data) - pos < _HEADER.size:
        return None
    masked, length, rtype = _HEADER.unpack_from(data, pos)
    header = _HEADER.size + (_RECYCLED_EXTRA if rtype in _LONG_HEADER else 0)
    end = pos + header + length
    if rtype == 0 and length == 0:
        return _Record(rtype, pos + header, end, "zero bytes where a record header should be")
    if header + length > room:
        return _Record(rtype, pos + header, end, f"a length of {length} runs past its block")
    known = (
        rtype in (_FULL, _FIRST, _MIDDLE, _LAST)
        or rtype in _RECYCLED
        or rtype in _METADATA
        or rtype & _SAFE_IGNORE_BIT
    )
    if not known:
        return _Record(rtype, pos + header, end, f"unknown record type {rtype}")
    expected = _unmask(masked)
    # The checksum covers the type byte, the log number if any, and the payload.
    if end > len(data):
        if google_crc32c.value(data[pos + 6 :]) == expected:
            return _Record(rtype, pos + header, end, "a complete record whose length is wrong")
        return _Record(rtype, pos + header, end, "the file ends inside it", cut=True)
    if google_crc32c.value(data[pos + 6 : end]) != expected:
        return _Record(rtype, pos + header, end, "its checksum does not match")
    return _Record(rtype, pos + header, end, None)


def _broken(
    path: Path,
    data: bytes,
    start: int,
    pos: int,
    record: _Record | None,
    reason: str,
    header: bytes,
) -> Break:
    """The break of the write that starts at ``start``; ``pos`` is its bad record."""
    size = len(data)
    zeros = size - len(data.rstrip(b"\0"))
    bad_end = record.end if record else size
    if record is None or record.cut:
        kind: Kind = "cut"
    elif zeros and size - zeros < min(bad_end, size):
        # Zeros from inside the bad record (or before it) to the end of the file.
        kind, reason = "zeros", f"zeros from byte {size - zeros} to the end of the file"
    else:
        kind = "damage"
    return Break(path, start, size, kind, reason, *_batch(header))


def _write(path: Path, found: tuple[int, int, bytes]) -> Write:
    start, end, header = found
    sequence, count = _batch(header)
    return Write(path, start, end, sequence or 0, count or 0)


def _batch(header: bytes) -> tuple[int | None, int | None]:
    if len(header) < _BATCH_HEADER.size:
        return None, None
    sequence, count = _BATCH_HEADER.unpack_from(header)
    return sequence, count


def _unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF
