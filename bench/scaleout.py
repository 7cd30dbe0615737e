"""Scale-out: Streams gateways over a 3-node JetStream cluster, in one run
beside the RocksDB backend (one server) and the NATS-native limit.

Every configuration gets the same work from the same client processes
(``workers.ClientPool``): each producer writes batches of ``PER_CALL``
records of ~240 B (a Produce, one call at a time) to its own space, for a
fixed time; then every space is read to its end at once (a Consume of its
segment, one reader per space). Configurations:

- ``rocksdb``: one server, ``--storage rocksdb`` (durable, the default);
- ``jetstream, 1 gateway`` and ``3 gateways``: ``server.py --storage
  jetstream`` processes, each on its own port, over a 3-node R3 cluster with
  ``sync_interval: always`` (tests/support/nats.py); producer ``i`` and
  reader ``i`` use gateway ``i % gateways``;
- ``NATS-native``: the same client processes with nats-py and no gateway:
  each publishes the very batches a gateway publishes (the backend's own
  ``JetStream.publish_batch``: one atomic batch per Produce, the same
  subjects, bodies and ``Streams-*`` headers, ``Nats-Expected-Last-Sequence``)
  to a space's stream made by a gateway, and reads it back with the
  backend's batched direct gets (``READ_BATCH`` messages per request), then
  again with an ordered push consumer (nats-py's fastest read).

Follow latency is not measured here: bench/follow_latency.py measures it for
one server.

    python bench/scaleout.py --quick     # CI-sized: 3 producers, 3 s per run
    python bench/scaleout.py             # 6 producers, 10 s per run
    scripts/bench --only scaleout [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import grpc
import nats
from common import fmt, load_note, machine_cpu, markdown_table, run_server
from core import Rate
from workers import CONSUME, PRODUCE, ClientPool, JobResult, StreamJob, UnaryJob, merge

from streams.storage.jetstream import records
from streams.storage.jetstream.api import JetStream
from streams.storage.jetstream.names import Names
from streams.storage.jetstream.reads import READ_BATCH
from streams.v1 import streams_pb2 as pb
from tests.support.nats import NatsCluster

PAYLOAD = bytes(range(240))  # ~240 B per record
PER_CALL = 100
SEGMENT = "s"
NATIVE_SEGMENT = "native"  # the native producers' segment (a gateway made "s")
PREFIX = "bench"  # --nats-prefix of the gateways, and the native clients' names
GATEWAYS = 3
WARMUP_CALLS = 3  # uncounted calls each producer makes first (their records are read too)
SETUP_TIMEOUT_S = 60.0
ROCKSDB = "rocksdb, 1 server"
NATIVE = "NATS-native (nats-py, no gateway)"


def through(gateways: int) -> str:
    """A configuration's name: JetStream through ``gateways`` gateways."""
    return f"jetstream, {gateways} gateway{'s' if gateways > 1 else ''}"


@dataclass(frozen=True)
class Sizes:
    producers: int  # client processes producing at once (then as many readers)
    seconds: float  # each produce run


QUICK = Sizes(producers=3, seconds=3.0)
FULL = Sizes(producers=6, seconds=10.0)


# -- The NATS-native limit: jobs for the client pool ----------------------


@dataclass(frozen=True)
class NativeProduce:
    """``calls`` atomic batches of ``PER_CALL`` records, one at a time, to
    segment NATIVE_SEGMENT of ``space`` (its stream made by a gateway)."""

    urls: tuple[str, ...]
    space: str
    calls: int
    max_seconds: float

    def run(self, ready: Callable[[], None], go: EventType) -> JobResult:
        return asyncio.run(self._run(ready, go))

    async def _run(self, ready: Callable[[], None], go: EventType) -> JobResult:
        result = JobResult()
        names = Names(PREFIX)
        subject = names.subject(self.space, NATIVE_SEGMENT)
        body = pb.RecordInput(payload=PAYLOAD).SerializeToString()
        messages = [(subject, body)] * PER_CALL
        nc = await nats.connect(list(self.urls))
        try:
            js = JetStream(nc)
            info = await js.info(names.stream(self.space))
            if info is None:
                raise RuntimeError(f"no stream for space {self.space!r}: a gateway makes it")
            last, sequence = int(info["state"]["last_seq"]), 0

            async def batch() -> int:
                nonlocal sequence
                ts = time.time_ns()
                headers = []
                for _ in range(PER_CALL):
                    sequence += 1
                    headers.append(records.headers(sequence, sequence * len(body), ts, ""))
                headers[0]["Nats-Expected-Last-Sequence"] = str(last)
                return await js.publish_batch(messages, headers)

            for _ in range(WARMUP_CALLS):
                last = await batch()
            ready()
            go.wait(SETUP_TIMEOUT_S)
            result.start = time.monotonic()
            deadline = result.start + self.max_seconds
            for _ in range(self.calls):
                before = time.perf_counter()
                try:
                    last = await batch()
                except Exception as exc:  # counted and shown, as a gRPC client's errors are
                    result.errors.append(f"{type(exc).__name__}: {exc}")
                    break  # the numbers are unknown now
                result.latencies.append(time.perf_counter() - before)
                if time.monotonic() > deadline:
                    break
            result.end = time.monotonic()
            result.calls = len(result.latencies) + len(result.errors)
        finally:
            await nc.close()
        return result


@dataclass(frozen=True)
class NativeRead:
    """Segment NATIVE_SEGMENT of ``space`` read to its end: with the backend's
    batched direct gets (``READ_BATCH`` messages per request), or with
    ``ordered``, an ordered push consumer (nats-py's fastest read)."""

    urls: tuple[str, ...]
    space: str
    ordered: bool = False
    max_seconds: float = 300.0

    def run(self, ready: Callable[[], None], go: EventType) -> JobResult:
        return asyncio.run(self._run(ready, go))

    async def _run(self, ready: Callable[[], None], go: EventType) -> JobResult:
        result = JobResult(calls=1)
        names = Names(PREFIX)
        stream, subject = names.stream(self.space), names.subject(self.space, NATIVE_SEGMENT)
        nc = await nats.connect(list(self.urls))
        try:
            info = await JetStream(nc).info(stream)
            last = int(info["state"]["last_seq"]) if info else 0
            ready()
            go.wait(SETUP_TIMEOUT_S)
            result.start = time.monotonic()
            read = self._ordered if self.ordered else self._direct
            await asyncio.wait_for(read(nc, stream, subject, last, result), self.max_seconds)
            result.end = time.monotonic()
            result.latencies.append(result.end - result.start)
        finally:
            await nc.close()
        return result

    async def _direct(
        self, nc: nats.NATS, stream: str, subject: str, last: int, result: JobResult
    ) -> None:
        js, position = JetStream(nc), 1
        while position <= last:
            found = await js.direct_batch(stream, position, READ_BATCH, 4 << 20, subject)
            if not found:
                break
            result.messages += 1
            result.records += len(found)
            result.last_sequence = int(found[-1].headers[records.SEQ])
            position = found[-1].seq + 1

    async def _ordered(
        self, nc: nats.NATS, stream: str, subject: str, last: int, result: JobResult
    ) -> None:
        done = asyncio.Event()

        async def take(msg: nats.aio.msg.Msg) -> None:
            result.records += 1
            result.last_sequence = int((msg.headers or {})[records.SEQ])
            if msg.metadata.sequence.stream >= last:
                done.set()

        sub = await nc.jetstream().subscribe(subject, stream=stream, ordered_consumer=True, cb=take)
        try:
            await done.wait()
        finally:
            await sub.unsubscribe()


# -- One configuration ----------------------------------------------------


@dataclass
class Figures:
    """One configuration's produce and read runs."""

    name: str
    produce: Rate
    busy: float  # share of the machine's cores busy during the produce run
    read_rate: float  # records/s, every space read at once
    read_seconds: list[float]  # each reader's time to its end
    problems: list[str] = field(default_factory=list)
    other_read: float = math.nan  # NATS-native: the same with an ordered consumer


def produce_request(space: str) -> bytes:
    records_ = [pb.RecordInput(payload=PAYLOAD)] * PER_CALL
    write = pb.SegmentWrite(segment=SEGMENT, records=records_)
    return pb.ProduceRequest(space=space, writes=[write]).SerializeToString()


def consume_request(space: str) -> bytes:
    return pb.ConsumeRequest(space=space, segment=SEGMENT).SerializeToString()


def load_average() -> str:
    """The 1-minute load average, without waiting for a quiet second (as
    load_note does before the first configuration)."""
    return f"load average {os.getloadavg()[0]:.2f}"


def busy_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    return (after[0] - before[0]) / max(after[1] - before[1], 1e-9)


def measure(
    pool: ClientPool,
    name: str,
    produce_jobs: Sequence[UnaryJob | NativeProduce],
    read_jobs: Callable[[], Sequence[StreamJob | NativeRead]],
    other_reads: Callable[[], Sequence[NativeRead]] | None = None,
) -> Figures:
    """Produces with ``produce_jobs`` at once, then reads every space at once
    (and again with ``other_reads``), checking that each read got every record
    its producer wrote."""
    before = machine_cpu()
    results = pool.run(produce_jobs)
    busy = busy_share(before, machine_cpu())
    written = [(r.calls - len(r.errors) + WARMUP_CALLS) * PER_CALL for r in results]
    rate, seconds, problems = read_all(pool, read_jobs(), written, name)
    figures = Figures(name, merge(results, PER_CALL), busy, rate, seconds, problems)
    if other_reads is not None:
        figures.other_read, _, more = read_all(pool, other_reads(), written, name)
        figures.problems += more
    return figures


def read_all(
    pool: ClientPool, jobs: Sequence[StreamJob | NativeRead], written: Sequence[int], name: str
) -> tuple[float, list[float], list[str]]:
    """Records/s of ``jobs`` run at once, each one's seconds, and what was
    missing (reader ``i`` reads what producer ``i`` wrote)."""
    reads = pool.run(jobs)
    problems = [
        f"{name}: reader {i} got {r.records:,} records ending at sequence {r.last_sequence:,}, "
        f"its producer wrote {expected:,}"
        for i, (r, expected) in enumerate(zip(reads, written, strict=True))
        if r.records != expected or r.last_sequence != expected or r.errors
    ]
    started = [r for r in reads if r.start]
    seconds = max(r.end for r in started) - min(r.start for r in started) if started else 0.0
    rate = sum(r.records for r in reads) / seconds if seconds > 0 else math.nan
    return rate, [r.end - r.start for r in started], problems


def producers(sizes: Sizes, label: str) -> list[str]:
    return [f"{label}-{i}" for i in range(sizes.producers)]


def through_servers(
    pool: ClientPool, name: str, sizes: Sizes, addresses: Sequence[str], label: str
) -> Figures:
    """The work through Streams servers: producer and reader ``i`` on
    ``addresses[i % len(addresses)]``."""
    spaces = producers(sizes, label)
    at = [addresses[i % len(addresses)] for i in range(len(spaces))]
    produce = [
        UnaryJob(a, PRODUCE, (produce_request(s),), 1_000_000, sizes.seconds, WARMUP_CALLS)
        for a, s in zip(at, spaces, strict=True)
    ]
    return measure(
        pool,
        name,
        produce,
        lambda: [
            StreamJob(a, CONSUME, consume_request(s)) for a, s in zip(at, spaces, strict=True)
        ],
    )


def gateway_args(urls: Sequence[str]) -> tuple[str, ...]:
    return ("--storage", "jetstream", "--nats-url", ",".join(urls), "--nats-prefix", PREFIX)


def make_spaces(address: str, spaces: Sequence[str]) -> None:
    """A space's stream, made by a gateway: one record in segment SEGMENT."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(PRODUCE)
        for space in spaces:
            write = pb.SegmentWrite(segment=SEGMENT, records=[pb.RecordInput(payload=PAYLOAD)])
            call(pb.ProduceRequest(space=space, writes=[write]).SerializeToString(), timeout=30)


@contextlib.contextmanager
def gateways(urls: Sequence[str], count: int) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(run_server(extra=gateway_args(urls))).address for _ in range(count)
        ]


@dataclass
class Outcome:
    sizes: Sizes
    notes: dict[str, str]  # the machine's load before each configuration (waited for the first)
    figures: list[Figures]
    seconds: float


def run(pool: ClientPool, sizes: Sizes) -> Outcome:
    """Every configuration, one after the other, in this process's run."""
    if pool.size < sizes.producers:
        raise ValueError(f"{sizes.producers} producers need as many client processes")
    began = time.monotonic()
    notes: dict[str, str] = {}
    figures: list[Figures] = []
    notes["rocksdb"] = load_note()
    with run_server() as server:
        figures.append(through_servers(pool, ROCKSDB, sizes, [server.address], "rdb"))
    with (
        tempfile.TemporaryDirectory(prefix="streams-bench-nats-") as tmp,
        NatsCluster(Path(tmp), 3, sync_interval="always") as cluster,
    ):
        native = producers(sizes, "native")
        with gateways(cluster.urls, GATEWAYS) as addresses:
            for count in (1, GATEWAYS):
                label = through(count)
                notes[label] = load_average()
                figures.append(through_servers(pool, label, sizes, addresses[:count], f"gw{count}"))
            make_spaces(addresses[0], native)
        # The gateways are stopped: the native clients have the cluster to themselves.
        urls = tuple(cluster.urls)
        notes["native"] = load_average()
        figures.append(
            measure(
                pool,
                NATIVE,
                [NativeProduce(urls, s, 1_000_000, sizes.seconds) for s in native],
                lambda: [NativeRead(urls, s) for s in native],
                lambda: [NativeRead(urls, s, ordered=True) for s in native],
            )
        )
    return Outcome(sizes, notes, figures, time.monotonic() - began)


# -- Report ---------------------------------------------------------------


HEADERS = [
    "configuration",
    "produce records/s",
    "MB/s",
    "p50 ms",
    "p99 ms",
    "machine busy",
    "read records/s",
    "read s per space (min-max)",
]


def table(outcome: Outcome) -> str:
    rows = []
    for f in outcome.figures:
        failed = f" ({f.produce.errors} failed calls)" if f.produce.errors else ""
        seconds = f.read_seconds or [math.nan]
        rows.append(
            [
                f.name + failed,
                fmt(f.produce.per_second),
                fmt(f.produce.per_second * len(PAYLOAD) / 1e6, 1),
                fmt(f.produce.latency_ms(0.5), 1),
                fmt(f.produce.latency_ms(0.99), 1),
                f"{f.busy:.0%}",
                fmt(f.read_rate)
                + ("" if math.isnan(f.other_read) else f" (ordered consumer: {fmt(f.other_read)})"),
                f"{fmt(min(seconds), 2)}-{fmt(max(seconds), 2)}",
            ]
        )
    return markdown_table(HEADERS, rows)


def ratios(outcome: Outcome) -> dict[str, tuple[float, float]]:
    """Produce and read rate ratios: 3 gateways / 1, gateways / native,
    JetStream / RocksDB (each both ways the comparison is usually read)."""
    by = {f.name: f for f in outcome.figures}
    rocks, one, three, native = by[ROCKSDB], by[through(1)], by[through(GATEWAYS)], by[NATIVE]

    def pair(a: Figures, b: Figures) -> tuple[float, float]:
        return (
            a.produce.per_second / b.produce.per_second if b.produce.per_second else math.nan,
            a.read_rate / b.read_rate if b.read_rate else math.nan,
        )

    return {
        f"{GATEWAYS} gateways / 1 gateway": pair(three, one),
        f"{GATEWAYS} gateways / NATS-native": pair(three, native),
        "1 gateway / NATS-native": pair(one, native),
        f"{GATEWAYS} gateways read / NATS-native ordered consumer": (
            math.nan,
            three.read_rate / native.other_read if native.other_read else math.nan,
        ),
        f"JetStream {GATEWAYS} gateways / RocksDB": pair(three, rocks),
        "JetStream 1 gateway / RocksDB": pair(one, rocks),
    }


def ratios_table(outcome: Outcome) -> str:
    rows = [[k, fmt(p, 2), fmt(r, 2)] for k, (p, r) in ratios(outcome).items()]
    return markdown_table(["ratio (same run)", "produce records/s", "read records/s"], rows)


def describe(outcome: Outcome) -> str:
    s = outcome.sizes
    loads = "; ".join(f"{k}: {v}" for k, v in outcome.notes.items())
    return (
        f"{s.producers} producer processes, each its own space, batches of {PER_CALL} records "
        f"of {len(PAYLOAD)} B, one call at a time, {s.seconds:g} s; then every space read at "
        f"once; JetStream: 3 nodes, R3, sync_interval always; took {outcome.seconds:.0f} s; "
        f"load before each: {loads}"
    )


def as_json(outcome: Outcome) -> dict[str, object]:
    return {
        "producers": outcome.sizes.producers,
        "seconds": outcome.sizes.seconds,
        "configurations": [
            {
                "name": f.name,
                "produce": f.produce.per_second,
                "p50_ms": f.produce.latency_ms(0.5),
                "p99_ms": f.produce.latency_ms(0.99),
                "failed": f.produce.errors,
                "busy": f.busy,
                "read": f.read_rate,
                "read_ordered_consumer": f.other_read,
            }
            for f in outcome.figures
        ],
        "ratios": {k: {"produce": p, "read": r} for k, (p, r) in ratios(outcome).items()},
        "load": outcome.notes,
    }


def problems(outcome: Outcome) -> list[str]:
    return [p for f in outcome.figures for p in f.problems]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized: 3 producers, 3 s")
    parser.add_argument("--producers", type=int, help="producer processes")
    parser.add_argument("--seconds", type=float, help="seconds per produce run")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    sizes = Sizes(args.producers or sizes.producers, args.seconds or sizes.seconds)
    with ClientPool(sizes.producers) as pool:
        outcome = run(pool, sizes)
    print(f"## Scale-out ({os.cpu_count()} cores): {describe(outcome)}\n")
    print(table(outcome))
    print()
    print(ratios_table(outcome))
    for line in problems(outcome):
        print(f"problem: {line}", file=sys.stderr)


if __name__ == "__main__":
    main()
