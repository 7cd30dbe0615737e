"""Delivery attempts are bounded by max_attempts however a delivery ends:
a member leaving at a record's last attempt parks it (finding F3 of the
proof), and attempts count on across a moment with no member, e.g. a single
worker that a poison record crashes again and again (finding F2); not
across a restart or a delete."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from streams.groups import Member
from streams.model import Ordering

from .conftest import GUARD, DurableLog, Env, Got, metadata_of, positions, run, some, take


async def _first(members: list[Member]) -> tuple[Member, list[Got]]:
    """The first of ``members`` to get a delivery, and what it got."""
    tasks = {asyncio.ensure_future(some(member)): member for member in members}
    done, pending = await asyncio.wait(tasks, timeout=GUARD, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    (task,) = done
    return tasks[task], task.result()


def test_a_member_leaving_at_the_last_attempt_parks_the_record(env: Env) -> None:
    """Every member the record reaches leaves holding it, while others stay:
    after max_attempts deliveries it is parked, and its segment goes on."""

    async def scenario() -> None:
        log = DurableLog(env.store)
        config = await env.create(max_attempts=2)
        async with contextlib.AsyncExitStack() as stack:
            joined = {}
            for name in ("m1", "m2", "m3"):
                context = env.groups.join("s", "g", name, 10)
                joined[await stack.enter_async_context(context)] = context
            await env.produce("s", ("a", 2))
            seen: list[Got] = []
            for _ in range(2):
                holder, got = await _first(list(joined))
                seen += got
                await joined.pop(holder).__aexit__(None, None, None)
            assert [(g.key, g.attempt) for g in seen] == [(("a", 1), 1), (("a", 1), 2)]
            (last,) = joined
            nxt = await take(last, 1)
            assert (nxt[0].key, nxt[0].attempt) == (("a", 2), 1)
            await log.until(lambda: log.durable(seen[0].position))
            (parked,) = await env.parked(config)
            meta = metadata_of(parked)
            assert meta["streams-parked-position"] == str(seen[0].position)
            assert meta["streams-parked-attempts"] == "2"
            (stats,) = env.groups.stats()
            assert (stats.parked, stats.delivered) == (1, 3)

    run(env, scenario)


@pytest.mark.parametrize("ordering", [Ordering.PER_SEGMENT, Ordering.NONE])
def test_a_worker_crashing_on_a_record_sees_it_parked_after_max_attempts(
    env: Env, ordering: Ordering
) -> None:
    """One worker at a time, each the group's only member, leaving with the
    record unanswered: its attempts go on (2 after a nack, 3 in the next
    worker), then it is parked with the last nack's reason, and the next
    record of its segment comes with attempt 1."""

    async def scenario() -> None:
        config = await env.create(max_attempts=3, ordering=ordering)
        await env.produce("s", ("a", 1), ("b", 1))
        async with env.groups.join("s", "g", "w0", 1) as member:
            (first,) = await take(member, 1)
            member.nack([first.position], park=False, reason="crashing")
            # Its slot is free during the back-off: b comes.
            (other,) = await take(member, 1)
            assert other.key == ("b", 1)
            member.ack([other.position])
            (second,) = await take(member, 1)
            assert (second.position, second.attempt) == (first.position, 2)
        async with env.groups.join("s", "g", "w1", 1) as member:
            (third,) = await take(member, 1)
            assert (third.position, third.attempt) == (first.position, 3)
        await env.produce("s", ("a", 1))
        async with env.groups.join("s", "g", "w2", 10) as member:
            # Parked as w1 left: its segment's next record, first delivery.
            (nxt,) = await take(member, 1)
            assert (nxt.key, nxt.attempt) == (("a", 2), 1)
            member.ack([nxt.position])
        (parked,) = await env.parked(config)
        meta = metadata_of(parked)
        assert (meta["streams-parked-position"], meta["streams-parked-attempts"]) == (
            str(first.position),
            "3",
        )
        assert meta["streams-parked-reason"] == "crashing"

    run(env, scenario)


def test_attempts_start_again_after_a_delete_or_a_restart(env: Env) -> None:
    async def scenario() -> None:
        await env.create()
        await env.produce("s", ("a", 1))
        async with env.groups.join("s", "g", "w", 10) as member:
            assert [g.attempt for g in await take(member, 1)] == [1]
        async with env.groups.join("s", "g", "w", 10) as member:
            assert [g.attempt for g in await take(member, 1)] == [2]
        # A restart: attempts are not durable.
        await env.restart()
        async with env.groups.join("s", "g", "w", 10) as member:
            assert [g.attempt for g in await take(member, 1)] == [1]
        # A new group of the same name starts afresh.
        await env.store.delete_group("s", "g")
        env.groups.deleted("s", "g")
        await env.create()
        async with env.groups.join("s", "g", "w", 10) as member:
            assert [g.attempt for g in await take(member, 1)] == [1]

    run(env, scenario)


def test_attempts_kept_for_a_group_with_no_member_are_its_unsettled_records(env: Env) -> None:
    """What the registry keeps: the records delivered and not settled, no more."""

    async def scenario() -> None:
        log = DurableLog(env.store)
        await env.create(ordering=Ordering.NONE)
        await env.produce("s", ("a", 6))
        async with env.groups.join("s", "g", "w", 3) as member:
            assert positions(await take(member, 3)) == [1, 2, 3]
        kept = env.groups._attempts[("s", "g")]
        assert kept == {1: (1, ""), 2: (1, ""), 3: (1, "")}
        async with env.groups.join("s", "g", "w", 10) as member:
            again = await take(member, 6)
            assert [(g.position, g.attempt) for g in again] == [
                (1, 2),
                (2, 2),
                (3, 2),
                (4, 1),
                (5, 1),
                (6, 1),
            ]
            member.ack([1, 2, 3, 4, 5])
            await log.until(lambda: log.durable(5))
        assert env.groups._attempts[("s", "g")] == {6: (1, "")}
        env.groups.deleted("s", "g")
        assert ("s", "g") not in env.groups._attempts

    run(env, scenario)


def test_a_failed_park_write_parks_again_never_delivers_once_more(env: Env) -> None:
    """A record timed out at its last attempt whose park write fails is parked
    by the next write, not delivered with attempt max_attempts + 1."""

    async def scenario() -> None:
        config = await env.create(max_attempts=1, ack_timeout=0.05)
        await env.produce("s", ("a", 2))
        env.fail_settles(1)
        async with env.groups.join("s", "g", "w", 10) as member:
            (first,) = await take(member, 1)
            assert (first.key, first.attempt) == (("a", 1), 1)
            (nxt,) = await take(member, 1)
            assert (nxt.key, nxt.attempt) == (("a", 2), 1)
            assert env.settle_failures_left == 0
        (parked,) = await env.parked(config)
        assert metadata_of(parked)["streams-parked-attempts"] == "1"

    run(env, scenario)
