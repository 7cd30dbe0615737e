"""Group commit: one fsync of the write-ahead log acks every write before it.

Writers put their batch into RocksDB with sync off (fast, and it keeps the
event loop free of fsyncs), take a ticket, and await it. One task at a time
runs the fsync in a worker thread; when it returns, every ticket taken before
it started is durable, so all their writers are acked by that one fsync.
Writes that arrive while an fsync runs are covered by the next one.

A failed fsync is final: the data it covered may or may not be on disk, and
retrying cannot tell, so every waiter fails and so does every later write
(the fsyncgate lesson: PostgreSQL, 2018).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from streams.errors import InvariantViolation, Unavailable


class SyncAborted(Exception):
    """The sync did not run because a write before it failed (a full disk): the
    writes it was to cover have an unknown outcome, but no fsync failed, so
    writing may resume once the store has been reopened."""


class GroupCommit:
    """Orders fsyncs after writes; acks each write once an fsync covers it.

    Example::

        group = GroupCommit(lambda: db.flush_wal(True), on_durable=publish)
        db.write(batch)              # sync off
        await group.wait(group.ticket())
    """

    def __init__(
        self,
        sync: Callable[[], None] | None,
        on_durable: Callable[[int], None],
        observe: Callable[[float], None] | None = None,
    ) -> None:
        """``sync`` makes every write so far durable; None when a write is durable
        as soon as it is in the store (``--no-sync``). ``observe`` gets each
        fsync's duration in seconds."""
        self._sync = sync
        self._on_durable = on_durable
        self._observe = observe
        self._written = 0
        self._durable = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self.failure: str | None = None

    @property
    def written(self) -> int:
        """The newest ticket handed out."""
        return self._written

    def ticket(self) -> int:
        """Takes a ticket for a write that has just gone into the store."""
        self.check()
        self._written += 1
        if self._sync is None:
            self._durable = self._written
            self._on_durable(self._written)
        return self._written

    async def wait(self, ticket: int) -> None:
        """Returns once an fsync has covered ``ticket``; raises Unavailable if one failed."""
        self.check()
        if not 0 <= ticket <= self._written:
            raise InvariantViolation(f"ticket {ticket} was never handed out (last {self._written})")
        if ticket <= self._durable:
            return
        sync = self._sync
        if sync is None:  # ticket() makes every write durable at once then
            raise InvariantViolation(f"ticket {ticket} is not durable though writes need no fsync")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((ticket, future))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(sync))
        await future

    async def barrier(self) -> None:
        """Returns once everything written so far is durable."""
        await self.wait(self._written)

    async def drain(self) -> None:
        """Waits for the running fsync task, if any (at shutdown)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    @property
    def idle(self) -> bool:
        """No fsync is running or queued."""
        return self._task is None

    def check(self) -> None:
        """Raises Unavailable once an fsync has failed: writes stay stopped."""
        if self.failure is not None:
            raise Unavailable(f"writes are stopped: {self.failure}")

    async def _run(self, sync: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._durable < self._written:
                covered = self._written
                started = time.perf_counter()
                # Straight to the default executor, as asyncio.to_thread does, without
                # copying the context (the fsync reads none): once per fsync.
                await loop.run_in_executor(None, sync)
                if self._observe is not None:
                    self._observe(time.perf_counter() - started)
                # A reset() while this fsync ran may have moved past it already.
                self._durable = max(self._durable, covered)
                self._on_durable(covered)
                self._release(covered)
        except SyncAborted as exc:
            self._fail_waiters(
                Unavailable(
                    f"the outcome of this write is unknown ({exc}); retry it with the same "
                    "transaction_id once writes resume"
                )
            )
        except Exception as exc:  # any fsync failure is final
            self.failure = f"fsync of the write-ahead log failed ({exc}); restart the server"
            self._fail_waiters(Unavailable(f"writes are stopped: {self.failure}"))
        finally:
            self._task = None

    def _fail_waiters(self, error: Exception) -> None:
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(error)
        self._waiters.clear()

    def reset(self) -> None:
        """Forgets unsynced tickets once the store has been reopened from disk:
        what they covered is on disk or not, as the reopened store found it."""
        self._fail_waiters(
            Unavailable(
                "the outcome of this write is unknown (the store was reopened after a full "
                "disk); retry it with the same transaction_id"
            )
        )
        self._durable = self._written

    def _release(self, covered: int) -> None:
        still = []
        for ticket, future in self._waiters:
            if ticket > covered:
                still.append((ticket, future))
            elif not future.done():
                future.set_result(None)
        self._waiters = still
