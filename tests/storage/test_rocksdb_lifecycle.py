"""The RocksDB engine's side of the data lifecycle (rules 11-14 are checked for
every backend by test_port_lifecycle.py): space reads over records their
segment removed (holes), removals surviving a crash, the disk given back by
reclaim, what a retention pass reads, and slices that let writes through."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from streams.model import (
    Cut,
    Record,
    RetentionPolicy,
    SegmentAppend,
    SpaceConfig,
    Target,
    Transaction,
    record_bytes,
)
from streams.storage.rocksdb.store import RocksStore, StoreOptions

from .conftest import body, txn

MIB = 1 << 20
ALL = Cut(100_000, 256 * MIB)


async def read(store: RocksStore, target: Target, first: int = 1) -> list[Record]:
    batch, _ = await store.read(target, first, 2**64 - 1, ALL)
    return list(batch.records())


async def stepwise(store: RocksStore, target: Target) -> list[tuple[str, int, int]]:
    """(segment, sequence, position) of each record, read one per step."""
    first, last, found = 1, await store.last_offset(target), []
    while first <= last:
        batch, after = await store.read(target, first, last, Cut(1, MIB))
        assert after > first
        found += [(r.segment, r.sequence, r.position) for r in batch.records()]
        first = after
    return found


def interleaved(store_path: Path, rounds: int = 30) -> list[tuple[str, int, int]]:
    """Segments a, b, c written in turn (a: 2 records per write): positions of
    their records interleave. Returns (segment, sequence, position) of all."""

    async def scenario() -> list[tuple[str, int, int]]:
        store = RocksStore.open(store_path, StoreOptions(sync=False))
        for _ in range(rounds):
            await store.produce(txn("s", ("a", 2), ("b", 1)))
            await store.produce(txn("s", ("c", 1)))
        records = [(r.segment, r.sequence, r.position) for r in await read(store, Target("s"))]
        await store.close()
        return records

    return asyncio.run(scenario())


def test_space_reads_skip_what_a_segment_trim_removed_and_the_first_position_moves(
    tmp_path: Path,
) -> None:
    data = tmp_path / "db"
    every = interleaved(data)

    async def trim() -> None:
        store = RocksStore.open(data)
        await store.trim(Target("s", "a"), 41)  # a's 40 first records: its first 20 writes
        await store.trim(Target("s", "b"), 31)  # all of b
        await store.close()

    asyncio.run(trim())
    kept = [r for r in every if (r[0] == "a" and r[1] >= 41) or r[0] == "c"]

    async def check() -> None:
        store = RocksStore.open(data)
        assert [(r.segment, r.sequence, r.position) for r in await read(store, Target("s"))] == kept
        assert await stepwise(store, Target("s")) == kept
        # From inside the holes: the next retained record.
        from_two = await read(store, Target("s"), 2)
        assert (from_two[0].segment, from_two[0].position) == ("c", 4)
        info = await store.get_space("s")
        assert info is not None
        assert (info.first_position, info.record_count) == (4, len(kept))
        assert info.bytes == sum(record_bytes(r.body) for r in await read(store, Target("s")))
        # b ended the space: peek steps back over it to the last retained record.
        peeked = await store.peek(Target("s"))
        assert peeked is not None
        assert [r.segment for r in peeked.records()] == ["c"]
        assert await store.first_at_or_after(Target("s"), 0) == 4
        await store.close()

    asyncio.run(check())


def test_an_acknowledged_trim_survives_a_crash(tmp_path: Path) -> None:
    data, image = tmp_path / "db", tmp_path / "image"

    async def scenario() -> None:
        store = RocksStore.open(data)
        for _ in range(10):
            await store.produce(txn("s", ("a", 3), ("b", 2)))
        await store.trim(Target("s"), 26)
        await store.trim(Target("s", "a"), 25)
        shutil.copytree(data, image)  # what a kill -9 leaves: the fsynced WAL
        await store.close()

    asyncio.run(scenario())

    async def check() -> None:
        store = RocksStore.open(image)
        assert await store.first_offset(Target("s")) == 29  # a's 25th record is position 28
        assert await store.first_offset(Target("s", "a")) == 25
        assert await store.first_offset(Target("s", "b")) == 11
        assert [r.sequence for r in await read(store, Target("s", "a"))] == [25, 26, 27, 28, 29, 30]
        positions = [r.position for r in await read(store, Target("s"))]
        assert positions[0] == 29 and min(positions) == 29
        await store.close()

    asyncio.run(check())


def test_reclaim_gives_the_disk_space_of_removed_records_back(tmp_path: Path) -> None:
    data = tmp_path / "db"

    async def fill() -> None:
        store = RocksStore.open(data, StoreOptions(sync=False))
        for i in range(20):  # 8 MB: 4 MB per copy (segment and space), not compressible
            bodies = tuple(body(os.urandom(2000)) for _ in range(100))
            append = SegmentAppend(f"seg{i % 4}", bodies, None)
            await store.produce(Transaction("s", (append,), "", b""))
        await store.close()  # the reopen below flushes the WAL into table files

    asyncio.run(fill())

    async def trim_and_reclaim() -> None:
        store = RocksStore.open(data)
        before = store.disk_usage()
        assert before is not None and before.bytes > 6 * MIB
        await store.trim(Target("s"), await store.last_offset(Target("s")) + 1)
        assert (await store.get_space("s")).record_count == 0  # type: ignore[union-attr]
        freed = await store.reclaim()
        after = store.disk_usage()
        assert after is not None
        assert freed > 6 * MIB and after.reclaimed_bytes == freed
        assert after.bytes < before.bytes - 6 * MIB, (before, after)
        await store.close()

    asyncio.run(trim_and_reclaim())


def test_a_retention_pass_with_nothing_to_remove_reads_no_record(tmp_path: Path) -> None:
    data = tmp_path / "db"
    policy = RetentionPolicy(max_age_ns=3600 * 10**9, max_records_per_segment=5, max_bytes=10**9)

    async def fill() -> None:
        store = RocksStore.open(data, StoreOptions(sync=False))
        for start in range(0, 3000, 1000):
            await store.produce(txn("s", *((f"seg{i:05d}", 2) for i in range(start, start + 1000))))
        await store.configure_space("c", SpaceConfig(policy))
        await store.produce(txn("c", ("x", 3)))
        await store.close()

    asyncio.run(fill())

    async def passes() -> None:
        store = RocksStore.open(data, StoreOptions(sync=False))
        reads = store.stats.chunk_reads
        assert (await store.enforce_retention(policy)).records == 0  # every segment looked at
        await store.produce(txn("s", ("seg00007", 1)))
        assert (await store.enforce_retention(policy)).records == 0  # only seg00007
        assert store.stats.chunk_reads == reads
        # Something to remove: it is removed (and only then are records read).
        await store.produce(txn("s", ("seg00007", 3)))
        assert (await store.enforce_retention(policy)).records == 1
        assert await store.first_offset(Target("s", "seg00007")) == 2
        await store.close()

    asyncio.run(passes())


def test_a_removal_in_slices_lets_writes_through_between_them(tmp_path: Path) -> None:
    data = tmp_path / "db"
    options = StoreOptions(removal_slice_records=100)

    async def scenario() -> None:
        store = RocksStore.open(data, options)
        for i in range(30):
            await store.produce(txn("s", (f"seg{i % 3}", 100)))
        trim = asyncio.ensure_future(store.trim(Target("s"), 3001))
        while store.stats.removal_slices == 0:
            await asyncio.sleep(0)
        result = await store.produce(txn("s", ("new", 1)))
        assert not trim.done() and store.stats.removal_slices < 30
        first, removed = await trim
        assert (first, removed.records) == (3001, 3000)
        assert result.first_position == 3001
        assert [r.segment for r in await read(store, Target("s"))] == ["new"]
        for segment in ("seg0", "seg1", "seg2"):
            info = await store.get_segment("s", segment)
            assert info is not None and (info.first_sequence, info.record_count) == (1001, 0)
        await store.close()

    asyncio.run(scenario())
