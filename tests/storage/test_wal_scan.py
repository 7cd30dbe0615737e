"""The write-ahead log scan (streams/storage/rocksdb/wal.py) reads every write
RocksDB wrote with its own WriteBatch header, however its fragments fall on
the 32 KiB blocks; records that pass their checksum but hold no write of the
log are damage, never writes; record types RocksDB skips are skipped.

Most logs here are crafted byte by byte (a record writer as RocksDB's
db/log_writer.cc fragments, with its masked CRC32C), so that a write lands
exactly where a case needs it; one case has RocksDB itself write the log."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import google_crc32c
import pytest
import rocksdict

from streams import codec
from streams.errors import DataLoss
from streams.storage.rocksdb import recovery, wal

BLOCK = wal.BLOCK
HEADER = 7  # checksum, length, type
LONG_HEADER = HEADER + 4  # and the log number, in records of recycled logs
BATCH_HEADER = 12  # WriteBatch: sequence (8 bytes), count (4)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
MEMTABLE = 64 << 20


def masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def batch(sequence: int, count: int, body_size: int = 40) -> bytes:
    """A WriteBatch's header and ``body_size`` bytes (the scan reads only the header)."""
    return struct.pack("<QI", sequence, count) + bytes(i % 251 for i in range(body_size))


def put_batch(sequence: int, key: bytes, value: bytes) -> bytes:
    """A WriteBatch RocksDB can replay: one Put in the default column family."""
    put = b"\x01" + codec.varint(len(key)) + key + codec.varint(len(value)) + value
    return struct.pack("<QI", sequence, 1) + put


class Log:
    """A log file's bytes, written as RocksDB's log writer writes them."""

    def __init__(self) -> None:
        self.data = bytearray()

    def record(self, rtype: int, payload: bytes, log_number: int | None = None) -> int:
        """One physical record where the file ends; returns its offset."""
        at = len(self.data)
        checked = bytes([rtype]) + (b"" if log_number is None else struct.pack("<I", log_number))
        checked += payload
        self.data += struct.pack("<IH", masked_crc(checked), len(payload)) + checked
        return at

    def write(self, payload: bytes) -> int:
        """One write, fragmented at block ends (padding a block's last bytes
        when too few for a header); returns the offset where it starts."""
        start = None
        left = memoryview(payload)
        first = True
        while True:
            room = BLOCK - len(self.data) % BLOCK
            if room < HEADER:
                self.data += bytes(room)
                room = BLOCK
            piece = left[: room - HEADER]
            left = left[len(piece) :]
            rtype = (FULL if not left else FIRST) if first else (LAST if not left else MIDDLE)
            at = self.record(rtype, bytes(piece))
            start = at if start is None else start
            first = False
            if not left:
                return start

    def fill_to(self, offset: int, sequence: int) -> None:
        """One write (sequence, 1 key) that ends exactly at ``offset`` in this block."""
        size = offset - len(self.data) - HEADER
        assert size >= BATCH_HEADER and offset // BLOCK == len(self.data) // BLOCK
        self.write(batch(sequence, 1, size - BATCH_HEADER))
        assert len(self.data) == offset

    def save(self, path: Path) -> Path:
        path.write_bytes(bytes(self.data))
        return path


@pytest.mark.parametrize("first_bytes", range(BATCH_HEADER + 1))
def test_a_write_whose_first_fragment_is_shorter_than_its_header_is_read_whole(
    tmp_path: Path, first_bytes: int
) -> None:
    """A write that starts less than 12 payload bytes before a block's end: its
    FIRST fragment holds part of the header (or none), the rest is in the next
    block after that record's own header. On the old code the header was read
    on across the block end, taking the next record's checksum, length and type
    for the sequence (0x04... with a LAST): the power-loss CI failure."""
    log = Log()
    log.fill_to(BLOCK - HEADER - first_bytes, sequence=1)
    start = log.write(batch(2, 3, 300))
    assert start == BLOCK - HEADER - first_bytes
    log.write(batch(5, 2))
    found = wal.scan([log.save(tmp_path / "000004.log")])
    assert found.broken is None and found.intact == 3
    assert found.last_intact is not None and found.last_intact.sequence == 5

    # The same write as the last one of the log: its header gives the last sequence.
    log = Log()
    log.fill_to(BLOCK - HEADER - first_bytes, sequence=1)
    log.write(batch(2, 3, 300))
    found = wal.scan([log.save(tmp_path / "000004.log")])
    assert found.broken is None and found.last_intact is not None
    assert (found.last_intact.start, found.last_intact.sequence) == (start, 2)
    assert found.last_intact.last_sequence == 4


def rocksdb_log_with_last_write_at(path: Path, offset: int) -> tuple[Path, int]:
    """RocksDB's own log, its last write starting at ``offset`` of the first
    block; the crash image of the open store (every write fsynced) and the
    last sequence it holds."""
    store = path / "db"
    opened = recovery.open_db(store, MEMTABLE)
    db = opened.db
    (log,) = recovery.log_files(store)

    def size() -> int:
        db.flush_wal(True)
        return log.stat().st_size

    while size() < offset - 500:
        db.put(b"k", b"v" * 200)
    # One FULL record: its header, the batch's, a Put's tag, key length, key, value length.
    left = offset - size() - (HEADER + BATCH_HEADER + 3)
    db.put(b"k", b"v" * (left - len(codec.varint(left - 2))))
    assert size() == offset
    db.put(b"last", b"w" * 300)
    size()
    latest = db.latest_sequence_number()
    image = path / "image"
    shutil.copytree(store, image)
    db.close()
    return image, latest


@pytest.mark.parametrize("room", [HEADER, HEADER + 1, HEADER + BATCH_HEADER])
def test_rocksdb_log_whose_last_write_starts_at_a_block_end_opens(
    tmp_path: Path, room: int
) -> None:
    """RocksDB's log with its last write starting ``room`` bytes before the end
    of a block (a FIRST fragment of 0, 1 or 12 bytes). On the old code the
    first two refused to open: "RocksDB recovered ... up to sequence N, but it
    holds intact writes up to 288..." (a healthy log, every write recovered)."""
    image, latest = rocksdb_log_with_last_write_at(tmp_path, BLOCK - room)
    found = wal.scan(recovery.log_files(image))
    assert found.broken is None and found.last_intact is not None
    assert (found.last_intact.start, found.last_intact.last_sequence) == (BLOCK - room, latest)
    opened = recovery.open_db(image, MEMTABLE)
    try:
        assert opened.db.latest_sequence_number() == latest
        assert opened.db[b"last"] == b"w" * 300
    finally:
        opened.db.close()


def test_intact_records_that_hold_no_next_write_are_damage(tmp_path: Path) -> None:
    """Records whose checksums pass but whose bytes are not the next write of
    the log (a header that does not number on, or too few bytes for one) are
    a break, never the log's last write: the old code took their bytes for a
    write's sequence."""
    path = tmp_path / "000004.log"
    log = Log()
    log.write(batch(1, 2))
    log.write(batch(3, 1))
    stray = log.write(batch(99, 1))
    found = wal.scan([log.save(path)])
    assert found.intact == 2 and found.last_intact is not None
    assert found.last_intact.last_sequence == 3
    assert found.broken is not None and found.broken.kind == "damage"
    assert found.broken.start == stray and not found.later
    assert "sequence 99" in found.broken.reason and "ends at sequence 3" in found.broken.reason

    # In the middle of the log: the writes after it are intact writes after a break.
    log.write(batch(100, 1))
    found = wal.scan([log.save(path)])
    assert found.broken is not None and found.broken.start == stray
    assert [w.sequence for w in found.later] == [100]

    # Too short for a WriteBatch header.
    log = Log()
    log.write(batch(1, 2))
    short = log.write(b"\x03\x00\x00\x00\x00")
    found = wal.scan([log.save(path)])
    assert found.intact == 1 and found.broken is not None and found.broken.kind == "damage"
    assert found.broken.start == short and "5 bytes, too few" in found.broken.reason


def test_a_last_write_that_does_not_number_on_is_refused(tmp_path: Path) -> None:
    """A last write whose records are intact but whose sequence does not number
    on from the write before it (no RocksDB writer leaves one) is judged as
    damage to the last write: refused, naming the file, the bytes and why. The
    old code let RocksDB replay it, moving the store's sequence 1000 ahead."""
    image, latest = rocksdb_log_with_last_write_at(tmp_path, 4096)
    (path,) = recovery.log_files(image)
    log = Log()
    log.data = bytearray(path.read_bytes())
    stray = log.write(put_batch(latest + 1000, b"stray", b"s" * 30))
    log.save(path)
    with pytest.raises(DataLoss) as caught:
        recovery.open_db(image, MEMTABLE)
    message = str(caught.value)
    assert f"damaged last write: bytes {stray}-{stray + HEADER + 50} of {path.name}" in message
    assert f"header says sequence {latest + 1000}" in message, message


@pytest.mark.parametrize(
    ("rtype", "log_number"),
    [(130, None), (131, 7), (200, None)],
    ids=["predecessor-wal-info", "recyclable-predecessor-wal-info", "bit-7-set"],
)
def test_record_types_rocksdb_skips_are_skipped(
    tmp_path: Path, rtype: int, log_number: int | None
) -> None:
    """Types with bit 7 set (RocksDB's kRecordTypeSafeIgnoreMask, 1 << 7), such
    as the previous log's last write (130; 131 with a recycled log's longer
    header), hold no write. The old code took bit 5 for that mask, so it read
    130 as an unknown type and refused a healthy log."""
    log = Log()
    log.write(batch(1, 1))
    log.record(rtype, b"\x01\x02\x03\x04\x05\x06\x07\x08", log_number)
    log.write(batch(2, 3))
    found = wal.scan([log.save(tmp_path / "000004.log")])
    assert found.broken is None and found.intact == 2
    assert found.last_intact is not None and found.last_intact.last_sequence == 4


@pytest.mark.parametrize("rtype", [12, 33, 34])
def test_unknown_record_types_are_damage(tmp_path: Path, rtype: int) -> None:
    """A type RocksDB does not know and may not skip (bit 7 clear) is damage,
    even with a checksum that matches. The old code skipped 33 and 34 (bit 5)."""
    log = Log()
    log.write(batch(1, 1))
    at = log.record(rtype, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    log.write(batch(2, 3))
    found = wal.scan([log.save(tmp_path / "000004.log")])
    assert found.broken is not None and found.broken.kind == "damage"
    assert found.broken.start == at and f"unknown record type {rtype}" in found.broken.reason
    assert [w.sequence for w in found.later] == [2]


def test_crafted_log_reads_as_rocksdb_reads_it(tmp_path: Path) -> None:
    """The record writer of these tests writes what RocksDB reads: RocksDB
    replays a crafted log of fragmented writes (so the cases above are logs
    RocksDB would write)."""
    image, latest = rocksdb_log_with_last_write_at(tmp_path, 1000)
    (path,) = recovery.log_files(image)
    log = Log()
    log.data = bytearray(path.read_bytes())
    value = b"c" * 40_000  # over two blocks: FIRST, MIDDLE, LAST
    log.write(put_batch(latest + 1, b"crafted", value))
    log.save(path)
    found = wal.scan([path])
    assert found.broken is None and found.last_intact is not None
    assert found.last_intact.last_sequence == latest + 1
    db = rocksdict.Rdict(str(image), rocksdict.Options(raw_mode=True))
    try:
        assert db.latest_sequence_number() == latest + 1
        assert db[b"crafted"] == value
    finally:
        db.close()
