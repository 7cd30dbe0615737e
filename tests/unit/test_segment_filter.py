"""Reads of a space by segment prefix, on the store directly: bounded work per
step, the same records from RocksDB and from the live-tail window, and damaged
record headers reported as data loss."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streams import codec
from streams.errors import DataLoss
from streams.model import Cut, SegmentAppend, Target, Transaction
from streams.storage.rocksdb import chunks
from streams.storage.rocksdb import layout as keys
from streams.storage.rocksdb.store import RocksStore
from streams.v1 import streams_pb2 as pb

MIB = 1 << 20
SPACE = Target("s")


async def produce(store: RocksStore, *appends: tuple[str, list[bytes]]) -> None:
    bodies = [
        SegmentAppend(
            segment, tuple(pb.RecordInput(payload=p).SerializeToString() for p in ps), None
        )
        for segment, ps in appends
    ]
    await store.produce(Transaction("s", tuple(bodies), "", b""))


async def steps(
    store: RocksStore, prefix: bytes, cut: Cut
) -> list[tuple[int, int, list[pb.Record]]]:
    """Reads every matching record step by step: (first, after, records) per step."""
    out = []
    first, last = 1, await store.last_offset(SPACE)
    while first <= last:
        batch, after = await store.read(SPACE, first, last, cut, prefix)
        records = list(pb.ConsumeResponse.FromString(batch.to_wire()).records)
        assert len(records) == batch.count
        assert after > first, f"no progress from {first}"
        out.append((first, after, records))
        first = after
    return out


def records_of(taken: list[tuple[int, int, list[pb.Record]]]) -> list[pb.Record]:
    return [r for _, _, records in taken for r in records]


async def mixed(store: RocksStore) -> None:
    """Transactions over matching and other segments, some of several segments."""
    for i in range(40):
        appends = [("b/x" if i % 3 else "a/1", [f"{i}:{j}".encode() for j in range(i % 4 + 1)])]
        if i % 5 == 0:
            appends.append(("a/2", [f"{i}:a2".encode()]))
        if i % 7 == 0:
            appends.append(("ab", [f"{i}:ab".encode()]))
        await produce(store, *appends)


def test_a_step_skips_at_most_its_budget_and_always_progresses(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db")
        try:
            await produce(store, ("a", [b"first"]))
            for _ in range(20):
                await produce(store, ("b", [bytes(100_000)]))
            await produce(store, ("a", [b"last"]))
            taken = await steps(store, b"a", Cut(100, MIB, max_skip_bytes=250_000))
            assert [r.payload for r in records_of(taken)] == [b"first", b"last"]
            assert [r.position for r in records_of(taken)] == [1, 22]
            # Each step skipped about its budget (three 100 kB chunks), then returned.
            assert len(taken) >= 7
            assert all(after - first <= 4 for first, after, _ in taken)
            # With a larger budget one step does it all.
            assert len(await steps(store, b"a", Cut(100, MIB, max_skip_bytes=10 * MIB))) == 1
        finally:
            await store.close()

    asyncio.run(scenario())


def test_the_window_and_rocksdb_give_the_same_records(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db")
        try:
            async with store.follow(SPACE):
                await mixed(store)
                assert store.tail.windows == 1
                cut = Cut(3, MIB, max_skip_bytes=40)  # small steps: many cuts in the window
                assert store.tail.read_matching(SPACE, 1, 10, cut, b"a") is not None
                from_window = {p: await steps(store, p, cut) for p in (b"a", b"a/", b"ab", b"b/x")}
            assert store.tail.windows == 0
            batch, _ = await store.read(SPACE, 1, 10_000, Cut(10_000, 4 * MIB))
            everything = list(pb.ConsumeResponse.FromString(batch.to_wire()).records)
            for prefix, taken in from_window.items():
                want = [r for r in everything if r.segment.encode().startswith(prefix)]
                assert records_of(taken) == want, prefix
                assert records_of(await steps(store, prefix, cut)) == want, prefix
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_damaged_record_header_is_data_loss(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = RocksStore.open(tmp_path / "db")
        try:
            await produce(store, ("a", [b"x"]))
            (_, damaged), *_ = chunks.pack([b"\x7fnot a record"])
            store._db.put(keys.space_prefix("s") + keys.u64(1), damaged)
            with pytest.raises(DataLoss, match="chunk from offset 1"):
                await store.read(SPACE, 1, 1, Cut(10, MIB, 1), b"a")
        finally:
            await store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("space", "segment"),
    [("s", "a"), ("é" * 100, "€/x" * 80), ("x" * 255, "y" * 255), ("s", "\u2028")],
)
def test_the_segment_is_read_in_place_from_any_record(space: str, segment: str) -> None:
    header = codec.record_header(space, segment, 123_456_789, "tx" * 60)
    stored = codec.record(
        header, 2**40, 2**50, pb.RecordInput(payload=b"p" * 300).SerializeToString()
    )
    framed = b"junk" + stored
    begin, end = codec.segment_span(framed, 4)
    assert framed[begin:end].decode() == segment
    assert codec.in_segments(framed, 4, segment[:1].encode())
    assert codec.in_segments(stored, 0, segment.encode())
    assert not codec.in_segments(stored, 0, (segment + "!").encode())


def test_a_prefix_matches_whole_characters_only() -> None:
    stored = codec.record(codec.record_header("s", "é/1", 1, ""), 1, 1, b"")
    assert codec.in_segments(stored, 0, "é".encode())
    assert not codec.in_segments(stored, 0, b"e")
    with pytest.raises(codec.CorruptRecord):
        codec.segment_span(b"\x1a\x05ab", 0)
