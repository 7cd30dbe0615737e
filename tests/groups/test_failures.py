"""The dispatcher when things go wrong: ack timeouts, nacks, parking, members
leaving, restarts, settle writes failing."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from streams.errors import NotFound
from streams.groups import dispatcher
from streams.limits import Limits
from streams.model import Ordering, SegmentAppend, Transaction
from streams.v1 import streams_pb2 as pb

from .conftest import (
    GUARD,
    DurableLog,
    Env,
    Got,
    metadata_of,
    one_sent_one_unsent,
    payload_of,
    positions,
    run,
    some,
    take,
)

SHORT = 0.05  # an ack timeout the tests wait out


def test_ack_timeout_delivers_again_with_the_next_attempt(env: Env) -> None:
    async def scenario() -> None:
        await env.create(ack_timeout=SHORT)
        await env.produce("s", ("a", 2))
        async with env.groups.join("s", "g", "w", 10) as member:
            first = await take(member, 1)
            assert (first[0].key, first[0].attempt) == (("a", 1), 1)
            again = await take(member, 1)
            # The same record, the segment's next one still held back.
            assert (again[0].key, again[0].attempt) == (("a", 1), 2)
            # The first delivery's ack is still this member's (it holds the record).
            member.ack(positions(first))
            after = await take(member, 1)
            assert (after[0].key, after[0].attempt) == (("a", 2), 1)
            (stats,) = env.groups.stats()
            assert stats.redelivered == 1

    run(env, scenario)


def test_a_delivery_counts_once_sent_not_while_it_waits_in_the_outbox(env: Env) -> None:
    """The ack timeout and the attempt count start when a delivery leaves the
    member's outbox for its stream: a record waiting behind a slow stream is not
    timed out, delivered again nor parked unseen (before, it used its attempts
    up in the outbox and was parked as if it had been delivered max_attempts times)."""

    async def scenario() -> None:
        log = DurableLog(env.store)
        config = await env.create(ack_timeout=SHORT, max_attempts=2)
        async with one_sent_one_unsent(env) as (one, mine, two, unsent):
            # Two ack timeouts pass: the sent record is delivered again, then parked.
            (again,) = await take(one, 1)
            assert (again.position, again.attempt) == (mine.position, 2)
            await log.until(lambda: log.durable(mine.position))
            assert not log.durable(unsent)
            (got,) = await take(two, 1)
            assert (got.position, got.attempt) == (unsent, 1)
            two.ack([unsent])
            await log.until(lambda: log.durable(unsent))
        parked = await env.parked(config)
        assert [int(metadata_of(r)["streams-parked-position"]) for r in parked] == [mine.position]

    run(env, scenario)


def test_nack_retry_waits_for_the_back_off(env: Env) -> None:
    async def scenario() -> None:
        await env.create()
        await env.produce("s", ("a", 2), ("b", 1))
        async with env.groups.join("s", "g", "w", 10) as member:
            got = {g.record.segment: g for g in await take(member, 2)}
            nacked = time.monotonic()
            member.nack([got["a"].position], park=False, reason="busy")
            # Other segments go on meanwhile.
            member.ack([got["b"].position])
            again = await take(member, 1)
            waited = time.monotonic() - nacked
            assert (again[0].key, again[0].attempt) == (("a", 1), 2)
            assert waited >= dispatcher.RETRY_FIRST * 0.9
            member.nack(positions(again), park=False, reason="busy")
            nacked = time.monotonic()
            third = await take(member, 1)
            assert (third[0].key, third[0].attempt) == (("a", 1), 3)
            assert time.monotonic() - nacked >= 2 * dispatcher.RETRY_FIRST * 0.9

    run(env, scenario)


def test_retry_delay_doubles_up_to_five_seconds() -> None:
    assert [dispatcher.retry_delay(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.8]
    assert dispatcher.retry_delay(7) == 5.0
    assert dispatcher.retry_delay(1000) == 5.0


def test_parked_after_max_attempts_while_other_segments_flow(env: Env) -> None:
    async def scenario() -> None:
        log = DurableLog(env.store)
        config = await env.create(ack_timeout=SHORT, max_attempts=2)
        await env.produce("s", ("poison", 2), ("ok", 3))
        async with env.groups.join("s", "g", "w", 10) as member:
            ok: list[Got] = []
            poison: list[Got] = []
            while len(ok) < 3 or len(poison) < 2:
                for g in await some(member):
                    if g.record.segment == "ok":
                        ok.append(g)
                        member.ack([g.position])  # flows while the poison record times out
                    else:
                        poison.append(g)
            assert [g.attempt for g in poison] == [1, 2]
            assert [g.record.sequence for g in ok] == [1, 2, 3]
            # Parked once attempts are used up; the segment's next record follows.
            after = await take(member, 1)
            assert (after[0].key, after[0].attempt) == (("poison", 2), 1)
            assert log.durable(poison[0].position)
            (parked,) = await env.parked(config)
            assert payload_of(parked) == b"poison:0"
            assert parked.segment == "s/g" and parked.space == "$parked"
            meta = dict(metadata_of(parked))
            assert meta == {
                "streams-parked-space": "s",
                "streams-parked-segment": "poison",
                "streams-parked-sequence": "1",
                "streams-parked-position": str(poison[0].position),
                "streams-parked-attempts": "2",
                "streams-parked-reason": "",
            }
            state = await env.store.get_group("s", "g")
            assert state is not None and state.progress.parked == 1

    run(env, scenario)


def test_nack_park_keeps_the_record_and_itsmetadata_of(env: Env) -> None:
    async def scenario() -> None:
        config = await env.create()
        record = pb.RecordInput(
            payload=b"p", metadata={"k": "v", "streams-parked-reason": "forged"}
        )
        append = SegmentAppend("a", (record.SerializeToString(), b"\x0a\x01q"), None)
        await env.store.produce(Transaction("s", (append,), "", b""))
        async with env.groups.join("s", "g", "w", 10) as member:
            got = await take(member, 1)
            member.nack(positions(got), park=True, reason="bad input")
            # The next record comes only once the park (and the settlement) is durable.
            nxt = await take(member, 1)
            assert nxt[0].key == ("a", 2)
            (parked,) = await env.parked(config)
            meta = dict(metadata_of(parked))
            assert payload_of(parked) == b"p"
            assert meta["k"] == "v"
            assert meta["streams-parked-reason"] == "bad input"
            assert meta["streams-parked-attempts"] == "1"
            assert await env.acked_through() == 1

    run(env, scenario)


def test_a_leaving_member_s_records_go_to_others_at_once(env: Env) -> None:
    async def scenario() -> None:
        await env.create()
        await env.produce("s", ("a", 2), ("b", 2))
        async with env.groups.join("s", "g", "stays", 10) as stays:
            async with env.groups.join("s", "g", "leaves", 10) as leaves:
                mine = await take(stays, 1)
                theirs = await take(leaves, 1)
            # Left without acking: its record again, attempt + 1, and its segment.
            got = await take(stays, 1)
            assert (got[0].key, got[0].attempt) == (theirs[0].key, 2)
            live = env.groups.live("s", "g")
            assert live is not None and [m[2] for m in live.members] == [2]
            stays.ack(positions(mine + got))
            rest = await take(stays, 2)
            assert sorted(g.key for g in rest) == [("a", 2), ("b", 2)]

    run(env, scenario)


def test_last_member_leaving_keeps_what_was_acked(env: Env) -> None:
    async def scenario() -> None:
        await env.create()
        await env.produce("s", ("a", 2), ("b", 1))
        async with env.groups.join("s", "g", "w", 10) as member:
            got = {g.record.segment: g for g in await take(member, 2)}
            member.ack([got["a"].position])
        # The next join waits for the last settle write: acked stays acked;
        # the record delivered and not acked goes again as its 2nd attempt.
        async with env.groups.join("s", "g", "w", 10) as member:
            again = await take(member, 2)
            assert sorted((g.key, g.attempt) for g in again) == [(("a", 2), 1), (("b", 1), 2)]
        await env.groups.close()
        assert env.memory.responses == 0

    run(env, scenario)


def test_restart_resumes_from_durable_progress(env: Env) -> None:
    async def scenario() -> None:
        await env.create(ordering=Ordering.NONE)
        await env.produce("s", ("a", 6))
        async with env.groups.join("s", "g", "w", 10) as member:
            await take(member, 6)
            # Settled above a hole: 1, 2, 4, 6 (3 and 5 not).
            member.ack([1, 2, 4, 6])
        await env.restart()
        state = await env.store.get_group("s", "g")
        assert state is not None
        assert state.progress.acked_through == 2
        assert state.progress.settled == ((4, 4), (6, 6))
        async with env.groups.join("s", "g", "w", 10) as member:
            again = await take(member, 2)
            assert positions(again) == [3, 5]
            member.ack([3, 5])
            await env.produce("s", ("a", 1))
            assert positions(await take(member, 1)) == [7]

    run(env, scenario)


def test_a_failed_settle_write_delivers_the_records_again(env: Env) -> None:
    async def scenario() -> None:
        await env.create()
        await env.produce("s", ("a", 2))
        env.fail_settles(1)
        async with env.groups.join("s", "g", "w", 10) as member:
            got = await take(member, 1)
            member.ack(positions(got))
            again = await take(member, 1)
            assert (again[0].key, again[0].attempt) == (("a", 1), 2)
            member.ack(positions(again))
            assert (await take(member, 1))[0].key == ("a", 2)

    run(env, scenario)


def test_one_settle_write_at_a_time_takes_every_ack_meanwhile(env: Env) -> None:
    async def scenario() -> None:
        await env.create(ordering=Ordering.NONE)
        await env.produce("s", ("a", 50))
        settle = env.store.settle_group
        calls: list[int] = []
        entered, gate = asyncio.Event(), asyncio.Event()

        async def held(space, name, acked_through, settled, parked):  # type: ignore[no-untyped-def]
            calls.append(acked_through)
            entered.set()
            await asyncio.wait_for(gate.wait(), GUARD)
            return await settle(space, name, acked_through, settled, parked)

        env.store.settle_group = held  # type: ignore[method-assign]
        async with env.groups.join("s", "g", "w", 100) as member:
            got = await take(member, 50)
            member.ack([1])
            await entered.wait()
            for g in got[1:]:
                member.ack([g.position])
            assert calls == [1]
            gate.set()
            await env.groups.close()
        assert calls == [1, 50]
        assert await env.acked_through() == 50

    run(env, scenario)


def test_a_segment_moves_only_once_its_record_being_settled_is_durable(env: Env) -> None:
    async def scenario() -> None:
        await env.create()
        await env.produce("s", ("a", 2))
        settle = env.store.settle_group
        entered, gate = asyncio.Event(), asyncio.Event()

        async def held(*args, **kwargs):  # type: ignore[no-untyped-def]
            entered.set()
            await asyncio.wait_for(gate.wait(), GUARD)
            return await settle(*args, **kwargs)

        env.store.settle_group = held  # type: ignore[method-assign]
        leaving = contextlib.AsyncExitStack()
        leaves = await leaving.enter_async_context(env.groups.join("s", "g", "leaves", 10))
        got = await take(leaves, 1)
        async with env.groups.join("s", "g", "stays", 10) as stays:
            leaves.ack(positions(got))
            await entered.wait()
            # Leaves while its ack is being written: a:2 waits for that write.
            await leaving.aclose()
            live = env.groups.live("s", "g")
            assert live is not None and live.members[0][2:] == (0, 0)
            assert not stays.held
            gate.set()
            after = await take(stays, 1)
            assert (after[0].key, after[0].attempt) == (("a", 2), 1)

    run(env, scenario)


def test_a_group_deleted_while_its_dispatcher_starts_is_not_found(env: Env) -> None:
    async def scenario() -> None:
        await env.create()
        get_group = env.store.get_group
        entered, gate = asyncio.Event(), asyncio.Event()

        async def held(space: str, name: str):  # type: ignore[no-untyped-def]
            entered.set()
            await asyncio.wait_for(gate.wait(), GUARD)
            return await get_group(space, name)

        env.store.get_group = held  # type: ignore[method-assign]

        async def join() -> None:
            async with env.groups.join("s", "g", "w", 10):
                pass

        joining = asyncio.ensure_future(join())
        await entered.wait()
        env.groups.deleted("s", "g")
        gate.set()
        with pytest.raises(NotFound):
            await joining

    run(env, scenario)


def test_parks_are_written_at_most_max_records_per_produce_at_a_time(env: Env) -> None:
    async def scenario() -> None:
        log = DurableLog(env.store)
        config = await env.create(ordering=Ordering.NONE)
        await env.produce("s", ("a", 5))
        async with env.groups.join("s", "g", "w", 10) as member:
            got = await take(member, 5)
            member.nack(positions(got), park=True, reason="no")
            await log.until(lambda: log.through == 5)
        parked = await env.parked(config)
        assert sorted(int(metadata_of(r)["streams-parked-position"]) for r in parked) == [
            1,
            2,
            3,
            4,
            5,
        ]
        assert log.writes == 3

    run(env, scenario, Limits(max_records_per_produce=2))
