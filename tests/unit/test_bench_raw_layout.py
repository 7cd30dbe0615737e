"""The raw rocksdict limit of scripts/bench (bench/core.py's RawLayout) writes the
engine's catalog entries: each value unpacks with the engine's formats and says
what the batch wrote (a stale format made `scripts/bench` fail in its first section)."""

from __future__ import annotations

import sys
from pathlib import Path

from streams.storage.rocksdb import layout as keys
from streams.storage.rocksdb.catalog import SegmentEntry, SpaceEntry

# bench/ holds scripts that import each other as top-level modules (core, common).
sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))
from core import RawLayout


def test_raw_batches_carry_the_engines_catalog_entries() -> None:
    batches = RawLayout("bench", 100).batches(segments=2, calls=4, per_call=10)
    assert [b.records for b in batches] == [10] * 4
    last = batches[-1].items
    # Call 4 is writer 1's second: sequences 11-20, positions 31-40.
    segment = dict(last)[keys.segment_catalog_key("bench", "producer-1")]
    entry = SegmentEntry._make(keys.SEGMENT_CATALOG.unpack(segment))
    assert (entry.sequence, entry.position, entry.flags) == (20, 40, 0)
    space_key, space = last[-1]
    assert space_key == keys.space_catalog_key("bench")
    totals = SpaceEntry._make(keys.SPACE_CATALOG.unpack(space))
    assert (totals.position, totals.records, totals.flags) == (40, 40, 0)
