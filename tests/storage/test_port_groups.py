"""The port conformance suite for consumer groups: rule 15 of
streams/storage/port.py (create_group, get_group, list_groups, delete_group,
settle_group) on every backend that keeps groups, again after a restart for
a durable one; the JetStream backend refuses every group method
(Unimplemented), checked on its harness. Then the RocksDB engine's own side:
a settle with a park surviving kill -9, and stale settled-position keys
collected without piling up range tombstones."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.errors import (
    DataLoss,
    InvariantViolation,
    NotFound,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)
from streams.model import (
    Cut,
    GroupConfig,
    GroupProgress,
    GroupStart,
    Ordering,
    SegmentAppend,
    Target,
    Transaction,
)
from streams.storage.port import Store
from streams.storage.rocksdb import layout as keys
from streams.storage.rocksdb.groups import pack_settled, unpack_settled
from streams.storage.rocksdb.store import RocksStore, StoreOptions

from .conftest import HARNESSES, Harness, body, txn
from .test_port_lifecycle import now_and_after_restart
from .test_port_rules import payloads

SECOND = 1_000_000_000
ALL = Cut(10_000, 64 << 20)
PARKED = "$parked"
FIRST = GroupStart()
# Backends that keep groups, and those that refuse them (rule 15's last sentence).
KEEPS = frozenset({"memory", "rocksdb", "remote"})
REFUSES = frozenset({"jetstream"})


@pytest.fixture(params=sorted(KEEPS))
def groups_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    assert set(HARNESSES) == KEEPS | REFUSES, "say for every backend whether it keeps groups"
    assert not KEEPS & REFUSES
    yield HARNESSES[request.param](tmp_path, request)


def config(
    name: str = "g",
    space: str = "orders",
    ordering: Ordering = Ordering.PER_SEGMENT,
    start: GroupStart = FIRST,
    max_attempts: int = 5,
) -> GroupConfig:
    return GroupConfig(
        space, name, ordering, start, 30 * SECOND, max_attempts, PARKED, f"{space}/{name}"
    )


def park(group: GroupConfig, *payloads_: bytes) -> Transaction:
    """A park as the dispatcher writes it: one append to the dead-letter segment."""
    bodies = tuple(body(p) for p in payloads_)
    append = SegmentAppend(group.dead_letter_segment, bodies, None)
    return Transaction(group.dead_letter_space, (append,), "", b"")


async def parked_payloads(store: Store, group: GroupConfig) -> list[bytes]:
    target = Target(group.dead_letter_space, group.dead_letter_segment)
    batch, _ = await store.read(target, 1, 2**64 - 1, ALL)
    return payloads(list(batch.records()))


async def progress(store: Store, space: str = "orders", name: str = "g") -> GroupProgress | None:
    state = await store.get_group(space, name)
    return None if state is None else state.progress


# -- JetStream: refused ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REFUSES))
def test_groups_refused_by_a_backend_that_cannot_keep_them(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    backend = HARNESSES[name](tmp_path, request)

    async def scenario(store: Store) -> None:
        group = config()
        calls = [
            store.create_group(group, 0, 10),
            store.get_group("orders", "g"),
            store.list_groups("orders", None, 10),
            store.delete_group("orders", "g"),
            store.settle_group("orders", "g", 1, (), park(group, b"x")),
        ]
        for call in calls:
            with pytest.raises(Unimplemented, match="not supported on the jetstream backend"):
                await call
        assert await store.last_offset(Target(PARKED)) == 0, "a refused settle parks nothing"

    backend.run(scenario)


def test_groups_closing_refuses_every_group_method(backend: Harness) -> None:
    """Rule 10 for the group methods, on every backend (JetStream too: closed
    comes before unsupported)."""

    async def scenario(store: Store) -> None:
        group = config()
        if backend.name in KEEPS:
            await store.create_group(group, 0, 10)
        await store.close()
        calls = [
            store.create_group(config("h"), 0, 10),
            store.get_group("orders", "g"),
            store.list_groups("orders", None, 10),
            store.delete_group("orders", "g"),
            store.settle_group("orders", "g", 1, (), park(group, b"x")),
        ]
        for call in calls:
            with pytest.raises(Unavailable):
                await call

    backend.run(scenario)


# -- create, compare, get, list, delete ---------------------------------------------


def test_groups_create_once_then_return_the_stored_config(groups_backend: Harness) -> None:
    group = config(start=GroupStart("offset", 7))

    async def change(store: Store) -> None:
        assert await store.get_group("orders", "g") is None
        assert await store.create_group(group, 6, 10) == (group, True)

    async def check(store: Store) -> None:
        state = await store.get_group("orders", "g")
        assert state is not None
        assert state.config == group
        assert state.progress == GroupProgress(6)
        # Again, with the same or other settings: the stored config, nothing changed.
        assert await store.create_group(group, 6, 10) == (group, False)
        other = config(ordering=Ordering.NONE, max_attempts=9)
        assert await store.create_group(other, 99, 10) == (group, False)
        assert await progress(store) == GroupProgress(6)

    now_and_after_restart(groups_backend, change, check)


def test_groups_list_by_utf8_bytes_in_pages_and_prefix_safe(groups_backend: Harness) -> None:
    names = ["b", "a", "ab", "é", "z", "日本", "a\U0001f600", "Z"]

    async def change(store: Store) -> None:
        for name in names:
            await store.create_group(config(name), 0, 100)
        # Other spaces' groups, one whose name has the space's as a prefix.
        await store.create_group(config("a", space="orders/x"), 0, 100)
        await store.create_group(config("zz", space="order"), 0, 100)

    async def check(store: Store) -> None:
        ordered = sorted(names, key=lambda n: n.encode("utf-8"))
        listed = [g.name for g in await store.list_groups("orders", None, 100)]
        assert listed == ordered
        paged: list[str] = []
        after = None
        while True:
            page = await store.list_groups("orders", after, 3)
            assert len(page) <= 3
            if not page:
                break
            assert all(g.space == "orders" for g in page)
            paged += [g.name for g in page]
            after = page[-1].name
        assert paged == ordered
        assert await store.list_groups("orders", "ab", 2) == [config("a\U0001f600"), config("b")]
        assert [g.name for g in await store.list_groups("orders/x", None, 10)] == ["a"]
        assert [g.name for g in await store.list_groups("order", None, 10)] == ["zz"]
        assert await store.list_groups("nothing", None, 10) == []
        assert await store.get_group("orders", "zz") is None

    now_and_after_restart(groups_backend, change, check)


def test_groups_delete_removes_the_group_and_its_progress(groups_backend: Harness) -> None:
    group = config()

    async def change(store: Store) -> None:
        await store.create_group(group, 0, 10)
        await store.create_group(config("h"), 0, 10)
        await store.settle_group("orders", "g", 2, (5, 6, 9), None)
        assert await store.delete_group("orders", "g") is True

    async def check(store: Store) -> None:
        assert await store.get_group("orders", "g") is None
        assert [g.name for g in await store.list_groups("orders", None, 10)] == ["h"]
        assert await store.delete_group("orders", "g") is False
        assert await store.delete_group("orders", "never") is False
        assert await progress(store, name="h") == GroupProgress(0)

    async def again(store: Store) -> None:
        # Created again, it starts afresh: nothing of the deleted one's progress.
        assert await store.create_group(config(max_attempts=2), 4, 10) == (
            config(max_attempts=2),
            True,
        )
        assert await progress(store) == GroupProgress(4)
        await store.settle_group("orders", "g", 4, (8,), None)

    async def fresh(store: Store) -> None:
        assert await progress(store) == GroupProgress(4, ((8, 8),))

    now_and_after_restart(groups_backend, change, check, again, fresh)


# -- settle -------------------------------------------------------------------------


def test_groups_settle_progress_is_sorted_merged_and_above_acked_through(
    groups_backend: Harness,
) -> None:
    async def change(store: Store) -> None:
        await store.create_group(config(), 0, 10)
        # Given in any order, repeated, some at or below acked_through.
        await store.settle_group("orders", "g", 3, (12, 2, 10, 3, 11, 7, 12, 20), None)

    async def check(store: Store) -> None:
        assert await progress(store) == GroupProgress(3, ((7, 7), (10, 12), (20, 20)))

    async def more(store: Store) -> None:
        # acked_through moves past some settled ones; 8 joins 7 and a range.
        await store.settle_group("orders", "g", 5, (8, 9, 4), None)
        assert await progress(store) == GroupProgress(5, ((7, 12), (20, 20)))
        # A range starting right after acked_through extends it.
        await store.settle_group("orders", "g", 5, (6,), None)
        assert await progress(store) == GroupProgress(12, ((20, 20),))
        # The same acked_through again is not going back.
        await store.settle_group("orders", "g", 5, (), None)
        await store.settle_group("orders", "g", 15, (), None)

    async def after(store: Store) -> None:
        assert await progress(store) == GroupProgress(15, ((20, 20),))
        await store.settle_group("orders", "g", 25, (), None)
        assert await progress(store) == GroupProgress(25)

    now_and_after_restart(groups_backend, change, check, more, after)


def test_groups_settle_parks_in_the_same_write(groups_backend: Harness) -> None:
    group = config()

    async def change(store: Store) -> None:
        await store.create_group(group, 0, 10)
        target = Target(PARKED, group.dead_letter_segment)
        async with store.follow(target) as sub:
            result = await store.settle_group("orders", "g", 1, (3,), park(group, b"p1", b"p2"))
            # Published to followers like any produce.
            await asyncio.wait_for(sub.wait(2), 10)
        assert result is not None
        assert (result.first_position, result.last_position) == (1, 2)
        assert [(a.segment, a.first_sequence, a.last_sequence) for a in result.acks] == [
            ("orders/g", 1, 2)
        ]
        await store.settle_group("orders", "g", 3, (), park(group, b"p3"))

    async def check(store: Store) -> None:
        assert await progress(store) == GroupProgress(3, (), parked=3)
        assert await parked_payloads(store, group) == [b"p1", b"p2", b"p3"]
        space = await store.get_space(PARKED)
        assert space is not None and space.record_count == 3 and space.last_position == 3
        segment = await store.get_segment(PARKED, "orders/g")
        assert segment is not None and segment.last_sequence == 3

    now_and_after_restart(groups_backend, change, check)


def test_groups_settle_of_a_missing_group_writes_nothing(groups_backend: Harness) -> None:
    group = config()

    async def change(store: Store) -> None:
        with pytest.raises(NotFound, match="'g' of space 'orders' does not exist"):
            await store.settle_group("orders", "g", 1, (3,), park(group, b"never"))
        await store.create_group(group, 0, 10)
        await store.delete_group("orders", "g")
        with pytest.raises(NotFound):
            await store.settle_group("orders", "g", 1, (3,), park(group, b"never"))

    async def check(store: Store) -> None:
        assert await store.get_group("orders", "g") is None
        assert await store.last_offset(Target(PARKED)) == 0
        assert await store.get_space(PARKED) is None

    now_and_after_restart(groups_backend, change, check)


def test_groups_acked_through_never_goes_back(groups_backend: Harness) -> None:
    group = config()

    async def change(store: Store) -> None:
        await store.create_group(group, 4, 10)
        with pytest.raises(InvariantViolation, match="from 4 to 3"):
            await store.settle_group("orders", "g", 3, (9,), park(group, b"never"))
        await store.settle_group("orders", "g", 10, (12,), None)

    async def check(store: Store) -> None:
        with pytest.raises(InvariantViolation, match="from 10 to 9"):
            await store.settle_group("orders", "g", 9, (11,), park(group, b"never"))
        assert await progress(store) == GroupProgress(10, ((12, 12),))
        assert await store.last_offset(Target(PARKED)) == 0

    now_and_after_restart(groups_backend, change, check)


def test_groups_at_most_max_groups_per_space(groups_backend: Harness) -> None:
    async def change(store: Store) -> None:
        # Concurrent creates: the count and the write are one step.
        outcomes = await asyncio.gather(
            *(store.create_group(config(f"g{i}"), 0, 3) for i in range(8)),
            return_exceptions=True,
        )
        created = [o for o in outcomes if isinstance(o, tuple)]
        refused = [o for o in outcomes if isinstance(o, ResourceExhausted)]
        assert len(created) == 3 and len(refused) == 5, outcomes
        assert "already has 3 groups" in str(refused[0])
        assert all(made for _, made in created)
        # Other spaces have their own count.
        assert (await store.create_group(config("g", space="other"), 0, 3))[1] is True

    async def check(store: Store) -> None:
        listed = await store.list_groups("orders", None, 10)
        assert len(listed) == 3
        # An existing group is returned at the limit.
        assert await store.create_group(listed[0], 0, 3) == (listed[0], False)
        with pytest.raises(ResourceExhausted):
            await store.create_group(config("more"), 0, 3)
        assert [g.name for g in await store.list_groups("other", None, 10)] == ["g"]

    async def room(store: Store) -> None:
        first = (await store.list_groups("orders", None, 1))[0]
        assert await store.delete_group("orders", first.name)
        assert await store.create_group(config("more"), 0, 3) == (config("more"), True)
        with pytest.raises(ResourceExhausted):
            await store.create_group(config("again"), 0, 3)

    now_and_after_restart(groups_backend, change, check, room)


def test_groups_delete_space_removes_its_groups(groups_backend: Harness) -> None:
    group = config()
    other = config(space="orders2")  # a space whose name starts with the deleted one's

    async def change(store: Store) -> None:
        await store.produce(txn("orders", ("a", 3)))
        await store.create_group(group, 0, 10)
        await store.create_group(config("h"), 0, 10)
        await store.settle_group("orders", "g", 1, (3,), park(group, b"p"))
        await store.create_group(other, 0, 10)
        await store.create_group(config(space="only-groups"), 0, 10)  # no record, no config
        await store.delete_space("orders")
        await store.delete_space("only-groups")
        await store.delete_space(PARKED)  # the dead-letter space: not a group's own space

    async def check(store: Store) -> None:
        assert await store.get_space("orders") is None
        assert await store.get_group("orders", "g") is None
        assert await store.get_group("orders", "h") is None
        assert await store.list_groups("orders", None, 10) == []
        assert await store.list_groups("only-groups", None, 10) == []
        assert await store.list_groups("orders2", None, 10) == [other]
        with pytest.raises(NotFound):
            await store.settle_group("orders", "g", 2, (), None)

    async def again(store: Store) -> None:
        # Created again: a new group, none of the old progress (its settled 3 included).
        assert await store.create_group(group, 2, 10) == (group, True)
        assert await progress(store) == GroupProgress(2, (), parked=0)
        # Deleting the space again (already deleted, only a group left) removes it too.
        await store.delete_space("orders")
        assert await store.get_group("orders", "g") is None

    now_and_after_restart(groups_backend, change, check, again)


# -- the RocksDB engine ---------------------------------------------------------------


def test_groups_rocksdb_settle_waits_for_durability(tmp_path: Path) -> None:
    backend = HARNESSES["rocksdb"](tmp_path, None)  # type: ignore[arg-type]
    group = config()

    async def scenario(store: Store) -> None:
        await store.create_group(group, 0, 10)
        gate = backend.held(store)
        settle = asyncio.ensure_future(
            store.settle_group("orders", "g", 2, (4,), park(group, b"p"))
        )
        await gate.wait_reached()
        # Written, not durable: the settle waits, and readers see no part of it.
        assert not settle.done()
        assert await store.last_offset(Target(PARKED)) == 0
        reading = asyncio.ensure_future(store.get_group("orders", "g"))
        await asyncio.sleep(0.05)
        assert not reading.done(), "get_group must not show a settle before it is durable"
        gate.open()
        assert (await settle) is not None
        state = await reading
        assert state is not None and state.progress == GroupProgress(2, ((4, 4),), parked=1)
        assert await store.last_offset(Target(PARKED)) == 1

    backend.run(scenario)


_CRASH = """
import asyncio, sys
from pathlib import Path
from streams.model import GroupConfig, GroupStart, Ordering, SegmentAppend, Transaction
from streams.storage.rocksdb.store import RocksStore

async def main():
    store = RocksStore.open(Path(sys.argv[1]))
    group = GroupConfig("orders", "g", Ordering.PER_SEGMENT, GroupStart(), 30_000_000_000, 5,
                        "$parked", "orders/g")
    await store.create_group(group, 0, 10)
    for i in range(1, 51):
        park = Transaction("$parked", (SegmentAppend("orders/g", (b"x",), None),), "", b"")
        await store.settle_group("orders", "g", 2 * i, (2 * i + 2,), park)
        print(i, flush=True)  # acknowledged: durable
    await asyncio.Event().wait()  # killed here, never closed

asyncio.run(main())
"""


def test_groups_rocksdb_settles_survive_kill_9(tmp_path: Path) -> None:
    """Every settle that returned is there after kill -9 (WAL recovery, no
    close), its park with it; nothing else."""
    data = tmp_path / "data"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_CRASH), str(data)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert child.stdout is not None
        lines = [child.stdout.readline() for _ in range(50)]
        assert lines[-1].strip() == "50", lines[-3:]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()

    async def check() -> None:
        store = RocksStore.open(data)
        try:
            assert await progress(store) == GroupProgress(100, ((102, 102),), parked=50)
            assert await store.last_offset(Target(PARKED, "orders/g")) == 50
        finally:
            await store.close()

    asyncio.run(check())


def _memtable_entries(store: RocksStore) -> int:
    found = store._db.property_int_value("rocksdb.num-entries-active-mem-table")
    assert found is not None
    return found


def _settled_keys(store: RocksStore, space: str, name: str) -> int:
    prefix = keys.settled_prefix(space, name)
    return sum(1 for _ in store._scan(prefix, "test"))


def test_groups_rocksdb_stale_keys_are_collected_without_piling_up_tombstones(
    tmp_path: Path,
) -> None:
    """2,000 settles, each moving acked_through on by 2 and settling one
    position above it: the keys at or below acked_through are deleted by a
    range tombstone once 100 were written (not one per settle), and none is
    left past the last collection."""
    options = StoreOptions(group_collect_seconds=3600, group_collect_keys=100)

    async def main() -> None:
        store = RocksStore.open(tmp_path / "data", options)
        try:
            await store.create_group(config(), 0, 10)
            before = store.stats.range_deletes, _memtable_entries(store)
            for i in range(1, 2001):
                await store.settle_group("orders", "g", 2 * i, (2 * i + 2,), None)
            tombstones = store.stats.range_deletes - before[0]
            assert 1 <= tombstones <= 2000 // 100, tombstones
            # What RocksDB holds: each settle put 2 keys (head, K key), deleted
            # none one by one; every other entry is a range tombstone.
            assert _memtable_entries(store) - before[1] - 2 * 2000 == tombstones
            # Stale keys live until the next collection only (at most 100 of them).
            assert _settled_keys(store, "orders", "g") <= 101
            assert await progress(store) == GroupProgress(4000, ((4002, 4002),))
        finally:
            await store.close()
        store = RocksStore.open(tmp_path / "data", options)
        try:
            assert await progress(store) == GroupProgress(4000, ((4002, 4002),))
        finally:
            await store.close()

    asyncio.run(main())


def test_groups_rocksdb_a_settle_collects_after_the_interval(tmp_path: Path) -> None:
    """With no key count reached, the interval alone collects (0 s: every
    settle that has stale keys), and a delete removes what is left."""
    options = StoreOptions(group_collect_seconds=0, group_collect_keys=10**9)

    async def main() -> None:
        store = RocksStore.open(tmp_path / "data", options)
        try:
            await store.create_group(config(), 0, 10)
            # One key per settle, by its highest position.
            await store.settle_group("orders", "g", 0, (1, 2, 3), None)
            await store.settle_group("orders", "g", 0, (7,), None)
            assert _settled_keys(store, "orders", "g") == 2
            await store.settle_group("orders", "g", 3, (), None)
            assert _settled_keys(store, "orders", "g") == 1
            assert await progress(store) == GroupProgress(3, ((7, 7),))
            await store.delete_group("orders", "g")
            assert _settled_keys(store, "orders", "g") == 0
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    "positions",
    [[5], [1, 2, 3], [3, 130, 131, 20_000, 2**40], list(range(10, 20_010, 2))],
    ids=["one", "dense", "far apart", "many"],
)
def test_groups_rocksdb_settled_positions_pack_into_one_value(positions: list[int]) -> None:
    value = pack_settled(positions)
    assert sorted(unpack_settled(positions[-1], value)) == positions
    if max((b - a for a, b in itertools.pairwise(positions)), default=0) < 0x80:
        assert len(value) == len(positions) - 1  # a byte per position but the key's


@pytest.mark.parametrize(
    ("highest", "value"),
    [(5, b"\x00"), (5, b"\x05"), (5, b"\x80"), (300, b"\xff" * 11)],
    ids=["zero gap", "below 1", "cut short", "too long"],
)
def test_groups_rocksdb_damaged_settled_values_are_refused(highest: int, value: bytes) -> None:
    with pytest.raises(ValueError):
        unpack_settled(highest, value)


def test_groups_rocksdb_one_key_per_settle_read_back_and_merged(tmp_path: Path) -> None:
    """A settle writes one K key (by its highest position); a settle of the
    same highest position again adds to that key; a key with an empty value
    (one position, as first written) is that position; a damaged value is
    DataLoss naming the group."""

    async def main() -> None:
        store = RocksStore.open(tmp_path / "data")
        try:
            await store.create_group(config(), 0, 10)
            await store.settle_group("orders", "g", 0, (9, 3, 5, 300), None)
            assert _settled_keys(store, "orders", "g") == 1
            await store.settle_group("orders", "g", 0, (7, 300), None)
            assert _settled_keys(store, "orders", "g") == 1
            prefix = keys.settled_prefix("orders", "g")
            store._db.put(prefix + keys.u64(400), b"")
            want = GroupProgress(0, ((3, 3), (5, 5), (7, 7), (9, 9), (300, 300), (400, 400)))
            assert await progress(store) == want
            store._db.put(prefix + keys.u64(500), b"\x80")
            with pytest.raises(DataLoss) as damaged:
                await progress(store)
            assert "group 'g' of space 'orders'" in str(damaged.value)
            store._db.delete(prefix + keys.u64(500))
        finally:
            await store.close()
        store = RocksStore.open(tmp_path / "data")
        try:
            assert await progress(store) == want
        finally:
            await store.close()

    asyncio.run(main())
