"""Consumer groups, deterministic edge cases over the wire (raw grpc.aio stubs):
poison records parked after max_attempts (by retry nacks, by timeouts, by a
park nack) with the right metadata while other segments keep flowing; a
member that leaves at a record's last attempt; attempts across a moment with
no member; acks listing positions the member does not hold; ownership spread
by GetGroup. The "findings" tests are F1 to F3 of the proof
(/work/wt/proof-findings.md), fixed on the server."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.group_checker import PARKED
from tests.support.group_wire import WireMember
from tests.support.process import ServerProcess

T = TypeVar("T")
WAIT = 15.0  # seconds for an event that should come at once


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp: Path = tmp_path_factory.mktemp("group-edges")
    (tmp / "data").mkdir()
    with ServerProcess(tmp / "data", tmp / "server.log") as server:
        server.start()
        yield server


def run(server: ServerProcess, test: Callable[[pb_grpc.StreamsServiceStub], Awaitable[T]]) -> T:
    async def main() -> T:
        async with grpc.aio.insecure_channel(server.target) as channel:
            return await asyncio.wait_for(test(pb_grpc.StreamsServiceStub(channel)), 60)

    return asyncio.run(main())


class Members:
    """Members whose deliveries all go to one queue, read by the test."""

    def __init__(self, stub: pb_grpc.StreamsServiceStub, space: str, group: str) -> None:
        self.stub, self.space, self.group = stub, space, group
        self.queue: asyncio.Queue[tuple[WireMember, pb.Delivery | None]] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []
        self.ended: list[str] = []

    async def join(self, name: str, max_in_flight: int = 0) -> WireMember:
        member = WireMember(self.stub, self.space, self.group, name, max_in_flight)
        await member.join()
        self.tasks.append(asyncio.ensure_future(self._pump(member)))
        return member

    async def _pump(self, member: WireMember) -> None:
        try:
            while (batch := await member.read()) is not None:
                for delivery in batch:
                    self.queue.put_nowait((member, delivery))
            self.ended.append(f"{member.join_request.member_name}: OK")
        except grpc.aio.AioRpcError as err:
            self.ended.append(f"{member.join_request.member_name}: {err.code()} {err.details()}")
        except asyncio.CancelledError:
            pass
        self.queue.put_nowait((member, None))

    async def next(self) -> tuple[WireMember, pb.Delivery]:
        """The next delivery to any member; fails when a stream the test did
        not end ends."""
        while True:
            member, delivery = await asyncio.wait_for(self.queue.get(), WAIT)
            if delivery is not None:
                return member, delivery
            assert member.killed, f"a stream ended: {self.ended}"

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()


@contextlib.asynccontextmanager
async def members(
    stub: pb_grpc.StreamsServiceStub, space: str, group: str
) -> AsyncIterator[Members]:
    m = Members(stub, space, group)
    try:
        yield m
    finally:
        m.close()


async def produce(
    stub: pb_grpc.StreamsServiceStub,
    space: str,
    segment: str,
    payloads: list[bytes],
    metadata: dict[str, str] | None = None,
) -> list[int]:
    """Appends ``payloads`` to ``segment``; returns their positions."""
    records = [pb.RecordInput(payload=p, metadata=metadata or {}) for p in payloads]
    response = await stub.Produce(
        pb.ProduceRequest(space=space, writes=[pb.SegmentWrite(segment=segment, records=records)])
    )
    return list(range(response.first_position, response.last_position + 1))


async def create_group(
    stub: pb_grpc.StreamsServiceStub, space: str, name: str, **fields: Any
) -> None:
    timeout = fields.pop("ack_timeout", None)
    group = pb.Group(name=name, space=space, **fields)
    if timeout is not None:
        group.ack_timeout.FromMilliseconds(int(timeout * 1000))
    await stub.CreateGroup(pb.CreateGroupRequest(group=group))


async def info(stub: pb_grpc.StreamsServiceStub, space: str, group: str) -> pb.GroupInfo:
    return (await stub.GetGroup(pb.GetGroupRequest(space=space, group=group))).info


async def until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    """Polls ``check`` until it holds (an event seen through GetGroup)."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def parked(stub: pb_grpc.StreamsServiceStub, space: str, segment: str) -> list[pb.Record]:
    out: list[pb.Record] = []
    try:
        async for response in stub.Consume(pb.ConsumeRequest(space=space, segment=segment)):
            out.extend(response.records)
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND:
            raise
    return out


def check_parked(
    record: pb.Record, origin_space: str, origin: pb.Delivery, attempts: int, reason: str
) -> None:
    """The parked record: payload and metadata as they were, plus its origin."""
    o = origin.record
    want = {k: v for k, v in o.metadata.items() if not k.startswith(PARKED)}
    want.update(
        {
            PARKED + "space": origin_space,
            PARKED + "segment": o.segment,
            PARKED + "sequence": str(o.sequence),
            PARKED + "position": str(o.position),
            PARKED + "attempts": str(attempts),
            PARKED + "reason": reason,
        }
    )
    assert dict(record.metadata) == want
    assert record.payload == o.payload


# -- poison records ----------------------------------------------------------------


def test_poison_parked_after_max_attempts_while_other_segments_flow(server: ServerProcess) -> None:
    """A record nacked (retry) at every delivery is parked at its 3rd (max_attempts),
    with its origin and the last nack's reason, each retry after its back-off;
    meanwhile the other segments' records are delivered and settled, and its
    own segment waits behind it."""
    space, group = "poison-retry", "g"

    async def test(stub: pb_grpc.StreamsServiceStub) -> None:
        await create_group(stub, space, group, max_attempts=3)
        meta = {"k": "v", PARKED + "reason": "forged", PARKED + "attempts": "99"}
        [poison_at, *after] = await produce(stub, space, "poison", [b"poison", b"p2", b"p3"], meta)
        async with members(stub, space, group) as m:
            worker = await m.join("w", max_in_flight=100)
            _, poison = await m.next()
            assert (poison.record.position, poison.attempt) == (poison_at, 1)
            # While the poison record is in flight, 30 other segments flow.
            others = set()
            for i in range(30):
                others.update(await produce(stub, space, f"ok{i:02}", [b"a", b"b", b"c"]))
            got: set[int] = set()
            while got != others:
                _, d = await m.next()
                assert d.record.segment != "poison", f"{d} delivered behind its unsettled head"
                got.add(d.record.position)
                await worker.ack([d.record.position])
            await until(
                "the other segments settled",
                lambda: _covers(stub, space, group, others),
            )
            # Now the poison: retry nacks until its attempts are used up,
            # each redelivery no sooner than its back-off (100 ms, 200 ms)
            # after the nack was sent.
            loop = asyncio.get_running_loop()
            nacked_at = 0.0
            for attempt, reason in ((1, "first"), (2, "second"), (3, "third é")):
                if attempt > 1:
                    _, poison = await m.next()
                    waited = loop.time() - nacked_at
                    assert waited >= 0.1 * 2 ** (attempt - 2), (attempt, waited)
                assert (poison.record.position, poison.attempt) == (poison_at, attempt)
                nacked_at = loop.time()
                await worker.nack([poison_at], pb.NACK_ACTION_RETRY, reason)
            # Parked: its segment goes on.
            _, d = await m.next()
            assert (d.record.position, d.attempt) == (after[0], 1)
            await worker.ack([d.record.position])
            _, d = await m.next()
            assert d.record.position == after[1]
            await worker.ack([d.record.position])
            last = max(others)
            await until("everything settled", lambda: _settled(stub, space, group, last, 1))
        dead = await parked(stub, "$parked", f"{space}/{group}")
        assert len(dead) == 1
        check_parked(dead[0], space, poison, 3, "third é")

    run(server, test)


def test_poison_parked_by_timeouts_to_a_named_dead_letter_segment(server: ServerProcess) -> None:
    """A record never answered is delivered again after each ack_timeout and
    parked once its max_attempts deliveries timed out (reason empty: no nack);
    to the group's own dead-letter space and segment. The member's other
    records flow meanwhile."""
    space, group = "poison-timeout", "g"

    async def test(stub: pb_grpc.StreamsServiceStub) -> None:
        await create_group(
            stub,
            space,
            group,
            max_attempts=2,
            ack_timeout=0.3,
            dead_letter_space="dlq",
            dead_letter_segment="poisoned",
        )
        [poison_at] = await produce(stub, space, "poison", [b"stuck"])
        ok = await produce(stub, space, "ok", [b"1", b"2", b"3", b"4"])
        async with members(stub, space, group) as m:
            worker = await m.join("w")
            attempts: list[int] = []
            acked: list[int] = []
            last = None
            while len(acked) < len(ok) or len(attempts) < 2:
                _, d = await m.next()
                if d.record.position == poison_at:
                    attempts.append(d.attempt)
                    last = d
                else:
                    acked.append(d.record.position)
                    await worker.ack([d.record.position])
            assert attempts == [1, 2]
            assert acked == ok
            await until("the poison parked", lambda: _settled(stub, space, group, ok[-1], 1))
        assert last is not None
        dead = await parked(stub, "dlq", "poisoned")
        assert len(dead) == 1
        check_parked(dead[0], space, last, 2, "")

    run(server, test)


def test_park_nack_parks_at_once(server: ServerProcess) -> None:
    space, group = "poison-park", "g"

    async def test(stub: pb_grpc.StreamsServiceStub) -> None:
        await create_group(stub, space, group)
        [p, q] = await produce(stub, space, "s", [b"x", b"y"], {"a": "b"})
        async with members(stub, space, group) as m:
            worker = await m.join("w")
            _, d = await m.next()
            assert d.record.position == p
            await worker.nack([p], pb.NACK_ACTION_PARK, "no good")
            _, d2 = await m.next()
            assert (d2.record.position, d2.attempt) == (q, 1)
            await worker.ack([q])
            await until("settled", lambda: _settled(stub, space, group, q, 1))
        dead = await parked(stub, "$parked", f"{space}/{group}")
        assert len(dead) == 1
        check_parked(dead[0], space, d, 1, "no good")

    run(server, test)


async def _covers(
    stub: pb_grpc.StreamsServiceStub, space: str, group: str, positions: set[int]
) -> bool:
    """GetGroup's in_flight counts only what is not settled: here, the poison."""
    i = await info(stub, space, group)
    return i.in_flight == 1 and i.last_position >= max(positions)


async def _settled(
    stub: pb_grpc.StreamsServiceStub, space: str, group: str, last: int, parked_count: int
) -> bool:
    i = await info(stub, space, group)
    return i.acked_through == last and i.parked == parked_count and i.in_flight == 0


# -- findings -----------------------------------------------------------------------


def test_leaving_at_the_last_attempt_parks(server: ServerProcess) -> None:
    """A record whose every delivery ends with its member's stream (a record
    that crashes its workers) is parked after max_attempts deliveries, never
    delivered with attempt max_attempts + 1; another member stays joined
    throughout, so the group's dispatcher never stops."""
    space, group = "last-attempt", "g"

    async def test(stub: pb_grpc.StreamsServiceStub) -> None:
        await create_group(stub, space, group, max_attempts=2)
        async with members(stub, space, group) as m:
            await m.join("a")
            await m.join("b")
            [p, q] = await produce(stub, space, "s", [b"kills its worker", b"next"])
            holder, d = await m.next()
            assert (d.record.position, d.attempt) == (p, 1)
            holder.kill()
            await m.join("c")
            holder, d = await m.next()
            assert (d.record.position, d.attempt) == (p, 2)
            holder.kill()
            await m.join("d")
            holder, d = await m.next()
            assert (d.record.position, d.attempt) == (q, 1), (
                f"after max_attempts (2) deliveries the record must be parked, got {d}"
            )

    run(server, test)


def test_attempts_count_on_across_a_group_with_no_member(server: ServerProcess) -> None:
    """A single worker that dies on a record (a restart loop): the record comes
    back with attempt 2, 3, ... and is parked after max_attempts, never
    delivered with attempt 1 again."""
    space, group = "no-member", "g"

    async def test(stub: pb_grpc.StreamsServiceStub) -> None:
        await create_group(stub, space, group, max_attempts=5)
        [p] = await produce(stub, space, "s", [b"kills its worker"])
        async with members(stub, space, group) as m:
            seen = []
            for i in range(2):
                worker = await m.join(f"w{i}")
                _, d = await m.next()
                seen.append((d.record.position, d.attempt))
                worker.kill()

                async def gone() -> bool:
                    return not (await info(stub, space, group)).members

                await until("the member gone", gone)
            assert seen == [(p, 1), (p, 2)]

    run(server, test)


def test_ack_listing_more_positions_than_max_in_flight_is_ignored(
    server: ServerProcess,
) -> None:
    """An ack naming records the member does not hold (here one never written
    besides the one it holds) acks what it holds and ignores the rest; the
    stream goes on, even with max_in_flight 1."""
    space, group = "many-positions", "g"

    async def test(stub: pb_grpc.StreamsServiceStub) -> None:
        await create_group(stub, space, group)
        [p] = await produce(stub, space, "s", [b"x"])
        async with members(stub, space, group) as m:
            worker = await m.join("w", max_in_flight=1)
            _, d = await m.next()
            assert d.record.position == p
            await worker.ack([p, p + 1000])
            [q] = await produce(stub, space, "t", [b"y"])
            _, d = await m.next()
            assert d.record.position == q, "the stream ended instead"
            await worker.ack([q])
            await until("settled", lambda: _settled(stub, space, group, q, 0))

    run(server, test)


def test_answers_for_another_members_record_are_ignored(server: ServerProcess) -> None:
    """Member b acks, nacks and parks the record member a holds: nothing
    happens to it (still in flight at a, not parked, not delivered again);
    a's ack settles it and the segment goes on."""
    space, group = "not-yours", "g"

    async def test(stub: pb_grpc.StreamsServiceStub) -> None:
        await create_group(stub, space, group)
        async with members(stub, space, group) as m:
            a = await m.join("a", 10)
            [p, q] = await produce(stub, space, "s", [b"1", b"2"])
            holder, d = await m.next()
            assert holder is a and d.record.position == p
            b = WireMember(stub, space, group, "b", 10)
            await b.join()
            await b.ack([p])
            await b.nack([p], pb.NACK_ACTION_PARK, "not mine")
            await b.nack([p], pb.NACK_ACTION_RETRY, "not mine")
            # b leaves: its stream ends once the server has read all of them.
            await b.leave()
            assert await b.read() is None
            now = await info(stub, space, group)
            assert (now.acked_through, now.in_flight, now.parked) == (0, 1, 0), now
            assert [(x.name, x.in_flight) for x in now.members] == [("a", 1)]
            await a.ack([p])
            holder, d = await m.next()
            assert (holder, d.record.position, d.attempt) == (a, q, 1)
            await a.ack([q])
            await until("settled", lambda: _settled(stub, space, group, q, 0))
        assert await parked(stub, "$parked", f"{space}/{group}") == []

    run(server, test)


def test_a_slow_reader_never_has_records_parked_it_never_received(server: ServerProcess) -> None:
    """A member that reads its stream slowly (big records, HTTP/2 flow control
    holds the server back): its records may time out and be parked, but only
    ones that reached it; a record parked after max_attempts "deliveries"
    that never left the server was never delivered."""
    space, group = "slow-reader", "g"
    records = 25

    async def test(stub: pb_grpc.StreamsServiceStub) -> None:
        await create_group(stub, space, group, max_attempts=2, ack_timeout=0.3)
        for i in range(records):
            await produce(stub, space, f"s{i}", [b"x" * 200_000])
        slow = WireMember(stub, space, group, "slow", records)
        await slow.join()

        # The scenario itself, not a wait for an event: a member that reads
        # nothing for 2 s (over 6 ack timeouts) while the server has 5 MB for it.
        await asyncio.sleep(2.0)
        seen: set[int] = set()

        async def read_and_ack() -> None:
            while batch := await slow.read():
                for d in batch:
                    seen.add(d.record.position)
                    await slow.ack([d.record.position])

        reader = asyncio.ensure_future(read_and_ack())

        async def all_settled() -> bool:
            return (await info(stub, space, group)).acked_through == records

        await until("everything acked or parked", all_settled)
        slow.kill()
        await asyncio.gather(reader, return_exceptions=True)
        dead = await parked(stub, "$parked", f"{space}/{group}")
        never_received = {int(r.metadata[PARKED + "position"]) for r in dead} - seen
        assert not never_received, f"parked, never sent to any member: {sorted(never_received)}"

    run(server, test)


def test_two_groups_of_one_space_are_independent(server: ServerProcess) -> None:
    """Two groups read the same space: one acks everything, the other parks
    everything; each gets every record once, each has its own progress and
    dead-letter segment, and deleting one leaves the other as it was."""
    space = "two-groups"

    async def test(stub: pb_grpc.StreamsServiceStub) -> None:
        await create_group(stub, space, "acks")
        await create_group(stub, space, "parks")
        positions = []
        for i in range(5):
            positions += await produce(stub, space, f"s{i}", [b"1", b"2", b"3"])
        async with members(stub, space, "acks") as ma, members(stub, space, "parks") as mp:
            acker = await ma.join("acker", 100)
            parker = await mp.join("parker", 100)
            got: dict[str, list[int]] = {"acks": [], "parks": []}

            async def consume(name: str, m: Members) -> None:
                while len(got[name]) < len(positions):
                    member, d = await m.next()
                    got[name].append(d.record.position)
                    if member is acker:
                        await acker.ack([d.record.position])
                    else:
                        await parker.nack([d.record.position], pb.NACK_ACTION_PARK, "p")

            await asyncio.gather(consume("acks", ma), consume("parks", mp))
            assert sorted(got["acks"]) == sorted(got["parks"]) == positions
            last = positions[-1]
            await until("acks settled", lambda: _settled(stub, space, "acks", last, 0))
            await until("parks settled", lambda: _settled(stub, space, "parks", last, 15))
        assert await parked(stub, "$parked", f"{space}/acks") == []
        dead = await parked(stub, "$parked", f"{space}/parks")
        assert sorted(int(r.metadata[PARKED + "position"]) for r in dead) == positions
        await stub.DeleteGroup(pb.DeleteGroupRequest(space=space, group="acks"))
        left = await info(stub, space, "parks")
        assert (left.acked_through, left.parked) == (positions[-1], 15)

    run(server, test)


def test_trim_under_a_live_group(server: ServerProcess) -> None:
    """Records trimmed while a member holds the first of them: the group
    never gets stuck; what it delivers comes in sequence order, and once the
    member acks what it gets, acked_through is the last position."""
    space, group = "trimmed-live", "g"

    async def test(stub: pb_grpc.StreamsServiceStub) -> None:
        await create_group(stub, space, group)
        positions = await produce(stub, space, "s", [str(i).encode() for i in range(10)])
        async with members(stub, space, group) as m:
            worker = await m.join("w", 1)
            _, d = await m.next()
            assert d.record.position == positions[0]
            await stub.Trim(pb.TrimRequest(space=space, before_offset=positions[5]))
            await worker.ack([d.record.position])
            sequences = [d.record.sequence]
            while sequences[-1] < 10:
                _, d = await m.next()
                sequences.append(d.record.sequence)
                await worker.ack([d.record.position])
            assert sequences == sorted(set(sequences)), sequences
            assert sequences[-5:] == [6, 7, 8, 9, 10], sequences
            await until("settled", lambda: _settled(stub, space, group, positions[-1], 0))

    run(server, test)


# -- GetGroup against a model --------------------------------------------------------


def test_segments_spread_over_members_and_get_group_counts(server: ServerProcess) -> None:
    """Two members, 10 new segments: each new segment goes to the member with
    the fewest, so 5 each; one record of each segment in flight (10); after
    the acks nothing in flight and acked_through the last position."""
    space, group = "spread", "g"

    async def test(stub: pb_grpc.StreamsServiceStub) -> None:
        await create_group(stub, space, group)
        async with members(stub, space, group) as m:
            a = await m.join("a")
            b = await m.join("b")
            positions = []
            for i in range(10):
                positions += await produce(stub, space, f"s{i}", [b"1", b"2"])
            got = [await m.next() for _ in range(10)]
            assert sorted(d.record.segment for _, d in got) == [f"s{i}" for i in range(10)]
            assert all(d.record.sequence == 1 for _, d in got)
            now = await info(stub, space, group)
            assert now.in_flight == 10 and now.acked_through == 0
            assert now.last_position == positions[-1]
            by_id = {x.id: x for x in now.members}
            assert {x.name for x in now.members} == {"a", "b"}
            for member in (a, b):
                mine = [d for w, d in got if w is member]
                assert len(mine) == 5, [
                    (w.join_request.member_name, d.record.segment) for w, d in got
                ]
                assert (by_id[member.member_id].segments, by_id[member.member_id].in_flight) == (
                    5,
                    5,
                )
            for member, d in got:
                await member.ack([d.record.position])
            for _ in range(10):
                member, d = await m.next()
                assert d.record.sequence == 2
                await member.ack([d.record.position])
            await until("settled", lambda: _settled(stub, space, group, positions[-1], 0))

    run(server, test)


# -- the group or the server going away ----------------------------------------------


def test_delete_group_under_parks_ends_members_and_parks_nothing_more(
    server: ServerProcess,
) -> None:
    """DeleteGroup while two members park every record they get: both streams
    end with NOT_FOUND, and once DeleteGroup returned nothing more reaches the
    dead-letter segment (a settle of a deleted group writes nothing). The
    group created again starts afresh: every record delivered with attempt 1."""
    space, group = "deleted-under-load", "g"

    async def test(stub: pb_grpc.StreamsServiceStub) -> None:
        await create_group(stub, space, group)
        positions = []
        for i in range(20):
            positions += await produce(stub, space, f"s{i}", [b"a", b"b", b"c"])
        dead_segment = f"{space}/{group}"
        async with members(stub, space, group) as m:
            workers = [await m.join("a", 5), await m.join("b", 5)]
            for _ in range(10):
                member, d = await m.next()
                await member.nack([d.record.position], pb.NACK_ACTION_PARK, "x")

            async def ten_parked() -> bool:
                return (await info(stub, space, group)).parked >= 10

            await until("10 parked", ten_parked)
            parker = asyncio.ensure_future(_park_everything(m))
            await stub.DeleteGroup(pb.DeleteGroupRequest(space=space, group=group))
            count = len(await parked(stub, "$parked", dead_segment))
            for worker in workers:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    while await worker.read() is not None:
                        pass
                assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value
            parker.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await info(stub, space, group)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert len(await parked(stub, "$parked", dead_segment)) == count >= 10
        # Created again: a new group, from the first record.
        await create_group(stub, space, group)
        async with members(stub, space, group) as m:
            worker = await m.join("c", 100)
            got: list[int] = []
            while len(got) < 20:
                _, d = await m.next()
                assert d.attempt == 1
                got.append(d.record.sequence)
                await worker.ack([d.record.position])
            assert sorted(got) == [1] * 20

    run(server, test)


async def _park_everything(m: Members) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        while True:
            member, d = await m.next()
            await member.nack([d.record.position], pb.NACK_ACTION_PARK, "x")


def test_sigterm_ends_members_unavailable_and_acks_hold(tmp_path: Path) -> None:
    """SIGTERM: every member's stream ends with UNAVAILABLE and the server
    exits 0; after a start on the same data the records acked before (as
    GetGroup showed) never come again, every other one does, attempt 1."""
    space, group = "sigterm", "g"
    data = tmp_path / "data"
    data.mkdir()
    with ServerProcess(data, tmp_path / "server.log") as server:
        server.start()

        async def before(stub: pb_grpc.StreamsServiceStub) -> tuple[list[int], list[int]]:
            await create_group(stub, space, group)
            positions = []
            for i in range(10):
                positions += await produce(stub, space, f"s{i}", [b"a"])
            async with members(stub, space, group) as m:
                worker = await m.join("w", 100)
                acked = []
                for _ in range(10):
                    _, d = await m.next()
                    if d.record.segment < "s5":
                        acked.append(d.record.position)
                await worker.ack(acked)

                async def settled() -> bool:
                    return (await info(stub, space, group)).in_flight == 10 - len(acked)

                await until("the acks settled", settled)
                server.send(signal.SIGTERM)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    while await worker.read() is not None:
                        pass
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
            return positions, acked

        positions, acked = run(server, before)
        assert server.wait() == 0
        server.start()

        async def after(stub: pb_grpc.StreamsServiceStub) -> None:
            async with members(stub, space, group) as m:
                worker = await m.join("w2", 100)
                got: set[int] = set()
                while len(got) < len(positions) - len(acked):
                    _, d = await m.next()
                    assert d.record.position not in acked, f"acked, delivered again: {d}"
                    assert d.attempt == 1
                    got.add(d.record.position)
                    await worker.ack([d.record.position])
                assert got == set(positions) - set(acked)

        run(server, after)
