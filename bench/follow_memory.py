"""Server memory per idle follower and per slow (stalled) follower.

Starts the server as a subprocess, reads its RSS from /proc, and:
- opens N idle followers of one space (no records flowing): RSS per follower;
- writes a fixed volume with K followers that never read, and again on a fresh
  server with none: the difference, per stalled follower.

With --attacks, runs instead the memory attacks of docs/guarantees.md (section
7), each on a fresh server, and prints the peak RSS over the baseline
(VmHWM) and how long a Peek took after it:
- followers that never read, from the start of a stored space;
- followed spaces, each written to;
- a followed space written to across many segments;
- parallel large Produces (with fsync, so that they overlap).
Extra server flags (``--memory-budget-bytes 33554432``) go after ``--``.

Usage: python bench/follow_memory.py [--idle 1000] [--stalled 10] [--mb 100]
       python bench/follow_memory.py --attacks [-- SERVER FLAGS]
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


def start_server(data: Path, *flags: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "server.py", "--listen", "127.0.0.1:0", "--data", str(data), *flags],
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


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"{field}:\s+(\d+) kB", status)
    if match is None:
        raise RuntimeError(f"no {field} line in /proc/{pid}/status")
    return int(match.group(1)) / 1024


def mark(pid: int) -> float:
    """Restarts the high-water mark at the current RSS; returns that RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return rss_mib(pid)


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


async def write(stub: streams_pb2_grpc.StreamsServiceStub, space: str, writes: dict) -> None:
    await stub.Produce(
        pb.ProduceRequest(
            space=space,
            writes=[
                pb.SegmentWrite(segment=segment, records=[pb.RecordInput(payload=p) for p in ps])
                for segment, ps in writes.items()
            ],
        )
    )


async def follow(stub: streams_pb2_grpc.StreamsServiceStub, space: str, **start: bool) -> object:
    call = stub.Consume(pb.ConsumeRequest(space=space, follow=True, **start))
    await call.initial_metadata()
    return call


async def attack_stalled(stub, pid: int, target: str) -> tuple[float, list]:
    for _ in range(40):  # 40 MB
        await write(stub, "s", {"a": [b"x" * 100_000] * 10})
    base = mark(pid)
    calls = [await follow(stub, "s") for _ in range(300)]
    await asyncio.sleep(3)  # let them fill what they can
    return base, calls


async def attack_spaces(stub, pid: int, target: str) -> tuple[float, list]:
    base = mark(pid)
    calls = [await follow(stub, f"s{i}", from_end=True) for i in range(30)]
    for i in range(30):
        for _ in range(16):  # 16 MB each
            await write(stub, f"s{i}", {"a": [b"x" * 100_000] * 10})
    return base, calls


async def attack_segments(stub, pid: int, target: str) -> tuple[float, list]:
    base = mark(pid)
    call = await follow(stub, "s", from_end=True)
    for first in range(0, 2001, 100):
        names = [f"g{j}" for j in range(first, min(2001, first + 100))]
        await write(stub, "s", {name: [b"x" * 100_000] for name in names})
    return base, [call]


async def attack_produce(stub, pid: int, target: str) -> tuple[float, list]:
    base = mark(pid)
    options = [("grpc.max_send_message_length", 64 << 20)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(8)]
    request = {"a": [b"x" * 100_000] * 150}  # 15 MB
    await asyncio.gather(
        *(write(streams_pb2_grpc.StreamsServiceStub(c), "big", request) for c in channels),
        return_exceptions=True,
    )
    return base, channels


async def run_attack(attack, pid: int, target: str) -> tuple[float, float]:
    channel = grpc.aio.insecure_channel(
        target, options=[("grpc.max_send_message_length", 64 << 20)]
    )
    stub = streams_pb2_grpc.StreamsServiceStub(channel)
    await write(stub, "probe", {"a": [b"p"]})
    base, held = await attack(stub, pid, target)  # held open until the Peek is answered
    started = time.perf_counter()
    await stub.Peek(pb.PeekRequest(space="probe"), timeout=60)
    peek_ms = (time.perf_counter() - started) * 1000
    growth = rss_mib(pid, "VmHWM") - base
    del held
    await channel.close()
    return growth, peek_ms


def attacks(flags: list[str]) -> None:
    print("| attack | peak RSS over baseline | Peek after |")
    print("| --- | --- | --- |")
    for name, attack, sync in (
        ("300 followers that never read", attack_stalled, False),
        ("30 followed spaces x 16 MB", attack_spaces, False),
        ("a followed space, 2,001 segments x 100 kB", attack_segments, False),
        ("8 parallel 15 MB Produces", attack_produce, True),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            server_flags = [*flags, *([] if sync else ["--no-sync"])]
            proc, target = start_server(Path(tmp) / "data", *server_flags)
            try:
                growth, peek_ms = asyncio.run(run_attack(attack, proc.pid, target))
            finally:
                proc.kill()
                proc.wait(30)
        print(f"| {name} | {growth:.0f} MiB | {peek_ms:.0f} ms |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--stalled", type=int, default=10)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--attacks", action="store_true", help="run the memory attacks")
    parser.add_argument("server_flags", nargs="*", help="after --: extra server flags")
    args = parser.parse_args()
    if args.attacks:
        attacks(args.server_flags)
        return
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
