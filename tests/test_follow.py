"""Live tail: Consume with follow and from_end, against an in-process server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc
from tests.support.inproc import InProcessServer
from tests.support.waiting import wait_until


def produce(stub: streams_pb2_grpc.StreamsServiceStub, space: str, segment: str, n: int) -> None:
    records = [pb.RecordInput(payload=f"{segment}-{i}".encode()) for i in range(n)]
    stub.Produce(
        pb.ProduceRequest(space=space, writes=[pb.SegmentWrite(segment=segment, records=records)])
    )


def records(stream: Iterator[pb.ConsumeResponse]) -> Iterator[pb.Record]:
    for response in stream:
        yield from response.records


def test_handoff_from_stored_to_live_under_concurrent_writes(inproc: InProcessServer) -> None:
    stub = inproc.stub
    total = 3000
    produce(stub, "s", "a", 500)

    def writer() -> None:
        written = 500
        size = 1
        while written < total:
            n = min(size, total - written)
            produce(stub, "s", "a", n)
            written += n
            size = size % 37 + 1

    thread = threading.Thread(target=writer)
    thread.start()
    stream = stub.Consume(
        pb.ConsumeRequest(space="s", segment="a", follow=True, to_offset=total, max_batch=50)
    )
    seen = [r.sequence for r in records(stream)]
    thread.join()
    assert seen == list(range(1, total + 1))


def test_space_follow_sees_every_position_once(inproc: InProcessServer) -> None:
    stub = inproc.stub
    total = 2000
    stream = stub.Consume(pb.ConsumeRequest(space="s", follow=True, limit=total))
    stream.initial_metadata()

    def writer(segment: str) -> None:
        for _ in range(total // 4 // 10):
            produce(stub, "s", segment, 10)

    threads = [threading.Thread(target=writer, args=(f"g{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    seen = [(r.position, r.segment, r.sequence) for r in records(stream)]
    for thread in threads:
        thread.join()
    assert [p for p, _, _ in seen] == list(range(1, total + 1))
    for segment in {g for _, g, _ in seen}:
        assert [q for _, g, q in seen if g == segment] == list(range(1, total // 4 + 1))


def test_from_end_delivers_only_new_records(inproc: InProcessServer) -> None:
    stub = inproc.stub
    produce(stub, "s", "a", 5)
    stream = stub.Consume(pb.ConsumeRequest(space="s", from_end=True, follow=True, limit=3))
    stream.initial_metadata()  # the start point is fixed once headers arrive
    produce(stub, "s", "a", 3)
    assert [r.position for r in records(stream)] == [6, 7, 8]


def test_from_end_without_follow_is_empty(inproc: InProcessServer) -> None:
    produce(inproc.stub, "s", "a", 5)
    stream = inproc.stub.Consume(pb.ConsumeRequest(space="s", segment="a", from_end=True))
    assert list(records(stream)) == []


def test_follow_a_segment_before_its_first_write(inproc: InProcessServer) -> None:
    stub = inproc.stub
    stream = stub.Consume(pb.ConsumeRequest(space="new", segment="seg", follow=True, limit=2))
    stream.initial_metadata()
    produce(stub, "new", "other", 4)
    produce(stub, "new", "seg", 2)
    got = list(records(stream))
    assert [(r.segment, r.sequence, r.position) for r in got] == [("seg", 1, 5), ("seg", 2, 6)]


def test_to_offset_ends_a_follow_stream(inproc: InProcessServer) -> None:
    stub = inproc.stub
    produce(stub, "s", "a", 2)
    stream = stub.Consume(pb.ConsumeRequest(space="s", segment="a", follow=True, to_offset=4))
    stream.initial_metadata()
    produce(stub, "s", "a", 5)  # crosses the bound inside one transaction
    assert [r.sequence for r in records(stream)] == [1, 2, 3, 4]
    assert inproc.server.store.tail.active == 0


def test_follow_from_consumer_resumes_after_its_commit(inproc: InProcessServer) -> None:
    stub = inproc.stub
    produce(stub, "s", "a", 3)
    stub.Commit(pb.CommitRequest(consumer="c", space="s", segment="a", offset=2))
    stream = stub.Consume(
        pb.ConsumeRequest(space="s", segment="a", from_consumer="c", follow=True, limit=3)
    )
    stream.initial_metadata()
    produce(stub, "s", "a", 2)
    assert [r.sequence for r in records(stream)] == [3, 4, 5]


def test_cancel_and_deadline_release_the_stream(inproc: InProcessServer) -> None:
    stub = inproc.stub
    store = inproc.server.store
    streams = [stub.Consume(pb.ConsumeRequest(space="s", follow=True)) for _ in range(10)]
    for stream in streams:
        stream.initial_metadata()
    assert store.tail.active == 10
    for stream in streams:
        stream.cancel()
    wait_until(lambda: store.tail.active == 0, timeout=10, what="the stream released")

    stream = stub.Consume(pb.ConsumeRequest(space="s", follow=True), timeout=0.3)
    with pytest.raises(grpc.RpcError) as error:
        list(stream)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: store.tail.active == 0, timeout=10, what="the stream released")
    assert store.tail.waiting_targets == 0


def test_a_thousand_followers_on_one_space_receive_every_record(inproc: InProcessServer) -> None:
    followers, total = 1000, 20

    async def scenario() -> list[list[int]]:
        channels = [grpc.aio.insecure_channel(inproc.target) for _ in range(4)]
        stubs = [streams_pb2_grpc.StreamsServiceStub(c) for c in channels]
        calls = [
            stubs[i % 4].Consume(pb.ConsumeRequest(space="crowd", follow=True, limit=total))
            for i in range(followers)
        ]
        await asyncio.gather(*(call.initial_metadata() for call in calls))
        assert inproc.server.store.tail.active == followers

        async def drain(call) -> list[int]:
            return [r.position async for response in call for r in response.records]

        readers = [asyncio.ensure_future(drain(call)) for call in calls]
        for i in range(total // 2):
            await stubs[0].Produce(
                pb.ProduceRequest(
                    space="crowd",
                    writes=[
                        pb.SegmentWrite(
                            segment=f"g{i % 3}", records=[pb.RecordInput(payload=b"x")] * 2
                        )
                    ],
                )
            )
        results = await asyncio.wait_for(asyncio.gather(*readers), 120)
        for channel in channels:
            await channel.close()
        return results

    results = asyncio.run(scenario())
    assert all(positions == list(range(1, total + 1)) for positions in results)
    wait_until(lambda: inproc.server.store.tail.active == 0, timeout=10, what="no followers")


def test_stalled_follower_does_not_hold_back_a_fast_one(inproc: InProcessServer) -> None:
    stub = inproc.stub
    payload = b"p" * 10_000
    batches, per_batch = 40, 100  # 40 MB, far past the in-memory window
    stalled = stub.Consume(pb.ConsumeRequest(space="s", follow=True, max_batch=100))
    stalled.initial_metadata()  # opened, then never read until the end
    fast = stub.Consume(
        pb.ConsumeRequest(space="s", follow=True, limit=batches * per_batch, max_batch=100)
    )
    fast.initial_metadata()
    received: list[int] = []
    reader = threading.Thread(target=lambda: received.extend(r.position for r in records(fast)))
    reader.start()
    for _ in range(batches):
        stub.Produce(
            pb.ProduceRequest(
                space="s",
                writes=[
                    pb.SegmentWrite(
                        segment="a", records=[pb.RecordInput(payload=payload)] * per_batch
                    )
                ],
            )
        )
    reader.join(60)
    assert received == list(range(1, batches * per_batch + 1))
    # The stalled follower catches up from disk, in order, once it reads again.
    late = []
    for record in records(stalled):
        late.append(record.position)
        if len(late) == batches * per_batch:
            break
    stalled.cancel()
    assert late == list(range(1, batches * per_batch + 1))


def test_shutdown_ends_follow_streams_with_unavailable(tmp_path) -> None:
    server = InProcessServer(tmp_path / "data")
    stream = server.stub.Consume(pb.ConsumeRequest(space="s", follow=True))
    stream.initial_metadata()
    started = time.monotonic()
    server.run(server.server.stop(30))
    with pytest.raises(grpc.RpcError) as error:
        list(stream)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 10, "follow streams must not wait out the grace"
    server.stop()
