"""The storage port: what the service asks of a storage backend, and the rules
every backend keeps.

Every operation is ``async`` (a networked backend must not block the event
loop), and takes and returns the domain types of :mod:`streams.model`:
validated commands in, numbered records and results out, never a protobuf,
gRPC or engine type. Offsets are plain ints: a sequence for a segment target,
a position for a space target. A record's body (payload and metadata, as
:class:`~streams.model.SegmentAppend` carries it) is opaque to a backend: it
stores the bytes and gives them back unchanged.

Records come out as a :class:`RecordBatch`, which the service hands to the
wire as it is (:meth:`RecordBatch.to_wire`). A backend that numbers records
at commit (JetStream assigns stream sequences then) keeps them its own way and
frames them on read; the RocksDB engine stores them framed and slices stored
bytes onto the wire, as its own optimisation (:mod:`streams.storage.batches`
has both kinds).

The rules, each checked for every backend by tests/storage/ (the conformance
suite; the test that checks a rule is named after it):

1. **All or nothing.** :meth:`Store.produce` commits a transaction whole or
   not at all: on any error nothing of it is written, and no reader ever sees
   part of it (a read's bounds may still cut inside one).
2. **Durable point.** Produce and Commit return once durable (for the
   RocksDB engine: in the fsynced write-ahead log; for the memory backend at
   once, as it promises no durability). Every read (:meth:`Store.read`,
   :meth:`Store.last_offset`, :meth:`Store.peek`,
   :meth:`Store.first_at_or_after`, the lists, :meth:`Store.get_offset`) is
   capped at what is durable: a reader never sees what a crash could take
   back.
3. **Dense numbers.** A segment's sequences are 1, 2, 3, ... and a space's
   positions 1, 2, 3, ... in commit order, positions following the order of
   the writes, then of the records; under concurrent producers no number is
   shared or skipped.
4. **Time.** One timestamp per transaction, from the backend's clock;
   timestamps never decrease along the positions of a space (a clock that
   steps back reuses the last timestamp).
5. **Duplicates.** A transaction whose id (same space) was committed within
   the dedupe window is not written again: with the same fingerprint it is
   answered with the original result and ``duplicate=True``, only once the
   original is durable; with another fingerprint it raises
   :class:`~streams.errors.AlreadyExists`. The duplicate check comes before
   the ``expected_sequence`` check; a durable backend keeps the entries across
   restarts; past the window the id is free again.
6. **Compare-and-set.** ``expected_sequence`` compares with the segment's
   last sequence (0: the segment has none); a mismatch on any write raises
   :class:`~streams.errors.SequenceMismatch` naming that segment and its last
   sequence. Offsets: :meth:`Store.commit_offset` raises
   :class:`~streams.errors.OutOfRange` past the target's last offset, then
   :class:`~streams.errors.OffsetMismatch` when ``expected`` (0 matching "none
   stored" too) differs from the stored offset.
7. **Follow.** Once :meth:`Store.follow` is entered, every transaction that
   becomes durable afterwards wakes :meth:`Subscription.wait`, and only once
   it is durable; a target that does not exist yet can be followed;
   :meth:`Store.end_subscriptions` ends every wait with
   :class:`~streams.errors.Unavailable`.
8. **Limits.** A read returns at most ``cut.max_records`` records and
   ``cut.max_bytes`` bytes of :meth:`RecordBatch.to_wire` (always at least one
   record when one is in range), and a read by segment prefix looks past about
   ``cut.max_skip_bytes`` of other records at most per call.
9. **Names.** Names are prefix-safe (segment ``a`` never sees the records of
   ``ab``, nor space ``m`` those of ``m/x``) and lists order them by their
   UTF-8 bytes.
10. **Closing.** After :meth:`Store.close` every operation raises
    :class:`~streams.errors.Unavailable`.
11. **Prefix removal.** :meth:`Store.trim`, the deletes and retention remove
    a prefix of each segment (a space trim: every record below a position,
    whatever its segment), so a segment's retained records stay dense from its
    first to its last sequence; a space read skips removed records (its
    positions may jump). A removal is one durable change, visible to every
    read, peek, list, info and follower once the call returns, and never
    undone (not by a crash either); the disk space may be reclaimed later.
    Reads that start before the first retained offset start there.
12. **Numbers are never reused.** After any removal, even a delete, the next
    sequence of a segment and position of a space follow the last ones ever
    assigned; ``expected_sequence`` compares with that last sequence. A
    deleted target is unknown to trims and infos (NotFound) and leaves the
    lists until it is written again; deleting what does not exist is a no-op.
13. **Offsets survive trims.** A committed offset below the first retained
    offset is kept; a delete removes the target's offsets (a space delete:
    every offset of the space, and its config), and a commit to a deleted
    target is NotFound until it is written again.
14. **Catalog changes are watched.** Once :meth:`Store.watch` is entered,
    every durable change of a segment's numbers in that space (append, trim,
    delete) is reported by :meth:`SegmentWatch.changes`, coalesced by name.
15. **Groups are storage.** A consumer group's config and durable progress
    (:class:`~streams.model.GroupProgress`) live in the backend, per space.
    :meth:`Store.create_group` stores a group once (a second create returns
    the stored config unchanged); :meth:`Store.settle_group` returns once
    its progress is durable, written in one atomic step with the records it
    parks (one transaction appended to the dead-letter segment: both or
    neither survive a crash); ``acked_through`` never goes back
    (InvariantViolation); progress survives restarts; a deleted group is
    gone at once (settling it raises NotFound and writes nothing, parked
    records included). A delete of the space removes its groups with its
    offsets and config (the contract's DeleteSpace), in the same durable
    change. A backend that cannot keep groups raises
    :class:`~streams.errors.Unimplemented` from every group method.

A backend is picked by name from :mod:`streams.storage.registry`; it owns its
options, its start-up, its background work (:meth:`Store.background`, run by
the server's supervisor) and its shutdown (:meth:`Store.close`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from streams.errors import (
    AlreadyExists,
    InvariantViolation,
    NotFound,
    OffsetMismatch,
    OutOfRange,
    ResourceExhausted,
    SequenceMismatch,
)
from streams.model import (
    Cut,
    GroupConfig,
    GroupState,
    ProduceResult,
    Record,
    Removed,
    RetentionPolicy,
    SegmentInfo,
    SpaceConfig,
    SpaceInfo,
    Target,
    Transaction,
)


class RecordBatch(Protocol):
    """Records read for one response, in offset order."""

    @property
    def count(self) -> int: ...

    def to_wire(self) -> bytes:
        """The records framed as the ``records`` field of a ``ConsumeResponse``
        (for one record, also a ``PeekResponse``): what the service sends."""
        ...

    def records(self) -> Sequence[Record]:
        """The records as domain values."""
        ...


class Subscription(Protocol):
    """A follower's hold on a target, from :meth:`Store.follow`."""

    async def wait(self, offset: int) -> None:
        """Returns once ``offset`` of the target is durable. Raises Unavailable
        when the store shuts down."""
        ...


class SegmentWatch(Protocol):
    """A watcher's hold on a space's catalog, from :meth:`Store.watch`."""

    async def changes(self) -> frozenset[str] | None:
        """Waits until a segment of the space changed since the last call (or
        since the watch began), then returns the changed names, each once.
        None: more changed than a watch keeps track of (a bounded number);
        the caller then re-reads every segment (deleted ones included). Raises
        Unavailable when the store shuts down."""
        ...


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """What a backend's files take, for the metrics."""

    # Bytes the backend's files take now.
    bytes: int
    # Bytes given back to the file system by reclaiming removed records, in
    # total since the store opened.
    reclaimed_bytes: int


@dataclass(frozen=True, slots=True)
class BackgroundTask:
    """Work a backend needs done now and then (dedupe expiry, maintenance):
    the server's supervisor runs ``step`` every ``interval`` seconds, logging,
    counting and retrying its failures."""

    name: str
    interval: float
    step: Callable[[], Awaitable[object]]


class Store(Protocol):
    """A storage backend (see the rules in this module's docstring)."""

    async def produce(self, txn: Transaction) -> ProduceResult:
        """Commits ``txn`` all or nothing; returns once it is durable.

        Raises SequenceMismatch, AlreadyExists, Unavailable, ResourceExhausted.
        """
        ...

    async def last_offset(self, target: Target) -> int:
        """The last durable offset ever assigned in ``target`` (kept after
        removals); 0 when it has none."""
        ...

    async def read(
        self, target: Target, first: int, last: int, cut: Cut, segment_prefix: bytes = b""
    ) -> tuple[RecordBatch, int]:
        """Durable records of ``target`` with offsets ``first..last``, cut by
        ``cut``, and the offset where the next read starts.

        With a ``segment_prefix`` (UTF-8; a space target only, and a positive
        ``cut.max_skip_bytes``) only records of segments whose name starts with
        it; the batch may then be empty while the next offset moves on.

        A damaged record ends the read before it: DataLoss names its offset when
        it is ``first``, else the records before it are returned (and the next
        read raises).
        """
        ...

    def follow(self, target: Target) -> AbstractAsyncContextManager[Subscription]:
        """Follows ``target`` (it need not exist yet) while the context is open."""
        ...

    async def end_subscriptions(self) -> None:
        """Ends every subscription's wait with Unavailable; no new one starts
        (at shutdown)."""
        ...

    async def first_at_or_after(self, target: Target, timestamp_ns: int) -> int:
        """The offset of the first durable record stamped at or after
        ``timestamp_ns``; one past the last offset when there is none."""
        ...

    async def peek(self, target: Target) -> RecordBatch | None:
        """The last durable retained record of ``target`` (a batch of one), or
        None."""
        ...

    async def commit_offset(
        self, consumer: str, target: Target, offset: int, expected: int | None
    ) -> int:
        """Stores ``consumer``'s offset durably (compare-and-set when ``expected``
        is not None). Raises NotFound for a deleted target (a delete removed
        its offsets; committing would bring one back), OutOfRange,
        OffsetMismatch, Unavailable."""
        ...

    async def get_offset(self, consumer: str, target: Target) -> int | None:
        """The durable offset ``consumer`` committed for ``target``, or None."""
        ...

    async def consumer_lags(self, limit: int) -> tuple[list[tuple[str, Target, int]], bool]:
        """Up to ``limit`` committed offsets in (consumer, space, segment) order,
        each with its lag (the target's last offset minus the committed one, at
        least 0); and whether there are more."""
        ...

    async def list_spaces(
        self,
        after: str | None,
        limit: int,
        include: Callable[[str], bool] | None = None,
        prefixes: Sequence[str] | None = None,
    ) -> list[SpaceInfo]:
        """Up to ``limit`` spaces with durable records or a config (not deleted
        since), by name, after ``after``,
        only those ``include`` accepts when it is given, looked for only among
        names that start with one of ``prefixes`` (sorted, none a prefix of
        another) when they are given."""
        ...

    async def list_segments(
        self, space: str, after: str | None, limit: int, include_deleted: bool = False
    ) -> list[SegmentInfo]:
        """Up to ``limit`` segments of ``space`` ever written, by name (deleted
        ones only with ``include_deleted``)."""
        ...

    async def first_offset(self, target: Target) -> int:
        """The first retained durable offset of ``target``: ``last_offset + 1``
        when nothing is retained (1 for a target never written)."""
        ...

    async def trim(self, target: Target, before: int) -> tuple[int, Removed]:
        """Removes every record of ``target`` with an offset below ``before``
        (rule 11); returns the first retained offset afterwards and what was
        removed. A ``before`` at or below the first offset changes nothing.

        Raises NotFound for a target never written or deleted (a space that
        only has a config is found), OutOfRange when ``before`` is past the
        last offset + 1.
        """
        ...

    async def delete_segment(self, space: str, segment: str, expected: int | None) -> Removed:
        """Removes every record of the segment, its consumers' offsets, and it
        from the lists (rule 12); a no-op for an unknown or deleted segment.
        ``expected`` as ``expected_sequence`` in Produce (SequenceMismatch)."""
        ...

    async def delete_space(self, space: str) -> Removed:
        """Removes every record, segment, offset, group and the config of
        ``space``; a no-op for an unknown or deleted space (its groups are
        removed even then: a space that only has groups is deleted too)."""
        ...

    async def configure_space(self, space: str, config: SpaceConfig) -> None:
        """Stores ``config`` durably, replacing the space's previous one; the
        space is then found by :meth:`get_space` even with no records."""
        ...

    async def get_space(self, space: str) -> SpaceInfo | None:
        """The space's info; None when it was never written nor configured, or
        deleted since."""
        ...

    async def get_segment(
        self, space: str, segment: str, include_deleted: bool = False
    ) -> SegmentInfo | None:
        """The segment's info; None when never written (or deleted, unless
        ``include_deleted``)."""
        ...

    def watch(self, space: str) -> AbstractAsyncContextManager[SegmentWatch]:
        """Watches the catalog of ``space`` (it need not exist) while open."""
        ...

    async def enforce_retention(self, defaults: RetentionPolicy) -> Removed:
        """One retention pass over every space: each space's policy (``defaults``
        where its config has none) applied as by :meth:`trim`, by the backend's
        clock. Its cost follows what it removes plus the number of spaces, and
        it never holds writes for more than a few milliseconds at a time."""
        ...

    def disk_usage(self) -> DiskUsage | None:
        """What the backend's files take (None: it keeps no files)."""
        ...

    async def create_group(
        self, config: GroupConfig, acked_through: int, max_groups: int
    ) -> tuple[GroupConfig, bool]:
        """Stores a new group of ``config.space`` whose progress starts at
        ``acked_through`` (its start resolved by the caller), durably; returns
        it and True. When the space already has a group of that name, returns
        the stored config and False, changing nothing. Raises
        ResourceExhausted when the space already has ``max_groups`` groups."""
        ...

    async def get_group(self, space: str, name: str) -> GroupState | None:
        """The group's config and durable progress, or None."""
        ...

    async def list_groups(self, space: str, after: str | None, limit: int) -> list[GroupConfig]:
        """Up to ``limit`` groups of ``space`` by name (UTF-8 bytes), after ``after``."""
        ...

    async def delete_group(self, space: str, name: str) -> bool:
        """Removes the group and its progress durably; False when there was none."""
        ...

    async def settle_group(
        self,
        space: str,
        name: str,
        acked_through: int,
        settled: Sequence[int],
        parked: Transaction | None,
    ) -> ProduceResult | None:
        """Makes the group's progress durable: every position up to
        ``acked_through`` settled (never below the stored one), and the
        positions ``settled`` above it, in one atomic write with ``parked``
        (records appended to the dead-letter segment, no transaction id; its
        record count is added to the group's parked count). Returns
        ``parked``'s result (None without). Raises NotFound for a group that
        does not exist, writing nothing; Unavailable, ResourceExhausted as
        :meth:`produce`."""
        ...

    @property
    def write_error(self) -> str | None:
        """Why writes are refused right now, None while they work (a state kept
        in memory, read by the health check)."""
        ...

    def background(self) -> Sequence[BackgroundTask]:
        """The periodic work this backend needs (started once it is open)."""
        ...

    async def close(self) -> None:
        """Waits for pending writes to become durable, then closes the store."""
        ...


# The errors of the rules, worded once for every backend.


def sequence_mismatch(
    segment: str, actual: int, expected: int, field: str = "writes.expected_sequence"
) -> SequenceMismatch:
    return SequenceMismatch(
        f"{field}: segment {segment!r} has last sequence {actual}, not {expected}",
        segment=segment,
        actual=actual,
    )


def already_exists(txn: Transaction) -> AlreadyExists:
    return AlreadyExists(
        f"transaction_id: {txn.transaction_id!r} was already committed in space "
        f"{txn.space!r} with different writes"
    )


def out_of_range(offset: int, last: int, target: Target) -> OutOfRange:
    return OutOfRange(f"offset: {offset} is past the last offset ({last}) of {target.describe()}")


def not_found(target: Target) -> NotFound:
    return NotFound(f"{target.describe()} does not exist (never written, or deleted)")


def deleted(target: Target) -> NotFound:
    return NotFound(
        f"{target.describe()} was deleted, and its offsets with it: write to it again first"
    )


def trim_out_of_range(before: int, last: int, target: Target) -> OutOfRange:
    return OutOfRange(
        f"before_offset: {before} is past the last offset + 1 ({last + 1}) of {target.describe()}"
    )


def offset_mismatch(
    expected: int, stored: int | None, consumer: str, target: Target
) -> OffsetMismatch:
    shown = "none" if stored is None else str(stored)
    return OffsetMismatch(
        f"expected_offset: {expected} does not match the stored offset ({shown}) of "
        f"consumer {consumer!r} for {target.describe()}",
        actual=stored,
    )


def group_not_found(space: str, name: str) -> NotFound:
    return NotFound(f"group: {name!r} of space {space!r} does not exist")


def group_went_back(space: str, name: str, stored: int, given: int) -> InvariantViolation:
    return InvariantViolation(
        f"group {name!r} of space {space!r}: acked_through would go back from {stored} to {given}"
    )


def too_many_groups(space: str, most: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"group.space: space {space!r} already has {most} groups, the most "
        f"max_groups_per_space allows"
    )
