"""Catalog watches: who watches which space's segments, and what changed since
each watcher last looked.

A watch does not queue events: it keeps the set of segment names that changed
since its owner last called :meth:`Watch.changes`, so a watcher that falls
behind gets each changed name once, and reads the segment's latest state then
(never a backlog). The set is bounded (``max_change_bytes`` of names); past
that the watch only remembers that it overflowed, and its owner re-reads every
segment of the space. Memory per watch is therefore fixed, whatever the write
rate or the number of segments.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType

from streams.errors import Unavailable

# Names a watch remembers before it overflows, in UTF-8 bytes (plus a set
# slot each): with --max-concurrent-streams watchers at most, a few dozen MiB.
MAX_CHANGE_BYTES = 16 << 10
# What one remembered name costs beyond its bytes: the str header and its set slot.
NAME_OVERHEAD = 64


class Watch:
    """One watcher's changes of one space, from :meth:`Watches.watch`.

    Example::

        async with watches.watch("orders") as watch:
            names = await watch.changes()  # None: re-read every segment
    """

    def __init__(self, watches: Watches, space: str, max_change_bytes: int) -> None:
        self._watches = watches
        self._space = space
        self._max_change_bytes = max_change_bytes
        self._changed: set[str] = set()
        self._size = 0
        self._overflow = False
        self._event = asyncio.Event()

    def note(self, names: Iterable[str] | None) -> None:
        """Remembers that ``names`` changed (None: the whole space changed)."""
        if not self._overflow:
            if names is None:
                self._overflow_now()
            else:
                for name in names:
                    if name not in self._changed:
                        self._changed.add(name)
                        self._size += len(name.encode("utf-8")) + NAME_OVERHEAD
                if self._size > self._max_change_bytes:
                    self._overflow_now()
        self._event.set()

    def _overflow_now(self) -> None:
        self._overflow = True
        self._changed = set()
        self._size = 0

    async def changes(self) -> frozenset[str] | None:
        """Waits for a change, then returns the changed names (None: overflow)."""
        while not (self._changed or self._overflow):
            if self._watches.closed:
                raise Unavailable("the server is shutting down: watch again to go on")
            self._event.clear()
            await self._event.wait()
        if self._watches.closed:
            raise Unavailable("the server is shutting down: watch again to go on")
        found = None if self._overflow else frozenset(self._changed)
        self._overflow = False
        self._changed = set()
        self._size = 0
        return found

    async def __aenter__(self) -> Watch:
        self._watches.add(self._space, self)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._watches.discard(self._space, self)


class Watches:
    """Every open watch, by space."""

    def __init__(self, max_change_bytes: int = MAX_CHANGE_BYTES) -> None:
        if max_change_bytes < 1:
            raise ValueError(f"watches: max_change_bytes ({max_change_bytes}) must be positive")
        self._max_change_bytes = max_change_bytes
        self._by_space: dict[str, set[Watch]] = {}
        self.closed = False

    @property
    def active(self) -> int:
        """Open watches right now."""
        return sum(len(found) for found in self._by_space.values())

    def watch(self, space: str) -> Watch:
        """A watch of ``space``'s segments, open while its ``async with`` is."""
        if self.closed:
            raise Unavailable("the server is shutting down")
        return Watch(self, space, self._max_change_bytes)

    def add(self, space: str, watch: Watch) -> None:
        if self.closed:
            raise Unavailable("the server is shutting down")
        self._by_space.setdefault(space, set()).add(watch)

    def discard(self, space: str, watch: Watch) -> None:
        found = self._by_space.get(space)
        if found is not None:
            found.discard(watch)
            if not found:
                del self._by_space[space]

    def changed(self, space: str, names: Iterable[str] | None) -> None:
        """Segments ``names`` of ``space`` changed (None: every one may have)."""
        found = self._by_space.get(space)
        if found:
            listed = None if names is None else tuple(names)
            for watch in found:
                watch.note(listed)

    def close(self) -> None:
        """Ends every watch's wait with Unavailable (at shutdown)."""
        self.closed = True
        for found in self._by_space.values():
            for watch in found:
                watch.note(())
