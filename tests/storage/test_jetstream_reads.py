"""The JetStream backend's stored-range reads: a segment's record found from
any offset however its messages are spread among the space's (the search
over stream sequences), and reads cut by records, resumed where they ended."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streams.model import Cut, Target
from streams.storage.port import Store

from .conftest import HARNESSES, Harness, txn
from .test_port_rules import payloads


@pytest.fixture
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    return HARNESSES["jetstream"](tmp_path, request)


# Segment "a"'s records among "b"'s, unevenly: runs of a few "a" between runs of
# many "b", then a long run of "a" alone.
SPREAD = ((1, 40), (3, 1), (1, 0), (2, 25), (30, 0), (1, 60), (5, 2))


async def spread(store: Store) -> int:
    for a, b in SPREAD:
        writes = [("a", a)] + ([("b", b)] if b else [])
        await store.produce(txn("s", *writes))
    return sum(a for a, _ in SPREAD)


def test_reads_a_segment_from_any_offset_among_unevenly_spread_messages(
    harness: Harness,
) -> None:
    async def scenario(store: Store) -> None:
        count = await spread(store)
        await store.trim(Target("s", "a"), 3)  # the first retained is no longer the first
        target = Target("s", "a")
        for first in range(1, count + 2):
            batch, after = await store.read(target, first, 2**64 - 1, Cut(1, 1 << 20))
            got = [r.sequence for r in batch.records()]
            expected = max(first, 3)
            assert got == ([expected] if expected <= count else []), first
            assert after == (expected + 1 if expected <= count else first), first

    harness.run(scenario)


@pytest.mark.parametrize("segment", ["a", ""])
def test_reads_cut_by_records_resume_where_they_ended_and_miss_nothing(
    harness: Harness, segment: str
) -> None:
    async def scenario(store: Store) -> None:
        await spread(store)
        target = Target("s", segment) if segment else Target("s")
        whole = (await store.read(target, 1, 2**64 - 1, Cut(10_000, 1 << 24)))[0]
        expected = list(whole.records())
        for size in (1, 7, len(expected) - 1, len(expected)):
            got, first = [], 1
            while True:
                batch, after = await store.read(target, first, 2**64 - 1, Cut(size, 1 << 24))
                assert batch.count == min(size, len(expected) - len(got))
                got += batch.records()
                if not batch.count:
                    break
                first = after
            assert payloads(got) == payloads(expected), size
            offsets = [r.sequence if segment else r.position for r in got]
            assert offsets == sorted(set(offsets))

    harness.run(scenario)


def test_reads_through_two_stores_at_once_get_each_their_own_replies(harness: Harness) -> None:
    """Direct gets of one connection share one inbox subscription: concurrent
    reads must each get their own messages."""

    async def scenario(store: Store) -> None:
        count = await spread(store)
        reads = [
            store.read(Target("s", "a"), first, 2**64 - 1, Cut(5, 1 << 20))
            for first in range(1, count + 1)
        ]
        for first, (batch, _) in enumerate(await asyncio.gather(*reads), 1):
            got = [r.sequence for r in batch.records()]
            assert got == list(range(first, min(first + 5, count + 1))), first

    harness.run(scenario)
