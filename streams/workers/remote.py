"""RemoteStore: a front process's :class:`~streams.storage.port.Store`, every
call served by the writer's :class:`~streams.workers.host.StoreHost`.

A call is one frame out and one frame back, awaited on a future that the
connection's callback resolves (no task per call). Followers are served from
a local :class:`~streams.storage.tail.Tail`: per followed target the host
runs one pump that pushes each durable record once to this front, which puts
it in the tail's window and wakes the followers, so neither a wake-up nor a
read of the newest records costs a round trip; a read the window does not
hold goes to the host. Removals reach the tail before the call that made
them returns (when made through this front), or as soon as the host hears of
them (a retention pass or a DeleteSpace of the writer: see :meth:`barrier`).

``background()`` is empty and ``enforce_retention()`` removes nothing: the
writer runs them once for every front.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams import codec
from streams.errors import ResourceExhausted, Unavailable
from streams.limits import Limits
from streams.model import (
    Cut,
    GroupConfig,
    GroupState,
    ProduceResult,
    Removed,
    RetentionPolicy,
    SegmentInfo,
    SpaceConfig,
    SpaceInfo,
    Target,
    Transaction,
)
from streams.storage.backend import Setup
from streams.storage.batches import FramedBatch
from streams.storage.port import BackgroundTask, DiskUsage
from streams.storage.tail import WINDOW_BYTES, WINDOW_RECORDS, Subscription, Tail
from streams.storage.watches import Watch, Watches
from streams.workers import ipc
from streams.workers.ipc import (
    BARRIER,
    CHANGES,
    FAILED,
    FOLLOW,
    HELLO,
    PUSH,
    REMOVED,
    UNFOLLOW,
    UNWATCH,
    WATCH,
    WRITE_ERROR,
)

# The local tail's windows have the engine's default shape (WINDOW_RECORDS,
# WINDOW_BYTES). Not a memory bound: all windows together are charged to
# the front's share of the memory budget (--memory-budget-bytes), and the least
# read are dropped first.
# The latest push of each followed target is kept as it came, framed, for the
# followers that ask for exactly it (most of them, keeping up: a read is then a
# look-up, not a slice of the window framed anew per follower). It is a window:
# charged to the memory budget as windows are, dropped first when responses
# need room, and at most this fraction of the budget for all targets together.
RECENT_SHARE = 8  # 1/8
# What this front may leave unsent to the host, in largest requests, before its
# callers find the link not writable (it signals, it does not bound: what a
# front has in flight is bounded by gRPC's limits, --max-inflight-request-bytes).
BUFFERED_REQUESTS = 4


@dataclass(slots=True)
class _Followed:
    """A target this front follows: one pump at the host for all its followers."""

    follow_id: int
    holders: int = 0
    ready: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    failure: BaseException | None = None


@dataclass(slots=True)
class _Watched:
    watch_id: int
    holders: int = 0
    ready: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class RemoteStore:
    """A :class:`~streams.storage.port.Store` over a connection to a StoreHost.

    Example::

        store = await connect(Path(private_dir) / "store.sock", setup)
        result = await store.produce(txn)
        await store.lost.wait()   # the writer is gone: exit
    """

    def __init__(self, setup: Setup, limits: Limits | None = None) -> None:
        limits = limits or Limits()
        self.max_frame = ipc.max_frame_bytes(limits)
        # Set when the connection to the host is gone (the writer died or closed
        # the host): every call raises Unavailable from then on.
        self.lost = asyncio.Event()
        high_water = BUFFERED_REQUESTS * limits.max_request_bytes
        self.link = ipc.Link(self.max_frame, high_water, self._received, self._lost)
        self._tail = Tail(
            WINDOW_RECORDS,
            WINDOW_BYTES,
            setup.follow_linger,
            setup.memory,
            setup.watch_change_bytes,
        )
        # Apart from the tail's own: the tail notes its windows' appends and
        # removals, the host's watches report the engine's changes as they are.
        self._watches = Watches(setup.watch_change_bytes)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._known: dict[Target, int] = {}
        # Per followed target, its latest push: (first offset, framed records, count).
        self._recent: dict[Target, tuple[int, bytes, int]] = {}
        self._recent_bytes = 0
        self._memory = setup.memory
        self._recent_cap = setup.memory.capacity // RECENT_SHARE
        # Responses that need room drop the latest pushes first, then windows.
        shrink_windows = setup.memory.shrink_windows
        setup.memory.shrink_windows = lambda needed: shrink_windows(self._shrink_recent(needed))
        self._followed: dict[Target, _Followed] = {}
        self._follow_ids: dict[int, Target] = {}
        self._watched: dict[str, _Watched] = {}
        self._watch_ids: dict[int, str] = {}
        self._write_error: str | None = None
        self._closed = False
        self._why_lost = "the connection to the writer process is gone"

    # -- the connection -----------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the store is closed: the server is shutting down")
        if self.lost.is_set():
            raise Unavailable(self._why_lost)

    async def _call(self, name: str, *args: Any) -> Any:
        self._check_open()
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            self.link.send((call_id, name, args))
            return await future
        except ipc.FrameError as exc:
            raise ResourceExhausted(f"{name}: the call cannot reach the writer: {exc}") from None
        finally:
            self._pending.pop(call_id, None)

    def _received(self, received: object) -> None:
        try:
            message = ipc.check_answer(received)
        except ipc.FrameError as exc:
            self.link.abort(exc)  # the writer is broken: lost, as if it died
            return
        call_id = message[0]
        if call_id:
            future = self._pending.get(call_id)
            if future is not None and not future.done():
                if message[1]:
                    future.set_result(message[2])
                else:
                    future.set_exception(message[2])
            return
        kind = message[1]
        if kind == PUSH:
            self._pushed(*message[2:])
        elif kind == REMOVED:
            self._forget_recent(message[2])
            self._tail.removed(message[2], message[3])
        elif kind == CHANGES:
            space = self._watch_ids.get(message[2])
            if space is not None:
                self._watches.changed(space, message[3])
        elif kind == FAILED:
            self._failed(message[2], message[3])
        elif kind == WRITE_ERROR:
            self._write_error = message[2]

    def _lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._why_lost = f"the connection to the writer process broke: {exc}"
        self.lost.set()
        error = Unavailable(self._why_lost)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        for followed in self._followed.values():
            if not followed.ready.done():
                followed.ready.set_exception(error)
                followed.ready.exception()
        for watched in self._watched.values():
            if not watched.ready.done():
                watched.ready.set_exception(error)
                watched.ready.exception()
        self._shrink_recent(self._recent_bytes)
        self._tail.close()
        self._watches.close()

    async def barrier(self) -> None:
        """Returns once everything the host sent before now has been applied
        here (removals the writer made on its own, say: a DeleteSpace it served)."""
        await self._call(BARRIER)

    # -- writes -------------------------------------------------------------------

    async def produce(self, txn: Transaction) -> ProduceResult:
        return ipc.unpack_result(await self._call("produce", ipc.pack_transaction(txn)))

    async def commit_offset(
        self, consumer: str, target: Target, offset: int, expected: int | None
    ) -> int:
        found: int = await self._call("commit_offset", consumer, target, offset, expected)
        return found

    async def trim(self, target: Target, before: int) -> tuple[int, Removed]:
        found: tuple[int, Removed] = await self._call("trim", target, before)
        return found

    async def delete_segment(self, space: str, segment: str, expected: int | None) -> Removed:
        found: Removed = await self._call("delete_segment", space, segment, expected)
        return found

    async def delete_space(self, space: str) -> Removed:
        found: Removed = await self._call("delete_space", space)
        return found

    async def configure_space(self, space: str, config: SpaceConfig) -> None:
        await self._call("configure_space", space, config)

    async def enforce_retention(self, defaults: RetentionPolicy) -> Removed:
        """Removes nothing: the writer runs retention for every front."""
        self._check_open()
        return Removed()

    # -- consumer groups (the writer's dispatchers use them; a front proxies) ------

    async def create_group(
        self, config: GroupConfig, acked_through: int, max_groups: int
    ) -> tuple[GroupConfig, bool]:
        found: tuple[GroupConfig, bool] = await self._call(
            "create_group", config, acked_through, max_groups
        )
        return found

    async def get_group(self, space: str, name: str) -> GroupState | None:
        found: GroupState | None = await self._call("get_group", space, name)
        return found

    async def list_groups(self, space: str, after: str | None, limit: int) -> list[GroupConfig]:
        found: list[GroupConfig] = await self._call("list_groups", space, after, limit)
        return found

    async def delete_group(self, space: str, name: str) -> bool:
        found: bool = await self._call("delete_group", space, name)
        return found

    async def settle_group(
        self,
        space: str,
        name: str,
        acked_through: int,
        settled: Sequence[int],
        parked: Transaction | None,
    ) -> ProduceResult | None:
        found: ProduceResult | None = await self._call(
            "settle_group", space, name, acked_through, tuple(settled), parked
        )
        return found

    # -- reads --------------------------------------------------------------------

    async def read(
        self, target: Target, first: int, last: int, cut: Cut, segment_prefix: bytes = b""
    ) -> tuple[FramedBatch, int]:
        self._check_open()
        if not segment_prefix:
            pushed = self._recent.get(target)
            if pushed is not None and pushed[0] == first:
                _, framed, count = pushed
                fits = count <= cut.max_records and len(framed) <= cut.max_bytes
                if fits and first + count - 1 <= last:
                    return FramedBatch(framed, count), first + count
            batch = self._tail.read(target, first, last, cut.max_records, cut.max_bytes)
            if batch is not None:
                return batch, first + batch.count
        elif target.is_space and cut.max_skip_bytes > 0:
            recent = self._tail.read_matching(target, first, last, cut, segment_prefix)
            if recent is not None:
                return recent
        framed, count, after = await self._call("read", target, first, last, cut, segment_prefix)
        return FramedBatch(framed, count), after

    async def peek(self, target: Target) -> FramedBatch | None:
        found = await self._call("peek", target)
        return None if found is None else FramedBatch(*found)

    async def last_offset(self, target: Target) -> int:
        found: int = await self._call("last_offset", target)
        return found

    async def first_offset(self, target: Target) -> int:
        found: int = await self._call("first_offset", target)
        return found

    async def first_at_or_after(self, target: Target, timestamp_ns: int) -> int:
        found: int = await self._call("first_at_or_after", target, timestamp_ns)
        return found

    async def get_offset(self, consumer: str, target: Target) -> int | None:
        found: int | None = await self._call("get_offset", consumer, target)
        return found

    async def consumer_lags(self, limit: int) -> tuple[list[tuple[str, Target, int]], bool]:
        found: tuple[list[tuple[str, Target, int]], bool] = await self._call("consumer_lags", limit)
        return found

    async def list_spaces(
        self,
        after: str | None,
        limit: int,
        include: Callable[[str], bool] | None = None,
        prefixes: Sequence[str] | None = None,
    ) -> list[SpaceInfo]:
        """``include`` is a function of this process: the host lists pages of
        ``limit`` spaces, filtered here, until ``limit`` are found or none is left."""
        shown = None if prefixes is None else tuple(prefixes)
        found: list[SpaceInfo] = []
        while True:
            page: list[SpaceInfo] = await self._call("list_spaces", after, limit, None, shown)
            for info in page:
                if include is None or include(info.name):
                    found.append(info)
                    if len(found) == limit:
                        return found
            if len(page) < limit:
                return found
            after = page[-1].name

    async def list_segments(
        self, space: str, after: str | None, limit: int, include_deleted: bool = False
    ) -> list[SegmentInfo]:
        found: list[SegmentInfo] = await self._call(
            "list_segments", space, after, limit, include_deleted
        )
        return found

    async def get_space(self, space: str) -> SpaceInfo | None:
        found: SpaceInfo | None = await self._call("get_space", space)
        return found

    async def get_segment(
        self, space: str, segment: str, include_deleted: bool = False
    ) -> SegmentInfo | None:
        found: SegmentInfo | None = await self._call("get_segment", space, segment, include_deleted)
        return found

    # -- follow ---------------------------------------------------------------------

    def follow(self, target: Target) -> contextlib.AbstractAsyncContextManager[Subscription]:
        self._check_open()
        return self._following(target)

    @contextlib.asynccontextmanager
    async def _following(self, target: Target) -> AsyncIterator[Subscription]:
        followed = self._followed.get(target)
        if followed is None:
            followed = self._followed[target] = _Followed(next(self._ids))
            self._follow_ids[followed.follow_id] = target
            self._start_pump(target, followed)
        followed.holders += 1
        try:
            await asyncio.shield(followed.ready)
            with self._tail.subscribe(target, self._last_known) as subscription:
                yield subscription
        finally:
            followed.holders -= 1
            if followed.holders < 1 and self._followed.get(target) is followed:
                del self._followed[target]
                del self._follow_ids[followed.follow_id]
                self._known.pop(target, None)
                self._drop_recent(target)
                if not self.link.closed:
                    self.link.send((0, UNFOLLOW, (followed.follow_id,)))

    def _start_pump(self, target: Target, followed: _Followed) -> None:
        """Asks the host for a pump; ``followed.ready`` once it runs."""
        future = asyncio.get_running_loop().create_future()
        self._pending[followed.follow_id] = future
        self.link.send((followed.follow_id, FOLLOW, (target,)))

        def started(done: asyncio.Future[int]) -> None:
            self._pending.pop(followed.follow_id, None)
            if followed.ready.done():
                return
            if done.exception() is not None:
                followed.ready.set_exception(done.exception())  # type: ignore[arg-type]
                # Forget the pump that never ran: the next follower asks again.
                if self._followed.get(target) is followed:
                    del self._followed[target]
                    del self._follow_ids[followed.follow_id]
                return
            baseline = done.result()
            if self._known.get(target, 0) < baseline:
                self._known[target] = baseline
            followed.ready.set_result(None)

        future.add_done_callback(started)

    def _last_known(self, target: Target) -> int:
        """The last offset of a followed target pushed here (what waits compare
        with); raises what ended its pump."""
        followed = self._followed.get(target)
        if followed is not None and followed.failure is not None:
            raise followed.failure
        return self._known.get(target, 0)

    def _pushed(self, follow_id: int, first: int, framed: bytes, count: int, last: int) -> None:
        target = self._follow_ids.get(follow_id)
        if target is None:
            return  # a pump released meanwhile
        if self._known.get(target, 0) < last:
            self._known[target] = last
        self._drop_recent(target)
        if count and self._recent_bytes + len(framed) <= self._recent_cap:
            self._recent[target] = (first, framed, count)
            self._recent_bytes += len(framed)
            self._memory.windows += len(framed)
        records = codec.split_framed(framed) if count else ()
        if target.is_space:
            self._tail.publish(target.space, first, records, ())
        else:
            self._tail.publish(target.space, 0, (), ((target.segment, first, records),))

    def _drop_recent(self, target: Target) -> None:
        recent = self._recent.pop(target, None)
        if recent is not None:
            self._recent_bytes -= len(recent[1])
            self._memory.windows -= len(recent[1])

    def _shrink_recent(self, needed: int) -> int:
        """Drops latest pushes until ``needed`` bytes are freed; what is left to free."""
        while needed > 0 and self._recent:
            before = self._recent_bytes
            self._drop_recent(next(iter(self._recent)))
            needed -= before - self._recent_bytes
        return max(needed, 0)

    def _forget_recent(self, space: str) -> None:
        """Records of ``space`` were removed: no latest push of it is served."""
        for target in [t for t in self._recent if t.space == space]:
            self._drop_recent(target)

    def _failed(self, stream_id: int, error: BaseException) -> None:
        target = self._follow_ids.get(stream_id)
        if target is not None:
            self._followed[target].failure = error
            # Wakes its followers, whose wait raises the pump's error.
            if target.is_space:
                self._tail.publish(target.space, 0, (), ())
            else:
                self._tail.publish(target.space, 0, (), ((target.segment, 0, ()),))
            return
        space = self._watch_ids.get(stream_id)
        if space is not None:
            # Changes are not heard any more: every segment may have changed.
            self._watches.changed(space, None)

    # -- watch --------------------------------------------------------------------

    def watch(self, space: str) -> contextlib.AbstractAsyncContextManager[Watch]:
        self._check_open()
        return self._watching(space)

    @contextlib.asynccontextmanager
    async def _watching(self, space: str) -> AsyncIterator[Watch]:
        # The local watch first: what the host reports once its watch runs is
        # noted, even in the same read as the answer.
        async with self._watches.watch(space) as watch:
            watched = self._watched.get(space)
            if watched is None:
                watched = self._watched[space] = _Watched(next(self._ids))
                self._watch_ids[watched.watch_id] = space
                self._start_watch(space, watched)
            watched.holders += 1
            try:
                await asyncio.shield(watched.ready)
                yield watch
            finally:
                watched.holders -= 1
                if watched.holders < 1 and self._watched.get(space) is watched:
                    del self._watched[space]
                    del self._watch_ids[watched.watch_id]
                    if not self.link.closed:
                        self.link.send((0, UNWATCH, (watched.watch_id,)))

    def _start_watch(self, space: str, watched: _Watched) -> None:
        future = asyncio.get_running_loop().create_future()
        self._pending[watched.watch_id] = future
        self.link.send((watched.watch_id, WATCH, (space,)))

        def started(done: asyncio.Future[None]) -> None:
            self._pending.pop(watched.watch_id, None)
            if watched.ready.done():
                return
            if done.exception() is not None:
                watched.ready.set_exception(done.exception())  # type: ignore[arg-type]
                if self._watched.get(space) is watched:
                    del self._watched[space]
                    del self._watch_ids[watched.watch_id]
                return
            watched.ready.set_result(None)

        future.add_done_callback(started)

    async def end_subscriptions(self) -> None:
        self._tail.close()
        self._watches.close()

    # -- life cycle -----------------------------------------------------------------

    def disk_usage(self) -> DiskUsage | None:
        """None: the writer's metrics report the store's files."""
        return None

    @property
    def write_error(self) -> str | None:
        if self._closed:
            return "the store is closed"
        if self.lost.is_set():
            return self._why_lost
        return self._write_error

    def background(self) -> Sequence[BackgroundTask]:
        """None: the writer runs the store's background work."""
        return ()

    @property
    def tail(self) -> Tail:
        """The local tail (followers and windows), for metrics and tests."""
        return self._tail

    async def close(self) -> None:
        """Closes the connection (the host's store stays open: the writer owns it)."""
        if self._closed:
            return
        self._closed = True
        self._tail.close()
        self._watches.close()
        self._shrink_recent(self._recent_bytes)
        self.link.close()


async def connect(path: Path, setup: Setup, *, limits: Limits | None = None) -> RemoteStore:
    """Connects to the StoreHost listening on ``path``. ``setup.memory``,
    ``setup.follow_linger`` and ``setup.watch_change_bytes`` configure the
    local tail; ``limits`` (the server's; defaults when None) size frames."""
    store = RemoteStore(setup, limits)
    loop = asyncio.get_running_loop()
    try:
        await loop.create_unix_connection(lambda: store.link, str(path))
    except OSError as exc:
        raise Unavailable(f"cannot reach the writer's store host at {path}: {exc}") from exc
    try:
        # Once answered, the host serves this front, with frames of one size.
        await store._call(HELLO, store.max_frame)
    except BaseException:
        await store.close()
        raise
    return store
