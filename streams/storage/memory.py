"""The reference backend (``--storage memory``): every rule of the port, in
this process's memory, nothing durable.

Small on purpose, so that it is obviously right: it is the oracle that the
state-machine test (tests/reliability/test_model.py) compares the RocksDB
engine with, operation by operation, and a fast backend for tests of
applications that use Streams. Everything is gone when the server stops.

Each operation runs on the event loop with no await inside, so operations
are atomic and take effect in the order they are called; a write is as
durable as this backend gets (in memory) when it returns, so readers see it
at once. Records are kept as domain values and framed only when read.
A group's progress is kept as given (see :mod:`streams.storage.groups`).
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from collections.abc import Callable, Sequence

from streams import codec
from streams.errors import Unavailable
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
from streams.storage.backend import DEFAULT_DEDUPE_WINDOW_NS, Backend, Setup
from streams.storage.batches import RecordList
from streams.storage.port import BackgroundTask, DiskUsage
from streams.storage.tail import Subscription, Tail
from streams.storage.watches import MAX_CHANGE_BYTES, Watch

BACKEND = Backend(
    "memory",
    "this process's memory: fast, nothing survives a restart (for tests)",
    "streams.storage.memory:open_store",
)

# How often expired dedupe entries are dropped.
SWEEP_SECONDS = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class _Dedupe:
    expires_ns: int
    fingerprint: bytes
    result: ProduceResult


@dataclasses.dataclass(slots=True)
class _Log:
    """A target's retained records, in offset order, and its numbers: ``last``
    is the last offset ever assigned (removals keep it: numbers are never reused)."""

    records: list[Record] = dataclasses.field(default_factory=list)
    last: int = 0
    last_position: int = 0
    last_timestamp_ns: int = 0
    deleted: bool = False

    def first(self, offset: Callable[[Record], int]) -> int:
        return offset(self.records[0]) if self.records else self.last + 1

    def bytes(self) -> int:
        return sum(record_bytes(record.body) for record in self.records)


@dataclasses.dataclass(slots=True)
class _Group:
    config: GroupConfig
    acked_through: int
    # Settled positions above acked_through.
    settled: set[int] = dataclasses.field(default_factory=set)
    parked: int = 0


@dataclasses.dataclass(slots=True)
class _Space(_Log):
    segments: dict[str, _Log] = dataclasses.field(default_factory=dict)
    config: SpaceConfig | None = None


def _utf8(name: str) -> bytes:
    return name.encode("utf-8")


def _position(record: Record) -> int:
    return record.position


def _sequence(record: Record) -> int:
    return record.sequence


def _timestamp(record: Record) -> int:
    return record.timestamp_ns


def _offset_of(target: Target) -> Callable[[Record], int]:
    return _position if target.is_space else _sequence


class MemoryStore:
    """The in-memory :class:`~streams.storage.port.Store`.

    Example::

        store = MemoryStore()
        result = await store.produce(txn)
        batch, after = await store.read(Target("orders"), 1, 100, Cut(100, 4 << 20))
    """

    def __init__(
        self,
        dedupe_window_ns: int = DEFAULT_DEDUPE_WINDOW_NS,
        clock: Callable[[], int] = time.time_ns,
        follow_linger: float = 0.0,
        memory: MemoryBudget | None = None,
        watch_change_bytes: int = MAX_CHANGE_BYTES,
    ) -> None:
        self._dedupe_window_ns = dedupe_window_ns
        self._clock = clock
        # Every space ever written or configured; deleted ones are kept for their numbers.
        self._spaces: dict[str, _Space] = {}
        self._dedupe: dict[tuple[str, str], _Dedupe] = {}
        self._offsets: dict[tuple[str, str, str], int] = {}
        # Groups by space, then name; apart from _spaces: a space may have groups and no records.
        self._groups: dict[str, dict[str, _Group]] = {}
        # Wake-ups and watches only: it is handed no records, so it keeps no windows.
        self._tail = Tail(1, 1, follow_linger, memory, watch_change_bytes)
        self._closed = False

    def _log(self, target: Target) -> _Log | None:
        space = self._spaces.get(target.space)
        if space is None or target.is_space:
            return space
        return space.segments.get(target.segment)

    def _found(self, target: Target) -> _Log:
        """The target's log; NotFound when it was never written or is deleted
        (a space with only a config is found)."""
        log = self._log(target)
        if log is None or log.deleted:
            raise port.not_found(target)
        return log

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the store is closed: the server is shutting down")

    # -- writes ----------------------------------------------------------

    async def produce(self, txn: Transaction) -> ProduceResult:
        self._check_open()
        return self._produce(txn)

    def _produce(self, txn: Transaction) -> ProduceResult:
        now = self._clock()
        entry = self._dedupe.get((txn.space, txn.transaction_id))
        if txn.transaction_id and entry is not None and entry.expires_ns > now:
            if entry.fingerprint != txn.fingerprint:
                raise port.already_exists(txn)
            return dataclasses.replace(entry.result, duplicate=True)
        for append in txn.appends:
            log = self._log(Target(txn.space, append.segment))
            actual = 0 if log is None else log.last
            if append.expected_sequence is not None and append.expected_sequence != actual:
                raise port.sequence_mismatch(append.segment, actual, append.expected_sequence)
        space = self._spaces.setdefault(txn.space, _Space())
        ts = max(now, space.last_timestamp_ns)
        first_position = space.last + 1
        acks = []
        for append in txn.appends:
            segment = space.segments.setdefault(append.segment, _Log())
            first_sequence = segment.last + 1
            for body in append.bodies:
                segment.last += 1
                space.last += 1
                record = Record(
                    txn.space,
                    append.segment,
                    segment.last,
                    space.last,
                    ts,
                    txn.transaction_id,
                    body,
                )
                segment.records.append(record)
                space.records.append(record)
            segment.last_position, segment.last_timestamp_ns = space.last, ts
            segment.deleted = False
            acks.append(SegmentAck(append.segment, first_sequence, segment.last))
        space.last_position, space.last_timestamp_ns = space.last, ts
        space.deleted = False
        result = ProduceResult(tuple(acks), first_position, space.last, ts)
        if txn.transaction_id:
            self._dedupe[(txn.space, txn.transaction_id)] = _Dedupe(
                ts + self._dedupe_window_ns, txn.fingerprint, result
            )
        self._tail.publish(
            txn.space, first_position, (), [(a.segment, a.first_sequence, ()) for a in acks]
        )
        return result

    async def commit_offset(
        self, consumer: str, target: Target, offset: int, expected: int | None
    ) -> int:
        self._check_open()
        log = self._log(target)
        if log is not None and (log.deleted or self._spaces[target.space].deleted):
            raise port.deleted(target)
        last = self._last_offset(target)
        if offset > last:
            raise port.out_of_range(offset, last, target)
        key = (consumer, target.space, target.segment)
        stored = self._offsets.get(key)
        if expected is not None and expected != (stored or 0):
            raise port.offset_mismatch(expected, stored, consumer, target)
        self._offsets[key] = offset
        return offset

    # -- consumer groups -------------------------------------------------

    async def create_group(
        self, config: GroupConfig, acked_through: int, max_groups: int
    ) -> tuple[GroupConfig, bool]:
        self._check_open()
        space = self._groups.setdefault(config.space, {})
        found = space.get(config.name)
        if found is not None:
            return found.config, False
        if len(space) >= max_groups:
            raise port.too_many_groups(config.space, max_groups)
        space[config.name] = _Group(config, acked_through)
        return config, True

    async def get_group(self, space: str, name: str) -> GroupState | None:
        self._check_open()
        found = self._groups.get(space, {}).get(name)
        if found is None:
            return None
        return GroupState(
            found.config, groups.progress(found.acked_through, found.settled, found.parked)
        )

    async def list_groups(self, space: str, after: str | None, limit: int) -> list[GroupConfig]:
        self._check_open()
        found = self._groups.get(space, {})
        names = sorted(
            (name for name in found if after is None or _utf8(name) > _utf8(after)), key=_utf8
        )
        return [found[name].config for name in names[:limit]]

    async def delete_group(self, space: str, name: str) -> bool:
        self._check_open()
        return self._groups.get(space, {}).pop(name, None) is not None

    async def settle_group(
        self,
        space: str,
        name: str,
        acked_through: int,
        settled: Sequence[int],
        parked: Transaction | None,
    ) -> ProduceResult | None:
        self._check_open()
        found = self._groups.get(space, {}).get(name)
        if found is None:
            raise port.group_not_found(space, name)
        groups.check_forward(space, name, found.acked_through, acked_through)
        result = None if parked is None else self._produce(parked)
        found.acked_through = acked_through
        found.settled = {p for p in (*found.settled, *settled) if p > acked_through}
        found.parked += 0 if parked is None else parked.record_count
        return result

    # -- removals --------------------------------------------------------

    async def trim(self, target: Target, before: int) -> tuple[int, Removed]:
        self._check_open()
        log = self._found(target)
        if before > log.last + 1:
            raise port.trim_out_of_range(before, log.last, target)
        offset = _offset_of(target)
        gone = log.records[: bisect.bisect_left(log.records, before, key=offset)]
        removed = self._remove(target.space, gone)
        return log.first(offset), removed

    def _remove(self, space_name: str, gone: Sequence[Record]) -> Removed:
        """Takes ``gone`` (a prefix of each of their segments) out of the space
        and its segments, and tells the tail."""
        if not gone:
            return Removed()
        space = self._spaces[space_name]
        keys = {(record.segment, record.sequence) for record in gone}
        space.records = [r for r in space.records if (r.segment, r.sequence) not in keys]
        touched = {record.segment for record in gone}
        for name in touched:
            segment = space.segments[name]
            segment.records = [r for r in segment.records if (name, r.sequence) not in keys]
        self._tail.removed(space_name, sorted(touched, key=_utf8))
        return Removed(len(gone), sum(record_bytes(record.body) for record in gone))

    async def delete_segment(self, space: str, segment: str, expected: int | None) -> Removed:
        self._check_open()
        log = self._log(Target(space, segment))
        actual = 0 if log is None else log.last
        if expected is not None and expected != actual:
            raise port.sequence_mismatch(segment, actual, expected, "expected_sequence")
        if log is None or log.deleted:
            return Removed()
        removed = self._remove(space, list(log.records))
        log.deleted = True
        for key in [key for key in self._offsets if key[1:] == (space, segment)]:
            del self._offsets[key]
        self._tail.removed(space, (segment,))
        return removed

    async def delete_space(self, space_name: str) -> Removed:
        self._check_open()
        self._groups.pop(space_name, None)  # also of a space that only has groups
        space = self._spaces.get(space_name)
        if space is None or space.deleted:
            return Removed()
        removed = Removed(len(space.records), space.bytes())
        space.records = []
        space.deleted = True
        space.config = None
        for segment in space.segments.values():
            segment.records = []
            segment.deleted = True
        for key in [key for key in self._offsets if key[1] == space_name]:
            del self._offsets[key]
        self._tail.removed(space_name, None)
        return removed

    async def configure_space(self, space: str, config: SpaceConfig) -> None:
        self._check_open()
        found = self._spaces.setdefault(space, _Space())
        found.config = config
        found.deleted = False

    async def enforce_retention(self, defaults: RetentionPolicy) -> Removed:
        self._check_open()
        now = self._clock()
        removed = Removed()
        for name, space in self._spaces.items():
            policy = defaults
            if space.config is not None and space.config.retention is not None:
                policy = space.config.retention
            if space.deleted or not policy.limited:
                continue
            if policy.max_age_ns:
                kept = bisect.bisect_left(space.records, now - policy.max_age_ns, key=_timestamp)
                removed += self._remove(name, space.records[:kept])
            if policy.max_records_per_segment:
                for segment in space.segments.values():
                    over = len(segment.records) - policy.max_records_per_segment
                    removed += self._remove(name, segment.records[: max(0, over)])
            if policy.max_bytes:
                size, kept = space.bytes(), 0
                while size > policy.max_bytes:
                    size -= record_bytes(space.records[kept].body)
                    kept += 1
                removed += self._remove(name, space.records[:kept])
        return removed

    # -- reads -----------------------------------------------------------

    async def last_offset(self, target: Target) -> int:
        self._check_open()
        return self._last_offset(target)

    def _last_offset(self, target: Target) -> int:
        log = self._log(target)
        return 0 if log is None else log.last

    async def first_offset(self, target: Target) -> int:
        self._check_open()
        log = self._log(target)
        return 1 if log is None else log.first(_offset_of(target))

    async def read(
        self, target: Target, first: int, last: int, cut: Cut, segment_prefix: bytes = b""
    ) -> tuple[RecordList, int]:
        self._check_open()
        log = self._log(target) or _Log()
        offset_of = _offset_of(target)
        # Where the next read starts when this one reaches the end of its range.
        after = max(first, min(last, log.last) + 1, 1)
        found: list[Record] = []
        stored: list[bytes] = []
        size = skipped = 0
        for record in log.records[bisect.bisect_left(log.records, first, key=offset_of) :]:
            offset = offset_of(record)
            if offset > last:
                break
            if len(found) == cut.max_records:
                after = offset
                break
            raw = codec.stored(record)
            if segment_prefix and not _utf8(record.segment).startswith(segment_prefix):
                if skipped >= cut.max_skip_bytes:
                    after = offset
                    break
                skipped += len(raw)
                continue
            size += codec.framed_size(raw)
            if found and size > cut.max_bytes:
                after = offset
                break
            found.append(record)
            stored.append(raw)
        return RecordList(found, stored), after

    def follow(self, target: Target) -> Subscription:
        self._check_open()
        return self._tail.subscribe(target, self._last_offset)

    def watch(self, space: str) -> Watch:
        self._check_open()
        return self._tail.watch(space)

    async def end_subscriptions(self) -> None:
        self._tail.close()

    async def first_at_or_after(self, target: Target, timestamp_ns: int) -> int:
        self._check_open()
        log = self._log(target) or _Log()
        # Timestamps never decrease along a log: the first at or after is a bisection.
        index = bisect.bisect_left(log.records, timestamp_ns, key=_timestamp)
        return _offset_of(target)(log.records[index]) if index < len(log.records) else log.last + 1

    async def peek(self, target: Target) -> RecordList | None:
        self._check_open()
        log = self._log(target)
        return RecordList(log.records[-1:]) if log is not None and log.records else None

    async def get_offset(self, consumer: str, target: Target) -> int | None:
        self._check_open()
        return self._offsets.get((consumer, target.space, target.segment))

    async def consumer_lags(self, limit: int) -> tuple[list[tuple[str, Target, int]], bool]:
        self._check_open()
        keys = sorted(self._offsets, key=lambda key: tuple(map(_utf8, key)))
        found = []
        for consumer, space, segment in keys[:limit]:
            target = Target(space, segment)
            behind = self._last_offset(target) - self._offsets[(consumer, space, segment)]
            found.append((consumer, target, max(0, behind)))
        return found, len(keys) > limit

    def _space_info(self, name: str, space: _Space) -> SpaceInfo:
        return SpaceInfo(
            name,
            space.last_position,
            space.last_timestamp_ns,
            space.first(_position),
            len(space.records),
            space.bytes(),
            space.config,
        )

    def _segment_info(self, name: str, segment: _Log) -> SegmentInfo:
        return SegmentInfo(
            name,
            segment.last,
            segment.last_position,
            segment.last_timestamp_ns,
            segment.first(_sequence),
            len(segment.records),
            segment.bytes(),
            segment.deleted,
        )

    async def get_space(self, space: str) -> SpaceInfo | None:
        self._check_open()
        found = self._spaces.get(space)
        return None if found is None or found.deleted else self._space_info(space, found)

    async def get_segment(
        self, space: str, segment: str, include_deleted: bool = False
    ) -> SegmentInfo | None:
        self._check_open()
        found = self._log(Target(space, segment))
        if found is None or (found.deleted and not include_deleted):
            return None
        return self._segment_info(segment, found)

    async def list_spaces(
        self,
        after: str | None,
        limit: int,
        include: Callable[[str], bool] | None = None,
        prefixes: Sequence[str] | None = None,
    ) -> list[SpaceInfo]:
        self._check_open()
        names = []
        for name in sorted(self._spaces, key=_utf8):
            if len(names) == limit:
                break
            if self._spaces[name].deleted or (after is not None and _utf8(name) <= _utf8(after)):
                continue
            if prefixes is not None and not name.startswith(tuple(prefixes)):
                continue
            if include is None or include(name):
                names.append(name)
        return [self._space_info(name, self._spaces[name]) for name in names]

    async def list_segments(
        self, space: str, after: str | None, limit: int, include_deleted: bool = False
    ) -> list[SegmentInfo]:
        self._check_open()
        found_space = self._spaces.get(space)
        segments = {} if found_space is None else found_space.segments
        names = []
        for name in sorted(segments, key=_utf8):
            if len(names) == limit:
                break
            if segments[name].deleted and not include_deleted:
                continue
            if after is None or _utf8(name) > _utf8(after):
                names.append(name)
        return [self._segment_info(name, segments[name]) for name in names]

    # -- life cycle ------------------------------------------------------

    def disk_usage(self) -> DiskUsage | None:
        return None

    @property
    def write_error(self) -> str | None:
        return "the store is closed" if self._closed else None

    def background(self) -> Sequence[BackgroundTask]:
        return (BackgroundTask("dedupe-sweep", SWEEP_SECONDS, self._sweep_expired),)

    async def _sweep_expired(self) -> None:
        now = self._clock()
        for key in [key for key, entry in self._dedupe.items() if entry.expires_ns <= now]:
            del self._dedupe[key]

    async def close(self) -> None:
        self._closed = True
        self._tail.close()


async def open_store(setup: Setup) -> MemoryStore:
    """The memory backend's opener: ``--data`` is not used."""
    return MemoryStore(
        setup.dedupe_window_ns,
        setup.clock,
        setup.follow_linger,
        setup.memory,
        setup.watch_change_bytes,
    )
