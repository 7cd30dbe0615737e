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

Windows exist only for spaces with followers, each bounded by record count
and bytes; they hold only durable records (appended when an fsync covers
them).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from types import TracebackType

from streams import codec
from streams.errors import Unavailable
from streams.model import Records, Target


class Window:
    """The latest durable records of one target: offsets ``first`` and on, contiguous.

    A list with a moving head rather than a deque, so that a follower's read
    is a slice (O(records read)) wherever it starts in the window.
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
            # A gap (the space was not followed when those were committed):
            # start over, so the window stays contiguous.
            self.items.clear()
            self.head = 0
            self.size = 0
            self.first = offset
        self.items.extend(records)
        self.size += sum(len(r) for r in records)
        while len(self) > self.max_records or (self.size > self.max_bytes and len(self) > 1):
            self.size -= len(self.items[self.head])
            self.head += 1
            self.first += 1
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


class Subscription:
    """A follower's hold on a target: keeps its space's window, waits for records.

    Example::

        with tail.subscribe(target, store.last_offset) as subscription:
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


class Tail:
    """Followers' wake-ups and the in-memory windows of followed spaces."""

    def __init__(self, window_records: int, window_bytes: int, linger: float = 0.0) -> None:
        assert window_records >= 1 and window_bytes >= 1 and linger >= 0
        self._window_records = window_records
        self._window_bytes = window_bytes
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
        # space -> segment ("" for the space itself) -> window
        self._windows: dict[str, dict[str, Window]] = {}
        self._closed = False

    @property
    def waiting_targets(self) -> int:
        """Targets with a wake-up event (for tests: it drops back with the followers)."""
        return len(self._events)

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

    def release(self, target: Target) -> None:
        self._followers[target] -= 1
        self._spaces[target.space] -= 1
        assert self._followers[target] >= 0 and self._spaces[target.space] >= 0
        if not self._followers[target]:
            # Nobody waits on it any more (a follower of a target that never
            # gets a record must not leave its event behind).
            del self._followers[target]
            self._events.pop(target, None)
        if not self._spaces[target.space]:
            del self._spaces[target.space]
            self._windows.pop(target.space, None)

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
        segment touched, its name, first sequence and records.
        """
        windows = self._windows.get(space) if records else None
        if windows is None and records and self.followed(space):
            windows = self._windows[space] = {}
        if windows is not None:
            self._window(windows, "").append(first_position, records)
            for segment, first_sequence, segment_records in segments:
                self._window(windows, segment).append(first_sequence, segment_records)
        self._wake(Target(space))
        for segment, _, _ in segments:
            self._wake(Target(space, segment))

    def _window(self, windows: dict[str, Window], segment: str) -> Window:
        window = windows.get(segment)
        if window is None:
            window = windows[segment] = Window(self._window_records, self._window_bytes)
        return window

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
    ) -> Records | None:
        """Records from memory, or None when the window does not hold ``first``."""
        windows = self._windows.get(target.space)
        window = windows.get(target.segment) if windows else None
        found = window.slice(first, last, max_records, max_bytes) if window else None
        if found is None:
            return None
        return Records(codec.consume_response(found), len(found))

    def reset(self) -> None:
        """Drops the windows and wakes every follower (after the store was reopened)."""
        self._windows.clear()
        self._wake_all()

    def close(self) -> None:
        """Ends every wait with Unavailable (at shutdown)."""
        self._closed = True
        self._wake_all()

    def _wake_all(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()
        for event in self._events.values():
            event.set()
        self._events.clear()
