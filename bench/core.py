"""Core throughput of the server against raw rocksdict, measured in one run.

Produce: calls of 100 records x 100 bytes, durable (the default) and
``--no-sync``, from 1 and from 4 concurrent producer processes (one call at a
time each): records/s and call latency. The raw limit does the same writes
straight into rocksdict: a WriteBatch per call with the server's key and value
volume (2 puts per record, a segment and a space catalog put).

Consume: a segment of N records and a space of N records over 10 segments,
read with the default max_batch; the raw limit is the same bounded scan
(``Rdict.values`` with an iterate upper bound) over the same records.

    python bench/core.py            # full counts (100k records to read)
    python bench/core.py --quick    # 20k records, well under a minute
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path

import grpc
import rocksdict
from common import (
    ProcessSample,
    fmt,
    markdown_table,
    percentile,
    ratio,
    run_server,
    wait_for_quiet,
)

from streams import codec
from streams.storage.rocksdb import chunks
from streams.storage.rocksdb import layout as keys
from streams.storage.rocksdb.catalog import SegmentEntry, SpaceEntry
from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc

SPACE_SEGMENTS = 10
SETUP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Counts:
    """How much each measurement does."""

    calls_1: int  # Produce calls of the single producer
    calls_4: int  # Produce calls of each of the 4 producers
    consume_records: int  # records in the read segment, and in the read space
    repeats: int  # consume runs per figure (the median is kept)
    records_per_call: int = 100
    payload_bytes: int = 100
    max_seconds: float = 60.0  # bound of every produce loop


FULL = Counts(calls_1=1000, calls_4=500, consume_records=100_000, repeats=3)
QUICK = Counts(calls_1=200, calls_4=100, consume_records=20_000, repeats=3)


@dataclass
class Rate:
    """One throughput measurement with per-call (or per-batch) latencies in seconds."""

    records: int
    seconds: float
    latencies: list[float]
    errors: int = 0

    @property
    def per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("nan")

    def latency_ms(self, fraction: float) -> float:
        return percentile(self.latencies, fraction) * 1000


# -- Produce through the server ------------------------------------------


def _produce_request(space: str, segment: str, counts: Counts) -> pb.ProduceRequest:
    payload = bytes(range(256))[: counts.payload_bytes].ljust(counts.payload_bytes, b"x")
    records = [pb.RecordInput(payload=payload) for _ in range(counts.records_per_call)]
    return pb.ProduceRequest(
        space=space, writes=[pb.SegmentWrite(segment=segment, records=records)]
    )


def producer_process(
    address: str,
    space: str,
    segment: str,
    calls: int,
    counts: Counts,
    barrier: Barrier,
    results: mp.Queue,  # type: ignore[type-arg]
) -> None:
    """One producer: warms up, waits for the others, then makes ``calls`` calls."""
    request = _produce_request(space, segment, counts)
    latencies: list[float] = []
    errors = 0
    with grpc.insecure_channel(address) as channel:
        stub = streams_pb2_grpc.StreamsServiceStub(channel)
        for _ in range(5):
            stub.Produce(request, timeout=30)
        barrier.wait(SETUP_TIMEOUT_S)
        start = time.monotonic()
        deadline = start + counts.max_seconds
        for _ in range(calls):
            before = time.perf_counter()
            try:
                stub.Produce(request, timeout=30)
            except grpc.RpcError as exc:
                errors += 1
                print(f"Produce failed: {exc.code()} {exc.details()}", file=sys.stderr)
            latencies.append(time.perf_counter() - before)
            if time.monotonic() > deadline:
                break
        end = time.monotonic()
    results.put((start, end, latencies, errors))


def produce_through_server(
    address: str, space: str, producers: int, calls: int, counts: Counts
) -> Rate:
    """``producers`` processes at once, each on its own segment of ``space``."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(producers + 1)
    results: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    processes = [
        ctx.Process(
            target=producer_process,
            args=(address, space, f"producer-{i}", calls, counts, barrier, results),
        )
        for i in range(producers)
    ]
    for process in processes:
        process.start()
    try:
        barrier.wait(SETUP_TIMEOUT_S)
        timeout = counts.max_seconds + SETUP_TIMEOUT_S
        outcomes = [results.get(timeout=timeout) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
    start = min(o[0] for o in outcomes)
    end = max(o[1] for o in outcomes)
    latencies = [latency for o in outcomes for latency in o[2]]
    errors = sum(o[3] for o in outcomes)
    records = (len(latencies) - errors) * counts.records_per_call
    return Rate(records, end - start, latencies, errors)


# -- Consume through the server ------------------------------------------


def load(stub: streams_pb2_grpc.StreamsServiceStub, space: str, segments: int, total: int) -> None:
    """Writes ``total`` records round-robin over ``segments``, 1,000 per call."""
    payload = b"r" * 100
    per_call = 1000
    for call in range(total // per_call):
        records = [pb.RecordInput(payload=payload)] * per_call
        write = pb.SegmentWrite(segment=f"segment-{call % segments}", records=records)
        stub.Produce(pb.ProduceRequest(space=space, writes=[write]), timeout=60)


def consume_through_server(
    stub: streams_pb2_grpc.StreamsServiceStub, space: str, segment: str, expected: int
) -> Rate:
    """Reads the whole target once; checks that offsets run 1..expected."""
    received = 0
    last = 0
    before = time.perf_counter()
    for response in stub.Consume(pb.ConsumeRequest(space=space, segment=segment), timeout=120):
        received += len(response.records)
        final = response.records[-1]
        last = final.sequence if segment else final.position
    seconds = time.perf_counter() - before
    if received != expected or last != expected:
        print(
            f"Consume {space}/{segment}: got {received} records ending at {last}, "
            f"expected {expected}",
            file=sys.stderr,
        )
    return Rate(received, seconds, [])


def median_rate(runs: Sequence[Rate]) -> Rate:
    return sorted(runs, key=lambda r: r.per_second)[len(runs) // 2]


# -- The same work on raw rocksdict --------------------------------------


@dataclass
class RawBatch:
    """The puts of one Produce call, and how many records they hold."""

    items: list[tuple[bytes, bytes]]
    records: int


@dataclass
class RawLayout:
    """The server's puts, from the RocksDB engine's own layout (keys and value
    formats, ``streams/storage/rocksdb/layout.py``) and chunks
    (``streams/storage/rocksdb/chunks.py``: chunks of serialized ``Record``
    bytes)."""

    space: str
    payload_bytes: int

    def transaction_items(
        self, writes: Sequence[tuple[str, int, int]], first_position: int
    ) -> RawBatch:
        """The puts of one Produce call writing ``(segment, first sequence,
        count)`` for each of ``writes``: 2 per chunk, a catalog put per segment,
        then the space catalog put (no transaction id: no dedupe entry)."""
        ts = 1_700_000_000 * codec.NANOS
        body = pb.RecordInput(payload=b"p" * self.payload_bytes).SerializeToString()
        space_prefix = keys.space_prefix(self.space)
        items = []
        position = first_position - 1
        size = 0  # record bytes of this call (the catalogs count retained bytes: same width)
        for segment, first_sequence, count in writes:
            header = codec.record_header(self.space, segment, ts, "")
            segment_prefix = keys.segment_prefix(self.space, segment)
            values = [
                codec.record(header, first_sequence + i, position + 1 + i, body)
                for i in range(count)
            ]
            for index, chunk in chunks.pack(values):
                items.append((segment_prefix + keys.u64(first_sequence + index), chunk))
                items.append((space_prefix + keys.u64(position + 1 + index), chunk))
            position += count
            written = sum(map(len, values))
            size += written
            entry = SegmentEntry(first_sequence + count - 1, position, size=written, ts=ts)
            items.append((keys.segment_catalog_key(self.space, segment), entry.pack()))
        space = SpaceEntry(position, records=position, size=size, first_ts=ts, ts=ts)
        items.append((keys.space_catalog_key(self.space), space.pack()))
        return RawBatch(items, position - first_position + 1)

    def batch_items(
        self, segment: str, first_sequence: int, first_position: int, count: int
    ) -> RawBatch:
        """The puts of one Produce call of ``count`` records to one segment."""
        return self.transaction_items([(segment, first_sequence, count)], first_position)

    def batches(
        self, segments: int, calls: int, per_call: int, segments_per_call: int = 1
    ) -> list[RawBatch]:
        """``calls`` batches, round-robin over ``segments`` writers; each call
        writes ``per_call`` records to each of ``segments_per_call`` segments
        (``producer-W``, or ``producer-W-J`` when there are several)."""
        sequences: dict[str, int] = {}
        position = 0
        out = []
        for call in range(calls):
            writer = call % segments
            names = (
                [f"producer-{writer}"]
                if segments_per_call == 1
                else [f"producer-{writer}-{j}" for j in range(segments_per_call)]
            )
            writes = [(name, sequences.get(name, 0) + 1, per_call) for name in names]
            out.append(self.transaction_items(writes, position + 1))
            for name in names:
                sequences[name] = sequences.get(name, 0) + per_call
            position += per_call * segments_per_call
        return out


def open_raw(path: Path) -> rocksdict.Rdict:
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    return rocksdict.Rdict(str(path), options)


def raw_write(
    db: rocksdict.Rdict,
    batches: Sequence[RawBatch],
    sync: bool,
    flush_every: int,
    max_seconds: float,
) -> Rate:
    """Writes each batch; with ``flush_every`` > 0, calls flush_wal(True) after
    every ``flush_every`` batches (1 = per batch; 4 = one fsync for 4 writers).
    A latency is the time of one group of ``max(flush_every, 1)`` batches."""
    options = rocksdict.WriteOptions()
    options.sync = sync  # an attribute, not a method
    group = max(flush_every, 1)
    latencies: list[float] = []
    records = 0
    start = time.perf_counter()
    deadline = start + max_seconds
    for first in range(0, len(batches), group):
        before = time.perf_counter()
        for raw in batches[first : first + group]:
            batch = rocksdict.WriteBatch(raw_mode=True)
            for key, value in raw.items:
                batch.put(key, value)
            db.write(batch, options)
            records += raw.records
        if flush_every:
            db.flush_wal(True)
        latencies.append(time.perf_counter() - before)
        if time.perf_counter() > deadline:
            break
    return Rate(records, time.perf_counter() - start, latencies)


def raw_scan(db: rocksdict.Rdict, prefix: bytes, first: int = 1, limit: int = 0) -> Rate:
    """One bounded forward scan of the values under ``prefix`` (a segment or
    space prefix) from offset ``first`` on: all of them, or ``limit``."""
    read_options = rocksdict.ReadOptions()
    end = keys.prefix_end(prefix) if not limit else prefix + keys.u64(first + limit)
    read_options.set_iterate_upper_bound(end)
    before = time.perf_counter()
    count = 0
    for value in db.values(from_key=prefix + keys.u64(first), read_opt=read_options):
        count += chunks.Chunk(value).count
    return Rate(count, time.perf_counter() - before, [])


@dataclass
class RawFigures:
    sync_true: Rate
    flush_wal: Rate
    flush_wal_4: Rate
    sync_off: Rate
    scan_segment: Rate
    scan_space: Rate


def measure_raw(counts: Counts) -> RawFigures:
    layout = RawLayout("bench", counts.payload_bytes)
    single = layout.batches(1, counts.calls_1, counts.records_per_call)
    four = layout.batches(4, counts.calls_4 * 4, counts.records_per_call)
    with tempfile.TemporaryDirectory(prefix="streams-bench-raw-") as tmp:
        figures: dict[str, Rate] = {}
        runs: list[tuple[str, list[RawBatch], bool, int]] = [
            ("sync_true", single, True, 0),
            ("flush_wal", single, False, 1),
            ("flush_wal_4", four, False, 4),
            ("sync_off", single, False, 0),
        ]
        for name, batches, sync, flush_every in runs:
            db = open_raw(Path(tmp) / name)
            try:
                figures[name] = raw_write(db, batches, sync, flush_every, counts.max_seconds)
            finally:
                db.close()
        # Scans: one segment of N records, and a space of N records over 10 segments.
        per_call = 1000
        calls = counts.consume_records // per_call
        db = open_raw(Path(tmp) / "scan")
        try:
            options = rocksdict.WriteOptions()
            for space, segments in (("scan-segment", 1), ("scan-space", SPACE_SEGMENTS)):
                for raw in RawLayout(space, counts.payload_bytes).batches(
                    segments, calls, per_call
                ):
                    batch = rocksdict.WriteBatch(raw_mode=True)
                    for key, value in raw.items:
                        batch.put(key, value)
                    db.write(batch, options)
            segment_prefix = keys.segment_prefix("scan-segment", "producer-0")
            space_prefix = keys.space_prefix("scan-space")
            scan_segment = median_rate(
                [raw_scan(db, segment_prefix) for _ in range(counts.repeats)]
            )
            scan_space = median_rate([raw_scan(db, space_prefix) for _ in range(counts.repeats)])
        finally:
            db.close()
    return RawFigures(
        figures["sync_true"],
        figures["flush_wal"],
        figures["flush_wal_4"],
        figures["sync_off"],
        scan_segment,
        scan_space,
    )


# -- One run, one table ---------------------------------------------------


@dataclass
class ServerFigures:
    produce_1: Rate
    produce_4: Rate
    consume_segment: Rate | None
    consume_space: Rate | None
    before: ProcessSample
    after: ProcessSample
    problems: list[str]


def measure_server(counts: Counts, sync: bool, consume: bool) -> ServerFigures:
    with run_server(sync=sync) as server:
        before = server.sample()
        produce_1 = produce_through_server(server.address, "produce-1", 1, counts.calls_1, counts)
        produce_4 = produce_through_server(server.address, "produce-4", 4, counts.calls_4, counts)
        consume_segment = consume_space = None
        if consume:
            n = counts.consume_records
            with grpc.insecure_channel(server.address) as channel:
                stub = streams_pb2_grpc.StreamsServiceStub(channel)
                load(stub, "consume-segment", 1, n)
                load(stub, "consume-space", SPACE_SEGMENTS, n)

                def runs(read: Callable[[], Rate]) -> Rate:
                    return median_rate([read() for _ in range(counts.repeats)])

                consume_segment = runs(
                    lambda: consume_through_server(stub, "consume-segment", "segment-0", n)
                )
                consume_space = runs(lambda: consume_through_server(stub, "consume-space", "", n))
        after = server.sample()
        problems = server.log_problems()
    return ServerFigures(
        produce_1, produce_4, consume_segment, consume_space, before, after, problems
    )


def produce_rows(label: str, server: Rate, raw: Rate, raw_label: str) -> list[list[str]]:
    rows = [
        [
            f"{label}: records/s",
            fmt(server.per_second),
            f"{fmt(raw.per_second)} ({raw_label})",
            ratio(server.per_second, raw.per_second),
        ]
    ]
    for name, fraction in (("p50", 0.5), ("p99", 0.99)):
        value, limit = server.latency_ms(fraction), raw.latency_ms(fraction)
        rows.append([f"{label}: {name} call ms", fmt(value, 2), fmt(limit, 2), ratio(value, limit)])
    if server.errors:
        rows.append([f"{label}: failed calls", str(server.errors), "-", "-"])
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (20k records)")
    args = parser.parse_args(argv)
    counts = QUICK if args.quick else FULL
    began = time.monotonic()

    background = [wait_for_quiet()]
    raw = measure_raw(counts)
    background.append(wait_for_quiet())
    durable = measure_server(counts, sync=True, consume=True)
    background.append(wait_for_quiet())
    no_sync = measure_server(counts, sync=False, consume=False)

    flush = "write + flush_wal(True) per batch"
    flush4 = "4 writes + 1 flush_wal(True)"
    off = "sync off"
    rows: list[list[str]] = []
    rows += produce_rows("Produce durable, 1 producer", durable.produce_1, raw.flush_wal, flush)
    rows += produce_rows("Produce durable, 4 producers", durable.produce_4, raw.flush_wal_4, flush4)
    rows += produce_rows("Produce --no-sync, 1 producer", no_sync.produce_1, raw.sync_off, off)
    rows += produce_rows("Produce --no-sync, 4 producers", no_sync.produce_4, raw.sync_off, off)
    n = f"{counts.consume_records // 1000}k"
    for label, server, limit in (
        (f"Consume segment ({n} records)", durable.consume_segment, raw.scan_segment),
        (
            f"Consume space ({n} records, {SPACE_SEGMENTS} segments)",
            durable.consume_space,
            raw.scan_space,
        ),
    ):
        assert server is not None
        rows.append(
            [
                f"{label}: records/s",
                fmt(server.per_second),
                f"{fmt(limit.per_second)} (values() scan)",
                ratio(server.per_second, limit.per_second),
            ]
        )
    for label, rate in (
        ("raw: WriteBatch sync=True per batch", raw.sync_true),
        ("raw: sync off + flush_wal(True) per batch", raw.flush_wal),
        ("raw: 4 batches + 1 flush_wal(True)", raw.flush_wal_4),
        ("raw: sync off alone", raw.sync_off),
    ):
        rows.append(
            [
                f"{label}: records/s (p50 / p99 batch ms)",
                f"{fmt(rate.per_second)} ({fmt(rate.latency_ms(0.5), 2)} / "
                f"{fmt(rate.latency_ms(0.99), 2)})",
                "-",
                "-",
            ]
        )

    mode = "quick" if args.quick else "full"
    print(
        f"## Streams core benchmark ({mode}: {counts.records_per_call} records x "
        f"{counts.payload_bytes} B per call; {counts.calls_1} calls for 1 producer, "
        f"{counts.calls_4} per producer for 4; consume median of {counts.repeats}; other load "
        f"before each phase at most {max(background):.0%} of the machine)\n"
    )
    print(markdown_table(["figure", "value", "raw-rocksdict limit", "ratio"], rows))
    print(
        "\nratio = server / raw: for records/s the share of the raw rate reached, for "
        "latencies how many times longer. Raw limits are single-threaded, in-process."
    )
    resource_rows = []
    for label, figures in (("durable", durable), ("--no-sync", no_sync)):
        resource_rows.append(
            [
                label,
                fmt(figures.after.cpu_s - figures.before.cpu_s, 1),
                fmt(figures.after.rss_mb),
                fmt(figures.after.peak_rss_mb),
                str(len(figures.problems)),
            ]
        )
    print()
    print(
        markdown_table(
            ["server run", "CPU s", "RSS MiB at end", "peak RSS MiB", "log warnings/errors"],
            resource_rows,
        )
    )
    for figures in (durable, no_sync):
        for line in figures.problems[:5]:
            print(f"server log: {line}")
    print(f"\n(took {time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
