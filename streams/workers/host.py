"""The store host: serves the writer's store to front processes over a Unix
socket (see :mod:`streams.workers`).

Each front is one connection, and hostile until checked: a peer of another
uid, or one ``allow_peer`` refuses, is dropped before a frame is read
(SO_PEERCRED); frames decode only model and error types (:mod:`ipc`); a
message of the wrong shape drops the connection before anything runs. A call
(``(id, method, args)``) runs the store method and answers ``(id, ok,
value)``: on Python 3.12+ in an eager Task (it runs at once; a call that never
awaits is answered within the same turn of the event loop; store methods may
use ``asyncio.timeout``, as ``wait_for`` does there); on 3.11, with no eager
tasks, the coroutine is driven by the callbacks of what it awaits, with no
current Task (``asyncio.wait_for`` works there, ``asyncio.timeout`` does not),
because a Task per call costs too much of a Produce round trip there (see
``EAGER_TASKS``). The answers of one turn leave in one write
(:class:`~streams.workers.ipc.Link`).

Followers: per (front, followed target) one pump follows the target through
the port and pushes each durable record once to the front, which serves its
followers from a local tail. Per followed space one sentinel watches the
space and tells the fronts when records were removed (a retention pass or a
DeleteSpace run by the writer itself), so that they drop what their tails
hold of it; removals made through the host are told before they are answered
(a removal the writer made on its own reaches a front a moment later; a
BARRIER compares every space the front follows anew and answers once the
removals found are sent: a front that must see it at once calls
:meth:`RemoteStore.barrier`). Watches are
forwarded the same way, one per (front, space).

Bounds per front, each derived from the server's :class:`~streams.limits.Limits`
or a named constant below:

- unsent bytes: ``buffer_bytes`` (default ``BUFFERED_RESPONSES`` x
  ``max_response_bytes``, 4 MiB). Past it the front's pumps pause (they read
  what is new once it catches up: records are coalesced, never dropped, no
  wake-up lost) and no call starts (they wait in the socket, whose reading
  stops). A read reserves its answer (its cut, at most half a frame) when it
  starts and starts only if that fits beside what is unsent and reserved (or
  when nothing is reserved: one always runs), so what the host holds for a
  front is at most ``buffer_bytes`` plus one answer or push.
- calls running at once: ``max_calls`` (default ``MAX_CALLS``, a named
  constant: calls beyond it wait in the socket; reads are bounded by bytes).
- one push: at most ``max_batch`` records and ``max_response_bytes`` (what one
  Consume response carries; at most half a frame).
- pumps and watches: ``max_concurrent_streams``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from streams.errors import InvariantViolation, ResourceExhausted, Unavailable
from streams.limits import Limits
from streams.model import MAX_OFFSET, Cut, SpaceInfo, Target
from streams.storage.port import Store
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
    sendable_error,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a front may leave unread, in largest Consume responses, before its
# pumps pause and its calls wait (4 MiB with the default limits).
BUFFERED_RESPONSES = 4
# Calls of one front running at once; more wait in the socket. Not a memory
# bound (reads are bounded by bytes, see above): it caps the coroutines.
MAX_CALLS = 1024
# How often a change of the store's write_error reaches the fronts when no
# call brings it.
WRITE_ERROR_SECONDS = 1.0


class StoreHost:
    """Serves one store to front processes over a Unix socket.

    Example::

        host = StoreHost(store, Path(private_dir) / "store.sock")
        await host.start()      # fronts may connect now
        ...
        await host.close()      # fronts' calls then raise Unavailable
    """

    def __init__(
        self,
        store: Store,
        path: Path,
        *,
        limits: Limits | None = None,
        buffer_bytes: int | None = None,
        max_calls: int = MAX_CALLS,
        allow_peer: Callable[[int], bool] | None = None,
    ) -> None:
        """``limits``: the server's (frames follow its request and response
        limits, streams per front its ``max_concurrent_streams``); the
        defaults when None. ``allow_peer``: whether the process of this pid
        may connect (the fronts the writer spawned); a process of another uid
        than this one's never may (None: any process of this uid)."""
        limits = limits or Limits()
        if buffer_bytes is None:
            buffer_bytes = BUFFERED_RESPONSES * limits.max_response_bytes
        if buffer_bytes < 1 or max_calls < 1:
            raise ValueError(
                f"store host: buffer_bytes ({buffer_bytes}) and max_calls ({max_calls}) "
                "must be positive"
            )
        self.store = store
        self.path = path
        self.max_frame = ipc.max_frame_bytes(limits)
        # What one push carries at most: one Consume response.
        self.push_cut = Cut(limits.max_batch, min(limits.max_response_bytes, self.max_frame // 2))
        self.max_streams = limits.max_concurrent_streams
        self.buffer_bytes = buffer_bytes
        self.max_calls = max_calls
        self.allow_peer = allow_peer
        self.fronts: set[_Front] = set()
        self._sentinels: dict[str, _Sentinel] = {}
        self._server: asyncio.AbstractServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.closed = False

    async def start(self) -> None:
        """Listens on ``path``; fronts may connect once it returns."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Front(self).link, str(self.path))
        os.chmod(self.path, 0o600)
        self._ticker = loop.create_task(self._tick_write_error())

    async def close(self) -> None:
        """Stops listening and drops every front's connection (their calls then
        raise Unavailable). Leaves the store open: its owner closes it."""
        if self.closed:
            return
        self.closed = True
        if self._ticker is not None:
            self._ticker.cancel()
        if self._server is not None:
            self._server.close()
        for front in list(self.fronts):
            front.link.close()
        for sentinel in list(self._sentinels.values()):
            sentinel.task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def admit(self, transport: asyncio.Transport) -> str | None:
        """Why the peer of ``transport`` may not connect (None: it may)."""
        credentials = ipc.peer_credentials(transport)
        if credentials is None:
            return "the peer's credentials are unknown (no SO_PEERCRED)"
        pid, uid, _ = credentials
        if uid != os.getuid():
            return f"process {pid} runs as uid {uid}, the writer as {os.getuid()}"
        if self.allow_peer is not None and not self.allow_peer(pid):
            return f"process {pid} is not a front of this server"
        return None

    # -- what every front hears ---------------------------------------------

    def removed(self, space: str, segments: tuple[str, ...] | None) -> None:
        """Records of ``segments`` of ``space`` (None: any) were removed: every
        front following that space drops what its tail holds of them."""
        for front in self.fronts:
            if front.spaces[space]:
                front.link.send((0, REMOVED, space, segments))

    def hold_space(self, space: str) -> Coroutine[Any, Any, None]:
        """Watches ``space`` for removals (once for every pump in it)."""
        sentinel = self._sentinels.get(space)
        if sentinel is None:
            sentinel = self._sentinels[space] = _Sentinel(self, space)
        sentinel.holders += 1
        return sentinel.ready()

    def sentinels(self, spaces: Iterable[str]) -> list[_Sentinel]:
        return [self._sentinels[space] for space in spaces if space in self._sentinels]

    def release_space(self, space: str) -> None:
        sentinel = self._sentinels.get(space)
        if sentinel is None:
            return
        sentinel.holders -= 1
        if sentinel.holders < 1:
            del self._sentinels[space]
            sentinel.task.cancel()

    async def _tick_write_error(self) -> None:
        while True:
            await asyncio.sleep(WRITE_ERROR_SECONDS)
            for front in self.fronts:
                front.tell_write_error()


class _Sentinel:
    """Tells the fronts following a space when records of it were removed by
    anyone: the count of removed records (last position minus the records
    retained) only grows, and grows exactly when records are removed; a space
    deleted is gone from the infos."""

    def __init__(self, host: StoreHost, space: str) -> None:
        self._host = host
        self._space = space
        self.holders = 0
        self._seen: SpaceInfo | None = None
        self._checking = asyncio.Lock()  # one comparison at a time: ``_seen`` only moves on
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def ready(self) -> None:
        await asyncio.shield(self._started)

    async def _run(self) -> None:
        store = self._host.store
        try:
            async with store.watch(self._space) as watch:
                self._seen = await store.get_space(self._space)
                self._started.set_result(None)
                while True:
                    await watch.changes()
                    await self.check()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._started.done():
                self._started.set_exception(exc)
                self._started.exception()  # retrieved: the pump that waits reports it
            else:
                # Removals are not heard any more: drop every window of the space
                # now, and let pumps go on (their followers read through the host).
                log.warning(
                    "store host: watching space %r for removals failed: %s", self._space, exc
                )
                self._host.removed(self._space, None)

    async def check(self) -> None:
        """Tells the fronts if records were removed since the last check (a
        barrier runs it: removals made before it are told before it answers)."""
        if not self._started.done() or self._started.exception() is not None:
            return
        async with self._checking:
            now = await self._host.store.get_space(self._space)
            if _removed_between(self._seen, now):
                self._host.removed(self._space, None)
            self._seen = now


def _removed_between(before: SpaceInfo | None, after: SpaceInfo | None) -> bool:
    if after is None:
        # Deleted (or never written): whatever a front holds of it is removed.
        # ``before`` may be older than records written since (the watch may
        # lag), so "nothing before" proves nothing: tell it (a space that
        # never existed has nothing in any window to drop).
        return True
    removed = after.last_position - after.record_count
    return removed > (0 if before is None else before.last_position - before.record_count)


# On 3.12+ each call is an eager Task: it runs at once, to its end when it
# never awaits (no loop turn), and store methods may use asyncio.timeout (as
# wait_for does since 3.12). 3.11 has no eager tasks, and a Task per call cost
# about 6 us of a 55 us Produce round trip (bench/ipc.py): there a call is
# driven by _Call, with no current Task (asyncio.wait_for works,
# asyncio.timeout not).
EAGER_TASKS = sys.version_info >= (3, 12)


class _Call:
    """One call's coroutine, driven by the callbacks of what it awaits (what a
    Task does, without a Task: a call that never awaits costs no loop turn)."""

    __slots__ = ("_coro", "_front", "_id", "_reserved", "_throw", "_waiting")

    def __init__(
        self, front: _Front, call_id: int, coro: Coroutine[Any, Any, Any], reserved: int
    ) -> None:
        self._front = front
        self._reserved = reserved
        self._id = call_id
        self._coro = coro
        self._waiting: asyncio.Future[Any] | None = None
        self._throw: BaseException | None = None

    def start(self) -> None:
        self._front._calls.add(self)
        self._step()

    def _step(self, _: object = None) -> None:
        self._waiting = None
        try:
            if self._throw is not None:
                error, self._throw = self._throw, None
                yielded = self._coro.throw(error)
            else:
                yielded = self._coro.send(None)
        except StopIteration as done:
            self._end(True, done.value)
            return
        except asyncio.CancelledError:
            self._end(False, Unavailable("the call was cancelled"))
            return
        except Exception as exc:
            self._end(False, exc)
            return
        if yielded is None:  # a bare yield (asyncio.sleep(0)): go on next turn
            asyncio.get_running_loop().call_soon(self._step)
        elif getattr(yielded, "_asyncio_future_blocking", None):
            yielded._asyncio_future_blocking = False
            self._waiting = yielded
            yielded.add_done_callback(self._step)
        else:
            self._throw = InvariantViolation(f"a store call yielded {yielded!r}")
            asyncio.get_running_loop().call_soon(self._step)

    def _end(self, ok: bool, value: object) -> None:
        self._front._calls.discard(self)
        self._front.answer(self._id, ok, value, self._reserved)

    def cancel(self) -> None:
        """As a Task is cancelled: what it awaits is cancelled, or it gets
        CancelledError at its next step, and it runs its clean-up (its answer
        then goes nowhere)."""
        if self._waiting is None or not self._waiting.cancel():
            self._throw = asyncio.CancelledError()


class _Front:
    """One front's connection: its calls, pumps and watches."""

    def __init__(self, host: StoreHost) -> None:
        self._host = host
        self._store = host.store
        self.link = ipc.Link(
            host.max_frame, host.buffer_bytes, self._received, self._lost, host.admit
        )
        self._loop = asyncio.get_running_loop()
        self._calls: set[asyncio.Task[None] | _Call] = set()
        # Calls read while none may start (at most what one read brought).
        self._deferred: deque[tuple[int, str, tuple[Any, ...]]] = deque()
        self._streams: dict[int, asyncio.Task[None]] = {}
        self.spaces: Counter[str] = Counter()  # pumps by space
        self._write_error: str | None = None
        self.reading = True  # its calls are read (not paused by _gate_reading)
        self._waking: asyncio.Task[None] | None = None  # resumes reading once writable
        self.reserved = 0  # bytes the answers of running reads may take
        self._handlers: dict[str, Callable[..., Coroutine[Any, Any, Any]]] = {
            FOLLOW: self._follow,
            WATCH: self._watch,
            BARRIER: self._barrier,
            HELLO: self._hello,
        }
        host.fronts.add(self)

    # -- calls --------------------------------------------------------------

    def _received(self, message: object) -> None:
        try:
            call_id, name, args = ipc.check_call(message)
        except ipc.FrameError as exc:
            self.link.abort(exc)  # a broken or hostile peer: nothing of it runs
            return
        if name in (UNFOLLOW, UNWATCH) and not self._deferred:
            self._end_stream(args[0])
            return
        if self._deferred or not self._may_start(self._answer_bytes(name, args)):
            # Over the buffer or the calls: this call waits (reading stops).
            self._deferred.append((call_id, name, args))
        else:
            self._start(call_id, name, args)
        self._gate_reading()

    def _answer_bytes(self, name: str, args: tuple[Any, ...]) -> int:
        """What the answer of a call may take: a read's cut (at most half a
        frame, see _store_call); the answers of other calls are small."""
        if name == "read" and len(args) > 3 and isinstance(args[3], Cut):
            return min(args[3].max_bytes, self._host.max_frame // 2)
        return 0

    def _may_start(self, answer_bytes: int = 0) -> bool:
        if not self.link.writable.is_set() or len(self._calls) >= self._host.max_calls:
            return False
        if not self.reserved:  # one read always runs
            return True
        return self.reserved + answer_bytes + self.link.buffered <= self._host.buffer_bytes

    def _start(self, call_id: int, name: str, args: tuple[Any, ...]) -> None:
        if name in (UNFOLLOW, UNWATCH):
            self._end_stream(args[0])
            return
        if self._host.closed:
            self._reply(call_id, False, Unavailable("the store host is closed"))
            return
        handler = self._handlers.get(name)
        reserved = self._answer_bytes(name, args)
        try:
            # A pump or watch is registered here, in order with the UNFOLLOW
            # or UNWATCH that may follow in the same read.
            coro = (
                _store_call(self._host, name, args) if handler is None else handler(call_id, *args)
            )
        except Exception as exc:
            self._reply(call_id, False, exc)
            return
        if EAGER_TASKS:
            serve = self._serve(call_id, coro, reserved)
            self.reserved += reserved
            task = asyncio.Task(serve, loop=self._loop, eager_start=True)
            if not task.done():
                self._calls.add(task)
        else:
            self.reserved += reserved
            _Call(self, call_id, coro, reserved).start()

    async def _serve(self, call_id: int, coro: Coroutine[Any, Any, Any], reserved: int) -> None:
        """Runs one call in its own Task (store methods may use asyncio.timeout)."""
        try:
            value, ok = await coro, True
        except asyncio.CancelledError:
            if self.link.closed:
                self.reserved -= reserved
                return  # the front is gone: nobody hears the answer
            value, ok = Unavailable("the call was cancelled"), False
        except Exception as exc:
            value, ok = exc, False
        finally:
            self._calls.discard(asyncio.current_task())  # type: ignore[arg-type]
        self.answer(call_id, ok, value, reserved)

    def answer(self, call_id: int, ok: bool, value: object, reserved: int) -> None:
        self.reserved -= reserved
        self.tell_write_error()
        self._reply(call_id, ok, value)
        self._gate_reading()

    def _reply(self, call_id: int, ok: bool, value: object) -> None:
        if not ok:
            value = sendable_error(value)  # type: ignore[arg-type]
        try:
            self.link.send((call_id, ok, value))
        except ipc.FrameError as exc:
            error = ResourceExhausted(f"the store's answer cannot reach the front: {exc}")
            self.link.send((call_id, False, error))
        except Exception as exc:  # it does not pickle: the front hears what it was
            # Its type, not its repr: a big value's repr is bigger still, and an
            # answer too large for a frame would leave the call waiting for ever.
            error = InvariantViolation(f"a {type(value).__name__} cannot travel: {exc!r:.200}")
            self.link.send((call_id, False, error))

    def tell_write_error(self) -> None:
        error = self._store.write_error
        if error != self._write_error:
            self._write_error = error
            self.link.send((0, WRITE_ERROR, error))

    def _gate_reading(self) -> None:
        """Reads calls only while few run and the front takes what it is sent."""
        writable = self.link.writable.is_set()
        if not writable and self._waking is None:
            self._waking = asyncio.get_running_loop().create_task(self._when_writable())
        while self._deferred and self._may_start(self._answer_bytes(*self._deferred[0][1:])):
            self._start(*self._deferred.popleft())
        wanted = not self._deferred and self._may_start()
        if wanted == self.reading:
            return
        self.reading = wanted
        if wanted:
            self.link.resume_reading()
        else:
            self.link.pause_reading()

    async def _when_writable(self) -> None:
        try:
            await self.link.writable.wait()
        finally:
            self._waking = None
        self._gate_reading()

    async def _barrier(self, _: int) -> None:
        """Answers once every removal the store completed before now has been
        told (each followed space's sentinel compares the space anew), so the
        front then has every REMOVED that concerns it, and everything sent before."""
        sentinels = self._host.sentinels(self.spaces)
        if sentinels:
            await asyncio.gather(*(sentinel.check() for sentinel in sentinels))

    async def _hello(self, _: int, max_frame: int) -> None:
        if max_frame != self._host.max_frame:
            asyncio.get_running_loop().call_soon(self.link.close)  # once answered
            raise InvariantViolation(
                f"the front's frames are up to {max_frame} bytes, the store host's up to "
                f"{self._host.max_frame}: give StoreHost and connect the same limits"
            )

    # -- follow and watch ---------------------------------------------------------

    @property
    def streams(self) -> int:
        """Pumps and watches of this front right now."""
        return len(self._streams)

    def _check_streams(self) -> None:
        if len(self._streams) >= self._host.max_streams:
            raise ResourceExhausted(
                f"the front follows and watches {len(self._streams)} targets, the most "
                f"max_concurrent_streams ({self._host.max_streams}) allows"
            )

    def _start_stream(
        self,
        stream_id: int,
        body: Callable[[asyncio.Future[T]], Coroutine[Any, Any, None]],
        released: str,
        cleanup: Callable[[], None] | None = None,
    ) -> Coroutine[Any, Any, T]:
        """Starts the pump or watch ``body(started)`` as ``stream_id``; answers
        what it sets ``started`` to. A failure before that is the call's error,
        after it a FAILED message; ``released``: the call's error when it ends
        first. ``cleanup`` runs last, once the task ran at all."""
        self._check_streams()
        started: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        task = asyncio.get_running_loop().create_task(
            self._run_stream(stream_id, body, started, released, cleanup)
        )
        self._streams[stream_id] = task
        return _started(started, task)

    async def _run_stream(
        self,
        stream_id: int,
        body: Callable[[asyncio.Future[T]], Coroutine[Any, Any, None]],
        started: asyncio.Future[T],
        released: str,
        cleanup: Callable[[], None] | None,
    ) -> None:
        try:
            await body(started)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not started.done():
                started.set_exception(exc)
            else:
                self.link.send((0, FAILED, stream_id, sendable_error(exc)))
        finally:
            if not started.done():  # released (or the front gone) before it began
                started.set_exception(Unavailable(released))
            self._streams.pop(stream_id, None)
            if cleanup is not None:
                cleanup()

    def _follow(self, follow_id: int, target: Target) -> Coroutine[Any, Any, int]:
        """Starts the pump of ``target``; answers the last offset it starts after."""

        def release() -> None:  # undoes the pump's first step
            self.spaces[target.space] -= 1
            if self.spaces[target.space] < 1:
                del self.spaces[target.space]
            self._host.release_space(target.space)

        return self._start_stream(
            follow_id,
            functools.partial(self._pump, follow_id, target),
            f"{target.describe()}: no longer followed",
            release,
        )

    async def _pump(self, follow_id: int, target: Target, started: asyncio.Future[int]) -> None:
        host, store, link = self._host, self._store, self.link
        self.spaces[target.space] += 1
        await host.hold_space(target.space)
        async with store.follow(target) as sub:
            following = await store.last_offset(target)
            started.set_result(following)
            cut = host.push_cut
            while True:
                await sub.wait(following + 1)
                while not link.writable.is_set():
                    await link.writable.wait()
                if link.closed:
                    return
                first = following + 1
                batch, after = await store.read(target, first, MAX_OFFSET, cut)
                if after <= first:
                    raise InvariantViolation(
                        f"{target.describe()}: a read from durable offset {first} "
                        f"did not move on ({after})"
                    )
                # Only a dense run goes into the front's window; past removed
                # records the front learns of the offsets alone.
                if batch.count == after - first:
                    link.send((0, PUSH, follow_id, first, batch.to_wire(), batch.count, after - 1))
                else:
                    link.send((0, PUSH, follow_id, first, b"", 0, after - 1))
                following = after - 1

    def _watch(self, watch_id: int, space: str) -> Coroutine[Any, Any, None]:
        return self._start_stream(
            watch_id,
            functools.partial(self._forward, watch_id, space),
            f"space {space!r}: no longer watched",
        )

    async def _forward(self, watch_id: int, space: str, started: asyncio.Future[None]) -> None:
        link = self.link
        async with self._store.watch(space) as watch:
            started.set_result(None)
            while True:
                # Not asked for while the front lags: the watch coalesces meanwhile.
                while not link.writable.is_set():
                    await link.writable.wait()
                if link.closed:
                    return
                names = await watch.changes()
                link.send((0, CHANGES, watch_id, None if names is None else tuple(names)))

    def _end_stream(self, stream_id: int) -> None:
        task = self._streams.pop(stream_id, None)
        if task is not None:
            task.cancel()

    # -- the end ----------------------------------------------------------------

    def _lost(self, exc: Exception | None) -> None:
        if exc is not None and not self._host.closed:
            log.warning("store host: a front's connection broke: %s", exc)
        self._host.fronts.discard(self)
        for call in list(self._calls):
            call.cancel()
        self._calls.clear()
        self._deferred.clear()
        for task in list(self._streams.values()):
            task.cancel()
        self._streams.clear()


async def _started(started: asyncio.Future[T], task: asyncio.Task[None]) -> T:
    """What ``started`` holds once the pump or watch ``task`` began; Unavailable
    when it ended first (released, even before its first step)."""
    await asyncio.wait((started, task), return_when=asyncio.FIRST_COMPLETED)
    if started.done():
        return started.result()
    raise Unavailable("released before it began")


async def _store_call(host: StoreHost, name: str, args: tuple[Any, ...]) -> Any:
    """Runs store method ``name``; what it returns, made to travel; removals
    are told to the fronts before the caller hears of them."""
    store = host.store
    if name == "produce":
        return ipc.pack_result(await store.produce(ipc.unpack_transaction(args[0])))
    if name == "read":
        target, first, last, cut, prefix = args
        # A read fits in one frame: it may return fewer records than asked (the
        # next offset says where to go on), at least one always fits.
        if cut.max_bytes > host.max_frame // 2:
            cut = Cut(cut.max_records, host.max_frame // 2, cut.max_skip_bytes)
        batch, after = await store.read(target, first, last, cut, prefix)
        return batch.to_wire(), batch.count, after
    result = await getattr(store, name)(*args)
    if name == "peek":
        return None if result is None else (result.to_wire(), result.count)
    if name == "trim":
        target = args[0]
        if result[1].records:
            host.removed(target.space, None if target.is_space else (target.segment,))
    elif name == "delete_segment":
        if result.records:
            host.removed(args[0], (args[1],))
    elif name == "delete_space":
        host.removed(args[0], None)
    return result
