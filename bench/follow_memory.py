"""Server memory per idle follower and per slow (stalled) follower.

Starts the server as a subprocess, reads its RSS from /proc, and:
- opens N idle followers of one space (no records flowing): RSS per follower;
- writes a fixed volume with K followers that never read, and again on a fresh
  server with none: the difference, per stalled follower.

Usage: python bench/follow_memory.py [--idle 1000] [--stalled 10] [--mb 100]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]


def start_server(data: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "server.py", "--listen", "127.0.0.1:0", "--data", str(data)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on (\S+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, match.group(1)


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None, "no VmRSS line in /proc/PID/status"
    return int(match.group(1)) / 1024


async def produce_volume(stub: streams_pb2_grpc.StreamsServiceStub, mb: int) -> None:
    payload = b"x" * 10_000
    for _ in range(mb):  # 100 records x 10 kB = 1 MB per call
        await stub.Produce(
            pb.ProduceRequest(
                space="s",
                writes=[
                    pb.SegmentWrite(segment="a", records=[pb.RecordInput(payload=payload)] * 100)
                ],
            )
        )


async def idle(target: str, pid: int, count: int) -> float:
    channel = grpc.aio.insecure_channel(target)
    stub = streams_pb2_grpc.StreamsServiceStub(channel)
    await produce_volume(stub, 1)
    await asyncio.sleep(0.5)
    before = rss_mib(pid)
    calls = [
        stub.Consume(pb.ConsumeRequest(space="s", from_end=True, follow=True)) for _ in range(count)
    ]
    await asyncio.gather(*(call.initial_metadata() for call in calls))
    await asyncio.sleep(0.5)
    after = rss_mib(pid)
    for call in calls:
        call.cancel()
    await channel.close()
    return (after - before) * 1024 / count


async def growth(target: str, pid: int, stalled: int, mb: int) -> float:
    channel = grpc.aio.insecure_channel(target)
    stub = streams_pb2_grpc.StreamsServiceStub(channel)
    await produce_volume(stub, 1)
    calls = [stub.Consume(pb.ConsumeRequest(space="s", follow=True)) for _ in range(stalled)]
    await asyncio.gather(*(call.initial_metadata() for call in calls))
    before = rss_mib(pid)
    await produce_volume(stub, mb)
    await asyncio.sleep(1)
    after = rss_mib(pid)
    for call in calls:
        call.cancel()
    await channel.close()
    return after - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--stalled", type=int, default=10)
    parser.add_argument("--mb", type=int, default=100)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, job in (
            ("idle", lambda t, p: idle(t, p, args.idle)),
            ("without", lambda t, p: growth(t, p, 0, args.mb)),
            ("with", lambda t, p: growth(t, p, args.stalled, args.mb)),
        ):
            proc, target = start_server(Path(tmp) / name)
            try:
                results[name] = asyncio.run(job(target, proc.pid))
            finally:
                proc.terminate()
                proc.wait(30)
            time.sleep(0.2)
    per_stalled = (results["with"] - results["without"]) / args.stalled
    print("| figure | value |")
    print("| --- | --- |")
    print(f"| RSS per idle follower ({args.idle} followers) | {results['idle']:.1f} KiB |")
    print(f"| RSS growth writing {args.mb} MB, no follower | {results['without']:.1f} MiB |")
    print(
        f"| RSS growth writing {args.mb} MB, {args.stalled} stalled followers "
        f"| {results['with']:.1f} MiB |"
    )
    print(f"| RSS per stalled follower | {per_stalled:.2f} MiB |")


if __name__ == "__main__":
    main()
