"""WatchSegments (contract additions, "Catalog"): a snapshot in name order
ending with snapshot_complete, then live, coalesced changes (appends, trims,
deletes), only of segments matching the prefix."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.support.process import ServerProcess

from .helpers import (
    CLIENT_RECEIVE_LIMIT,
    Stub,
    assert_status,
    name_of_bytes,
    produce,
    produce_in_parts,
    write,
)

TIMEOUT = 20.0


class Watcher:
    """One WatchSegments call, read message by message."""

    def __init__(self, stub: Stub, space: str, prefix: str = "") -> None:
        self.call = stub.WatchSegments(
            pb.WatchSegmentsRequest(space=space, prefix=prefix), timeout=TIMEOUT
        )

    def snapshot(self) -> list[pb.WatchSegmentsResponse]:
        messages = []
        while not messages or not messages[-1].snapshot_complete:
            messages.append(next(self.call))
        assert not any(m.snapshot_complete for m in messages[:-1])
        assert not any(m.deleted for m in messages)
        return messages

    def next(self) -> pb.WatchSegmentsResponse:
        message = next(self.call)
        assert not message.snapshot_complete
        return message

    def close(self) -> None:
        self.call.cancel()


@pytest.fixture
def watch(stub: Stub) -> Iterator[Callable]:
    opened: list[Watcher] = []

    def open_watch(space: str, prefix: str = "") -> Watcher:
        opened.append(Watcher(stub, space, prefix))
        return opened[-1]

    yield open_watch
    for watcher in opened:
        watcher.close()


def names(messages: list[pb.WatchSegmentsResponse]) -> list[str]:
    return [s.name for m in messages for s in m.segments]


def test_snapshot_in_name_order_with_current_infos(stub: Stub, space: str, watch: Callable) -> None:
    for segment in ("b", "a", "é", "Z"):
        produce(stub, space, segment, [b"1", b"2"])
    stub.Trim(pb.TrimRequest(space=space, segment="a", before_offset=2))
    snapshot = watch(space).snapshot()
    assert names(snapshot) == ["Z", "a", "b", "é"]
    listed = stub.ListSegments(pb.ListSegmentsRequest(space=space)).segments
    assert [s for m in snapshot for s in m.segments] == list(listed)
    assert listed[1].first_sequence == 2


def test_snapshot_of_an_unknown_space_is_one_empty_complete_message(
    stub: Stub, space: str, watch: Callable
) -> None:
    snapshot = watch(space).snapshot()
    assert len(snapshot) == 1 and not snapshot[0].segments


def test_snapshot_and_live_changes_honour_the_prefix(
    stub: Stub, space: str, watch: Callable
) -> None:
    for segment in ("a", "ab", "a/x", "b", "Za"):
        produce(stub, space, segment)
    watcher = watch(space, "a")
    assert names(watcher.snapshot()) == ["a", "a/x", "ab"]
    produce(stub, space, "b")
    produce(stub, space, "ab", [b"2"])
    # Only "ab" matches: "b"'s change is not sent.
    message = watcher.next()
    assert [(s.name, s.last_sequence) for s in message.segments] == [("ab", 2)]


def test_live_append_trim_and_delete(stub: Stub, space: str, watch: Callable) -> None:
    produce(stub, space, "a", [b"1", b"2"])
    watcher = watch(space)
    watcher.snapshot()
    produce(stub, space, "a", [b"3"])
    assert [(s.name, s.last_sequence, s.record_count) for s in watcher.next().segments] == [
        ("a", 3, 3)
    ]
    stub.Trim(pb.TrimRequest(space=space, segment="a", before_offset=3))
    assert [(s.first_sequence, s.record_count) for s in watcher.next().segments] == [(3, 1)]
    stub.DeleteSegment(pb.DeleteSegmentRequest(space=space, segment="a"))
    message = watcher.next()
    assert (list(message.deleted), list(message.segments)) == (["a"], [])
    # Written again: live again, numbering kept.
    produce(stub, space, "a", [b"4"])
    assert [(s.name, s.first_sequence) for s in watcher.next().segments] == [("a", 4)]


def test_live_new_segment_and_space_delete(stub: Stub, space: str, watch: Callable) -> None:
    watcher = watch(space)
    watcher.snapshot()
    produce(stub, space, "new")
    assert names([watcher.next()]) == ["new"]
    stub.DeleteSpace(pb.DeleteSpaceRequest(space=space))
    assert list(watcher.next().deleted) == ["new"]


def test_a_change_during_the_snapshot_is_not_lost(stub: Stub, space: str, watch: Callable) -> None:
    produce(stub, space, "a")
    watcher = watch(space)
    # The server may already have read the snapshot, or not: either way the
    # change reaches the watcher, in the snapshot or after it.
    produce(stub, space, "a", [b"2"])
    seen = [s.last_sequence for m in watcher.snapshot() for s in m.segments]
    while seen[-1] != 2:
        seen += [s.last_sequence for s in watcher.next().segments]


def test_a_large_snapshot_comes_in_several_bounded_messages(
    stub: Stub, space: str, watch: Callable, max_records: int
) -> None:
    # 4,000 segments of 255-byte names: about 1.2 MB of infos, over one
    # response's 1 MiB.
    segments = [name_of_bytes(255, prefix=f"{i:05d}") for i in range(4000)]
    produce_in_parts(stub, space, [write(s, [b"x"]) for s in segments], max_records)
    snapshot = watch(space).snapshot()
    assert len(snapshot) >= 2
    assert all(m.ByteSize() <= CLIENT_RECEIVE_LIMIT for m in snapshot)
    assert names(snapshot) == sorted(segments)


def test_slow_watcher_gets_latest_state_not_a_backlog(
    server: ServerProcess, stub: Stub, space: str
) -> None:
    """A watcher that does not read while 30 transactions change 300 segments
    gets the latest info of each, in a few messages, not 30 rounds of them."""
    # A connection of its own without BDP probing: the stream's flow-control
    # window stays small, so the server cannot push a backlog into the
    # client's buffers (and the producer's calls do not share that window).
    channel = grpc.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)])
    try:
        segments = [name_of_bytes(255, prefix=f"{i:04d}") for i in range(300)]
        rounds = 30
        watcher = Watcher(pb_grpc.StreamsServiceStub(channel), space)
        watcher.snapshot()
        for _ in range(rounds):
            stub.Produce(
                pb.ProduceRequest(space=space, writes=[write(s, [b"x"]) for s in segments])
            )
        latest: dict[str, int] = {}
        messages = 0
        while len(latest) < len(segments) or min(latest.values()) < rounds:
            message = watcher.next()
            messages += 1
            latest.update((s.name, s.last_sequence) for s in message.segments)
        # One round of 300 infos fits one message: a backlog would be 30 of them.
        assert messages < rounds // 3, messages
        watcher.close()
    finally:
        channel.close()


def test_bad_requests_are_invalid(stub: Stub) -> None:
    for request, field in [
        (pb.WatchSegmentsRequest(space=""), "space"),
        (pb.WatchSegmentsRequest(space="s", prefix="a\x00"), "prefix"),
        (pb.WatchSegmentsRequest(space="s", prefix="x" * 256), "prefix"),
    ]:
        assert_status(
            lambda request=request: stub.WatchSegments(request, timeout=TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT,
            field,
        )


def test_reserved_space_can_be_watched(stub: Stub, watch: Callable) -> None:
    assert watch("$parked").snapshot()[-1].snapshot_complete


def test_shutdown_ends_the_watch_unavailable(fresh_server: ServerProcess, space: str) -> None:
    watcher = Watcher(fresh_server.stub, space)
    watcher.snapshot()
    fresh_server.send(signal.SIGTERM)
    with pytest.raises(grpc.RpcError) as caught:
        watcher.next()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
