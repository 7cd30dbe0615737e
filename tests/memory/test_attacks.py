"""Memory attacks against a server process: each leaves its RSS within the
memory budget (plus the process's own baseline) and a probe Peek fast.

The server runs with a small budget (8 MiB) so that each attack, seconds long,
exceeds it several times over on a server without one. Settings go through
STREAMS_* variables, which a server without these options ignores (so these
tests fail on it for memory, not for an unknown flag). RocksDB's memtable grows
with what is written, whoever follows: the window attacks subtract a control
run that writes the same records with nobody following.
"""

from __future__ import annotations

import concurrent.futures

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.memory.budget_server import BUDGET, MIB, NO_BDP, PER_STREAM, SLACK, Server
from tests.ops.helpers import wait_until


def follow(server: Server, space: str) -> grpc.Call:
    call = server.stub.Consume(pb.ConsumeRequest(space=space, from_end=True, follow=True))
    call.initial_metadata()
    return call


def test_followers_that_never_read_hold_no_more_than_the_budget(servers) -> None:
    server = servers("stalled")
    record = b"x" * (256 * 1024)
    for _ in range(4):
        server.produce("s", {"a": [record] * 10})  # 10 MiB, each follower reads from 1
    server.mark()
    streams = 40  # each would hold ~2 MiB (a 1 MiB response, twice) without a budget
    bound = BUDGET + streams * PER_STREAM + SLACK
    channels = [grpc.insecure_channel(server.process.target, options=NO_BDP) for _ in range(4)]
    calls = [
        pb_grpc.StreamsServiceStub(channels[i % 4]).Consume(
            pb.ConsumeRequest(space="s", follow=True)
        )
        for i in range(streams)
    ]
    try:
        for call in calls:
            call.initial_metadata()
        # Settled once the budget is spent and a stream waits for memory.
        wait_until(
            lambda: server.metric("streams_memory_waiting_streams") >= 1 or server.growth() > bound,
            timeout=30,
            what="a stream waiting for memory",
        )
        assert server.growth() <= bound, f"RSS grew {server.growth() / MIB:.1f} MiB"
        server.probe()
        assert server.growth() <= bound
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            channel.close()


def many_segments(server: Server, follow_it: bool) -> int:
    calls = [follow(server, "s")] if follow_it else []
    server.mark()
    record = b"x" * 20_000
    for batch in range(20):  # 2,000 segments of one 20 kB record: 40 MB
        server.produce("s", {f"g{batch}-{i}": [record] for i in range(100)})
    growth = server.growth()
    server.probe()
    for call in calls:
        call.cancel()
    return growth


def many_spaces(server: Server, follow_it: bool) -> int:
    spaces = [f"s{i}" for i in range(10)]
    calls = [follow(server, space) for space in spaces] if follow_it else []
    server.mark()
    record = b"x" * 100_000
    for space in spaces:
        for _ in range(4):  # 4 MB per space, 40 MB in all
            server.produce(space, {"a": [record] * 10})
    growth = server.growth()
    server.probe()
    for call in calls:
        call.cancel()
    return growth


@pytest.mark.parametrize("attack", [many_segments, many_spaces], ids=["segments", "spaces"])
def test_windows_of_followed_targets_stay_within_the_budget(servers, attack) -> None:
    control = attack(servers("control"), follow_it=False)
    followed = attack(servers("followed"), follow_it=True)
    extra = followed - control
    assert extra <= BUDGET + SLACK, (
        f"following added {extra / MIB:.1f} MiB (control grew {control / MIB:.1f} MiB)"
    )


def test_parallel_large_produces_beyond_the_inflight_cap_are_refused(servers) -> None:
    size = 4 * MIB
    server = servers("produce", sync=True, max_request_bytes=size, max_inflight_request_bytes=size)
    server.mark()
    producers = 12
    channels = [
        grpc.insecure_channel(server.process.target, options=NO_BDP) for _ in range(producers)
    ]
    request = pb.ProduceRequest(
        space="big",
        writes=[
            pb.SegmentWrite(segment="a", records=[pb.RecordInput(payload=b"x" * 100_000)] * 40)
        ],
    )

    def send(channel: grpc.Channel) -> str:
        try:
            pb_grpc.StreamsServiceStub(channel).Produce(request, timeout=30)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            assert "max_inflight_request_bytes" in exc.details()
            return "refused"
        return "acked"

    try:
        with concurrent.futures.ThreadPoolExecutor(producers) as pool:
            outcomes = list(pool.map(send, channels))
    finally:
        for channel in channels:
            channel.close()
    acked = outcomes.count("acked")
    raw = producers * request.ByteSize()
    # Each request arrives whole (gRPC core, then Python bytes) before it can be
    # refused; one within the cap is processed with ~8 copies (parse, records,
    # chunks, write batch), and what is acked stays in RocksDB's memtable twice.
    bound = BUDGET + 2 * raw + 8 * size + 2 * acked * request.ByteSize() + SLACK
    assert server.growth() <= bound, (
        f"RSS grew {server.growth() / MIB:.1f} MiB, {acked} of {producers} acked"
    )
    responses = server.stub.Consume(pb.ConsumeRequest(space="big"), timeout=30)
    assert sum(len(r.records) for r in responses) == 40 * acked
    server.probe()
