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
    ProduceResult,
    Record,
    SegmentAck,
    SegmentInfo,
    SpaceInfo,
    Target,
    Transaction,
    record_bytes,
)
from streams.storage import port
from streams.storage.backend import DEFAULT_DEDUPE_WINDOW_NS, Backend, Setup
from streams.storage.batches import RecordList
from streams.storage.port import BackgroundTask
from streams.storage.tail import Subscription, Tail

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


def _utf8(name: str) -> bytes:
    return name.encode("utf-8")


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
    ) -> None:
        self._dedupe_window_ns = dedupe_window_ns
        self._clock = clock
        # Records of each space by position - 1, of each segment by sequence - 1.
        self._spaces: dict[str, list[Record]] = {}
        self._segments: dict[str, dict[str, list[Record]]] = {}
        self._dedupe: dict[tuple[str, str], _Dedupe] = {}
        self._offsets: dict[tuple[str, str, str], int] = {}
        # Wake-ups only: it is handed no records, so it keeps no windows.
        self._tail = Tail(1, 1, follow_linger, memory)
        self._closed = False

    def _log(self, target: Target) -> list[Record]:
        if target.is_space:
            return self._spaces.get(target.space, [])
        return self._segments.get(target.space, {}).get(target.segment, [])

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the store is closed: the server is shutting down")

    # -- writes ----------------------------------------------------------

    async def produce(self, txn: Transaction) -> ProduceResult:
        self._check_open()
        now = self._clock()
        entry = self._dedupe.get((txn.space, txn.transaction_id))
        if txn.transaction_id and entry is not None and entry.expires_ns > now:
            if entry.fingerprint != txn.fingerprint:
                raise port.already_exists(txn)
            return dataclasses.replace(entry.result, duplicate=True)
        for append in txn.appends:
            actual = len(self._log(Target(txn.space, append.segment)))
            if append.expected_sequence is not None and append.expected_sequence != actual:
                raise port.sequence_mismatch(append.segment, actual, append.expected_sequence)
        space = self._spaces.setdefault(txn.space, [])
        segments = self._segments.setdefault(txn.space, {})
        ts = max(now, space[-1].timestamp_ns if space else 0)
        first_position = len(space) + 1
        acks = []
        for append in txn.appends:
            segment = segments.setdefault(append.segment, [])
            first_sequence = len(segment) + 1
            for body in append.bodies:
                record = Record(
                    txn.space,
                    append.segment,
                    len(segment) + 1,
                    len(space) + 1,
                    ts,
                    txn.transaction_id,
                    body,
                )
                segment.append(record)
                space.append(record)
            acks.append(SegmentAck(append.segment, first_sequence, len(segment)))
        result = ProduceResult(tuple(acks), first_position, len(space), ts)
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
        last = len(self._log(target))
        if offset > last:
            raise port.out_of_range(offset, last, target)
        key = (consumer, target.space, target.segment)
        stored = self._offsets.get(key)
        if expected is not None and expected != (stored or 0):
            raise port.offset_mismatch(expected, stored, consumer, target)
        self._offsets[key] = offset
        return offset

    # -- reads -----------------------------------------------------------

    async def last_offset(self, target: Target) -> int:
        self._check_open()
        return len(self._log(target))

    def _last_offset(self, target: Target) -> int:
        return len(self._log(target))

    async def read(
        self, target: Target, first: int, last: int, cut: Cut, segment_prefix: bytes = b""
    ) -> tuple[RecordList, int]:
        self._check_open()
        log = self._log(target)
        offset = max(first, 1)
        last = min(last, len(log))
        found: list[Record] = []
        stored: list[bytes] = []
        size = skipped = 0
        while offset <= last and len(found) < cut.max_records:
            record = log[offset - 1]
            raw = codec.stored(record)
            if segment_prefix and not _utf8(record.segment).startswith(segment_prefix):
                if skipped >= cut.max_skip_bytes:
                    break
                skipped += len(raw)
                offset += 1
                continue
            size += codec.framed_size(raw)
            if found and size > cut.max_bytes:
                break
            found.append(record)
            stored.append(raw)
            offset += 1
        return RecordList(found, stored), offset

    def follow(self, target: Target) -> Subscription:
        self._check_open()
        return self._tail.subscribe(target, self._last_offset)

    async def end_subscriptions(self) -> None:
        self._tail.close()

    async def first_at_or_after(self, target: Target, timestamp_ns: int) -> int:
        self._check_open()
        # Timestamps never decrease along a log: the first at or after is a bisection.
        return bisect.bisect_left(self._log(target), timestamp_ns, key=_timestamp) + 1

    async def peek(self, target: Target) -> RecordList | None:
        self._check_open()
        log = self._log(target)
        return RecordList(log[-1:]) if log else None

    async def get_offset(self, consumer: str, target: Target) -> int | None:
        self._check_open()
        return self._offsets.get((consumer, target.space, target.segment))

    async def consumer_lags(self, limit: int) -> tuple[list[tuple[str, Target, int]], bool]:
        self._check_open()
        keys = sorted(self._offsets, key=lambda key: tuple(map(_utf8, key)))
        found = []
        for consumer, space, segment in keys[:limit]:
            target = Target(space, segment)
            behind = len(self._log(target)) - self._offsets[(consumer, space, segment)]
            found.append((consumer, target, max(0, behind)))
        return found, len(keys) > limit

    async def list_spaces(
        self,
        after: str | None,
        limit: int,
        include: Callable[[str], bool] | None = None,
        prefixes: Sequence[str] | None = None,
    ) -> list[SpaceInfo]:
        self._check_open()
        found = []
        for name in sorted(self._spaces, key=_utf8):
            if after is not None and _utf8(name) <= _utf8(after):
                continue
            if prefixes is not None and not name.startswith(tuple(prefixes)):
                continue
            if include is None or include(name):
                log = self._spaces[name]
                last = log[-1]
                found.append(
                    SpaceInfo(
                        name, last.position, last.timestamp_ns, 1, len(log), _bytes(log), None
                    )
                )
        return found[:limit]

    async def list_segments(
        self, space: str, after: str | None, limit: int, include_deleted: bool = False
    ) -> list[SegmentInfo]:
        self._check_open()
        segments = self._segments.get(space, {})
        found = []
        for name in sorted(segments, key=_utf8):
            if after is None or _utf8(name) > _utf8(after):
                log = segments[name]
                last = log[-1]
                found.append(
                    SegmentInfo(
                        name,
                        last.sequence,
                        last.position,
                        last.timestamp_ns,
                        1,
                        len(log),
                        _bytes(log),
                    )
                )
        return found[:limit]

    # -- life cycle ------------------------------------------------------

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


def _bytes(log: list[Record]) -> int:
    return sum(record_bytes(record.body) for record in log)


def _timestamp(record: Record) -> int:
    return record.timestamp_ns


async def open_store(setup: Setup) -> MemoryStore:
    """The memory backend's opener: ``--data`` is not used."""
    return MemoryStore(setup.dedupe_window_ns, setup.clock, setup.follow_linger, setup.memory)
