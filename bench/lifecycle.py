"""The data lifecycle's costs (issue 13):

- **reclaim**: a server writes ``mb`` MB of 1 KB records (random bytes, so
  RocksDB cannot compress them away), trims 90 % of the space, and the data
  folder's size is taken before the trim, right after it, and until at least
  80 % of the trimmed share is given back (or ``reclaim_timeout`` s), with no
  restart;
- **retention latency**: a producer process writes 1-record durable Produces
  one at a time while a retention pass removes ``retention_records`` records
  (100 B each; a max-age policy set by ConfigureSpace on a space written
  before): p99 during the pass beside p99 before it (idle) and after it (disk
  space being reclaimed), in one run, on one connection, with the same
  background polling throughout;
- **one pass**: ``enforce_retention`` with a max age on the RocksDB engine,
  in-process, over ``segments`` segments of one record each in 10 spaces: a
  pass with nothing to remove and one that removes every record; time and
  Python memory (bench/lifecycle_retention.py's ``retention_pass``).

    python bench/lifecycle.py            # CI-sized: 50 MB, 100k records, 10k segments
    python bench/lifecycle.py --full     # 500 MB, 1M records, 100k segments
    python bench/lifecycle.py --mb 200 --retention-records 300000 --segments 20000

``scripts/bench --only lifecycle`` runs the same in the suite (with
``--quick``: the CI sizes). Prints Markdown tables; ``--json FILE`` writes
the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import lifecycle_retention
from common import Server, fmt, load_note, markdown_table, percentile, run_server
from google.protobuf.duration_pb2 import Duration

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc

MB = 1_000_000
MIB = 1 << 20
SECOND_NS = 1_000_000_000
RECORD_PAYLOAD = 1000  # reclaim: bytes of each record's payload
RECORDS_PER_CALL = 1000  # reclaim: about 1 MB per Produce
SEGMENTS = 8  # reclaim: segments written in turn, each with its own random payloads
TRIM_SHARE = 0.9
RECLAIM_TARGET = 0.8  # share of the trimmed disk bytes to be given back
SMALL_PAYLOAD = bytes(range(100))  # retention: 100 B per record
PER_CALL = 10_000  # the most records one Produce takes
RETENTION_INTERVAL = 0.5  # seconds between the server's retention passes
POLL_SECONDS = 0.02  # the bench's GetSpace polling, before, during and after the pass
PRODUCE = "/streams.v1.StreamsService/Produce"
_PASS_LOG = re.compile(r"retention removed (\d+) records \((\d+) bytes\) in ([0-9.]+)s")
_CHANNEL = [
    ("grpc.max_send_message_length", 16 * MIB),
    ("grpc.max_receive_message_length", 16 * MIB),
]


@dataclass(frozen=True)
class Sizes:
    mb: int  # reclaim: MB of payload written
    retention_records: int  # retention latency: records the pass removes
    segments: int  # one pass: segments
    idle_seconds: float  # retention latency: producer time before (and after) the pass
    reclaim_timeout: float  # seconds to wait for the disk space to come back


CI = Sizes(mb=50, retention_records=100_000, segments=10_000, idle_seconds=4, reclaim_timeout=120)
FULL = Sizes(
    mb=500, retention_records=1_000_000, segments=100_000, idle_seconds=8, reclaim_timeout=600
)


# -- helpers ---------------------------------------------------------------


@dataclass(frozen=True)
class Disk:
    allocated: int  # st_blocks: what the files take on the file system (du)
    apparent: int  # st_size, as streams_disk_bytes counts

    @property
    def mib(self) -> str:
        return fmt(self.allocated / MIB, 1)


def disk(folder: Path) -> Disk:
    allocated = apparent = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                found = os.stat(os.path.join(root, name), follow_symlinks=False)
            except FileNotFoundError:
                continue  # a compaction removed it meanwhile
            allocated += found.st_blocks * 512
            apparent += found.st_size
    return Disk(allocated, apparent)


@contextlib.contextmanager
def connect(
    address: str,
) -> Iterator[tuple[pb_grpc.StreamsServiceStub, grpc.UnaryUnaryMultiCallable]]:
    """A stub, and a Produce call that takes request bytes (serialized once)."""
    with grpc.insecure_channel(address, options=_CHANNEL) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield pb_grpc.StreamsServiceStub(channel), channel.unary_unary(PRODUCE)


def produce_request(space: str, segment: str, payloads: list[bytes]) -> pb.ProduceRequest:
    records = [pb.RecordInput(payload=p) for p in payloads]
    return pb.ProduceRequest(
        space=space, writes=[pb.SegmentWrite(segment=segment, records=records)]
    )


def space_info(stub: pb_grpc.StreamsServiceStub, space: str) -> pb.SpaceInfo:
    return stub.GetSpace(pb.GetSpaceRequest(space=space), timeout=60).space


def pass_logs(server: Server) -> list[tuple[int, int, float]]:
    """(records, bytes, seconds) of each retention pass the server logged."""
    text = server.log_path.read_text(encoding="utf-8", errors="replace")
    return [(int(r), int(b), float(s)) for r, b, s in _PASS_LOG.findall(text)]


def wait_until(check: Callable[[], bool], timeout: float, every: float = 0.25) -> bool:
    """Whether ``check()`` held within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def share(part: float, whole: float) -> float:
    return part / whole if whole else math.nan


def p99_ms(latencies: list[float]) -> float:
    return percentile(latencies, 0.99) * 1000


# -- reclaim ---------------------------------------------------------------


@dataclass
class Reclaim:
    written_mb: float
    records: int
    trimmed_records: int
    write_seconds: float
    trim_ms: float  # the Trim call
    before: Disk
    right_after: Disk
    reclaimed: Disk  # the last size taken
    reclaim_seconds: float  # from the Trim's return to the last size taken
    reached: bool  # RECLAIM_TARGET of the trimmed share given back in time

    @property
    def trimmed_disk(self) -> float:
        """The trimmed records' share of the disk before the trim."""
        return self.before.allocated * self.trimmed_records / self.records

    @property
    def given_back(self) -> float:
        """The share of :attr:`trimmed_disk` given back to the file system."""
        if not self.trimmed_disk:
            return math.nan
        return (self.before.allocated - self.reclaimed.allocated) / self.trimmed_disk


def reclaim(mb: int, timeout: float) -> Reclaim:
    calls = max(1, mb * MB // (RECORD_PAYLOAD * RECORDS_PER_CALL))
    requests = [
        produce_request(
            "reclaim", f"seg-{k}", [os.urandom(RECORD_PAYLOAD) for _ in range(RECORDS_PER_CALL)]
        ).SerializeToString()
        for k in range(SEGMENTS)
    ]
    extra = ["--retention-interval", "86400"]  # no retention pass meanwhile
    with run_server(sync=True, extra=extra) as server, connect(server.address) as (stub, raw):
        began = time.monotonic()
        for k in range(calls):
            raw(requests[k % SEGMENTS], timeout=60)
        write_seconds = time.monotonic() - began
        info = space_info(stub, "reclaim")
        before = disk(server.data)
        cut = int(info.last_position * TRIM_SHARE) + 1
        began = time.monotonic()
        stub.Trim(pb.TrimRequest(space="reclaim", before_offset=cut), timeout=600)
        trimmed_at = time.monotonic()
        right_after = disk(server.data)
        after = space_info(stub, "reclaim")
        result = Reclaim(
            written_mb=calls * RECORDS_PER_CALL * RECORD_PAYLOAD / MB,
            records=info.record_count,
            trimmed_records=info.record_count - after.record_count,
            write_seconds=write_seconds,
            trim_ms=(trimmed_at - began) * 1000,
            before=before,
            right_after=right_after,
            reclaimed=right_after,
            reclaim_seconds=0.0,
            reached=False,
        )

        def given_back() -> bool:
            result.reclaimed = disk(server.data)
            result.reclaim_seconds = time.monotonic() - trimmed_at
            return result.given_back >= RECLAIM_TARGET

        result.reached = wait_until(given_back, timeout)
    return result


def reclaim_table(r: Reclaim) -> str:
    rows = [
        ["before the trim", r.before.mib, fmt(r.before.apparent / MIB, 1), "-"],
        [
            f"right after the trim ({fmt(r.trim_ms, 1)} ms)",
            r.right_after.mib,
            fmt(r.right_after.apparent / MIB, 1),
            fmt(share(r.before.allocated - r.right_after.allocated, r.trimmed_disk), 2),
        ],
        [
            f"{fmt(r.reclaim_seconds, 1)} s later"
            + ("" if r.reached else f" (gave up: {RECLAIM_TARGET:.0%} not reached)"),
            r.reclaimed.mib,
            fmt(r.reclaimed.apparent / MIB, 1),
            fmt(r.given_back, 2),
        ],
    ]
    return markdown_table(
        ["data folder", "MiB (du)", "MiB (file sizes)", "share of trimmed bytes given back"], rows
    )


# -- retention latency -----------------------------------------------------


def _produce_loop(address: str, request: bytes, ready: Any, stop: Any, out: Any) -> None:
    """The producer process: 1-record Produces one at a time until ``stop``;
    puts [(monotonic start, seconds)] on ``out``."""
    samples: list[tuple[float, float]] = []
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(PRODUCE)
        for _ in range(50):
            call(request, timeout=60)
        ready.set()
        while not stop.is_set():
            began = time.monotonic()
            call(request, timeout=60)
            samples.append((began, time.monotonic() - began))
    out.put(samples)


@dataclass
class RetentionLatency:
    records: int
    idle: list[float]  # seconds per call before the pass
    during: list[float]  # calls overlapping the pass
    after: list[float]  # calls after it (disk space being reclaimed)
    pass_seconds: float  # from ConfigureSpace to the space found empty
    logged: list[tuple[int, int, float]]  # the server's retention log lines
    removed_records: int


def retention_latency(records: int, idle_seconds: float) -> RetentionLatency:
    extra = ["--retention-interval", str(RETENTION_INTERVAL)]
    with run_server(sync=True, extra=extra) as server, connect(server.address) as (stub, raw):
        body = produce_request("old", "", [SMALL_PAYLOAD] * PER_CALL)
        for k in range(-(-records // PER_CALL)):
            body.writes[0].segment = f"old-{k:04d}"
            del body.writes[0].records[min(PER_CALL, records - k * PER_CALL) :]
            raw(body.SerializeToString(), timeout=120)
        written = space_info(stub, "old").record_count
        ctx = mp.get_context("spawn")
        ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
        request = produce_request("live", "s", [SMALL_PAYLOAD]).SerializeToString()
        producer = ctx.Process(
            target=_produce_loop, args=(server.address, request, ready, stop, out), daemon=True
        )
        producer.start()
        try:
            if not ready.wait(120):
                raise RuntimeError("the producer process did not start")
            polls: list[tuple[float, int]] = []
            polling = threading.Event()

            def poll() -> None:
                while not polling.is_set():
                    polls.append((time.monotonic(), space_info(stub, "old").record_count))
                    time.sleep(POLL_SECONDS)

            poller = threading.Thread(target=poll, daemon=True)
            started = time.monotonic()
            poller.start()
            time.sleep(idle_seconds)
            configured = time.monotonic()
            policy = pb.RetentionPolicy(max_age=Duration(nanos=SECOND_NS // 10))
            stub.ConfigureSpace(
                pb.ConfigureSpaceRequest(space="old", config=pb.SpaceConfig(retention=policy)),
                timeout=60,
            )
            if not wait_until(lambda: bool(polls) and polls[-1][1] == 0, 600, POLL_SECONDS):
                raise RuntimeError(f"the retention pass did not empty the space: {polls[-1]}")
            emptied = polls[-1][0]
            time.sleep(idle_seconds)
            stop.set()
            samples: list[tuple[float, float]] = out.get(timeout=120)
            polling.set()
            poller.join()
        finally:
            stop.set()
            producer.join(timeout=30)
        logged = pass_logs(server)
    return RetentionLatency(
        records=written,
        idle=[s for t, s in samples if started <= t and t + s < configured],
        during=[s for t, s in samples if t < emptied and t + s >= configured],
        after=[s for t, s in samples if t >= emptied],
        pass_seconds=emptied - configured,
        logged=logged,
        removed_records=sum(r for r, _, _ in logged),
    )


def latency_table(r: RetentionLatency) -> str:
    rows = []
    for label, values in (
        ("idle (before the pass)", r.idle),
        (f"during the pass ({fmt(r.pass_seconds, 2)} s)", r.during),
        ("after it (reclaiming)", r.after),
    ):
        rows.append(
            [
                label,
                fmt(len(values)),
                fmt(percentile(values, 0.5) * 1000, 2),
                fmt(p99_ms(values), 2),
                fmt(max(values, default=0) * 1000, 2),
            ]
        )
    return markdown_table(["durable 1-record Produce", "calls", "p50 ms", "p99 ms", "max ms"], rows)


# -- one pass over many segments -------------------------------------------


def pass_table(p: dict[str, float]) -> str:
    """The figures of bench/lifecycle_retention.py's retention_pass."""
    rows = [
        [
            f"nothing past the max age ({fmt(p['nothing_removed'])} removed)",
            fmt(p["nothing_s"], 3),
            fmt(p["nothing_peak_mib"], 2),
            fmt(p["nothing_chunk_reads"]),
        ],
        [
            f"every record past it ({fmt(p['everything_removed'])} removed)",
            fmt(p["everything_s"], 3),
            fmt(p["everything_peak_mib"], 2),
            fmt(p["everything_chunk_reads"]),
        ],
    ]
    return markdown_table(
        ["retention pass (max age)", "seconds", "Python memory peak MiB", "chunks read"], rows
    )


# -- all of it -------------------------------------------------------------


@dataclass
class Figures:
    sizes: Sizes
    reclaim: Reclaim
    latency: RetentionLatency
    one_pass: dict[str, float]

    @property
    def p99_ratio(self) -> float:
        return share(p99_ms(self.latency.during), p99_ms(self.latency.idle))

    def tables(self) -> list[tuple[str, str, str]]:
        """(title, note, table) of each part."""
        r, lat = self.reclaim, self.latency
        return [
            (
                "Lifecycle: disk space after a trim",
                f"{fmt(r.written_mb)} MB of 1 KB random records ({fmt(r.records)} records, "
                f"written in {fmt(r.write_seconds, 1)} s, durable), then Trim of "
                f"{fmt(r.trimmed_records)} records ({TRIM_SHARE:.0%}); the trimmed share of "
                f"the disk: {fmt(r.trimmed_disk / MIB, 1)} MiB; no restart",
                reclaim_table(r),
            ),
            (
                "Lifecycle: produce latency during a retention pass",
                f"a retention pass (max age, --retention-interval {RETENTION_INTERVAL:g}) "
                f"removing {fmt(lat.records)} records of 100 B in {fmt(lat.records // PER_CALL)} "
                f"segments; the server logged {fmt(lat.removed_records)} records removed in "
                + (", ".join(f"{s:.3f} s" for _, _, s in lat.logged) or "no pass")
                + f"; GetSpace polled every {POLL_SECONDS * 1000:g} ms throughout",
                latency_table(lat),
            ),
            (
                "Lifecycle: one retention pass over many segments",
                f"{fmt(self.sizes.segments)} segments of one record each in "
                f"{lifecycle_retention.SPACES} spaces; in-process on the RocksDB engine "
                "(bench/lifecycle_retention.py): enforce_retention with a max age",
                pass_table(self.one_pass),
            ),
        ]


def measure(sizes: Sizes) -> Figures:
    return Figures(
        sizes,
        reclaim(sizes.mb, sizes.reclaim_timeout),
        retention_latency(sizes.retention_records, sizes.idle_seconds),
        lifecycle_retention.retention_pass(sizes.segments),
    )


def as_json(f: Figures) -> dict[str, Any]:
    lat = f.latency
    return {
        "sizes": asdict(f.sizes),
        "reclaim": asdict(f.reclaim) | {"given_back": f.reclaim.given_back},
        "retention_latency": {
            "records": lat.records,
            "pass_seconds": lat.pass_seconds,
            "logged": lat.logged,
            **{
                f"{phase}_{name}": value
                for phase, values in (
                    ("idle", lat.idle),
                    ("during", lat.during),
                    ("after", lat.after),
                )
                for name, value in (
                    ("calls", len(values)),
                    ("p50_ms", percentile(values, 0.5) * 1000),
                    ("p99_ms", p99_ms(values)),
                )
            },
            "p99_ratio": f.p99_ratio,
        },
        "one_pass": f.one_pass,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the issue's sizes (500 MB, 1M, 100k)")
    parser.add_argument("--mb", type=int, help="reclaim: MB written")
    parser.add_argument("--retention-records", type=int, help="records the retention pass removes")
    parser.add_argument("--segments", type=int, help="segments of the one-pass measurement")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    sizes = FULL if args.full else CI
    for name in ("mb", "retention_records", "segments"):
        if getattr(args, name) is not None:
            sizes = replace(sizes, **{name: getattr(args, name)})
    print(f"_{load_note()}_\n", flush=True)
    figures = measure(sizes)
    for title, note, table in figures.tables():
        print(f"### {title}\n\n_{note}_\n\n{table}\n", flush=True)
    print(
        f"given back: {figures.reclaim.given_back:.2f} of the trimmed share "
        f"(target >= {RECLAIM_TARGET}); produce p99 during / idle: {figures.p99_ratio:.2f} "
        "(target <= 2)"
    )
    if args.json:
        args.json.write_text(json.dumps(as_json(figures), indent=1), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
