"""A server process with a small memory budget, its metrics and its memory
figures, for the memory tests (the ``servers`` fixture is in conftest.py).

Settings go through STREAMS_* variables, which a server without these options
ignores (so the tests fail on it for memory, not for an unknown flag).
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.ops.helpers import sample, scrape
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

    def __init__(self, tmp: Path, name: str, sync: bool = False, **env: float) -> None:
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

    def metric(self, name: str, **labels: str) -> float:
        try:
            return sample(scrape(self.metrics_port), name, **labels)
        except AssertionError:  # not exported (a server without a budget)
            return 0.0

    def probe(self) -> None:
        """A Peek answered within the deadline."""
        reply = self.stub.Peek(pb.PeekRequest(space="probe"), timeout=PROBE_DEADLINE)
        assert reply.record.payload == b"probe"

    def close(self) -> None:
        self.channel.close()
        self.process.kill()
