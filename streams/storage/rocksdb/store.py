"""The RocksDB engine's store: a :class:`~streams.storage.port.Store` on
RocksDB through rocksdict, one process.

Layout (see :mod:`.layout`): records are stored in chunks (see
:mod:`.chunks`), each chunk twice, under its segment key and
under its space key, so a segment read and a space read are each one bounded
forward scan that slices stored, already framed bytes onto the wire. A
catalog entry per segment and per space holds its last numbers; they are read
when first used and cached within a bound (:mod:`streams.storage.rocksdb.catalog`), so
start-up reads neither the records nor the catalog, and memory does not grow
with the number of segments.

Writes run on the event loop thread, one at a time, with no await between
checking the state and writing the batch: that is the one ordered write path,
so sequences and positions are never shared or skipped. The batch goes to
RocksDB with sync off; :class:`GroupCommit` then fsyncs the WAL off the loop
and the writer is acked. Only then do readers see the records: every read is
capped at the durable watermark, as Kafka caps reads at its high watermark.

Removals (trim, deletes, retention) move first offsets in the catalog, in
slices, and delete the chunks below them afterwards; see "removals" below
and :mod:`.reclaim` for how the disk comes back.

Records are stored as they go to the wire (serialized ``Record`` messages,
numbers included, framed as a ``ConsumeResponse``'s ``records``), so a read
hands stored bytes to the service as a :class:`FramedBatch` without decoding
them: this engine's own optimisation, which the port does not require.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import rocksdict

from streams import codec, startup
from streams.config import OptionError
from streams.errors import DataLoss, InvariantViolation, ResourceExhausted, Unavailable
from streams.memory import MemoryBudget
from streams.model import (
    Cut,
    GroupConfig,
    GroupState,
    ProduceResult,
    Record,
    Removed,
    RetentionPolicy,
    SegmentAck,
    SegmentInfo,
    SpaceConfig,
    SpaceInfo,
    Target,
    Transaction,
    record_bytes,
)
from streams.storage import groups, port
from streams.storage.backend import DEFAULT_DEDUPE_WINDOW_NS, Setup
from streams.storage.batches import EMPTY, FramedBatch
from streams.storage.port import BackgroundTask, DiskUsage
from streams.storage.rocksdb import chunks, migrate, recovery
from streams.storage.rocksdb import layout as keys
from streams.storage.rocksdb.catalog import (
    Catalog,
    SegmentEntry,
    SegmentState,
    SpaceEntry,
    SpaceState,
)
from streams.storage.rocksdb.chunks import Chunk, MalformedChunk
from streams.storage.rocksdb.durable_mark import DurableMark
from streams.storage.rocksdb.group_commit import GroupCommit, SyncAborted
from streams.storage.rocksdb.groups import Collector, GroupHead, pack_settled, unpack_settled
from streams.storage.rocksdb.layout import CONFIGURED, DEDUPE_HEAD, DELETED
from streams.storage.rocksdb.merge import Merges
from streams.storage.rocksdb.reclaim import Reclaim
from streams.storage.rocksdb.retention import Appended
from streams.storage.tail import WINDOW_BYTES, WINDOW_RECORDS, Subscription, Tail
from streams.storage.watches import MAX_CHANGE_BYTES, Watch

log = logging.getLogger(__name__)

# After a full disk, reopening writable is retried no sooner than this, the
# wait doubling while the disk stays full up to the cap.
_REOPEN_FIRST_WAIT = 0.5
_REOPEN_MAX_WAIT = 5.0
# A read of a space skips about this many bytes of records their segments
# removed at most, then returns what it has (maybe nothing) and where to go on.
_HOLE_SKIP = 4 * 1024 * 1024
# Spaces looked at per scan of the catalog during a retention pass.
_RETENTION_PAGE = 1000
# Segments whose chunks one batch of a space delete's range deletes covers,
# when the space was written to again before them.
_SEGMENT_PAGE = 1000


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """How the store trades durability and keeps dedupe entries.

    ``sync=False`` acks once the batch is in the WAL in the OS page cache:
    records survive a crash of the server process, not of the machine.
    """

    sync: bool = True
    dedupe_window_ns: int = DEFAULT_DEDUPE_WINDOW_NS
    # Expired dedupe entries are deleted every this many seconds, at most this
    # many per step (steps follow each other, letting calls run between them).
    dedupe_sweep_seconds: float = 60.0
    dedupe_sweep_limit: int = 10_000
    # In-memory window of the latest records of each followed space or
    # segment: followers read these without touching RocksDB. All windows
    # together stay within `memory`, the server's budget.
    tail_window_records: int = WINDOW_RECORDS
    tail_window_bytes: int = WINDOW_BYTES
    memory: MemoryBudget = field(default_factory=MemoryBudget)
    # Followers are woken at most once per this many seconds (see Tail).
    follow_linger: float = 0.0
    # What a watch of a space's segments remembers (see streams.storage.watches).
    watch_change_bytes: int = MAX_CHANGE_BYTES
    clock: Callable[[], int] = field(default=time.time_ns)
    # Called with each WAL fsync's duration in seconds (metrics).
    on_fsync: Callable[[float], None] | None = None
    # RocksDB's memtable size. It bounds the write-ahead log too, so recovery
    # (after a crash, or once a full disk has room again) replays at most
    # about this much and needs about this much free space.
    memtable_bytes: int = 16 * 1024 * 1024
    # A damaged last write in the WAL (see streams.storage.rocksdb.recovery): "refuse"
    # to open, or "drop" it and open.
    wal_tail_damage: str = "refuse"
    # Memory for the numbers of recently used spaces and segments (see
    # streams.storage.rocksdb.catalog); the others are read from disk when used.
    catalog_cache_bytes: int = 64 * 1024 * 1024
    # A removal is applied in slices of at most this many records and bytes,
    # each durable on its own, letting writes run between them.
    removal_slice_records: int = 5_000
    removal_slice_bytes: int = 8 * 1024 * 1024
    # ... and of at most this many chunks: each costs a parse and a catalog
    # look-up, so records written one per transaction (one chunk each) make
    # slices short in time too.
    removal_slice_chunks: int = 32
    # How often the chunks of removed records are compacted away (see reclaim).
    reclaim_seconds: float = 5.0
    # A consumer group's settled-position keys at or below its acked_through
    # are deleted by a settle at most this often, or once this many were
    # written since (see .groups.Collector).
    group_collect_seconds: float = 5.0
    group_collect_keys: int = 10_000
    # Runs of small chunks of a space are copied into one chunk each (see
    # .merge) every this many seconds: chunks under merge_small_bytes (0: no
    # chunk is small, nothing is merged), into runs of about merge_run_bytes,
    # once a run has merge_min_chunks chunks; a step looks at
    # merge_step_chunks chunks and merge_step_runs runs' worth of bytes at most
    # (a few ms of the event loop, like a removal slice: large chunks between
    # small ones are read to be passed), letting calls run between steps.
    merge_seconds: float = 1.0
    merge_small_bytes: int = 8 * 1024
    merge_run_bytes: int = 64 * 1024
    merge_min_chunks: int = 16
    merge_step_chunks: int = 512
    merge_step_runs: int = 4
    # Targets noted for the next pass, and targets whose merge position is
    # remembered (see .merge.Merges): bounds on the bookkeeping's memory.
    merge_due_targets: int = 1024
    merge_cursors: int = 4096

    def __post_init__(self) -> None:
        if self.wal_tail_damage not in recovery.TAIL_DAMAGE:
            raise ValueError(
                f"wal_tail_damage must be one of {recovery.TAIL_DAMAGE}, "
                f"got {self.wal_tail_damage!r}"
            )
        if self.group_collect_seconds < 0:
            raise ValueError(
                f"group_collect_seconds must not be negative, got {self.group_collect_seconds}"
            )
        if self.merge_small_bytes < 0:
            raise ValueError(
                f"merge_small_bytes must not be negative, got {self.merge_small_bytes}"
            )
        if self.merge_seconds <= 0:
            raise ValueError(f"merge_seconds must be positive, got {self.merge_seconds}")
        if not 2 <= self.merge_min_chunks <= self.merge_step_chunks:
            # A step must be able to hold a whole run, or a pass never moves on.
            raise ValueError(
                f"merge_min_chunks ({self.merge_min_chunks}) must be 2 or more and at most "
                f"merge_step_chunks ({self.merge_step_chunks})"
            )
        if self.dedupe_window_ns < 1 or self.dedupe_sweep_seconds <= 0:
            raise ValueError(
                f"dedupe_window_ns ({self.dedupe_window_ns}) and dedupe_sweep_seconds "
                f"({self.dedupe_sweep_seconds}) must be positive"
            )
        for name in (
            "dedupe_sweep_limit",
            "tail_window_records",
            "tail_window_bytes",
            "memtable_bytes",
            "catalog_cache_bytes",
            "removal_slice_records",
            "removal_slice_bytes",
            "removal_slice_chunks",
            "group_collect_keys",
            "merge_run_bytes",
            "merge_min_chunks",
            "merge_step_chunks",
            "merge_step_runs",
            "merge_due_targets",
            "merge_cursors",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(slots=True)
class _Plan:
    """One slice of a removal: its first batch, the entries it moves, and the
    segment chunks it removed wholly that its second batch deletes one by one
    (a space trim's: see :meth:`RocksStore._in_slices`)."""

    batch: rocksdict.WriteBatch
    space: SpaceState
    space_entry: SpaceEntry
    segments: dict[str, tuple[SegmentState, SegmentEntry]]
    removed: Removed
    chunks: list[bytes] | None = None  # None: a range per segment instead


@dataclass(slots=True)
class EngineStats:
    """Counts for tests and benchmarks: chunks read (any read or removal),
    removal slices applied, range deletes written, merged runs written and
    read."""

    chunk_reads: int = 0
    removal_slices: int = 0
    range_deletes: int = 0
    merged_runs: int = 0
    merged_reads: int = 0


def _nothing() -> None:
    """What a write that changes no segment tells the tail."""


@dataclass(slots=True)
class _Pending:
    """A write (a transaction, a removal, a config), published to readers once
    durable: the catalog entries it wrote become the durable ones, then the
    tail is told (``announce``)."""

    ticket: int
    space: SpaceState
    space_entry: SpaceEntry
    segments: list[tuple[SegmentState, SegmentEntry]]
    announce: Callable[[], None]


class RocksStore:
    """The RocksDB-backed :class:`~streams.storage.port.Store`.

    Example::

        store = RocksStore.open(Path("data"), StoreOptions())
        result = await store.produce(txn)
        batch, after = await store.read(Target("orders", "eu"), 1, 100, Cut(100, 4 << 20))
        await store.close()
    """

    def __init__(
        self, path: Path, db: rocksdict.Rdict, options: StoreOptions, read_only: str | None = None
    ) -> None:
        self._path = path
        self._db = db
        # What recovery dropped from the WAL at the last open (a torn or damaged
        # last write), for the operator; None when it dropped nothing.
        self.recovery_dropped: str | None = None
        self._options = options
        # How far the WAL is durable, for telling a torn tail from damage after a crash.
        self._mark = self._durable_mark() if read_only is None else None
        # Why writes are refused for lack of space (a write failed, or the store
        # was opened read-only): RocksDB then refuses every write until the
        # database is reopened, which is retried with back-off (see _resume_writes).
        self._disk_full: str | None = read_only
        self._db_open = True
        self._next_reopen = 0.0
        self._reopen_wait = _REOPEN_FIRST_WAIT
        # The last write that failed for another reason; cleared by a write that works.
        self._write_failure: str | None = None
        self._write_options = rocksdict.WriteOptions()
        self._write_options.sync = False  # the group commit fsyncs the WAL
        self._catalog = Catalog(
            options.catalog_cache_bytes,
            self._get,
            lambda text: self._data_loss(f"{text} (data directory {self._path})"),
        )
        self._pending: list[_Pending] = []
        self._tail = Tail(
            options.tail_window_records,
            options.tail_window_bytes,
            options.follow_linger,
            options.memory,
            options.watch_change_bytes,
        )
        self._group = GroupCommit(
            self._sync_wal if options.sync else None, self._publish, options.on_fsync
        )
        # One removal (or config change) at a time: each plans from the state the
        # one before it left.
        self._removals = asyncio.Lock()
        self._retention = Appended()
        self._reclaim = Reclaim(lambda: self._db, path)
        self._collector = Collector(options.group_collect_seconds, options.group_collect_keys)
        self._merges = Merges(options.merge_due_targets, options.merge_cursors)
        self.stats = EngineStats()
        self._closed = False

    @classmethod
    def open(cls, path: Path, options: StoreOptions | None = None) -> RocksStore:
        """Opens (creating if needed) the store at ``path``: O(1) in segments and
        records, whose numbers are read from the catalog when first used.

        Raises DataLoss when the write-ahead log or the catalog is damaged
        (see :mod:`.recovery`), UnknownFormat when the data is in an on-disk
        format this code does not read (see :mod:`.layout`); opens read-only,
        serving reads, when the disk is too full to recover (see
        :attr:`write_error`).
        """
        options = options or StoreOptions()
        _create_durably(path)
        opened = recovery.open_db(path, options.memtable_bytes, options.wal_tail_damage)
        try:
            store = cls(path, opened.db, options, opened.read_only)
            store._check_format()
        except BaseException:
            _close_db(opened.db)
            raise
        store.recovery_dropped = opened.dropped
        return store

    def _durable_mark(self) -> DurableMark | None:
        """The durable mark, starting at what the open recovered (all of it in
        table files); None under --no-sync, where nothing waits for an fsync."""
        if not self._options.sync:
            return None
        return DurableMark(self._path, self._db.latest_sequence_number())

    def _check_format(self) -> None:
        raw = self._get(keys.FORMAT, "the on-disk format version")
        version = keys.format_version(raw)
        if version == keys.FORMAT_VERSION:
            return
        if raw is None and self._empty():
            if self._disk_full is None:
                # Stamped (and fsynced) before this code writes anything else.
                self._db.put(keys.FORMAT, keys.u64(keys.FORMAT_VERSION))
                self._db.flush_wal(True)
            return
        if self._disk_full is not None:
            raise keys.UnknownFormat(
                f"on-disk format version {version} must be migrated to {keys.FORMAT_VERSION} "
                f"once, which writes, but {self._disk_full}; the data was left as it is"
            )
        migrate.from_v1(
            self._db,
            self._scan,
            lambda text: self._data_loss(f"{text} (data directory {self._path})"),
        )

    def _empty(self) -> bool:
        """Whether the store holds nothing yet (a new data directory)."""
        return all(
            next(self._scan(tag, "the catalog"), None) is None for tag in (keys.SPACE, keys.OFFSET)
        )

    def _scan(
        self, prefix: bytes, what: str, start: bytes | None = None, end: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Items under ``prefix`` (below ``end`` if given) from ``start`` on, in key
        order; raises DataLoss if a damaged block cuts the scan short."""
        # A generator, so the options (which own the bound the native iterator
        # points at) live exactly as long as the iteration.
        read_options = rocksdict.ReadOptions()
        read_options.set_iterate_upper_bound(end or keys.prefix_end(prefix))
        iterator = self._db.iter(read_options)
        iterator.seek(start or prefix)
        while iterator.valid():
            yield iterator.key(), iterator.value()
            iterator.next()
        # An iterator also stops at a block it cannot read: only its status tells.
        try:
            iterator.status()
        except Exception as exc:
            raise self._data_loss(f"{what} under {self._path} cannot be read: {exc}") from exc

    def _get(self, key: bytes, what: str) -> bytes | None:
        try:
            return self._db.get(key)
        except Exception as exc:
            if recovery.is_corruption(exc):
                raise self._data_loss(f"{what} cannot be read: {exc}") from exc
            raise

    def _data_loss(self, message: str) -> DataLoss:
        """The error for damaged or missing stored data, logged for the operator."""
        log.error("data loss: %s", message, extra={"data": str(self._path)})
        return DataLoss(message)

    # -- writes ----------------------------------------------------------

    async def produce(self, txn: Transaction) -> ProduceResult:
        await self._check_writable()
        duplicate = self._find_duplicate(txn)
        if duplicate is not None:
            # The original may still await its fsync: answer only once it is durable.
            await self._group.barrier()
            return duplicate
        with self._catalog.held():  # the states the commit moves stay cached
            ticket, result = self._commit(txn)
        await self._group.wait(ticket)
        return result

    def _find_duplicate(self, txn: Transaction) -> ProduceResult | None:
        if not txn.transaction_id:
            return None
        raw = self._get(
            keys.dedupe_key(txn.space, txn.transaction_id),
            f"the dedupe entry of transaction_id {txn.transaction_id!r} in space {txn.space!r}",
        )
        if raw is None:
            return None
        expires, fingerprint = DEDUPE_HEAD.unpack_from(raw)
        if expires <= self._options.clock():
            return None
        if fingerprint != txn.fingerprint:
            raise port.already_exists(txn)
        original = codec.parse_produce_response(raw[DEDUPE_HEAD.size :])
        return dataclasses.replace(original, duplicate=True)

    def _commit(
        self, txn: Transaction, batch: rocksdict.WriteBatch | None = None
    ) -> tuple[int, ProduceResult]:
        """Checks, numbers and writes ``txn`` as one batch (added to ``batch``
        when given: what else must be written atomically with it); no await in
        here. Runs within ``self._catalog.held()``."""
        space = self._catalog.space(txn.space)
        segments = [
            self._catalog.segment(txn.space, a.segment, space) if space else None
            for a in txn.appends
        ]
        for append, segment in zip(txn.appends, segments, strict=True):
            actual = segment.last.sequence if segment else 0
            if append.expected_sequence is not None and append.expected_sequence != actual:
                raise port.sequence_mismatch(append.segment, actual, append.expected_sequence)
        before = space.last if space else SpaceEntry()
        ts = max(self._options.clock(), before.ts)
        position = before.position
        first_position = position + 1
        space_prefix = keys.space_prefix(txn.space)
        batch = rocksdict.WriteBatch(raw_mode=True) if batch is None else batch
        acks = []
        keep = self._tail.followed(txn.space)
        kept: list[list[bytes]] = []
        entries: list[SegmentEntry] = []
        added = 0
        small = self._options.merge_small_bytes
        merge: list[Target] = []  # got a small chunk
        for append, segment in zip(txn.appends, segments, strict=True):
            prefix = keys.segment_prefix(txn.space, append.segment)
            entry = segment.last if segment else SegmentEntry()
            sequence = entry.sequence
            first_sequence = sequence + 1
            header = codec.record_header(txn.space, append.segment, ts, txn.transaction_id)
            values = [
                codec.record(header, sequence + i, position + i, body)
                for i, body in enumerate(append.bodies, start=1)
            ]
            # The same chunk under its segment key and its space key: the
            # write's positions are consecutive, like its sequences.
            for index, chunk in chunks.pack(values):
                batch.put(prefix + keys.u64(sequence + 1 + index), chunk)
                batch.put(space_prefix + keys.u64(position + 1 + index), chunk)
                if len(chunk) < small:
                    merge.append(Target(txn.space, append.segment))
            sequence += len(values)
            position += len(values)
            kept.append(values if keep else [])
            size = sum(map(record_bytes, append.bodies))
            added += size
            # Written again, a deleted segment is back (its numbers went on).
            entry = entry._replace(
                sequence=sequence,
                position=position,
                size=entry.size + size,
                flags=entry.flags & ~DELETED,
                ts=ts,
            )
            entries.append(entry)
            batch.put(keys.segment_catalog_key(txn.space, append.segment), entry.pack())
            acks.append(SegmentAck(append.segment, first_sequence, sequence))
        space_entry = before._replace(
            position=position,
            ts=ts,
            records=before.records + txn.record_count,
            size=before.size + added,
            first_ts=before.first_ts if before.records else ts,
            flags=before.flags & ~DELETED,
        )
        batch.put(keys.space_catalog_key(txn.space), space_entry.pack())
        result = ProduceResult(tuple(acks), first_position, position, ts)
        if position - first_position + 1 != txn.record_count:
            raise InvariantViolation(
                f"positions {first_position}..{position} do not number the "
                f"{txn.record_count} records of the transaction"
            )
        if txn.transaction_id:
            expires = ts + self._options.dedupe_window_ns
            response = codec.produce_response(result).SerializeToString()
            batch.put(
                keys.dedupe_key(txn.space, txn.transaction_id),
                DEDUPE_HEAD.pack(expires, txn.fingerprint) + response,
            )
            batch.put(keys.expiry_key(expires, txn.space, txn.transaction_id), b"")
        self._write(batch)
        # The batch is in: only now does memory move, so a failed write leaves no trace.
        # Pending until durable: the durable numbers now exist only in memory.
        space = self._catalog.new_space(txn.space) if space is None else space
        moved: list[tuple[SegmentState, SegmentEntry]] = []
        for append, segment, entry in zip(txn.appends, segments, entries, strict=True):
            state = segment or self._catalog.new_segment(txn.space, append.segment)
            moved.append((state, entry))
        self._retention.appended(txn.space, (append.segment for append in txn.appends))
        for target in merge:
            self._merges.note(target)
            self._merges.note(Target(txn.space))
        records = [value for values in kept for value in values]
        announce = functools.partial(
            self._tail.publish,
            txn.space,
            first_position,
            records,
            [
                (ack.segment, ack.first_sequence, values)
                for ack, values in zip(acks, kept, strict=True)
            ],
        )
        return self._queue(space, space_entry, moved, announce), result

    def _queue(
        self,
        space: SpaceState,
        space_entry: SpaceEntry,
        segments: list[tuple[SegmentState, SegmentEntry]],
        announce: Callable[[], None],
    ) -> int:
        """Moves the written entries of a batch just written into memory, pending
        until durable; returns the batch's ticket."""
        self._catalog.pin(space)
        space.last = space_entry
        for state, entry in segments:
            self._catalog.pin(state)
            state.last = entry
        # Queued before the ticket is taken: with --no-sync, taking it publishes.
        ticket = self._group.written + 1
        self._pending.append(_Pending(ticket, space, space_entry, segments, announce))
        # Taken outside any assert: ``python -O`` strips asserts, side effects included.
        taken = self._group.ticket()
        if taken != ticket:
            raise InvariantViolation(f"the write took ticket {taken}, readers wait for {ticket}")
        return ticket

    def _write(self, batch: rocksdict.WriteBatch) -> None:
        try:
            self._db.write(batch, self._write_options)
        except Exception as exc:
            text = str(exc)
            if recovery.is_no_space(exc) or self._disk_full is not None:
                self._disk_full = self._disk_full or f"the disk under {self._path} is full: {text}"
                log.error("writes refused: %s", self._disk_full)
                raise ResourceExhausted(
                    f"disk full, nothing was written; writes resume once space is freed: {text}"
                ) from exc
            self._write_failure = f"a write to the store failed: {text}"
            raise Unavailable(f"storage write failed, nothing was written: {text}") from exc
        self._write_failure = None

    def _sync_wal(self) -> None:
        """The group commit's fsync (runs in a worker thread)."""
        if self._disk_full is not None:
            raise SyncAborted(self._disk_full)
        # Every write up to here is in the WAL file: the fsync covers it.
        sequence = self._db.latest_sequence_number()
        try:
            self._db.flush_wal(True)
        except Exception as exc:
            # "Writer has previous error": a write failed before (the disk filled
            # up), and RocksDB refused to sync; no fsync failed.
            if self._disk_full is not None or "previous error" in str(exc):
                raise SyncAborted(str(exc)) from exc
            raise
        mark = self._mark
        if mark is not None:
            try:
                mark.record(sequence)
            except OSError as exc:
                # Only a proof of durability is lost (recovery then judges a torn
                # tail by its shape alone): writes go on.
                log.error("the durable mark under %s cannot be written: %s", self._path, exc)
                self._mark = None
                with contextlib.suppress(OSError):
                    mark.close()

    @property
    def write_error(self) -> str | None:
        """Why writes are refused right now (a failed fsync, a full disk, a
        read-only start, a failed write); None when writes work."""
        if self._closed:
            return "the store is closed"
        if not self._db_open:
            return f"the store under {self._path} could not be reopened"
        return self._group.failure or self._disk_full or self._write_failure

    async def _check_writable(self) -> None:
        """Raises unless writes can go on; after a full disk, reopens the store
        writable once RocksDB can recover (tried with back-off)."""
        self._check_open()
        self._group.check()
        if self._disk_full is None:
            return
        if self._reopen_due():
            await self._group.drain()
            await self._reclaim.settle()
        self._resume_writes()

    def _check_writable_now(self) -> None:
        """:meth:`_check_writable` for callers that cannot await: the reopen waits
        for a moment when no fsync runs."""
        self._check_open()
        self._group.check()
        if self._disk_full is not None:
            self._resume_writes()

    def _reopen_due(self) -> bool:
        return time.monotonic() >= self._next_reopen

    def _resume_writes(self) -> None:
        """Reopens RocksDB writable if the back-off allows; raises ResourceExhausted
        while it cannot (the disk is still too full to recover the log)."""
        if self._disk_full is None:  # another writer reopened it meanwhile
            return
        # A running fsync or compaction holds the database: it cannot be closed.
        if self._reopen_due() and self._group.idle and self._reclaim.idle:
            try:
                self._reopen()
            except ResourceExhausted:
                self._next_reopen = time.monotonic() + self._reopen_wait
                self._reopen_wait = min(self._reopen_wait * 2, _REOPEN_MAX_WAIT)
                raise
            self._reopen_wait = _REOPEN_FIRST_WAIT
            log.info("writes resumed under %s", self._path)
            return
        raise ResourceExhausted(f"disk full, nothing was written: {self._disk_full}")

    def _reopen(self) -> None:
        """Reopens RocksDB and rebuilds memory from what is on disk: transactions
        whose outcome was unknown are there or not, as the WAL has them. Raises
        ResourceExhausted when it could only reopen read-only."""
        _close_db(self._db)
        self._db_open = False
        if self._mark is not None:
            self._mark.close()
            self._mark = None
        try:
            opened = recovery.open_db(
                self._path, self._options.memtable_bytes, self._options.wal_tail_damage
            )
        except DataLoss:
            raise
        except Exception as exc:
            raise Unavailable(f"reopening the store after a full disk failed: {exc}") from exc
        self._db = opened.db
        self._db_open = True
        self._disk_full = opened.read_only
        if opened.read_only is None:
            self._mark = self._durable_mark()
        self._write_failure = None
        self._pending.clear()
        self._catalog.clear()
        self._retention.clear()
        self._merges.clear()
        self._group.reset()
        self._tail.reset()
        if self._disk_full is not None:
            raise ResourceExhausted(f"disk full, nothing was written: {self._disk_full}")

    def _publish(self, covered: int) -> None:
        """Makes every write up to ``covered`` visible to readers, in order."""
        done = 0
        for pending in self._pending:
            if pending.ticket > covered:
                break
            pending.space.durable = pending.space_entry
            self._catalog.settle(pending.space)
            for state, entry in pending.segments:
                state.durable = entry.within(pending.space.durable)
                self._catalog.settle(state)
            done += 1
        published = self._pending[:done]
        del self._pending[:done]
        for pending in published:
            pending.announce()

    async def commit_offset(
        self, consumer: str, target: Target, offset: int, expected: int | None
    ) -> int:
        await self._check_writable()
        if self._deleted(target):
            # Its delete removed its offsets: one committed now would outlive it.
            raise port.deleted(target)
        last = self._last_offset(target)
        if offset > last:
            raise port.out_of_range(offset, last, target)
        key = keys.offset_key(consumer, target.space, target.segment)
        raw = self._get(key, f"the offset of consumer {consumer!r} for {target.describe()}")
        stored = keys.read_u64(raw) if raw is not None else None
        if expected is not None and expected != (stored or 0):
            raise port.offset_mismatch(expected, stored, consumer, target)
        batch = rocksdict.WriteBatch(raw_mode=True)
        batch.put(key, keys.u64(offset))
        # Indexed by target, so that deleting it finds its offsets.
        batch.put(keys.offset_index_key(consumer, target.space, target.segment), b"")
        self._write(batch)
        ticket = self._group.ticket()
        await self._group.wait(ticket)
        return offset

    def _deleted(self, target: Target) -> bool:
        """Whether ``target`` is deleted (it, or its space) and not written since,
        as written: a delete whose batch is in counts, durable or not."""
        space = self._catalog.space(target.space)
        if space is None or target.is_space:
            return space is not None and space.last.deleted
        segment = self._catalog.segment(target.space, target.segment, space)
        return segment is not None and segment.last.deleted

    async def get_offset(self, consumer: str, target: Target) -> int | None:
        self._check_open()
        # A Commit still awaiting its fsync is not acknowledged: wait it out.
        await self._group.barrier()
        raw = self._get(
            keys.offset_key(consumer, target.space, target.segment),
            f"the offset of consumer {consumer!r} for {target.describe()}",
        )
        return keys.read_u64(raw) if raw is not None else None

    async def consumer_lags(self, limit: int) -> tuple[list[tuple[str, Target, int]], bool]:
        self._check_open()
        found: list[tuple[str, Target, int]] = []
        for key, value in self._scan(keys.OFFSET, "the committed offsets"):
            if len(found) == limit:
                return found, True
            consumer, space, segment = keys.split_offset_key(key)
            target = Target(space, segment)
            behind = self._last_offset(target) - keys.read_u64(value)
            found.append((consumer, target, max(0, behind)))
        return found, False

    # -- consumer groups ---------------------------------------------------
    #
    # A group is its head (G key: progress and config) and a K key per
    # settle, holding the positions it settled above its acked_through,
    # keyed by the highest of them (see .layout and .groups). Every change
    # goes through the group commit like a Commit, checked and written with
    # no await between; reads wait for writes in flight (rule 2).

    def _group_head(self, space: str, name: str) -> GroupHead | None:
        raw = self._get(keys.group_key(space, name), self._head_of(space, name))
        return None if raw is None else self._parsed_head(raw, space, name)

    @staticmethod
    def _head_of(space: str, name: str) -> str:
        return f"the head of group {name!r} of space {space!r}"

    def _parsed_head(self, raw: bytes, space: str, name: str) -> GroupHead:
        try:
            return GroupHead.parse(raw)
        except ValueError as exc:
            raise self._data_loss(
                f"{self._head_of(space, name)} under {self._path} is damaged: {exc}"
            ) from exc

    def _group_config(self, head: GroupHead, space: str, name: str) -> GroupConfig:
        try:
            return groups.decode_config(head.config)
        except ValueError as exc:
            raise self._data_loss(
                f"the config of group {name!r} of space {space!r} under {self._path} is "
                f"damaged: {exc}"
            ) from exc

    async def create_group(
        self, config: GroupConfig, acked_through: int, max_groups: int
    ) -> tuple[GroupConfig, bool]:
        await self._check_writable()
        # From here to the write, no await: the count stays true.
        found = self._group_head(config.space, config.name)
        if found is not None:
            await self._group.barrier()  # a create in flight answers once durable
            return self._group_config(found, config.space, config.name), False
        prefix = keys.group_prefix(config.space)
        scan = self._scan(prefix, f"the groups of space {config.space!r}")
        if sum(1 for _ in itertools.islice(scan, max_groups)) >= max_groups:
            raise port.too_many_groups(config.space, max_groups)
        head = GroupHead(acked_through, 0, acked_through, groups.encode_config(config))
        batch = rocksdict.WriteBatch(raw_mode=True)
        batch.put(keys.group_key(config.space, config.name), head.pack())
        self._write(batch)
        await self._group.wait(self._group.ticket())
        return config, True

    async def get_group(self, space: str, name: str) -> GroupState | None:
        self._check_open()
        await self._group.barrier()
        head = self._group_head(space, name)
        if head is None:
            return None
        prefix = keys.settled_prefix(space, name)
        # A key holds no position above its own: those at or below acked_through are stale.
        start = self._settled_key(prefix, head.acked_through + 1)
        where = f"the settled positions of group {name!r} of space {space!r}"
        positions: list[int] = []
        for key, value in self._scan(prefix, where, start):
            positions += self._settled_in(key, value, prefix, where)
        return GroupState(
            self._group_config(head, space, name),
            groups.progress(head.acked_through, positions, head.parked),
        )

    def _settled_in(self, key: bytes, value: bytes, prefix: bytes, where: str) -> list[int]:
        highest = keys.read_u64(key, len(prefix))
        try:
            return unpack_settled(highest, value)
        except ValueError as exc:
            raise self._data_loss(
                f"{where} under {self._path} are damaged (the key of {highest}): {exc}"
            ) from exc

    async def list_groups(self, space: str, after: str | None, limit: int) -> list[GroupConfig]:
        self._check_open()
        await self._group.barrier()
        prefix = keys.group_prefix(space)
        start = keys.group_key(space, after) + b"\x00" if after is not None else None
        found = []
        scan = self._scan(prefix, f"the groups of space {space!r}", start)
        for key, raw in itertools.islice(scan, limit):
            name = keys.first_name(key, prefix)
            found.append(self._group_config(self._parsed_head(raw, space, name), space, name))
        return found

    async def delete_group(self, space: str, name: str) -> bool:
        await self._check_writable()
        head = self._group_head(space, name)
        if head is None:
            await self._group.barrier()  # a delete in flight answers once durable
            return False
        prefix = keys.settled_prefix(space, name)
        batch = rocksdict.WriteBatch(raw_mode=True)
        # From the collected point on: apart from the group's earlier tombstones.
        batch.delete_range(self._settled_key(prefix, head.collected + 1), keys.prefix_end(prefix))
        batch.delete(keys.group_key(space, name))
        self._write(batch)
        self.stats.range_deletes += 1
        self._collector.forget((space, name))
        await self._group.wait(self._group.ticket())
        return True

    async def settle_group(
        self,
        space: str,
        name: str,
        acked_through: int,
        settled: Sequence[int],
        parked: Transaction | None,
    ) -> ProduceResult | None:
        await self._check_writable()
        # From the look-up to the write, no await: the checks stay true.
        with self._catalog.held():
            head = self._group_head(space, name)
            if head is None:
                raise port.group_not_found(space, name)
            groups.check_forward(space, name, head.acked_through, acked_through)
            prefix = keys.settled_prefix(space, name)
            fresh = sorted({position for position in settled if position > acked_through})
            batch = rocksdict.WriteBatch(raw_mode=True)
            collected = head.collected
            group = (space, name)
            collect = self._collector.due(group, 1 if fresh else 0, acked_through > collected)
            if collect:
                # From where the last collection ended: the tombstones never nest.
                batch.delete_range(
                    self._settled_key(prefix, collected + 1),
                    self._settled_key(prefix, acked_through + 1),
                )
                collected = acked_through
            if fresh:
                key = prefix + keys.u64(fresh[-1])
                where = f"the settled positions of group {name!r} of space {space!r}"
                found = self._get(key, where)
                if found is not None:
                    # An earlier settle with the same highest position: one key holds both.
                    fresh = sorted({*fresh, *self._settled_in(key, found, prefix, where)})
                batch.put(key, pack_settled(fresh))
            count = 0 if parked is None else parked.record_count
            new = GroupHead(acked_through, head.parked + count, collected, head.config)
            # Last in the batch (before a park's records): ends in the config's last byte.
            batch.put(keys.group_key(space, name), new.pack())
            result = None
            if parked is None:
                self._write(batch)
                ticket = self._group.ticket()
            else:
                ticket, result = self._commit(parked, batch)
            if collect:
                self.stats.range_deletes += 1
                self._collector.collected(group)
        await self._group.wait(ticket)
        return result

    @staticmethod
    def _settled_key(prefix: bytes, position: int) -> bytes:
        """The K key of ``position`` under ``prefix``; the prefix's end past the
        largest position."""
        return prefix + keys.u64(position) if position <= keys.U64_MAX else keys.prefix_end(prefix)

    def sweep_expired_dedupe(self) -> int:
        """Deletes up to ``dedupe_sweep_limit`` expired dedupe entries; returns how many.

        Fails as writes do (Unavailable, ResourceExhausted) while they are
        refused, and with DataLoss if the entries cannot be read."""
        self._check_writable_now()
        now = self._options.clock()
        batch = rocksdict.WriteBatch(raw_mode=True)
        swept = 0
        end = keys.EXPIRY + keys.u64(now + 1)
        for expiry_key, _ in self._scan(keys.EXPIRY, "the dedupe expiry index", end=end):
            if swept == self._options.dedupe_sweep_limit:
                break
            _, dedupe_key = keys.split_expiry_key(expiry_key)
            raw = self._get(dedupe_key, "a dedupe entry")
            # The id may have been reused after it expired: keep the newer entry.
            if raw is not None and DEDUPE_HEAD.unpack_from(raw)[0] <= now:
                batch.delete(dedupe_key)
            batch.delete(expiry_key)
            swept += 1
        if swept:
            self._write(batch)
        return swept

    async def _sweep_all_expired(self) -> None:
        # A full sweep means more may be waiting: go on, letting calls run between.
        while self.sweep_expired_dedupe() == self._options.dedupe_sweep_limit:
            await asyncio.sleep(0)

    def background(self) -> Sequence[BackgroundTask]:
        tasks = [
            BackgroundTask(
                "dedupe-sweep", self._options.dedupe_sweep_seconds, self._sweep_all_expired
            ),
            BackgroundTask("reclaim", self._options.reclaim_seconds, self.reclaim),
        ]
        if self._options.merge_small_bytes:  # 0: merging is off
            tasks.append(BackgroundTask("merge", self._options.merge_seconds, self.merge))
        return tasks

    async def reclaim(self) -> int:
        """Compacts away the chunks of records removed since the last call (see
        :mod:`.reclaim`); returns the bytes the table files shrank by."""
        self._check_open()
        return await self._reclaim.step()

    def disk_usage(self) -> DiskUsage | None:
        return self._reclaim.usage()

    # -- merged runs (see .merge) -----------------------------------------

    async def merge(self) -> int:
        """Copies the runs of small chunks of each space that got small chunks
        since the last call into merged runs (see :mod:`.merge`), a bounded
        step at a time; returns how many runs it wrote.

        A damaged target (DataLoss) is logged and skipped, the others are
        merged, and the first DataLoss is raised once the pass is over (the
        supervisor reports it). Any other failure ends the pass, and the
        targets it did not finish are tried again by the next pass."""
        written = 0
        damage: DataLoss | None = None
        due = self._merges.take()
        for at, target in enumerate(due):
            try:
                written += await self._merge_target(target)
            except DataLoss as exc:
                log.error("merge of %s skipped: %s", target.describe(), exc)
                damage = damage or exc
            except BaseException:
                for rest in due[at:]:
                    self._merges.note(rest)
                raise
        if damage is not None:
            raise damage
        return written

    async def _merge_target(self, target: Target) -> int:
        """One target's part of a merge pass; returns how many runs it wrote."""
        written = 0
        while True:
            await self._check_writable()
            async with self._removals:
                runs, cursor, more = self._merge_step(target)
                if runs:
                    batch = rocksdict.WriteBatch(raw_mode=True)
                    for key, value in runs:
                        batch.put(key, value)
                    self._write(batch)
                    written += len(runs)
                    self.stats.merged_runs += len(runs)
                self._merges.advance(target, cursor)
                if runs:
                    await self._group.wait(self._group.ticket())
            await asyncio.sleep(0)  # calls run between steps, and between targets
            if not more:
                return written

    def _merge_step(self, target: Target) -> tuple[list[tuple[bytes, bytes]], int, bool]:
        """The runs (keys, values) of the next ``merge_step_chunks`` chunks of
        ``target`` at most, from where its runs end; where the next step
        starts; whether chunks are left to look at. No await in here (the
        removal lock is held)."""
        start = self._merge_cursor(target)
        first, last, _ = self._numbers(target)  # durable: what a run copies never changes
        start = max(start, first)
        if start > last:
            return [], start, False
        options = self._options
        prefix = self._prefix(target)
        merged = _runs_prefix(target)
        runs: list[tuple[bytes, bytes]] = []
        run: list[tuple[Chunk, int, int]] = []
        run_first = offset = start
        size = visited = taken = 0
        most = options.merge_step_runs * options.merge_run_bytes
        with self._chunks(prefix, last) as iterator:
            _seek_chunk(iterator, prefix + keys.u64(start))
            while offset <= last and visited < options.merge_step_chunks and taken < most:
                chunk_first, chunk = self._chunk_here(iterator, prefix, target, offset)
                skip = offset - chunk_first
                if not 0 <= skip < chunk.count:
                    raise self._missing(iterator, target, offset)
                if chunk_first + chunk.count - 1 > last:
                    break  # not durable as a whole: copy no part of it
                visited += 1
                taken += len(chunk.value)
                small = len(chunk.value) < options.merge_small_bytes
                if small:
                    if not run:
                        run_first = offset
                    run.append((chunk, skip, chunk.count))
                    size += chunk.size(skip, chunk.count)
                offset = chunk_first + chunk.count
                if not small or size >= options.merge_run_bytes:
                    if len(run) > 1:
                        runs.append((merged + keys.u64(run_first), chunks.join(run)))
                    run, size = [], 0
                iterator.next()
        if len(run) >= options.merge_min_chunks:
            runs.append((merged + keys.u64(run_first), chunks.join(run)))
            run = []
        # A short run at the end waits for more chunks (a later pass, once
        # the target gets small chunks again).
        more = offset <= last and (visited == options.merge_step_chunks or taken >= most)
        return runs, run_first if run else offset, more

    def _merge_cursor(self, target: Target) -> int:
        """Where the merged runs of ``target`` end: the first offset no run
        holds and no pass passed over yet (a guess from the last run stored,
        when not remembered)."""
        cursor = self._merges.cursor(target)
        if cursor is not None:
            return cursor
        prefix = _runs_prefix(target)
        with self._chunks(prefix, keys.U64_MAX - 1) as iterator:
            iterator.seek_for_prev(prefix + keys.u64(keys.U64_MAX))
            if not _under(iterator, prefix):
                return 1
            run_first = keys.read_u64(iterator.key(), len(prefix))
            with self._well_formed(target, run_first):
                return run_first + Chunk(iterator.value()).count

    # -- removals ----------------------------------------------------------
    #
    # A removal runs in slices (at most `removal_slice_records` records or
    # `removal_slice_bytes` bytes each), one at a time (`_removals`), each a
    # valid state on its own: a prefix of each segment removed. A slice is two
    # batches. The first moves the catalog entries (first offsets, counts,
    # bytes, flags) and the offsets; once it is durable, readers see it (rule
    # 2: until then they read the records as before, which are still there).
    # The second deletes the chunks that lie wholly below the new first offsets
    # with range tombstones (the chunk holding a first offset stays; reads
    # start inside it). A crash between the two leaves such chunks unreadable
    # on disk; the next removal of the target deletes them too, as each range
    # starts at the target's first key. Compaction gives the space back later
    # (see reclaim).

    async def trim(self, target: Target, before: int) -> tuple[int, Removed]:
        await self._check_writable()
        async with self._removals:
            space = self._catalog.space(target.space)
            entry: SpaceEntry | SegmentEntry | None = space.last if space else None
            if space is not None and not target.is_space:
                segment = self._catalog.segment(target.space, target.segment, space)
                entry = segment.last if segment else None
            if (
                entry is None
                or entry.deleted
                or (isinstance(entry, SpaceEntry) and not entry.found)
            ):
                raise port.not_found(target)
            last = entry.position if isinstance(entry, SpaceEntry) else entry.sequence
            if before > last + 1:
                raise port.trim_out_of_range(before, last, target)
            if target.is_space:
                removed = await self._in_slices(
                    target.space, lambda: self._plan_space_trim(target.space, before)
                )
            else:
                removed = await self._in_slices(
                    target.space,
                    lambda: self._plan_segment_trim(target.space, target.segment, before),
                )
        return self._numbers(target)[0], removed

    async def delete_segment(self, space: str, segment: str, expected: int | None) -> Removed:
        async with self._removals:
            # Checked in the lock: then nothing awaits between reading the last
            # sequence and writing the slice that deletes through it.
            await self._check_writable()
            owner = self._catalog.space(space)
            state = self._catalog.segment(space, segment, owner) if owner else None
            actual = state.last.sequence if state else 0
            if expected is not None and expected != actual:
                raise port.sequence_mismatch(segment, actual, expected, "expected_sequence")
            if state is None or state.last.deleted:
                return Removed()
            # Through the sequence it has now: a Produce that commits between
            # the slices continues the numbers and is not deleted.
            removed = await self._in_slices(
                space,
                functools.partial(self._plan_segment_delete, space, segment, actual),
                always=(segment,),
            )
        return removed

    async def delete_space(self, space: str) -> Removed:
        await self._check_writable()
        async with self._removals:
            # Held from the look-up on: the state written below stays the cached one.
            with self._catalog.held():
                state = self._catalog.space(space)
                batch = rocksdict.WriteBatch(raw_mode=True)
                # In the same durable change; also of a space that only has groups.
                has_groups = self._delete_groups(batch, space)
                if state is None or state.last.deleted:
                    if not has_groups:
                        return Removed()
                    self._write(batch)
                    ticket = self._group.ticket()
                    gone = None
                else:
                    entry = state.last
                    removed = Removed(entry.records, entry.size)
                    batch.delete(keys.config_key(space))
                    self._delete_offsets(batch, keys.offset_index_prefix(space))
                    # Its segments are deleted by this one number (see SegmentEntry.within):
                    # the cost does not grow with them.
                    gone = SpaceEntry(
                        position=entry.position,
                        first=entry.position + 1,
                        deleted_through=entry.position,
                        flags=DELETED,
                        ts=entry.ts,
                    )
                    batch.put(state.key, gone.pack())
                    self._write(batch)
                    ticket = self._queue(
                        state, gone, [], functools.partial(self._tail.removed, space, None)
                    )
            if gone is None:
                await self._group.wait(ticket)
                return Removed()
            self._retention.forget(space)
            await self._group.wait(ticket)
            await self._delete_space_chunks(space, gone)
        return removed

    def _delete_groups(self, batch: rocksdict.WriteBatch, space: str) -> bool:
        """Adds to ``batch`` the deletes of every group of ``space`` (heads and
        settled positions: one range each, whatever their number); whether it
        has any."""
        heads = keys.group_prefix(space)
        if next(self._scan(heads, f"the groups of space {space!r}"), None) is None:
            return False
        batch.delete_range(heads, keys.prefix_end(heads))
        settled = keys.settled_space_prefix(space)
        batch.delete_range(settled, keys.prefix_end(settled))
        self.stats.range_deletes += 2
        self._collector.forget_space(space)
        return True

    async def _delete_space_chunks(self, space: str, gone: SpaceEntry) -> None:
        """Deletes the chunks of the records a space delete removed (``gone``: the
        entry it wrote), none of a write made since: a write continues the
        numbers, so its chunks lie above every range here. Runs within
        ``_removals`` (no other removal moves a first offset meanwhile)."""
        through = gone.deleted_through
        positions = keys.space_prefix(space)
        merged = keys.merged_prefix(space)
        # A merged run holds durable records only: none after the delete.
        ranges = [
            (positions, positions + keys.u64(through + 1)),
            (merged, merged + keys.u64(through + 1)),
        ]
        records = keys.RECORD + keys.name(space)
        state = self._catalog.space(space)
        if state is not None and state.last.position == through:
            # Nothing written since: every record of every segment was deleted.
            runs = keys.segment_merged_prefix(space)
            await self._delete_ranges(
                [*ranges, (records, keys.prefix_end(records)), (runs, keys.prefix_end(runs))]
            )
            return
        # Written since: below each segment's first sequence after the delete
        # (the segments written again continued from there), a page of segments
        # per batch, each page planned and written with no await between.
        catalog = keys.segment_catalog_prefix(space)
        start: bytes | None = None
        while True:
            page = list(
                itertools.islice(
                    self._scan(catalog, f"the segment catalog of space {space!r}", start),
                    _SEGMENT_PAGE,
                )
            )
            for key, raw in page:
                name = keys.first_name(key, catalog)
                entry = self._catalog.segment_entry(raw, f"segment {name!r} of space {space!r}")
                first = entry.within(gone).first
                if first > 1:  # else a segment new since the delete: nothing of it was deleted
                    for prefix in (
                        keys.segment_prefix(space, name),
                        keys.segment_merged_prefix(space, name),
                    ):
                        ranges.append((prefix, prefix + keys.u64(first)))
            await self._delete_ranges(ranges)
            if len(page) < _SEGMENT_PAGE:
                return
            ranges = []
            start = page[-1][0] + b"\x00"

    async def configure_space(self, space: str, config: SpaceConfig) -> None:
        await self._check_writable()
        policy = config.retention
        value = keys.SPACE_CONFIG.pack(
            policy is not None,
            policy.max_age_ns if policy else 0,
            policy.max_records_per_segment if policy else 0,
            policy.max_bytes if policy else 0,
        )
        async with self._removals:
            with self._catalog.held():
                state = self._catalog.space(space)
                before = state.last if state else SpaceEntry()
                entry = before._replace(flags=(before.flags | CONFIGURED) & ~DELETED)
                batch = rocksdict.WriteBatch(raw_mode=True)
                batch.put(keys.config_key(space), value)
                batch.put(keys.space_catalog_key(space), entry.pack())
                self._write(batch)
                state = state or self._catalog.new_space(space)
                ticket = self._queue(state, entry, [], _nothing)
            # Its policy may have changed: the next pass looks at every segment.
            self._retention.forget(space)
            await self._group.wait(ticket)

    async def enforce_retention(self, defaults: RetentionPolicy) -> Removed:
        self._check_open()
        removed = Removed()
        after: bytes = keys.SPACE
        while True:
            # A page of names at a time: no iterator is held across the awaits.
            page = [
                keys.first_name(key, keys.SPACE)
                for key, _ in itertools.islice(
                    self._scan(keys.SPACE, "the space catalog", after), _RETENTION_PAGE
                )
            ]
            for name in page:
                removed += await self._retain(name, defaults)
            if len(page) < _RETENTION_PAGE:
                break
            after = keys.space_catalog_key(page[-1]) + b"\x00"
        return removed

    async def _retain(self, name: str, defaults: RetentionPolicy) -> Removed:
        """One space's retention: by age, records per segment, then bytes. Reads
        no record unless something is to be removed (the catalog entry tells)."""
        removed = Removed()
        state = self._catalog.space(name)
        if state is None or not state.last.found or not state.last.records:
            return removed
        entry = state.last
        policy = defaults
        if entry.configured:
            policy = self._config(name).retention or defaults
        if not policy.max_records_per_segment:
            self._retention.forget(name)
        if not policy.limited:
            return removed
        if policy.max_age_ns:
            cutoff = self._options.clock() - policy.max_age_ns
            if entry.first_ts < cutoff:
                before = await self.first_at_or_after(Target(name), cutoff)
                async with self._removals:
                    removed += await self._in_slices(
                        name, lambda: self._plan_space_trim(name, before), paced=True
                    )
        if policy.max_records_per_segment:
            removed += await self._retain_segments(name, policy.max_records_per_segment)
        if policy.max_bytes:
            async with self._removals:
                removed += await self._in_slices(
                    name,
                    lambda: self._plan_space_trim(name, None, policy.max_bytes),
                    paced=True,
                )
        return removed

    async def _retain_segments(self, space: str, most: int) -> Removed:
        """Trims each segment of ``space`` to its last ``most`` records: those
        appended to since the last pass, or (first pass for this space) all."""
        due = self._retention.take(space)
        if due is None:
            self._retention.track(space)  # from now on: appends are noted
            prefix = keys.segment_catalog_prefix(space)
            due = {
                keys.first_name(key, prefix)
                for key, value in self._scan(prefix, f"the segment catalog of space {space!r}")
            }
        removed = Removed()
        for segment in sorted(due):
            owner = self._catalog.space(space)
            state = self._catalog.segment(space, segment, owner) if owner else None
            if state is None or state.last.records <= most:
                continue
            async with self._removals:
                plan = functools.partial(
                    self._plan_segment_trim, space, segment, state.last.sequence - most + 1
                )
                removed += await self._in_slices(space, plan, paced=True)
        return removed

    async def _in_slices(
        self,
        space: str,
        plan: Callable[[], _Plan | None],
        always: Sequence[str] = (),
        paced: bool = False,
    ) -> Removed:
        """Applies ``plan`` slice by slice until it has nothing left to do; each
        slice durable before the next is planned. Runs within ``_removals``.

        ``paced`` (the retention pass, which nobody waits for): after each
        slice the event loop is left alone for as long as the slice held it,
        so a pass takes about twice as long and a writer waits behind at most
        one slice, never a run of them."""
        removed = Removed()
        while True:
            await self._check_writable()
            started = time.perf_counter()
            with self._catalog.held():
                step = plan()
                if step is None:
                    return removed
                self._write(step.batch)
                names = sorted({*step.segments, *always}, key=lambda n: n.encode("utf-8"))
                announce = functools.partial(self._tail.removed, space, names)
                ticket = self._queue(
                    step.space, step.space_entry, list(step.segments.values()), announce
                )
            busy = time.perf_counter() - started
            await self._group.wait(ticket)
            removed += step.removed
            self.stats.removal_slices += 1
            # A space trim's slice names the segment chunks it removed: deleted
            # one by one, as a range per segment would leave up to
            # removal_slice_chunks range tombstones per slice in the memtable,
            # and RocksDB reads every one of them each time it makes an
            # iterator (about 11 us per 1,000), slowing every read and slice.
            ranged = step.segments if step.chunks is None else ()
            started = time.perf_counter()
            await self._delete_ranges(self._below_first(space, ranged), step.chunks or ())
            busy += time.perf_counter() - started
            # Writers go first (with --no-sync nothing above waited).
            await asyncio.sleep(busy if paced else 0)

    def _below_first(self, space: str, segments: Iterable[str]) -> list[tuple[bytes, bytes]]:
        """The key ranges of the chunks (and merged runs) of ``space`` and of
        ``segments`` that lie wholly below their durable first offsets."""
        owner = self._catalog.space(space)
        if owner is None:
            return []
        first = owner.durable.first
        ranges = [
            self._range_below(keys.space_prefix(space), first),
            self._range_below(keys.merged_prefix(space), first),
        ]
        for name in segments:
            state = self._catalog.segment(space, name, owner)
            if state is None:
                continue
            # Nothing retained: no chunk holds the first sequence.
            held = state.durable.first <= state.durable.sequence
            ranges.append(
                self._range_below(keys.segment_prefix(space, name), state.durable.first, held)
            )
            runs = keys.segment_merged_prefix(space, name)
            ranges.append(self._range_below(runs, state.durable.first, held))
        return ranges

    def _runs_below(self, target: Target, first: int) -> list[bytes]:
        """The keys of the merged runs of ``target`` that end below ``first``
        (a space trim deletes a segment's one by one, as it does its chunks)."""
        prefix = _runs_prefix(target)
        found = []
        with self._chunks(prefix, first) as iterator:
            iterator.seek(prefix)
            while _under(iterator, prefix):
                run_first = keys.read_u64(iterator.key(), len(prefix))
                with self._well_formed(target, run_first):
                    count = Chunk(iterator.value()).count
                if run_first + count > first:
                    break
                found.append(iterator.key())
                iterator.next()
        return found

    def _range_below(self, prefix: bytes, first: int, held: bool = True) -> tuple[bytes, bytes]:
        """From the first chunk of ``prefix`` still stored to the chunk that holds
        ``first`` (or to ``first`` when none does, or ``held`` is false: nothing
        from there on is stored); empty when nothing below it is stored.

        Starting at the first stored chunk, not at the prefix, keeps the range
        tombstones of a target's slices apart: nested ones (each from the
        prefix) cost RocksDB the square of their number each time it makes an
        iterator, as it splits overlapping tombstones into fragments. A chunk
        a crash left below the first offset is still the first one stored, so
        the next removal of the target deletes it."""
        end = prefix + keys.u64(first)
        with self._chunks(prefix, first) as iterator:
            iterator.seek(prefix)
            if not _under(iterator, prefix) or iterator.key() >= end:
                return prefix, prefix
            begin = iterator.key()
            if held:
                iterator.seek_for_prev(end)
                if _under(iterator, prefix):
                    chunk_first = keys.read_u64(iterator.key(), len(prefix))
                    if chunk_first + Chunk(iterator.value()).count > first:
                        end = iterator.key()
        return begin, end

    async def _delete_ranges(
        self, ranges: list[tuple[bytes, bytes]], chunks: Sequence[bytes] = ()
    ) -> None:
        """Deletes what no reader reads any more (below durable first offsets:
        ``ranges``, and the chunks at keys ``chunks``), durably, and notes where
        for the reclaim task's compaction."""
        ranges = [(begin, end) for begin, end in ranges if begin < end]
        if not ranges and not chunks:
            return
        batch = rocksdict.WriteBatch(raw_mode=True)
        for begin, end in ranges:
            batch.delete_range(begin, end)
        self.stats.range_deletes += len(ranges)
        for key in chunks:
            batch.delete(key)
        self._write(batch)
        for tag in {key[:1] for key in chunks}:  # chunks, runs: compacted apart
            same = [key for key in chunks if key[:1] == tag]
            ranges.append((min(same), max(same) + b"\x00"))
        self._reclaim.extend(ranges)
        await self._group.wait(self._group.ticket())

    def _delete_offsets(self, batch: rocksdict.WriteBatch, prefix: bytes) -> None:
        """Deletes the committed offsets that the offset index lists under
        ``prefix``, and those index keys."""
        for key, _ in self._scan(prefix, "the offset index"):
            batch.delete(keys.offset_key_of_index(key))
        batch.delete_range(prefix, keys.prefix_end(prefix))

    # -- removal plans (no await in here; each runs within catalog.held()) --

    def _owner(self, space: str) -> SpaceState:
        state = self._catalog.space(space)
        if state is None:
            raise InvariantViolation(f"space {space!r} lost its catalog entry during a removal")
        return state

    def _segment_state(self, space: str, name: str, owner: SpaceState) -> SegmentState:
        state = self._catalog.segment(space, name, owner)
        if state is None:
            raise self._data_loss(
                f"segment {name!r} of space {space!r} has records under {self._path} but no "
                "catalog entry"
            )
        return state

    def _plan_segment_trim(self, space: str, segment: str, before: int) -> _Plan | None:
        """The next slice of a segment trim: records from its first sequence
        toward ``before``, read to count their bytes (cost follows what is
        removed); their space copies stay and reads skip them (holes) until the
        space's first position passes them."""
        owner = self._owner(space)
        state = self._segment_state(space, segment, owner)
        entry = state.last
        if entry.first >= before:
            return self._plan_advance(space)
        target = Target(space, segment)
        prefix = keys.segment_prefix(space, segment)
        offset = entry.first
        count = size = last_position = visited = 0
        with self._chunks(prefix, before - 1) as iterator:
            _seek_chunk(iterator, prefix + keys.u64(offset))
            while offset < before and self._slice_left(count, size, visited):
                visited += 1
                chunk_first, chunk = self._chunk_here(iterator, prefix, target, offset)
                skip = offset - chunk_first
                if not 0 <= skip < chunk.count:
                    raise self._missing(iterator, target, offset)
                stop = min(chunk.count, before - chunk_first)
                head = self._head(target, chunk, chunk_first)
                size += sum(self._body_sizes(chunk, head, skip, stop))
                count += stop - skip
                last_position = head.position + stop - 1
                offset = chunk_first + stop
                iterator.next()
        new = entry._replace(first=offset, size=entry.size - size)
        space_entry = owner.last._replace(
            records=owner.last.records - count,
            size=owner.last.size - size,
            holes=max(owner.last.holes, last_position),
        )
        return self._plan(space, owner, space_entry, {segment: (state, new)}, Removed(count, size))

    def _plan_segment_delete(self, space: str, segment: str, through: int) -> _Plan | None:
        """The slice deleting a segment's records up to sequence ``through``
        (its last when the delete began); once done, slices that move the
        space's first position on."""
        owner = self._owner(space)
        state = self._segment_state(space, segment, owner)
        entry = state.last
        if entry.deleted or entry.first > through:
            return self._plan_advance(space)
        if entry.sequence != through:
            raise InvariantViolation(
                f"segment {segment!r} of space {space!r} was written to (sequence "
                f"{entry.sequence}, not {through}) before its delete's first slice"
            )
        new = entry._replace(first=entry.sequence + 1, size=0, flags=entry.flags | DELETED)
        space_entry = owner.last._replace(
            records=owner.last.records - entry.records,
            size=owner.last.size - entry.size,
            holes=max(owner.last.holes, entry.position) if entry.records else owner.last.holes,
        )
        plan = self._plan(
            space, owner, space_entry, {segment: (state, new)}, Removed(entry.records, entry.size)
        )
        self._delete_offsets(plan.batch, keys.offset_index_prefix(space, segment))
        return plan

    def _plan_space_trim(
        self, space: str, before: int | None, max_bytes: int | None = None
    ) -> _Plan | None:
        """The next slice of a space trim: below position ``before``, or (with
        ``max_bytes``) the oldest records while the space holds more bytes than
        that. Reads the removed records (cost follows them) and moves the first
        sequence of each segment they belong to."""
        owner = self._owner(space)
        entry = owner.last
        end = entry.position + 1 if before is None else min(before, entry.position + 1)
        if entry.first >= end or (max_bytes is not None and entry.size <= max_bytes):
            return self._plan_advance(space)
        target = Target(space)
        prefix = keys.space_prefix(space)
        offset = entry.first
        count = size = visited = 0
        touched: dict[str, tuple[SegmentState, SegmentEntry]] = {}
        whole: list[bytes] = []  # the segment copies of the chunks removed wholly
        with self._chunks(prefix, end - 1) as iterator:
            _seek_chunk(iterator, prefix + keys.u64(offset))
            while offset < end and self._slice_left(count, size, visited):
                visited += 1
                if max_bytes is not None and entry.size - size <= max_bytes:
                    break
                chunk_first, chunk = self._chunk_here(iterator, prefix, target, offset)
                skip = offset - chunk_first
                if not 0 <= skip < chunk.count:
                    raise self._missing(iterator, target, offset)
                stop = min(chunk.count, end - chunk_first)
                head = self._head(target, chunk, chunk_first)
                state, segment = touched.get(head.segment) or (None, None)
                if state is None or segment is None:
                    state = self._segment_state(space, head.segment, owner)
                    segment = state.last
                # Records their segment removed already (holes) are not counted again.
                begin = max(skip, min(stop, segment.first - head.sequence))
                if begin < stop:
                    sizes = self._body_sizes(chunk, head, begin, stop)
                    if max_bytes is not None:
                        over = entry.size - size - max_bytes
                        taken = 0
                        for index, record in enumerate(sizes):
                            if taken >= over:
                                stop = begin + index
                                sizes = sizes[:index]
                                break
                            taken += record
                    removed = sum(sizes)
                    size += removed
                    count += stop - begin
                    segment = segment._replace(
                        first=head.sequence + stop, size=segment.size - removed
                    )
                    touched[head.segment] = (state, segment)
                offset = chunk_first + stop
                if stop < chunk.count:
                    break
                whole.append(keys.record_key(space, head.segment, head.sequence))
                iterator.next()
        space_entry = entry._replace(
            first=offset, records=entry.records - count, size=entry.size - size
        )
        plan = self._plan(space, owner, space_entry, touched, Removed(count, size), moved=True)
        for name, (_, moved) in touched.items():
            whole += self._runs_below(Target(space, name), moved.first)
        plan.chunks = whole
        return plan

    def _plan_advance(self, space: str) -> _Plan | None:
        """A slice that only moves the space's first position past records its
        segments removed; None when the record there is retained."""
        owner = self._owner(space)
        entry = owner.last
        if entry.first > entry.holes or entry.first > entry.position:
            return None
        plan = self._plan(space, owner, entry, {}, Removed())
        return None if plan.space_entry == entry else plan

    def _plan(
        self,
        space: str,
        owner: SpaceState,
        entry: SpaceEntry,
        segments: dict[str, tuple[SegmentState, SegmentEntry]],
        removed: Removed,
        moved: bool = False,
    ) -> _Plan:
        """A slice writing ``entry`` (its first position moved on past records
        the segments removed, as far as a slice looks; the timestamp of the
        first retained record when ``moved`` or moved here) and ``segments``."""
        if entry.records == 0:
            entry = entry._replace(first=entry.position + 1, first_ts=0, holes=0)
        elif moved or entry.first <= entry.holes:
            kept = {name: new.first for name, (_, new) in segments.items()}
            first, ts = self._next_retained(
                Target(space), entry.first, entry.position, False, self._slice_budget, kept
            )
            entry = entry._replace(first=first, first_ts=entry.first_ts if ts is None else ts)
        batch = rocksdict.WriteBatch(raw_mode=True)
        batch.put(owner.key, entry.pack())
        for name, (_, new) in segments.items():
            batch.put(keys.segment_catalog_key(space, name), new.pack())
        return _Plan(batch, owner, entry, segments, removed)

    @property
    def _slice_budget(self) -> int:
        return self._options.removal_slice_records

    def _slice_left(self, count: int, size: int, chunks_read: int) -> bool:
        options = self._options
        return (
            count < options.removal_slice_records
            and size < options.removal_slice_bytes
            and chunks_read < options.removal_slice_chunks
        )

    def _body_sizes(self, chunk: Chunk, head: Record, start: int, stop: int) -> list[int]:
        with self._well_formed(Target(head.space, head.segment), head.sequence):
            return chunks.body_sizes(chunk, head, start, stop)

    # -- reads -----------------------------------------------------------

    async def last_offset(self, target: Target) -> int:
        return self._last_offset(target)

    def _last_offset(self, target: Target) -> int:
        return self._numbers(target)[1]

    def _numbers(self, target: Target) -> tuple[int, int, int]:
        """The durable first retained offset, last offset and holes of ``target``
        (holes: offsets up to this may hold records their segment removed)."""
        self._check_open()
        space = self._catalog.space(target.space)
        if space is None:
            return 1, 0, 0
        if target.is_space:
            entry = space.durable
            return entry.first, entry.position, entry.holes
        segment = self._catalog.segment(target.space, target.segment, space)
        if segment is None:
            return 1, 0, 0
        return segment.durable.first, segment.durable.sequence, 0

    def _prefix(self, target: Target) -> bytes:
        if target.is_space:
            return keys.space_prefix(target.space)
        return keys.segment_prefix(target.space, target.segment)

    async def read(
        self, target: Target, first: int, last: int, cut: Cut, segment_prefix: bytes = b""
    ) -> tuple[FramedBatch, int]:
        self._check_open()
        if segment_prefix and (not target.is_space or cut.max_skip_bytes < 1):
            raise ValueError(
                f"a read by segment prefix is of a space and skips something: {target}, {cut}"
            )
        retained, durable_last, holes = self._numbers(target)
        first = max(first, retained, 1)
        last = min(last, durable_last)
        if first > last:
            return EMPTY, first
        if segment_prefix:
            recent = self._tail.read_matching(target, first, last, cut, segment_prefix)
            if recent is not None:
                return recent
        else:
            batch = self._tail.read(target, first, last, cut.max_records, cut.max_bytes)
            if batch is not None:
                return batch, first + batch.count
        return self._read_stored(target, first, last, holes, cut, segment_prefix)

    def _read_stored(
        self,
        target: Target,
        first: int,
        last: int,
        holes: int,
        cut: Cut,
        segment_prefix: bytes,
    ) -> tuple[FramedBatch, int]:
        """Records ``first..last`` (retained ones) from RocksDB, and where the next
        read starts. Chunks are dense from the first retained offset on: each
        starts where the one before it ended. A chunk under the space key holds
        records of one segment write, so its first record tells whether the
        chunk is wanted (segment prefix) and from which record it is retained.

        A plain read of a space above its holes (every record there retained)
        takes records from merged runs where they hold them (see :mod:`.merge`),
        and from the chunks between them."""
        prefix = self._prefix(target)
        parts: list[bytes] = []
        count = size = skipped = removed = 0
        offset = first
        kept: dict[str, int] = {}
        plain = not segment_prefix and first > holes

        def take(chunk: Chunk, skip: int, stop: int) -> int:
            """Frames records ``skip``.. of ``chunk`` (before ``stop``) as far as the
            cut's rest allows; returns where it stopped (``skip``: none fit)."""
            end = min(stop, skip + cut.max_records - count)
            end = chunk.fit(skip, end, cut.max_bytes - size, at_least_one=count == 0)
            if end > skip:
                parts.append(chunk.framed(skip, end))
            return end

        merged = _runs_prefix(target) if plain else b""
        stored_runs = self._chunks(merged, last) if plain else contextlib.nullcontext()
        with self._chunks(prefix, last) as iterator, stored_runs as run_iterator:
            runs = _Runs(run_iterator, merged, first) if run_iterator is not None else None
            seek = True
            start = first  # where the chunk iterator was last moved to
            while count < cut.max_records and offset <= last:
                if (segment_prefix and skipped >= cut.max_skip_bytes) or removed >= _HOLE_SKIP:
                    break
                try:
                    run = runs.holding(offset) if runs is not None else None
                except MalformedChunk as exc:
                    if offset != first:
                        break
                    raise self._data_loss(
                        f"{target.describe()}: a merged run at or before offset {offset} "
                        f"under {self._path} is malformed: {exc}"
                    ) from exc
                if run is not None:
                    run_first, chunk = run
                    skip = offset - run_first
                    end = take(chunk, skip, min(chunk.count, last - run_first + 1))
                    if end == skip:
                        break
                    size += chunk.size(skip, end)
                    count += end - skip
                    offset = run_first + end
                    self.stats.merged_reads += 1
                    seek = True
                    continue
                if seek:
                    _seek_chunk(iterator, prefix + keys.u64(offset))
                    seek, start = False, offset
                try:
                    chunk_first, chunk = self._chunk_here(iterator, prefix, target, offset)
                    skip = offset - chunk_first
                    if not 0 <= skip < chunk.count or (offset != start and skip):
                        raise self._missing(iterator, target, offset)
                    stop = min(chunk.count, last - chunk_first + 1)
                    if chunk_first <= holes:
                        retained, _ = self._retained_from(target, chunk, chunk_first, kept, True)
                        if retained > skip:
                            removed += chunk.size(skip, min(retained, stop))
                            skip = min(retained, stop)
                    wanted = skip < stop and (
                        not segment_prefix
                        or self._in_segments(target, chunk, chunk_first, segment_prefix)
                    )
                except DataLoss:
                    if offset != first:
                        break  # what comes before the damage goes out; the next read raises
                    raise
                offset = chunk_first + skip
                if wanted:
                    end = take(chunk, skip, stop)
                    if end == skip:
                        break
                    size += chunk.size(skip, end)
                    count += end - skip
                    stop = end
                elif skip < stop:
                    skipped += chunk.size(skip, stop)
                offset = chunk_first + stop
                if stop < chunk.count:
                    break
                iterator.next()
        return FramedBatch(b"".join(parts), count), offset

    def _in_segments(self, target: Target, chunk: Chunk, chunk_first: int, prefix: bytes) -> bool:
        with self._well_formed(target, chunk_first):
            return codec.in_segments(chunk.value, chunk.record_start(0), prefix)

    def _head(self, target: Target, chunk: Chunk, chunk_first: int) -> Record:
        """The first record of ``chunk`` (its segment and numbers stand for the
        chunk's: one segment write, consecutive numbers)."""
        with self._well_formed(target, chunk_first):
            return codec.parse_stored(chunk.record(0))

    def _retained_from(
        self, target: Target, chunk: Chunk, chunk_first: int, kept: dict[str, int], durable: bool
    ) -> tuple[int, Record]:
        """The index of the first record of a space's chunk that its segment
        retains (``chunk.count``: none), and the chunk's first record; ``kept``
        caches first sequences by segment, ``durable`` picks the entries
        readers see (else those as written)."""
        head = self._head(target, chunk, chunk_first)
        first = kept.get(head.segment)
        if first is None:
            segment = self._catalog.segment(target.space, head.segment)
            if segment is None:
                raise self._data_loss(
                    f"{target.describe()}: the chunk from offset {chunk_first} under "
                    f"{self._path} holds segment {head.segment!r}, which has no catalog entry"
                )
            first = kept[head.segment] = (segment.durable if durable else segment.last).first
        return min(chunk.count, max(0, first - head.sequence)), head

    @contextlib.contextmanager
    def _chunks(self, prefix: bytes, last: int) -> Iterator[rocksdict.RdictIter]:
        """An iterator over the chunks of ``prefix`` that start at or before ``last``;
        backward moves can leave the prefix (see :func:`_under`).

        The options own the bounds the native iterator points at: they must
        live as long as it does.
        """
        read_options = rocksdict.ReadOptions()
        read_options.set_iterate_lower_bound(prefix)
        read_options.set_iterate_upper_bound(prefix + keys.u64(last + 1))
        iterator = self._db.iter(read_options)
        try:
            yield iterator
        finally:
            del iterator, read_options

    def _chunk_at(
        self, iterator: rocksdict.RdictIter, prefix: bytes, target: Target, offset: int
    ) -> tuple[int, Chunk]:
        """The chunk holding ``offset`` (a durable one) and its first offset."""
        _seek_chunk(iterator, prefix + keys.u64(offset))
        chunk_first, chunk = self._chunk_here(iterator, prefix, target, offset)
        if not chunk_first <= offset < chunk_first + chunk.count:
            raise self._missing(iterator, target, offset)
        return chunk_first, chunk

    def _chunk_here(
        self, iterator: rocksdict.RdictIter, prefix: bytes, target: Target, offset: int
    ) -> tuple[int, Chunk]:
        """The chunk the iterator is on and its first offset; DataLoss if there is
        none, though ``offset`` is durable."""
        if not _under(iterator, prefix):
            raise self._missing(iterator, target, offset)
        chunk_first = keys.read_u64(iterator.key(), len(prefix))
        self.stats.chunk_reads += 1
        with self._well_formed(target, chunk_first):
            return chunk_first, Chunk(iterator.value())

    def _record(self, chunk: Chunk, index: int, target: Target, chunk_first: int) -> bytes:
        with self._well_formed(target, chunk_first):
            return chunk.record(index)

    @contextlib.contextmanager
    def _well_formed(self, target: Target, chunk_first: int) -> Iterator[None]:
        """Turns a malformed chunk into DataLoss naming where it is."""
        try:
            yield
        except (MalformedChunk, codec.CorruptRecord) as exc:
            raise self._data_loss(
                f"{target.describe()}: the chunk from offset {chunk_first} under {self._path} "
                f"is malformed: {exc}"
            ) from exc

    def _missing(self, iterator: rocksdict.RdictIter, target: Target, offset: int) -> DataLoss:
        """DataLoss for a durable ``offset`` that no readable chunk holds."""
        try:
            iterator.status()
        except Exception as exc:  # a block failed its checksum or could not be read
            cause = str(exc)
        else:
            cause = f"no stored chunk under {self._path} holds it, though the catalog lists it"
        return self._data_loss(f"{target.describe()}: offset {offset} cannot be read: {cause}")

    def follow(self, target: Target) -> Subscription:
        self._check_open()
        return self._tail.subscribe(target, self._last_offset)

    def watch(self, space: str) -> Watch:
        self._check_open()
        return self._tail.watch(space)

    async def end_subscriptions(self) -> None:
        self._tail.close()

    @property
    def catalog(self) -> Catalog:
        """The cache of space and segment numbers, for metrics and tests."""
        return self._catalog

    @property
    def tail(self) -> Tail:
        """The live tail (followers and windows), for metrics and tests."""
        return self._tail

    async def first_offset(self, target: Target) -> int:
        return self._numbers(target)[0]

    async def first_at_or_after(self, target: Target, timestamp_ns: int) -> int:
        low, high, holes = self._numbers(target)
        prefix = self._prefix(target)
        with self._chunks(prefix, high) as iterator:
            # A transaction's records share its timestamp: a chunk's first
            # record stands for all of its records.
            while low <= high:
                middle = (low + high) // 2
                chunk_first, chunk = self._chunk_at(iterator, prefix, target, middle)
                record = self._record(chunk, 0, target, chunk_first)
                if codec.record_timestamp_ns(record) >= timestamp_ns:
                    high = middle - 1
                else:
                    low = middle + 1
        # Records their segment removed may lie from there on (a segment trim or
        # delete can leave any number of them between two retained ones): the
        # first retained one, looked for a slice's worth of records at a time,
        # letting other calls run between (a removal may move the first offset
        # on meanwhile, deleting what lies below it).
        while low <= holes:
            first, last, holes = self._numbers(target)
            low, ts = self._next_retained(target, max(low, first), last, True, self._slice_budget)
            if ts is not None or low > last:
                break
            await asyncio.sleep(0)
        return low

    def _next_retained(
        self,
        target: Target,
        offset: int,
        last: int,
        durable: bool,
        budget: int = 2**64,
        kept: dict[str, int] | None = None,
    ) -> tuple[int, int | None]:
        """The first offset from ``offset`` on (to ``last``) that a space retains by
        its segments' first sequences, and its timestamp; ``last + 1`` and None
        when there is none. Looks at about ``budget`` records at most: then
        returns where it stopped (every offset below it is removed), and None.
        ``kept``: first sequences to use for some segments (a plan's)."""
        prefix = self._prefix(target)
        kept = {} if kept is None else kept
        with self._chunks(prefix, last) as iterator:
            _seek_chunk(iterator, prefix + keys.u64(offset))
            while offset <= last and budget > 0:
                chunk_first, chunk = self._chunk_here(iterator, prefix, target, offset)
                retained, head = self._retained_from(target, chunk, chunk_first, kept, durable)
                if retained < chunk.count:
                    return max(offset, chunk_first + retained), head.timestamp_ns
                budget -= chunk_first + chunk.count - offset
                offset = chunk_first + chunk.count
                iterator.next()
        return min(offset, last + 1), None

    async def peek(self, target: Target) -> FramedBatch | None:
        # Records their segment removed may end the space (any number of them):
        # stepped back over a slice's worth at a time, letting other calls run
        # between; a change meanwhile starts it over from the new numbers.
        first, last, holes = self._numbers(target)
        offset = last
        while first <= last:
            found, offset = self._last_retained(target, first, offset, holes)
            if found is not None:
                return FramedBatch(codec.consume_response((found,)), 1)
            if offset < first:
                return None
            await asyncio.sleep(0)
            numbers = self._numbers(target)
            if numbers != (first, last, holes):
                first, last, holes = numbers
                offset = last
        return None

    def _last_retained(
        self, target: Target, first: int, offset: int, holes: int
    ) -> tuple[bytes | None, int]:
        """The last retained record at or below ``offset`` (and ``first``), looking
        at about a slice's worth of records; else None and where to go on from
        (below ``first``: there is none)."""
        prefix = self._prefix(target)
        kept: dict[str, int] = {}
        budget = self._slice_budget
        with self._chunks(prefix, offset) as iterator:
            chunk_first, chunk = self._chunk_at(iterator, prefix, target, offset)
            index = offset - chunk_first
            while chunk_first <= holes:
                if self._retained_from(target, chunk, chunk_first, kept, True)[0] <= index:
                    break
                budget -= index + 1
                if chunk_first <= first or budget <= 0:
                    return None, chunk_first - 1
                iterator.prev()
                chunk_first, chunk = self._chunk_here(iterator, prefix, target, chunk_first - 1)
                index = chunk.count - 1
            return self._record(chunk, index, target, chunk_first), offset

    def _config(self, space: str) -> SpaceConfig:
        raw = self._get(keys.config_key(space), f"the config of space {space!r}")
        if raw is None or len(raw) != keys.SPACE_CONFIG.size:
            raise self._data_loss(
                f"the config of space {space!r} under {self._path} is "
                f"{'missing' if raw is None else f'{len(raw)} bytes'}, though its catalog entry "
                "says it has one"
            )
        limited, max_age_ns, max_records, max_bytes = keys.SPACE_CONFIG.unpack(raw)
        if not limited:
            return SpaceConfig()
        return SpaceConfig(RetentionPolicy(max_age_ns, max_records, max_bytes))

    def _space_info(self, name: str, entry: SpaceEntry) -> SpaceInfo:
        config = self._config(name) if entry.configured else None
        return SpaceInfo(
            name, entry.position, entry.ts, entry.first, entry.records, entry.size, config
        )

    @staticmethod
    def _segment_info(name: str, entry: SegmentEntry) -> SegmentInfo:
        return SegmentInfo(
            name,
            entry.sequence,
            entry.position,
            entry.ts,
            entry.first,
            entry.records,
            entry.size,
            entry.deleted,
        )

    async def get_space(self, space: str) -> SpaceInfo | None:
        self._check_open()
        state = self._catalog.space(space)
        if state is None or not state.durable.found:
            return None
        return self._space_info(space, state.durable)

    async def get_segment(
        self, space: str, segment: str, include_deleted: bool = False
    ) -> SegmentInfo | None:
        self._check_open()
        owner = self._catalog.space(space)
        state = self._catalog.segment(space, segment, owner) if owner else None
        if state is None or not state.durable.sequence:
            return None
        if state.durable.deleted and not include_deleted:
            return None
        return self._segment_info(segment, state.durable)

    async def list_spaces(
        self,
        after: str | None,
        limit: int,
        include: Callable[[str], bool] | None = None,
        prefixes: Sequence[str] | None = None,
    ) -> list[SpaceInfo]:
        self._check_open()
        found: list[SpaceInfo] = []
        # Sorted, non-overlapping name ranges: scanned in turn, they give name order.
        for prefix in (None,) if prefixes is None else prefixes:
            scope = keys.SPACE if prefix is None else keys.SPACE + prefix.encode("utf-8")
            start = scope
            if after is not None:
                after_key = keys.space_catalog_key(after) + b"\x00"
                if after_key >= keys.prefix_end(scope):
                    continue
                start = max(start, after_key)
            for key, value in self._scan(scope, "the space catalog", start):
                name = keys.first_name(key, keys.SPACE)
                entry = self._catalog.listed_space(key, value)
                if entry.found and (include is None or include(name)):
                    found.append(self._space_info(name, entry))
                    if len(found) == limit:
                        return found
        return found

    async def list_segments(
        self, space_name: str, after: str | None, limit: int, include_deleted: bool = False
    ) -> list[SegmentInfo]:
        self._check_open()
        owner = self._catalog.space(space_name)
        if owner is None:
            return []
        prefix = keys.segment_catalog_prefix(space_name)
        start = keys.segment_catalog_key(space_name, after) + b"\x00" if after is not None else None
        found = []
        for key, value in self._scan(prefix, f"the segment catalog of space {space_name!r}", start):
            entry = self._catalog.listed_segment(key, value, owner.durable)
            if entry.sequence and (include_deleted or not entry.deleted):
                found.append(self._segment_info(keys.first_name(key, prefix), entry))
                if len(found) == limit:
                    break
        return found

    # -- life cycle ------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the store is closed: the server is shutting down")
        if not self._db_open:
            raise Unavailable(
                f"the store could not be reopened after a full disk under {self._path}"
            )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._tail.close()
        await self._group.drain()
        await self._reclaim.close()
        if self._mark is not None:
            self._mark.close()
            self._mark = None
        if self._db_open:
            _close_db(self._db)


async def open_store(setup: Setup) -> RocksStore:
    """The rocksdb backend's opener (see :mod:`streams.storage.rocksdb`):
    OptionError naming ``--data`` when the folder cannot hold a store or holds
    one in an on-disk format this code does not read; DataLoss, for a damaged
    store, goes through."""
    startup.check_data_folder(setup.data)
    try:
        options = _options(setup)
    except ValueError as exc:  # options valid alone, not together
        value = setup.options["merge_min_chunks"]
        raise OptionError("--merge-min-chunks", value, str(exc)) from None
    try:
        return RocksStore.open(setup.data, options)
    except DataLoss:
        raise
    except keys.UnknownFormat as exc:
        raise OptionError("--data", setup.data, str(exc)) from None
    except Exception as exc:  # OSError making the folder, RocksDB's own errors
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OptionError("--data", setup.data, f"cannot hold the store: {reason}") from None


def _options(setup: Setup) -> StoreOptions:
    """The store's options: the server-wide settings and the backend's own."""
    return StoreOptions(
        sync=setup.sync,
        dedupe_window_ns=setup.dedupe_window_ns,
        dedupe_sweep_seconds=setup.options["dedupe_sweep_seconds"],
        memory=setup.memory,
        follow_linger=setup.follow_linger,
        watch_change_bytes=setup.watch_change_bytes,
        clock=setup.clock,
        on_fsync=setup.on_fsync,
        memtable_bytes=setup.options["memtable_bytes"],
        wal_tail_damage=setup.options["wal_tail_damage"],
        catalog_cache_bytes=setup.options["catalog_cache_bytes"],
        reclaim_seconds=setup.options["reclaim_seconds"],
        merge_seconds=setup.options["merge_seconds"],
        merge_small_bytes=setup.options["merge_small_bytes"],
        merge_run_bytes=setup.options["merge_run_bytes"],
        merge_min_chunks=setup.options["merge_min_chunks"],
        merge_step_chunks=setup.options["merge_step_chunks"],
    )


def _seek_chunk(iterator: rocksdict.RdictIter, key: bytes) -> None:
    """Moves to the chunk holding the record at ``key``: the chunk that starts
    there, else the one before it. A forward seek first: a backward one reads
    the table block before the key too, so a damaged block would fail reads of
    the segment stored next to it."""
    iterator.seek(key)
    if not (iterator.valid() and iterator.key() == key):
        iterator.seek_for_prev(key)


def _runs_prefix(target: Target) -> bytes:
    """The keys of the merged runs of ``target`` (see :mod:`.merge`)."""
    if target.is_space:
        return keys.merged_prefix(target.space)
    return keys.segment_merged_prefix(target.space, target.segment)


class _Runs:
    """The merged runs of a space along a forward read (see :mod:`.merge`)."""

    __slots__ = ("_first", "_iterator", "_loaded", "_prefix", "_run")

    def __init__(self, iterator: rocksdict.RdictIter, prefix: bytes, offset: int) -> None:
        self._iterator = iterator
        self._prefix = prefix
        key = prefix + keys.u64(offset)
        _seek_chunk(iterator, key)
        if not _under(iterator, prefix):  # no run starts at or before offset
            iterator.seek(key)
        self._first = 0  # the first position of the run the iterator is on
        self._run: Chunk | None = None
        self._loaded = False  # parsed on first use: MalformedChunk goes to the caller

    def _load(self) -> None:
        self._loaded = True
        if _under(self._iterator, self._prefix):
            self._first = keys.read_u64(self._iterator.key(), len(self._prefix))
            self._run = Chunk(self._iterator.value())
        else:
            self._run = None

    def holding(self, offset: int) -> tuple[int, Chunk] | None:
        """The run holding ``offset`` and its first position; None when none
        does (the read goes on from the chunks). Offsets only go up; raises
        MalformedChunk for a run that is not a chunk."""
        if not self._loaded:
            self._load()
        while self._run is not None and self._first <= offset:
            if offset < self._first + self._run.count:
                return self._first, self._run
            self._iterator.next()  # a run that ends before it
            self._load()
        return None


def _under(iterator: rocksdict.RdictIter, prefix: bytes) -> bool:
    """Whether the iterator is on a chunk key of ``prefix``. rocksdict does not
    apply ``iterate_lower_bound``: a backward seek or step past the first chunk
    of a prefix lands on whatever key comes before it."""
    if not iterator.valid():
        return False
    key = iterator.key()
    return len(key) == len(prefix) + 8 and key.startswith(prefix)


def _close_db(db: rocksdict.Rdict) -> None:
    """Closes ``db``; after a failed write RocksDB's close reports that error
    again ("Writer has previous error") but still releases the database."""
    with contextlib.suppress(Exception):
        db.close()


def _create_durably(path: Path) -> None:
    """Creates ``path`` and fsyncs its parent, which RocksDB does not do: without
    it a power cut after the first ack could lose the whole database."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir()
        parent = os.open(directory.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(parent)
        finally:
            os.close(parent)
