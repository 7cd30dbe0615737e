"""The live tail: wakes followers of a target when it gets durable records,
and keeps the latest records of followed spaces in memory.

Followers pull: each knows the next offset it wants, and reads it from the
in-memory window when the window still holds it, from RocksDB when it does
not (it fell behind, or it has just started). Nothing is queued per
follower, so a follower that stops reading holds one response in gRPC's
flow-controlled buffers and nothing else; when it reads again, it catches up
from disk and rejoins the window. Offsets are dense, so the switch from disk
to memory cannot skip or repeat a record: the follower always asks for
exactly the next offset.

Windows exist only for targets with followers (a space, or one segment of
it), each bounded by record count and bytes, and all of them together by the
server's memory budget (:class:`~streams.memory.MemoryBudget`): past it, the
windows read least recently are dropped first. A window is a cache, so
dropping one only sends its followers to RocksDB. Windows hold only durable
records (appended when an fsync covers them).
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType

from streams import codec
from streams.errors import Unavailable
from streams.memory import MemoryBudget
from streams.model import Cut, Target
from streams.storage.batches import FramedBatch
from streams.storage.watches import MAX_CHANGE_BYTES, Watch, Watches

# The default shape of each followed target's window (records, bytes): the
# RocksDB engine's tail_window_* options and a front's local tails (remote.py).
WINDOW_RECORDS = 10_000
WINDOW_BYTES = 16 << 20

# What a held record costs beyond its bytes: the bytes object's header (33) and
# its slot in the window's list (8). It dominates for small records.
RECORD_OVERHEAD = 41


def _cost(records: Sequence[bytes]) -> int:
    return sum(len(r) for r in records) + RECORD_OVERHEAD * len(records)


class Window:
    """The latest durable records of one target: offsets ``first`` and on, contiguous.

    A list with a moving head rather than a deque, so that a follower's read
    is a slice (O(records read)) wherever it starts in the window. ``size`` is
    what the records cost in memory (:data:`RECORD_OVERHEAD` included).
    """

    __slots__ = ("first", "head", "items", "max_bytes", "max_records", "size")

    def __init__(self, max_records: int, max_bytes: int) -> None:
        self.first = 0  # the offset of items[head]
        self.head = 0
        self.items: list[bytes] = []
        self.size = 0
        self.max_records = max_records
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self.items) - self.head

    @property
    def end(self) -> int:
        """One past the last offset held."""
        return self.first + len(self)

    def append(self, offset: int, records: Sequence[bytes]) -> None:
        if offset != self.end:
            # A gap (the target was not followed when those were committed):
            # start over, so the window stays contiguous.
            self.items.clear()
            self.head = 0
            self.size = 0
            self.first = offset
        self.items.extend(records)
        self.size += _cost(records)
        while len(self) > self.max_records or (self.size > self.max_bytes and len(self) > 1):
            self._drop_first()
        self._compact()

    def trim(self, max_bytes: int) -> None:
        """Drops the oldest records until the window costs at most ``max_bytes``."""
        while self.size > max_bytes and len(self):
            self._drop_first()
        self._compact()

    def _drop_first(self) -> None:
        self.size -= len(self.items[self.head]) + RECORD_OVERHEAD
        # Released now, not at the next compaction: the budget counts it gone.
        self.items[self.head] = b""
        self.head += 1
        self.first += 1

    def _compact(self) -> None:
        if self.head * 2 > len(self.items):
            del self.items[: self.head]  # amortized O(1) per record
            self.head = 0

    def slice(self, first: int, last: int, max_records: int, max_bytes: int) -> list[bytes] | None:
        """Records ``first..last`` as ``Store.read`` cuts them, or None when the
        window does not hold ``first``."""
        if not self.first <= first < self.end:
            return None
        start = self.head + first - self.first
        stop = start + min(last - first + 1, max_records)
        return codec.take(self.items[start:stop], max_records, max_bytes)

    def matching(
        self, first: int, last: int, cut: Cut, prefix: bytes
    ) -> tuple[list[bytes], int] | None:
        """Records ``first..last`` of segments whose name starts with ``prefix``,
        cut as ``Store.read`` cuts them, and the offset after the last one looked
        at; None when the window does not hold ``first``. Skips at most
        ``cut.max_skip_bytes`` of other records (then returns what it has)."""
        if not self.first <= first < self.end:
            return None
        found: list[bytes] = []
        size = skipped = 0
        offset = first
        stop = min(last + 1, self.end)
        while offset < stop and skipped < cut.max_skip_bytes:
            stored = self.items[self.head + offset - self.first]
            if codec.in_segments(stored, 0, prefix):
                size += codec.framed_size(stored)
                if found and size > cut.max_bytes:
                    break
                found.append(stored)
                if len(found) == cut.max_records:
                    return found, offset + 1
            else:
                skipped += len(stored)
            offset += 1
        return found, offset


class Subscription:
    """A follower's hold on a target: keeps its space's window, waits for records.
    Held from :meth:`Tail.subscribe` until closed (``with`` or ``async with``).

    Example::

        async with tail.subscribe(target, store.last_offset) as subscription:
            await subscription.wait(next_offset)
    """

    def __init__(self, tail: Tail, target: Target, last_offset: Callable[[Target], int]) -> None:
        self._tail = tail
        self._target = target
        self._last_offset = last_offset
        self._open = True

    async def wait(self, offset: int) -> None:
        """Returns once ``offset`` of the target is durable; Unavailable at shutdown."""
        while self._last_offset(self._target) < offset:
            await self._tail.changed(self._target)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._tail.release(self._target)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


class Tail:
    """Followers' wake-ups and the in-memory windows of followed targets."""

    def __init__(
        self,
        window_records: int,
        window_bytes: int,
        linger: float = 0.0,
        memory: MemoryBudget | None = None,
        watch_change_bytes: int = MAX_CHANGE_BYTES,
    ) -> None:
        if window_records < 1 or window_bytes < 1 or linger < 0:
            raise ValueError(
                f"tail: window_records ({window_records}) and window_bytes ({window_bytes}) "
                f"must be positive, linger ({linger}) not negative"
            )
        self._window_records = window_records
        self._window_bytes = window_bytes
        self._memory = memory or MemoryBudget()
        self._memory.shrink_windows = self._shrink
        # Wake-ups closer together than `linger` seconds are merged, so that
        # under a high commit rate each follower sends one response per
        # `linger` rather than one per transaction: gRPC's per-message cost,
        # not storage, bounds how many messages the server can send. The first
        # commit after a quiet spell wakes followers at once.
        self._linger = linger
        self._last_wake = float("-inf")
        self._due: set[Target] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._followers: Counter[Target] = Counter()
        self._spaces: Counter[str] = Counter()  # followers per space, all targets
        self._events: dict[Target, asyncio.Event] = {}
        # Windows of followed targets, the least recently read first.
        self._windows: OrderedDict[Target, Window] = OrderedDict()
        self._watches = Watches(watch_change_bytes)
        self._closed = False

    @property
    def waiting_targets(self) -> int:
        """Targets with a wake-up event (for tests: it drops back with the followers)."""
        return len(self._events)

    @property
    def memory(self) -> MemoryBudget:
        return self._memory

    @property
    def windows(self) -> int:
        """Windows held right now (for tests)."""
        return len(self._windows)

    @property
    def active(self) -> int:
        """Open subscriptions (follow streams) right now."""
        return self._followers.total()

    def followed(self, space: str) -> bool:
        return space in self._spaces

    def subscribe(self, target: Target, last_offset: Callable[[Target], int]) -> Subscription:
        if self._closed:
            raise Unavailable("the server is shutting down")
        self._followers[target] += 1
        self._spaces[target.space] += 1
        return Subscription(self, target, last_offset)

    def watch(self, space: str) -> Watch:
        """A watch of ``space``'s segments (see :mod:`streams.storage.watches`)."""
        return self._watches.watch(space)

    @property
    def watching(self) -> int:
        """Open watches right now."""
        return self._watches.active

    def removed(self, space: str, segments: Iterable[str] | None) -> None:
        """Records of ``segments`` of ``space`` (None: of any segment) were
        removed: drops the windows that may hold them and tells watchers.

        A window holds a dense run of offsets, which a removal may cut into
        (a segment trim takes records out of the middle of its space's run);
        its followers read the store until new records start a new window.
        """
        names = None if segments is None else tuple(segments)
        self._drop(Target(space))
        if names is None:
            for target in [t for t in self._windows if t.space == space]:
                self._drop(target)
        else:
            for name in names:
                self._drop(Target(space, name))
        self._watches.changed(space, names)

    def release(self, target: Target) -> None:
        if self._followers[target] < 1 or self._spaces[target.space] < 1:
            raise RuntimeError(f"tail: {target.describe()} released more often than subscribed")
        self._followers[target] -= 1
        self._spaces[target.space] -= 1
        if not self._followers[target]:
            # Nobody waits on it any more (a follower of a target that never
            # gets a record must not leave its event or its window behind).
            del self._followers[target]
            self._events.pop(target, None)
            self._drop(target)
        if not self._spaces[target.space]:
            del self._spaces[target.space]

    async def changed(self, target: Target) -> None:
        """Returns at the next publish that touches ``target`` (or at close)."""
        if self._closed:
            raise Unavailable("the server is shutting down: reconnect to go on following")
        event = self._events.get(target)
        if event is None:
            event = self._events[target] = asyncio.Event()
        await event.wait()
        if self._closed:
            raise Unavailable("the server is shutting down: reconnect to go on following")

    def publish(
        self,
        space: str,
        first_position: int,
        records: Sequence[bytes],
        segments: Sequence[tuple[str, int, Sequence[bytes]]],
    ) -> None:
        """Durable records of one transaction: into the windows, then wake-ups.

        ``records`` are the transaction's records in position order (empty when
        the space had no followers at commit time); ``segments`` holds, per
        segment touched, its name, first sequence and records. Only targets
        with followers get them in a window.
        """
        self._append(Target(space), first_position, records)
        for segment, first_sequence, segment_records in segments:
            self._append(Target(space, segment), first_sequence, segment_records)
        self._wake(Target(space))
        for segment, _, _ in segments:
            self._wake(Target(space, segment))
        self._watches.changed(space, (segment for segment, _, _ in segments))

    def _append(self, target: Target, first: int, records: Sequence[bytes]) -> None:
        if not records or target not in self._followers:
            return
        window = self._windows.get(target)
        if window is None:
            window = self._windows[target] = Window(self._window_records, self._window_bytes)
        before = window.size
        window.append(first, records)
        self._memory.windows += window.size - before
        self._shrink(self._memory.used - self._memory.capacity, keep=target)
        over = self._memory.used - self._memory.capacity
        if over > 0:
            # No other window is left and it still does not fit: keep its newest.
            before = window.size
            window.trim(max(0, window.size - over))
            self._memory.windows -= before - window.size

    def _shrink(self, needed: int, keep: Target | None = None) -> None:
        """Drops the windows read least recently (but ``keep``'s) until ``needed``
        bytes are freed or none is left."""
        freed = 0
        while freed < needed:
            oldest = next((t for t in self._windows if t != keep), None)
            if oldest is None:
                return
            freed += self._drop(oldest)

    def _drop(self, target: Target) -> int:
        window = self._windows.pop(target, None)
        if window is None:
            return 0
        self._memory.windows -= window.size
        return window.size

    def _wake(self, target: Target) -> None:
        if target not in self._events:
            return
        self._due.add(target)
        if self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        delay = self._last_wake + self._linger - loop.time()
        if delay <= 0:
            self._flush()
        else:
            self._timer = loop.call_later(delay, self._flush)

    def _flush(self) -> None:
        """Wakes the followers of every target published since the last wake-up."""
        self._timer = None
        self._last_wake = asyncio.get_running_loop().time()
        for target in self._due:
            event = self._events.pop(target, None)
            if event is not None:
                event.set()
        self._due.clear()

    def read(
        self, target: Target, first: int, last: int, max_records: int, max_bytes: int
    ) -> FramedBatch | None:
        """Records from memory, or None when the window does not hold ``first``."""
        window = self._windows.get(target)
        if window is None:
            return None
        self._windows.move_to_end(target)  # read recently: evicted last
        found = window.slice(first, last, max_records, max_bytes)
        if found is None:
            return None
        return FramedBatch(codec.consume_response(found), len(found))

    def read_matching(
        self, target: Target, first: int, last: int, cut: Cut, prefix: bytes
    ) -> tuple[FramedBatch, int] | None:
        """:meth:`Window.matching` of the target's window, or None when the window
        does not hold ``first``."""
        window = self._windows.get(target)
        if window is None:
            return None
        self._windows.move_to_end(target)
        found = window.matching(first, last, cut, prefix)
        if found is None:
            return None
        records, after = found
        return FramedBatch(codec.consume_response(records), len(records)), after

    def reset(self) -> None:
        """Drops the windows and wakes every follower (after the store was reopened)."""
        self._windows.clear()
        self._memory.windows = 0
        self._wake_all()

    def close(self) -> None:
        """Ends every wait and watch with Unavailable (at shutdown)."""
        self._closed = True
        self._wake_all()
        self._watches.close()

    def _wake_all(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()
        for event in self._events.values():
            event.set()
        self._events.clear()
