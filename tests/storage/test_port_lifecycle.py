"""The port conformance suite for the data lifecycle: rules 11-14 of
streams/storage/port.py (prefix removal, numbers never reused, offsets
surviving trims, watched catalogs) and the operations behind them (trim, the
deletes, configure_space, the infos, watch, enforce_retention), for every
backend (``backend`` fixture). A test's name starts with the rule or the
operation it checks; what a durable backend keeps is checked again after a
restart."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from streams.errors import NotFound, OutOfRange, SequenceMismatch, Unavailable
from streams.model import (
    Cut,
    Record,
    Removed,
    RetentionPolicy,
    SegmentInfo,
    SpaceConfig,
    SpaceInfo,
    Target,
    record_bytes,
)
from streams.storage.port import SegmentWatch, Store

from .conftest import Harness, txn
from .test_port_rules import payloads

MIB = 1 << 20
ALL = Cut(10_000, 64 * MIB)
SECOND = 1_000_000_000
Scenario = Callable[[Store], Awaitable[None]]


async def read(store: Store, target: Target, first: int = 1, last: int = 2**64 - 1) -> list[Record]:
    """Every retained record of ``target`` from ``first`` to ``last``, in one read."""
    batch, after = await store.read(target, first, last, ALL)
    records = list(batch.records())
    if records:
        # The next read may start past removed records, never before the last one read.
        assert after > offsets(records[-1:], target)[0]
    return records


def offsets(records: list[Record], target: Target) -> list[int]:
    return [r.position if target.is_space else r.sequence for r in records]


async def stepwise(store: Store, target: Target, first: int = 1) -> list[int]:
    """The offsets of ``target`` read one record per step from ``first``, each
    step starting where the last one said, until the last offset (a step may
    move past removed records, so a record skipped wrongly is missing here)."""
    last = await store.last_offset(target)
    found: list[int] = []
    while first <= last:
        batch, after = await store.read(target, first, last, Cut(1, MIB))
        assert after > first, f"a read from {first} must move on"
        got = offsets(list(batch.records()), target)
        if got:
            assert got[0] >= first and after > got[-1]
        found += got
        first = after
    return found


def size(records: list[Record]) -> int:
    return sum(record_bytes(r.body) for r in records)


async def retained(store: Store, target: Target) -> list[int]:
    return offsets(await read(store, target), target)


def in_turn(backend: Harness, *steps: Scenario) -> None:
    """Runs ``steps`` one after the other: for a durable backend each on the
    store opened anew (what one step did must survive the restart), else all
    on one store."""
    if backend.durable:
        for step in steps:
            backend.run(step)
        return

    async def every(store: Store) -> None:
        for step in steps:
            await step(store)

    backend.run(every)


def now_and_after_restart(
    backend: Harness, change: Scenario, check: Scenario, *then: Scenario
) -> None:
    """Runs ``check`` (which changes nothing) right after ``change`` and, for
    a durable backend, again on the store opened anew; then the steps ``then``
    (see :func:`in_turn`)."""

    async def both(store: Store) -> None:
        await change(store)
        await check(store)

    in_turn(backend, both, check, *then)


def segment_numbers(info: SegmentInfo | None) -> tuple[object, ...] | None:
    """An info's numbers: (last_sequence, first_sequence, record_count, bytes, deleted)."""
    if info is None:
        return None
    return (info.last_sequence, info.first_sequence, info.record_count, info.bytes, info.deleted)


def space_numbers(info: SpaceInfo | None) -> tuple[object, ...] | None:
    """(last_position, first_position, record_count, bytes, config)."""
    if info is None:
        return None
    return (info.last_position, info.first_position, info.record_count, info.bytes, info.config)


async def next_change(watch: SegmentWatch) -> frozenset[str] | None:
    return await asyncio.wait_for(watch.changes(), 10)


async def no_change(watch: SegmentWatch) -> None:
    """Nothing is pending: a call to changes() does not return at once."""
    pending = asyncio.ensure_future(watch.changes())
    for _ in range(5):
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    done = pending.done()
    pending.cancel()
    assert not done, f"unexpected change reported: {pending.result()}"


# -- 11. prefix removal: trim ----------------------------------------------------------


def test_prefix_removal_trim_of_a_segment(backend: Harness) -> None:
    a, b, space = Target("s", "a"), Target("s", "b"), Target("s")

    async def change(store: Store) -> None:
        # Positions: a1 1, b1 2, a2 3, a3 4, b2 5, a4 6.
        await store.produce(txn("s", ("a", 1), ("b", 1)))
        await store.produce(txn("s", ("a", 2), tag=b"longer body"))
        await store.produce(txn("s", ("b", 1), ("a", 1)))
        before = await read(store, a)
        first, removed = await store.trim(a, 3)
        assert first == 3
        assert removed == Removed(2, size(before[:2]))

    async def check(store: Store) -> None:
        assert await store.first_offset(a) == 3
        assert await store.last_offset(a) == 4
        assert await retained(store, a) == [3, 4]
        assert payloads(await read(store, a)) == [b"a:1longer body", b"a:0"]
        # The space read skips the two removed records; its first position moved.
        assert await retained(store, space) == [2, 4, 5, 6]
        assert await store.first_offset(space) == 2
        assert await store.last_offset(space) == 6
        assert await retained(store, b) == [1, 2]
        assert await store.first_offset(b) == 1

    now_and_after_restart(backend, change, check)


def test_prefix_removal_trim_of_a_space_cuts_every_segment(backend: Harness) -> None:
    space = Target("s")

    async def change(store: Store) -> None:
        await store.produce(txn("s", ("a", 2), ("b", 1)))  # positions 1-3
        await store.produce(txn("s", ("c", 1), ("a", 1)))  # positions 4-5
        records = await read(store, space)
        first, removed = await store.trim(space, 4)
        assert first == 4
        assert removed == Removed(3, size(records[:3]))

    async def check(store: Store) -> None:
        assert await retained(store, space) == [4, 5]
        assert await store.first_offset(space) == 4
        assert await retained(store, Target("s", "a")) == [3]
        assert await store.first_offset(Target("s", "a")) == 3
        # b is empty now: its first offset is one past its last.
        assert await retained(store, Target("s", "b")) == []
        assert await store.first_offset(Target("s", "b")) == 2
        assert await store.last_offset(Target("s", "b")) == 1
        assert await retained(store, Target("s", "c")) == [1]

    now_and_after_restart(backend, change, check)


def test_prefix_removal_trim_cuts_through_a_transaction(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("a", 3), ("b", 2)))  # a 1-3 at 1-3, b 1-2 at 4-5
        assert await store.trim(Target("s", "a"), 2) == (
            2,
            Removed(1, size((await read(store, Target("s", "a")))[:1])),
        )
        assert await retained(store, Target("s")) == [2, 3, 4, 5]
        first, removed = await store.trim(Target("s"), 5)
        assert (first, removed.records) == (5, 3)
        assert await retained(store, Target("s", "a")) == []
        assert await retained(store, Target("s", "b")) == [2]
        assert [(r.segment, r.sequence, r.position) for r in await read(store, Target("s"))] == [
            ("b", 2, 5)
        ]

    backend.run(scenario)


def test_prefix_removal_trim_below_the_first_offset_changes_nothing(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("a", 5)))
        a, space = Target("s", "a"), Target("s")
        assert (await store.trim(a, 3))[0] == 3
        for before in (0, 1, 2, 3):
            assert await store.trim(a, before) == (3, Removed())
            assert await store.trim(space, before) == (3, Removed())
        assert await retained(store, a) == [3, 4, 5]
        # A trim never brings a record back.
        assert await store.trim(space, 4) == (4, Removed(1, size((await read(store, a))[:1])))
        assert await store.trim(a, 3) == (4, Removed())
        assert await retained(store, a) == [4, 5]

    backend.run(scenario)


def test_prefix_removal_trim_to_one_past_the_last_empties_and_past_it_is_out_of_range(
    backend: Harness,
) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("a", 3), ("b", 1)))
        a, space = Target("s", "a"), Target("s")
        all_of_a = await read(store, a)
        with pytest.raises(OutOfRange):
            await store.trim(a, 5)
        with pytest.raises(OutOfRange):
            await store.trim(space, 6)
        with pytest.raises(OutOfRange):
            await store.trim(space, 2**64 - 1)
        assert await retained(store, space) == [1, 2, 3, 4]  # nothing removed
        assert await store.trim(a, 4) == (4, Removed(3, size(all_of_a)))
        assert await store.first_offset(a) == 4 and await store.last_offset(a) == 3
        assert await store.peek(a) is None
        assert (await store.trim(space, 5))[0] == 5
        assert await store.first_offset(space) == 5 and await store.last_offset(space) == 4
        assert await store.peek(space) is None
        assert await retained(store, space) == []
        with pytest.raises(OutOfRange):
            await store.trim(a, 5)  # its last offset is kept: 3

    backend.run(scenario)


def test_prefix_removal_trim_of_an_unknown_target_is_not_found(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("a", 1)))
        for target in (Target("t"), Target("t", "a"), Target("s", "b"), Target("s", "ab")):
            with pytest.raises(NotFound):
                await store.trim(target, 1)
        # A space that only has a config is found; it has no offsets yet.
        await store.configure_space("c", SpaceConfig())
        assert await store.trim(Target("c"), 1) == (1, Removed())
        assert await store.trim(Target("c"), 0) == (1, Removed())
        with pytest.raises(OutOfRange):
            await store.trim(Target("c"), 2)
        with pytest.raises(NotFound):
            await store.trim(Target("c", "a"), 1)

    backend.run(scenario)


def test_prefix_removal_reads_start_at_the_first_retained_offset(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        for n in range(6):
            await store.produce(txn("s", ("a" if n % 2 == 0 else "b", 1)))
            backend.clock.now += SECOND
        a, space = Target("s", "a"), Target("s")  # a: positions 1, 3, 5
        await store.trim(a, 3)  # removes positions 1 and 3
        batch, after = await store.read(a, 1, 10, ALL)
        assert offsets(list(batch.records()), a) == [3] and after == 4
        batch, after = await store.read(space, 1, 10, ALL)
        assert offsets(list(batch.records()), space) == [2, 4, 5, 6] and after == 7
        # Cuts count retained records only; each step starts where the last said.
        batch, after = await store.read(space, 1, 10, Cut(2, MIB))
        assert offsets(list(batch.records()), space) == [2, 4] and after == 5
        assert await stepwise(store, space) == [2, 4, 5, 6]
        assert await stepwise(store, space, 3) == [4, 5, 6]
        assert await stepwise(store, a) == [3]
        # A read whose bounds hold only removed records returns none and moves on.
        batch, after = await store.read(space, 3, 3, ALL)
        assert batch.count == 0 and after == 4

    backend.run(scenario)


def test_prefix_removal_peek_and_first_at_or_after_skip_removed_records(
    backend: Harness,
) -> None:
    stamps: list[int] = []

    async def change(store: Store) -> None:
        for segment in ("a", "b", "a", "b"):  # positions 1-4, one second apart
            stamps.append((await store.produce(txn("s", (segment, 1)))).timestamp_ns)
            backend.clock.now += SECOND
        await store.trim(Target("s", "b"), 2)  # removes position 2
        await store.trim(Target("s", "a"), 3)  # a is empty: removes positions 1 and 3

    async def check(store: Store) -> None:
        space, a, b = Target("s"), Target("s", "a"), Target("s", "b")
        assert await store.first_at_or_after(space, 0) == 4
        assert await store.first_at_or_after(space, stamps[1]) == 4
        assert await store.first_at_or_after(space, stamps[3]) == 4
        assert await store.first_at_or_after(space, stamps[3] + 1) == 5
        assert await store.first_at_or_after(b, 0) == 2
        assert await store.first_at_or_after(a, 0) == 3  # one past its last: none retained
        peeked = await store.peek(space)
        assert peeked is not None and [r.position for r in peeked.records()] == [4]
        assert await store.peek(a) is None
        peeked = await store.peek(b)
        assert peeked is not None and [r.sequence for r in peeked.records()] == [2]

    now_and_after_restart(backend, change, check)


def test_prefix_removal_infos_and_lists_count_what_is_retained(backend: Harness) -> None:
    sizes: dict[str, int] = {}

    async def change(store: Store) -> None:
        await store.produce(txn("s", ("a", 3), ("b", 2), tag=b"12345"))  # a 1-3, b 4-5
        await store.produce(txn("s", ("a", 1)))  # a 6
        records = await read(store, Target("s"))
        sizes["a4"] = size(records[5:])
        sizes["b"] = size(records[3:5])
        await store.trim(Target("s", "a"), 4)
        await store.trim(Target("s"), 5)

    async def check(store: Store) -> None:
        space = await store.get_space("s")
        assert space_numbers(space) == (6, 5, 2, sizes["a4"] + sizes["b"] // 2, None)
        assert [space] == await store.list_spaces(None, 10)
        a = await store.get_segment("s", "a")
        b = await store.get_segment("s", "b")
        assert segment_numbers(a) == (4, 4, 1, sizes["a4"], False)
        assert segment_numbers(b) == (2, 2, 1, sizes["b"] // 2, False)
        assert a is not None and a.last_position == 6
        assert b is not None and b.last_position == 5
        assert await store.list_segments("s", None, 10) == [a, b]

    async def empty_a(store: Store) -> None:
        # Trimmed to nothing, a segment stays listed: only a delete removes it.
        await store.trim(Target("s", "a"), 5)
        emptied = await store.get_segment("s", "a")
        assert segment_numbers(emptied) == (4, 5, 0, 0, False)
        assert emptied is not None and emptied.last_position == 6
        assert [i.name for i in await store.list_segments("s", None, 10)] == ["a", "b"]
        assert space_numbers(await store.get_space("s")) == (6, 5, 1, sizes["b"] // 2, None)

    now_and_after_restart(backend, change, check, empty_a)


def test_prefix_removal_a_space_trimmed_to_nothing_stays_listed(backend: Harness) -> None:
    async def change(store: Store) -> None:
        first = await store.produce(txn("s", ("a", 2)))
        assert (await store.trim(Target("s"), 3))[0] == 3
        assert first.timestamp_ns == backend.clock.now

    async def check(store: Store) -> None:
        info = await store.get_space("s")
        assert space_numbers(info) == (2, 3, 0, 0, None)
        assert info is not None and info.last_timestamp_ns == backend.clock.now
        assert [i.name for i in await store.list_spaces(None, 10)] == ["s"]
        segment = await store.get_segment("s", "a")
        assert segment_numbers(segment) == (2, 3, 0, 0, False)

    now_and_after_restart(backend, change, check)


def test_prefix_removal_is_never_undone_and_numbers_go_on(backend: Harness) -> None:
    async def change(store: Store) -> None:
        await store.produce(txn("s", ("a", 3)))
        await store.trim(Target("s"), 4)

    async def check(store: Store) -> None:
        result = await store.produce(txn("s", ("a", 1, 3)))
        assert (result.acks[0].first_sequence, result.first_position) == (4, 4)
        assert await retained(store, Target("s", "a")) == [4]
        assert await store.first_offset(Target("s", "a")) == 4
        await store.trim(Target("s"), 5)

    async def after(store: Store) -> None:
        assert await retained(store, Target("s")) == []
        assert await store.first_offset(Target("s")) == 5
        result = await store.produce(txn("s", ("b", 1)))
        assert result.first_position == 5

    in_turn(backend, change, check, after)


def test_prefix_removal_a_trim_returns_once_durable_and_reads_wait_for_it(
    backend: Harness,
) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("a", 3)))
        gate = backend.held(store)
        trim = asyncio.ensure_future(store.trim(Target("s", "a"), 3))
        await gate.wait_reached()
        await asyncio.sleep(0.05)  # a chance to answer early, which it must not take
        assert not trim.done()
        # What a crash could still take back is not shown (rule 2).
        assert await retained(store, Target("s", "a")) == [1, 2, 3]
        gate.open()
        assert (await trim)[0] == 3
        assert await retained(store, Target("s", "a")) == [3]

    backend.run(scenario)


# -- 12. numbers are never reused: deletes ---------------------------------------------


def test_numbers_delete_segment_removes_it_and_keeps_its_numbers(backend: Harness) -> None:
    removed_bytes: list[int] = []

    async def change(store: Store) -> None:
        await store.produce(txn("s", ("a", 2), ("ab", 1), ("b", 1)))  # a 1-2, ab 3, b 4
        await store.produce(txn("s", ("a", 1)))  # a 5
        await store.trim(Target("s", "a"), 2)
        removed_bytes.append(size(await read(store, Target("s", "a"))))
        assert await store.delete_segment("s", "a", None) == Removed(2, removed_bytes[0])

    async def check(store: Store) -> None:
        a = Target("s", "a")
        assert await store.get_segment("s", "a") is None
        deleted = await store.get_segment("s", "a", include_deleted=True)
        assert segment_numbers(deleted) == (3, 4, 0, 0, True)
        assert [i.name for i in await store.list_segments("s", None, 10)] == ["ab", "b"]
        listed = await store.list_segments("s", None, 10, include_deleted=True)
        assert [(i.name, i.deleted) for i in listed] == [("a", True), ("ab", False), ("b", False)]
        assert listed[0] == deleted
        assert await retained(store, a) == []
        assert await store.peek(a) is None
        assert await store.last_offset(a) == 3 and await store.first_offset(a) == 4
        assert await store.first_at_or_after(a, 0) == 4
        with pytest.raises(NotFound):
            await store.trim(a, 1)
        # Prefix-safe: ab and the space's other records stay.
        assert await retained(store, Target("s", "ab")) == [1]
        assert await retained(store, Target("s")) == [3, 4]
        assert await store.first_offset(Target("s")) == 3
        space = await store.get_space("s")
        assert space is not None and (space.first_position, space.record_count) == (3, 2)
        # Deleting again, or what never existed, is a no-op.
        assert await store.delete_segment("s", "a", None) == Removed()
        assert await store.delete_segment("s", "zz", None) == Removed()
        assert await store.delete_segment("nowhere", "a", None) == Removed()

    now_and_after_restart(backend, change, check)


def test_numbers_produce_after_delete_segment_continues(backend: Harness) -> None:
    async def change(store: Store) -> None:
        await store.produce(txn("s", ("a", 3), ("b", 1)))
        await store.delete_segment("s", "a", None)

    async def check(store: Store) -> None:
        with pytest.raises(SequenceMismatch) as caught:
            await store.produce(txn("s", ("a", 1, 0)))  # 0 matches only a segment never written
        assert (caught.value.segment, caught.value.actual) == ("a", 3)
        result = await store.produce(txn("s", ("a", 2, 3)))
        assert (result.acks[0].first_sequence, result.acks[0].last_sequence) == (4, 5)
        assert (result.first_position, result.last_position) == (5, 6)
        info = await store.get_segment("s", "a")
        assert segment_numbers(info) == (5, 4, 2, size(await read(store, Target("s", "a"))), False)
        assert [i.name for i in await store.list_segments("s", None, 10)] == ["a", "b"]
        assert await retained(store, Target("s")) == [4, 5, 6]
        await store.delete_segment("s", "a", 5)

    async def after(store: Store) -> None:
        assert await store.get_segment("s", "a") is None
        assert (await store.produce(txn("s", ("a", 1)))).acks[0].first_sequence == 6

    in_turn(backend, change, check, after)


def test_numbers_delete_segment_compares_expected_sequence(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("a", 3)))
        for wrong in (0, 2, 4):
            with pytest.raises(SequenceMismatch) as caught:
                await store.delete_segment("s", "a", wrong)
            assert (caught.value.segment, caught.value.actual) == ("a", 3)
        assert await retained(store, Target("s", "a")) == [1, 2, 3]
        await store.trim(Target("s", "a"), 3)
        # It compares with the last sequence, not what is retained.
        assert (await store.delete_segment("s", "a", 3)).records == 1
        assert await store.get_segment("s", "a") is None
        assert await store.delete_segment("s", "a", 3) == Removed()

    backend.run(scenario)


def test_numbers_delete_space_removes_everything_and_keeps_its_numbers(
    backend: Harness,
) -> None:
    removed: list[Removed] = []

    async def change(store: Store) -> None:
        await store.produce(txn("s", ("a", 2), ("b", 1)))
        await store.configure_space("s", SpaceConfig(RetentionPolicy(max_records_per_segment=5)))
        for space in ("s/x", "sx", "t"):
            await store.produce(txn(space, ("a", 1)))
        whole = size(await read(store, Target("s")))
        removed.append(await store.delete_space("s"))
        assert removed[0] == Removed(3, whole)

    async def check(store: Store) -> None:
        assert await store.get_space("s") is None
        assert [i.name for i in await store.list_spaces(None, 10)] == ["s/x", "sx", "t"]
        assert await store.list_segments("s", None, 10) == []
        listed = await store.list_segments("s", None, 10, include_deleted=True)
        assert [segment_numbers(i) for i in listed] == [(2, 3, 0, 0, True), (1, 2, 0, 0, True)]
        assert await store.get_segment("s", "a") is None
        assert segment_numbers(await store.get_segment("s", "b", True)) == (1, 2, 0, 0, True)
        for target in (Target("s"), Target("s", "a")):
            assert await retained(store, target) == []
            assert await store.peek(target) is None
            with pytest.raises(NotFound):
                await store.trim(target, 1)
        assert await store.last_offset(Target("s")) == 3
        assert await store.first_offset(Target("s")) == 4
        for space in ("s/x", "sx", "t"):  # prefix-safe
            assert await retained(store, Target(space)) == [1]
        assert await store.delete_space("s") == Removed()
        assert await store.delete_space("never") == Removed()

    now_and_after_restart(backend, change, check)


def test_numbers_produce_after_delete_space_continues_without_the_old_config(
    backend: Harness,
) -> None:
    async def change(store: Store) -> None:
        await store.produce(txn("s", ("a", 2), ("b", 1)))
        await store.configure_space("s", SpaceConfig(RetentionPolicy(max_age_ns=SECOND)))
        await store.delete_space("s")

    async def check(store: Store) -> None:
        result = await store.produce(txn("s", ("b", 1, 1), ("c", 1, 0)))
        assert [(a.segment, a.first_sequence) for a in result.acks] == [("b", 2), ("c", 1)]
        assert (result.first_position, result.last_position) == (4, 5)
        info = await store.get_space("s")
        assert space_numbers(info) == (5, 4, 2, size(await read(store, Target("s"))), None)
        assert [(i.name, i.deleted) for i in await store.list_segments("s", None, 10, True)] == [
            ("a", True),
            ("b", False),
            ("c", False),
        ]
        assert [i.name for i in await store.list_spaces(None, 10)] == ["s"]

    in_turn(backend, change, check)


# -- 13. offsets survive trims ------------------------------------------------------------


def test_offsets_below_the_first_offset_are_kept(backend: Harness) -> None:
    async def change(store: Store) -> None:
        await store.produce(txn("s", ("a", 5)))
        await store.commit_offset("c", Target("s", "a"), 2, None)
        await store.commit_offset("c", Target("s"), 1, None)
        await store.trim(Target("s"), 5)
        # Committing below the first offset is still allowed; past the last is not.
        assert await store.commit_offset("d", Target("s", "a"), 1, None) == 1
        with pytest.raises(OutOfRange):
            await store.commit_offset("d", Target("s", "a"), 6, None)

    async def check(store: Store) -> None:
        assert await store.get_offset("c", Target("s", "a")) == 2
        assert await store.get_offset("c", Target("s")) == 1
        assert await store.get_offset("d", Target("s", "a")) == 1
        lags, _ = await store.consumer_lags(10)
        assert lags == [
            ("c", Target("s"), 4),
            ("c", Target("s", "a"), 3),
            ("d", Target("s", "a"), 4),
        ]

    now_and_after_restart(backend, change, check)


def test_offsets_are_removed_with_their_segment_or_space(backend: Harness) -> None:
    async def change(store: Store) -> None:
        for space in ("s", "s/x", "sx"):
            await store.produce(txn(space, ("a", 2), ("ab", 1)))
            for consumer in ("c", "d"):
                for target in (Target(space), Target(space, "a"), Target(space, "ab")):
                    await store.commit_offset(consumer, target, 1, None)
        # Prefix-safe both ways: "s" is a prefix of the other spaces, "a" of "ab".
        await store.delete_segment("sx", "a", None)
        await store.delete_space("s")

    async def check(store: Store) -> None:
        for consumer in ("c", "d"):
            assert await store.get_offset(consumer, Target("sx", "a")) is None
            assert await store.get_offset(consumer, Target("sx", "ab")) == 1
            assert await store.get_offset(consumer, Target("sx")) == 1
            for target in (Target("s"), Target("s", "a"), Target("s", "ab")):
                assert await store.get_offset(consumer, target) is None
            for target in (Target("s/x"), Target("s/x", "a"), Target("s/x", "ab")):
                assert await store.get_offset(consumer, target) == 1
        lags, more = await store.consumer_lags(100)
        assert not more
        kept = [Target("s/x"), Target("s/x", "a"), Target("s/x", "ab"), Target("sx")]
        kept.append(Target("sx", "ab"))
        assert {(c, t) for c, t, _ in lags} == {(c, t) for c in ("c", "d") for t in kept}

    now_and_after_restart(backend, change, check)


# -- configure_space ---------------------------------------------------------------------


def test_configure_space_is_found_with_no_records_and_replaced_whole(backend: Harness) -> None:
    first = SpaceConfig(RetentionPolicy(max_age_ns=5 * SECOND, max_bytes=1000))
    second = SpaceConfig(RetentionPolicy(max_records_per_segment=3))

    async def change(store: Store) -> None:
        assert await store.get_space("c") is None
        await store.configure_space("c", first)
        assert space_numbers(await store.get_space("c")) == (0, 1, 0, 0, first)
        await store.configure_space("c", second)
        await store.configure_space("d", SpaceConfig())
        await store.produce(txn("e", ("a", 1)))
        await store.configure_space("e", first)

    async def check(store: Store) -> None:
        info = await store.get_space("c")
        assert space_numbers(info) == (0, 1, 0, 0, second)
        assert info is not None and info.last_timestamp_ns == 0
        assert space_numbers(await store.get_space("d")) == (0, 1, 0, 0, SpaceConfig())
        e = await store.get_space("e")
        assert e is not None and e.config == first and e.last_position == 1
        listed = await store.list_spaces(None, 10)
        assert [(i.name, i.config) for i in listed] == [
            ("c", second),
            ("d", SpaceConfig()),
            ("e", first),
        ]
        assert await store.list_segments("c", None, 10) == []

    async def write(store: Store) -> None:
        # Its first write is numbered 1, and the config stays.
        result = await store.produce(txn("c", ("a", 1)))
        assert result.first_position == 1
        info = await store.get_space("c")
        assert space_numbers(info) == (1, 1, 1, size(await read(store, Target("c"))), second)
        assert info == (await store.list_spaces(None, 1))[0]

    now_and_after_restart(backend, change, check, write)


def test_configure_space_is_removed_by_delete_space(backend: Harness) -> None:
    async def change(store: Store) -> None:
        await store.configure_space("c", SpaceConfig(RetentionPolicy(max_bytes=10)))
        assert await store.delete_space("c") == Removed()

    async def check(store: Store) -> None:
        assert await store.get_space("c") is None
        assert await store.list_spaces(None, 10) == []
        with pytest.raises(NotFound):
            await store.trim(Target("c"), 1)

    now_and_after_restart(backend, change, check)


# -- 14. catalog changes are watched ------------------------------------------------------


def test_watched_appends_are_reported_coalesced(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("z", 1)))
        async with store.watch("s") as watch:
            await no_change(watch)  # what changed before the watch began is not reported
            await store.produce(txn("s", ("a", 1), ("b", 2)))
            await store.produce(txn("s", ("a", 1)))
            # Other spaces, prefix-sharing ones too, are not this watch's business.
            for space in ("s/x", "sx", "t"):
                await store.produce(txn(space, ("c", 1)))
            assert await next_change(watch) == {"a", "b"}
            await no_change(watch)
            await store.produce(txn("s", ("b", 1)))
            assert await next_change(watch) == {"b"}

    backend.run(scenario)


def test_watched_a_waiting_watch_is_woken(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        async with store.watch("new") as watch:
            waiting = asyncio.ensure_future(watch.changes())
            await asyncio.sleep(0)
            assert not waiting.done()
            await store.produce(txn("other", ("a", 1)))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            await store.produce(txn("new", ("a", 1)))
            assert await asyncio.wait_for(waiting, 10) == {"a"}

    backend.run(scenario)


def test_watched_trims_and_deletes_are_reported(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("a", 2), ("b", 2), ("c", 1)))
        await store.produce(txn("t", ("a", 1)))
        async with store.watch("s") as watch:
            await store.trim(Target("s", "a"), 2)
            assert await next_change(watch) == {"a"}
            # A trim that changes nothing is not a change.
            await store.trim(Target("s", "a"), 1)
            await store.trim(Target("t"), 2)
            await store.delete_segment("s", "zz", None)
            await no_change(watch)
            await store.trim(Target("s"), 4)  # removes a:2 and b:1
            names = await next_change(watch)
            assert names is None or {"a", "b"} <= names
            await store.delete_segment("s", "b", None)
            assert await next_change(watch) == {"b"}
            await store.delete_space("s")
            names = await next_change(watch)
            assert names is None or {"a", "c"} <= names

    backend.run(scenario)


def test_watched_changes_are_reported_only_once_durable(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        async with store.watch("s") as watch:
            gate = backend.held(store)
            waiting = asyncio.ensure_future(watch.changes())
            produce = asyncio.ensure_future(store.produce(txn("s", ("a", 1))))
            await gate.wait_reached()
            await asyncio.sleep(0.05)
            assert not waiting.done()
            gate.open()
            assert await asyncio.wait_for(waiting, 10) == {"a"}
            await produce

    backend.run(scenario)


def test_watched_overflow_is_reported_as_none(backend: Harness) -> None:
    names = [f"seg{n:05}" for n in range(20_000)]
    per_txn = backend.max_records

    async def scenario(store: Store) -> None:
        async with store.watch("s") as watch:
            for start in range(0, len(names), per_txn):
                await store.produce(
                    txn("s", *((name, 1) for name in names[start : start + per_txn]))
                )
            assert await next_change(watch) is None
            # After an overflow the watch goes on as before.
            await store.produce(txn("s", ("seg00001", 1)))
            assert await next_change(watch) == {"seg00001"}

    backend.run(scenario)


def test_watched_ends_with_unavailable_at_shutdown(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        async with store.watch("s") as watch:
            waiting = asyncio.ensure_future(watch.changes())
            await asyncio.sleep(0)
            await store.end_subscriptions()
            with pytest.raises(Unavailable):
                await asyncio.wait_for(waiting, 10)

    backend.run(scenario)


# -- retention ---------------------------------------------------------------------------


def test_retention_max_age_by_the_backends_clock(backend: Harness) -> None:
    t0 = backend.clock.now
    policy = RetentionPolicy(max_age_ns=18 * SECOND)

    async def change(store: Store) -> None:
        for space in ("s", "kept", "unlimited", "none"):
            backend.clock.now = t0
            await store.produce(txn(space, ("a", 2)))  # ages 25 s at the pass
            backend.clock.now = t0 + 10 * SECOND
            await store.produce(txn(space, ("a", 1), ("b", 1)))  # 15 s
            backend.clock.now = t0 + 20 * SECOND
            await store.produce(txn(space, ("b", 1)))  # 5 s
        await store.configure_space("kept", SpaceConfig(RetentionPolicy(max_age_ns=30 * SECOND)))
        await store.configure_space("unlimited", SpaceConfig(RetentionPolicy()))
        await store.configure_space("none", SpaceConfig(retention=None))
        old = (await read(store, Target("s")))[:2]
        backend.clock.now = t0 + 25 * SECOND
        async with store.watch("s") as watch:
            removed = await store.enforce_retention(policy)
            assert removed == Removed(4, 2 * size(old))
            names = await next_change(watch)
            assert names is None or names >= {"a"}
        assert await store.enforce_retention(policy) == Removed()

    async def check(store: Store) -> None:
        for space in ("s", "none"):
            assert await retained(store, Target(space)) == [3, 4, 5]
            assert await retained(store, Target(space, "a")) == [3]
            assert await store.first_offset(Target(space, "a")) == 3
            assert await store.first_offset(Target(space, "b")) == 1
        for space in ("kept", "unlimited"):
            assert await retained(store, Target(space)) == [1, 2, 3, 4, 5]

    now_and_after_restart(backend, change, check)


def test_retention_max_records_per_segment(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("a", 3), ("b", 2)))  # a 1-3, b 4-5
        await store.produce(txn("s", ("a", 2), ("c", 1)))  # a 6-7, c 8
        await store.produce(txn("t", ("a", 4)))
        await store.configure_space("t", SpaceConfig(RetentionPolicy(max_records_per_segment=3)))
        space = await read(store, Target("s"))
        t = await read(store, Target("t"))
        removed = await store.enforce_retention(RetentionPolicy(max_records_per_segment=2))
        assert removed == Removed(4, size(space[:3]) + size(t[:1]))
        assert await retained(store, Target("s", "a")) == [4, 5]
        assert await retained(store, Target("s", "b")) == [1, 2]
        assert await retained(store, Target("s")) == [4, 5, 6, 7, 8]
        assert await retained(store, Target("t", "a")) == [2, 3, 4]
        info = await store.get_segment("s", "a")
        assert segment_numbers(info) == (5, 4, 2, size(space[5:7]), False)

    backend.run(scenario)


@pytest.mark.parametrize("max_bytes", [1, 30, 75, 10_000])
def test_retention_max_bytes_removes_the_fewest_oldest_records(
    backend: Harness, max_bytes: int
) -> None:
    async def scenario(store: Store) -> None:
        for n in range(8):
            await store.produce(txn("s", ("ab"[n % 2], 1), tag=b"x" * (n * 3)))
        records = await read(store, Target("s"))
        # The fewest records from the oldest position on that leave at most max_bytes.
        cut = next(i for i in range(len(records) + 1) if size(records[i:]) <= max_bytes)
        removed = await store.enforce_retention(RetentionPolicy(max_bytes=max_bytes))
        assert removed == Removed(cut, size(records[:cut]))
        info = await store.get_space("s")
        assert info is not None and info.bytes == size(records[cut:]) <= max_bytes
        assert await retained(store, Target("s")) == list(range(cut + 1, 9))
        assert await store.enforce_retention(RetentionPolicy(max_bytes=max_bytes)) == Removed()

    backend.run(scenario)


def test_retention_a_space_config_overrides_the_defaults_whole(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        t0 = backend.clock.now
        for space in ("default", "own"):
            await store.produce(txn(space, ("a", 4)))
        await store.configure_space("own", SpaceConfig(RetentionPolicy(max_bytes=10**6)))
        backend.clock.now = t0 + 100 * SECOND
        defaults = RetentionPolicy(max_age_ns=SECOND, max_records_per_segment=1, max_bytes=1)
        removed = await store.enforce_retention(defaults)
        assert removed.records == 4
        assert await retained(store, Target("default")) == []
        assert await retained(store, Target("own")) == [1, 2, 3, 4]
        # No limit at all: nothing is removed anywhere.
        await store.produce(txn("default", ("a", 1)))
        assert await store.enforce_retention(RetentionPolicy()) == Removed()

    backend.run(scenario)


def test_retention_kinds_combine(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        t0 = backend.clock.now
        await store.produce(txn("s", ("a", 3), ("b", 1)))  # positions 1-4, old
        backend.clock.now = t0 + 100 * SECOND
        await store.produce(txn("s", ("a", 3), ("b", 1), tag=b"0123456789"))  # 5-8, new
        records = await read(store, Target("s"))
        policy = RetentionPolicy(
            max_age_ns=50 * SECOND, max_records_per_segment=2, max_bytes=size(records[6:])
        )
        await store.configure_space("s", SpaceConfig(policy))
        removed = await store.enforce_retention(RetentionPolicy())
        # Age removes 1-4, the count a's 5, the bytes 6 (a:5 6, b:2 8 keep the space at 7-8).
        assert removed == Removed(6, size(records[:6]))
        assert await retained(store, Target("s")) == [7, 8]

    backend.run(scenario)


# -- follow after removals ----------------------------------------------------------------


def test_follow_reads_after_a_trim_honour_it(backend: Harness) -> None:
    """Followed targets may be served from the live tail's memory: a removal
    must drop what it holds of them."""

    async def scenario(store: Store) -> None:
        targets = [Target("s"), Target("s", "a"), Target("s", "b")]
        async with (
            store.follow(targets[0]) as space,
            store.follow(targets[1]) as a,
            store.follow(targets[2]),
        ):
            await store.produce(txn("s", ("a", 3), ("b", 2)))
            await asyncio.wait_for(space.wait(5), 10)
            for target in targets:
                assert len(await read(store, target)) in (5, 3, 2)
            await store.trim(Target("s", "a"), 3)
            assert await retained(store, targets[0]) == [3, 4, 5]
            assert await retained(store, targets[1]) == [3]
            await store.trim(Target("s"), 5)
            assert await retained(store, targets[0]) == [5]
            assert await retained(store, targets[1]) == []
            assert await retained(store, targets[2]) == [2]
            await store.delete_segment("s", "b", None)
            assert await retained(store, targets[0]) == []
            assert await retained(store, targets[2]) == []
            # A follower waits for what comes next, and gets it.
            await asyncio.wait_for(a.wait(3), 10)
            waiting = asyncio.ensure_future(a.wait(4))
            await asyncio.sleep(0)
            assert not waiting.done()
            await store.produce(txn("s", ("a", 1), ("b", 1)))
            await asyncio.wait_for(waiting, 10)
            assert await retained(store, targets[1]) == [4]
            assert await retained(store, targets[0]) == [6, 7]
            assert await retained(store, targets[2]) == [3]
            await store.delete_space("s")
            for target in targets:
                assert await retained(store, target) == []

    backend.run(scenario)


def test_follow_reads_after_retention_honour_it(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        async with store.follow(Target("s")) as space:
            await store.produce(txn("s", ("a", 4)))
            await asyncio.wait_for(space.wait(4), 10)
            assert await retained(store, Target("s")) == [1, 2, 3, 4]
            await store.enforce_retention(RetentionPolicy(max_records_per_segment=1))
            assert await retained(store, Target("s")) == [4]

    backend.run(scenario)


# -- closing --------------------------------------------------------------------------------


def test_closing_refuses_the_lifecycle_operations(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("a", 1)))
        await store.close()
        target = Target("s", "a")
        calls = [
            store.first_offset(target),
            store.trim(target, 1),
            store.delete_segment("s", "a", None),
            store.delete_space("s"),
            store.configure_space("s", SpaceConfig()),
            store.get_space("s"),
            store.get_segment("s", "a"),
            store.enforce_retention(RetentionPolicy(max_records_per_segment=1)),
        ]
        for call in calls:
            with pytest.raises(Unavailable):
                await call

    backend.run(scenario)
