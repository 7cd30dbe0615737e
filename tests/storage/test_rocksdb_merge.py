"""The RocksDB engine's merged runs (streams.storage.rocksdb.merge): a space
written in small transactions reads from a few runs instead of a chunk per
transaction, and every read returns exactly what it returned before the
merge: over holes, trims, deletes, crashes, and records not yet durable."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import shutil
from pathlib import Path

import pytest

from streams.errors import DataLoss
from streams.model import Cut, Target
from streams.storage.rocksdb import layout as keys
from streams.storage.rocksdb.chunks import Chunk
from streams.storage.rocksdb.store import RocksStore, StoreOptions

from .conftest import _hold_rocksdb, txn

MIB = 1 << 20
SEGMENTS = ("a", "b", "c", "d")
# Small runs, so that reads cross many run boundaries; chunks of 20 records
# and more are not small.
OPTIONS = StoreOptions(sync=False, merge_small_bytes=400, merge_run_bytes=1500, merge_min_chunks=3)


async def write_small(store: RocksStore, space: str, count: int, big_every: int = 0) -> None:
    """``count`` transactions of one record each, over SEGMENTS in turn; with
    ``big_every``, every so many a transaction of 40 records (a chunk too large
    to merge: runs have gaps)."""
    for i in range(count):
        segment = SEGMENTS[i % len(SEGMENTS)]
        size = 40 if big_every and i % big_every == big_every - 1 else 1
        await store.produce(txn(space, (segment, size)))


async def everything(store: RocksStore, target: Target, cut: Cut, first: int = 1) -> list[tuple]:
    """(segment, sequence, position, body) of each record from ``first``, read
    ``cut`` at a time to the end."""
    last, found = await store.last_offset(target), []
    while first <= last:
        batch, after = await store.read(target, first, last, cut)
        assert after > first
        found += [(r.segment, r.sequence, r.position, r.body) for r in batch.records()]
        first = after
    return found


CUTS = (Cut(1, MIB), Cut(7, MIB), Cut(1000, MIB), Cut(1000, 300))


async def reads(store: RocksStore, space: str) -> list[list[tuple]]:
    """The space read whole with each cut, and from a few starts."""
    target = Target(space)
    found = [await everything(store, target, cut) for cut in CUTS]
    last = await store.last_offset(target)
    for first in (2, last // 3, last // 2 + 1, last):
        found.append(await everything(store, target, Cut(13, MIB), first))
    return found


def runs(store: RocksStore, space: str, segment: str = "") -> list[tuple[int, int]]:
    """(first, last) offset of each merged run stored for a space or segment."""
    prefix = keys.segment_merged_prefix(space, segment) if segment else keys.merged_prefix(space)
    return [
        (start := keys.read_u64(key, len(prefix)), start + Chunk(value).count - 1)
        for key, value in store._scan(prefix, "runs")
    ]


def test_a_space_read_from_merged_runs_returns_what_the_chunks_held(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db", OPTIONS)
        await write_small(store, "s", 400, big_every=37)
        before = await reads(store, "s")
        written = await store.merge()
        assert written > 10
        stored = runs(store, "s")
        assert len(stored) + sum(len(runs(store, "s", name)) for name in SEGMENTS) == written
        assert all(first < last for first, last in stored)  # two chunks at least
        assert all(a[1] < b[0] for a, b in itertools.pairwise(stored))  # disjoint
        chunk_reads = store.stats.chunk_reads
        assert await reads(store, "s") == before
        assert store.stats.merged_reads > 0
        # The runs hold most records: far fewer chunks read than records.
        store.stats.chunk_reads = 0
        await everything(store, Target("s"), Cut(1000, MIB))
        assert store.stats.chunk_reads < 200 < chunk_reads
        # Segment reads too, from their own runs.
        for segment in SEGMENTS:
            assert runs(store, "s", segment)
            store.stats.chunk_reads = 0
            got = await everything(store, Target("s", segment), Cut(5, MIB))
            assert got == [r for r in before[0] if r[0] == segment]
            assert store.stats.chunk_reads < len(got) / 2
        await store.close()

    asyncio.run(scenario())


def test_passes_merge_only_new_chunks_and_wait_for_a_short_run_to_grow(tmp_path: Path) -> None:
    options = StoreOptions(
        merge_small_bytes=8192, sync=False, merge_min_chunks=3
    )  # runs of 64 KiB: one per pass here

    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db", options)
        await write_small(store, "s", 50)
        await store.merge()
        first_pass = runs(store, "s")
        assert first_pass == [(1, 50)]
        assert await store.merge() == 0  # nothing new
        await write_small(store, "s", 2)  # shorter than merge_min_chunks: waits
        assert await store.merge() == 0
        await write_small(store, "s", 30)
        assert await store.merge() > 0
        stored = runs(store, "s")
        assert stored[: len(first_pass)] == first_pass
        assert all(a[1] < b[0] for a, b in itertools.pairwise(stored))
        assert stored[-1][1] == 82
        await store.close()
        # Reopened, the store finds where its runs end on disk.
        store = RocksStore.open(tmp_path / "db", options)
        await write_small(store, "s", 30)
        await store.merge()
        again = runs(store, "s")
        assert again[: len(stored)] == stored and again[-1][1] == 112
        assert all(a[1] < b[0] for a, b in itertools.pairwise(again))
        await store.close()

    asyncio.run(scenario())


def test_space_reads_over_holes_skip_what_segments_removed_though_runs_hold_it(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db", OPTIONS)
        await write_small(store, "s", 300)
        await store.merge()
        before = await everything(store, Target("s"), Cut(1000, MIB))
        await store.trim(Target("s", "a"), 50)  # a's first 49 records
        await store.delete_segment("s", "c", None)  # all of c
        kept = [r for r in before if not (r[0] == "a" and r[1] < 50) and r[0] != "c"]
        for cut in CUTS:
            assert await everything(store, Target("s"), cut) == kept
        assert await everything(store, Target("s"), Cut(9, MIB), 250) == [
            r for r in kept if r[2] >= 250
        ]
        # Above the holes (c's delete reaches 299 at most), the runs serve again.
        await write_small(store, "s", 100)
        await store.merge()
        served = store.stats.merged_reads
        newer = await everything(store, Target("s"), Cut(1000, MIB), 301)
        assert [r[2] for r in newer] == list(range(301, 401))
        assert store.stats.merged_reads > served
        await store.close()

    asyncio.run(scenario())


def test_a_space_trim_deletes_the_runs_wholly_below_the_first_position(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db", OPTIONS)
        await write_small(store, "s", 300)
        await store.merge()
        before = await everything(store, Target("s"), Cut(1000, MIB))
        await store.trim(Target("s"), 151)
        assert runs(store, "s") and all(last >= 151 for _, last in runs(store, "s"))
        for cut in CUTS:
            assert await everything(store, Target("s"), cut) == [r for r in before if r[2] >= 151]
        await store.trim(Target("s"), 301)
        assert runs(store, "s") == []
        await store.close()

    asyncio.run(scenario())


def test_a_deleted_space_loses_its_runs_and_merges_what_is_written_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db", OPTIONS)
        await write_small(store, "s", 100)
        await store.merge()
        await store.delete_space("s")
        assert runs(store, "s") == []
        await write_small(store, "s", 100)
        await store.merge()
        assert runs(store, "s") and runs(store, "s")[0][0] >= 101
        got = await everything(store, Target("s"), Cut(1000, MIB))
        assert [r[2] for r in got] == list(range(101, 201))
        assert await reads(store, "s") == [
            await everything(store, Target("s"), cut) for cut in CUTS
        ] + [[r for r in got if r[2] >= first] for first in (2, 200 // 3, 200 // 2 + 1, 200)]
        await store.close()

    asyncio.run(scenario())


def test_a_run_copies_durable_records_only(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RocksStore.open(
            tmp_path / "db", StoreOptions(merge_small_bytes=8192, merge_min_chunks=2)
        )
        await write_small(store, "s", 20)
        gate = _hold_rocksdb(store)
        held = asyncio.create_task(write_small(store, "s", 20))
        await gate.wait_reached()
        assert await store.last_offset(Target("s")) == 20
        written, _, _ = store._merge_step(Target("s"))
        assert written
        prefix = len(keys.merged_prefix("s"))
        last = max(keys.read_u64(key, prefix) + Chunk(value).count - 1 for key, value in written)
        assert last == 20
        gate.open()
        await held
        await store.close()

    asyncio.run(scenario())


def test_merged_runs_survive_a_crash_and_read_as_before(tmp_path: Path) -> None:
    data, image = tmp_path / "db", tmp_path / "image"

    async def scenario() -> list[list[tuple]]:
        store = RocksStore.open(
            data, StoreOptions(merge_small_bytes=8192, merge_min_chunks=3, merge_run_bytes=1500)
        )
        await write_small(store, "s", 200, big_every=23)
        before = await reads(store, "s")
        assert await store.merge() > 0
        shutil.copytree(data, image)  # what a kill -9 leaves: the fsynced WAL
        await store.close()
        return before

    before = asyncio.run(scenario())

    async def check() -> None:
        store = RocksStore.open(image, OPTIONS)
        assert runs(store, "s")
        assert await reads(store, "s") == before
        assert store.stats.merged_reads > 0
        await store.close()

    asyncio.run(check())


def test_a_malformed_run_is_data_loss_naming_the_offset(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db", OPTIONS)
        await write_small(store, "s", 100)
        await store.merge()
        (first, _), (second, _) = runs(store, "s")[:2]
        prefix = keys.merged_prefix("s")
        store._db.put(prefix + keys.u64(second), b"\x05\x00\x00\x00")  # claims 5 records
        # What comes before the damage goes out; the read from the damage raises.
        batch, after = await store.read(Target("s"), first, 100, Cut(1000, MIB))
        assert after == second and batch.count == second - first
        with pytest.raises(DataLoss, match=f"offset {second}"):
            await store.read(Target("s"), second, 100, Cut(1000, MIB))
        await store.close()

    asyncio.run(scenario())


def test_removals_delete_the_runs_of_segments_below_their_first_sequence(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db", OPTIONS)
        await write_small(store, "s", 400)
        await store.merge()
        before = {
            name: await everything(store, Target("s", name), Cut(7, MIB)) for name in SEGMENTS
        }
        assert all(len(runs(store, "s", name)) > 1 for name in SEGMENTS)
        # A segment trim: a's runs wholly below sequence 40 go.
        await store.trim(Target("s", "a"), 40)
        assert runs(store, "s", "a") and all(last >= 40 for _, last in runs(store, "s", "a"))
        assert await everything(store, Target("s", "a"), Cut(7, MIB)) == before["a"][39:]
        # A space trim moves b, c and d on too: theirs go, one by one.
        await store.trim(Target("s"), 201)
        for name in ("b", "c", "d"):
            first = await store.first_offset(Target("s", name))
            assert first == 51
            assert all(last >= first for _, last in runs(store, "s", name))
            got = await everything(store, Target("s", name), Cut(7, MIB))
            assert got == before[name][first - 1 :]
        # A segment delete: all of b's.
        await store.delete_segment("s", "b", None)
        assert runs(store, "s", "b") == []
        # A space delete: every segment's.
        await store.delete_space("s")
        assert all(runs(store, "s", name) == [] for name in SEGMENTS)
        await store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(("least", "step"), [(1, 512), (600, 512)])
def test_a_run_must_fit_a_step(least: int, step: int) -> None:
    with pytest.raises(ValueError, match="merge_min_chunks"):
        StoreOptions(merge_small_bytes=8192, merge_min_chunks=least, merge_step_chunks=step)


def test_a_damaged_target_does_not_stop_the_others_of_a_pass(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db", OPTIONS)
        await write_small(store, "s", 100)
        await store.merge()
        await store.close()
        # Reopened, the store looks up where runs end on disk: a's last one is damaged.
        store = RocksStore.open(tmp_path / "db", OPTIONS)
        first, _ = runs(store, "s", "a")[-1]
        store._db.put(keys.segment_merged_prefix("s", "a") + keys.u64(first), b"\x05\0\0\0")
        before = {name: len(runs(store, "s", name)) for name in ("b", "c", "d")}
        await write_small(store, "s", 100)
        with pytest.raises(DataLoss, match="offset"):  # reported once the pass is over
            await store.merge()
        for name in ("b", "c", "d"):  # sorted after a
            assert len(runs(store, "s", name)) > before[name], name
        await store.close()

    asyncio.run(scenario())


def test_the_targets_a_pass_did_not_finish_are_tried_by_the_next(tmp_path: Path) -> None:
    # Sync on: the pass can be held waiting for its first runs to be durable.
    options = StoreOptions(merge_small_bytes=400, merge_run_bytes=1500, merge_min_chunks=3)

    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db", options)
        await write_small(store, "s", 100)
        gate = _hold_rocksdb(store)
        passing = asyncio.create_task(store.merge())
        await gate.wait_reached()  # the space's runs (first in order) are written
        passing.cancel()
        gate.open()
        with pytest.raises(asyncio.CancelledError):
            await passing
        assert runs(store, "s") and not any(runs(store, "s", name) for name in SEGMENTS)
        assert await store.merge() > 0
        assert all(runs(store, "s", name) for name in SEGMENTS)
        await store.close()

    asyncio.run(scenario())


def test_the_bookkeeping_holds_at_most_its_bounds(tmp_path: Path) -> None:
    options = StoreOptions(
        merge_small_bytes=8192, sync=False, merge_due_targets=3, merge_cursors=2, merge_min_chunks=2
    )

    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db", options)
        await write_small(store, "s", 40)  # the space and its 4 segments: 3 noted
        assert len(store._merges.take()) == 3
        await write_small(store, "s", 40)
        await store.merge()
        assert len(store._merges._cursors) == 2
        await store.close()

    asyncio.run(scenario())


def test_a_step_reads_at_most_merge_step_runs_runs_worth_of_chunks(tmp_path: Path) -> None:
    options = StoreOptions(sync=False, merge_small_bytes=400, merge_run_bytes=1500)

    async def scenario() -> None:
        for runs_read, name in ((1, "one"), (4, "four")):
            shaped = dataclasses.replace(options, merge_step_runs=runs_read)
            store = RocksStore.open(tmp_path / name, shaped)
            await write_small(store, "s", 40, big_every=1)  # chunks of 40 records: none small
            size = len(next(value for _, value in store._scan(keys.space_prefix("s"), "chunks")))
            _, cursor, more = store._merge_step(Target("s"))
            chunks_read = (cursor - 1) // 40
            assert more and chunks_read == -(-runs_read * 1500 // size), (runs_read, size)
            await store.close()

    asyncio.run(scenario())
