"""The RocksDB store directly: durable watermark, group commit, fsync failure, dedupe expiry."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.errors import Unavailable
from streams.model import SegmentAppend, Target, Transaction
from streams.storage.rocksdb import RocksStore, StoreOptions

MIB = 1 << 20


def txn(space: str, segment: str, n: int = 1, txid: str = "") -> Transaction:
    bodies = tuple(b"\x0a\x01" + bytes([65 + i % 26]) for i in range(n))
    fingerprint = b"f" * 32 if txid else b""
    return Transaction(space, (SegmentAppend(segment, bodies, None),), txid, fingerprint)


def wrap_sync(store: RocksStore, around: Callable[[Callable[[], None]], None]) -> None:
    """Runs the store's real WAL fsync through ``around`` (to gate or fail it)."""
    real = store._group._sync
    assert real is not None
    store._group._sync = lambda: around(real)


def test_readers_see_records_only_once_fsynced(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db")
        syncing, gate = threading.Event(), threading.Event()
        wrap_sync(store, lambda real: (syncing.set(), gate.wait(10), real()))
        produce = asyncio.ensure_future(store.produce(txn("s", "a", 3)))
        # Written, and its fsync under way: from here on readers must not see it.
        assert await asyncio.to_thread(syncing.wait, 10), "the fsync never started"
        assert not produce.done()
        target = Target("s", "a")
        assert store.read(target, 1, 10, 10, MIB).count == 0
        assert store.read(Target("s"), 1, 10, 10, MIB).count == 0
        assert store.peek(target) is None
        assert store.list_spaces(None, 10) == []
        assert store.list_segments("s", None, 10) == []
        gate.set()
        result = await produce
        assert (result.first_position, result.last_position) == (1, 3)
        assert store.read(target, 1, 10, 10, MIB).count == 3
        assert store.peek(target) is not None
        await store.close()

    asyncio.run(scenario())


def test_one_fsync_acks_many_concurrent_writes(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db")
        calls = []
        wrap_sync(store, lambda real: (calls.append(1), real()))
        results = await asyncio.gather(*(store.produce(txn("s", "a", 2)) for _ in range(50)))
        positions = sorted(p for r in results for p in (r.first_position, r.last_position))
        assert positions == list(range(1, 101))
        assert 1 <= len(calls) < 50
        await store.close()

    asyncio.run(scenario())


def test_failed_fsync_stops_writes_and_hides_what_it_covered(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db")
        await store.produce(txn("s", "a"))

        def fail(_: Callable[[], None]) -> None:
            raise OSError(5, "Input/output error")

        wrap_sync(store, fail)
        with pytest.raises(Unavailable, match="fsync"):
            await store.produce(txn("s", "a"))
        with pytest.raises(Unavailable, match="writes are stopped"):
            await store.produce(txn("s", "b"))
        assert store.last_offset(Target("s", "a")) == 1
        assert store.read(Target("s"), 1, 10, 10, MIB).count == 1
        await store.close()

    asyncio.run(scenario())


def test_dedupe_entries_expire_and_are_swept(tmp_path: Path) -> None:
    now = [10**18]
    options = StoreOptions(dedupe_window_ns=1000, clock=lambda: now[0])

    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db", options)
        first = await store.produce(txn("s", "a", txid="t"))
        again = await store.produce(txn("s", "a", txid="t"))
        assert again.duplicate and again.first_position == first.first_position
        assert store.sweep_expired_dedupe() == 0
        now[0] += 1000  # the window has passed: the id is free again
        reused = await store.produce(txn("s", "a", txid="t"))
        assert not reused.duplicate and reused.first_position == 2
        # The old expiry entry goes; the reused id's entry stays.
        assert store.sweep_expired_dedupe() == 1
        assert (await store.produce(txn("s", "a", txid="t"))).duplicate
        now[0] += 1000
        assert store.sweep_expired_dedupe() == 1
        assert store.sweep_expired_dedupe() == 0
        await store.close()

    asyncio.run(scenario())


def test_no_sync_acks_without_fsync_and_reads_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db", StoreOptions(sync=False))
        result = await store.produce(txn("s", "a", 4))
        assert result.last_position == 4
        assert store.read(Target("s", "a"), 1, 4, 10, MIB).count == 4
        await store.close()

    asyncio.run(scenario())


def test_restart_rebuilds_numbers_from_the_catalog(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db")
        await store.produce(txn("s", "a", 3))
        await store.produce(txn("s", "b", 2))
        await store.close()
        store = RocksStore.open(tmp_path / "db")
        assert store.last_offset(Target("s")) == 5
        assert store.last_offset(Target("s", "a")) == 3
        result = await store.produce(txn("s", "a"))
        assert (result.acks[0].first_sequence, result.first_position) == (4, 6)
        await store.close()

    asyncio.run(scenario())


def test_data_folder_is_created_with_its_parents(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "a" / "b" / "db")
        await store.produce(txn("s", "a"))
        await store.close()

    asyncio.run(scenario())
    assert (tmp_path / "a" / "b" / "db" / "CURRENT").exists()
