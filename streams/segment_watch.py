"""WatchSegments: a snapshot of a space's segments, then their changes, live.

The watch is entered before the snapshot is read, so a change made while the
snapshot is read is reported after it (at worst twice: once in the snapshot,
once live), never lost. Live changes come coalesced by name from
:meth:`~streams.storage.port.SegmentWatch.changes`: a watcher whose client
reads slowly is not sent a backlog but, once it reads again, the latest info
of each segment that changed meanwhile (or, past what a watch keeps track
of, every segment again). Each response holds at least one segment and at
most what the memory budget allows it when it is built (as a Consume batch,
and never over ``--max-response-bytes``); it is built once the previous one
was taken, so a watcher whose client stops reading holds one response.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable

from streams import infos
from streams.model import SegmentInfo
from streams.storage.port import Store
from streams.v1 import streams_pb2 as pb

# Segments read from the store per listing call.
PAGE = 1000
# The bytes snapshot_complete adds to a response (tag and value).
_COMPLETE_FLAG_BYTES = 2

# Waits until the memory budget has room for the next response, then gives
# the most bytes that response may take.
Room = Callable[[], Awaitable[int]]


async def responses(
    store: Store, space: str, prefix: str, room: Room
) -> AsyncGenerator[bytes, None]:
    """The serialized responses of one WatchSegments call, until the store
    shuts down (Unavailable) or the caller stops iterating. Each response is
    built only once the previous one was taken and ``room`` allows it, and
    only its bytes are kept, so a watcher whose client stops reading holds
    one response, no more."""
    async with store.watch(space) as watch:
        snapshot = _packed(_listing(store, space, prefix), room, snapshot=True)
        async with contextlib.aclosing(snapshot) as messages:
            async for data in messages:
                yield data
        while True:
            names = await watch.changes()
            changed = (
                _listing(store, space, prefix, include_deleted=True)
                if names is None
                else _current(store, space, sorted(n for n in names if n.startswith(prefix)))
            )
            async with contextlib.aclosing(_packed(changed, room)) as messages:
                async for data in messages:
                    yield data


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
    found: AsyncGenerator[SegmentInfo, None], room: Room, snapshot: bool = False
) -> AsyncGenerator[bytes, None]:
    """``found`` cut into serialized responses of at least one segment each:
    live infos in ``segments``, deleted names in ``deleted``. For the
    snapshot, the last has ``snapshot_complete`` (and is sent, empty, when
    there is no segment). Only the next segment is read ahead, never the next
    response."""
    async with contextlib.aclosing(found):
        carry = await anext(found, None)
        if carry is None and not snapshot:
            return
        while True:
            limit = max(1, await room() - _COMPLETE_FLAG_BYTES)
            message = pb.WatchSegmentsResponse()
            size = 0
            while carry is not None:
                wire = None if carry.deleted else infos.segment_info(carry)
                name_size = len(carry.name.encode("utf-8"))
                cost = _field_bytes(name_size if wire is None else wire.ByteSize())
                if size and size + cost > limit:
                    break
                if wire is None:
                    message.deleted.append(carry.name)
                else:
                    message.segments.append(wire)
                size += cost
                carry = await anext(found, None)
            message.snapshot_complete = snapshot and carry is None
            data = message.SerializeToString()
            del message
            yield data
            if carry is None:
                return


def _field_bytes(size: int) -> int:
    """A length-delimited field of ``size`` bytes as it stands in a message."""
    return 1 + (size.bit_length() + 6) // 7 + size if size else 2
