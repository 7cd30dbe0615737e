"""The RocksDB engine's side of the data lifecycle (rules 11-14 are checked for
every backend by test_port_lifecycle.py): space reads over records their
segment removed (holes), removals surviving a crash, the disk given back by
reclaim, what a retention pass reads, and slices that let writes through."""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import shutil
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from streams.errors import DataLoss
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
from streams.storage.rocksdb import layout as keys
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


def test_a_store_closed_while_reclaim_compacts_waits_for_it_and_can_be_opened_again(
    tmp_path: Path,
) -> None:
    """A compaction holds the database while it runs: closing the database
    meanwhile failed (rocksdict: "Already borrowed", which the close swallowed),
    leaving it open with its lock held, so that it could not be opened again
    (the same close runs at a reopen after a full disk: the store then refused
    everything, reads too, until the process restarted)."""

    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db", StoreOptions(sync=False))
        for i in range(20):  # 8 MB of records, so that the compaction takes a while
            bodies = tuple(body(os.urandom(2000)) for _ in range(100))
            append = SegmentAppend(f"seg{i % 4}", bodies, None)
            await store.produce(Transaction("s", (append,), "", b""))
        await store.trim(Target("s"), await store.last_offset(Target("s")) + 1)
        db = store._db
        reclaiming = asyncio.ensure_future(store.reclaim())
        # Until the compaction runs: a call that needs the database whole fails then.
        while True:
            await asyncio.sleep(0)
            assert not reclaiming.done(), "the compaction ended before the test saw it run"
            try:
                db.set_dumps(pickle.dumps)  # nothing in raw mode: values are bytes
            except RuntimeError:
                break
        await store.close()
        reopened = RocksStore.open(tmp_path / "db")  # its lock was released
        assert (await reopened.get_space("s")).record_count == 0  # type: ignore[union-attr]
        await reopened.close()
        assert reclaiming.done() and await reclaiming >= 0  # it ended with the close, no error

    asyncio.run(scenario())


async def most_chunks_read_in_one_go(
    store: RocksStore, call: Awaitable[object]
) -> tuple[object, int]:
    """``call``'s result, and the most chunks it read between two turns of the
    event loop to other work."""
    running = asyncio.ensure_future(call)
    reads = [store.stats.chunk_reads]
    while not running.done():
        await asyncio.sleep(0)
        reads.append(store.stats.chunk_reads)
    return await running, max(after - before for before, after in itertools.pairwise(reads))


def test_first_at_or_after_and_peek_over_removed_records_let_other_calls_run(
    tmp_path: Path,
) -> None:
    """Records a segment delete removed between or after retained ones of other
    segments stay in the space's key range until its first position passes
    them: first_at_or_after (Trim by time, Consume from a time) and Peek walked
    all of them in one go on the event loop, which then served nothing else."""

    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db", StoreOptions(sync=False, removal_slice_records=50))
        await store.produce(txn("s", ("b", 1)))
        for _ in range(1000):  # one chunk each
            await store.produce(txn("s", ("a", 1)))
        a_first = (await read(store, Target("s", "a")))[0].timestamp_ns
        await store.delete_segment("s", "a", None)
        assert await store.first_offset(Target("s")) == 1  # b's first record is retained

        peeked, most = await most_chunks_read_in_one_go(store, store.peek(Target("s")))
        assert [r.position for r in peeked.records()] == [1]  # type: ignore[attr-defined]
        assert most <= 100, f"peek: {most} chunks read in one go"

        last = await store.produce(txn("s", ("b", 1)))
        found, most = await most_chunks_read_in_one_go(
            store, store.first_at_or_after(Target("s"), a_first)
        )
        assert found == last.first_position
        assert most <= 100, f"first_at_or_after: {most} chunks read in one go"
        await store.close()

    asyncio.run(scenario())


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


class FsyncGate:
    """Holds the store's WAL fsyncs from :meth:`close` until :meth:`open`, so
    that a test writes while a removal waits for its first batch to be durable,
    then lets the removal go on to its range deletes."""

    def __init__(self, store: RocksStore) -> None:
        sync = store._group._sync
        assert sync is not None, "holding the fsync needs sync on"
        self._sync = sync
        self._open = threading.Event()
        self._open.set()
        self.reached = threading.Event()
        store._group._sync = self._held

    def _held(self) -> None:
        if not self._open.is_set():
            self.reached.set()
            assert self._open.wait(30), "the test never opened the gate"
        self._sync()

    def close(self) -> None:
        self.reached.clear()
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    async def wait_reached(self) -> None:
        assert await asyncio.to_thread(self.reached.wait, 30), "no fsync was held"


async def written_after_removal(store: RocksStore, removal: Awaitable[object], write: Transaction):
    """Runs ``removal`` with its first fsync held, produces ``write`` meanwhile
    (after the removal's catalog batch, before its range deletes), then lets
    both finish; returns the produce's result."""
    gate = FsyncGate(store)
    gate.close()
    removing = asyncio.ensure_future(removal)
    await gate.wait_reached()  # the removal's catalog batch is written, its fsync held
    written = store._group.written
    producing = asyncio.ensure_future(store.produce(write))
    while store._group.written == written:  # the produce's batch is in
        await asyncio.sleep(0)
    gate.open()
    await removing
    return await producing


@pytest.mark.parametrize(
    "removal",
    [
        lambda store: store.delete_space("s"),
        lambda store: store.delete_segment("s", "a", None),
        lambda store: store.trim(Target("s"), 8),
        lambda store: store.trim(Target("s", "a"), 4),
    ],
    ids=["delete_space", "delete_segment", "space_trim", "segment_trim"],
)
def test_records_written_while_a_removal_awaits_its_fsync_stay_readable(
    tmp_path: Path, removal: Callable[[RocksStore], Awaitable[object]]
) -> None:
    """A removal's range deletes run after its catalog batch is durable, when
    writes made meanwhile are in the database: no range may reach them (a
    delete then a write continues the numbers right after the deleted ones)."""

    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db")
        for _ in range(2):
            await store.produce(txn("s", ("a", 3), ("b", 2)))
        result = await written_after_removal(store, removal(store), txn("s", ("a", 4), ("c", 2)))
        a = await read(store, Target("s", "a"))
        assert [r.sequence for r in a][-4:] == [7, 8, 9, 10]
        space = await read(store, Target("s"))
        assert [r.position for r in space][-6:] == list(range(11, 17))
        assert result.first_position == 11
        info = await store.get_space("s")
        assert info is not None and info.record_count == len(space)
        # And after a reopen, from what is on disk.
        await store.close()
        store = RocksStore.open(tmp_path / "db")
        assert [r.position for r in await read(store, Target("s"))] == [r.position for r in space]
        assert [r.sequence for r in await read(store, Target("s", "a"))] == [r.sequence for r in a]
        await store.close()

    asyncio.run(scenario())


def test_a_missing_chunk_is_reported_never_read_from_the_key_range_before_it(
    tmp_path: Path,
) -> None:
    """rocksdict ignores an iterator's lower bound: a read whose chunk is gone
    must not step back into the keys before its prefix (another space's)."""

    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db")
        await store.produce(txn("a", ("x", 2)))
        await store.produce(txn("b", ("y", 2)))
        store._db.delete(keys.space_prefix("b") + keys.u64(1))  # damage: b's only chunk
        with pytest.raises(DataLoss, match="offset 1 cannot be read: no stored chunk"):
            await read(store, Target("b"))
        with pytest.raises(DataLoss, match="no stored chunk"):
            await store.peek(Target("b"))
        assert [r.body for r in await read(store, Target("a"))] == [body(b"x:0"), body(b"x:1")]
        await store.close()

    asyncio.run(scenario())


def test_removal_slices_leave_few_range_tombstones_and_none_nested(tmp_path: Path) -> None:
    """RocksDB splits the range tombstones in its memtable into fragments each
    time it makes an iterator, at a cost that grows with their number and with
    the square of how many overlap: a retention pass that left one per segment
    per slice, each from its target's first key, made every read and slice
    slower as it went (13 s and 150+ ms stalls for 100,000 segments). A space
    trim leaves one range per slice (its segments' chunks go one by one), and a
    target's ranges start where what is stored starts, so they never nest."""

    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db", StoreOptions(removal_slice_chunks=32))
        await store.produce(txn("s", *((f"seg{i:03d}", 1) for i in range(300))))
        for _ in range(100):
            await store.produce(txn("t", ("one", 1)))
        _, removed = await store.trim(Target("s"), 301)
        assert removed.records == 300 and store.stats.removal_slices >= 10
        assert store.stats.range_deletes <= store.stats.removal_slices
        _, removed = await store.trim(Target("t", "one"), 101)
        assert removed.records == 100
        ranges = sorted(store._reclaim._ranges)  # what the removals deleted, for reclaim
        for (_, end), (begin, _) in itertools.pairwise(ranges):
            assert end <= begin, "nested or overlapping range deletes"
        for target in (Target("s"), Target("s", "seg007"), Target("t"), Target("t", "one")):
            assert await read(store, target) == []
        assert (await store.get_space("s")).record_count == 0  # type: ignore[union-attr]
        await store.produce(txn("s", ("seg007", 1)))
        assert [r.sequence for r in await read(store, Target("s", "seg007"))] == [2]
        await store.close()

    asyncio.run(scenario())


def test_a_space_delete_is_not_seen_by_segment_readers_before_it_is_durable(
    tmp_path: Path,
) -> None:
    """A space delete marks its segments deleted through its own catalog entry;
    until that entry is durable, readers of a segment see the segment as it
    was (rule 2), whether its state was cached before or is read meanwhile."""

    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db", StoreOptions(catalog_cache_bytes=1))
        await store.produce(txn("s", ("a", 3), ("b", 2)))
        gate = FsyncGate(store)
        gate.close()
        deleting = asyncio.ensure_future(store.delete_space("s"))
        try:
            await gate.wait_reached()
            for segment in ("a", "b"):
                info = await store.get_segment("s", segment)
                assert info is not None and not info.deleted and info.record_count > 0
                assert await read(store, Target("s", segment)) != []
        finally:
            gate.open()
        await deleting
        for segment in ("a", "b"):
            assert await store.get_segment("s", segment) is None
            assert await read(store, Target("s", segment)) == []
        await store.close()

    asyncio.run(scenario())
