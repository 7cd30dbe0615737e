"""The dispatcher against real stores: order, ownership, acks, pull."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from streams.errors import NotFound, ResourceExhausted, Unavailable
from streams.limits import Limits
from streams.model import Ordering

from .conftest import GUARD, DurableLog, Env, Got, one_sent_one_unsent, positions, run, some, take


def check_in_order(
    got: Sequence[Got], log: DurableLog, previous: dict[str, tuple[int, int]]
) -> None:
    """Each delivery is its segment's next record (or the same again), and the
    one before it in its segment was durably settled before it came;
    ``previous``: each segment's last delivery (sequence, position)."""
    for g in got:
        segment, sequence = g.key
        last, position = previous.get(segment, (0, 0))
        assert sequence in (last, last + 1), f"{segment}: {sequence} after {last}"
        if sequence == last + 1 and last:
            assert log.durable(position), (
                f"{segment}:{sequence} delivered before {segment}:{last} was settled"
            )
        previous[segment] = (sequence, g.position)


def test_per_segment_strict_order_one_in_flight_per_segment(env: Env) -> None:
    async def scenario() -> None:
        log = DurableLog(env.store)
        await env.create()
        # Interleaved: positions alternate between segments.
        for _ in range(5):
            await env.produce("s", ("a", 1), ("b", 1), ("c", 1))
        seen: dict[str, tuple[int, int]] = {}
        async with env.groups.join("s", "g", "w", 100) as member:
            for _ in range(5):
                got = await take(member, 3)
                # One record per segment at a time, whatever max_in_flight allows.
                assert sorted(g.record.segment for g in got) == ["a", "b", "c"]
                assert all(g.attempt == 1 for g in got)
                check_in_order(got, log, seen)
                member.ack(positions(got))
        assert {segment: last[0] for segment, last in seen.items()} == {"a": 5, "b": 5, "c": 5}
        await env.groups.close()
        assert await env.acked_through() == 15

    run(env, scenario)


def test_fewest_owned_segments_and_late_joiner_gets_freed_segments(env: Env) -> None:
    async def scenario() -> None:
        log = DurableLog(env.store)
        await env.create()
        await env.produce("s", ("a", 1), ("b", 1), ("c", 1), ("d", 1))
        async with env.groups.join("s", "g", "first", 100) as first:
            got = await take(first, 4)
            async with env.groups.join("s", "g", "late", 100) as late:
                live = env.groups.live("s", "g")
                assert live is not None
                assert [(m[1], m[2], m[3]) for m in live.members] == [
                    ("first", 4, 4),
                    ("late", 0, 0),
                ]
                # Segments never move while a record is in flight: late gets nothing yet.
                assert not late._take(1 << 20)
                first.ack(positions(got))
                await log.until(lambda: log.through == 4)
                await env.produce("s", ("a", 1), ("b", 1), ("c", 1), ("d", 1))
                # Freed once settled, each goes to the member owning the fewest.
                mine = await take(first, 2)
                theirs = await take(late, 2)
                assert {g.record.segment for g in mine}.isdisjoint(g.record.segment for g in theirs)
                live = env.groups.live("s", "g")
                assert live is not None
                assert [m[2] for m in live.members] == [2, 2]
                assert live.in_flight == 4

    run(env, scenario)


def test_many_segments_spread_evenly(env: Env) -> None:
    async def scenario() -> None:
        await env.create()
        await env.produce("s", *((f"seg{i}", 2) for i in range(30)))
        async with (
            env.groups.join("s", "g", "a", 1000) as a,
            env.groups.join("s", "g", "b", 1000) as b,
            env.groups.join("s", "g", "c", 1000) as c,
        ):
            got = [await take(m, 10) for m in (a, b, c)]
            owned = [{g.record.segment for g in mine} for mine in got]
            assert sum(len(o) for o in owned) == 30
            assert not (owned[0] & owned[1] or owned[1] & owned[2] or owned[0] & owned[2])
            # Second records follow the first to the same owner once acked.
            for member, mine in zip((a, b, c), got, strict=True):
                member.ack(positions(mine))
            for member, segs in zip((a, b, c), owned, strict=True):
                again = await take(member, 10)
                assert {g.record.segment for g in again} == segs
                assert all(g.record.sequence == 2 for g in again)

    run(env, scenario)


def test_max_in_flight_counts_records_until_durable(env: Env) -> None:
    async def scenario() -> None:
        await env.create()
        await env.produce("s", *((f"seg{i}", 1) for i in range(5)))
        async with env.groups.join("s", "g", "w", 2) as member:
            got = await take(member, 2)
            live = env.groups.live("s", "g")
            assert live is not None and live.in_flight == 2
            member.ack(positions(got))
            got = await take(member, 2)
            member.ack(positions(got))
            assert len(await take(member, 1)) == 1

    run(env, scenario)


def test_acks_for_records_not_held_are_ignored(env: Env) -> None:
    async def scenario() -> None:
        log = DurableLog(env.store)
        await env.create()
        await env.produce("s", ("a", 2), ("b", 2))
        async with (
            env.groups.join("s", "g", "one", 100) as one,
            env.groups.join("s", "g", "two", 100) as two,
        ):
            mine, theirs = await take(one, 1), await take(two, 1)
            # Another member's record, an unknown position, one never read: ignored.
            two.ack([mine[0].position, 999, 0])
            one.ack([theirs[0].position])
            await asyncio.sleep(0)
            live = env.groups.live("s", "g")
            assert live is not None and live.in_flight == 2
            assert not log.settled and not log.through
            one.ack([mine[0].position, mine[0].position])  # twice: once
            again = await take(one, 1)
            assert again[0].record.segment == mine[0].record.segment
            assert again[0].record.sequence == 2
            assert log.durable(mine[0].position)
            assert not log.durable(theirs[0].position)

    run(env, scenario)


@pytest.mark.parametrize("answer", ["ack", "nack"])
def test_an_answer_for_a_delivery_not_sent_yet_is_ignored(env: Env, answer: str) -> None:
    """A record delivered to a member but still in its outbox is not one the
    member can answer: a late ack (say for an attempt it nacked since) must
    not settle the delivery it has not been sent (CI seeds 744583030, 859375452)."""

    async def scenario() -> None:
        log = DurableLog(env.store)
        await env.create()
        async with one_sent_one_unsent(env) as (_, _, two, unsent):
            if answer == "ack":
                two.ack([unsent])
            else:
                two.nack([unsent], park=False, reason="late")
            (got,) = await take(two, 1)
            assert (got.position, got.attempt) == (unsent, 1)
            assert not log.durable(unsent)
            two.ack([unsent])
            await log.until(lambda: log.durable(unsent))

    run(env, scenario)


def test_ordering_none_pull_any_member_any_segment(env: Env) -> None:
    async def scenario() -> None:
        await env.create(ordering=Ordering.NONE)
        await env.produce("s", ("a", 6))
        async with env.groups.join("s", "g", "one", 4) as one:
            got = await take(one, 4)
            # Records of one segment in flight together: no ordering.
            assert [g.record.sequence for g in got] == [1, 2, 3, 4]
            async with env.groups.join("s", "g", "late", 2) as late:
                # A late joiner pulls what is waiting at once.
                assert [g.record.sequence for g in await take(late, 2)] == [5, 6]
                one.ack(positions(got))
                await env.produce("s", ("b", 3))
                got = await take(one, 3)
                assert [g.record.segment for g in got] == ["b"] * 3

    run(env, scenario)


def test_follows_the_live_tail(env: Env) -> None:
    async def scenario() -> None:
        await env.create()
        async with env.groups.join("s", "g", "w", 10) as member:
            waiting = asyncio.ensure_future(take(member, 1))
            await asyncio.sleep(0)
            assert not waiting.done()
            await env.produce("s", ("a", 1))
            got = await waiting
            assert got[0].key == ("a", 1)

    run(env, scenario)


def test_join_errors(env: Env) -> None:
    async def scenario() -> None:
        with pytest.raises(NotFound, match="'nope'"):
            async with env.groups.join("s", "nope", "w", 10):
                pass
        await env.create()
        async with env.groups.join("s", "g", "a", 10), env.groups.join("s", "g", "b", 10):
            with pytest.raises(ResourceExhausted, match="max_group_members"):
                async with env.groups.join("s", "g", "c", 10):
                    pass

    run(env, scenario, Limits(max_group_members=2))


def test_deleted_group_ends_members_with_not_found(env: Env) -> None:
    async def scenario() -> None:
        await env.create()
        await env.produce("s", ("a", 2))
        async with env.groups.join("s", "g", "w", 10) as member:
            got = await take(member, 1)
            assert await env.store.delete_group("s", "g")
            env.groups.deleted("s", "g")
            with pytest.raises(NotFound):
                await member.deliveries(1 << 20)
            member.ack(positions(got))  # after the end: harmless
        assert env.groups.live("s", "g") is None
        assert await env.store.get_group("s", "g") is None

    run(env, scenario)


def test_close_ends_members_with_unavailable_and_writes_acks(env: Env) -> None:
    async def scenario() -> None:
        await env.create()
        await env.produce("s", ("a", 1), ("b", 1))
        async with env.groups.join("s", "g", "w", 10) as member:
            got = await take(member, 2)
            member.ack(positions(got))
            await env.groups.close()
            with pytest.raises(Unavailable):
                await member.deliveries(1 << 20)
        assert await env.acked_through() == 2
        with pytest.raises(Unavailable):
            async with env.groups.join("s", "g", "w", 10):
                pass

    run(env, scenario)


def test_end_without_error_ends_deliveries(env: Env) -> None:
    async def scenario() -> None:
        await env.create()
        async with env.groups.join("s", "g", "w", 10) as member:
            member.end(None)
            assert await member.deliveries(1 << 20) == []
            assert await member.deliveries(1 << 20) == []

    run(env, scenario)


def test_stats_count_deliveries(env: Env) -> None:
    async def scenario() -> None:
        log = DurableLog(env.store)
        config = await env.create(max_attempts=5)
        await env.produce("s", ("a", 1), ("b", 1), ("c", 1))
        async with env.groups.join("s", "g", "w", 10) as member:
            got = {g.record.segment: g for g in await take(member, 3)}
            member.ack([got["a"].position])
            member.nack([got["b"].position], park=True, reason="bad")
            member.nack([got["c"].position], park=False, reason="later")
            again = await take(member, 1)
            assert again[0].key == ("c", 1) and again[0].attempt == 2
            await log.until(
                lambda: log.durable(got["a"].position) and log.durable(got["b"].position)
            )
            (stats,) = env.groups.stats()
            assert (stats.space, stats.group, stats.members) == ("s", "g", 1)
            assert (stats.delivered, stats.redelivered) == (4, 1)
            assert (stats.acked, stats.parked) == (1, 1)
            assert stats.in_flight == 1
            assert len(await env.parked(config)) == 1
        assert env.groups.stats() == []

    run(env, scenario)


def test_members_joining_one_after_another_over_a_backlog_share_it(env: Env) -> None:
    """Segments get their owner when their head can go, not when the reader
    reads them: the first member does not take the whole backlog the reader
    read ahead, and each later member gets work at once."""
    segments, per_segment, members, room = 1000, 10, 8, 100
    total = segments * per_segment

    async def scenario() -> None:
        await env.create()
        for _ in range(per_segment):  # positions interleave the segments
            await env.produce("s", *((f"seg{i}", 1) for i in range(segments)))
        counts = [0] * members
        delivered = 0
        progress = asyncio.Event()
        done = asyncio.Event()

        async def work(index: int) -> None:
            nonlocal delivered
            async with env.groups.join("s", "g", f"m{index}", room) as member:
                while True:
                    got = await some(member)
                    counts[index] += len(got)
                    delivered += len(got)
                    progress.set()
                    if delivered >= total:
                        done.set()
                    member.ack(positions(got))

        tasks = []
        try:
            for index in range(members):
                tasks.append(asyncio.create_task(work(index)))
                # The next one joins once the group made some progress.
                while delivered < (index + 1) * 200 and not done.is_set():
                    progress.clear()
                    await asyncio.wait_for(progress.wait(), GUARD)
            await asyncio.wait_for(done.wait(), 6 * GUARD)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert delivered == total  # each once: nothing timed out or left
        # The last joins after 1,400 of 10,000: a fair share is over 1,000 each.
        assert min(counts) >= total // members // 2, counts

    run(env, scenario)
