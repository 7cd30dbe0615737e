"""WatchSegments: a snapshot of a space's segments, then their changes, live.

The watch is entered before the snapshot is read, so a change made while the
snapshot is read is reported after it (at worst twice: once in the snapshot,
once live), never lost. Live changes come coalesced by name from
:meth:`~streams.storage.port.SegmentWatch.changes`: a watcher whose client
reads slowly is not sent a backlog but, once it reads again, the latest info
of each segment that changed meanwhile (or, past what a watch keeps track
of, every segment again). Each response holds at most ``max_bytes``
(``--max-response-bytes``) and at least one segment.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable

from streams import infos
from streams.model import SegmentInfo
from streams.storage.port import Store
from streams.v1 import streams_pb2 as pb

# Segments read from the store per listing call.
PAGE = 1000
# The bytes snapshot_complete adds to a response (tag and value).
_COMPLETE_FLAG_BYTES = 2


async def responses(
    store: Store, space: str, prefix: str, max_bytes: int
) -> AsyncGenerator[pb.WatchSegmentsResponse, None]:
    """The responses of one WatchSegments call, until the store shuts down
    (Unavailable) or the caller stops iterating."""
    limit = max(1, max_bytes - _COMPLETE_FLAG_BYTES)
    async with store.watch(space) as watch:
        pending: pb.WatchSegmentsResponse | None = None
        async with contextlib.aclosing(_packed(_listing(store, space, prefix), limit)) as snapshot:
            async for message in snapshot:
                if pending is not None:
                    yield pending
                pending = message
        last = pending if pending is not None else pb.WatchSegmentsResponse()
        last.snapshot_complete = True
        yield last
        while True:
            names = await watch.changes()
            changed = (
                _listing(store, space, prefix, include_deleted=True)
                if names is None
                else _current(store, space, sorted(n for n in names if n.startswith(prefix)))
            )
            async with contextlib.aclosing(_packed(changed, limit)) as live:
                async for message in live:
                    yield message


async def _listing(
    store: Store, space: str, prefix: str, include_deleted: bool = False
) -> AsyncGenerator[SegmentInfo, None]:
    """The segments whose name starts with ``prefix``, in name order: they
    follow one another in the listing, the one named ``prefix`` first."""
    if prefix:
        exact = await store.get_segment(space, prefix, include_deleted)
        if exact is not None:
            yield exact
    after = prefix or None
    while True:
        page = await store.list_segments(space, after, PAGE, include_deleted)
        for info in page:
            if not info.name.startswith(prefix):
                return
            yield info
        if len(page) < PAGE:
            return
        after = page[-1].name


async def _current(
    store: Store, space: str, names: Iterable[str]
) -> AsyncGenerator[SegmentInfo, None]:
    for name in names:
        info = await store.get_segment(space, name, include_deleted=True)
        if info is not None:
            yield info


async def _packed(
    found: AsyncIterator[SegmentInfo], limit: int
) -> AsyncGenerator[pb.WatchSegmentsResponse, None]:
    """``found`` cut into responses of at most ``limit`` bytes (at least one
    segment each): live infos in ``segments``, deleted names in ``deleted``."""
    message = pb.WatchSegmentsResponse()
    size = 0
    async for info in found:
        if info.deleted:
            cost = _field_bytes(len(info.name.encode("utf-8")))
        else:
            wire = infos.segment_info(info)
            cost = _field_bytes(wire.ByteSize())
        if size and size + cost > limit:
            yield message
            message = pb.WatchSegmentsResponse()
            size = 0
        if info.deleted:
            message.deleted.append(info.name)
        else:
            message.segments.append(wire)
        size += cost
    if size:
        yield message


def _field_bytes(size: int) -> int:
    """A length-delimited field of ``size`` bytes as it stands in a message."""
    return 1 + (size.bit_length() + 6) // 7 + size if size else 2
