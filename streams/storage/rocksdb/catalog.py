"""The numbers of spaces and segments: a cache within a byte bound over the catalog on disk.

Every space and segment has a catalog entry (see :mod:`streams.storage.rocksdb.layout`) holding
its last numbers, written in the same batch as its records. Start-up reads
none of them: an entry is read when first used and kept in a cache of the
most recently used ones, at most ``capacity_bytes`` (estimated, see
:data:`ENTRY_BYTES`), so memory follows the bound, not how many spaces and
segments exist. Spaces get the same treatment as segments: a million spaces
of one segment each must fit as well as one space of a million segments.

Each state has two sets of numbers: ``last_*`` as written, ``durable_*`` as
readers see them (moved once the write is fsynced). Until they meet, the
durable ones exist only here (the entry on disk already holds the last ones),
so such a state is *pending*: held apart and never evicted. Once its writes
are durable it becomes evictable again, and read back later from its entry on
disk, where durable == last: the same numbers. Pending states are those of
writes awaiting their fsync, at most the segments of the Produces in flight.

A name that has no entry is not cached: looking up names that do not exist
costs a read each time and no memory.

Example::

    catalog = Catalog(64 << 20, get, damaged)
    with catalog.held():  # nothing is evicted while a commit holds states
        segment = catalog.segment("orders", "eu") or catalog.new_segment("orders", "eu")
        ...  # write the batch, move segment.last_*
        catalog.pin(segment)
    ...  # after the fsync: move segment.durable_*
    catalog.settle(segment)
"""

from __future__ import annotations

import contextlib
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from streams.errors import InvariantViolation
from streams.storage.rocksdb import layout as keys
from streams.storage.rocksdb.layout import SEGMENT_CATALOG as SEGMENT_ENTRY
from streams.storage.rocksdb.layout import SPACE_CATALOG as SPACE_ENTRY

# Memory of one cached segment beside its key's length: the state object, its
# numbers, the key object and the cache's link and slot (CPython 3.11, 64-bit;
# measured with tracemalloc by tests/unit/test_catalog.py, which keeps this an
# upper bound). A space costs less.
ENTRY_BYTES = 400

_State = TypeVar("_State", bound="SpaceState")


def entry_bytes(key: bytes) -> int:
    """What a cached state of catalog key ``key`` is counted as."""
    return ENTRY_BYTES + len(key)


class SpaceState:
    """A space's last and durable position and timestamp; ``key`` is its catalog key."""

    __slots__ = ("durable_position", "durable_ts", "key", "last_position", "last_ts")

    def __init__(self, key: bytes, position: int, ts: int) -> None:
        self.key = key
        self.last_position = self.durable_position = position
        self.last_ts = self.durable_ts = ts

    @property
    def settled(self) -> bool:
        """Whether every write is durable (positions only grow with each write)."""
        return self.durable_position == self.last_position


class SegmentState(SpaceState):
    """A segment's numbers: its sequences beside its last position and timestamp."""

    __slots__ = ("durable_sequence", "last_sequence")

    def __init__(self, key: bytes, sequence: int, position: int, ts: int) -> None:
        super().__init__(key, position, ts)
        self.last_sequence = self.durable_sequence = sequence


class Catalog:
    """Space and segment states: the recently used within ``capacity_bytes``,
    plus the pending ones; the rest read back from disk when used.

    ``get(key, what)`` reads a catalog entry (None if absent); ``damaged(text)``
    makes the error for an entry that cannot be right (the store's DataLoss).
    """

    def __init__(
        self,
        capacity_bytes: int,
        get: Callable[[bytes, str], bytes | None],
        damaged: Callable[[str], Exception],
    ) -> None:
        if capacity_bytes < 1:
            raise ValueError(f"catalog cache capacity must be positive, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._get = get
        self._damaged = damaged
        self._evictable: OrderedDict[bytes, SpaceState] = OrderedDict()  # least recent first
        self._pending: dict[bytes, SpaceState] = {}
        self._holds = 0
        self.bytes = 0  # estimated, both kinds
        self.loads = 0  # entries read from disk
        self.evictions = 0

    @property
    def evictable(self) -> int:
        return len(self._evictable)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- look-ups ---------------------------------------------------------

    def space(self, name: str) -> SpaceState | None:
        """The state of space ``name``, read from disk if not cached; None if it
        has never been written to."""
        key = keys.space_catalog_key(name)
        state = self._cached(key)
        if state is not None:
            return state
        raw = self._get(key, f"the catalog entry of space {name!r}")
        if raw is None:
            return None
        position, ts = self._decode(SPACE_ENTRY, raw, f"space {name!r}")
        self.loads += 1
        return self._add(SpaceState(key, position, ts), self._evictable)

    def segment(self, space: str, name: str) -> SegmentState | None:
        """The state of segment ``name`` of ``space``, read from disk if not cached;
        None if it has never been written to."""
        key = keys.segment_catalog_key(space, name)
        state = self._cached(key)
        if state is not None:
            if not isinstance(state, SegmentState):
                raise InvariantViolation(f"catalog key {key!r} holds a space's state")
            return state
        what = f"segment {name!r} of space {space!r}"
        raw = self._get(key, f"the catalog entry of {what}")
        if raw is None:
            return None
        sequence, position, ts = self._decode(SEGMENT_ENTRY, raw, what)
        owner = self.space(space)
        # Both entries are written in one batch: a segment past its space is damage.
        if owner is None or position > owner.last_position:
            raise self._damaged(
                f"the catalog entry of {what} says position {position}, past its space's "
                f"{owner.last_position if owner else 'missing entry'}"
            )
        self.loads += 1
        return self._add(SegmentState(key, sequence, position, ts), self._evictable)

    def listed_space(self, key: bytes, raw: bytes) -> tuple[int, int]:
        """Durable position and timestamp of the space whose catalog entry a scan
        found as ``key``, ``raw``; read without making it recently used."""
        state = self._pending.get(key) or self._evictable.get(key)
        if state is not None:
            return state.durable_position, state.durable_ts
        # Not cached, so not pending: the entry on disk holds the durable numbers.
        return self._decode(SPACE_ENTRY, raw, f"catalog key {key!r}")

    def listed_segment(self, key: bytes, raw: bytes) -> tuple[int, int, int]:
        """Durable sequence, position and timestamp of a segment a scan found; see
        :meth:`listed_space`."""
        state = self._pending.get(key) or self._evictable.get(key)
        if isinstance(state, SegmentState):
            return state.durable_sequence, state.durable_position, state.durable_ts
        if state is not None:
            raise InvariantViolation(f"catalog key {key!r} holds a space's state")
        return self._decode(SEGMENT_ENTRY, raw, f"catalog key {key!r}")

    # -- writes -----------------------------------------------------------

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Nothing is evicted within: every state looked up stays the cached one,
        so a commit can move it and :meth:`pin` it. The bound is restored on exit."""
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1
            self._trim()

    def new_space(self, name: str) -> SpaceState:
        """A pending state with no numbers, for a space being written to first."""
        return self._add(SpaceState(keys.space_catalog_key(name), 0, 0), self._pending)

    def new_segment(self, space: str, name: str) -> SegmentState:
        """A pending state with no numbers, for a segment being written to first."""
        state = SegmentState(keys.segment_catalog_key(space, name), 0, 0, 0)
        return self._add(state, self._pending)

    def pin(self, state: SpaceState) -> None:
        """Keeps ``state`` (being written to: its last numbers moved) until :meth:`settle`."""
        if self._pending.get(state.key) is state:
            return
        if self._evictable.pop(state.key, None) is not state:
            raise InvariantViolation(f"catalog state {state.key!r} was evicted while in use")
        self._pending[state.key] = state

    def settle(self, state: SpaceState) -> None:
        """Makes ``state`` evictable again once its durable numbers caught up."""
        if not state.settled:
            return
        if self._pending.pop(state.key, None) is not state:
            raise InvariantViolation(f"catalog state {state.key!r} settled but was not pending")
        self._evictable[state.key] = state
        self._trim()

    def clear(self) -> None:
        """Forgets every state (the store reopened: disk is the truth again)."""
        self._evictable.clear()
        self._pending.clear()
        self.bytes = 0

    # -- inside -----------------------------------------------------------

    def _cached(self, key: bytes) -> SpaceState | None:
        state = self._pending.get(key)
        if state is None:
            state = self._evictable.get(key)
            if state is not None:
                self._evictable.move_to_end(key)
        return state

    def _add(self, state: _State, where: dict[bytes, SpaceState]) -> _State:
        if state.key in self._pending or state.key in self._evictable:
            raise InvariantViolation(f"catalog state {state.key!r} is cached twice")
        where[state.key] = state
        self.bytes += entry_bytes(state.key)
        self._trim()
        return state

    def _trim(self) -> None:
        if self._holds:
            return
        while self.bytes > self.capacity_bytes and self._evictable:
            key, _ = self._evictable.popitem(last=False)
            self.bytes -= entry_bytes(key)
            self.evictions += 1

    def _decode(self, layout: struct.Struct, raw: bytes, what: str) -> tuple[Any, ...]:
        if len(raw) != layout.size:
            raise self._damaged(
                f"the catalog entry of {what} is {len(raw)} bytes, not {layout.size}"
            )
        return layout.unpack(raw)
