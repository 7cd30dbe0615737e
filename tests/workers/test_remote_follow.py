"""Following over the store host, beyond the conformance suite: one pump per
(front, target) whatever the number of followers, released with the last
one; followers of one front see every record another front writes, with no
gap, from the front's window; removals made by another front, or by the
writer itself, reach a front's window; pumps and watches per front are
bounded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streams.errors import ResourceExhausted
from streams.limits import Limits
from streams.model import MAX_OFFSET, Cut, Record, Target
from streams.storage.port import Store

from .test_remote_backpressure import eventually, sent_by
from .test_remote_connection import ALL, served, txn


async def follow_all(store: Store, target: Target, last: int, ready: asyncio.Event) -> list[Record]:
    """What a Consume with follow reads of ``target`` up to offset ``last``."""
    found: list[Record] = []
    async with store.follow(target) as sub:
        first = 1
        ready.set()
        while first <= last:
            batch, after = await store.read(target, first, MAX_OFFSET, Cut(7, 1 << 20))
            found += batch.records()
            if after == first:
                await sub.wait(first)
            first = after
    return found


def test_followers_of_one_front_share_one_pump_released_with_the_last(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as (_, host, (store,)):
            (front,) = host.fronts
            target = Target("s", "a")
            async with store.follow(target) as one, store.follow(target) as two:
                assert front.streams == 1
                waits = [asyncio.ensure_future(s.wait(3)) for s in (one, two)]
                await store.produce(txn("s", "a", 3))
                await asyncio.wait_for(asyncio.gather(*waits), 10)
                assert store.tail.windows == 1
                async with store.follow(Target("s")):
                    assert front.streams == 2
            await store.barrier()  # the host has heard the release
            assert front.streams == 0
            assert store.tail.windows == 0

    asyncio.run(main())


def test_followers_see_every_record_of_another_front_without_gap(tmp_path: Path) -> None:
    producers, rounds = 4, 30

    async def main() -> None:
        async with served(tmp_path, fronts=2) as (_, _, (writer, reader)):
            total = producers * rounds * 3
            readies = [asyncio.Event() for _ in range(3)]
            followers = [
                asyncio.ensure_future(follow_all(reader, Target("s"), total, readies[0])),
                asyncio.ensure_future(follow_all(reader, Target("s"), total, readies[1])),
                asyncio.ensure_future(
                    follow_all(reader, Target("s", "p0"), rounds * 3, readies[2])
                ),
            ]
            for ready in readies:
                await ready.wait()

            async def producer(n: int) -> None:
                for _ in range(rounds):
                    await writer.produce(txn("s", f"p{n}", 3))

            await asyncio.gather(*(producer(n) for n in range(producers)))
            space_a, space_b, segment = await asyncio.wait_for(asyncio.gather(*followers), 30)
            assert [r.position for r in space_a] == list(range(1, total + 1))
            assert space_a == space_b
            assert [r.sequence for r in segment] == list(range(1, rounds * 3 + 1))
            assert {r.segment for r in segment} == {"p0"}

    asyncio.run(main())


def test_a_front_reads_the_newest_records_from_its_window(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            served(tmp_path, fronts=2) as (_, _, (writer, reader)),
            reader.follow(Target("s")) as sub,
        ):
            await writer.produce(txn("s", "a", 5))
            await asyncio.wait_for(sub.wait(5), 10)
            assert reader.tail.windows == 1
            asked = sent_by(reader.link)
            batch, after = await reader.read(Target("s"), 2, MAX_OFFSET, ALL)
            assert [r.position for r in batch.records()] == [2, 3, 4, 5] and after == 6
            assert asked == [], "the window answered, not the host"
            await reader.read(Target("s", "a"), 1, MAX_OFFSET, ALL)  # not followed here
            assert [name for _, name, _ in asked] == ["read"]

    asyncio.run(main())


def test_removals_by_another_front_and_by_the_writer_reach_the_window(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            served(tmp_path, fronts=2) as (engine, _, (remover, reader)),
            reader.follow(Target("s")) as space,
            reader.follow(Target("s", "a")) as a,
        ):
            await remover.produce(txn("s", "a", 4))
            await remover.produce(txn("s", "b", 2))
            await asyncio.wait_for(asyncio.gather(space.wait(6), a.wait(4)), 10)
            assert reader.tail.windows == 2
            await remover.trim(Target("s", "a"), 3)
            await reader.barrier()
            batch, _ = await reader.read(Target("s"), 1, MAX_OFFSET, ALL)
            assert [r.position for r in batch.records()] == [3, 4, 5, 6]
            batch, _ = await reader.read(Target("s", "a"), 1, MAX_OFFSET, ALL)
            assert [r.sequence for r in batch.records()] == [3, 4]
            # The writer's own removal (a DeleteSpace it serves, a retention pass).
            await remover.produce(txn("s", "a", 1))
            await asyncio.wait_for(asyncio.gather(space.wait(7), a.wait(5)), 10)
            newest = {Target("s"): 7, Target("s", "a"): 5}
            for target, offset in newest.items():  # each window starts there now
                batch, _ = await reader.read(target, offset, MAX_OFFSET, ALL)
                assert batch.count == 1, target
            await engine.delete_space("s")
            await reader.barrier()
            for target, offset in newest.items():
                batch, _ = await reader.read(target, offset, MAX_OFFSET, ALL)
                assert batch.count == 0, target

    asyncio.run(main())


def test_pumps_and_watches_per_front_are_bounded(tmp_path: Path) -> None:
    async def main() -> None:
        limits = Limits(max_concurrent_streams=2)
        async with served(tmp_path, limits=limits) as (_, host, (store,)):
            async with store.follow(Target("s")), store.watch("t"):
                with pytest.raises(ResourceExhausted, match="max_concurrent_streams"):
                    async with store.follow(Target("u")):
                        pass
                # Another follower of a followed target needs no pump.
                async with store.follow(Target("s")):
                    pass
            await store.barrier()
            async with store.follow(Target("u")):
                (front,) = host.fronts
                assert front.streams == 1

    asyncio.run(main())


def test_a_follower_gone_before_its_pump_began_leaves_nothing_behind(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as (_, host, (store,)):
            (front,) = host.fronts
            for _ in range(3):
                entered = asyncio.ensure_future(store.follow(Target("s")).__aenter__())
                await asyncio.sleep(0)  # the FOLLOW is queued, not yet answered
                entered.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await entered
            await eventually(lambda: not store._pending, "the host to answer the FOLLOWs")
            assert front.streams == 0 and not front._calls and not store._followed.by_key
            async with store.follow(Target("s")) as sub:
                await store.produce(txn("s", "a"))
                await asyncio.wait_for(sub.wait(1), 10)

    asyncio.run(main())


def test_the_latest_push_served_whole_still_honours_the_cut_and_bounds(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            served(tmp_path, fronts=2) as (_, _, (writer, reader)),
            reader.follow(Target("s")) as sub,
        ):
            await writer.produce(txn("s", "a", 2))
            await writer.produce(txn("s", "a", 5))
            await asyncio.wait_for(sub.wait(7), 10)
            whole, after = await reader.read(Target("s"), 3, MAX_OFFSET, ALL)
            assert [r.position for r in whole.records()] == [3, 4, 5, 6, 7] and after == 8
            one = len((await reader.read(Target("s"), 3, 3, ALL))[0].to_wire())
            for cut, last, expected in (
                (Cut(2, 1 << 20), MAX_OFFSET, [3, 4]),
                (Cut(100, 2 * one), MAX_OFFSET, [3, 4]),
                (Cut(100, 1), MAX_OFFSET, [3]),
                (ALL, 5, [3, 4, 5]),
            ):
                batch, after = await reader.read(Target("s"), 3, last, cut)
                assert [r.position for r in batch.records()] == expected
                assert after == expected[-1] + 1
            batch, _ = await reader.read(Target("s"), 3, MAX_OFFSET, ALL)
            assert batch.to_wire() == whole.to_wire()

    asyncio.run(main())
