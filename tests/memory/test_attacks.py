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
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.ops.helpers import sample, scrape, wait_until
from tests.support.process import ServerProcess, free_port

MIB = 1024 * 1024
BUDGET = 8 * MIB
# What one open stream costs outside the budget (its call, task and buffers):
# README measures 18.6 KiB per idle follower.
PER_STREAM = 64 * 1024
# Allocator noise between two runs of the same workload.
SLACK = 8 * MIB
PROBE_DEADLINE = 2.0
# Large blocks are mapped and unmapped one by one, so that RSS follows what the
# server holds rather than where glibc's heap happens to be fragmented.
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
NO_BDP = [("grpc.http2.bdp_probe", 0), ("grpc.max_send_message_length", 64 * MIB)]


def status_kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"{field}:\s+(\d+) kB", text)
    assert match is not None, f"no {field} in /proc/{pid}/status"
    return int(match.group(1)) * 1024


class Server:
    """A server process with a small memory budget, its metrics and its memory figures."""

    def __init__(self, tmp: Path, name: str, sync: bool = False, **env: int) -> None:
        self.metrics_port = free_port()
        flags = ["--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        settings = {"STREAMS_MEMORY_BUDGET_BYTES": str(BUDGET), **ALLOCATOR}
        settings |= {f"STREAMS_{key.upper()}": str(value) for key, value in env.items()}
        if not sync:
            flags.append("--no-sync")
        (tmp / name).mkdir()
        self.process = ServerProcess(
            tmp / name / "data", tmp / name / "server.log", flags=flags, env=settings
        )
        self.process.start()
        assert self.process.proc is not None
        self.pid = self.process.proc.pid
        self.channel = grpc.insecure_channel(self.process.target, options=NO_BDP)
        self.stub = pb_grpc.StreamsServiceStub(self.channel)
        self.baseline = 0

    def produce(self, space: str, writes: dict[str, list[bytes]]) -> None:
        request = pb.ProduceRequest(
            space=space,
            writes=[
                pb.SegmentWrite(segment=s, records=[pb.RecordInput(payload=p) for p in payloads])
                for s, payloads in writes.items()
            ],
        )
        self.stub.Produce(request, timeout=30)

    def mark(self) -> None:
        """Takes the baseline: RSS now, and the high-water mark starts again from it."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.baseline = status_kib(self.pid, "VmRSS")

    def growth(self) -> int:
        """The highest RSS since the baseline, over it."""
        return status_kib(self.pid, "VmHWM") - self.baseline

    def metric(self, name: str) -> float:
        try:
            return sample(scrape(self.metrics_port), name)
        except AssertionError:  # not exported (a server without a budget)
            return 0.0

    def probe(self) -> None:
        """A Peek answered within the deadline."""
        reply = self.stub.Peek(pb.PeekRequest(space="probe"), timeout=PROBE_DEADLINE)
        assert reply.record.payload == b"probe"

    def close(self) -> None:
        self.channel.close()
        self.process.kill()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(name: str, **kwargs: int) -> Server:
        server = Server(tmp_path, name, **kwargs)
        started.append(server)
        server.produce("probe", {"a": [b"probe"]})
        return server

    yield start
    for server in started:
        server.close()


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
