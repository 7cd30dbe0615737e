"""The Streams benchmark suite: every figure beside the machine's limit, one run.

The server runs in its own process on a temp dir (``common.run_server``) and
is driven by a pool of client processes (``workers.ClientPool``) over
loopback. Beside each figure, measured in the same run and close in time:

- the bare gRPC limit: ``bare_grpc.py``, a grpc.aio service that answers
  pre-built messages of the same shapes (unary calls with the same request
  bytes, streams of ``ConsumeResponse`` messages of the same records and batch
  size), driven by the same client code;
- the raw rocksdict limit: the same writes (same batches, keys and values,
  sync on and off) and the same scans (on the server's own database, opened
  read-only) in this process.

Ratios: for rates, server / limit; for latencies, limit / server. Either way
1.00 means "at the limit" and lower means slower. The Targets section states
each target of issues 7 and 16 in its own terms. The server runs with its
default ``--workers`` (one process per core) except where a section says
otherwise: ``cores`` and ``fanout`` put ``--workers 1`` beside it, and
``cores`` puts Redis Streams (``redis_peer.py``) beside it when
``redis-server`` is installed.

    python bench/suite.py --quick                      # CI sizes, a few minutes
    python bench/suite.py                              # the full run, under 15
    python bench/suite.py --only produce,consume --out /tmp/results
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fanout
import follow_latency
import groups
import lifecycle
import redis_peer
import rocksdict
import scaleout
import small_txns
from bare_grpc import STREAM, UNARY, run_bare_server, stream_request
from common import Histogram, fmt, load_note, markdown_table, ratio, run_server
from core import Rate, RawBatch, RawLayout, open_raw, raw_scan, raw_write
from redis_peer import XaddJob, run_redis
from workers import (
    CONSUME,
    PEEK,
    PRODUCE,
    ClientPool,
    JobResult,
    StreamJob,
    UnaryJob,
    merge,
)

from streams import config
from streams.storage.rocksdb import layout as keys
from streams.v1 import streams_pb2 as pb

PAYLOAD = bytes(range(100))  # every record: 100 bytes
MAX_PER_CALL = 10_000  # the server's default max records per Produce
# Follow: records delivered per second to all followers together, so that no
# configuration overloads the server (latency, not queueing, is measured).
FOLLOW_DELIVERIES = 10_000


@dataclass(frozen=True)
class Plan:
    """How much each section does (full or quick)."""

    producers: tuple[int, ...]  # concurrent producer processes
    per_call: tuple[int, ...]  # records per Produce call
    run_seconds: float  # bound of each produce run
    raw_records: int  # records per raw rocksdict write run (at most)
    tx_producers: tuple[int, ...]  # multi-segment transactions
    consume_sizes: tuple[int, ...]
    consume_repeats: int
    peek_calls: int
    follow_counts: tuple[int, ...]
    follow_seconds: float
    growth_sizes: tuple[int, ...]  # records in the growing segment
    growth_window: int  # records per read
    growth_reads: int  # reads per size, spread over the segment
    segment_counts: tuple[int, ...]
    starts: int  # server starts per segment count
    fanout_seconds: float  # counted seconds of each step of the fan-out search
    fanout_refine: int  # bisections after its ramp
    fanout_retries: int  # runs again of a step that failed on its p99 alone
    space_segments: int = 100
    tx_segments: int = 10  # segments per multi-segment transaction
    tx_per_segment: int = 10


FULL = Plan(
    producers=(1, 4, 16),
    per_call=(1, 10, 100, 1000),
    run_seconds=2.0,
    raw_records=200_000,
    tx_producers=(1, 4),
    consume_sizes=(100_000, 1_000_000),
    consume_repeats=3,
    peek_calls=3000,
    follow_counts=(1, 100, 1000),
    follow_seconds=5.0,
    growth_sizes=(10_000, 100_000, 1_000_000, 5_000_000),
    growth_window=10_000,
    growth_reads=10,
    segment_counts=(10, 100, 1000, 10_000, 100_000),
    starts=5,
    fanout_seconds=3.0,
    fanout_refine=1,
    fanout_retries=1,
)
QUICK = Plan(
    producers=(1, 4),
    per_call=(1, 100),
    run_seconds=0.6,
    raw_records=40_000,
    tx_producers=(4,),
    consume_sizes=(100_000,),
    consume_repeats=2,
    peek_calls=600,
    follow_counts=(1, 100),
    follow_seconds=1.5,
    growth_sizes=(10_000, 50_000, 200_000),
    growth_window=10_000,
    growth_reads=4,
    segment_counts=(10, 1000, 10_000),
    starts=3,
    fanout_seconds=1.0,
    fanout_refine=0,
    fanout_retries=0,
)


# -- Report --------------------------------------------------------------


@dataclass
class Target:
    name: str
    measured: float  # the figure the target is stated in
    required: str  # e.g. ">= 0.75"
    met: bool
    note: str = ""


@dataclass
class Report:
    mode: str
    sections: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)

    def add(self, title: str, note: str, table: str, after: str = "") -> None:
        text = f"### {title}\n\n_{note}_\n\n{table}\n"
        if after:
            text += f"\n{after}\n"
        self.sections.append(text)
        print(text, flush=True)

    def target(self, name: str, measured: float, op: str, bound: float, note: str = "") -> None:
        met = measured >= bound if op == ">=" else measured <= bound
        self.targets.append(Target(name, measured, f"{op} {bound:g}", met, note))


def rate_cell(value: float, limit: float) -> str:
    """A limit's rate and the server's share of it."""
    return f"{fmt(limit)} ({ratio(value, limit)})"


def latency_cell(value_ms: float, limit_ms: float) -> str:
    """A limit's latency and limit / server."""
    return f"{fmt(limit_ms, 2)} ({ratio(limit_ms, value_ms)})"


def mb(rate: float) -> str:
    """Payload MB/s of ``rate`` records/s."""
    return fmt(rate * len(PAYLOAD) / 1e6, 1)


def share(value: float, limit: float) -> float:
    return value / limit if limit and not math.isnan(limit) else math.nan


@dataclass
class Context:
    plan: Plan
    pool: ClientPool
    bare: str  # address of the bare gRPC server
    report: Report
    tmp: Path
    workers: int  # the server's --workers that the cores and fanout sections put 1 beside


# -- Requests ------------------------------------------------------------


def produce_request(space: str, writes: Sequence[tuple[str, int]]) -> bytes:
    """A serialized ProduceRequest of ``(segment, records)`` writes."""
    return pb.ProduceRequest(
        space=space,
        writes=[
            pb.SegmentWrite(segment=segment, records=[pb.RecordInput(payload=PAYLOAD)] * count)
            for segment, count in writes
        ],
    ).SerializeToString()


def consume_request(space: str, segment: str = "", first: int = 0, limit: int = 0) -> bytes:
    request = pb.ConsumeRequest(space=space, segment=segment, limit=limit)
    if first:
        request.from_offset = first
    return request.SerializeToString()


def populate(ctx: Context, address: str, requests: Sequence[bytes], workers: int = 2) -> float:
    """Sends each of ``requests`` once, from ``workers`` clients; returns seconds."""
    began = time.monotonic()
    shares = [tuple(requests[i::workers]) for i in range(workers)]
    jobs = [UnaryJob(address, PRODUCE, s, len(s), 3600.0, warmup=0) for s in shares if s]
    results = ctx.pool.run(jobs)
    failed = sum(len(r.errors) for r in results)
    if failed:
        raise RuntimeError(f"populating failed: {failed} Produce call(s) failed")
    return time.monotonic() - began


def unary(
    ctx: Context,
    address: str,
    method: str,
    requests: Sequence[bytes],
    clients: int,
    calls: int,
    seconds: float,
    records_per_call: int = 1,
) -> Rate:
    """``clients`` workers making up to ``calls`` calls each for ``seconds``,
    client ``i`` cycling through its own share of ``requests``."""
    jobs = [
        UnaryJob(address, method, tuple(requests[i::clients]) or tuple(requests), calls, seconds)
        for i in range(clients)
    ]
    return ctx.pool.unary(jobs, records_per_call)


def paired(
    ctx: Context,
    address: str,
    method: str,
    requests: Sequence[bytes],
    calls: int,
    rounds: int = 5,
) -> tuple[Rate, Rate]:
    """Latencies of one client calling the server, and of one calling the bare
    limit with the same request bytes, alternating in ``rounds`` so that both
    see the same moments of a noisy machine."""
    share_ = max(calls // rounds, 1)
    server, bare = [], []
    for _ in range(rounds):
        server += ctx.pool.run([UnaryJob(address, method, tuple(requests), share_, 30.0)])
        bare += ctx.pool.run([UnaryJob(ctx.bare, UNARY, tuple(requests), share_, 30.0)])
    return merge(server, 1, sequential=True), merge(bare, 1, sequential=True)


def stream(ctx: Context, address: str, method: str, request: bytes) -> JobResult:
    result = ctx.pool.run([StreamJob(address, method, request)])[0]
    for error in result.errors:
        print(f"stream {method} failed: {error}", file=sys.stderr)
    return result


def stream_rate(result: JobResult) -> float:
    seconds = result.end - result.start
    return result.records / seconds if seconds > 0 and not result.errors else math.nan


@contextlib.contextmanager
def read_only(data: Path) -> Iterator[rocksdict.Rdict]:
    """The server's database opened read-only beside it, every table file
    opened at once (so the server's compactions cannot pull one away)."""
    options = rocksdict.Options(raw_mode=True)
    options.set_max_open_files(-1)
    db = rocksdict.Rdict(str(data), options, access_type=rocksdict.AccessType.read_only())
    try:
        yield db
    finally:
        db.close()


# -- Produce -------------------------------------------------------------


def section_produce(ctx: Context) -> None:
    plan = ctx.plan
    note = load_note()
    began = time.monotonic()
    rows: list[list[str]] = []
    raw_rows: list[list[str]] = []
    data: list[dict[str, Any]] = []
    writers = max(plan.producers)
    with run_server(sync=True) as durable, run_server(sync=False) as no_sync:
        for n in plan.per_call:
            calls = min(max(plan.raw_records // n, 64), 20_000)
            batches = RawLayout("bench", len(PAYLOAD)).batches(writers, calls, n)
            raw = raw_runs(ctx, batches, plan.producers)
            raw_rows.append(raw_row(f"{n} record(s) per batch", raw, plan.producers))
            for p in plan.producers:
                requests = [produce_request(f"p{n}x{p}", [(f"producer-{i}", n)]) for i in range(p)]
                figures = produce_figures(ctx, durable.address, no_sync.address, requests, n)
                label = f"{n}/call, {p} producer{'s' if p > 1 else ''}"
                rows += produce_rows(label, figures, raw, p)
                data.append({"per_call": n, "producers": p, **summarize_produce(figures, raw, p)})
    ctx.report.data["produce"] = data
    ctx.report.add(
        "Produce: 100-byte records",
        f"{note}; took {time.monotonic() - began:.0f} s; {plan.run_seconds:g} s per run",
        markdown_table(PRODUCE_HEADERS, rows),
        "Raw rocksdict alone, the same batches (records/s, p50 ms per write or per group):\n\n"
        + markdown_table(raw_headers(plan.producers), raw_rows),
    )
    # Its share of the bare unary limit is a target of the cores section (beside --workers 1).
    for entry in data:
        if entry["per_call"] == 100 and entry["producers"] == 4:
            ctx.report.target(
                "Produce 100/call, 4 producers, durable / raw sync off (rate)",
                entry["durable_vs_raw_off"],
                ">=",
                0.3,
            )


PRODUCE_HEADERS = [
    "workload",
    "records/s",
    "MB/s",
    "p50 ms",
    "p99 ms",
    "bare unary records/s (ratio)",
    "bare unary p50 ms (ratio)",
    "raw sync off records/s (ratio)",
    "raw 1 fsync per P batches records/s (ratio)",
]


@dataclass
class ProduceFigures:
    durable: Rate
    no_sync: Rate
    bare: Rate


def produce_figures(
    ctx: Context, durable: str, no_sync: str, requests: Sequence[bytes], per_call: int
) -> ProduceFigures:
    """The durable server, the --no-sync server and the bare limit, back to back,
    each with one client per request (each producer writes its own segment)."""
    p, seconds = len(requests), ctx.plan.run_seconds
    return ProduceFigures(
        unary(ctx, durable, PRODUCE, requests, p, 100_000, seconds, per_call),
        unary(ctx, no_sync, PRODUCE, requests, p, 100_000, seconds, per_call),
        unary(ctx, ctx.bare, UNARY, requests, p, 100_000, seconds, per_call),
    )


def raw_runs(
    ctx: Context, batches: Sequence[RawBatch], producers: Sequence[int]
) -> dict[str, Rate]:
    """The same batches written to fresh databases: sync off, sync=True per
    batch, and (for each P) P batches then one flush_wal(True)."""
    seconds = ctx.plan.run_seconds
    runs = {"off": (False, 0), "sync": (True, 0)} | {f"group{p}": (False, p) for p in producers}
    out = {}
    for name, (sync, flush_every) in runs.items():
        with tempfile.TemporaryDirectory(prefix="raw-", dir=ctx.tmp) as tmp:
            db = open_raw(Path(tmp))
            try:
                out[name] = raw_write(db, batches, sync, flush_every, seconds)
            finally:
                db.close()
    return out


def raw_headers(producers: Sequence[int]) -> list[str]:
    return ["batches", "sync off", "sync=True per batch"] + [
        f"{p} batch(es) + 1 flush_wal(True)" for p in producers
    ]


def raw_row(label: str, raw: dict[str, Rate], producers: Sequence[int]) -> list[str]:
    names = ["off", "sync"] + [f"group{p}" for p in producers]
    return [label] + [f"{fmt(raw[n].per_second)} ({fmt(raw[n].latency_ms(0.5), 2)})" for n in names]


def produce_rows(
    label: str, f: ProduceFigures, raw: dict[str, Rate], producers: int
) -> list[list[str]]:
    rows = []
    off, group = raw["off"].per_second, raw[f"group{producers}"].per_second
    bare_p50 = f.bare.latency_ms(0.5)
    for mode, rate in (("durable", f.durable), ("--no-sync", f.no_sync)):
        failed = f" ({rate.errors} failed calls)" if rate.errors else ""
        p50 = rate.latency_ms(0.5)
        rows.append(
            [
                f"{mode}, {label}{failed}",
                fmt(rate.per_second),
                mb(rate.per_second),
                fmt(p50, 2),
                fmt(rate.latency_ms(0.99), 2),
                rate_cell(rate.per_second, f.bare.per_second),
                latency_cell(p50, bare_p50),
                rate_cell(rate.per_second, off),
                rate_cell(rate.per_second, group) if mode == "durable" else "-",
            ]
        )
    return rows


def summarize_produce(f: ProduceFigures, raw: dict[str, Rate], producers: int) -> dict[str, Any]:
    off = raw["off"].per_second
    return {
        "durable": f.durable.per_second,
        "no_sync": f.no_sync.per_second,
        "bare": f.bare.per_second,
        "raw_off": off,
        "raw_sync": raw["sync"].per_second,
        "raw_group": raw[f"group{producers}"].per_second,
        "durable_p50_ms": f.durable.latency_ms(0.5),
        "no_sync_p50_ms": f.no_sync.latency_ms(0.5),
        "bare_p50_ms": f.bare.latency_ms(0.5),
        "durable_vs_bare": share(f.durable.per_second, f.bare.per_second),
        "durable_vs_raw_off": share(f.durable.per_second, off),
    }


def section_transactions(ctx: Context) -> None:
    """Multi-segment transactions: each call writes N records to each of S segments."""
    plan = ctx.plan
    note = load_note()
    began = time.monotonic()
    s, n = plan.tx_segments, plan.tx_per_segment
    per_call = s * n
    writers = max(plan.tx_producers)
    calls = min(max(plan.raw_records // per_call, 64), 20_000)
    batches = RawLayout("bench", len(PAYLOAD)).batches(writers, calls, n, segments_per_call=s)
    rows = []
    with run_server(sync=True) as durable, run_server(sync=False) as no_sync:
        raw = raw_runs(ctx, batches, plan.tx_producers)
        for p in plan.tx_producers:
            requests = [
                produce_request("tx", [(f"producer-{i}-{j}", n) for j in range(s)])
                for i in range(p)
            ]
            figures = produce_figures(ctx, durable.address, no_sync.address, requests, per_call)
            label = f"{s} segments x {n} records, {p} producer{'s' if p > 1 else ''}"
            rows += produce_rows(label, figures, raw, p)
    ctx.report.add(
        "Produce: multi-segment transactions",
        f"{note}; took {time.monotonic() - began:.0f} s",
        markdown_table(PRODUCE_HEADERS, rows),
        "Raw rocksdict alone, the same batches (records/s, p50 ms per write or per group):\n\n"
        + markdown_table(
            raw_headers(plan.tx_producers), [raw_row(f"{s} x {n} records", raw, plan.tx_producers)]
        ),
    )


# -- Consume -------------------------------------------------------------


def section_consume(ctx: Context) -> None:
    plan = ctx.plan
    note = load_note()
    began = time.monotonic()
    rows: list[list[str]] = []
    data: list[dict[str, Any]] = []
    segments = plan.space_segments
    with run_server(sync=True) as server:
        loaded = 0.0
        for size in plan.consume_sizes:
            per_call = min(size, MAX_PER_CALL)
            one = produce_request(f"segment-{size}", [("s", per_call)])
            spread = produce_request(
                f"space-{size}", [(f"s{i}", per_call // segments) for i in range(segments)]
            )
            loaded += populate(ctx, server.address, [one, spread] * (size // per_call))
        with read_only(server.data) as db:
            for size in plan.consume_sizes:
                for kind, space, segment, prefix in (
                    (
                        "segment",
                        f"segment-{size}",
                        "s",
                        keys.segment_prefix(f"segment-{size}", "s"),
                    ),
                    ("space", f"space-{size}", "", keys.space_prefix(f"space-{size}")),
                ):
                    server_rates, bare_rates, raw_rates = [], [], []
                    batch = 0
                    for _ in range(plan.consume_repeats):
                        got = stream(ctx, server.address, CONSUME, consume_request(space, segment))
                        last = got.last_sequence if segment else got.last_position
                        if got.records != size or last != size:
                            print(
                                f"consume {space}/{segment}: {got.records} records, last "
                                f"{last}, expected {size}",
                                file=sys.stderr,
                            )
                        server_rates.append(stream_rate(got))
                        batch = got.first_batch
                        limit = stream(
                            ctx, ctx.bare, STREAM, stream_request(size, batch, got.sample)
                        )
                        bare_rates.append(stream_rate(limit))
                        raw_rates.append(raw_scan(db, prefix).per_second)
                    rate, bare, raw = (
                        statistics.median(v) for v in (server_rates, bare_rates, raw_rates)
                    )
                    where = "one segment" if segment else f"a space of {segments} segments"
                    label = f"{fmt(size)} records, {where} ({batch}/response)"
                    rows.append(
                        [label, fmt(rate), mb(rate), rate_cell(rate, bare), rate_cell(rate, raw)]
                    )
                    data.append(
                        {"size": size, "kind": kind, "server": rate, "bare": bare, "raw": raw}
                    )
    ctx.report.data["consume"] = data
    ctx.report.add(
        "Consume: read to the end",
        f"{note}; took {time.monotonic() - began:.0f} s ({loaded:.0f} s loading); "
        f"median of {plan.consume_repeats}",
        markdown_table(
            [
                "workload",
                "records/s",
                "MB/s",
                "bare stream records/s (ratio)",
                "raw scan records/s (ratio)",
            ],
            rows,
        ),
    )
    largest = max(plan.consume_sizes)
    for entry in data:
        if entry["size"] == largest:
            ctx.report.target(
                f"Consume one {entry['kind']} ({fmt(largest)} records) / bare stream (rate)",
                share(entry["server"], entry["bare"]),
                ">=",
                0.75,
            )


# -- Latency -------------------------------------------------------------


def section_latency(ctx: Context) -> None:
    """Peek (segment and space) and durable single-record Produce, one call at
    a time, beside bare unary calls of the same request bytes."""
    plan = ctx.plan
    note = load_note()
    began = time.monotonic()
    rows = []
    calls = plan.peek_calls
    with run_server(sync=True) as server:
        populate(ctx, server.address, [produce_request("peek", [("s", 1000)])], workers=1)
        produce = produce_request("latency", [("s", 1)])
        figures = {}
        for label, method, request in (
            ("Peek, a segment", PEEK, pb.PeekRequest(space="peek", segment="s")),
            ("Peek, a space", PEEK, pb.PeekRequest(space="peek")),
            ("Produce, 1 record, durable", PRODUCE, None),
        ):
            body = produce if request is None else request.SerializeToString()
            got, limit = paired(ctx, server.address, method, [body], calls)
            p50, p99 = got.latency_ms(0.5), got.latency_ms(0.99)
            bare50, bare99 = limit.latency_ms(0.5), limit.latency_ms(0.99)
            figures[label] = (p50, bare50)
            rows.append(
                [
                    label,
                    fmt(p50, 3),
                    fmt(p99, 3),
                    latency_cell(p50, bare50),
                    latency_cell(p99, bare99),
                    fmt(got.per_second),
                ]
            )
    ctx.report.data["latency"] = {k: {"p50": v[0], "bare_p50": v[1]} for k, v in figures.items()}
    ctx.report.add(
        "Latency: one call at a time",
        f"{note}; took {time.monotonic() - began:.0f} s; {calls} calls each, alternating "
        "with the bare calls in 5 rounds",
        markdown_table(
            [
                "call",
                "p50 ms",
                "p99 ms",
                "bare unary p50 ms (ratio)",
                "bare unary p99 ms (ratio)",
                "calls/s",
            ],
            rows,
        ),
    )
    p50, bare = figures["Peek, a segment"]
    ctx.report.target("Peek p50 / bare unary p50", share(p50, bare), "<=", 1.25)
    # The durable 1-record Produce p50 target: the cores section (beside --workers 1).


def section_follow(ctx: Context) -> None:
    """Produce-to-follower latency (bench/follow_latency.py: transactions of one
    record at FOLLOW_DELIVERIES / followers per second, at most 1,000), beside
    the p50 of a bare unary call with the same request bytes: a record crosses
    loopback twice on its way to a follower, as a call does."""
    plan = ctx.plan
    note = load_note()
    began = time.monotonic()
    rows: list[list[str]] = []
    data: list[dict[str, Any]] = []
    body = produce_request(follow_latency.SPACE, [("s", 1)])
    details = []
    for followers in plan.follow_counts:
        rate = min(1000.0, FOLLOW_DELIVERIES / followers)
        outcome = follow_latency.run_configuration(
            followers, 1, rate, plan.follow_seconds, 1.0, 60.0
        )
        limit = unary(ctx, ctx.bare, UNARY, [body], 1, 1000, 3.0).latency_ms(0.5)
        details.append(follow_latency.summarize([outcome], rate))
        latency = Histogram()
        for report in outcome.reports:
            latency.merge(report.latency)
        p50, p99 = latency.percentile(0.5) / 1000, latency.percentile(0.99) / 1000
        delivered = latency.total / outcome.producer.seconds
        rows.append(
            [
                f"{followers} follower(s)",
                fmt(delivered),
                mb(delivered),
                fmt(p50, 2),
                fmt(p99, 2),
                latency_cell(p50, limit),
            ]
        )
        data.append({"followers": followers, "p50": p50, "p99": p99, "bare_p50": limit})
    ctx.report.data["follow"] = data
    ctx.report.add(
        "Follow: produce to follower",
        f"{note}; took {time.monotonic() - began:.0f} s; single-record durable transactions, "
        f"{FOLLOW_DELIVERIES:,} deliveries/s in all, {plan.follow_seconds:g} s counted",
        markdown_table(
            [
                "followers",
                "records/s delivered",
                "MB/s",
                "p50 ms",
                "p99 ms",
                "bare unary p50 ms (ratio)",
            ],
            rows,
        ),
        "Details (bench/follow_latency.py), one table per configuration:\n\n"
        + "\n\n".join(details),
    )


# -- Cores: the server's workers beside the limits and Redis -------------------

CORES_PRODUCERS = 4  # producer processes of the cores section's Produce runs
CORES_PER_CALL = 100  # records per Produce (and per Redis pipeline)
FANOUT_FOLLOWERS = 100
SMALL_TXN_RECORDS = 20_000  # issue 16's space: 20,000 records over 100 segments


def worker_counts(ctx: Context) -> list[int]:
    """--workers of the server compared: the suite's --workers (default: one
    per core, as the server's default), then 1."""
    return [ctx.workers, 1] if ctx.workers > 1 else [1]


def workers_label(workers: int) -> str:
    return f"--workers {workers}" + (" (one per core)" if workers == config.cores() else "")


@dataclass
class CoresFigures:
    produce: Rate  # 100/call, 4 producers, durable
    bare: Rate  # the same requests to the bare unary service, right after
    one: Rate  # 1-record durable Produce, one call at a time
    one_bare: Rate  # bare unary calls alternating with it


def section_cores(ctx: Context) -> None:
    """Durable Produce (100 x 100 B, 4 producer processes) and single-record
    Produce latency for the default --workers (one per core) and --workers 1,
    each beside the bare unary limit measured right after it, and Redis
    Streams' pipelined XADD from the same client processes."""
    plan = ctx.plan
    note = load_note()
    began = time.monotonic()
    p, n, seconds = CORES_PRODUCERS, CORES_PER_CALL, plan.run_seconds
    requests = [produce_request("cores", [(f"producer-{i}", n)]) for i in range(p)]
    single = [produce_request("cores-latency", [("s", 1)])]
    figures: dict[int, CoresFigures] = {}
    redis: Rate | None = None
    with run_redis(ctx.tmp) as redis_address:
        for workers in worker_counts(ctx):
            with run_server(sync=True, workers=workers) as server:
                produce = unary(ctx, server.address, PRODUCE, requests, p, 100_000, seconds, n)
                bare = unary(ctx, ctx.bare, UNARY, requests, p, 100_000, seconds, n)
                if redis_address is not None and redis is None:  # close in time to the first
                    jobs = [
                        XaddJob(redis_address, f"producer-{i}", n, 100_000, seconds)
                        for i in range(p)
                    ]
                    redis = ctx.pool.unary(jobs, n)
                one, one_bare = paired(ctx, server.address, PRODUCE, single, plan.peek_calls)
            figures[workers] = CoresFigures(produce, bare, one, one_bare)
    if redis is None:
        redis_note = f"Redis not measured: {redis_peer.missing()}"
        print(f"cores: {redis_note}", file=sys.stderr)
    else:
        redis_note = (
            f"Redis {redis_peer.version()} (redis-server started by the bench on loopback, AOF "
            "appendfsync everysec: an acknowledged entry can be lost in the second before a "
            "power cut, where a durable Produce is fsynced before its ack), right after the "
            f"first server's run: {n} XADDs per pipeline (redis-py, no MULTI), one pipeline "
            "at a time per client process"
        )
    rows = []
    for workers, f in figures.items():
        failed = f" ({f.produce.errors} failed calls)" if f.produce.errors else ""
        rows.append(
            [
                f"Streams durable, {workers_label(workers)}{failed}",
                fmt(f.produce.per_second),
                fmt(f.produce.latency_ms(0.5), 2),
                fmt(f.produce.latency_ms(0.99), 2),
                rate_cell(f.produce.per_second, f.bare.per_second),
                ratio(f.produce.per_second, redis.per_second) if redis else "-",
            ]
        )
    if redis is not None:
        bare = figures[ctx.workers].bare
        failed = f" ({redis.errors} failed pipelines)" if redis.errors else ""
        rows.append(
            [
                f"Redis Streams, pipelined XADD{failed}",
                fmt(redis.per_second),
                fmt(redis.latency_ms(0.5), 2),
                fmt(redis.latency_ms(0.99), 2),
                rate_cell(redis.per_second, bare.per_second),
                "1.00",
            ]
        )
    latency_rows = [
        [
            f"Produce, 1 record, durable, {workers_label(workers)}",
            fmt(f.one.latency_ms(0.5), 3),
            fmt(f.one.latency_ms(0.99), 3),
            fmt(f.one_bare.latency_ms(0.5), 3),
            fmt(share(f.one.latency_ms(0.5), f.one_bare.latency_ms(0.5)), 2),
        ]
        for workers, f in figures.items()
    ]
    ctx.report.data["cores"] = {
        "cores": config.cores(),
        "redis": redis.per_second if redis else None,
        "servers": [
            {
                "workers": workers,
                "produce": f.produce.per_second,
                "bare": f.bare.per_second,
                "produce_p50_ms": f.produce.latency_ms(0.5),
                "one_p50_ms": f.one.latency_ms(0.5),
                "one_bare_p50_ms": f.one_bare.latency_ms(0.5),
            }
            for workers, f in figures.items()
        ],
    }
    ctx.report.add(
        f"Cores: Produce with {' and '.join(map(workers_label, figures))}, and Redis Streams",
        f"{note}; took {time.monotonic() - began:.0f} s; {n} records x {len(PAYLOAD)} B per "
        f"call from {p} producer processes, one call at a time each, {seconds:g} s per run; "
        f"{redis_note}",
        markdown_table(
            [
                "workload",
                "records/s",
                "p50 ms",
                "p99 ms",
                "bare unary records/s (ratio)",
                "/ Redis",
            ],
            rows,
        ),
        f"One call at a time ({plan.peek_calls} calls, alternating with bare unary calls of "
        "the same bytes in 5 rounds):\n\n"
        + markdown_table(
            ["call", "p50 ms", "p99 ms", "bare unary p50 ms", "p50 / bare p50"], latency_rows
        ),
    )
    default = figures[ctx.workers]
    single_process = figures[1]
    ctx.report.target(
        f"Produce {n}/call, {p} producers, durable, {workers_label(ctx.workers)} "
        "/ bare unary (rate)",
        share(default.produce.per_second, default.bare.per_second),
        ">=",
        0.5,
        f"--workers 1: {ratio(single_process.produce.per_second, single_process.bare.per_second)}"
        + (
            f"; / Redis XADD: {ratio(default.produce.per_second, redis.per_second)}"
            if redis
            else "; Redis not measured"
        ),
    )
    ctx.report.target(
        f"Durable 1-record Produce p50, {workers_label(ctx.workers)} / bare unary p50",
        share(default.one.latency_ms(0.5), default.one_bare.latency_ms(0.5)),
        "<=",
        1.5,
        "--workers 1: "
        f"{ratio(single_process.one.latency_ms(0.5), single_process.one_bare.latency_ms(0.5))}",
    )


def section_fanout(ctx: Context) -> None:
    """Records/s delivered to 100 followers with no loss and p99 < 50 ms
    (bench/fanout.py's search), --workers 1 and the default, same run."""
    plan = ctx.plan
    note = load_note()
    began = time.monotonic()
    processes = max(2, config.cores() // 2)
    found: list[fanout.Capacity] = []
    start = 100.0
    for workers in sorted(worker_counts(ctx)):  # 1 first: its figure starts the next search
        capacity = fanout.search(
            workers,
            FANOUT_FOLLOWERS,
            processes,
            start,
            plan.fanout_seconds,
            plan.fanout_refine,
            retries=plan.fanout_retries,
        )
        found.append(capacity)
        if capacity.best is not None:
            start = capacity.best.rate
    rows = [
        [
            workers_label(c.workers),
            fmt(c.delivered),
            fmt(c.best.rate) if c.best else "-",
            fmt(c.best.p99_ms, 2) if c.best else "-",
            ratio(c.delivered, found[0].delivered),
        ]
        for c in found
    ]
    ctx.report.data["fanout"] = [
        {"workers": c.workers, "delivered": c.delivered, "steps": [vars(s) for s in c.steps]}
        for c in found
    ]
    ctx.report.add(
        f"Fan-out: records/s to {FANOUT_FOLLOWERS} followers, "
        + " and ".join(workers_label(c.workers) for c in found),
        f"{note}; took {time.monotonic() - began:.0f} s; single-record durable transactions "
        f"from one producer process; followers in {processes} processes, "
        f"{fanout.PER_CHANNEL} per connection; the best rate at "
        f"which every follower got every record, no gap, p99 < {fanout.P99_LIMIT_MS:g} ms "
        f"(rates double from {fmt(100.0)} tx/s, or from --workers 1's best for the "
        f"default, then {plan.fanout_refine} bisection(s); a step failed on its p99 alone "
        f"run again up to {plan.fanout_retries} time(s); "
        f"{plan.fanout_seconds:g} s counted per step, or {fanout.MIN_TRANSACTIONS} "
        "transactions when that is longer)",
        markdown_table(
            [
                "server",
                "records/s delivered",
                "at tx/s",
                "p99 ms",
                "/ --workers 1",
            ],
            rows,
        ),
        "Every step:\n\n" + fanout.steps_table(found),
    )
    if len(found) > 1:
        ctx.report.target(
            f"Records/s to {FANOUT_FOLLOWERS} followers (no loss, p99 < 50 ms), "
            f"{workers_label(ctx.workers)} / --workers 1",
            share(found[-1].delivered, found[0].delivered),
            ">=",
            3.0,
            f"{fmt(found[-1].delivered)} / {fmt(found[0].delivered)} records/s",
        )


def section_smalltxn(ctx: Context) -> None:
    """Consume of a space written one record per Produce beside the same
    records written 100 per Produce, same server, same run (bench/small_txns.py)."""
    note = load_note()
    began = time.monotonic()
    repeats = 3 if ctx.report.mode == "quick" else 5
    figures = small_txns.measure(records=SMALL_TXN_RECORDS, segments=100, repeats=repeats)
    ctx.report.data["smalltxn"] = figures
    rows = [
        [
            label,
            fmt(figures[f"{kind}_small"]),
            fmt(figures[f"{kind}_big"]),
            f"{figures[f'{kind}_ratio']:.2f}",
        ]
        for label, kind in (
            (f"a space of {figures['segments']} segments", "space"),
            ("10 of its segments, one after the other", "segment"),
        )
    ]
    ctx.report.add(
        "Small transactions: Consume of records written 1 vs 100 per Produce",
        f"{note}; took {time.monotonic() - began:.0f} s ({figures['load_seconds']:.0f} s "
        f"loading); {fmt(figures['records'])} records per space, Produce i to segment i % "
        f"{figures['segments']}; median of {figures['repeats']} reads to the end, alternating",
        markdown_table(
            ["read", "1 per Produce records/s", "100 per Produce records/s", "ratio"], rows
        ),
    )
    ctx.report.target(
        f"Consume of a space written 1 record per Produce / 100 per Produce "
        f"({fmt(figures['records'])} records, rate)",
        figures["space_ratio"],
        ">=",
        0.75,
        f"10 segments read one after the other: {figures['segment_ratio']:.2f}",
    )


# -- Scaling -------------------------------------------------------------


def section_growth(ctx: Context) -> None:
    """Consume rate as one segment grows: reads of ``growth_window`` records
    spread over the segment, at each size, beside bare stream and raw scans."""
    plan = ctx.plan
    note = load_note()
    began = time.monotonic()
    window = plan.growth_window
    rows: list[list[str]] = []
    data: list[dict[str, Any]] = []
    space, segment = "grow", "s"
    prefix = keys.segment_prefix(space, segment)
    written = 0
    loaded = 0.0
    with run_server(sync=True) as server:
        for size in plan.growth_sizes:
            request = produce_request(space, [(segment, MAX_PER_CALL)])
            loaded += populate(ctx, server.address, [request] * ((size - written) // MAX_PER_CALL))
            written = size
            server_rates, bare_rates, raw_rates = [], [], []
            with read_only(server.data) as db:
                for k in range(plan.growth_reads):
                    first = 1 + (size - window) * k // max(plan.growth_reads - 1, 1)
                    got = stream(
                        ctx, server.address, CONSUME, consume_request(space, segment, first, window)
                    )
                    if got.records != window or got.last_sequence != first + window - 1:
                        print(f"growth read at {first}: {got.records} records", file=sys.stderr)
                    server_rates.append(stream_rate(got))
                    request_bare = stream_request(window, got.first_batch, got.sample)
                    bare_rates.append(stream_rate(stream(ctx, ctx.bare, STREAM, request_bare)))
                    raw_rates.append(raw_scan(db, prefix, first, window).per_second)
            rate, bare, raw = (statistics.median(v) for v in (server_rates, bare_rates, raw_rates))
            rows.append(
                [fmt(size), fmt(rate), mb(rate), rate_cell(rate, bare), rate_cell(rate, raw)]
            )
            data.append({"size": size, "server": rate, "bare": bare, "raw": raw})
    ctx.report.data["growth"] = data
    ctx.report.add(
        "Scaling: consume rate as a segment grows",
        f"{note}; took {time.monotonic() - began:.0f} s ({loaded:.0f} s loading); median of "
        f"{plan.growth_reads} reads of {fmt(window)} records spread over the segment",
        markdown_table(
            [
                "records in the segment",
                "records/s",
                "MB/s",
                "bare stream records/s (ratio)",
                "raw scan records/s (ratio)",
            ],
            rows,
        ),
    )
    ctx.report.target(
        f"Consume rate at {fmt(data[-1]['size'])} / at {fmt(data[0]['size'])} records",
        share(data[-1]["server"], data[0]["server"]),
        ">=",
        0.8,
        f"raw scans: {ratio(data[-1]['raw'], data[0]['raw'])}",
    )


@dataclass
class Starts:
    first_s: float  # the first start after writes (replays the WAL)
    restart_s: float  # median of the others
    rss_mb: float  # right after the last start


def measure_starts(data: Path, count: int, then: Callable[[str], None] | None = None) -> Starts:
    """Starts the server on ``data`` ``count`` times: from the process start to
    its ``listening on`` line. ``then`` runs against the last one."""
    times = []
    rss = 0.0
    for i in range(count):
        before = time.monotonic()
        with run_server(data=data, start_timeout=300) as server:
            times.append(time.monotonic() - before)
            rss = server.sample().rss_mb
            if then is not None and i == count - 1:
                then(server.address)
    return Starts(times[0], statistics.median(times[1:] or times), rss)


def segment_names(first: int, last: int) -> list[str]:
    return [f"seg-{k:06d}" for k in range(first, last)]


def section_segments(ctx: Context) -> None:
    """Peek latency, start-up time and memory as the number of segments grows
    (one record each), then the same segments with 10x the records."""
    plan = ctx.plan
    note = load_note()
    began = time.monotonic()
    data_dir = ctx.tmp / "segments"
    rows: list[list[str]] = []
    data: list[dict[str, Any]] = []
    present = 0
    rng = random.Random(7)
    peeks: dict[str, tuple[Rate, Rate]] = {}

    def peek(address: str) -> None:
        names = rng.sample(segment_names(0, present), min(present, 1000))
        requests = [pb.PeekRequest(space="many", segment=n).SerializeToString() for n in names]
        peeks["last"] = paired(ctx, address, PEEK, requests, plan.peek_calls)

    loaded = 0.0
    for count in plan.segment_counts:
        names = segment_names(present, count)
        requests = [
            produce_request("many", [(name, 1) for name in names[i : i + MAX_PER_CALL]])
            for i in range(0, len(names), MAX_PER_CALL)
        ]
        with run_server(data=data_dir) as server:
            loaded += populate(ctx, server.address, requests)
        present = count
        starts = measure_starts(data_dir, plan.starts, peek)
        got, limit = peeks["last"]
        rows.append(
            segments_row(f"{fmt(count)} segments, {fmt(count)} records", starts, got, limit)
        )
        data.append(
            {
                "segments": count,
                "records": count,
                "first_s": starts.first_s,
                "restart_s": starts.restart_s,
                "rss_mb": starts.rss_mb,
                "peek_p50": got.latency_ms(0.5),
                "peek_p99": got.latency_ms(0.99),
                "bare_p50": limit.latency_ms(0.5),
            }
        )
    # The same segments, 10x the records: 9 more in each.
    names = segment_names(0, present)
    per = MAX_PER_CALL // 9
    requests = [
        produce_request("many", [(name, 9) for name in names[i : i + per]])
        for i in range(0, len(names), per)
    ]
    with run_server(data=data_dir) as server:
        loaded += populate(ctx, server.address, requests)
    starts = measure_starts(data_dir, plan.starts, peek)
    got, limit = peeks["last"]
    rows.append(
        segments_row(f"{fmt(present)} segments, {fmt(present * 10)} records", starts, got, limit)
    )
    tenfold = {
        "segments": present,
        "records": present * 10,
        "first_s": starts.first_s,
        "restart_s": starts.restart_s,
        "rss_mb": starts.rss_mb,
    }
    ctx.report.data["segments"] = data
    ctx.report.data["segments_tenfold"] = tenfold
    ctx.report.add(
        "Scaling: segments (peek, start-up, memory)",
        f"{note}; took {time.monotonic() - began:.0f} s ({loaded:.0f} s loading); "
        f"{plan.starts} starts each, peeks at up to 1,000 random segments",
        markdown_table(
            [
                "data",
                "first start s",
                "restart s",
                "RSS MiB after start",
                "peek p50 ms",
                "peek p99 ms",
                "bare unary p50 ms (ratio)",
            ],
            rows,
        ),
        "first start: the first after writing (RocksDB replays its WAL); restart: median "
        "of the starts after it. Start: from the process start to `listening on`, "
        "Python's imports included.",
    )
    first, last = data[0], data[-1]
    ctx.report.target(
        f"Peek p50 at {fmt(last['segments'])} / at {fmt(first['segments'])} segments",
        share(last["peek_p50"], first["peek_p50"]),
        "<=",
        1.5,
        "each relative to its bare unary p50: "
        f"{share(last['peek_p50'] / last['bare_p50'], first['peek_p50'] / first['bare_p50']):.2f}",
    )
    ctx.report.target(
        f"Start-up with {fmt(present * 10)} / {fmt(present)} records ({fmt(present)} segments)",
        share(tenfold["restart_s"], data[-1]["restart_s"]),
        "<=",
        1.25,
        "restart medians; 'independent of the records' read as within 25 %",
    )


def segments_row(label: str, starts: Starts, got: Rate, limit: Rate) -> list[str]:
    p50 = got.latency_ms(0.5)
    return [
        label,
        fmt(starts.first_s, 2),
        fmt(starts.restart_s, 2),
        fmt(starts.rss_mb),
        fmt(p50, 3),
        fmt(got.latency_ms(0.99), 3),
        latency_cell(p50, limit.latency_ms(0.5)),
    ]


# -- Lifecycle -------------------------------------------------------------


def section_lifecycle(ctx: Context) -> None:
    """Disk space after a trim, produce latency during a retention pass, one
    retention pass over many segments (bench/lifecycle.py; --quick: its CI sizes)."""
    note = load_note()
    began = time.monotonic()
    sizes = lifecycle.CI if ctx.report.mode == "quick" else lifecycle.FULL
    figures = lifecycle.measure(sizes)
    took = time.monotonic() - began
    for title, what, table in figures.tables():
        ctx.report.add(title, f"{note}; {what}", table)
    ctx.report.data["lifecycle"] = lifecycle.as_json(figures) | {"seconds": took}
    ctx.report.target(
        f"Disk given back after trimming {lifecycle.TRIM_SHARE:.0%} of {fmt(sizes.mb)} MB "
        "/ the trimmed share",
        figures.reclaim.given_back,
        ">=",
        lifecycle.RECLAIM_TARGET,
        f"after {figures.reclaim.reclaim_seconds:.1f} s, no restart",
    )
    ctx.report.target(
        f"Produce p99 during a retention pass of {fmt(figures.latency.records)} records / idle p99",
        figures.p99_ratio,
        "<=",
        2.0,
        f"{len(figures.latency.during)} calls during the pass",
    )


# -- Scale-out -------------------------------------------------------------


def section_scaleout(ctx: Context) -> None:
    """Produce and read through 1 and 3 JetStream gateways over a 3-node R3
    cluster, beside one RocksDB server and nats-py straight to JetStream
    (bench/scaleout.py; --quick: its CI sizes)."""
    sizes = scaleout.QUICK if ctx.report.mode == "quick" else scaleout.FULL
    outcome = scaleout.run(ctx.pool, sizes)
    ctx.report.data["scaleout"] = scaleout.as_json(outcome)
    problems = scaleout.problems(outcome)
    ctx.report.add(
        "Scale-out: JetStream gateways, RocksDB and NATS-native",
        scaleout.describe(outcome),
        scaleout.table(outcome),
        "Ratios of this run:\n\n"
        + scaleout.ratios_table(outcome)
        + "".join(f"\n\nproblem: {line}" for line in problems),
    )


# -- Consumer groups -------------------------------------------------------


def section_groups(ctx: Context) -> None:
    """Records/s through a group of 8 members beside a plain Consume of the
    same space, and redelivery after a member's stream ends (bench/groups.py;
    --quick: its CI sizes, 100k records; full: 1M records over 1,000 segments)."""
    sizes = groups.QUICK if ctx.report.mode == "quick" else groups.FULL
    outcome = groups.run(ctx.pool, sizes)
    ctx.report.data["groups"] = groups.as_json(outcome)
    ctx.report.add(
        "Consumer groups: throughput and redelivery",
        groups.describe(outcome),
        groups.throughput_table(outcome),
        groups.after_tables(outcome),
    )
    ctx.report.target(
        f"Group PER_SEGMENT, {sizes.members} members / plain Consume of the space (rate)",
        outcome.ratio("PER_SEGMENT"),
        ">=",
        0.25,
        f"{fmt(sizes.records)} records, {fmt(sizes.segments)} segments; "
        f"NONE: {ratio(outcome.ratio('NONE'), 1.0)}",
    )
    ctx.report.target(
        "Redelivery of a member's held records after its stream ends (worst round, ms)",
        outcome.worst_redelivery_ms,
        "<=",
        1000,
        f"{len(outcome.rounds)} rounds (kill -9 and cancel)",
    )


# -- Main ----------------------------------------------------------------

SECTIONS: dict[str, Callable[[Context], None]] = {
    "produce": section_produce,
    "transactions": section_transactions,
    "consume": section_consume,
    "latency": section_latency,
    "follow": section_follow,
    "cores": section_cores,
    "fanout": section_fanout,
    "smalltxn": section_smalltxn,
    "growth": section_growth,
    "segments": section_segments,
    "lifecycle": section_lifecycle,
    "scaleout": section_scaleout,
    "groups": section_groups,
}


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cores = config.cores()
    usable = "" if cores == os.cpu_count() else f", {cores} usable by this process"
    return f"{os.cpu_count()} cores{usable} ({model}), {memory:.0f} GiB RAM, {platform.platform()}"


def commit() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    return "unknown"


def targets_table(targets: Sequence[Target]) -> str:
    rows = [
        [t.name, f"{t.measured:.2f}", t.required, "yes" if t.met else "**no**", t.note]
        for t in targets
    ]
    return markdown_table(["target", "measured", "required", "met", "note"], rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller counts (CI sizes): a few minutes"
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated sections: {', '.join(SECTIONS)}"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")
    parser.add_argument(
        "--workers",
        type=int,
        default=config.cores(),
        help="the server's --workers that the cores and fanout sections compare with "
        "--workers 1 (default: the core count, %(default)s here)",
    )
    args = parser.parse_args(argv)
    chosen = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    plan = QUICK if args.quick else FULL
    report = Report("quick" if args.quick else "full")
    began = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# Streams benchmark ({report.mode}), {stamp}, commit {commit()}\n", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="streams-bench-suite-") as tmp,
        ClientPool(max(*plan.producers, 2)) as pool,
        run_bare_server() as bare,
    ):
        ctx = Context(plan, pool, bare, report, Path(tmp), args.workers)
        for name in chosen:
            print(f"-- {name}", file=sys.stderr, flush=True)
            SECTIONS[name](ctx)
    took = time.monotonic() - began
    header = (
        f"# Streams benchmark ({report.mode}), {stamp}\n\n"
        f"Machine: {machine()}. Commit {commit()}. Sections: {', '.join(chosen)}; "
        f"took {took / 60:.1f} min. Server: its default --workers (one process per core), "
        f"except in cores and fanout: --workers {args.workers} beside --workers 1.\n\n"
        "Ratios in parentheses: server / limit for rates, limit / server for latencies "
        "(1.00 = at the limit, lower = slower). MB/s: payload bytes (100 B per record). "
        "Limits: *bare* = a grpc.aio service answering pre-built messages of the same "
        "shapes (bench/bare_grpc.py), driven by the same client processes; *raw* = "
        "rocksdict in the benchmark's process doing the same writes or scans.\n"
    )
    targets = "### Targets\n\n" + (
        targets_table(report.targets) if report.targets else "_no target section ran_"
    )
    text = "\n".join([header, targets + "\n", *report.sections])
    print(targets)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(text, encoding="utf-8")
    results = {
        "mode": report.mode,
        "cores": config.cores(),
        "date": stamp,
        "data": report.data,
        "targets": [t.__dict__ for t in report.targets],
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    import charts  # matplotlib is slow to import: only once the figures are in

    written = charts.draw(report.data, args.out)
    for path in [args.out / "report.md", args.out / "results.json", *written]:
        print(f"wrote {path}", file=sys.stderr)
    print(f"\n(took {took:.0f} s)")


if __name__ == "__main__":
    main()
