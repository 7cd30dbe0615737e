"""The data lifecycle in the Python clients (issue 13, item 6): trim, deletes,
configure_space, get_space/get_segment and watch_segments, sync and async, against
a real in-process server."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from streams import (
    AsyncClient,
    Cancelled,
    Client,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    OutOfRange,
    RetentionPolicy,
    SegmentEvent,
    SegmentInfo,
    SegmentsDeleted,
    SegmentsUpdated,
    SequenceMismatch,
    SnapshotComplete,
    SnapshotSegments,
    SpaceConfig,
)
from tests.support.inproc import InProcessServer
from tests.support.process import ServerProcess, free_port
from tests.support.waiting import wait_until

from .conftest import unique

STORAGES = ("memory",)


@pytest.fixture(scope="module", params=STORAGES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessServer]:
    data = tmp_path_factory.mktemp("lifecycle") / "data"
    with InProcessServer(data, storage=request.param) as served:
        yield served


@pytest.fixture
def client(server: InProcessServer) -> Iterator[Client]:
    with Client(server.target) as made:
        yield made


def fill(client: Client, space: str, segment: str, count: int) -> None:
    for i in range(1, count + 1):
        client.produce(space, segment, f"{segment}{i}".encode())


# -- get_space / get_segment ---------------------------------------------------------------------


def test_infos_carry_first_offsets_counts_bytes_and_config(client: Client) -> None:
    space = unique("info")
    fill(client, space, "a", 3)
    fill(client, space, "b", 2)
    segment = client.get_segment(space, "a")
    assert (segment.name, segment.first_sequence, segment.last_sequence) == ("a", 1, 3)
    assert (segment.record_count, segment.last_position) == (3, 3)
    assert segment.bytes > len(b"a1a2a3")  # payloads plus their framing
    info = client.get_space(space)
    assert (info.first_position, info.last_position, info.record_count) == (1, 5, 5)
    assert info.config is None and info.bytes > 0
    assert info.last_timestamp == client.peek(space).timestamp
    # The lists carry the same numbers.
    assert list(client.list_segments(space)) == [segment, client.get_segment(space, "b")]
    listed = [s for s in client.list_spaces(page_size=1000) if s.name == space]
    assert listed == [info]


def test_unknown_space_or_segment_is_not_found(client: Client) -> None:
    space = unique("none")
    with pytest.raises(NotFound):
        client.get_space(space)
    client.produce(space, "a", b"x")
    with pytest.raises(NotFound):
        client.get_segment(space, "b")


# -- trim ------------------------------------------------------------------------------------------


def test_trim_by_offset_then_reads_start_at_the_first_retained(client: Client) -> None:
    space = unique("trim")
    fill(client, space, "a", 5)
    assert client.trim(space, "a", before_offset=3) == 3
    assert [r.sequence for r in client.consume(space, "a")] == [3, 4, 5]
    assert [r.sequence for r in client.consume(space, "a", from_offset=1)] == [3, 4, 5]
    # Idempotent: a lower trim changes nothing and says where the target starts.
    assert client.trim(space, "a", before_offset=2) == 3
    info = client.get_segment(space, "a")
    assert (info.first_sequence, info.record_count) == (3, 3)
    # Up to last + 1 empties it; beyond is OUT_OF_RANGE.
    with pytest.raises(OutOfRange):
        client.trim(space, "a", before_offset=7)
    assert client.trim(space, "a", before_offset=6) == 6
    assert client.get_segment(space, "a").record_count == 0
    with pytest.raises(NotFound):
        client.peek(space, "a")


def test_trim_a_whole_space_by_time(client: Client) -> None:
    space = unique("trimtime")
    fill(client, space, "a", 2)
    # The first microsecond after "a2" (a datetime holds microseconds).
    cut_ns = (client.peek(space).timestamp_ns // 1000 + 1) * 1000
    cut = datetime.fromtimestamp(cut_ns // 10**9, UTC) + timedelta(
        microseconds=cut_ns % 10**9 // 1000
    )
    fill(client, space, "b", 2)
    later = [r.position for r in client.consume(space) if r.timestamp_ns >= cut_ns]
    first = client.trim(space, before_time=cut)
    assert first == (later[0] if later else 5)
    assert first >= 3  # "a1" and "a2" are gone
    assert [r.position for r in client.consume(space)] == later
    # Epoch seconds work too, and a time before everything removes nothing.
    assert client.trim(space, before_time=0.0) == first


def test_trim_arguments(client: Client) -> None:
    with pytest.raises(ValueError, match="exactly one of before_offset, before_time"):
        client.trim("s", "a")
    with pytest.raises(ValueError, match="exactly one"):
        client.trim("s", "a", before_offset=1, before_time=1.0)
    with pytest.raises(NotFound):
        client.trim(unique("nothing"), "a", before_offset=1)
    with pytest.raises(InvalidArgument, match=r"\$"):
        client.trim("$reserved", "a", before_offset=1)


# -- deletes ---------------------------------------------------------------------------------------


def test_delete_segment_keeps_its_numbers(client: Client) -> None:
    space = unique("delseg")
    fill(client, space, "a", 3)
    fill(client, space, "b", 1)
    with pytest.raises(SequenceMismatch) as mismatch:
        client.delete_segment(space, "a", expected_sequence=2)
    assert mismatch.value.actual == 3
    client.delete_segment(space, "a", expected_sequence=3)
    assert [s.name for s in client.list_segments(space)] == ["b"]
    with pytest.raises(NotFound):
        client.get_segment(space, "a")
    client.delete_segment(space, "a")  # idempotent
    client.delete_segment(space, "never-written")
    ack = client.produce(space, "a", b"again")
    assert ack.acks[0].first_sequence == 4  # never reused


def test_delete_space_removes_records_offsets_and_config(client: Client) -> None:
    space = unique("delspace")
    fill(client, space, "a", 2)
    client.commit("c", space, offset=1)
    client.configure_space(space, SpaceConfig(RetentionPolicy(max_bytes=10**9)))
    client.delete_space(space)
    with pytest.raises(NotFound):
        client.get_space(space)
    assert space not in [s.name for s in client.list_spaces(page_size=1000)]
    assert client.get_offset("c", space) is None
    client.delete_space(space)  # idempotent
    assert client.produce(space, "a", b"x").first_position == 3
    assert client.get_space(space).config is None


# -- configure_space -------------------------------------------------------------------------------


def test_configure_space_round_trips_the_policy(client: Client) -> None:
    space = unique("conf")
    policy = RetentionPolicy(max_age=timedelta(days=7, milliseconds=500), max_bytes=2**30)
    stored = client.configure_space(space, SpaceConfig(policy))
    assert stored == SpaceConfig(policy)
    # Allowed before the space has records: it is then found.
    assert client.get_space(space).config == SpaceConfig(policy)
    # Replaced whole; RetentionPolicy() (keep forever) is not "no policy".
    forever = client.configure_space(space, SpaceConfig(RetentionPolicy()))
    assert forever == SpaceConfig(RetentionPolicy())
    assert client.get_space(space).config == SpaceConfig(RetentionPolicy())
    default = client.configure_space(space, SpaceConfig())
    assert default == SpaceConfig(None)
    assert client.get_space(space).config == SpaceConfig(None)


def test_retention_policy_refuses_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_age"):
        RetentionPolicy(max_age=timedelta(0))
    with pytest.raises(TypeError, match="max_age"):
        RetentionPolicy(max_age=60)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_records_per_segment"):
        RetentionPolicy(max_records_per_segment=0)
    with pytest.raises(ValueError, match="max_bytes"):
        RetentionPolicy(max_bytes=-1)


def test_retention_removes_records_past_the_policy(tmp_path: Path) -> None:
    # A server of its own, whose retention pass runs often.
    with (
        InProcessServer(tmp_path / "data", storage="memory", retention_interval=0.05) as served,
        Client(served.target) as client,
    ):
        space = unique("retain")
        fill(client, space, "a", 5)
        client.configure_space(space, SpaceConfig(RetentionPolicy(max_records_per_segment=2)))
        wait_until(lambda: client.get_segment(space, "a").first_sequence == 4, timeout=30,
                   what="the retention pass")  # fmt: skip
        assert [r.sequence for r in client.consume(space, "a")] == [4, 5]


# -- watch_segments --------------------------------------------------------------------------------


class Events:
    """A watch read by a thread, so that the test can wait for each event with a timeout."""

    def __init__(self, watch: Iterator[SegmentEvent]) -> None:
        self._queue: queue.Queue[SegmentEvent | BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(watch,), daemon=True)
        self._thread.start()

    def _read(self, watch: Iterator[SegmentEvent]) -> None:
        try:
            for event in watch:
                self._queue.put(event)
            self._queue.put(None)
        except BaseException as exc:  # handed to the test
            self._queue.put(exc)

    def next(self, timeout: float = 30) -> SegmentEvent | None:
        item = self._queue.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def until(self, kind: type, timeout: float = 30) -> list[SegmentEvent]:
        """Events up to and with the first of ``kind``."""
        seen: list[SegmentEvent] = []
        while True:
            event = self.next(timeout)
            assert event is not None, f"the watch ended before a {kind.__name__}: {seen}"
            seen.append(event)
            if isinstance(event, kind):
                return seen


def infos(events: list[SegmentEvent]) -> list[tuple[str, int, int]]:
    out = []
    for event in events:
        if isinstance(event, SnapshotSegments | SegmentsUpdated):
            out += [(s.name, s.first_sequence, s.last_sequence) for s in event.segments]
    return out


def test_watch_snapshot_then_updates_trims_and_deletes(client: Client) -> None:
    space = unique("watch")
    fill(client, space, "b", 2)
    fill(client, space, "a", 1)
    fill(client, space, "other", 1)
    with client.watch_segments(space, prefix="", timeout=60) as watch:
        events = Events(watch)
        snapshot = events.until(SnapshotComplete)
        assert all(isinstance(e, SnapshotSegments) for e in snapshot[:-1])
        assert infos(snapshot) == [("a", 1, 1), ("b", 1, 2), ("other", 1, 1)]
        assert watch.snapshot_complete and sorted(watch.segments) == ["a", "b", "other"]

        client.produce(space, "a", b"a2")
        assert infos(events.until(SegmentsUpdated)) == [("a", 1, 2)]
        client.trim(space, "b", before_offset=2)
        assert infos(events.until(SegmentsUpdated)) == [("b", 2, 2)]
        client.delete_segment(space, "other")
        deleted = events.until(SegmentsDeleted)
        assert deleted[-1] == SegmentsDeleted(("other",))
        assert sorted(watch.segments) == ["a", "b"]
        assert watch.segments["a"] == client.get_segment(space, "a")


def test_watch_an_empty_space_and_a_prefix(client: Client) -> None:
    space = unique("watchp")
    with client.watch_segments(space, prefix="eu-", timeout=60) as watch:
        events = Events(watch)
        assert events.next() == SnapshotComplete()
        client.produce(space, "us-1", b"x")
        client.produce(space, "eu-1", b"y")
        (update,) = events.until(SegmentsUpdated)
        assert isinstance(update, SegmentsUpdated)
        assert [s.name for s in update.segments] == ["eu-1"]
        assert isinstance(update.segments[0], SegmentInfo)


def test_watch_timeout_is_deadline_exceeded(client: Client) -> None:
    watch = client.watch_segments(unique("watcht"), timeout=0.5)
    assert next(watch) == SnapshotComplete()
    with pytest.raises(DeadlineExceeded):
        next(watch)


def test_watch_close_ends_the_iteration(client: Client) -> None:
    watch = client.watch_segments(unique("watchc"), timeout=60)
    events = Events(watch)
    assert events.next() == SnapshotComplete()
    watch.close()
    assert events.next() is None


def test_watch_resumes_after_a_restart_with_what_changed(tmp_path: Path) -> None:
    # The memory backend forgets everything at a restart: segment "a" is gone
    # afterwards, "b" is written anew and "c" is new, all while the watch is down
    # or reconnecting. The watch carries on without a second snapshot.
    server = ServerProcess(tmp_path / "data", port=free_port(), flags=["--storage", "memory"])
    with server.start(), Client(server.target) as client:
        space = unique("resume")
        client.produce(space, "a", b"a1")
        client.produce(space, "b", [b"b1", b"b2"])
        watch = client.watch_segments(space, timeout=120)
        events = Events(watch)
        snapshot = events.until(SnapshotComplete)
        assert infos(snapshot) == [("a", 1, 1), ("b", 1, 2)]
        server.stop()
        server.start()
        client.produce(space, "b", b"b1 again")
        client.produce(space, "c", b"c1")
        after: list[SegmentEvent] = []
        # The test's own view, built from the events alone (watch.segments is
        # updated by the reading thread before it hands the events over).
        view = {name: (first, last) for name, first, last in infos(snapshot)}
        while view != {"b": (1, 1), "c": (1, 1)}:
            event = events.next()
            assert event is not None
            after.append(event)
            if isinstance(event, SegmentsDeleted):
                for name in event.names:
                    del view[name]
            view.update((name, (first, last)) for name, first, last in infos([event]))
        assert all(isinstance(e, SegmentsUpdated | SegmentsDeleted) for e in after), after
        # "b" too when the watch was back before the produce.
        assert "a" in {n for e in after if isinstance(e, SegmentsDeleted) for n in e.names}
        assert dict(watch.segments) == {n: client.get_segment(space, n) for n in ("b", "c")}
        watch.close()
        assert events.next() is None


def test_closing_the_client_ends_its_streams_with_cancelled(server: InProcessServer) -> None:
    # Before: a stream whose client was closed took the CANCELLED for a broken
    # connection and kept retrying (on a closed channel) for the retry budget.
    client = Client(server.target)
    space = unique("closing")
    stream = client.follow(space, from_end=True)
    stream.ready()  # the server holds the follower
    follow = Events(stream)
    watch = Events(client.watch_segments(space))
    assert watch.next() == SnapshotComplete()
    client.close()
    for events in (follow, watch):
        with pytest.raises(Cancelled):
            events.next(timeout=10)


# -- asyncio ---------------------------------------------------------------------------------------


def test_async_client_lifecycle(server: InProcessServer) -> None:
    async def main() -> None:
        async with AsyncClient(server.target) as client:
            space = unique("aio")
            for i in range(1, 4):
                await client.produce(space, "a", f"a{i}")
            watch = client.watch_segments(space, timeout=60)
            assert await watch.__anext__() == SnapshotSegments(
                (await client.get_segment(space, "a"),)
            )
            assert await watch.__anext__() == SnapshotComplete()
            assert await client.trim(space, "a", before_offset=2) == 2
            update = await watch.__anext__()
            assert isinstance(update, SegmentsUpdated)
            assert [(s.first_sequence, s.record_count) for s in update.segments] == [(2, 2)]
            policy = SpaceConfig(RetentionPolicy(max_age=timedelta(hours=1)))
            assert await client.configure_space(space, policy) == policy
            info = await client.get_space(space)
            assert (info.first_position, info.record_count, info.config) == (2, 2, policy)
            await client.delete_segment(space, "a")
            assert await watch.__anext__() == SegmentsDeleted(("a",))
            await client.delete_space(space)
            with pytest.raises(NotFound):
                await client.get_space(space)
            await watch.aclose()
            with pytest.raises(StopAsyncIteration):
                await watch.__anext__()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_watch_view_resumes_an_interrupted_first_snapshot() -> None:
    # The stream broke after the first page of the first snapshot; the second
    # connection's snapshot differs. No I/O: the view alone, as both clients use it.
    from google.protobuf.timestamp_pb2 import Timestamp

    from streams.client._common import RetryPolicy, WatchView
    from streams.v1 import streams_pb2 as pb

    def seg(name: str, last: int) -> pb.SegmentInfo:
        return pb.SegmentInfo(name=name, first_sequence=1, last_sequence=last, record_count=last,
                              last_timestamp=Timestamp(seconds=1))  # fmt: skip

    view = WatchView(pb.WatchSegmentsRequest(space="s"), RetryPolicy())
    first = view.events(pb.WatchSegmentsResponse(segments=[seg("a", 1), seg("b", 1)]))
    assert [type(e) for e in first] == [SnapshotSegments]
    view.reconnecting()
    again = view.events(pb.WatchSegmentsResponse(segments=[seg("b", 2), seg("c", 1)]))
    assert again == [SnapshotSegments((view.known["b"], view.known["c"]))]  # "a": until complete
    done = view.events(pb.WatchSegmentsResponse(snapshot_complete=True))
    assert done == [SnapshotComplete(), SegmentsDeleted(("a",))]
    # Live: the same info again is dropped, a deletion of an unknown name too.
    live = view.events(pb.WatchSegmentsResponse(segments=[seg("b", 2)], deleted=["zz", "c"]))
    assert live == [SegmentsDeleted(("c",))]
    assert sorted(view.known) == ["b"]
