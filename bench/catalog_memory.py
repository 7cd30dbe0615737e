"""Start-up time and memory against the number of segments (the catalog cache).

    python bench/catalog_memory.py [--segments 1000000] [--spaces 1] [--name-bytes 255]
        [--data DIR] [--server-root DIR] [-- SERVER FLAGS]

Creates ``--segments`` segments (names of ``--name-bytes`` bytes, one record
each) in ``--spaces`` spaces with ``--no-sync`` and Produces of 10,000
segments (the most records one Produce takes), unless ``--data`` already holds
them (a marker file beside it says so: create once, measure several servers on
the same data), then compacts it. Then starts the server again and measures:

- start-up: from the process start to its ``listening on`` line, and its RSS then;
- reads: Peeks of random segments (latency), then RSS;
- writes: Produces of one record to random segments, one at a time, and of
  10,000 random segments at once (latency), then RSS;
- a listing: ListSegments over the first 100 pages;
- the peak RSS (VmHWM) of the whole run, and the catalog cache's metrics.

Each RSS is the least over 2 s (RocksDB's compactions hold buffers for a moment).

``--server-root`` runs ``server.py`` of another checkout (e.g. the commit
before the cache) on the same data, so both are measured in one run. Options
go to the server after ``--``; ``STREAMS_CATALOG_CACHE_BYTES`` in the
environment reaches it as well (a server without the option ignores it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import rocksdict
from common import ROOT, markdown_table, percentile, sample_process

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc

PER_PRODUCE = 10_000
_LISTENING = re.compile(r"listening on (\S+:\d+)")


def segment_name(i: int, size: int) -> str:
    return f"{i:07d}".ljust(size, "n")


def space_name(k: int) -> str:
    return f"space-{k:05d}"


def layout(segments: int, spaces: int) -> list[tuple[str, range]]:
    """Which segments each space gets: consecutive ranges, spaces in turn."""
    per_space = -(-segments // spaces)
    return [
        (space_name(k), range(k * per_space, min((k + 1) * per_space, segments)))
        for k in range(spaces)
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``server.py`` of ``root`` on ``data``; start-up timed to its ready line."""

    def __init__(self, root: Path, data: Path, flags: list[str], log: Path) -> None:
        self.metrics_port = free_port()
        command = [sys.executable, "server.py", "--listen", "127.0.0.1:0", "--data", str(data)]
        command += ["--no-sync", "--metrics-listen", f"127.0.0.1:{self.metrics_port}", *flags]
        started = time.perf_counter()
        with open(log, "a", encoding="utf-8") as err:
            self.process = subprocess.Popen(
                command, cwd=root, stdout=subprocess.PIPE, stderr=err, text=True
            )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            match = _LISTENING.search(line)
            if match:
                self.address = match.group(1)
                break
        else:
            raise RuntimeError(f"server exited with {self.process.wait()}; see {log}")
        self.startup_s = time.perf_counter() - started
        self.channel = grpc.insecure_channel(
            self.address, options=[("grpc.max_send_message_length", 64 << 20)]
        )
        self.stub = pb_grpc.StreamsServiceStub(self.channel)

    def rss_mib(self) -> float:
        """The least VmRSS over 2 s, in MiB: RocksDB's background work holds
        buffers for a moment (seen: tens of MiB for a second while it compacts)."""
        least, end = sample_process(self.process.pid).rss_mb, time.monotonic() + 2.0
        while time.monotonic() < end:
            time.sleep(0.1)
            least = min(least, sample_process(self.process.pid).rss_mb)
        return round(least, 1)

    def peak_rss_mib(self) -> float:
        return round(sample_process(self.process.pid).peak_rss_mb, 1)

    def catalog_metrics(self) -> dict[str, float]:
        """The streams_catalog_cache_* samples (none on a server without the cache)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        found = {}
        for line in text.splitlines():
            if line.startswith("streams_catalog_cache_"):
                name, value = line.rsplit(" ", 1)
                found[name] = float(value)
        return found

    def stop(self) -> None:
        self.channel.close()
        self.process.terminate()
        self.process.wait(timeout=120)


def create(server: Server, args: argparse.Namespace) -> float:
    """Writes every segment once; returns the seconds taken."""
    started = time.perf_counter()
    done = 0
    for space, names in layout(args.segments, args.spaces):
        for start in range(names.start, names.stop, PER_PRODUCE):
            writes = [
                pb.SegmentWrite(
                    segment=segment_name(i, args.name_bytes),
                    records=[pb.RecordInput(payload=b"x")],
                )
                for i in range(start, min(start + PER_PRODUCE, names.stop))
            ]
            server.stub.Produce(pb.ProduceRequest(space=space, writes=writes), timeout=600)
            done += len(writes)
            if done % 100_000 < len(writes):
                print(f"  {done:,} segments written", file=sys.stderr, flush=True)
    return time.perf_counter() - started


def compact(data: Path) -> None:
    """Compacts the new data folder, so that every server measured starts on the
    same settled files rather than the first one doing the compaction."""
    db = rocksdict.Rdict(str(data), rocksdict.Options(raw_mode=True))
    try:
        db.compact_range(None, None)
    finally:
        db.close()


def measure(server: Server, args: argparse.Namespace) -> dict[str, object]:
    figures: dict[str, object] = {"startup_s": round(server.startup_s, 3)}
    figures["rss_after_start_mib"] = server.rss_mib()
    spaces = layout(args.segments, args.spaces)
    rng = random.Random(7)

    def pick() -> tuple[str, str]:
        space, names = rng.choice(spaces)
        return space, segment_name(rng.choice(names), args.name_bytes)

    times = []
    for _ in range(args.reads):
        space, segment = pick()
        started = time.perf_counter()
        server.stub.Peek(pb.PeekRequest(space=space, segment=segment), timeout=60)
        times.append((time.perf_counter() - started) * 1000)
    figures["peek_p50_ms"] = round(percentile(times, 0.5), 3)
    figures["peek_p99_ms"] = round(percentile(times, 0.99), 3)
    figures["rss_after_reads_mib"] = server.rss_mib()

    times = []
    for _ in range(args.writes):
        space, segment = pick()
        write = pb.SegmentWrite(segment=segment, records=[pb.RecordInput(payload=b"y")])
        started = time.perf_counter()
        server.stub.Produce(pb.ProduceRequest(space=space, writes=[write]), timeout=60)
        times.append((time.perf_counter() - started) * 1000)
    figures["produce_1_p50_ms"] = round(percentile(times, 0.5), 3)
    times = []
    space, names = spaces[0]
    for _ in range(args.wide_writes):
        chosen = rng.sample(names, min(PER_PRODUCE, len(names)))
        writes = [
            pb.SegmentWrite(
                segment=segment_name(i, args.name_bytes), records=[pb.RecordInput(payload=b"z")]
            )
            for i in chosen
        ]
        started = time.perf_counter()
        server.stub.Produce(pb.ProduceRequest(space=space, writes=writes), timeout=600)
        times.append((time.perf_counter() - started) * 1000)
    figures["produce_10k_segments_p50_ms"] = round(percentile(times, 0.5), 1)
    figures["rss_after_writes_mib"] = server.rss_mib()

    started, token = time.perf_counter(), ""
    for _ in range(100):
        page = server.stub.ListSegments(
            pb.ListSegmentsRequest(space=space, page_size=1000, page_token=token), timeout=60
        )
        token = page.next_page_token
        if not token:
            break
    figures["list_100_pages_s"] = round(time.perf_counter() - started, 3)
    figures["rss_end_mib"] = server.rss_mib()
    figures["peak_rss_mib"] = server.peak_rss_mib()
    figures["catalog"] = server.catalog_metrics()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segments", type=int, default=1_000_000)
    parser.add_argument("--spaces", type=int, default=1)
    parser.add_argument("--name-bytes", type=int, default=255)
    parser.add_argument("--reads", type=int, default=2_000)
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--wide-writes", type=int, default=5)
    parser.add_argument("--data", type=Path, help="data folder to create once and reuse")
    parser.add_argument("--server-root", type=Path, default=ROOT, help="checkout to run")
    parser.add_argument("server_flags", nargs="*", help="after --: flags for the server")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="streams-catalog-"))
    data = args.data or scratch / "data"
    marker = data.with_name(data.name + ".created.json")
    log = scratch / "server.log"
    try:
        if not marker.exists():
            server = Server(args.server_root, data, args.server_flags, log)
            seconds = create(server, args)
            server.stop()
            compact(data)
            marker.write_text(json.dumps({"segments": args.segments, "spaces": args.spaces}))
            print(f"created {args.segments:,} segments in {seconds:.0f} s", file=sys.stderr)
        created = json.loads(marker.read_text())
        if (created["segments"], created["spaces"]) != (args.segments, args.spaces):
            sys.exit(f"{data} holds {created}, not what was asked")
        size = sum(f.stat().st_size for f in data.iterdir() if f.is_file())
        server = Server(args.server_root, data, args.server_flags, log)
        try:
            figures = measure(server, args)
        finally:
            server.stop()
        figures["data_mib"] = round(size / (1 << 20))
        catalog = figures.pop("catalog")
        rows = [[key, str(value)] for key, value in figures.items()]
        rows += [[key, f"{value:,.0f}"] for key, value in catalog.items()]  # type: ignore[union-attr]
        print(f"server {args.server_root}, flags {args.server_flags}, {args.segments:,} "
              f"segments in {args.spaces} space(s), names of {args.name_bytes} bytes")  # fmt: skip
        print(markdown_table(["figure", "value"], rows))
        print(json.dumps({**figures, "catalog": catalog}))
    finally:
        if args.data is None:
            shutil.rmtree(scratch, ignore_errors=True)
        elif log.exists():
            print(f"server log: {log}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
