"""Consumer groups, Subscribe (contract additions, "Consumer groups"): the
join and its refusals, deliveries in order per segment, acks, nacks (retry
with attempt + 1, park with the metadata), ack_timeout, a member leaving,
DeleteGroup ending its members' streams, GetGroup's live numbers, and resume
after a restart.

Every wait is for an event (a delivery, the stream's end, a number GetGroup
reports), never a fixed time."""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from streams.v1 import streams_pb2 as pb
from tests.support.process import ServerProcess
from tests.support.waiting import wait_until

from .helpers import Stub, assert_status, consume_all, produce, produce_writes, unique, write
from .launch import Launcher

INVALID = grpc.StatusCode.INVALID_ARGUMENT
WAIT = 10.0


# The backends that build groups (jetstream answers UNIMPLEMENTED, checked in
# test_groups.py): no case is collected only to be skipped.
BACKENDS = ("rocksdb", "memory")


class Subscriber:
    """One Subscribe stream over the sync stub: requests go through a queue
    (``None`` half-closes), responses are read by a thread into ``inbox``
    (the stream's final RpcError, or None for OK, last)."""

    def __init__(
        self,
        stub: Stub,
        space: str,
        group: str = "g",
        name: str = "",
        max_in_flight: int = 0,
        metadata: Any = None,
    ) -> None:
        self.requests: queue.Queue[pb.SubscribeRequest | None] = queue.Queue()
        join = pb.SubscribeJoin(
            space=space, group=group, member_name=name, max_in_flight=max_in_flight
        )
        self.requests.put(pb.SubscribeRequest(join=join))
        self.call = stub.Subscribe(iter(self.requests.get, None), metadata=metadata, timeout=120)
        self.inbox: queue.Queue[pb.SubscribeResponse | grpc.RpcError | None] = queue.Queue()
        self._ended: list[grpc.RpcError | None] = []  # the end, once seen
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        first = self._next()
        assert first.WhichOneof("kind") == "joined", first
        self.id = first.joined.member_id

    def _read(self) -> None:
        try:
            for response in self.call:
                self.inbox.put(response)
        except grpc.RpcError as err:
            self.inbox.put(err)
            return
        self.inbox.put(None)

    def _next(self) -> pb.SubscribeResponse:
        got = self.inbox.get(timeout=WAIT)
        if not isinstance(got, pb.SubscribeResponse):
            self._ended.append(got)
            raise AssertionError(f"the stream ended: {got!r}")
        return got

    def take(self, count: int) -> list[pb.Delivery]:
        """The next ``count`` deliveries (from as many responses as they come in)."""
        out: list[pb.Delivery] = []
        while len(out) < count:
            response = self._next()
            assert response.WhichOneof("kind") == "deliveries", response
            assert response.deliveries.deliveries, "a deliveries response without deliveries"
            out.extend(response.deliveries.deliveries)
        assert len(out) == count, f"{len(out) - count} more deliveries than expected"
        return out

    def ack(self, *positions: int) -> None:
        self.requests.put(pb.SubscribeRequest(ack=pb.SubscribeAck(positions=positions)))

    def nack(self, *positions: int, park: bool = False, reason: str = "") -> None:
        action = pb.NACK_ACTION_PARK if park else pb.NACK_ACTION_RETRY
        nack = pb.SubscribeNack(positions=positions, action=action, reason=reason)
        self.requests.put(pb.SubscribeRequest(nack=nack))

    def send(self, request: pb.SubscribeRequest) -> None:
        self.requests.put(request)

    def end(self) -> grpc.RpcError | None:
        """Waits for the stream's end: its error, or None (OK); deliveries
        still coming are skipped."""
        while not self._ended:
            got = self.inbox.get(timeout=WAIT)
            if not isinstance(got, pb.SubscribeResponse):
                self._ended.append(got)
        return self._ended[0]

    def half_close(self) -> None:
        self.requests.put(None)

    def cancel(self) -> None:
        self.call.cancel()
        self.requests.put(None)


@pytest.fixture
def members() -> Iterator[list[Subscriber]]:
    """Subscribers a test opens (``members.append``), cancelled at its end."""
    opened: list[Subscriber] = []
    yield opened
    for member in opened:
        member.cancel()


def group(stub: Stub, space: str, name: str = "g", **fields: Any) -> pb.Group:
    request = pb.CreateGroupRequest(group=pb.Group(name=name, space=space, **fields))
    return stub.CreateGroup(request).group


def info(stub: Stub, space: str, name: str = "g") -> pb.GroupInfo:
    return stub.GetGroup(pb.GetGroupRequest(space=space, group=name)).info


def where(delivery: pb.Delivery) -> tuple[str, int, int]:
    return delivery.record.segment, delivery.record.sequence, delivery.attempt


def join(
    stub: Stub, members: list[Subscriber], space: str, name: str = "", **kw: Any
) -> Subscriber:
    member = Subscriber(stub, space, name=name, **kw)
    members.append(member)
    return member


# -- the join ----------------------------------------------------------------------


def test_join_answers_joined_with_a_member_id(
    stub: Stub, space: str, members: list[Subscriber]
) -> None:
    group(stub, space)
    one = join(stub, members, space, "worker-1")
    two = join(stub, members, space, "")
    assert one.id and two.id and one.id != two.id
    found = wait_until(lambda: len(info(stub, space).members) == 2 and info(stub, space))
    assert sorted((m.id, m.name) for m in found.members) == sorted(
        [(one.id, "worker-1"), (two.id, "")]
    )


def test_join_of_an_unknown_group_is_not_found(stub: Stub, space: str) -> None:
    first = pb.SubscribeRequest(join=pb.SubscribeJoin(space=space, group="nope"))
    assert_status(
        lambda: stub.Subscribe(iter([first]), timeout=WAIT),
        grpc.StatusCode.NOT_FOUND,
        "'nope'",
    )


@pytest.mark.parametrize(
    "first",
    [
        pb.SubscribeRequest(ack=pb.SubscribeAck(positions=[1])),
        pb.SubscribeRequest(nack=pb.SubscribeNack(positions=[1])),
        pb.SubscribeRequest(),
    ],
    ids=["ack", "nack", "empty"],
)
def test_a_first_message_other_than_join_is_invalid(stub: Stub, first: Any) -> None:
    assert_status(lambda: stub.Subscribe(iter([first]), timeout=WAIT), INVALID, "join")


def test_a_stream_without_messages_is_invalid(stub: Stub) -> None:
    assert_status(lambda: stub.Subscribe(iter([]), timeout=WAIT), INVALID, "Subscribe")


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"max_in_flight": 10_001}, ("join.max_in_flight", "10001", "10000")),
        ({"member_name": "é" * 128}, ("join.member_name", "256 bytes")),
        ({"member_name": "a\x1b[2J"}, ("join.member_name", "U+001B", "index 1")),
        ({"member_name": "a\x7f"}, ("join.member_name", "U+007F")),
        ({"space": "bad\x00"}, ("join.space",)),
        ({"space": ""}, ("join.space", "empty")),
        ({"group": ""}, ("join.group", "empty")),
        ({"group": "g" * 256}, ("join.group", "256 bytes")),
    ],
)
def test_a_bad_join_is_invalid(
    stub: Stub, space: str, fields: dict[str, Any], words: tuple[str, ...]
) -> None:
    group(stub, space)
    first = pb.SubscribeRequest(join=pb.SubscribeJoin(**{"space": space, "group": "g", **fields}))
    assert_status(lambda: stub.Subscribe(iter([first]), timeout=WAIT), INVALID, *words)


def test_the_join_limits_themselves_are_allowed(
    stub: Stub, space: str, members: list[Subscriber]
) -> None:
    group(stub, space)
    member = join(stub, members, space, "é" * 127 + "a", max_in_flight=10_000)
    produce(stub, space, "a", [b"1"])
    assert where(member.take(1)[0]) == ("a", 1, 1)


def test_members_are_limited(tmp_path: Path, launch: Launcher) -> None:
    with launch(tmp_path, "--max-group-members", "2") as server:
        stub, space = server.stub, unique("space")
        group(stub, space)
        opened: list[Subscriber] = []
        try:
            join(stub, opened, space)
            join(stub, opened, space)
            first = pb.SubscribeRequest(join=pb.SubscribeJoin(space=space, group="g"))
            assert_status(
                lambda: stub.Subscribe(iter([first]), timeout=WAIT),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "max_group_members",
            )
            opened.pop().cancel()
            wait_until(lambda: len(info(stub, space).members) == 1, WAIT)
            join(stub, opened, space)
        finally:
            for member in opened:
                member.cancel()


# -- deliveries, acks, nacks ----------------------------------------------------------


def test_a_segment_is_delivered_in_order_one_record_at_a_time(
    stub: Stub, space: str, members: list[Subscriber]
) -> None:
    produce(stub, space, "a", [b"a1", b"a2", b"a3"])
    produce(stub, space, "b", [b"b1", b"b2"])
    group(stub, space)
    member = join(stub, members, space, max_in_flight=10)
    first = member.take(2)
    assert sorted(where(d) for d in first) == [("a", 1, 1), ("b", 1, 1)]
    assert all(d.record.space == space for d in first)
    by_segment = {d.record.segment: d for d in first}
    assert by_segment["a"].record.payload == b"a1" and by_segment["a"].record.position == 1
    # The next record of a segment waits for the previous one to settle.
    assert info(stub, space).in_flight == 2
    member.ack(by_segment["b"].record.position)
    assert where(member.take(1)[0]) == ("b", 2, 1)
    for sequence in (2, 3):
        member.ack(by_segment["a"].record.position + sequence - 2)
        got = member.take(1)[0]
        assert where(got) == ("a", sequence, 1) and got.record.payload == b"a%d" % sequence
    member.ack(3, 5)
    done = wait_until(lambda: info(stub, space).acked_through == 5 and info(stub, space))
    assert (done.in_flight, done.last_position, done.parked) == (0, 5, 0)


def test_records_produced_after_the_join_are_delivered(
    stub: Stub, space: str, members: list[Subscriber]
) -> None:
    group(stub, space)
    member = join(stub, members, space)
    sent = produce(stub, space, "live", [b"x"])
    got = member.take(1)[0]
    assert got.record.position == sent.last_position and got.record.payload == b"x"


def test_the_group_starts_where_it_was_created(
    stub: Stub, space: str, members: list[Subscriber]
) -> None:
    produce(stub, space, "a", [b"1", b"2", b"3"])
    group(stub, space, from_offset=3)
    member = join(stub, members, space)
    assert where(member.take(1)[0]) == ("a", 3, 1)


def test_ordering_none_delivers_a_segment_in_parallel(
    stub: Stub, space: str, members: list[Subscriber]
) -> None:
    produce(stub, space, "a", [b"1", b"2", b"3", b"4"])
    group(stub, space, ordering=pb.ORDERING_NONE)
    member = join(stub, members, space, max_in_flight=3)
    got = member.take(3)
    assert sorted(d.record.sequence for d in got) == [1, 2, 3]
    member.ack(2)
    assert member.take(1)[0].record.sequence == 4


def test_an_ack_of_what_the_member_does_not_hold_is_ignored(
    stub: Stub, space: str, members: list[Subscriber]
) -> None:
    produce(stub, space, "a", [b"1", b"2"])
    group(stub, space)
    member = join(stub, members, space)
    assert where(member.take(1)[0]) == ("a", 1, 1)
    member.ack(2, 99, 10**15)  # waiting, never written, far past the end
    member.ack(1)
    assert where(member.take(1)[0]) == ("a", 2, 1)
    assert info(stub, space).acked_through == 1


def test_a_nack_retries_with_the_next_attempt(
    stub: Stub, space: str, members: list[Subscriber]
) -> None:
    produce(stub, space, "a", [b"1", b"2"])
    group(stub, space)
    member = join(stub, members, space)
    assert where(member.take(1)[0]) == ("a", 1, 1)
    member.nack(1, reason="try again")
    assert where(member.take(1)[0]) == ("a", 1, 2)
    member.ack(1)
    assert where(member.take(1)[0]) == ("a", 2, 1)


def test_a_nack_with_park_appends_to_the_dead_letter_segment(
    stub: Stub, space: str, members: list[Subscriber]
) -> None:
    produce_writes(
        stub,
        space,
        [
            write(
                "a",
                [pb.RecordInput(payload=b"p1", metadata={"k": "v", "streams-parked-reason": "x"})],
            ),
            write("b", [b"b1"]),
        ],
    )
    group(stub, space)
    member = join(stub, members, space)
    first = {d.record.segment: d for d in member.take(2)}
    member.nack(first["a"].record.position, park=True, reason="poison ☠")
    member.ack(first["b"].record.position)
    done = wait_until(lambda: info(stub, space).acked_through == 2 and info(stub, space))
    assert done.parked == 1
    parked = consume_all(stub, "$parked", f"{space}/g")
    assert len(parked) == 1
    record = parked[0]
    assert record.payload == b"p1"
    assert dict(record.metadata) == {
        "k": "v",
        "streams-parked-space": space,
        "streams-parked-segment": "a",
        "streams-parked-sequence": "1",
        "streams-parked-position": "1",
        "streams-parked-attempts": "1",
        "streams-parked-reason": "poison ☠",
    }


def test_a_nack_reason_over_the_limit_is_cut_not_refused(
    stub: Stub, space: str, members: list[Subscriber]
) -> None:
    produce(stub, space, "a", [b"poison", b"next"])
    group(stub, space)
    member = join(stub, members, space)
    assert member.take(1)[0].record.position == 1
    # 4,095 + 3 bytes: the limit (4,096) falls inside the last character, which goes whole.
    member.nack(1, park=True, reason="r" * 4095 + "☠" + "x" * 10_000)
    assert where(member.take(1)[0]) == ("a", 2, 1), "the stream went on"
    parked = consume_all(stub, "$parked", f"{space}/g")
    assert parked[0].metadata["streams-parked-reason"] == "r" * 4095
    # Cut at the limit exactly when it falls between characters.
    member.nack(2, park=True, reason="é" * 3000)
    wait_until(lambda: info(stub, space).parked == 2)
    parked = consume_all(stub, "$parked", f"{space}/g")
    assert parked[1].metadata["streams-parked-reason"] == "é" * 2048


def test_a_record_is_parked_after_max_attempts(
    stub: Stub, space: str, members: list[Subscriber]
) -> None:
    produce(stub, space, "a", [b"poison", b"next"])
    produce(stub, space, "b", [b"other"])
    group(stub, space, max_attempts=2, dead_letter_space="dead", dead_letter_segment="letters")
    member = join(stub, members, space)
    first = {d.record.segment: d for d in member.take(2)}
    # A poison record does not block other segments.
    member.ack(first["b"].record.position)
    member.nack(1, reason="first")
    assert where(member.take(1)[0]) == ("a", 1, 2)
    member.nack(1, reason="second")
    assert where(member.take(1)[0]) == ("a", 2, 1)
    parked = consume_all(stub, "dead", "letters")
    assert [r.payload for r in parked] == [b"poison"]
    assert parked[0].metadata["streams-parked-attempts"] == "2"
    assert parked[0].metadata["streams-parked-reason"] == "second"
    assert info(stub, space).parked == 1


def test_an_unsettled_delivery_comes_again_after_ack_timeout(
    stub: Stub, space: str, members: list[Subscriber]
) -> None:
    produce(stub, space, "a", [b"1"])
    group(stub, space, ack_timeout=Duration(nanos=200_000_000))
    member = join(stub, members, space)
    assert where(member.take(1)[0]) == ("a", 1, 1)
    assert where(member.take(1)[0]) == ("a", 1, 2)
    member.ack(1)
    wait_until(lambda: info(stub, space).acked_through == 1)


# -- members leaving -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["cancel", "half_close"])
def test_a_member_leaving_moves_its_records_to_another_at_once(
    stub: Stub, space: str, members: list[Subscriber], how: str
) -> None:
    produce(stub, space, "a", [b"1", b"2"])
    group(stub, space)
    leaving = join(stub, members, space, "leaving")
    assert where(leaving.take(1)[0]) == ("a", 1, 1)
    staying = join(stub, members, space, "staying")
    wait_until(lambda: len(info(stub, space).members) == 2)
    if how == "cancel":
        leaving.cancel()
    else:
        leaving.half_close()
        assert leaving.end() is None  # the client ending its side ends the stream OK
    assert where(staying.take(1)[0]) == ("a", 1, 2)
    staying.ack(1)
    assert where(staying.take(1)[0]) == ("a", 2, 1)


def test_getgroup_reports_the_live_numbers(
    stub: Stub, space: str, members: list[Subscriber]
) -> None:
    produce(stub, space, "a", [b"1", b"2"])
    produce(stub, space, "b", [b"3"])
    produce(stub, space, "c", [b"4"])
    group(stub, space)
    one = join(stub, members, space, "one", max_in_flight=5)
    held = {d.record.segment: d.record.position for d in one.take(3)}
    one.ack(held["c"])
    found = wait_until(lambda: info(stub, space).in_flight == 2 and info(stub, space))
    assert found.acked_through == 0  # position 1 (a's first) is in flight
    assert (found.last_position, found.parked) == (4, 0)
    (member,) = found.members
    assert (member.id, member.name, member.segments, member.in_flight) == (one.id, "one", 2, 2)
    one.ack(held["a"])
    one.nack(held["b"], park=True)
    assert one.take(1)[0].record.sequence == 2
    found = wait_until(lambda: info(stub, space).parked == 1 and info(stub, space))
    # 1 acked, 2 (a's second) in flight, 3 parked, 4 acked.
    assert found.acked_through == 1 and found.in_flight == 1


def test_delete_group_ends_its_members_with_not_found(
    stub: Stub, space: str, members: list[Subscriber]
) -> None:
    group(stub, space)
    one = join(stub, members, space)
    two = join(stub, members, space)
    stub.DeleteGroup(pb.DeleteGroupRequest(space=space, group="g"))
    for member in (one, two):
        ended = member.end()
        assert isinstance(ended, grpc.RpcError)
        assert ended.code() == grpc.StatusCode.NOT_FOUND, ended.details()


def test_delete_space_ends_its_groups_members_with_not_found(
    stub: Stub, space: str, members: list[Subscriber]
) -> None:
    group(stub, space)
    group(stub, space, "h")
    produce(stub, space, "a", [b"1"])
    one = join(stub, members, space)
    assert one.take(1)[0].attempt == 1
    two = join(stub, members, space, group="h")
    stub.DeleteSpace(pb.DeleteSpaceRequest(space=space))
    for member in (one, two):
        ended = member.end()
        assert isinstance(ended, grpc.RpcError)
        assert ended.code() == grpc.StatusCode.NOT_FOUND, ended.details()
    # Created again: a new group, no attempt of the old one kept.
    group(stub, space)
    produce(stub, space, "a", [b"2"])
    again = join(stub, members, space)
    delivery = again.take(1)[0]
    assert (delivery.record.position, delivery.attempt) == (2, 1)


def test_a_later_join_ends_the_stream(stub: Stub, space: str, members: list[Subscriber]) -> None:
    group(stub, space)
    member = join(stub, members, space)
    member.send(pb.SubscribeRequest(join=pb.SubscribeJoin(space=space, group="g")))
    ended = member.end()
    assert isinstance(ended, grpc.RpcError) and ended.code() == INVALID
    assert "join" in (ended.details() or "")


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (pb.SubscribeRequest(nack=pb.SubscribeNack(positions=[1], action=9)), ("nack.action", "9")),
        (
            pb.SubscribeRequest(ack=pb.SubscribeAck(positions=range(1, 20_002))),
            ("ack.positions", "20001", "max_group_settle_positions (20000)"),
        ),
        (
            pb.SubscribeRequest(nack=pb.SubscribeNack(positions=range(1, 20_002))),
            ("nack.positions", "20001", "max_group_settle_positions (20000)"),
        ),
        (pb.SubscribeRequest(), ("kind", "empty")),
    ],
    ids=["nack action", "ack over the settle limit", "nack over the settle limit", "empty"],
)
def test_a_bad_message_after_the_join_ends_the_stream(
    stub: Stub, space: str, members: list[Subscriber], request_: Any, words: tuple[str, ...]
) -> None:
    produce(stub, space, "a", [b"1"])
    group(stub, space)
    member = join(stub, members, space, max_in_flight=10)
    member.take(1)
    other = join(stub, members, space)
    member.send(request_)
    ended = member.end()
    assert isinstance(ended, grpc.RpcError) and ended.code() == INVALID, ended
    for word in words:
        assert word in (ended.details() or ""), ended.details()
    # The member left: its record goes to the other member at once.
    assert where(other.take(1)[0]) == ("a", 1, 2)


def test_an_ack_of_more_positions_than_max_in_flight_is_taken(
    stub: Stub, space: str, members: list[Subscriber]
) -> None:
    produce(stub, space, "a", [b"1", b"2", b"3"])
    group(stub, space)
    member = join(stub, members, space, max_in_flight=1)
    assert where(member.take(1)[0]) == ("a", 1, 1)
    # Held: 1. The rest (repeated, not yet delivered, unknown) is ignored.
    member.ack(1, 1, 2, 3, *range(100, 20_096))  # 20,000: the most one message holds
    assert where(member.take(1)[0]) == ("a", 2, 1), "the stream went on"
    assert info(stub, space).acked_through == 1
    member.nack(2, 2, 3, 7, reason="again")  # a nack, too: 2 comes again, 3 stays unsent
    assert where(member.take(1)[0]) == ("a", 2, 2)
    member.ack(2)
    assert where(member.take(1)[0]) == ("a", 3, 1)


@pytest.mark.durable
def test_delivery_resumes_after_a_restart(
    fresh_server: ServerProcess, members: list[Subscriber]
) -> None:
    stub, space = fresh_server.stub, unique("space")
    produce(stub, space, "a", [b"1", b"2", b"3"])
    produce(stub, space, "b", [b"4"])
    group(stub, space)
    member = join(stub, members, space, max_in_flight=10)
    got = {d.record.segment: d.record.position for d in member.take(2)}
    member.ack(got["a"])
    assert where(member.take(1)[0]) == ("a", 2, 1)
    wait_until(lambda: info(stub, space).acked_through == 1)
    fresh_server.restart()
    stub = fresh_server.stub
    assert info(stub, space).acked_through == 1
    again = join(stub, members, space, max_in_flight=10)
    # Everything not settled comes again; the acked record never does.
    assert sorted(where(d)[:2] for d in again.take(2)) == [("a", 2), ("b", 1)]


def test_shutdown_ends_members_with_unavailable(
    fresh_server: ServerProcess, members: list[Subscriber]
) -> None:
    stub, space = fresh_server.stub, unique("space")
    group(stub, space)
    member = join(stub, members, space)
    fresh_server.send(signal.SIGTERM)
    ended = member.end()
    assert isinstance(ended, grpc.RpcError)
    assert ended.code() == grpc.StatusCode.UNAVAILABLE, ended.details()
    assert fresh_server.wait() == 0


def test_deliveries_are_cut_to_fit_a_response(
    stub: Stub, space: str, members: list[Subscriber]
) -> None:
    record = b"x" * (100 * 1024)
    for _ in range(4):
        produce(stub, space, "a", [record] * 6)
    group(stub, space, ordering=pb.ORDERING_NONE)
    member = join(stub, members, space, max_in_flight=24)
    got: list[pb.Delivery] = []
    responses = 0
    while len(got) < 24:
        response = member._next()
        # --max-response-bytes (1 MiB) cuts them: 2.4 MiB in three or more responses.
        assert response.ByteSize() <= 1024 * 1024
        got += response.deliveries.deliveries
        responses += 1
    assert responses >= 3
    assert sorted(d.record.position for d in got) == list(range(1, 25))
    assert all(d.record.payload == record and d.attempt == 1 for d in got)
