"""The numbers of spaces and segments: a cache within a byte bound over the catalog on disk.

Every space and segment has a catalog entry (see :mod:`streams.storage.rocksdb.layout`) holding
its last numbers, written in the same batch as its records. Start-up reads
none of them: an entry is read when first used and kept in a cache of the
most recently used ones, at most ``capacity_bytes`` (estimated, see
:data:`ENTRY_BYTES`), so memory follows the bound, not how many spaces and
segments exist. Spaces get the same treatment as segments: a million spaces
of one segment each must fit as well as one space of a million segments.

Each state has two entries: ``last`` as written, ``durable`` as readers see
it (moved once the write is fsynced). Until they meet, the durable one exists
only here (the entry on disk already holds the last one), so such a state is
*pending*: held apart and never evicted. Once its writes are durable it
becomes evictable again, and read back later from its entry on disk, where
durable == last. Pending states are those of writes awaiting their fsync: at
most the segments of the Produces in flight and of one removal slice.

A segment's entry is read within its space's: a space delete writes only the
space's entry, and every segment whose last position it was deleted through
reads as deleted (:meth:`SegmentEntry.within`).

A name that has no entry is not cached: looking up names that do not exist
costs a read each time and no memory.

Example::

    catalog = Catalog(64 << 20, get, damaged)
    with catalog.held():  # nothing is evicted while a commit holds states
        segment = catalog.segment("orders", "eu") or catalog.new_segment("orders", "eu")
        ...  # write the batch
        catalog.pin(segment)
        segment.last = new_entry
    ...  # after the fsync
    segment.durable = new_entry
    catalog.settle(segment)
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, NamedTuple, TypeVar

from streams.errors import InvariantViolation
from streams.storage.rocksdb import layout as keys
from streams.storage.rocksdb.layout import CONFIGURED, DELETED
from streams.storage.rocksdb.layout import SEGMENT_CATALOG as SEGMENT_ENTRY
from streams.storage.rocksdb.layout import SPACE_CATALOG as SPACE_ENTRY

# Memory of one cached segment beside its key's length: the state object, its
# entry tuple and numbers, the key object and the cache's link and slot
# (CPython 3.11, 64-bit; measured with tracemalloc by
# tests/unit/test_catalog.py, which keeps this an upper bound). A space costs
# about as much.
ENTRY_BYTES = 400

_State = TypeVar("_State", "SpaceState", "SegmentState")


def entry_bytes(key: bytes) -> int:
    """What a cached state of catalog key ``key`` is counted as."""
    return ENTRY_BYTES + len(key)


class SpaceEntry(NamedTuple):
    """A space's catalog entry (see :data:`~.layout.SPACE_CATALOG`)."""

    position: int = 0
    first: int = 1
    records: int = 0
    size: int = 0  # bytes retained
    first_ts: int = 0
    holes: int = 0
    deleted_through: int = 0
    flags: int = 0
    ts: int = 0

    @property
    def deleted(self) -> bool:
        return bool(self.flags & DELETED)

    @property
    def configured(self) -> bool:
        return bool(self.flags & CONFIGURED)

    @property
    def found(self) -> bool:
        """Written to or configured, and not deleted since."""
        return not self.deleted and bool(self.position or self.configured)

    def pack(self) -> bytes:
        return SPACE_ENTRY.pack(*self)


class SegmentEntry(NamedTuple):
    """A segment's catalog entry (see :data:`~.layout.SEGMENT_CATALOG`)."""

    sequence: int = 0
    position: int = 0
    first: int = 1
    size: int = 0  # bytes retained
    flags: int = 0
    ts: int = 0

    @property
    def deleted(self) -> bool:
        return bool(self.flags & DELETED)

    @property
    def records(self) -> int:
        return self.sequence - self.first + 1

    def pack(self) -> bytes:
        return SEGMENT_ENTRY.pack(*self)

    def within(self, space: SpaceEntry) -> SegmentEntry:
        """This entry as its space's entry leaves it: a segment whose last
        position the space was deleted through is deleted (a space delete
        writes that one number instead of every segment's entry)."""
        if self.flags & DELETED or self.position > space.deleted_through:
            return self
        return self._replace(first=self.sequence + 1, size=0, flags=DELETED)


_Entry = TypeVar("_Entry", "SpaceEntry", "SegmentEntry")


class _EntryState(Generic[_Entry]):
    """A catalog entry as written (``last``) and as readers see it
    (``durable``, once the writes that made it are fsynced); ``key`` is its
    catalog key."""

    __slots__ = ("durable", "key", "last")

    def __init__(self, key: bytes, entry: _Entry) -> None:
        self.key = key
        self.last = self.durable = entry

    @property
    def settled(self) -> bool:
        """Whether every write is durable."""
        return self.durable is self.last or self.durable == self.last


class SpaceState(_EntryState["SpaceEntry"]):
    """A space's entry (see :class:`_EntryState`)."""

    __slots__ = ()


class SegmentState(_EntryState["SegmentEntry"]):
    """A segment's entry (see :class:`_EntryState`)."""

    __slots__ = ()


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
        # Least recent first.
        self._evictable: OrderedDict[bytes, SpaceState | SegmentState] = OrderedDict()
        self._pending: dict[bytes, SpaceState | SegmentState] = {}
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
        has never been written to nor configured."""
        key = keys.space_catalog_key(name)
        state = self._cached(key)
        if state is not None:
            if not isinstance(state, SpaceState):
                raise InvariantViolation(f"catalog key {key!r} holds a segment's state")
            return state
        raw = self._get(key, f"the catalog entry of space {name!r}")
        if raw is None:
            return None
        entry = self.space_entry(raw, f"space {name!r}")
        self.loads += 1
        return self._add(SpaceState(key, entry), self._evictable)

    def segment(
        self, space: str, name: str, owner: SpaceState | None = None
    ) -> SegmentState | None:
        """The state of segment ``name`` of ``space`` (whose state is ``owner``
        when the caller has it), read from disk if not cached; None if it has
        never been written to."""
        key = keys.segment_catalog_key(space, name)
        state = self._cached(key)
        if state is not None:
            if not isinstance(state, SegmentState):
                raise InvariantViolation(f"catalog key {key!r} holds a space's state")
            owner = owner or self.space(space)
            if owner is None:
                raise InvariantViolation(f"segment state {key!r} is cached without its space")
            self._within(state, owner)
            return state
        what = f"segment {name!r} of space {space!r}"
        raw = self._get(key, f"the catalog entry of {what}")
        if raw is None:
            return None
        entry = self.segment_entry(raw, what)
        owner = owner or self.space(space)
        # Both entries are written in one batch: a segment past its space is damage.
        if owner is None or entry.position > owner.last.position:
            raise self._damaged(
                f"the catalog entry of {what} says position {entry.position}, past its space's "
                f"{owner.last.position if owner else 'missing entry'}"
            )
        self.loads += 1
        state = SegmentState(key, entry)
        self._within(state, owner)
        return self._add(state, self._evictable)

    @staticmethod
    def _within(state: SegmentState, space: SpaceState) -> None:
        """Applies the space's deletes: its written one to the segment's written
        entry, its durable one to the durable entry (a space delete awaiting
        its fsync is not seen by readers yet)."""
        if space.last.deleted_through:
            state.last = state.last.within(space.last)
        if space.durable.deleted_through:
            state.durable = state.durable.within(space.durable)

    def listed_space(self, key: bytes, raw: bytes) -> SpaceEntry:
        """The durable entry of the space whose catalog entry a scan found as
        ``key``, ``raw``; read without making it recently used."""
        state = self._pending.get(key) or self._evictable.get(key)
        if isinstance(state, SpaceState):
            return state.durable
        if state is not None:
            raise InvariantViolation(f"catalog key {key!r} holds a segment's state")
        # Not cached, so not pending: the entry on disk holds the durable numbers.
        return self.space_entry(raw, f"catalog key {key!r}")

    def listed_segment(self, key: bytes, raw: bytes, space: SpaceEntry) -> SegmentEntry:
        """The durable entry of a segment a scan found, within its space's
        durable entry ``space``; see :meth:`listed_space`."""
        state = self._pending.get(key) or self._evictable.get(key)
        if isinstance(state, SegmentState):
            return state.durable.within(space)
        if state is not None:
            raise InvariantViolation(f"catalog key {key!r} holds a space's state")
        return self.segment_entry(raw, f"catalog key {key!r}").within(space)

    def space_entry(self, raw: bytes, what: str) -> SpaceEntry:
        self._check_size(SPACE_ENTRY.size, raw, what)
        return SpaceEntry._make(SPACE_ENTRY.unpack(raw))

    def segment_entry(self, raw: bytes, what: str) -> SegmentEntry:
        self._check_size(SEGMENT_ENTRY.size, raw, what)
        return SegmentEntry._make(SEGMENT_ENTRY.unpack(raw))

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
        return self._add(SpaceState(keys.space_catalog_key(name), SpaceEntry()), self._pending)

    def new_segment(self, space: str, name: str) -> SegmentState:
        """A pending state with no numbers, for a segment being written to first."""
        state = SegmentState(keys.segment_catalog_key(space, name), SegmentEntry())
        return self._add(state, self._pending)

    def pin(self, state: SpaceState | SegmentState) -> None:
        """Keeps ``state`` (being written to: its last entry moved) until :meth:`settle`."""
        if self._pending.get(state.key) is state:
            return
        if self._evictable.pop(state.key, None) is not state:
            raise InvariantViolation(f"catalog state {state.key!r} was evicted while in use")
        self._pending[state.key] = state

    def settle(self, state: SpaceState | SegmentState) -> None:
        """Makes ``state`` evictable again once its durable entry caught up."""
        if not state.settled:
            return
        if self._pending.pop(state.key, None) is not state:
            raise InvariantViolation(f"catalog state {state.key!r} settled but was not pending")
        state.durable = state.last  # one tuple for both, not two equal ones
        self._evictable[state.key] = state
        self._trim()

    def clear(self) -> None:
        """Forgets every state (the store reopened: disk is the truth again)."""
        self._evictable.clear()
        self._pending.clear()
        self.bytes = 0

    # -- inside -----------------------------------------------------------

    def _cached(self, key: bytes) -> SpaceState | SegmentState | None:
        state = self._pending.get(key)
        if state is None:
            state = self._evictable.get(key)
            if state is not None:
                self._evictable.move_to_end(key)
        return state

    def _add(self, state: _State, where: dict[bytes, SpaceState | SegmentState]) -> _State:
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

    def _check_size(self, size: int, raw: bytes, what: str) -> None:
        if len(raw) != size:
            raise self._damaged(f"the catalog entry of {what} is {len(raw)} bytes, not {size}")
