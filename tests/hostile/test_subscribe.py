"""Hand-built bytes on Subscribe, the one bidirectional RPC: garbage after
the join, huge ack lists, unknown fields, known fields of the wrong wire type,
floods of acks. Whatever comes, the answer is a client error naming what is
wrong (never INTERNAL), the member leaves (its records go to the next member),
the request bytes each message held are given back, and the server serves on."""

from __future__ import annotations

import dataclasses
import queue
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from streams.limits import Limits
from streams.v1 import streams_pb2 as pb
from tests.support.waiting import wait_until

from ..conftest import InProcessServer
from .support import CLIENT_ERRORS, SERVICE
from .wire import LEN, VARINT, field, length_delimited, tag, varint

LIMITS = Limits()
WAIT = 10.0


class RawStream:
    """A Subscribe whose messages are bytes as given; responses parsed."""

    def __init__(self, channel: grpc.Channel, first: bytes | None) -> None:
        self.requests: queue.Queue[bytes | None] = queue.Queue()
        if first is not None:  # None: no message until the test sends one
            self.requests.put(first)
        method = channel.stream_stream(
            SERVICE + "Subscribe",
            request_serializer=None,
            response_deserializer=pb.SubscribeResponse.FromString,
        )
        self.call = method(iter(self.requests.get, None), timeout=60)
        self.inbox: queue.Queue[pb.SubscribeResponse | grpc.RpcError | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.inbox.put(response)
        except grpc.RpcError as err:
            self.inbox.put(err)
            return
        self.inbox.put(None)

    def send(self, data: bytes) -> None:
        self.requests.put(data)

    def next(self) -> pb.SubscribeResponse:
        got = self.inbox.get(timeout=WAIT)
        assert isinstance(got, pb.SubscribeResponse), got
        return got

    def end(self) -> grpc.RpcError | None:
        while True:
            got = self.inbox.get(timeout=WAIT)
            if not isinstance(got, pb.SubscribeResponse):
                return got

    def close(self) -> None:
        self.call.cancel()
        self.requests.put(None)


@pytest.fixture
def space(server: InProcessServer) -> str:
    """A space of one record with a group `g` of its own."""
    name = f"sub-{uuid.uuid4().hex[:12]}"
    write = pb.SegmentWrite(segment="a", records=[pb.RecordInput(payload=b"x")])
    server.stub.Produce(pb.ProduceRequest(space=name, writes=[write]))
    server.stub.CreateGroup(pb.CreateGroupRequest(group=pb.Group(name="g", space=name)))
    return name


@pytest.fixture
def streams(server: InProcessServer) -> Iterator[list[RawStream]]:
    opened: list[RawStream] = []
    yield opened
    for stream in opened:
        stream.close()


def join_bytes(space: str, extra: bytes = b"", max_in_flight: int = 0) -> bytes:
    join = pb.SubscribeJoin(space=space, group="g", max_in_flight=max_in_flight)
    return length_delimited(1, join.SerializeToString() + extra)


def joined(server: InProcessServer, streams: list[RawStream], first: bytes) -> RawStream:
    stream = RawStream(server.channel, first)
    streams.append(stream)
    assert stream.next().WhichOneof("kind") == "joined"
    return stream


def requests_in_flight(server: InProcessServer) -> int:
    return server.server._service._requests.used  # type: ignore[union-attr]


def open_streams(server: InProcessServer) -> int:
    return server.server._service._streams  # type: ignore[union-attr]


def assert_refused(stream: RawStream, *words: str) -> None:
    ended = stream.end()
    assert isinstance(ended, grpc.RpcError), ended
    assert ended.code() in CLIENT_ERRORS, (ended.code(), ended.details())
    assert ended.code() is grpc.StatusCode.INVALID_ARGUMENT, ended.details()
    for word in words:
        assert word in (ended.details() or ""), ended.details()


def assert_redelivered(other: RawStream, space: str, server: InProcessServer) -> None:
    """The refused member left: the record it held goes to the other member."""
    delivery = other.next().deliveries.deliveries[0]
    assert (delivery.record.space, delivery.attempt) == (space, 2)
    # Only the open stream's join is still counted (a call's first request is, until it ends).
    held = len(join_bytes(space))
    wait_until(lambda: requests_in_flight(server) == held, WAIT, "request bytes given back")


GARBAGE = {
    "bad varint": b"\xff" * 11,
    "cut length": tag(2, LEN) + b"\x10abc",
    "bad UTF-8 in a string": length_delimited(3, length_delimited(3, b"\xff")),
    "end group alone": tag(7, 4),
}


@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_after_the_join_ends_the_stream(
    server: InProcessServer, streams: list[RawStream], space: str, garbage: str
) -> None:
    stream = joined(server, streams, join_bytes(space))
    stream.next()  # the record
    other = joined(server, streams, join_bytes(space))
    stream.send(GARBAGE[garbage])
    assert_refused(stream, "SubscribeRequest")
    assert_redelivered(other, space, server)


@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_as_the_first_message_is_refused(
    server: InProcessServer, streams: list[RawStream], garbage: str
) -> None:
    stream = RawStream(server.channel, GARBAGE[garbage])
    streams.append(stream)
    assert_refused(stream, "SubscribeRequest")


def test_a_huge_ack_list_is_refused_unread(
    server: InProcessServer, streams: list[RawStream], space: str
) -> None:
    stream = joined(server, streams, join_bytes(space))
    stream.next()
    other = joined(server, streams, join_bytes(space))
    # 2 million positions in one packed list: 10 MiB, under the request limit.
    packed = b"".join(varint(p) for p in range(10**12, 10**12 + 2_000_000))
    stream.send(length_delimited(2, length_delimited(1, packed)))
    assert_refused(stream, "ack.positions", "2000000", "max_in_flight")
    assert_redelivered(other, space, server)


def test_an_ack_over_the_request_limit_is_resource_exhausted(
    server: InProcessServer, streams: list[RawStream], space: str
) -> None:
    stream = joined(server, streams, join_bytes(space))
    stream.next()
    other = joined(server, streams, join_bytes(space))
    stream.send(length_delimited(2, length_delimited(1, b"\x01" * LIMITS.max_request_bytes)))
    ended = stream.end()
    assert isinstance(ended, grpc.RpcError)
    assert ended.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, ended.details()
    assert_redelivered(other, space, server)


def test_unknown_fields_are_ignored(
    server: InProcessServer, streams: list[RawStream], space: str
) -> None:
    unknown = field(99, VARINT, b"") + length_delimited(98, b"\xff\xfe")
    stream = joined(server, streams, join_bytes(space, unknown) + unknown)
    position = stream.next().deliveries.deliveries[0].record.position
    ack = pb.SubscribeAck(positions=[position]).SerializeToString() + unknown
    stream.send(length_delimited(2, ack) + unknown)
    write = pb.SegmentWrite(segment="a", records=[pb.RecordInput(payload=b"y")])
    server.stub.Produce(pb.ProduceRequest(space=space, writes=[write]))
    # The ack counted: the segment's next record comes.
    assert stream.next().deliveries.deliveries[0].record.payload == b"y"


@pytest.mark.parametrize(
    ("message", "words"),
    [
        (length_delimited(3, tag(2, LEN) + b"\x01\x01"), ("nack.action", "wrong wire type")),
        (length_delimited(3, tag(3, VARINT) + b"\x01"), ("nack.reason", "wrong wire type")),
        (tag(2, VARINT) + b"\x01", ("ack", "wrong wire type")),
        (length_delimited(1, b""), ("join",)),
    ],
    ids=["nack action as bytes", "nack reason as varint", "ack as varint", "second join"],
)
def test_known_fields_of_the_wrong_wire_type_are_refused(
    server: InProcessServer,
    streams: list[RawStream],
    space: str,
    message: bytes,
    words: tuple[str, ...],
) -> None:
    stream = joined(server, streams, join_bytes(space))
    stream.next()
    other = joined(server, streams, join_bytes(space))
    stream.send(message)
    assert_refused(stream, *words)
    assert_redelivered(other, space, server)


def test_a_flood_of_acks_holds_no_request_bytes(
    server: InProcessServer, streams: list[RawStream], space: str
) -> None:
    stream = joined(server, streams, join_bytes(space, max_in_flight=10_000))
    position = stream.next().deliveries.deliveries[0].record.position
    stale = pb.SubscribeRequest(ack=pb.SubscribeAck(positions=range(10**9, 10**9 + 10_000)))
    for _ in range(200):
        stream.send(stale.SerializeToString())
    stream.send(pb.SubscribeRequest(ack=pb.SubscribeAck(positions=[position])).SerializeToString())
    wait_until(
        lambda: (
            server.stub.GetGroup(pb.GetGroupRequest(space=space, group="g")).info.acked_through
            == position
        ),
        WAIT,
        "the ack after the flood",
    )
    held = len(join_bytes(space, max_in_flight=10_000))
    wait_until(lambda: requests_in_flight(server) == held, WAIT, "request bytes given back")
    stream.requests.put(None)  # half-close: the stream ends OK
    assert stream.end() is None


# -- a Subscribe that never sends its join --------------------------------------------


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[InProcessServer]:
    """A server of 2 streams at most, whose joins must come within 1 s."""
    limits = dataclasses.replace(LIMITS, max_concurrent_streams=2)
    with InProcessServer(tmp_path / "data", limits=limits, slow_consumer_seconds=1.0) as server:
        yield server


def test_a_subscribe_without_its_join_ends_deadline_exceeded(capped: InProcessServer) -> None:
    stream = RawStream(capped.channel, None)
    try:
        ended = stream.end()
        assert isinstance(ended, grpc.RpcError)
        assert ended.code() == grpc.StatusCode.DEADLINE_EXCEEDED, ended
        assert "join" in (ended.details() or ""), ended.details()
        wait_until(lambda: open_streams(capped) == 0, WAIT, "the stream's slot given back")
    finally:
        stream.close()


def test_a_subscribe_waiting_for_its_join_holds_a_stream_slot(tmp_path: Path) -> None:
    limits = dataclasses.replace(LIMITS, max_concurrent_streams=2)
    with InProcessServer(tmp_path / "data", limits=limits, slow_consumer_seconds=60.0) as server:
        space = f"sub-{uuid.uuid4().hex[:12]}"
        server.stub.CreateGroup(pb.CreateGroupRequest(group=pb.Group(name="g", space=space)))
        waiting = [RawStream(server.channel, None) for _ in range(3)]
        try:
            # Two hold the two slots while they wait; the third is refused at once.
            refused = wait_until(
                lambda: next((s for s in waiting if not s.inbox.empty()), None),
                WAIT,
                "a stream over max_concurrent_streams refused",
            )
            ended = refused.end()
            assert isinstance(ended, grpc.RpcError)
            assert ended.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, ended
            assert "max_concurrent_streams" in (ended.details() or "")
            for stream in waiting:
                if stream is not refused:  # the join, late but in time: served
                    stream.send(join_bytes(space))
                    assert stream.next().WhichOneof("kind") == "joined"
        finally:
            for stream in waiting:
                stream.close()


def test_a_subscribe_waiting_for_its_join_ends_at_the_drain(tmp_path: Path) -> None:
    server = InProcessServer(tmp_path / "data", slow_consumer_seconds=60.0)
    stream = RawStream(server.channel, None)
    try:
        wait_until(lambda: open_streams(server) == 1, WAIT, "the stream admitted")
        stopping = server.begin_stop(grace=60.0)
        ended = stream.end()
        assert isinstance(ended, grpc.RpcError)
        assert ended.code() == grpc.StatusCode.UNAVAILABLE, ended
        assert "shutting down" in (ended.details() or ""), ended.details()
        stopping.result(WAIT)  # the drain did not wait for it: well within the grace
    finally:
        stream.close()
        server.stop()
