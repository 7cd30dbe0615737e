"""The RocksDB store directly: durable watermark, group commit, fsync failure, dedupe expiry,
corruption (a damaged write-ahead log or table file) and invariants."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import rocksdict

from streams import codec
from streams.errors import DataLoss, Unavailable
from streams.model import Cut, SegmentAppend, Target, Transaction
from streams.storage.batches import FramedBatch
from streams.storage.rocksdb import layout as keys
from streams.storage.rocksdb.chunks import Chunk, MalformedChunk
from streams.storage.rocksdb.store import RocksStore, StoreOptions
from streams.v1 import streams_pb2 as pb
from tests.support.damage import flip_byte, the_wal

MIB = 1 << 20
BLOCK = 32 * 1024  # RocksDB's log block


def txn(space: str, segment: str, n: int = 1, txid: str = "") -> Transaction:
    bodies = tuple(b"\x0a\x01" + bytes([65 + i % 26]) for i in range(n))
    fingerprint = b"f" * 32 if txid else b""
    return Transaction(space, (SegmentAppend(segment, bodies, None),), txid, fingerprint)


def payload_txn(space: str, segment: str, payload: bytes) -> Transaction:
    """One record whose payload is ``payload``."""
    body = b"\x0a" + codec.varint(len(payload)) + payload
    return Transaction(space, (SegmentAppend(segment, (body,), None),), "", b"")


async def read(
    store: RocksStore, target: Target, first: int, last: int, records: int, size: int
) -> FramedBatch:
    batch, _ = await store.read(target, first, last, Cut(records, size))
    return batch


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
        assert (await read(store, target, 1, 10, 10, MIB)).count == 0
        assert (await read(store, Target("s"), 1, 10, 10, MIB)).count == 0
        assert await store.peek(target) is None
        assert await store.list_spaces(None, 10) == []
        assert await store.list_segments("s", None, 10) == []
        gate.set()
        result = await produce
        assert (result.first_position, result.last_position) == (1, 3)
        assert (await read(store, target, 1, 10, 10, MIB)).count == 3
        assert await store.peek(target) is not None
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
        assert await store.last_offset(Target("s", "a")) == 1
        assert (await read(store, Target("s"), 1, 10, 10, MIB)).count == 1
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
        assert (await read(store, Target("s", "a"), 1, 4, 10, MIB)).count == 4
        await store.close()

    asyncio.run(scenario())


def test_restart_rebuilds_numbers_from_the_catalog(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db")
        await store.produce(txn("s", "a", 3))
        await store.produce(txn("s", "b", 2))
        await store.close()
        store = RocksStore.open(tmp_path / "db")
        assert await store.last_offset(Target("s")) == 5
        assert await store.last_offset(Target("s", "a")) == 3
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


# -- fsync failure as the health check sees it ---------------------------------


def test_write_error_says_why_writes_are_refused_and_the_sweeper_fails_alike(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db")
        await store.produce(txn("s", "a", txid="t"))
        assert store.write_error is None
        assert store.sweep_expired_dedupe() == 0

        def fail(_: Callable[[], None]) -> None:
            raise OSError(5, "Input/output error")

        wrap_sync(store, fail)
        with pytest.raises(Unavailable, match="fsync"):
            await store.produce(txn("s", "a"))
        assert store.write_error is not None and "fsync" in store.write_error
        with pytest.raises(Unavailable, match="fsync"):
            store.sweep_expired_dedupe()
        await store.close()
        assert store.write_error == "the store is closed"

    asyncio.run(scenario())


# -- corruption ------------------------------------------------------------------


def crash_image(store_dir: Path, image: Path) -> Path:
    """A copy of an open store's directory: what a kill -9 would leave (every
    acknowledged write is in its fsynced write-ahead log)."""
    shutil.copytree(store_dir, image)
    return image


def fill_store(path: Path, transactions: int, unacked: int = 0) -> list[bytes]:
    """Acks ``transactions`` records at ``path``, then writes ``unacked`` more that no
    fsync covers (as a crash during a group commit leaves them), and leaves the crash
    image of the open store next to it (``image``); returns every payload written."""
    payloads = [f"record {i} ".encode() + os.urandom(200) for i in range(transactions + unacked)]

    async def scenario() -> None:
        store = RocksStore.open(path)
        for data in payloads[:transactions]:
            await store.produce(payload_txn("s", "a", data))
        for data in payloads[transactions:]:
            store._commit(payload_txn("s", "a", data))  # in the WAL, never fsynced
        crash_image(path, path.with_name("image"))
        await store.close()

    asyncio.run(scenario())
    return payloads


def payloads_in(path: Path, options: StoreOptions | None = None) -> list[bytes]:
    async def scenario() -> list[bytes]:
        store = RocksStore.open(path, options)
        try:
            last = await store.last_offset(Target("s", "a"))
            records = await read(store, Target("s", "a"), 1, last, last + 1, 64 * MIB)
            return [pb.Record.FromString(r).payload for r in codec.split_framed(records.to_wire())]
        finally:
            await store.close()

    return asyncio.run(scenario())


def unchanged_on_disk(path: Path) -> Callable[[], None]:
    """A check that the log, tables and manifest under ``path`` are as they are now."""
    before = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}

    def check() -> None:
        after = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
        for name, data in before.items():
            if name.endswith((".log", ".sst")) or name.startswith(("MANIFEST", "CURRENT")):
                assert after.get(name) == data, f"{name} was changed by the refused open"

    return check


def test_wal_damaged_before_its_end_refuses_to_open(tmp_path: Path) -> None:
    fill_store(tmp_path / "db", 300)
    image = tmp_path / "image"
    wal = the_wal(image)
    flip_byte(wal, wal.stat().st_size // 2)
    unchanged = unchanged_on_disk(image)
    with pytest.raises(DataLoss) as caught:
        RocksStore.open(image, StoreOptions(wal_tail_damage="drop"))  # no drop mid-log
    message = str(caught.value)
    assert wal.name in message and str(image) in message, message
    assert "damaged before its end" in message and "intact writes after it" in message, message
    # Nothing was repaired behind the operator's back: the log and tables are as they were.
    unchanged()


def test_wal_damaged_a_few_writes_before_its_end_refuses_to_open(tmp_path: Path) -> None:
    """A flipped byte in the 5th write from the end, all in one 32 KiB block:
    RocksDB drops the rest of a block after a bad checksum, so skipping the bad
    record saw no later write and the acknowledged writes after it were dropped."""
    payloads = fill_store(tmp_path / "db", 40)
    image = tmp_path / "image"
    wal = the_wal(image)
    at = wal.read_bytes().find(payloads[35])
    assert at // BLOCK == wal.stat().st_size // BLOCK, "the last writes share one block"
    flip_byte(wal, at + 20)
    with pytest.raises(DataLoss, match=r"4 intact writes after it"):
        RocksStore.open(image)


def test_last_acked_write_damaged_is_refused_or_dropped_on_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A byte flipped inside the last acknowledged write (kill -9, then damage)
    is refused with the way out in the message; dropped only when the operator
    says so, with an error naming the file, the bytes and the write."""
    payloads = fill_store(tmp_path / "db", 40)
    image = tmp_path / "image"
    wal = the_wal(image)
    at = wal.read_bytes().find(payloads[-1])
    flip_byte(wal, at + 20)
    unchanged = unchanged_on_disk(image)
    with pytest.raises(DataLoss) as caught:
        RocksStore.open(image)
    message = str(caught.value)
    assert "damaged last write" in message and wal.name in message, message
    assert "checksum" in message and "--wal-tail-damage drop" in message, message
    unchanged()

    caplog.set_level(logging.ERROR, logger="streams.storage.rocksdb.recovery")
    assert payloads_in(image, StoreOptions(wal_tail_damage="drop")) == payloads[:-1]
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    text = error.getMessage()
    assert wal.name in text and "bytes " in text and "acknowledged" in text, text
    # Dropped once: the next open finds an intact log and refuses nothing.
    assert payloads_in(image) == payloads[:-1]


def test_last_write_spanning_blocks_damaged_in_its_middle_is_refused(tmp_path: Path) -> None:
    """One large write (fragments over several 32 KiB blocks) with a byte flipped
    in a middle fragment: its later fragments are intact but start no write."""
    path = tmp_path / "db"
    big = [b"big %04d " % i + os.urandom(100) for i in range(1000)]

    async def scenario() -> None:
        store = RocksStore.open(path)
        for i in range(5):
            await store.produce(payload_txn("s", "a", b"small %d" % i))
        bodies = tuple(b"\x0a" + codec.varint(len(p)) + p for p in big)
        await store.produce(Transaction("s", (SegmentAppend("a", bodies, None),), "", b""))
        crash_image(path, tmp_path / "image")
        await store.close()

    asyncio.run(scenario())
    image = tmp_path / "image"
    wal = the_wal(image)
    assert wal.stat().st_size > 3 * BLOCK
    flip_byte(wal, wal.read_bytes().find(big[500]) + 50)
    with pytest.raises(DataLoss, match="damaged last write"):
        RocksStore.open(image)
    assert payloads_in(image, StoreOptions(wal_tail_damage="drop")) == [
        b"small %d" % i for i in range(5)
    ]


@pytest.mark.parametrize("tear", ["truncated", "zeroed"])
def test_torn_wal_tail_opens_with_every_acked_write(
    tmp_path: Path, tear: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The write a crash or power cut interrupted (never fsynced, never acked) is
    dropped, whether its bytes are missing or zeros; every acked write stays."""
    payloads = fill_store(tmp_path / "db", 50, unacked=1)
    image = tmp_path / "image"
    wal = the_wal(image)
    size = wal.stat().st_size
    # The unacked write is well over 100 bytes: damaging its last 100 bytes tears it alone.
    if tear == "truncated":
        os.truncate(wal, size - 100)
    else:
        with open(wal, "r+b") as f:
            f.seek(size - 100)
            f.write(bytes(100))
    caplog.set_level(logging.WARNING, logger="streams.storage.rocksdb.recovery")
    assert payloads_in(image) == payloads[:-1]
    (warning,) = caplog.records
    assert warning.levelno == logging.WARNING and "torn write" in warning.getMessage()
    assert wal.name in warning.getMessage()


def test_unacked_last_write_with_garbage_is_refused(tmp_path: Path) -> None:
    """A complete last record that fails its checksum with no zeros in it: no
    crash leaves that, so even an unacked write is refused (it may be damage)."""
    payloads = fill_store(tmp_path / "db", 50, unacked=1)
    image = tmp_path / "image"
    wal = the_wal(image)
    with open(wal, "r+b") as f:
        f.seek(wal.stat().st_size - 100)
        f.write(os.urandom(100))
    with pytest.raises(DataLoss, match="fails its checksum"):
        RocksStore.open(image)
    assert payloads_in(image, StoreOptions(wal_tail_damage="drop")) == payloads[:-1]


def test_acked_write_cut_from_the_tail_is_refused(tmp_path: Path) -> None:
    """A cut through a write the server had fsynced and acked is no torn write:
    the durable mark says so."""
    fill_store(tmp_path / "db", 50)
    image = tmp_path / "image"
    wal = the_wal(image)
    os.truncate(wal, wal.stat().st_size - 100)
    with pytest.raises(DataLoss, match=r"recorded writes up to sequence \d+ as durable"):
        RocksStore.open(image)


def _records(wal: Path) -> list[tuple[int, int, int]]:
    """(offset, length, type) of the physical records of a log with no break."""
    data = wal.read_bytes()
    out = []
    pos = 0
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:
            pos += BLOCK - pos % BLOCK
            continue
        length, rtype = data[pos + 4] | data[pos + 5] << 8, data[pos + 6]
        out.append((pos, length, rtype))
        pos += 7 + length
    return out


@pytest.mark.parametrize("damage", ["type bit", "length bit", "zeroed header"])
def test_damage_rocksdb_would_skip_silently_is_refused(tmp_path: Path, damage: str) -> None:
    """One flipped bit RocksDB's tolerant recovery reads as the end of the log
    (a FULL record's type turned into a recycled one; a length in the last block
    turned larger than what is left) or seven zero bytes at a record start (read
    as padding): it started, dropping acknowledged writes without a word."""
    payloads = fill_store(tmp_path / "db", 40)
    image = tmp_path / "image"
    wal = the_wal(image)
    records = _records(wal)
    offset = records[-10][0]
    with open(wal, "r+b") as f:
        f.seek(offset)
        header = bytearray(f.read(7))
        if damage == "type bit":
            header[6] ^= 0x04  # FULL (1) -> recyclable FULL (5)
        elif damage == "length bit":
            header[5] ^= 0x40  # + 16 KiB: past the end of the file
        else:
            header[:] = bytes(7)
        f.seek(offset)
        f.write(header)
    with pytest.raises(DataLoss, match="damaged before its end"):
        RocksStore.open(image)
    assert len(payloads) == 40


def sst_store(path: Path) -> tuple[list[bytes], list[bytes]]:
    """A closed store whose records are all in table files; payloads of segments a and b."""
    a = [f"a{i} ".encode() + os.urandom(3000) for i in range(40)]
    b = [f"b{i} ".encode() + os.urandom(3000) for i in range(5)]

    async def scenario() -> None:
        store = RocksStore.open(path)
        for data in a:
            await store.produce(payload_txn("s", "a", data))
        for data in b:
            await store.produce(payload_txn("s", "b", data))
        await store.close()

    asyncio.run(scenario())
    db = rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True))
    db.flush(True)
    db.close()
    return a, b


def damage_in_tables(path: Path, data: bytes) -> int:
    """Flips a byte inside every stored copy of ``data`` (in data blocks); returns how many."""
    flipped = 0
    for sst in path.glob("*.sst"):
        content = sst.read_bytes()
        at = content.find(data)
        while at != -1:
            flip_byte(sst, at + len(data) // 2)
            flipped += 1
            at = content.find(data, at + 1)
    return flipped


def test_damaged_table_block_answers_data_loss_at_the_damaged_offset(tmp_path: Path) -> None:
    path = tmp_path / "db"
    a, b = sst_store(path)
    # The 30th record of segment a, under its segment key and its space key.
    assert damage_in_tables(path, a[29]) == 2

    async def scenario() -> None:
        store = RocksStore.open(path)
        segment, space = Target("s", "a"), Target("s")
        # A read that reaches the damage returns what comes before it; the
        # next read, which starts at the damage, raises DataLoss naming it.
        for target in (segment, space):
            before = (await read(store, target, 1, 100, 1000, 64 * MIB)).count
            assert before > 0, target  # the damage is in the middle of either
            with pytest.raises(DataLoss, match=f"offset {before + 1} ") as caught:
                await read(store, target, before + 1, 100, 1000, 64 * MIB)
            assert target.describe() in str(caught.value), caught.value
            assert ".sst" in str(caught.value), caught.value
        assert (await read(store, segment, 1, 100, 1000, 64 * MIB)).count == 29
        with pytest.raises(DataLoss, match="offset 30"):
            (await read(store, segment, 30, 40, 1000, 64 * MIB))
        # Segment b shares no block with the damage.
        intact = (await read(store, Target("s", "b"), 1, 5, 100, 64 * MIB)).to_wire()
        assert [pb.Record.FromString(r).payload for r in codec.split_framed(intact)] == b
        assert await store.peek(Target("s", "b")) is not None
        # A time search that has to look at the damaged chunk.
        (before_damage,) = codec.split_framed(
            (await read(store, segment, 29, 29, 1, MIB)).to_wire()
        )
        damaged_ts = codec.record_timestamp_ns(before_damage)
        with pytest.raises(DataLoss):
            await store.first_at_or_after(segment, damaged_ts + 1)
        await store.close()

    asyncio.run(scenario())


def test_damaged_last_record_fails_peek_with_data_loss(tmp_path: Path) -> None:
    path = tmp_path / "db"
    a, _ = sst_store(path)
    assert damage_in_tables(path, a[-1]) == 2

    async def scenario() -> None:
        store = RocksStore.open(path)
        with pytest.raises(DataLoss, match="offset 40"):
            await store.peek(Target("s", "a"))
        await store.close()

    asyncio.run(scenario())


# -- invariants, checked with asserts stripped -----------------------------------


def test_malformed_chunks_and_keys_raise_specific_errors() -> None:
    with pytest.raises(MalformedChunk):
        Chunk(b"\x00\x00\x00\x00")  # no records
    with pytest.raises(MalformedChunk):
        Chunk(b"\x05\x00\x00\x00\x01")  # five records claimed, no room for them
    with pytest.raises(MalformedChunk):
        Chunk(b"\x01\x00\x00\x00\x03\x00\x00\x00\x0b\x01x").record(0)  # wrong tag
    with pytest.raises(ValueError):
        keys.u64(-1)
    with pytest.raises(ValueError):
        keys.name("a\x00b")
