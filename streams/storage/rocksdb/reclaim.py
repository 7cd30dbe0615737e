"""Giving the disk space of removed records back.

A removal deletes the chunks that lie wholly below the new first offsets
with range tombstones (see the store's removals): from then on nothing reads
them, but their bytes stay in RocksDB's table files until a compaction
rewrites those files. RocksDB compacts on its own as data is written; the
store's ``reclaim`` task (every ``reclaim_seconds``) compacts the key ranges
removed since its last run at once, so that the space comes back even when
nothing else is written. The compaction runs in a worker thread (RocksDB
releases the GIL while it works, so the event loop and writers go on).

While it runs, the compaction holds the database: rocksdict refuses to close
it meanwhile ("Already borrowed"), and a database left open keeps its lock,
so the store could not open it again (at a reopen after a full disk, or after
a close). Cancelling the task that awaits a compaction does not stop its
thread; so the store waits for the thread itself (:meth:`Reclaim.settle`)
before it closes or reopens the database.

What it gave back is measured as the decrease of the table files' total size
(``rocksdb.total-sst-files-size``) across the compaction.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import rocksdict

from streams.storage.port import DiskUsage

log = logging.getLogger(__name__)

# Past this many separate ranges, one compaction of the span that holds them
# all costs less than one per range.
MAX_RANGES = 16


def merged(ranges: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``ranges`` sorted, overlapping and touching ones joined."""
    out: list[tuple[bytes, bytes]] = []
    for begin, end in sorted(ranges):
        if out and begin <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((begin, end))
    return out


def directory_bytes(path: Path) -> int:
    """What the files directly under ``path`` take (RocksDB keeps no subfolders)."""
    total = 0
    with os.scandir(path) as entries:
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:  # RocksDB deleted it meanwhile
                continue
    return total


class Reclaim:
    """Key ranges waiting for a compaction, and what compactions gave back.

    ``db`` returns the open database (it changes when the store reopens)."""

    def __init__(self, db: Callable[[], rocksdict.Rdict], path: Path) -> None:
        self._db = db
        self._path = path
        self._ranges: list[tuple[bytes, bytes]] = []
        self.reclaimed_bytes = 0
        # Seconds the last compaction took (for the benchmark and the logs).
        self.last_seconds = 0.0
        # One compaction at a time, in a thread of its own; the running one,
        # which may outlive a cancelled step.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="streams-reclaim")
        self._job: Future[tuple[int, int]] | None = None
        self._closed = False

    @property
    def idle(self) -> bool:
        """No compaction runs: the database may be closed or reopened."""
        return self._job is None or self._job.done()

    async def settle(self) -> None:
        """Returns once no compaction runs (whether it worked or not)."""
        job = self._job
        if job is not None and not job.done():
            await asyncio.wait([asyncio.wrap_future(job)])

    async def close(self) -> None:
        """Starts no compaction any more, and returns once none runs; a running
        one stops after its current range."""
        self._closed = True
        await self.settle()
        self._executor.shutdown(wait=False)

    @property
    def waiting(self) -> int:
        return len(self._ranges)

    def extend(self, ranges: Iterable[tuple[bytes, bytes]]) -> None:
        self._ranges.extend(ranges)

    def usage(self) -> DiskUsage:
        return DiskUsage(directory_bytes(self._path), self.reclaimed_bytes)

    async def step(self) -> int:
        """Compacts the ranges removed since the last step; returns the bytes
        the table files shrank by."""
        if not self._ranges or self._closed or not self.idle:
            return 0
        ranges = merged(self._ranges)
        self._ranges = []
        if len(ranges) > MAX_RANGES:
            ranges = [(ranges[0][0], max(end for _, end in ranges))]
        started = time.perf_counter()
        self._job = self._executor.submit(self._compact, self._db(), ranges)
        before, after = await asyncio.wrap_future(self._job)
        self.last_seconds = time.perf_counter() - started
        freed = max(0, before - after)
        self.reclaimed_bytes += freed
        log.info(
            "reclaim: compacted %d removed key ranges in %.2f s, table files %d -> %d bytes",
            len(ranges),
            self.last_seconds,
            before,
            after,
        )
        return freed

    def _compact(self, db: rocksdict.Rdict, ranges: list[tuple[bytes, bytes]]) -> tuple[int, int]:
        """Compacts ``ranges`` (in the worker thread); the table files' size before and after."""
        before = self._table_bytes(db)
        for begin, end in ranges:
            if self._closed:
                break
            db.compact_range(begin, end)
        return before, self._table_bytes(db)

    @staticmethod
    def _table_bytes(db: rocksdict.Rdict) -> int:
        return db.property_int_value("rocksdb.total-sst-files-size") or 0
