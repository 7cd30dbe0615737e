"""The consumer-group core both clients share (streams/client/_common.py), on the
protobuf contract alone: request building, response conversion, and the
outgoing side of a Subscribe stream (acks batched, dead after a re-join)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from streams import GroupNotFound, Message, NotFound, Ordering, Record, RetryPolicy, Unavailable
from streams.client import _common as c
from streams.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from streams.v1 import streams_pb2 as pb


def _group(**kwargs: object) -> pb.Group:
    settings: dict[str, object] = {
        "ordering": Ordering.PER_SEGMENT, "from_offset": None, "from_time": None,
        "from_end": False, "ack_timeout": None, "max_attempts": None,
        "dead_letter_space": None, "dead_letter_segment": None,
    }  # fmt: skip
    settings.update(kwargs)
    return c.group_message("orders", "billing", **settings)  # type: ignore[arg-type]


def test_unset_settings_stay_zero_for_the_server_to_resolve() -> None:
    msg = _group()
    assert (msg.space, msg.name, msg.ordering) == ("orders", "billing", pb.ORDERING_PER_SEGMENT)
    assert msg.WhichOneof("start") is None
    assert not msg.HasField("ack_timeout")
    assert (msg.max_attempts, msg.dead_letter_space, msg.dead_letter_segment) == (0, "", "")


def test_settings_and_each_start_reach_the_wire() -> None:
    msg = _group(ordering=Ordering.NONE, from_offset=7, ack_timeout=1.5, max_attempts=3,
                 dead_letter_space="dead", dead_letter_segment="billing")  # fmt: skip
    assert msg.ordering == pb.ORDERING_NONE
    assert (msg.WhichOneof("start"), msg.from_offset) == ("from_offset", 7)
    assert msg.ack_timeout.ToTimedelta() == timedelta(seconds=1.5)
    assert (msg.max_attempts, msg.dead_letter_space, msg.dead_letter_segment) == (
        3, "dead", "billing")  # fmt: skip
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert _group(from_time=when).from_timestamp.ToDatetime(UTC) == when
    assert _group(from_end=True).from_end is True
    assert _group(ack_timeout=timedelta(minutes=2)).ack_timeout.seconds == 120


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"from_offset": 1, "from_end": True}, ValueError),
        ({"from_offset": 1, "from_time": 5.0}, ValueError),
        ({"ordering": "none"}, TypeError),
        ({"ack_timeout": "30s"}, TypeError),
    ],
)
def test_bad_settings_raise_before_any_call(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        _group(**kwargs)


def test_a_group_and_its_info_convert_from_the_wire() -> None:
    msg = _group(ordering=Ordering.NONE, from_end=True, ack_timeout=30, max_attempts=5,
                 dead_letter_space="$parked", dead_letter_segment="orders/billing")  # fmt: skip
    group = c.to_group(msg)
    assert group == c.Group("orders", "billing", Ordering.NONE, None, None, True,
                            timedelta(seconds=30), 5, "$parked", "orders/billing")  # fmt: skip
    # An unspecified ordering is per segment (the contract's default).
    msg.ordering = pb.ORDERING_UNSPECIFIED
    assert c.to_group(msg).ordering is Ordering.PER_SEGMENT
    info = c.to_group_info(pb.GetGroupResponse(group=msg, info=pb.GroupInfo(
        acked_through=40, last_position=45, in_flight=3, parked=1,
        members=[pb.GroupMember(id="m1", name="w", segments=2, in_flight=3)])))  # fmt: skip
    assert (info.acked_through, info.lag, info.in_flight, info.parked) == (40, 5, 3, 1)
    assert info.members == (c.GroupMember("m1", "w", 2, 3),)


def test_not_found_on_a_group_call_is_group_not_found() -> None:
    error = c.group_error(NotFound("group 'billing' of space 'orders' not found"),
                          "orders", "billing")  # fmt: skip
    assert isinstance(error, GroupNotFound) and isinstance(error, NotFound)
    assert (error.space, error.group) == ("orders", "billing")
    assert "billing" in str(error)
    other = InvalidArgument("x")
    assert c.group_error(other, "orders", "billing") is other


def _delivery(position: int, segment: str = "a", attempt: int = 1) -> pb.Delivery:
    record = pb.Record(space="orders", segment=segment, sequence=position, position=position,
                       payload=b"p%d" % position, metadata={"k": "v"})  # fmt: skip
    return pb.Delivery(record=record, attempt=attempt)


def _membership() -> c.Membership:
    return c.Membership("orders", "billing", "w1", 10, RetryPolicy())


def test_join_is_the_first_request_and_deliveries_become_messages() -> None:
    member = _membership()
    assert member.join.WhichOneof("kind") == "join"
    assert (member.join.join.space, member.join.join.group, member.join.join.member_name,
            member.join.join.max_in_flight) == ("orders", "billing", "w1", 10)  # fmt: skip
    link = c.Link(lambda: None)
    assert member.messages(pb.SubscribeResponse(joined=pb.SubscribeJoined(member_id="m7")),
                           link) == []  # fmt: skip
    assert (member.member_id, member.joins) == ("m7", 1)
    response = pb.SubscribeResponse(deliveries=pb.SubscribeDeliveries(
        deliveries=[_delivery(1), _delivery(2, "b", attempt=3)]))  # fmt: skip
    first, second = member.messages(response, link)
    assert isinstance(first, Message) and isinstance(first, Record)  # produce() takes it
    assert (first.position, first.segment, first.payload, first.metadata, first.attempt) == (
        1, "a", b"p1", {"k": "v"}, 1)  # fmt: skip
    assert (second.segment, second.attempt) == ("b", 3)


def test_default_member_name_is_host_and_pid() -> None:
    member = c.Membership("orders", "billing", None, 0, RetryPolicy())
    assert member.join.join.member_name == c.default_member_name()
    assert member.join.join.member_name.endswith(f"/{__import__('os').getpid()}")
    with pytest.raises(ValueError, match="max_in_flight"):
        c.Membership("orders", "billing", None, -1, RetryPolicy())


def test_answers_pending_together_go_in_one_message_per_kind() -> None:
    wakes: list[int] = []
    link = c.Link(lambda: wakes.append(1))
    member = _membership()
    messages = member.messages(pb.SubscribeResponse(deliveries=pb.SubscribeDeliveries(
        deliveries=[_delivery(p) for p in range(1, 7)])), link)  # fmt: skip
    assert link.take() == []  # nothing queued yet
    assert messages[0].ack() and messages[1].ack()
    assert messages[2].nack() and messages[3].nack(reason="later")
    assert messages[4].nack(park=True, reason="poison") and messages[5].nack(True, "poison")
    # One wake for the first answer: the writer takes whatever piled up since.
    assert wakes == [1]
    requests = link.take()
    assert requests is not None
    assert [r.WhichOneof("kind") for r in requests] == ["ack", "nack", "nack", "nack"]
    assert list(requests[0].ack.positions) == [1, 2]
    nacks = {(r.nack.action, r.nack.reason): list(r.nack.positions) for r in requests[1:]}
    assert nacks == {
        (pb.NACK_ACTION_RETRY, ""): [3],
        (pb.NACK_ACTION_RETRY, "later"): [4],
        (pb.NACK_ACTION_PARK, "poison"): [5, 6],
    }
    assert link.take() == []
    messages[0].ack()
    assert wakes == [1, 1]  # empty again: the next answer wakes the writer


def _sent(requests: list[pb.SubscribeRequest] | None) -> list[tuple[str, int, str, list[int]]]:
    """Each message as (kind, nack action, reason, positions)."""
    assert requests is not None
    out = []
    for r in requests:
        kind = r.WhichOneof("kind")
        if kind == "ack":
            out.append(("ack", 0, "", list(r.ack.positions)))
        else:
            out.append(("nack", r.nack.action, r.nack.reason, list(r.nack.positions)))
    return out


def test_a_position_answered_twice_is_sent_once_with_its_first_answer() -> None:
    # Finding 3: [p, p] (or p in an ack and a nack) outnumbered max_in_flight 1,
    # and the server ended the whole subscription INVALID_ARGUMENT.
    link = c.Link(lambda: None)
    messages = _membership().messages(pb.SubscribeResponse(deliveries=pb.SubscribeDeliveries(
        deliveries=[_delivery(p) for p in range(1, 5)])), link)  # fmt: skip
    one, two, three, four = messages
    assert one.ack() and one.ack()
    assert two.ack() and two.nack(park=True, reason="late")  # the ack counts
    assert three.nack(reason="first") and three.ack() and three.nack(True, "second")
    assert four.nack(park=True, reason="poison") and four.nack(park=True, reason="poison")
    assert _sent(link.take()) == [
        ("ack", 0, "", [1, 2]),
        ("nack", pb.NACK_ACTION_RETRY, "first", [3]),
        ("nack", pb.NACK_ACTION_PARK, "poison", [4]),
    ]
    # Sent: a later answer goes in a message of its own (the server ignores an
    # ack for a record this member no longer holds).
    assert one.ack()
    assert _sent(link.take()) == [("ack", 0, "", [1])]


def test_a_long_list_goes_in_messages_of_at_most_10000_positions() -> None:
    link = c.Link(lambda: None)
    for position in range(1, 25_001):
        link.ack(position)
    for position in range(25_001, 35_002):
        link.nack(position, park=False, reason="")
    sent = _sent(link.take())
    assert c.MAX_SETTLE_POSITIONS == 10_000
    assert [(kind, len(positions)) for kind, _, _, positions in sent] == [
        ("ack", 10_000), ("ack", 10_000), ("ack", 5_000), ("nack", 10_000), ("nack", 1),
    ]  # fmt: skip
    assert [p for *_, positions in sent for p in positions] == list(range(1, 35_002))


def test_messages_of_a_broken_stream_are_dead() -> None:
    link = c.Link(lambda: None)
    (message,) = _membership().messages(pb.SubscribeResponse(
        deliveries=pb.SubscribeDeliveries(deliveries=[_delivery(1)])), link)  # fmt: skip
    message.ack()
    link.close(flush=False)
    # What was queued is dropped with the stream; later answers do nothing.
    assert link.take() is None
    assert message.ack() is False and message.nack(park=True) is False
    assert not link.open


def test_closing_flushes_what_is_queued_then_ends_the_writer() -> None:
    link = c.Link(lambda: None)
    (message,) = _membership().messages(pb.SubscribeResponse(
        deliveries=pb.SubscribeDeliveries(deliveries=[_delivery(9)])), link)  # fmt: skip
    message.ack()
    link.close(flush=True)
    assert message.nack() is False  # closed: no new answers
    requests = link.take()
    assert requests is not None and list(requests[0].ack.positions) == [9]
    assert link.take() is None
    link.close(flush=False)
    assert link.take() is None


def test_nack_reason_must_be_text() -> None:
    response = pb.SubscribeResponse(deliveries=pb.SubscribeDeliveries(deliveries=[_delivery(1)]))
    (message,) = _membership().messages(response, c.Link(lambda: None))
    with pytest.raises(TypeError, match="reason"):
        message.nack(reason=b"bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reason", "sent"),
    [
        ("x" * 10_000, "x" * 4096),
        ("a" + "é" * 3000, "a" + "é" * 2047),  # 4,095 bytes: the next é would be cut in two
        ("€" * 2000, "€" * 1365),  # 3 bytes each: 4,095
        ("ab" + "🦀" * 1100, "ab" + "🦀" * 1023),  # 4 bytes each: 4,094
        ("é" * 2048, "é" * 2048),  # exactly 4,096 bytes: as given
        ("bad \ud800 text", "bad ? text"),  # a lone surrogate cannot go on the wire
    ],
)
def test_a_long_nack_reason_is_cut_to_4096_bytes_at_a_character(reason: str, sent: str) -> None:
    # Finding 2: a reason over the server's 4 KiB metadata-value limit ended the
    # whole subscription INVALID_ARGUMENT, and the record was never parked.
    link = c.Link(lambda: None)
    response = pb.SubscribeResponse(deliveries=pb.SubscribeDeliveries(deliveries=[_delivery(1)]))
    (message,) = _membership().messages(response, link)
    assert message.nack(park=True, reason=reason)
    requests = link.take()
    assert requests is not None
    assert requests[0].nack.reason == sent
    assert len(requests[0].SerializeToString()) < 4200


def test_answers_from_many_threads_are_all_sent_once() -> None:
    ready = threading.Event()
    link = c.Link(ready.set)
    positions = range(1, 2001)
    messages = _membership().messages(pb.SubscribeResponse(deliveries=pb.SubscribeDeliveries(
        deliveries=[_delivery(p) for p in positions])), link)  # fmt: skip
    sent: list[int] = []

    def writer() -> None:  # as Subscription._requests does it
        while True:
            batch = link.take()
            if batch is None:
                return
            for request in batch:
                sent.extend(request.ack.positions)
            if not batch:
                ready.wait()
                ready.clear()

    thread = threading.Thread(target=writer)
    thread.start()
    parts = [messages[i::4] for i in range(4)]
    workers = [threading.Thread(target=lambda part=part: [m.ack() for m in part])
               for part in parts]  # fmt: skip
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    link.close(flush=True)
    thread.join(10)
    assert sorted(sent) == list(positions)


def test_rejoin_waits_on_disconnects_and_a_full_server_only() -> None:
    member = c.Membership("orders", "billing", "w", 0, RetryPolicy(initial_backoff=0.25,
                                                                   jitter=0))  # fmt: skip
    assert member.rejoin_delay(Unavailable("server stopping")) == 0.25
    # Finding 12: a server momentarily full ended the worker for good.
    assert member.rejoin_delay(ResourceExhausted("max_inflight_request_bytes")) == 0.5
    assert member.rejoin_delay(member.error(NotFound("gone"))) is None
    assert member.rejoin_delay(InvalidArgument("join.max_in_flight")) is None
    assert member.rejoin_delay(DeadlineExceeded("deadline")) is None
