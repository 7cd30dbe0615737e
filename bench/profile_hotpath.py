"""Where the CPU time of a call goes: py-spy on the server (or the client)
under the bench's loads, broken down by layer (docs/performance.md).

Loads (the same request bytes as bench/suite.py's sections):

- ``produce``: ``--producers`` client processes (bench/workers.py, raw bytes,
  one call at a time each) sending Produce of ``--per-call`` records x 100 B to
  a durable server; py-spy samples the server.
- ``follow``: ``--followers`` Consume(follow) streams of one space fed by a
  producer of 1-record transactions at ``--rate`` per second
  (bench/follow_latency.py's processes); py-spy samples the server.
- ``client``: one process calling ``streams.Client.produce`` in a loop
  (``--per-call`` records per call); py-spy samples that client process.

Each run prints the CPU the sampled process used (from /proc), the calls
made, and a table of CPU microseconds per call (and per record) by layer: each
sample goes to the innermost frame that a rule below recognises. The raw
samples (py-spy ``--format raw``: collapsed stacks) are kept in ``--out``.

    python bench/profile_hotpath.py produce --per-call 100 --producers 4 --seconds 10
    python bench/profile_hotpath.py produce --per-call 1 --producers 4 --seconds 10
    python bench/profile_hotpath.py follow --followers 100 --rate 1000 --seconds 10
    python bench/profile_hotpath.py client --per-call 100 --seconds 10
    python bench/profile_hotpath.py classify /tmp/profile/produce-100.txt --calls N --cpu S
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import follow_latency
from bare_grpc import UNARY
from common import fmt, markdown_table, run_listening, run_server, sample_process
from suite import produce_request
from workers import PRODUCE, ClientPool, UnaryJob, merge

from streams.model import ProduceResult

# Layers, tried on each frame from the innermost out; the first match takes
# the sample. A rule is (layer, regular expression over "function (file)").
# A sample whose innermost frames wait (a lock, a condition, epoll) is idle:
# native stacks (--native) carry no thread state.
IDLE = re.compile(
    r"epoll_wait|pthread_cond_(timed)?wait|PyThread_acquire_lock|sem_wait|futex|"
    r"SimpleQueue_get|nanosleep|clock_nanosleep"
)
IDLE_LAYER = "idle (waiting)"
RULES: tuple[tuple[str, str], ...] = (
    ("protobuf (upb, C)", r"_message\.|libupb|upb_|google/protobuf/"),
    ("rocksdb write (C++)", r"rocksdb::WriteImpl|rocksdb::DBImpl::Write|WriteBatch"),
    ("fsync (flush_wal)", r"fdatasync|fsync|flush_wal|FlushWAL|SyncWAL"),
    ("rocksdb other (C++)", r"rocksdb::|rocksdict|librocksdict"),
    ("metrics (prometheus_client)", r"prometheus_client|streams/metrics\.py"),
    ("validation", r"streams/validation\.py"),
    ("codec / framing", r"streams/codec\.py|storage/rocksdb/chunks\.py"),
    ("group commit hand-off", r"group_commit\.py|asyncio/threads\.py|to_thread"),
    ("store (Python)", r"streams/storage/"),
    ("auth", r"streams/auth\.py"),
    ("memory budget / slow consumers", r"streams/memory\.py|streams/slow_consumers\.py"),
    ("service handlers", r"streams/service\.py"),
    ("client library", r"streams/client/"),
    # gRPC core is linked into cygrpc's .so, without symbols: core and its
    # Cython glue are one layer here (bench/bare_grpc.py's server tells them
    # from Streams: it runs only gRPC).
    ("gRPC (core + Cython glue, cygrpc.so)", r"grpc/_cython|cygrpc|\.pyx|grpc/aio|grpc/_"),
    ("asyncio event loop", r"asyncio/|_asyncio|selectors\.py"),
    ("threads (fsync worker, gRPC poller)", r"threading\.py|concurrent/futures"),
)
# libc and the interpreter (frames without a rule) count for their caller.
_COMPILED = tuple((layer, re.compile(pattern)) for layer, pattern in RULES)
OTHER = "other"


def classify(stack: Sequence[str]) -> str:
    """The layer of one sample: its innermost frame that a rule recognises."""
    if any(IDLE.search(frame) for frame in stack[-4:]):
        return IDLE_LAYER
    for frame in reversed(stack):
        for layer, pattern in _COMPILED:
            if pattern.search(frame):
                return layer
    return OTHER


def read_raw(path: Path) -> Counter[tuple[str, ...]]:
    """py-spy's ``--format raw`` output: ``frame;frame;... count`` per line,
    outermost frame first."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        head, _, count = line.rpartition(" ")
        if head and count.isdigit():
            stacks[tuple(head.split(";"))] += int(count)
    return stacks


def breakdown(
    stacks: Counter[tuple[str, ...]], calls: int, records: int, cpu_s: float
) -> tuple[str, dict[str, float]]:
    """A table of µs per call and per record by layer, and the µs per call of
    each layer. The busy samples are scaled to the CPU seconds measured, so
    the layers add up to the process's CPU time per call."""
    layers: Counter[str] = Counter()
    for stack, count in stacks.items():
        layers[classify(stack)] += count
    busy = sum(n for layer, n in layers.items() if layer != IDLE_LAYER)
    rows = []
    per_call: dict[str, float] = {}
    for layer, n in layers.most_common():
        if layer == IDLE_LAYER:
            continue
        us = cpu_s * 1e6 * n / busy / max(calls, 1)
        per_call[layer] = us
        rows.append([layer, f"{n / busy:.1%}", fmt(us, 1), fmt(us * calls / max(records, 1), 2)])
    total = cpu_s * 1e6 / max(calls, 1)
    rows.append(
        ["total (CPU /proc)", "100%", fmt(total, 1), fmt(total * calls / max(records, 1), 2)]
    )
    table = markdown_table(["layer", "share of busy samples", "µs per call", "µs per record"], rows)
    return table, per_call


def functions(stacks: Counter[tuple[str, ...]], top: int = 25) -> str:
    """The Streams functions with the most samples, inclusive (on the stack)."""
    inclusive: Counter[str] = Counter()
    total = sum(stacks.values())
    for stack, count in stacks.items():
        for frame in set(stack):
            if "streams/" in frame and "streams/v1/" not in frame:
                inclusive[re.sub(r":\d+\)", ")", frame)] += count
    rows = [[name, f"{n / total:.1%}"] for name, n in inclusive.most_common(top)]
    return markdown_table(["Streams frame (inclusive)", "share of samples"], rows)


def py_spy(pid: int, seconds: float, out: Path, rate: int, native: bool) -> subprocess.Popen[str]:
    """Starts ``py-spy record`` on ``pid`` for ``seconds`` (raw collapsed stacks)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds))]
    command += ["--rate", str(rate), "--format", "raw", "--output", str(out)]
    # Native unwinding needs the process stopped at each sample; Python stacks do not.
    command.append("--native" if native else "--nonblocking")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(spy: subprocess.Popen[str]) -> None:
    _, err = spy.communicate(timeout=120)
    if spy.returncode:
        raise RuntimeError(f"py-spy failed ({spy.returncode}): {err.strip()}")


def report(name: str, out: Path, calls: int, records: int, cpu_s: float, seconds: float) -> None:
    stacks = read_raw(out)
    table, _ = breakdown(stacks, calls, records, cpu_s)
    print(
        f"\n## {name}: {fmt(calls)} calls, {fmt(records)} records in {seconds:.1f} s "
        f"({fmt(calls / seconds)} calls/s); sampled process used {cpu_s:.2f} CPU s "
        f"({cpu_s / seconds:.0%} of a core); raw samples: {out}\n"
    )
    print(table)
    print()
    print(functions(stacks))


def run_produce(args: argparse.Namespace) -> None:
    requests = [
        produce_request(f"p{args.per_call}", [(f"producer-{i}", args.per_call)])
        for i in range(args.producers)
    ]
    kind = "bare" if args.bare else "produce"
    out = args.out / f"{kind}-{args.per_call}x{args.producers}.txt"
    method = UNARY if args.bare else PRODUCE
    with contextlib.ExitStack() as stack:
        if args.bare:
            command = [sys.executable, str(Path(__file__).with_name("bare_grpc.py"))]
            logs = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            process, address = stack.enter_context(
                run_listening([*command, "--listen", "127.0.0.1:0"], logs / "bare.log")
            )
        else:
            server = stack.enter_context(run_server(sync=not args.no_sync))
            process, address = server.process, server.address
        pool = stack.enter_context(ClientPool(args.producers))
        # Warm up (segments exist, caches hot) before sampling.
        pool.run([UnaryJob(address, method, (r,), 200, 2.0) for r in requests])
        spy = py_spy(process.pid, args.seconds, out, args.rate, args.native)
        time.sleep(0.5)  # py-spy attached
        before = sample_process(process.pid)
        began = time.monotonic()
        jobs = [UnaryJob(address, method, (r,), 10_000_000, args.seconds - 1.0) for r in requests]
        rate = merge(pool.run(jobs), args.per_call)
        cpu = sample_process(process.pid).cpu_s - before.cpu_s
        seconds = time.monotonic() - began
        finish(spy)
    calls = len(rate.latencies)
    print(
        f"p50 {rate.latency_ms(0.5):.3f} ms, p99 {rate.latency_ms(0.99):.3f} ms, "
        f"{fmt(rate.per_second)} records/s (while sampled)"
    )
    report(
        f"{kind} server, Produce {args.per_call}/call, {args.producers} producers",
        out,
        calls,
        calls * args.per_call,
        cpu,
        seconds,
    )


def run_follow(args: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    ready: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    results: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    produced: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    stop = ctx.Event()
    out = args.out / f"follow-{args.followers}.txt"
    with run_server() as server:
        followers = ctx.Process(
            target=follow_latency.follower_process,
            args=(server.address, args.followers, ready, results, stop, args.seconds + 180),
        )
        producer = ctx.Process(
            target=follow_latency.producer_process,
            args=(server.address, args.rate, args.seconds, 1.0, produced),
        )
        followers.start()
        try:
            if ready.get(timeout=120) != "ready":
                raise RuntimeError("followers failed to open their streams")
            producer.start()
            produced.get(timeout=120)
            time.sleep(1.0)  # the producer's warm-up second
            spy = py_spy(server.process.pid, args.seconds - 1.0, out, args.rate_hz, args.native)
            time.sleep(0.5)
            before = sample_process(server.process.pid)
            began = time.monotonic()
            outcome = produced.get(timeout=args.seconds + 120)
            cpu = sample_process(server.process.pid).cpu_s - before.cpu_s
            seconds = time.monotonic() - began
            finish(spy)
            reports = [results.get(timeout=120)]
        finally:
            stop.set()
            for process in (followers, producer):
                process.join(timeout=15)
                if process.is_alive():
                    process.terminate()
    delivered = sum(r.latency.total for r in reports)
    p50, p99 = (reports[0].latency.percentile(f) / 1000 for f in (0.5, 0.99))
    print(f"follower latency p50 {p50:.2f} ms, p99 {p99:.2f} ms; {delivered} deliveries counted")
    # Per transaction: its Produce call and its delivery to every follower.
    calls = round(outcome.acked * seconds / max(outcome.seconds, 1e-9))
    report(
        f"server, follow: {args.followers} followers, {args.rate:g} tx/s of 1 record",
        out,
        calls,
        calls * args.followers,
        cpu,
        seconds,
    )
    print("(per call = per 1-record transaction; per record = per delivery to one follower)")


def client_loop(address: str, per_call: int, seconds: float) -> None:
    """The sampled client: ``streams.Client.produce`` in a loop; prints the calls."""
    from streams.client import Client

    payloads = [bytes(range(100))] * per_call
    with Client(address) as client:
        for _ in range(50):
            client.produce("client", "s", payloads)
        print("ready", flush=True)
        calls = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            client.produce("client", "s", payloads)
            calls += 1
    print(calls, flush=True)


def run_client(args: argparse.Namespace) -> None:
    out = args.out / f"client-{args.per_call}.txt"
    with run_server() as server:
        child = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "client-loop",
                server.address,
                str(args.per_call),
                str(args.seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        if child.stdout is None or child.stdout.readline().strip() != "ready":
            raise RuntimeError("the client loop did not start")
        before = sample_process(child.pid)
        began = time.monotonic()
        spy = py_spy(child.pid, args.seconds - 1.0, out, args.rate, args.native)
        cpu = 0.0
        finish(spy)
        cpu = sample_process(child.pid).cpu_s - before.cpu_s
        seconds = time.monotonic() - began
        # Calls in the sampled window: the loop's count scaled to it.
        total = int(child.stdout.readline())
        child.wait(timeout=30)
    calls = round(total * seconds / args.seconds)
    report(
        f"client, Client.produce {args.per_call}/call",
        out,
        calls,
        calls * args.per_call,
        cpu,
        seconds,
    )


def in_process(per_call: int, calls: int) -> None:
    """The Streams-side work of ``calls`` Produce calls that needs neither gRPC
    nor the engine: parse, validate, number each record as the store does
    (codec.record), the response, the metrics. Deterministic: run it under
    ``valgrind --tool=callgrind`` to count instructions."""
    from streams import codec, validation
    from streams.limits import Limits
    from streams.metrics import Metrics
    from streams.v1 import streams_pb2 as pb

    raw = produce_request("p", [("producer-0", per_call)])
    limits, metrics = Limits(), Metrics(Path(tempfile.gettempdir()))
    response = pb.ProduceResponse()
    for call in range(calls):
        txn = validation.transaction(pb.ProduceRequest.FromString(raw), limits)
        first = 100_000 + call * per_call  # sequences and positions past 2**14
        for append in txn.appends:
            header = codec.record_header(txn.space, append.segment, 1_700_000_000 * codec.NANOS, "")
            for i, body in enumerate(append.bodies):
                codec.record(header, first + i, first + i, body)
        metrics.produce_latency.observe(0.001)
        metrics.produced(txn.record_count, per_call * 100)
        metrics.finished("Produce", "OK", 0.001)
        response = codec.produce_response(ProduceResult((), first, first + per_call - 1, 0))
    print(f"{calls} calls of {per_call} records; last response {response.ByteSize()} bytes")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="load", required=True)
    for name in ("produce", "follow", "client"):
        p = sub.add_parser(name)
        p.add_argument("--seconds", type=float, default=10.0)
        p.add_argument("--out", type=Path, default=Path("/tmp/streams-profile"))
        p.add_argument("--rate", type=float, default=1000, help="py-spy samples/s (follow: tx/s)")
        p.add_argument(
            "--native", action="store_true", help="C frames too (stops the process per sample)"
        )
        p.add_argument("--per-call", type=int, default=100)
        p.add_argument("--producers", type=int, default=4)
        p.add_argument("--no-sync", action="store_true")
        p.add_argument("--bare", action="store_true", help="produce: the bare gRPC server")
        p.add_argument("--followers", type=int, default=100)
        p.add_argument("--rate-hz", type=int, default=500, help="follow: py-spy samples/s")
    c = sub.add_parser("classify")
    c.add_argument("path", type=Path)
    c.add_argument("--calls", type=int, required=True)
    c.add_argument("--records", type=int, default=0)
    c.add_argument("--cpu", type=float, required=True)
    cpu = sub.add_parser("in-process", help="the Streams side of Produce, no gRPC (callgrind)")
    cpu.add_argument("--per-call", type=int, default=100)
    cpu.add_argument("--calls", type=int, default=200)
    loop = sub.add_parser("client-loop")
    loop.add_argument("address")
    loop.add_argument("per_call", type=int)
    loop.add_argument("seconds", type=float)
    args = parser.parse_args(argv)
    if args.load == "client-loop":
        client_loop(args.address, args.per_call, args.seconds)
        return
    if args.load == "in-process":
        in_process(args.per_call, args.calls)
        return
    if args.load == "classify":
        stacks = read_raw(args.path)
        print(breakdown(stacks, args.calls, args.records or args.calls, args.cpu)[0])
        print()
        print(functions(stacks))
        return
    args.rate = int(args.rate) if args.load != "follow" else args.rate
    args.out.mkdir(parents=True, exist_ok=True)
    {"produce": run_produce, "follow": run_follow, "client": run_client}[args.load](args)


if __name__ == "__main__":
    main()
