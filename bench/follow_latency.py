"""Produce-to-follower latency with 1, 100 and 1,000 followers of one space.

A producer process sends single-record transactions at a target rate (open
loop: a send is never held back by an earlier one still in flight). Each
payload carries the send time from ``time.monotonic_ns()``, one clock for
every process on the machine. Follower processes hold many ``Consume``
streams (``follow=true, from_end=true``) over a few channels each and note,
for every record, the time from its send to the arrival of the response that
holds it. The first ``--warmup`` seconds are sent but not counted. Every
follower also checks that positions arrive with no gap and no repeat.

    python bench/follow_latency.py                  # 1, 100, 1000 followers, 5 s each
    python bench/follow_latency.py --quick          # 2 s each
    python bench/follow_latency.py --followers 100 --seconds 10 --rate 500
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import queue
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as EventType

import grpc
from common import (
    Histogram,
    ProcessSample,
    fmt,
    machine_cpu,
    markdown_table,
    percentile,
    run_server,
    wait_for_quiet,
)

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc

SPACE = "follow"
PAYLOAD_BYTES = 100
STREAMS_PER_CHANNEL = 100
# gRPC itself answers CANCELLED to part of a burst of over ~1,000 new calls on
# one connection (seen with a bare echo server too): stay well below.
MAX_IN_FLIGHT = 500
SETUP_TIMEOUT_S = 120.0
# Payload: send time (ns, monotonic clock), then a flag: counted or warm-up.
# A send time of 0 marks the end: followers stop on it.
_HEAD = struct.Struct(">QB")
WARMUP, COUNTED = 0, 1


# -- Followers ------------------------------------------------------------


@dataclass
class FollowerReport:
    """What one follower process saw, over all its streams."""

    streams: int
    latency: Histogram = field(default_factory=Histogram)
    records: int = 0  # every record received (warm-up and end marker included)
    messages: int = 0
    gaps: int = 0  # a position other than the previous one + 1
    finished: int = 0  # streams that reached the end marker
    errors: list[str] = field(default_factory=list)


async def _follow_one(
    stub: streams_pb2_grpc.StreamsServiceStub,
    report: FollowerReport,
    opened: asyncio.Queue[None],
) -> None:
    request = pb.ConsumeRequest(space=SPACE, follow=True, from_end=True)
    call = stub.Consume(request)
    try:
        await call.initial_metadata()
        opened.put_nowait(None)
        expected = 0
        async for response in call:
            now = time.monotonic_ns()
            report.messages += 1
            for record in response.records:
                report.records += 1
                if expected and record.position != expected:
                    report.gaps += 1
                expected = record.position + 1
                sent, flag = _HEAD.unpack_from(record.payload)
                if sent == 0:
                    report.finished += 1
                    return
                if flag == COUNTED:
                    report.latency.add((now - sent) / 1000)
    except grpc.aio.AioRpcError as exc:
        report.errors.append(f"{exc.code().name}: {exc.details()}")
    finally:
        call.cancel()


async def _follow(
    address: str,
    streams: int,
    ready: mp.Queue,  # type: ignore[type-arg]
    stop: EventType,
    stop_after: float,
    per_channel: int,
) -> FollowerReport:
    report = FollowerReport(streams)
    channels = [
        # A local subchannel pool: each channel gets its own TCP connection.
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(-(-streams // per_channel))
    ]
    opened: asyncio.Queue[None] = asyncio.Queue()
    tasks = [
        asyncio.create_task(
            _follow_one(
                streams_pb2_grpc.StreamsServiceStub(channels[i // per_channel]),
                report,
                opened,
            )
        )
        for i in range(streams)
    ]
    try:
        async with asyncio.timeout(SETUP_TIMEOUT_S):
            for _ in range(streams):
                await opened.get()
        ready.put("ready")
        # Until every stream has seen the end marker, the main process says
        # stop (it gave up waiting), or stop_after passes (a safety net).
        deadline = time.monotonic() + stop_after
        pending: set[asyncio.Task[None]] = set(tasks)
        while pending and not stop.is_set() and time.monotonic() < deadline:
            _, pending = await asyncio.wait(pending, timeout=0.2)
        if pending:
            report.errors.append(f"{len(pending)} stream(s) stopped before the end marker")
    except TimeoutError:
        report.errors.append(f"only {opened.qsize()} of {streams} streams opened in time")
        ready.put("failed")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()
    return report


def follower_process(
    address: str,
    streams: int,
    ready: mp.Queue,  # type: ignore[type-arg]
    results: mp.Queue,  # type: ignore[type-arg]
    stop: EventType,
    stop_after: float,
    per_channel: int = STREAMS_PER_CHANNEL,
) -> None:
    results.put(asyncio.run(_follow(address, streams, ready, stop, stop_after, per_channel)))


# -- Producer -------------------------------------------------------------


@dataclass
class ProducerReport:
    sent: int  # counted transactions sent
    acked: int  # counted transactions acknowledged
    seconds: float  # from the first counted send to the last counted ack
    ack_latencies_s: list[float]
    errors: list[str]
    late_sends: int  # counted sends that left over 1 ms behind schedule
    skipped: int  # counted sends not made: MAX_IN_FLIGHT calls were unanswered


async def _produce(
    address: str,
    rate: float,
    seconds: float,
    warmup: float,
    started: mp.Queue,  # type: ignore[type-arg]
) -> ProducerReport:
    padding = b"p" * (PAYLOAD_BYTES - _HEAD.size)
    latencies: list[float] = []
    errors: list[str] = []
    acked = 0
    last_ack = 0.0
    in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = streams_pb2_grpc.StreamsServiceStub(channel)
        await channel.channel_ready()
        started.put("started")

        async def send(flag: int) -> None:
            nonlocal acked, last_ack
            sent = time.monotonic_ns()
            record = pb.RecordInput(payload=_HEAD.pack(sent, flag) + padding)
            write = pb.SegmentWrite(segment="s", records=[record])
            try:
                await stub.Produce(pb.ProduceRequest(space=SPACE, writes=[write]), timeout=30)
            except grpc.aio.AioRpcError as exc:
                waited = (time.monotonic_ns() - sent) / 1e9
                errors.append(f"{exc.code().name}: {exc.details()} (after {waited:.2f} s)")
                return
            finally:
                in_flight.release()
            if flag == COUNTED:
                acked += 1
                last_ack = time.monotonic()
                latencies.append((time.monotonic_ns() - sent) / 1e9)

        interval = 1.0 / rate
        start = time.monotonic()
        counted_from = start + warmup
        end = counted_from + seconds
        tasks: set[asyncio.Task[None]] = set()
        sent_counted = late = skipped = 0
        n = 0
        # Bounded in count and in time: sends that fall behind past the end are dropped.
        while (due := start + n * interval) < end and time.monotonic() < end:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            counted = due >= counted_from
            n += 1
            if in_flight.locked():
                skipped += counted  # the server is that far behind: keep the schedule
                continue
            await in_flight.acquire()
            if counted:
                sent_counted += 1
                late += time.monotonic() - due > 0.001
            task = asyncio.create_task(send(COUNTED if counted else WARMUP))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        # The end marker: followers stop when they see it.
        marker = pb.RecordInput(payload=_HEAD.pack(0, WARMUP) + padding)
        write = pb.SegmentWrite(segment="s", records=[marker])
        try:
            await stub.Produce(pb.ProduceRequest(space=SPACE, writes=[write]), timeout=30)
        except grpc.aio.AioRpcError as exc:
            errors.append(f"end marker: {exc.code().name}: {exc.details()}")
    return ProducerReport(
        sent_counted, acked, max(last_ack - counted_from, 1e-9), latencies, errors, late, skipped
    )


def producer_process(
    address: str,
    rate: float,
    seconds: float,
    warmup: float,
    results: mp.Queue,  # type: ignore[type-arg]
) -> None:
    results.put(asyncio.run(_produce(address, rate, seconds, warmup, results)))


# -- One configuration ----------------------------------------------------


@dataclass
class Outcome:
    followers: int
    producer: ProducerReport
    reports: list[FollowerReport]
    background: float  # share of the machine busy with other work before the start
    server_cpu_share: float  # of one core
    machine_busy: float  # share of all cores
    server_end: ProcessSample
    problems: list[str]


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def _collect(
    results: mp.Queue,  # type: ignore[type-arg]
    count: int,
    drain: float,
    stop: EventType,
) -> list[FollowerReport]:
    """Follower reports: up to ``drain`` s for the streams to reach the end
    marker, then ``stop`` tells the rest to report what they have."""
    reports: list[FollowerReport] = []
    deadline = time.monotonic() + drain
    try:
        while len(reports) < count:
            reports.append(results.get(timeout=max(deadline - time.monotonic(), 0.001)))
    except queue.Empty:
        stop.set()
        reports += [results.get(timeout=60) for _ in range(count - len(reports))]
    return reports


def run_configuration(
    followers: int,
    processes: int,
    rate: float,
    seconds: float,
    warmup: float,
    drain: float,
    workers: int | None = None,
    per_channel: int = STREAMS_PER_CHANNEL,
) -> Outcome:
    """``followers`` streams in ``processes`` processes, ``per_channel`` streams
    per connection, one producer at ``rate`` transactions/s, on a fresh durable
    server (``workers``: its --workers; SO_REUSEPORT spreads connections, not
    streams, over its front processes)."""
    ctx = mp.get_context("spawn")
    ready: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    results: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    produced: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    background = wait_for_quiet()
    stop = ctx.Event()
    stop_after = warmup + seconds + drain + 120
    with run_server(workers=workers) as server:
        helpers = [
            ctx.Process(
                target=follower_process,
                args=(server.address, n, ready, results, stop, stop_after, per_channel),
            )
            for n in _split(followers, min(processes, followers))
        ]
        producer = ctx.Process(
            target=producer_process, args=(server.address, rate, seconds, warmup, produced)
        )
        try:
            for helper in helpers:
                helper.start()
            states = [ready.get(timeout=SETUP_TIMEOUT_S + 30) for _ in helpers]
            if any(state != "ready" for state in states):
                raise RuntimeError(f"followers failed to open their streams: {states}")
            producer.start()
            if produced.get(timeout=SETUP_TIMEOUT_S) != "started":
                raise RuntimeError("the producer did not start")
            before, machine_before = server.sample(), machine_cpu()
            began = time.monotonic()
            report = produced.get(timeout=warmup + seconds + 90)
            after, machine_after = server.sample(), machine_cpu()
            share = (after.cpu_s - before.cpu_s) / (time.monotonic() - began)
            busy = (machine_after[0] - machine_before[0]) / (machine_after[1] - machine_before[1])
            reports = _collect(results, len(helpers), drain, stop)
        finally:
            for process in [*helpers, producer]:
                process.join(timeout=15)
                if process.is_alive():
                    print(
                        f"helper process {process.pid} did not exit: terminating", file=sys.stderr
                    )
                    process.terminate()
        end = server.sample()
        problems = server.log_problems()
    return Outcome(followers, report, reports, background, share, busy, end, problems)


def summarize(outcomes: Sequence[Outcome], rate: float) -> str:
    rows = []
    for o in outcomes:
        latency = Histogram()
        for report in o.reports:
            latency.merge(report.latency)
        p = o.producer
        received = sum(r.records for r in o.reports)
        gaps = sum(r.gaps for r in o.reports)
        unfinished = o.followers - sum(r.finished for r in o.reports)
        messages = sum(r.messages for r in o.reports)
        expected = p.acked * o.followers
        rows.append(
            [
                fmt(o.followers),
                f"{fmt(p.acked / p.seconds)} / {fmt(rate)}",
                fmt(latency.percentile(0.5) / 1000, 2),
                fmt(latency.percentile(0.99) / 1000, 2),
                fmt(latency.maximum / 1000, 1),
                f"{latency.total:,} / {expected:,}",
                f"{received / max(messages, 1):.1f}",
                fmt(percentile(p.ack_latencies_s, 0.5) * 1000, 2),
                fmt(percentile(p.ack_latencies_s, 0.99) * 1000, 2),
                f"{o.server_cpu_share:.0%} / {o.machine_busy:.0%} ({o.background:.0%})",
                fmt(o.server_end.peak_rss_mb),
                f"{gaps} / {unfinished} / {len(p.errors)}",
                f"{p.late_sends:,} / {p.skipped:,}",
            ]
        )
    return markdown_table(
        [
            "followers",
            "tx/s achieved / target",
            "p50 ms",
            "p99 ms",
            "max ms",
            "latencies / expected",
            "records per message",
            "ack p50 ms",
            "ack p99 ms",
            "server CPU / machine busy (before)",
            "server peak RSS MiB",
            "gaps / unfinished / produce errors",
            "late / skipped sends",
        ],
        rows,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s per configuration")
    parser.add_argument("--followers", default="1,100,1000", help="comma-separated counts")
    parser.add_argument("--seconds", type=float, default=None, help="counted seconds (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds first")
    parser.add_argument("--rate", type=float, default=1000.0, help="target transactions/s")
    parser.add_argument(
        "--processes", type=int, default=1, help="follower processes (1 leaves the server a core)"
    )
    parser.add_argument("--drain", type=float, default=60.0, help="max s to wait for followers")
    parser.add_argument(
        "--workers", type=int, default=None, help="the server's --workers (default: its own)"
    )
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 5.0)
    counts = [int(n) for n in args.followers.split(",")]
    if any(n < 1 for n in counts) or not 0 < args.rate <= 100_000 or seconds <= 0:
        parser.error("followers must be >= 1, rate in (0, 100000], seconds > 0")
    began = time.monotonic()
    outcomes = []
    for followers in counts:
        outcome = run_configuration(
            followers, args.processes, args.rate, seconds, args.warmup, args.drain, args.workers
        )
        outcomes.append(outcome)
        for report in outcome.reports:
            for error in report.errors[:3]:
                print(f"{followers} followers: follower error: {error}", file=sys.stderr)
        for error in outcome.producer.errors[:3]:
            print(f"{followers} followers: produce error: {error}", file=sys.stderr)
        for line in outcome.problems[:5]:
            print(f"{followers} followers: server log: {line}", file=sys.stderr)
    print(
        f"## Follow latency (single-record transactions of {PAYLOAD_BYTES} B, "
        f"{seconds:g} s counted after {args.warmup:g} s warm-up, durable server, "
        f"followers in {args.processes} process(es), {STREAMS_PER_CHANNEL} streams per channel)\n"
    )
    print(summarize(outcomes, args.rate))
    print(
        "\nLatency: from the send of a Produce to the arrival at a follower of the response"
        " holding its record. ack: Produce call latency at the producer. server CPU: share"
        f" of one core while producing; machine busy: share of all {os.cpu_count()} cores"
        " (before: busy with other work before the start)."
        " late: counted sends that left over 1 ms behind schedule; skipped: not sent"
        f" because {MAX_IN_FLIGHT} calls were in flight already."
    )
    print(f"\n(took {time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
