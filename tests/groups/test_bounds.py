"""The group's reader honours every bound: unsettled records, their bytes, the
lead over acked_through, and the server's memory budget; it resumes as
records settle. Each check reads the window itself: what it holds can never
pass the bound, whatever the timing."""

from __future__ import annotations

import asyncio

from streams.groups.dispatcher import Dispatcher
from streams.limits import Limits
from streams.memory import MemoryBudget
from streams.model import Ordering

from .conftest import DurableLog, Env, positions, run, some, take


def dispatcher_of(env: Env) -> Dispatcher:
    return env.groups._dispatchers[("s", "g")]


def test_reader_pauses_at_max_unsettled_records(env: Env) -> None:
    async def scenario() -> None:
        await env.create()
        for _ in range(2):
            await env.produce("s", *((f"seg{i}", 1) for i in range(10)))
        async with env.groups.join("s", "g", "w", 100) as member:
            got = await take(member, 5)
            window = dispatcher_of(env).window
            assert len(window.entries) == 5
            assert window.next_read(1000, 1 << 20) is None
            member.ack(positions(got))
            got = await take(member, 5)
            assert len(window.entries) == 5
            member.ack(positions(got))
            got = await take(member, 5)
            assert {g.key for g in got} == {(f"seg{i}", 2) for i in range(5)}

    run(env, scenario, Limits(max_group_unsettled_records=5))


def test_reader_pauses_at_max_unsettled_bytes_one_record_always(env: Env) -> None:
    async def scenario() -> None:
        await env.create(ordering=Ordering.NONE)
        await env.produce("s", ("a", 30), tag="x" * 100)
        async with env.groups.join("s", "g", "w", 100) as member:
            got = await some(member)
            window = dispatcher_of(env).window
            held = len(window.entries)
            assert 2 <= held < 30
            # At the bound, and at most one record past it (one always goes).
            assert window.bytes >= 300
            assert window.bytes - max(e.size for e in window.entries.values()) < 300
            assert window.next_read(1000, 1 << 20) is None
            got += await take(member, held - len(got)) if held > len(got) else []
            member.ack(positions(got))
            more = await some(member)
            assert more[0].position == held + 1

    run(env, scenario, Limits(max_group_unsettled_bytes=300))


def test_reader_pauses_at_max_group_lead(env: Env) -> None:
    async def scenario() -> None:
        log = DurableLog(env.store)
        await env.create(ordering=Ordering.NONE)
        await env.produce("s", ("a", 20))
        async with env.groups.join("s", "g", "w", 100) as member:
            got = await take(member, 5)
            assert positions(got) == [1, 2, 3, 4, 5]
            member.ack([2, 3, 4, 5])
            await log.until(lambda: log.settled >= {2, 3, 4, 5})
            window = dispatcher_of(env).window
            # Position 1 holds acked_through at 0: the reader stays within 5 of it.
            assert window.acked_through() == 0 and window.cursor == 6
            assert window.next_read(1000, 1 << 20) is None
            member.ack([1])
            assert positions(await take(member, 5)) == [6, 7, 8, 9, 10]

    run(env, scenario, Limits(max_group_lead=5))


def test_unsettled_records_are_charged_to_the_memory_budget(env: Env) -> None:
    async def scenario() -> None:
        await env.create()
        await env.produce("s", ("a", 3), ("b", 3))
        async with env.groups.join("s", "g", "w", 100) as member:
            got = await take(member, 2)
            window = dispatcher_of(env).window
            assert env.memory.responses == window.bytes > 0
            member.ack(positions(got))
            await take(member, 2)
        await env.groups.close()
        assert env.memory.responses == 0

    env.memory = MemoryBudget(64 << 20, 1024)
    run(env, scenario)


def test_reader_waits_for_the_memory_budget(env: Env) -> None:
    async def scenario() -> None:
        await env.create()
        await env.produce("s", ("a", 1))
        budget = env.memory
        # Someone else holds all but a few bytes of the budget.
        taken = budget.capacity - 10
        budget.charge(taken, "other")
        async with env.groups.join("s", "g", "w", 100) as member:
            window = dispatcher_of(env).window
            waiting = asyncio.ensure_future(take(member, 1))

            async def reader_waits() -> None:
                while not budget.waiting:
                    await asyncio.sleep(0)

            await asyncio.wait_for(reader_waits(), 10)
            assert not window.entries and not waiting.done()
            budget.refund(taken, "other")
            assert (await waiting)[0].key == ("a", 1)

    run(env, scenario)


def test_records_larger_than_the_fair_share_are_charged_alone(env: Env) -> None:
    async def scenario() -> None:
        await env.create()
        big = [("a", 1)]
        await env.produce("s", *big, tag="x" * 5000)
        await env.produce("s", *((f"small{i}", 1) for i in range(20)))
        async with env.groups.join("s", "g", "w", 100) as member:
            got = await take(member, 21)
            assert env.memory.responses == dispatcher_of(env).window.bytes
            member.ack(positions(got))
        await env.groups.close()
        assert env.memory.responses == 0

    env.memory = MemoryBudget(64 << 20, 1024)
    run(env, scenario)
