"""The port conformance suite: each rule of streams/storage/port.py, each error,
concurrency, follow wake-ups and limits, for every backend (``backend``
fixture). A test's name starts with the rule it checks."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from streams.errors import (
    AlreadyExists,
    OffsetMismatch,
    OutOfRange,
    SequenceMismatch,
    Unavailable,
)
from streams.model import (
    Cut,
    Record,
    SegmentAppend,
    Target,
    Transaction,
)
from streams.storage.port import RecordBatch, Store
from streams.v1 import streams_pb2 as pb

from .conftest import DAY_NS, Harness, body, txn

MIB = 1 << 20
ALL = Cut(10_000, 64 * MIB)


async def read_all(store: Store, target: Target, first: int = 1) -> list[Record]:
    batch, after = await store.read(target, first, 2**64 - 1, ALL)
    assert after == first + batch.count or batch.count == 0
    return list(batch.records())


def wire_records(batch: RecordBatch) -> list[pb.Record]:
    return list(pb.ConsumeResponse.FromString(batch.to_wire()).records)


def payloads(records: list[Record]) -> list[bytes]:
    return [pb.RecordInput.FromString(r.body).payload for r in records]


# -- 1. all or nothing ---------------------------------------------------------------


def test_all_or_nothing_a_mismatch_on_any_write_writes_nothing(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("a", 2)))
        with pytest.raises(SequenceMismatch) as caught:
            await store.produce(txn("s", ("a", 1, 2), ("b", 3), ("c", 1, 5)))
        assert (caught.value.segment, caught.value.actual) == ("c", 0)
        assert "'c'" in caught.value.message and "0" in caught.value.message
        assert await store.last_offset(Target("s")) == 2
        assert await store.last_offset(Target("s", "a")) == 2
        assert await store.last_offset(Target("s", "b")) == 0
        assert [info.name for info in await store.list_segments("s", None, 10)] == ["a"]
        assert len(await read_all(store, Target("s"))) == 2

    backend.run(scenario)


def test_all_or_nothing_a_transaction_is_numbered_in_write_then_record_order(
    backend: Harness,
) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("b", 1)))
        result = await store.produce(txn("s", ("a", 2), ("b", 3)))
        assert [(a.segment, a.first_sequence, a.last_sequence) for a in result.acks] == [
            ("a", 1, 2),
            ("b", 2, 4),
        ]
        assert (result.first_position, result.last_position) == (2, 6)
        records = await read_all(store, Target("s"), 2)
        assert [(r.segment, r.sequence, r.position) for r in records] == [
            ("a", 1, 2),
            ("a", 2, 3),
            ("b", 2, 4),
            ("b", 3, 5),
            ("b", 4, 6),
        ]
        assert payloads(records) == [b"a:0", b"a:1", b"b:0", b"b:1", b"b:2"]

    backend.run(scenario)


# -- 2. durable point ----------------------------------------------------------------


def test_durable_point_reads_never_see_what_is_not_durable(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("a", 1)))
        await store.commit_offset("c", Target("s", "a"), 1, None)
        gate = backend.held(store)
        produce = asyncio.ensure_future(store.produce(txn("s", ("a", 2), ("b", 1))))
        commit = asyncio.ensure_future(store.commit_offset("d", Target("s"), 1, None))
        await gate.wait_reached()
        segment, space = Target("s", "a"), Target("s")
        assert not produce.done()
        assert await store.last_offset(segment) == 1
        assert await store.last_offset(space) == 1
        assert len(await read_all(store, space)) == 1
        batch, _ = await store.read(Target("s", "b"), 1, 10, ALL)
        assert batch.count == 0
        peeked = await store.peek(space)
        assert peeked is not None and peeked.records()[0].position == 1
        assert await store.peek(Target("s", "b")) is None
        assert await store.first_at_or_after(space, 0) == 1
        assert [i.last_position for i in await store.list_spaces(None, 10)] == [1]
        assert [i.name for i in await store.list_segments("s", None, 10)] == ["a"]
        gate.open()
        await asyncio.gather(produce, commit)
        assert await store.last_offset(space) == 4
        assert await store.get_offset("d", space) == 1
        assert [i.name for i in await store.list_segments("s", None, 10)] == ["a", "b"]

    backend.run(scenario)


def test_durable_point_get_offset_waits_for_a_commit_in_flight(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("a", 3)))
        gate = backend.held(store)
        commit = asyncio.ensure_future(store.commit_offset("c", Target("s", "a"), 2, None))
        await gate.wait_reached()
        read = asyncio.ensure_future(store.get_offset("c", Target("s", "a")))
        await asyncio.sleep(0.05)  # a chance to answer early, which it must not take
        assert not read.done() and not commit.done()
        gate.open()
        assert await commit == 2
        assert await read == 2

    backend.run(scenario)


# -- 3. dense numbers ----------------------------------------------------------------


def test_dense_numbers_under_concurrent_producers(backend: Harness) -> None:
    producers, rounds = 20, 5

    async def producer(store: Store, n: int) -> list[tuple[str, int, int, int]]:
        acked = []
        for r in range(rounds):
            writes = [(f"seg{(n + i) % 3}", 1 + (n + r + i) % 3) for i in range(1 + n % 2)]
            result = await store.produce(txn("s", *writes, tag=f"/{n}/{r}".encode()))
            assert result.last_position - result.first_position + 1 == sum(c for _, c in writes)
            for ack in result.acks:
                acked.append((ack.segment, ack.first_sequence, ack.last_sequence, n))
        return acked

    async def scenario(store: Store) -> None:
        results = await asyncio.gather(*(producer(store, n) for n in range(producers)))
        by_segment: dict[str, list[int]] = defaultdict(list)
        for acks in results:
            for segment, first, last, _ in acks:
                by_segment[segment].extend(range(first, last + 1))
        for segment, sequences in by_segment.items():
            assert sorted(sequences) == list(range(1, len(sequences) + 1)), segment
            records = await read_all(store, Target("s", segment))
            assert [r.sequence for r in records] == sorted(sequences)
        space = await read_all(store, Target("s"))
        assert [r.position for r in space] == list(range(1, len(space) + 1))
        assert len(space) == sum(len(s) for s in by_segment.values())
        # Each record is where its ack put it: the segment read and the space read agree.
        for record in space:
            (same,) = [
                r
                for r in await read_all(store, Target("s", record.segment), record.sequence)
                if r.sequence == record.sequence
            ]
            assert same == record

    backend.run(scenario)


# -- 4. time -------------------------------------------------------------------------


def test_time_one_timestamp_per_transaction_never_decreasing(backend: Harness) -> None:
    clock = backend.clock

    async def scenario(store: Store) -> None:
        first = await store.produce(txn("s", ("a", 2), ("b", 1)))
        assert first.timestamp_ns == clock.now
        clock.now -= 10**9  # the clock steps back
        second = await store.produce(txn("s", ("c", 1)))
        assert second.timestamp_ns == first.timestamp_ns
        clock.now += 5 * 10**9
        third = await store.produce(txn("s", ("a", 1)))
        assert third.timestamp_ns == clock.now
        records = await read_all(store, Target("s"))
        assert [r.timestamp_ns for r in records] == [first.timestamp_ns] * 4 + [clock.now]
        # Another space has its own time line.
        clock.now -= 10 * 10**9
        other = await store.produce(txn("t", ("a", 1)))
        assert other.timestamp_ns == clock.now
        assert await store.first_at_or_after(Target("s"), 0) == 1
        assert await store.first_at_or_after(Target("s"), first.timestamp_ns) == 1
        assert await store.first_at_or_after(Target("s"), first.timestamp_ns + 1) == 5
        assert await store.first_at_or_after(Target("s", "a"), third.timestamp_ns) == 3
        assert await store.first_at_or_after(Target("s"), third.timestamp_ns + 1) == 6
        assert await store.first_at_or_after(Target("none"), 0) == 1
        infos = await store.list_segments("s", None, 10)
        assert [(i.name, i.last_timestamp_ns) for i in infos] == [
            ("a", third.timestamp_ns),
            ("b", first.timestamp_ns),
            ("c", first.timestamp_ns),
        ]

    backend.run(scenario)


# -- 5. duplicates -------------------------------------------------------------------


def test_duplicates_are_answered_with_the_original_result(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        original = await store.produce(txn("s", ("a", 2), txid="t"))
        await store.produce(txn("s", ("a", 1)))
        backend.clock.now += 10**9
        again = await store.produce(txn("s", ("a", 2), txid="t"))
        assert again.duplicate and not original.duplicate
        assert (again.acks, again.first_position, again.last_position, again.timestamp_ns) == (
            original.acks,
            original.first_position,
            original.last_position,
            original.timestamp_ns,
        )
        assert await store.last_offset(Target("s")) == 3
        # The same id in another space is another transaction.
        assert not (await store.produce(txn("u", ("a", 2), txid="t"))).duplicate

    backend.run(scenario)


def test_duplicates_with_other_content_are_already_exists(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("a", 1), txid="t"))
        with pytest.raises(AlreadyExists, match="'t'"):
            await store.produce(txn("s", ("a", 1), txid="t", tag=b"other"))
        assert await store.last_offset(Target("s")) == 1

    backend.run(scenario)


def test_duplicates_are_checked_before_expected_sequence(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        first = await store.produce(txn("s", ("a", 1, 0), txid="t"))
        # Its expected_sequence no longer holds, but it is a repeat: the original answer.
        again = await store.produce(txn("s", ("a", 1, 0), txid="t"))
        assert again.duplicate and again.acks == first.acks

    backend.run(scenario)


def test_duplicates_are_answered_only_once_the_original_is_durable(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        gate = backend.held(store)
        original = asyncio.ensure_future(store.produce(txn("s", ("a", 1), txid="t")))
        await gate.wait_reached()
        repeat = asyncio.ensure_future(store.produce(txn("s", ("a", 1), txid="t")))
        await asyncio.sleep(0.05)  # a chance to answer early, which it must not take
        assert not repeat.done()
        gate.open()
        first, again = await asyncio.gather(original, repeat)
        assert again.duplicate and again.acks == first.acks

    backend.run(scenario)


def test_duplicates_past_the_window_are_new_transactions(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("a", 1), txid="t"))
        backend.clock.now += 999
        assert (await store.produce(txn("s", ("a", 1), txid="t"))).duplicate
        backend.clock.now += 1
        reused = await store.produce(txn("s", ("a", 1), txid="t", tag=b"new"))
        assert not reused.duplicate and reused.first_position == 2
        # The background work that drops expired entries keeps the new one.
        for task in store.background():
            await task.step()
        assert (await store.produce(txn("s", ("a", 1), txid="t", tag=b"new"))).duplicate

    backend.run(scenario, dedupe_window_ns=1000)


# -- 6. compare-and-set --------------------------------------------------------------


def test_compare_and_set_expected_sequence(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        assert (await store.produce(txn("s", ("a", 1, 0)))).acks[0].last_sequence == 1
        with pytest.raises(SequenceMismatch) as caught:
            await store.produce(txn("s", ("a", 1, 0)))
        assert (caught.value.segment, caught.value.actual) == ("a", 1)
        assert "'a'" in caught.value.message and "last sequence 1" in caught.value.message
        result = await store.produce(txn("s", ("a", 2, 1), ("b", 1, 0)))
        assert [a.last_sequence for a in result.acks] == [3, 1]

    backend.run(scenario)


def test_compare_and_set_offsets(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        segment, space = Target("s", "a"), Target("s")
        await store.produce(txn("s", ("a", 3)))
        assert await store.get_offset("c", segment) is None
        with pytest.raises(OutOfRange, match="4"):
            await store.commit_offset("c", segment, 4, 7)  # the range is checked first
        with pytest.raises(OutOfRange):
            await store.commit_offset("c", Target("s", "b"), 1, None)
        assert await store.commit_offset("c", segment, 0, 0) == 0  # 0 matches "none"
        assert await store.get_offset("c", segment) == 0
        assert await store.commit_offset("c", segment, 3, 0) == 3  # and a stored 0
        with pytest.raises(OffsetMismatch) as caught:
            await store.commit_offset("c", segment, 1, 2)
        assert caught.value.actual == 3 and "(3)" in caught.value.message
        with pytest.raises(OffsetMismatch) as none:
            await store.commit_offset("c", space, 1, 1)
        assert none.value.actual is None and "(none)" in none.value.message
        assert await store.commit_offset("c", segment, 1, None) == 1  # a rewind
        assert await store.commit_offset("c", space, 3, None) == 3
        # Consumers, targets and levels are kept apart.
        assert await store.get_offset("c", segment) == 1
        assert await store.get_offset("c", space) == 3
        assert await store.get_offset("cd", segment) is None
        assert await store.get_offset("c", Target("s", "ab")) is None

    backend.run(scenario)


# -- 7. follow -----------------------------------------------------------------------


def test_follow_wakes_on_new_records_of_a_target_that_did_not_exist(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        async with (
            store.follow(Target("new", "a")) as segment,
            store.follow(Target("new")) as space,
        ):
            waits = [
                asyncio.ensure_future(segment.wait(2)),
                asyncio.ensure_future(space.wait(3)),
            ]
            await store.produce(txn("new", ("b", 1), ("a", 1)))
            await asyncio.sleep(0)
            assert not any(w.done() for w in waits)
            await store.produce(txn("new", ("a", 1)))
            await asyncio.wait_for(asyncio.gather(*waits), 10)
            # A durable offset is waited for no more.
            await asyncio.wait_for(segment.wait(1), 10)

    backend.run(scenario)


def test_follow_wakes_only_once_durable(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        async with store.follow(Target("s", "a")) as sub:
            gate = backend.held(store)
            waiting = asyncio.ensure_future(sub.wait(1))
            produce = asyncio.ensure_future(store.produce(txn("s", ("a", 1))))
            await gate.wait_reached()
            await asyncio.sleep(0.05)
            assert not waiting.done()
            gate.open()
            await asyncio.wait_for(waiting, 10)
            assert (await read_all(store, Target("s", "a")))[0].sequence == 1
            await produce

    backend.run(scenario)


def test_follow_ends_with_unavailable_at_shutdown(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        async with store.follow(Target("s")) as sub:
            waiting = asyncio.ensure_future(sub.wait(1))
            await asyncio.sleep(0)
            await store.end_subscriptions()
            with pytest.raises(Unavailable):
                await asyncio.wait_for(waiting, 10)
        with pytest.raises(Unavailable):
            async with store.follow(Target("s")) as late:
                await late.wait(1)

    backend.run(scenario)


# -- 8. limits -----------------------------------------------------------------------


def test_limits_a_read_is_cut_by_records_and_bytes(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("a", 10)))
        await store.produce(txn("s", ("b", 10)))
        target = Target("s")
        batch, after = await store.read(target, 3, 100, Cut(4, MIB))
        assert batch.count == 4 and after == 7
        assert [r.position for r in batch.records()] == [3, 4, 5, 6]
        assert [r.position for r in wire_records(batch)] == [3, 4, 5, 6]
        one = len((await store.read(target, 1, 1, ALL))[0].to_wire())
        batch, after = await store.read(target, 1, 100, Cut(100, 3 * one + 1))
        assert batch.count == 3 and len(batch.to_wire()) <= 3 * one + 1
        # At least one record, however small the byte budget.
        batch, after = await store.read(target, 5, 100, Cut(100, 1))
        assert batch.count == 1 and after == 6
        # Bounds: inclusive, 0 means 1, nothing past the last offset.
        batch, after = await store.read(target, 0, 2, ALL)
        assert [r.position for r in batch.records()] == [1, 2] and after == 3
        batch, after = await store.read(target, 21, 30, ALL)
        assert batch.count == 0 and after == 21
        batch, _ = await store.read(Target("s", "b"), 9, 100, ALL)
        assert [r.sequence for r in batch.records()] == [9, 10]

    backend.run(scenario)


def test_limits_a_read_by_segment_prefix_skips_a_bounded_amount(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("a/1", 1)))
        for _ in range(20):
            await store.produce(txn("s", ("b", 1), tag=bytes(10_000)))
        await store.produce(txn("s", ("a/2", 1), ("ab", 1)))
        target, found, steps = Target("s"), [], 0
        first = 1
        while first <= 23:
            batch, after = await store.read(target, first, 23, Cut(100, MIB, 25_000), b"a/")
            assert after > first, "a step must make progress"
            found += batch.records()
            steps += 1
            first = after
        assert [(r.segment, r.position) for r in found] == [("a/1", 1), ("a/2", 22)]
        assert steps >= 5, "each step looked past about 25 kB of other records at most"
        batch, after = await store.read(target, 1, 23, Cut(100, MIB, 10 * MIB), b"a")
        assert [r.segment for r in batch.records()] == ["a/1", "a/2", "ab"] and after == 24

    backend.run(scenario)


# -- 9. names ------------------------------------------------------------------------


def test_names_are_prefix_safe_and_listed_in_utf8_order(backend: Harness) -> None:
    spaces = ["m", "m/x", "é", "z", "😀", "\uffff"]
    segments = ["a", "ab", "a:b", "a/", "€", "\u2028"]

    async def scenario(store: Store) -> None:
        for space in spaces:
            for n, segment in enumerate(segments):
                await store.produce(txn(space, (segment, n + 1)))
        for space in spaces:
            for n, segment in enumerate(segments):
                records = await read_all(store, Target(space, segment))
                assert {(r.space, r.segment) for r in records} == {(space, segment)}
                assert len(records) == n + 1
            assert {r.space for r in await read_all(store, Target(space))} == {space}
        by_bytes = sorted(spaces, key=lambda name: name.encode())
        assert [i.name for i in await store.list_spaces(None, 100)] == by_bytes
        assert [i.name for i in await store.list_segments("m", None, 100)] == sorted(
            segments, key=lambda name: name.encode()
        )
        assert await store.list_segments("m/", None, 100) == []

    backend.run(scenario)


def test_names_lists_page_and_filter(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        for space in ("billing", "orders", "orders-a", "orders-b", "other"):
            await store.produce(txn(space, ("x", 2), ("y", 1)))
        first = await store.list_spaces(None, 2)
        assert [(i.name, i.last_position, i.last_timestamp_ns) for i in first] == [
            ("billing", 3, backend.clock.now),
            ("orders", 3, backend.clock.now),
        ]
        assert [i.name for i in await store.list_spaces("orders", 2)] == ["orders-a", "orders-b"]
        assert [i.name for i in await store.list_spaces("other", 2)] == []
        only = await store.list_spaces(None, 10, lambda name: name != "orders-a", ["orders"])
        assert [i.name for i in only] == ["orders", "orders-b"]
        assert [i.name for i in await store.list_spaces("orders", 10, None, ["orders"])] == [
            "orders-a",
            "orders-b",
        ]
        assert [
            (i.name, i.last_sequence, i.last_position, i.last_timestamp_ns)
            for i in await store.list_segments("orders", "x", 10)
        ] == [("y", 1, 3, backend.clock.now)]

    backend.run(scenario)


# -- reads: records come back as produced -----------------------------------------


def test_records_come_back_as_they_were_produced(backend: Harness) -> None:
    metadata = pb.RecordInput(payload=b"\x00\xff", metadata={"k": "v", "": "e"})
    raw = metadata.SerializeToString(deterministic=True)

    async def scenario(store: Store) -> None:
        appends = (SegmentAppend("a", (raw, body(b"")), None),)
        result = await store.produce(Transaction("s", appends, "tx-1", b"f" * 32))
        expected = [
            Record("s", "a", 1, 1, result.timestamp_ns, "tx-1", raw),
            Record("s", "a", 2, 2, result.timestamp_ns, "tx-1", body(b"")),
        ]
        batch, _ = await store.read(Target("s", "a"), 1, 10, ALL)
        assert list(batch.records()) == expected
        on_wire = wire_records(batch)
        assert [(r.space, r.segment, r.sequence, r.position) for r in on_wire] == [
            ("s", "a", 1, 1),
            ("s", "a", 2, 2),
        ]
        assert on_wire[0].payload == b"\x00\xff" and dict(on_wire[0].metadata) == {
            "k": "v",
            "": "e",
        }
        assert {r.transaction_id for r in on_wire} == {"tx-1"}
        assert {r.timestamp.ToNanoseconds() for r in on_wire} == {result.timestamp_ns}
        peeked = await store.peek(Target("s"))
        assert peeked is not None and list(peeked.records()) == expected[1:]
        assert pb.PeekResponse.FromString(peeked.to_wire()).record == on_wire[1]
        assert await store.peek(Target("s", "b")) is None
        assert await store.peek(Target("t")) is None

    backend.run(scenario)


def test_consumer_lags_in_order_and_bounded(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("a", 5)))
        await store.commit_offset("c2", Target("s"), 5, None)
        await store.commit_offset("c1", Target("s", "a"), 2, None)
        await store.commit_offset("c1", Target("s"), 1, None)
        lags, more = await store.consumer_lags(10)
        assert (lags, more) == (
            [("c1", Target("s"), 4), ("c1", Target("s", "a"), 3), ("c2", Target("s"), 0)],
            False,
        )
        assert await store.consumer_lags(2) == (lags[:2], True)

    backend.run(scenario)


# -- 10. closing, and restarts -------------------------------------------------------


def test_closing_refuses_every_operation_after(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        await store.produce(txn("s", ("a", 1)))
        await store.close()
        assert store.write_error is not None
        target = Target("s", "a")
        calls = [
            store.produce(txn("s", ("a", 1))),
            store.last_offset(target),
            store.read(target, 1, 1, ALL),
            store.peek(target),
            store.first_at_or_after(target, 0),
            store.commit_offset("c", target, 1, None),
            store.get_offset("c", target),
            store.list_spaces(None, 10),
            store.list_segments("s", None, 10),
            store.consumer_lags(10),
        ]
        for call in calls:
            with pytest.raises(Unavailable):
                await call

    backend.run(scenario)


def test_closing_and_opening_again_keeps_what_a_durable_backend_acked(backend: Harness) -> None:
    if not backend.durable:
        pytest.skip(f"{backend.name}: nothing survives a restart")

    async def fill(store: Store) -> None:
        await store.produce(txn("s", ("a", 2), ("b", 1), txid="t"))
        await store.commit_offset("c", Target("s", "a"), 2, None)

    async def check(store: Store) -> None:
        assert store.write_error is None
        assert await store.last_offset(Target("s")) == 3
        assert await store.get_offset("c", Target("s", "a")) == 2
        assert (await store.produce(txn("s", ("a", 2), ("b", 1), txid="t"))).duplicate
        result = await store.produce(txn("s", ("a", 1)))
        assert (result.acks[0].first_sequence, result.first_position) == (3, 4)

    backend.run(fill)
    backend.run(check)


def test_background_tasks_are_named_and_run(backend: Harness) -> None:
    async def scenario(store: Store) -> None:
        tasks = store.background()
        assert len({task.name for task in tasks}) == len(tasks)
        for task in tasks:
            assert task.interval > 0
            await task.step()

    backend.run(scenario, dedupe_window_ns=DAY_NS)
