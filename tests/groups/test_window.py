"""The window alone: reading records in place, acked_through, skipped ranges."""

from __future__ import annotations

import pytest

from streams import codec
from streams.codec import CorruptRecord
from streams.groups.window import Bounds, Entry, State, Window, entries_of
from streams.memory import MemoryBudget
from streams.model import GroupProgress, Record

BOUNDS = Bounds(records=100, bytes=1 << 20, lead=1000)


def framed(*records: Record) -> bytes:
    return codec.consume_response([codec.stored(r) for r in records])


@pytest.mark.parametrize("transaction_id", ["", "tx-1"])
@pytest.mark.parametrize("position", [1, 127, 128, 2**21 + 5, 2**63 + 1])
def test_entries_read_segment_and_position_in_place(transaction_id: str, position: int) -> None:
    records = [
        Record(
            "space", "seg-é", 1, position, 1_700_000_000_123_456_789, transaction_id, b"\x0a\x01x"
        ),
        Record("space", "b", 2**40, position + 1, 0, transaction_id, b"\x0a\x01y"),
    ]
    entries = entries_of(framed(*records))
    assert [(e.segment, e.position) for e in entries] == [
        ("seg-é", position),
        ("b", position + 1),
    ]
    assert [e.stored for e in entries] == [codec.stored(r) for r in records]


def test_entries_of_chunks_gaps_and_long_records() -> None:
    """Runs of one segment (as chunks hold them), segments coming back, names
    whose length takes two bytes, records over 16 KiB, and positions with
    gaps (records removed): each entry has its own segment and position."""
    long_name = "n" * 200
    specs = [
        ("a", 3, 1),
        ("a", 4, 2),
        (long_name, 1, 3),
        (long_name, 2, 4),
        ("a", 5, 5),
        ("b", 1, 6),
    ]
    for gap in (0, 10):
        records = [
            Record("sp", segment, sequence, position + (gap if position > 3 else 0), 5, "", body)
            for (segment, sequence, position), body in zip(
                specs, [b"\x0a\x01x"] * 3 + [b"\x0a\x80\x80\x02" + b"y" * 32768] * 3, strict=True
            )
        ]
        entries = entries_of(framed(*records))
        assert [(e.segment, e.position, e.stored) for e in entries] == [
            (r.segment, r.position, codec.stored(r)) for r in records
        ]


def test_records_that_do_not_parse_are_damage() -> None:
    stored = codec.record_header("s", "a", 5, "") + b"\x28"  # cut inside a varint
    with pytest.raises(CorruptRecord, match="do not parse"):
        entries_of(codec.consume_response([stored]))


def entry(position: int) -> Entry:
    return Entry(position, "a", b"x" * 10)


def test_acked_through_is_the_first_unsettled_minus_one() -> None:
    budget = MemoryBudget(1 << 30, 1 << 20)
    window = Window(GroupProgress(4), BOUNDS, budget, "group:s/g")
    assert window.cursor == 5 and window.acked_through() == 4
    entries = [entry(p) for p in (5, 6, 8)]
    window.add(entries, 9)
    assert window.acked_through() == 4 and budget.responses == 30
    entries[1].state = State.WRITING
    # Settling 6 alone moves nothing: 5 is not settled.
    assert window.through_after_writing() == 4
    entries[0].state = State.WRITING
    assert window.through_after_writing() == 7
    window.remove(entries[:2])
    assert window.acked_through() == 7
    window.remove(entries[2:])
    # Nothing held: everything read is settled.
    assert window.acked_through() == 8 and budget.responses == 0


def test_durable_settled_ranges_are_skipped_not_read() -> None:
    window = Window(GroupProgress(2, ((5, 6), (9, 9))), BOUNDS, MemoryBudget(1 << 30), "p")
    span = window.next_read(1000, 1 << 20)
    assert span is not None and (span.first, span.last) == (3, 4)
    window.add([entry(3), entry(4)], 5)
    span = window.next_read(1000, 1 << 20)
    assert span is not None and (span.first, span.last) == (7, 8)
    window.add([], 9)
    span = window.next_read(1000, 1 << 20)
    assert span is not None and span.first == 10


def test_bounds_pause_the_reader() -> None:
    bounds = Bounds(records=2, bytes=25, lead=10)
    window = Window(GroupProgress(0), bounds, MemoryBudget(1 << 30), "p")
    window.add([entry(1)], 2)
    span = window.next_read(1000, 1 << 20)
    assert span is not None and (span.records, span.bytes, span.last) == (1, 15, 10)
    window.add([entry(2)], 3)
    assert window.next_read(1000, 1 << 20) is None  # two records
    first = window.entries[1]
    window.remove([first])
    window.add([], 11)
    span = window.next_read(1000, 1 << 20)
    assert span is not None and (span.first, span.last) == (11, 11)  # lead: 10 past 1
    window.add([], 12)
    assert window.next_read(1000, 1 << 20) is None
