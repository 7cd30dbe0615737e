"""A member's acks and nacks as Subscribe validates them, then as the
dispatcher applies them: positions it does not hold are ignored, whatever
their number up to ``max_group_settle_positions`` (finding F1 of the proof)."""

from __future__ import annotations

import pytest

from streams import validation
from streams.errors import InvalidArgument
from streams.limits import Limits
from streams.v1 import streams_pb2 as pb

from .conftest import Env, positions, run, take


def ack(*numbers: int) -> pb.SubscribeRequest:
    return pb.SubscribeRequest(ack=pb.SubscribeAck(positions=numbers))


def nack(*numbers: int) -> pb.SubscribeRequest:
    return pb.SubscribeRequest(nack=pb.SubscribeNack(positions=numbers))


@pytest.mark.parametrize("message", [ack, nack])
def test_more_positions_than_max_in_flight_are_taken(message: type) -> None:
    """A member with max_in_flight 1 may rightly name two records: one whose
    delivery timed out (its slot freed) and the one delivered since."""
    settle = validation.settle(message(5, 9, 1000), Limits())
    assert settle.positions == (5, 9, 1000)


@pytest.mark.parametrize(("message", "kind"), [(ack, "ack"), (nack, "nack")])
def test_positions_over_max_group_settle_positions_are_refused(message: type, kind: str) -> None:
    lim = Limits(max_group_settle_positions=4)
    assert validation.settle(message(*range(1, 5)), lim).positions == (1, 2, 3, 4)
    with pytest.raises(InvalidArgument) as refused:
        validation.settle(message(*range(1, 6)), lim)
    for word in (f"{kind}.positions", "5 positions", "max_group_settle_positions (4)"):
        assert word in str(refused.value)


def test_the_default_bound_is_over_the_largest_max_in_flight() -> None:
    lim = Limits()
    assert lim.max_group_settle_positions == 20_000 > validation.MAX_MAX_IN_FLIGHT
    validation.settle(ack(*range(1, 20_001)), lim)
    with pytest.raises(InvalidArgument):
        validation.settle(ack(*range(1, 20_002)), lim)


def test_an_ack_naming_records_not_held_settles_those_held(env: Env) -> None:
    """Through validation into the dispatcher: the held record is acked, the
    others ignored, and the member goes on."""

    async def scenario() -> None:
        await env.create()
        await env.produce("s", ("a", 2))
        async with env.groups.join("s", "g", "w", 1) as member:
            first = await take(member, 1)
            settle = validation.settle(ack(*positions(first), 1000, 2000), Limits())
            member.ack(settle.positions)
            after = await take(member, 1)
            assert (after[0].key, after[0].attempt) == (("a", 2), 1)

    run(env, scenario)
