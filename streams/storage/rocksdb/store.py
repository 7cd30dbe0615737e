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

Records are stored as they go to the wire (serialized ``Record`` messages,
numbers included, framed as a ``ConsumeResponse``'s ``records``), so a read
hands stored bytes to the service as a :class:`FramedBatch` without decoding
them: this engine's own optimisation, which the port does not require.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import rocksdict

from streams import codec, startup
from streams.config import OptionError
from streams.errors import DataLoss, InvariantViolation, ResourceExhausted, Unavailable
from streams.memory import MemoryBudget
from streams.model import (
    Cut,
    ProduceResult,
    SegmentAck,
    SegmentInfo,
    SpaceInfo,
    Target,
    Transaction,
)
from streams.storage import port
from streams.storage.backend import DEFAULT_DEDUPE_WINDOW_NS, Setup
from streams.storage.batches import EMPTY, FramedBatch
from streams.storage.port import BackgroundTask
from streams.storage.rocksdb import chunks, recovery
from streams.storage.rocksdb import layout as keys
from streams.storage.rocksdb.catalog import Catalog, SegmentState, SpaceState
from streams.storage.rocksdb.chunks import Chunk, MalformedChunk
from streams.storage.rocksdb.durable_mark import DurableMark
from streams.storage.rocksdb.group_commit import GroupCommit, SyncAborted
from streams.storage.rocksdb.layout import DEDUPE_HEAD, SEGMENT_CATALOG, SPACE_CATALOG
from streams.storage.tail import Subscription, Tail

log = logging.getLogger(__name__)

# After a full disk, reopening writable is retried no sooner than this, the
# wait doubling while the disk stays full up to the cap.
_REOPEN_FIRST_WAIT = 0.5
_REOPEN_MAX_WAIT = 5.0


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
    tail_window_records: int = 10_000
    tail_window_bytes: int = 16 * 1024 * 1024
    memory: MemoryBudget = field(default_factory=MemoryBudget)
    # Followers are woken at most once per this many seconds (see Tail).
    follow_linger: float = 0.0
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

    def __post_init__(self) -> None:
        if self.wal_tail_damage not in recovery.TAIL_DAMAGE:
            raise ValueError(
                f"wal_tail_damage must be one of {recovery.TAIL_DAMAGE}, "
                f"got {self.wal_tail_damage!r}"
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
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(slots=True)
class _Touched:
    """One segment of a committed transaction."""

    state: SegmentState
    name: str
    first_sequence: int
    last_sequence: int
    last_position: int
    records: list[bytes]  # kept only when the space has followers


@dataclass(slots=True)
class _Pending:
    """A committed transaction, published to readers once durable."""

    ticket: int
    space_name: str
    space: SpaceState
    first_position: int
    position: int
    ts: int
    segments: list[_Touched]
    records: list[bytes]  # in position order; kept only when the space has followers


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
        )
        self._group = GroupCommit(
            self._sync_wal if options.sync else None, self._publish, options.on_fsync
        )
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
        keys.format_version(raw)
        if raw is None and self._disk_full is None:
            # Stamped (and fsynced) before this code writes anything else.
            self._db.put(keys.FORMAT, keys.u64(keys.FORMAT_VERSION))
            self._db.flush_wal(True)

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

    def _commit(self, txn: Transaction) -> tuple[int, ProduceResult]:
        """Checks, numbers and writes ``txn`` as one batch; no await in here.
        Runs within ``self._catalog.held()``."""
        space = self._catalog.space(txn.space)
        segments = [
            self._catalog.segment(txn.space, a.segment) if space else None for a in txn.appends
        ]
        for append, segment in zip(txn.appends, segments, strict=True):
            actual = segment.last_sequence if segment else 0
            if append.expected_sequence is not None and append.expected_sequence != actual:
                raise port.sequence_mismatch(append.segment, actual, append.expected_sequence)
        ts = max(self._options.clock(), space.last_ts if space else 0)
        position = space.last_position if space else 0
        first_position = position + 1
        space_prefix = keys.space_prefix(txn.space)
        batch = rocksdict.WriteBatch(raw_mode=True)
        acks = []
        keep = self._tail.followed(txn.space)
        kept: list[list[bytes]] = []
        last_positions = []
        for append, segment in zip(txn.appends, segments, strict=True):
            prefix = keys.segment_prefix(txn.space, append.segment)
            sequence = segment.last_sequence if segment else 0
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
            sequence += len(values)
            position += len(values)
            kept.append(values if keep else [])
            last_positions.append(position)
            batch.put(
                keys.segment_catalog_key(txn.space, append.segment),
                SEGMENT_CATALOG.pack(sequence, position, ts),
            )
            acks.append(SegmentAck(append.segment, first_sequence, sequence))
        batch.put(keys.space_catalog_key(txn.space), SPACE_CATALOG.pack(position, ts))
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
        if space is None:
            space = self._catalog.new_space(txn.space)
        else:
            self._catalog.pin(space)
        space.last_position, space.last_ts = position, ts
        touched = []
        for append, segment, ack, values, last_position in zip(
            txn.appends, segments, acks, kept, last_positions, strict=True
        ):
            if segment is None:
                segment = self._catalog.new_segment(txn.space, append.segment)
            else:
                self._catalog.pin(segment)
            segment.last_sequence = ack.last_sequence
            segment.last_position = last_position
            segment.last_ts = ts
            touched.append(
                _Touched(
                    segment,
                    append.segment,
                    ack.first_sequence,
                    ack.last_sequence,
                    last_position,
                    values,
                )
            )
        records = [value for values in kept for value in values]
        # Queued before the ticket is taken: with --no-sync, taking it publishes.
        ticket = self._group.written + 1
        self._pending.append(
            _Pending(ticket, txn.space, space, first_position, position, ts, touched, records)
        )
        # Taken outside any assert: ``python -O`` strips asserts, side effects included.
        taken = self._group.ticket()
        if taken != ticket:
            raise InvariantViolation(f"the write took ticket {taken}, readers wait for {ticket}")
        return ticket, result

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
        if self._reopen_due() and self._group.idle:
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
        self._group.reset()
        self._tail.reset()
        if self._disk_full is not None:
            raise ResourceExhausted(f"disk full, nothing was written: {self._disk_full}")

    def _publish(self, covered: int) -> None:
        """Moves the durable watermarks over every transaction up to ``covered``."""
        done = 0
        for pending in self._pending:
            if pending.ticket > covered:
                break
            pending.space.durable_position = pending.position
            pending.space.durable_ts = pending.ts
            self._catalog.settle(pending.space)
            for touched in pending.segments:
                touched.state.durable_sequence = touched.last_sequence
                touched.state.durable_position = touched.last_position
                touched.state.durable_ts = pending.ts
                self._catalog.settle(touched.state)
            done += 1
        published = self._pending[:done]
        del self._pending[:done]
        for pending in published:
            self._tail.publish(
                pending.space_name,
                pending.first_position,
                pending.records,
                [(t.name, t.first_sequence, t.records) for t in pending.segments],
            )

    async def commit_offset(
        self, consumer: str, target: Target, offset: int, expected: int | None
    ) -> int:
        await self._check_writable()
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
        self._write(batch)
        ticket = self._group.ticket()
        await self._group.wait(ticket)
        return offset

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
        return (
            BackgroundTask(
                "dedupe-sweep", self._options.dedupe_sweep_seconds, self._sweep_all_expired
            ),
        )

    # -- reads -----------------------------------------------------------

    async def last_offset(self, target: Target) -> int:
        return self._last_offset(target)

    def _last_offset(self, target: Target) -> int:
        self._check_open()
        if target.is_space:
            space = self._catalog.space(target.space)
            return space.durable_position if space else 0
        segment = self._catalog.segment(target.space, target.segment)
        return segment.durable_sequence if segment else 0

    def _prefix(self, target: Target) -> bytes:
        if target.is_space:
            return keys.space_prefix(target.space)
        return keys.segment_prefix(target.space, target.segment)

    async def read(
        self, target: Target, first: int, last: int, cut: Cut, segment_prefix: bytes = b""
    ) -> tuple[FramedBatch, int]:
        self._check_open()
        if segment_prefix:
            return self._read_matching(target, first, last, cut, segment_prefix)
        batch = self._read(target, first, last, cut.max_records, cut.max_bytes)
        return batch, max(first, 1) + batch.count

    def _read(
        self, target: Target, first: int, last: int, max_records: int, max_bytes: int
    ) -> FramedBatch:
        first = max(first, 1)
        last = min(last, self._last_offset(target))
        if first > last:
            return EMPTY
        recent = self._tail.read(target, first, last, max_records, max_bytes)
        if recent is not None:
            return recent
        prefix = self._prefix(target)
        parts: list[bytes] = []
        count = size = 0
        with self._chunks(prefix, last) as iterator:
            _seek_chunk(iterator, prefix + keys.u64(first))
            # Offsets are dense up to the durable watermark: each chunk starts
            # where the one before it ended, and the last one reaches ``last``.
            while count < max_records and first + count <= last:
                try:
                    chunk_first, chunk = self._chunk_here(iterator, prefix, target, first + count)
                    skip = first + count - chunk_first
                    if not 0 <= skip < chunk.count or (count and skip):
                        raise self._missing(iterator, target, first + count)
                except DataLoss:
                    if count:
                        break  # what comes before the damage goes out; the next read raises
                    raise
                stop = min(chunk.count, skip + max_records - count, last - chunk_first + 1)
                stop = chunk.fit(skip, stop, max_bytes - size, at_least_one=count == 0)
                if stop == skip:
                    break
                parts.append(chunk.framed(skip, stop))
                size += chunk.size(skip, stop)
                count += stop - skip
                if stop < chunk.count:
                    break
                iterator.next()
        return FramedBatch(b"".join(parts), count)

    def _read_matching(
        self, target: Target, first: int, last: int, cut: Cut, segment_prefix: bytes
    ) -> tuple[FramedBatch, int]:
        if not target.is_space or cut.max_skip_bytes < 1:
            raise ValueError(
                f"a read by segment prefix is of a space and skips something: {target}, {cut}"
            )
        first = max(first, 1)
        last = min(last, self._last_offset(target))
        if first > last:
            return EMPTY, first
        recent = self._tail.read_matching(target, first, last, cut, segment_prefix)
        if recent is not None:
            return recent
        prefix = self._prefix(target)
        parts: list[bytes] = []
        count = size = skipped = 0
        offset = first
        with self._chunks(prefix, last) as iterator:
            _seek_chunk(iterator, prefix + keys.u64(first))
            # A chunk under the space key holds records of one segment write, so
            # its first record tells whether the chunk is wanted or skipped whole.
            while count < cut.max_records and offset <= last and skipped < cut.max_skip_bytes:
                try:
                    chunk_first, chunk = self._chunk_here(iterator, prefix, target, offset)
                    skip = offset - chunk_first
                    if not 0 <= skip < chunk.count or (offset != first and skip):
                        raise self._missing(iterator, target, offset)
                    with self._well_formed(target, chunk_first):
                        wanted = codec.in_segments(
                            chunk.value, chunk.record_start(0), segment_prefix
                        )
                except DataLoss:
                    if offset != first:
                        break  # as in read: the next read starts at the damage and raises
                    raise
                stop = min(chunk.count, last - chunk_first + 1)
                if wanted:
                    stop = min(stop, skip + cut.max_records - count)
                    stop = chunk.fit(skip, stop, cut.max_bytes - size, at_least_one=count == 0)
                    if stop == skip:
                        break
                    parts.append(chunk.framed(skip, stop))
                    size += chunk.size(skip, stop)
                    count += stop - skip
                else:
                    skipped += chunk.size(skip, stop)
                offset = chunk_first + stop
                if stop < chunk.count:
                    break
                iterator.next()
        return FramedBatch(b"".join(parts), count), offset

    @contextlib.contextmanager
    def _chunks(self, prefix: bytes, last: int) -> Iterator[rocksdict.RdictIter]:
        """An iterator over the chunks of ``prefix`` that start at or before ``last``.

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
        if not iterator.valid():
            raise self._missing(iterator, target, offset)
        chunk_first = keys.read_u64(iterator.key(), len(prefix))
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

    async def first_at_or_after(self, target: Target, timestamp_ns: int) -> int:
        self._check_open()
        prefix = self._prefix(target)
        low, high = 1, self._last_offset(target)
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
        return low

    async def peek(self, target: Target) -> FramedBatch | None:
        self._check_open()
        last = self._last_offset(target)
        if last == 0:
            return None
        prefix = self._prefix(target)
        with self._chunks(prefix, last) as iterator:
            chunk_first, chunk = self._chunk_at(iterator, prefix, target, last)
        stored = self._record(chunk, last - chunk_first, target, chunk_first)
        return FramedBatch(codec.consume_response((stored,)), 1)

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
                position, ts = self._catalog.listed_space(key, value)
                if position and (include is None or include(name)):
                    # Provisional until the engine keeps first offsets and sizes (issue 13).
                    found.append(SpaceInfo(name, position, ts, 1, position, 0, None))
                    if len(found) == limit:
                        return found
        return found

    async def list_segments(
        self, space_name: str, after: str | None, limit: int, include_deleted: bool = False
    ) -> list[SegmentInfo]:
        self._check_open()
        prefix = keys.segment_catalog_prefix(space_name)
        start = keys.segment_catalog_key(space_name, after) + b"\x00" if after is not None else None
        found = []
        for key, value in self._scan(prefix, f"the segment catalog of space {space_name!r}", start):
            sequence, position, ts = self._catalog.listed_segment(key, value)
            if sequence:
                name = keys.first_name(key, prefix)
                # Provisional until the engine keeps first offsets and sizes (issue 13).
                found.append(SegmentInfo(name, sequence, position, ts, 1, sequence, 0))
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
    options = StoreOptions(
        sync=setup.sync,
        dedupe_window_ns=setup.dedupe_window_ns,
        dedupe_sweep_seconds=setup.options["dedupe_sweep_seconds"],
        memory=setup.memory,
        follow_linger=setup.follow_linger,
        clock=setup.clock,
        on_fsync=setup.on_fsync,
        memtable_bytes=setup.options["memtable_bytes"],
        wal_tail_damage=setup.options["wal_tail_damage"],
        catalog_cache_bytes=setup.options["catalog_cache_bytes"],
    )
    try:
        return RocksStore.open(setup.data, options)
    except DataLoss:
        raise
    except keys.UnknownFormat as exc:
        raise OptionError("--data", setup.data, str(exc)) from None
    except Exception as exc:  # OSError making the folder, RocksDB's own errors
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OptionError("--data", setup.data, f"cannot hold the store: {reason}") from None


def _seek_chunk(iterator: rocksdict.RdictIter, key: bytes) -> None:
    """Moves to the chunk holding the record at ``key``: the chunk that starts
    there, else the one before it. A forward seek first: a backward one reads
    the table block before the key too, so a damaged block would fail reads of
    the segment stored next to it."""
    iterator.seek(key)
    if not (iterator.valid() and iterator.key() == key):
        iterator.seek_for_prev(key)


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
