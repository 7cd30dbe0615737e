"""Migrating a data directory from on-disk format 1 to 2, once, at open.

Format 2 (see :mod:`.layout`) keeps in each catalog entry what format 1 did
not: first retained offsets, record counts, bytes and flags, and indexes the
committed offsets by target. Format 1 never removed a record, so every first
offset is 1 and counts follow from the last numbers; the bytes are counted
by reading every record once (one scan of the space copies: the cost follows
the data, once, and is logged). The offset index is built from one scan of
the offsets.

Each space's new entries are written after its segments', so a migration cut
short by a crash is run again at the next open and skips the spaces (and the
segments) that already have entries in the new form. The format version is
stamped last, fsynced, before the store serves anything.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import rocksdict

from streams import codec
from streams.storage.rocksdb import chunks
from streams.storage.rocksdb import layout as keys
from streams.storage.rocksdb.catalog import SegmentEntry, SpaceEntry
from streams.storage.rocksdb.chunks import Chunk, MalformedChunk

log = logging.getLogger(__name__)

Scan = Callable[..., Iterator[tuple[bytes, bytes]]]

# Puts per batch while migrating.
_BATCH = 10_000


class _Batches:
    """Puts in batches of a bounded size, written as they fill."""

    def __init__(self, db: rocksdict.Rdict) -> None:
        self._db = db
        self._batch = rocksdict.WriteBatch(raw_mode=True)
        self._size = 0

    def put(self, key: bytes, value: bytes) -> None:
        self._batch.put(key, value)
        self._size += 1
        if self._size >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if self._size:
            self._db.write(self._batch)
            self._batch = rocksdict.WriteBatch(raw_mode=True)
            self._size = 0


def from_v1(db: rocksdict.Rdict, scan: Scan, damaged: Callable[[str], Exception]) -> None:
    """Rewrites the catalog of a format 1 store in format 2, builds the offset
    index and stamps version 2 (see the module). ``scan(prefix, what)`` reads
    a key range (DataLoss when damaged); ``damaged(text)`` is the error for
    bytes that cannot be right."""
    started = time.perf_counter()
    log.warning("migrating the data directory from on-disk format 1 to 2: reads every record once")
    batches = _Batches(db)
    spaces = records = 0
    for key, value in scan(keys.SPACE, "the space catalog"):
        if len(value) == keys.SPACE_CATALOG.size:
            continue  # migrated before a crash cut the migration short
        if len(value) != keys.SPACE_CATALOG_V1.size:
            raise damaged(f"the catalog entry {key!r} is {len(value)} bytes, not a format 1 entry")
        name = keys.first_name(key, keys.SPACE)
        position, ts = keys.SPACE_CATALOG_V1.unpack(value)
        sizes, first_ts = _segment_bytes(scan, name, damaged)
        prefix = keys.segment_catalog_prefix(name)
        for segment_key, raw in scan(prefix, f"the segment catalog of space {name!r}"):
            if len(raw) == keys.SEGMENT_CATALOG.size:
                continue
            if len(raw) != keys.SEGMENT_CATALOG_V1.size:
                raise damaged(f"the catalog entry {segment_key!r} is {len(raw)} bytes")
            sequence, last_position, last_ts = keys.SEGMENT_CATALOG_V1.unpack(raw)
            segment = keys.first_name(segment_key, prefix)
            entry = SegmentEntry(sequence, last_position, 1, sizes.get(segment, 0), 0, last_ts)
            batches.put(segment_key, entry.pack())
        space = SpaceEntry(
            position=position,
            records=position,
            size=sum(sizes.values()),
            first_ts=first_ts,
            ts=ts,
        )
        batches.put(key, space.pack())
        spaces += 1
        records += position
    offsets = 0
    for key, _ in scan(keys.OFFSET, "the committed offsets"):
        consumer, space_name, segment = keys.split_offset_key(key)
        batches.put(keys.offset_index_key(consumer, space_name, segment), b"")
        offsets += 1
    batches.put(keys.FORMAT, keys.u64(2))
    batches.flush()
    db.flush_wal(True)
    log.warning(
        "migrated to on-disk format 2 in %.1f s: %d spaces, %d records read, %d offsets indexed",
        time.perf_counter() - started,
        spaces,
        records,
        offsets,
    )


def _segment_bytes(
    scan: Scan, space: str, damaged: Callable[[str], Exception]
) -> tuple[dict[str, int], int]:
    """The bytes of each segment of ``space`` and the first record's timestamp,
    from one scan of the space's chunks."""
    sizes: dict[str, int] = defaultdict(int)
    first_ts = 0
    for key, value in scan(keys.space_prefix(space), f"the records of space {space!r}"):
        try:
            chunk = Chunk(value)
            head = codec.parse_stored(chunk.record(0))
            sizes[head.segment] += sum(chunks.body_sizes(chunk, head, 0, chunk.count))
        except (MalformedChunk, codec.CorruptRecord) as exc:
            raise damaged(f"the chunk {key!r} of space {space!r} is malformed: {exc}") from exc
        first_ts = first_ts or head.timestamp_ns
    return sizes, first_ts
