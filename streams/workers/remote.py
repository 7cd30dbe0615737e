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
from typing import Any, Generic, TypeVar

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


K = TypeVar("K", Target, str)


@dataclass(slots=True)
class _Stream:
    """A pump or watch the host runs for this front: one for all its local holders."""

    stream_id: int  # the id of the call that asked for it, and of its messages
    holders: int = 0
    ready: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    failure: BaseException | None = None  # what ended a pump (FAILED): its followers raise it


class _Streams(Generic[K]):
    """This front's pumps (by target) or watches (by space): ``ask`` is the
    message that starts one at the host, ``end`` the one that releases it."""

    def __init__(self, ask: str, end: str) -> None:
        self.ask, self.end = ask, end
        self.by_key: dict[K, _Stream] = {}
        self.by_id: dict[int, K] = {}  # the host's messages name the stream's id

    def forget(self, key: K, stream: _Stream) -> bool:
        """Forgets ``stream``; False when it was forgotten already (another
        may hold ``key`` since)."""
        if self.by_key.get(key) is not stream:
            return False
        del self.by_key[key]
        del self.by_id[stream.stream_id]
        return True


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
        self._followed: _Streams[Target] = _Streams(FOLLOW, UNFOLLOW)
        self._watched: _Streams[str] = _Streams(WATCH, UNWATCH)
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
            space = self._watched.by_id.get(message[2])
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
        for stream in [*self._followed.by_key.values(), *self._watched.by_key.values()]:
            if not stream.ready.done():
                stream.ready.set_exception(error)
                stream.ready.exception()
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
        def started(baseline: int) -> None:
            # The pump pushes only what comes after the offset it answered:
            # followers waiting for that one or an earlier one go on at once.
            if self._known.get(target, 0) < baseline:
                self._known[target] = baseline

        def released() -> None:
            self._known.pop(target, None)
            self._drop_recent(target)

        async with self._holding(self._followed, target, started, released):
            with self._tail.subscribe(target, self._last_known) as subscription:
                yield subscription

    @contextlib.asynccontextmanager
    async def _holding(
        self,
        streams: _Streams[K],
        key: K,
        started: Callable[[Any], None] | None = None,
        released: Callable[[], None] | None = None,
    ) -> AsyncIterator[None]:
        """Holds this front's pump or watch of ``key``, asking the host for one
        if none runs; raises what the host refused it with (Unavailable once the
        link is lost). The host's answer goes to ``started`` before any holder
        goes on; ``released`` runs once the last holder let go, before the host
        is told."""
        stream = streams.by_key.get(key)
        if stream is None:
            stream = self._ask(streams, key, started)
        stream.holders += 1
        try:
            await asyncio.shield(stream.ready)
            yield
        finally:
            stream.holders -= 1
            if stream.holders < 1 and streams.forget(key, stream):
                if released is not None:
                    released()
                if not self.link.closed:
                    self.link.send((0, streams.end, (stream.stream_id,)))

    def _ask(self, streams: _Streams[K], key: K, started: Callable[[Any], None] | None) -> _Stream:
        """Asks the host for the pump or watch of ``key``; its ``ready`` once it runs."""
        stream = streams.by_key[key] = _Stream(next(self._ids))
        streams.by_id[stream.stream_id] = key
        future = asyncio.get_running_loop().create_future()
        self._pending[stream.stream_id] = future
        self.link.send((stream.stream_id, streams.ask, (key,)))

        def answered(done: asyncio.Future[Any]) -> None:
            self._pending.pop(stream.stream_id, None)
            if stream.ready.done():
                return
            if done.exception() is not None:
                stream.ready.set_exception(done.exception())  # type: ignore[arg-type]
                # Forget the stream that never ran: the next holder asks again.
                streams.forget(key, stream)
                return
            if started is not None:
                started(done.result())
            stream.ready.set_result(None)

        future.add_done_callback(answered)
        return stream

    def _last_known(self, target: Target) -> int:
        """The last offset of a followed target pushed here (what waits compare
        with); raises what ended its pump."""
        followed = self._followed.by_key.get(target)
        if followed is not None and followed.failure is not None:
            raise followed.failure
        return self._known.get(target, 0)

    def _pushed(self, follow_id: int, first: int, framed: bytes, count: int, last: int) -> None:
        target = self._followed.by_id.get(follow_id)
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
        target = self._followed.by_id.get(stream_id)
        if target is not None:
            self._followed.by_key[target].failure = error
            # Wakes its followers, whose wait raises the pump's error.
            if target.is_space:
                self._tail.publish(target.space, 0, (), ())
            else:
                self._tail.publish(target.space, 0, (), ((target.segment, 0, ()),))
            return
        space = self._watched.by_id.get(stream_id)
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
        async with self._watches.watch(space) as watch, self._holding(self._watched, space):
            yield watch

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
