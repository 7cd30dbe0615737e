"""The RocksDB engine's removals, measured in process (no server): a trim of
N MB and the reclaim that gives the disk back, and one retention pass over
many segments.

    python bench/lifecycle_retention.py [--trim-mb 64] [--segments 100000]

Each measurement is a function returning a dict of figures, for
scripts/bench (the lifecycle section) to call:

- :func:`trim_and_reclaim`: fills a space with ``mb`` MB of incompressible
  records (stored twice: segment and space copies), reopens (table files),
  trims it all, then runs the reclaim step (the compaction): the time of
  each, the disk before and after, what reclaim counted, and the longest
  event-loop stall seen while the compaction ran (it runs in a thread).
- :func:`retention_pass`: ``segments`` segments of one record each over 10
  spaces; a pass with max_age where nothing is old enough (cost: the space
  catalog) and one where everything is (cost: what it removes), with time,
  Python memory peak and chunks read.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

from streams.model import RetentionPolicy, SegmentAppend, Target, Transaction
from streams.storage.rocksdb.store import RocksStore, StoreOptions

MB = 1_000_000
SPACES = 10


def _body(payload: bytes) -> bytes:
    return b"\x0a" + bytes([0xD0, 0x0F]) + payload  # field 1, 2000 bytes


async def _stalls(stop: asyncio.Event) -> float:
    """The longest gap between two event-loop turns (a 1 ms heartbeat) until ``stop``."""
    worst, last = 0.0, time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        worst, last = max(worst, now - last - 0.001), now
    return worst


def trim_and_reclaim(mb: int) -> dict[str, float]:
    async def run(path: Path) -> dict[str, float]:
        store = RocksStore.open(path, StoreOptions(sync=False))
        for i in range(mb * MB // (2000 * 100)):
            bodies = tuple(_body(os.urandom(2000)) for _ in range(100))
            append = SegmentAppend(f"seg{i % 16}", bodies, None)
            await store.produce(Transaction("s", (append,), "", b""))
        await store.close()
        store = RocksStore.open(path)  # the log replayed into table files
        before = store.disk_usage()
        started = time.perf_counter()
        _, removed = await store.trim(Target("s"), await store.last_offset(Target("s")) + 1)
        trimmed = time.perf_counter() - started
        stop = asyncio.Event()
        watcher = asyncio.ensure_future(_stalls(stop))
        started = time.perf_counter()
        freed = await store.reclaim()
        reclaimed = time.perf_counter() - started
        stop.set()
        stall = await watcher
        after = store.disk_usage()
        await store.close()
        assert before is not None and after is not None
        return {
            "removed_mb": removed.bytes / MB,
            "trim_s": trimmed,
            "slices": store.stats.removal_slices,
            "reclaim_s": reclaimed,
            "reclaim_loop_stall_ms": stall * 1000,
            "disk_before_mb": before.bytes / MB,
            "disk_after_mb": after.bytes / MB,
            "reclaimed_mb": freed / MB,
        }

    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(run(Path(tmp) / "db"))


def retention_pass(segments: int) -> dict[str, float]:
    async def run(path: Path) -> dict[str, float]:
        now = [1_000 * 10**9]
        store = RocksStore.open(path, StoreOptions(sync=False, clock=lambda: now[0]))
        per_space = segments // SPACES
        for space in range(SPACES):
            for start in range(0, per_space, 10_000):
                appends = tuple(
                    SegmentAppend(f"seg{i:07d}", (b"\x0a\x01x",), None)
                    for i in range(start, min(start + 10_000, per_space))
                )
                await store.produce(Transaction(f"space{space}", appends, "", b""))
        await store.close()
        figures: dict[str, float] = {}
        for case, age in (("nothing", 10**6), ("everything", 10)):
            store = RocksStore.open(path, StoreOptions(sync=False, clock=lambda: now[0]))
            now[0] += 100 * 10**9
            reads = store.stats.chunk_reads
            tracemalloc.start()
            started = time.perf_counter()
            removed = await store.enforce_retention(RetentionPolicy(max_age_ns=age * 10**9))
            figures[f"{case}_s"] = time.perf_counter() - started
            figures[f"{case}_peak_mib"] = tracemalloc.get_traced_memory()[1] / (1 << 20)
            tracemalloc.stop()
            figures[f"{case}_removed"] = removed.records
            figures[f"{case}_chunk_reads"] = store.stats.chunk_reads - reads
            figures[f"{case}_slices"] = store.stats.removal_slices
            await store.close()
        return figures

    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(run(Path(tmp) / "db"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trim-mb", type=int, default=64)
    parser.add_argument("--segments", type=int, default=100_000)
    args = parser.parse_args()
    for name, figures in (
        (f"trim {args.trim_mb} MB + reclaim", trim_and_reclaim(args.trim_mb)),
        (f"retention pass, {args.segments} segments", retention_pass(args.segments)),
    ):
        print(name)
        for key, value in figures.items():
            print(f"  {key}: {value:,.3f}")


if __name__ == "__main__":
    main()
