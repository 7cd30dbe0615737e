"""The JetStream backend as several gateways see it: two stores (two NATS
connections, as two Streams servers have) over one cluster keep every rule
together; and what only this backend has (names as subject tokens, the
atomic batch's size)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from streams.errors import AlreadyExists, InvalidArgument, ResourceExhausted, SequenceMismatch
from streams.model import Cut, SegmentAppend, Target, Transaction
from streams.storage.jetstream import MAX_RECORDS_PER_PRODUCE
from streams.storage.port import Store

from .conftest import HARNESSES, Harness, body, txn
from .test_port_lifecycle import read
from .test_port_rules import payloads, read_all

Scenario = Callable[[Store, Store], Awaitable[None]]


@pytest.fixture
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    return HARNESSES["jetstream"](tmp_path, request)


def two_gateways(harness: Harness, scenario: Scenario) -> None:
    async def main() -> None:
        a, b = await harness.open(), await harness.open()
        try:
            await scenario(a, b)
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_two_gateways_writing_one_segment_number_it_densely_in_order(harness: Harness) -> None:
    producers, rounds = 4, 15

    async def producer(store: Store, name: str) -> list[tuple[int, int, int]]:
        acked = []
        for r in range(rounds):
            count = 1 + r % 3
            result = await store.produce(txn("s", ("hot", count), tag=f"/{name}/{r}".encode()))
            (ack,) = result.acks
            assert ack.last_sequence - ack.first_sequence + 1 == count
            assert result.last_position - result.first_position + 1 == count
            acked.append((ack.first_sequence, result.first_position, count))
        return acked

    async def scenario(a: Store, b: Store) -> None:
        work = [
            producer(gateway, f"{gateway is a}{n}") for gateway in (a, b) for n in range(producers)
        ]
        results = await asyncio.gather(*work)
        sequences = sorted(
            s for acks in results for first, _, c in acks for s in range(first, first + c)
        )
        assert sequences == list(range(1, len(sequences) + 1))
        for reader in (a, b):
            records = await read_all(reader, Target("s", "hot"))
            assert [r.sequence for r in records] == sequences
            # Each transaction's records are where its ack put them, in one run.
            by_sequence = {r.sequence: r for r in records}
            for acks in results:
                for first, position, count in acks:
                    run = [by_sequence[first + i] for i in range(count)]
                    assert [r.position for r in run] == list(range(position, position + count))
                    assert len({r.timestamp_ns for r in run}) == 1
            space = await read_all(reader, Target("s"))
            assert [r.position for r in space] == list(range(1, len(space) + 1))
            stamps = [r.timestamp_ns for r in space]
            assert stamps == sorted(stamps)

    two_gateways(harness, scenario)


def test_two_gateways_read_each_others_writes_at_once(harness: Harness) -> None:
    async def scenario(a: Store, b: Store) -> None:
        for n in range(100):
            writer, reader = (a, b) if n % 2 else (b, a)
            result = await writer.produce(txn("s", ("x", 1), tag=str(n).encode()))
            batch, after = await reader.read(
                Target("s"), result.first_position, 2**64 - 1, Cut(10, 1 << 20)
            )
            assert [r.position for r in batch.records()] == [result.first_position]
            assert after == result.first_position + 1
            assert await reader.last_offset(Target("s", "x")) == n + 1
            peeked = await reader.peek(Target("s", "x"))
            assert peeked is not None and peeked.records()[0].sequence == n + 1

    two_gateways(harness, scenario)


def test_two_gateways_a_follower_and_a_watcher_see_the_other_gateways_writes(
    harness: Harness,
) -> None:
    async def scenario(a: Store, b: Store) -> None:
        async with b.follow(Target("s", "x")) as sub, b.watch("s") as watch:
            waiting = asyncio.ensure_future(sub.wait(2))
            await a.produce(txn("s", ("x", 1), ("y", 1)))
            assert await asyncio.wait_for(watch.changes(), 10) == {"x", "y"}
            assert not waiting.done()
            await a.produce(txn("s", ("x", 1)))
            await asyncio.wait_for(waiting, 10)

    two_gateways(harness, scenario)


def test_two_gateways_one_transaction_id_is_written_once(harness: Harness) -> None:
    async def scenario(a: Store, b: Store) -> None:
        for n in range(10):
            same = txn("s", ("a", 2), txid=f"t{n}")
            first, second = await asyncio.gather(a.produce(same), b.produce(same))
            assert sorted([first.duplicate, second.duplicate]) == [False, True]
            assert (first.acks, first.first_position) == (second.acks, second.first_position)
        assert await a.last_offset(Target("s")) == 20

    two_gateways(harness, scenario)


def test_two_gateways_expected_sequence_and_removals_agree(harness: Harness) -> None:
    async def scenario(a: Store, b: Store) -> None:
        await b.produce(txn("s", ("a", 1, 0)))  # b now knows a's numbers
        await a.produce(txn("s", ("a", 2, 1)))
        # b's knowledge is old: it looks again rather than refusing a right expectation.
        assert (await b.produce(txn("s", ("a", 1, 3)))).acks[0].last_sequence == 4
        with pytest.raises(SequenceMismatch) as caught:
            await a.produce(txn("s", ("a", 1, 3)))
        assert caught.value.actual == 4
        await a.trim(Target("s", "a"), 4)
        assert [r.sequence for r in await read(b, Target("s", "a"))] == [4]
        await a.delete_segment("s", "a", None)
        assert await b.get_segment("s", "a") is None
        assert (await b.produce(txn("s", ("a", 1, 4)))).acks[0].first_sequence == 5

    two_gateways(harness, scenario)


def test_names_any_valid_name_is_a_subject_token(harness: Harness) -> None:
    names = ["a b", "a.b", "*", ">", "$x", "a.*.>", "é€😀", "\u2028", "a" * 255]

    async def scenario(store: Store) -> None:
        for n, name in enumerate(names):
            await store.produce(
                txn(name, *((segment, 1) for segment in names), tag=str(n).encode())
            )
        for name in names:
            for segment in names:
                records = await read_all(store, Target(name, segment))
                assert [(r.space, r.segment, r.sequence) for r in records] == [(name, segment, 1)]
            assert payloads(await read_all(store, Target(name)))[0].startswith(b"a b:0")
        order = sorted(names, key=lambda name: name.encode())
        assert [i.name for i in await store.list_spaces(None, 100)] == order
        assert [i.name for i in await store.list_segments(names[1], None, 100)] == order

    harness.run(scenario)


def test_a_produce_is_one_atomic_batch_of_at_most_1000_records(harness: Harness) -> None:
    async def scenario(store: Store) -> None:
        result = await store.produce(txn("s", ("a", 600), ("b", MAX_RECORDS_PER_PRODUCE - 600)))
        assert result.last_position == MAX_RECORDS_PER_PRODUCE
        with pytest.raises(InvalidArgument, match="1000"):
            await store.produce(txn("s", ("a", 600), ("b", MAX_RECORDS_PER_PRODUCE - 599)))
        assert await store.last_offset(Target("s")) == MAX_RECORDS_PER_PRODUCE

    harness.run(scenario)


def test_two_gateways_a_watcher_hears_the_other_gateways_removals(harness: Harness) -> None:
    async def scenario(a: Store, b: Store) -> None:
        await a.produce(txn("s", ("x", 2), ("y", 1)))
        async with b.watch("s") as watch:
            await a.trim(Target("s", "x"), 2)
            assert await asyncio.wait_for(watch.changes(), 10) == {"x"}
            await a.delete_segment("s", "y", None)
            assert await asyncio.wait_for(watch.changes(), 10) == {"y"}
            await a.delete_space("s")
            names = await asyncio.wait_for(watch.changes(), 10)
            assert names is None or {"x"} <= names

    two_gateways(harness, scenario)


def test_a_repeat_is_answered_when_the_original_gateway_stopped_before_recording_it(
    harness: Harness,
) -> None:
    async def scenario(a: Store, b: Store) -> None:
        async def stopped(*args: object) -> None:
            """The gateway stops after the commit, before it records the result."""

        a._record = stopped  # type: ignore[attr-defined]
        original = await a.produce(txn("s", ("x", 2), ("y", 1), txid="t"))
        await a.produce(txn("s", ("x", 1)))
        again = await b.produce(txn("s", ("x", 2), ("y", 1), txid="t"))
        assert again.duplicate
        assert (again.acks, again.first_position, again.last_position, again.timestamp_ns) == (
            original.acks,
            original.first_position,
            original.last_position,
            original.timestamp_ns,
        )
        # Recorded now: the next repeat is answered from the bucket, a different one refused.
        assert (await a.produce(txn("s", ("x", 2), ("y", 1), txid="t"))).duplicate
        with pytest.raises(AlreadyExists):
            await b.produce(txn("s", ("x", 1), txid="t", tag=b"other"))
        a._record = stopped  # type: ignore[attr-defined]
        await a.produce(txn("s", ("x", 1), txid="u"))
        with pytest.raises(AlreadyExists):
            await b.produce(txn("s", ("x", 1), txid="u", tag=b"other"))
        assert await b.last_offset(Target("s")) == 5

    two_gateways(harness, scenario)


def test_a_record_over_the_servers_max_payload_is_refused_whole(harness: Harness) -> None:
    async def scenario(store: Store) -> None:
        limit = store._nc.max_payload  # type: ignore[attr-defined]
        big = SegmentAppend("b", (body(bytes(limit)),), None)
        small = SegmentAppend("a", (body(b"x"),), None)
        with pytest.raises(ResourceExhausted, match="max_payload"):
            await store.produce(Transaction("s", (small, big), "", b""))
        assert await store.last_offset(Target("s")) == 0
        assert (await store.produce(Transaction("s", (small,), "", b""))).first_position == 1

    harness.run(scenario)
