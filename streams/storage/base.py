"""The storage interface the service is written against.

A backend stores transactions atomically and durably, numbers records densely,
and serves reads capped at what is durable. Records cross this interface as
serialized ``Record`` bytes (see :mod:`streams.codec`), offsets as plain ints:
a sequence for a segment target, a position for a space target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Protocol

from streams.model import (
    Cut,
    ProduceResult,
    Records,
    SegmentInfo,
    SpaceInfo,
    Target,
    Transaction,
)


class Subscription(Protocol):
    """A follower's hold on a target (see :meth:`Store.subscribe`); a context
    manager that closes it."""

    async def wait(self, offset: int) -> None:
        """Returns once ``offset`` of the target is durable. Raises Unavailable
        when the store shuts down."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Subscription: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None: ...


class Store(Protocol):
    async def produce(self, txn: Transaction) -> ProduceResult:
        """Commits ``txn`` all or nothing; returns once it is durable.

        Raises SequenceMismatch, AlreadyExists, Unavailable, ResourceExhausted.
        """
        ...

    def last_offset(self, target: Target) -> int:
        """The last durable offset of ``target``; 0 when it has none."""
        ...

    def read(
        self, target: Target, first: int, last: int, max_records: int, max_bytes: int
    ) -> Records:
        """Stored records of ``target`` with offsets ``first..last``, capped at the
        durable last offset, at most ``max_records`` and ``max_bytes`` of framed
        response (always at least one record when one is in range). A damaged
        record ends the read before it: DataLoss names its offset when it is
        ``first``, else the records before it are returned (the next read raises)."""
        ...

    def read_matching(
        self, target: Target, first: int, last: int, cut: Cut, segment_prefix: bytes
    ) -> tuple[Records, int]:
        """:meth:`read` of a space, only records of segments whose name (UTF-8)
        starts with ``segment_prefix``; also returns the offset after the last
        record looked at, where the next step starts. Skips at most about
        ``cut.max_skip_bytes`` of other records per call (the step may then
        return no record, having made progress)."""
        ...

    def subscribe(self, target: Target) -> Subscription:
        """Starts following ``target`` (it need not exist yet); close it when done.
        Reads of a followed target are served from memory where possible."""
        ...

    def end_subscriptions(self) -> None:
        """Ends every subscription's wait with Unavailable (at shutdown)."""
        ...

    def first_at_or_after(self, target: Target, timestamp_ns: int) -> int:
        """The offset of the first durable record stamped at or after
        ``timestamp_ns``; one past the last offset when there is none."""
        ...

    def peek(self, target: Target) -> bytes | None:
        """The last durable record of ``target``, or None."""
        ...

    async def commit_offset(
        self, consumer: str, target: Target, offset: int, expected: int | None
    ) -> int:
        """Stores ``consumer``'s offset durably (compare-and-set when ``expected``
        is not None). Raises OffsetMismatch, OutOfRange, Unavailable."""
        ...

    async def get_offset(self, consumer: str, target: Target) -> int | None:
        """The durable offset ``consumer`` committed for ``target``, or None."""
        ...

    def list_spaces(
        self,
        after: str | None,
        limit: int,
        include: Callable[[str], bool] | None = None,
        prefixes: Sequence[str] | None = None,
    ) -> list[SpaceInfo]:
        """Up to ``limit`` spaces with durable records, by name, after ``after``,
        only those ``include`` accepts when it is given, looked for only among
        names that start with one of ``prefixes`` (sorted, none a prefix of
        another) when they are given."""
        ...

    def list_segments(self, space: str, after: str | None, limit: int) -> list[SegmentInfo]:
        """Up to ``limit`` segments of ``space`` with durable records, by name."""
        ...

    async def close(self) -> None:
        """Waits for pending fsyncs, then closes the store."""
        ...
