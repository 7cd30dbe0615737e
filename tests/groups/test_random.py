"""Randomized runs of the dispatcher on a real store: members join and leave,
ack, nack (retry and park) and let deliveries time out, while records keep
coming; every delivery is checked as it arrives, and the end state at the end.

Checked: a segment's record is delivered only once the one before it is
durably settled (PER_SEGMENT); a durably settled record is never delivered
again; in the end every record is settled, once, and each parked record is in
the dead-letter segment exactly once. (tests/reliability has the long runs
over gRPC; this one is quick and runs in-process.)
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from streams import codec
from streams.groups import Member
from streams.model import Ordering, Target

from .conftest import DurableLog, Env, Got, metadata_of, run

SEGMENTS = 12
BATCHES = 40


@pytest.mark.parametrize("ordering", [Ordering.PER_SEGMENT, Ordering.NONE])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_members_acks_nacks_and_timeouts(env: Env, seed: int, ordering: Ordering) -> None:
    rng = random.Random(seed)

    async def scenario() -> None:
        log = DurableLog(env.store)
        config = await env.create(ordering=ordering, ack_timeout=0.02, max_attempts=3)
        produced = 0
        held: dict[Member, dict[int, Got]] = {}
        exits: dict[Member, contextlib.AsyncExitStack] = {}
        last_delivered: dict[str, tuple[int, int]] = {}

        async def join() -> None:
            stack = contextlib.AsyncExitStack()
            member = await stack.enter_async_context(
                env.groups.join("s", "g", f"m{len(exits)}", rng.choice([1, 3, 50]))
            )
            exits[member] = stack
            held[member] = {}

        async def leave(member: Member) -> None:
            await exits.pop(member).aclose()
            del held[member]

        def receive(member: Member) -> None:
            for stored, attempt in member._take(1 << 20):
                g = Got(codec.parse_stored(stored), attempt)
                assert not log.durable(g.position), f"{g.key} delivered after it settled"
                segment, sequence = g.key
                if ordering is Ordering.PER_SEGMENT and sequence > 1:
                    before = last_delivered[segment]
                    assert before[0] in (sequence - 1, sequence), (g.key, before)
                    if before[0] == sequence - 1:
                        assert log.durable(before[1]), f"{g.key} before {segment}:{before[0]}"
                last_delivered[segment] = (sequence, g.position)
                held[member][g.position] = g

        await join()
        for step in range(600):
            if produced < BATCHES and rng.random() < 0.15:
                count = rng.randint(1, 4)
                segments = rng.sample(range(SEGMENTS), rng.randint(1, 3))
                await env.produce("s", *((f"seg{i}", count) for i in segments))
                produced += 1
            action = rng.random()
            members = list(held)
            if action < 0.05 and len(members) < 4:
                await join()
            elif action < 0.08 and len(members) > 1:
                await leave(rng.choice(members))
            for member in list(held):
                receive(member)
                mine = held[member]
                for position in list(mine):
                    roll = rng.random()
                    if roll < 0.5:
                        member.ack([position])
                    elif roll < 0.55:
                        member.nack([position], park=False, reason="retry")
                    elif roll < 0.57:
                        member.nack([position], park=True, reason="poison")
                    else:
                        continue  # left to time out, or acked later
                    del mine[position]
            await asyncio.sleep(0.001 if step % 10 == 0 else 0)
        # Drain: one member acks everything until all is settled.
        for member in list(held)[1:]:
            await leave(member)
        (member,) = held
        last = await env.store.last_offset(Target("s"))

        async def drain() -> None:
            while not (log.through >= last or all(log.durable(p) for p in range(1, last + 1))):
                receive(member)
                member.ack(list(held[member]))
                held[member].clear()
                await asyncio.sleep(0.001)

        await asyncio.wait_for(drain(), 20)
        await leave(member)
        await env.groups.close()
        state = await env.store.get_group("s", "g")
        assert state is not None
        assert state.progress.acked_through == last and not state.progress.settled
        parked = await env.parked(config)
        origins = [int(metadata_of(r)["streams-parked-position"]) for r in parked]
        assert len(origins) == len(set(origins)) == state.progress.parked
        assert not log.twice, f"settled again: {log.twice}"

    run(env, scenario)
