"""What a front process's store calls cost over the store host's socket
(``--workers N``), against the same calls on the store in-process.

The host (a StoreHost over the engine) runs in a child process, as the writer
does; this process is the front (a RemoteStore). For each workload it reports
the wall time per call (one call at a time, and ``--in-flight`` at once) and
the CPU time per call of each process: the IPC cost is what the front and the
host spend beyond what the in-process call spends::

    python bench/ipc.py                   # a store that does nothing: the IPC alone
    python bench/ipc.py --engine rocksdb  # RocksDB, sync off (--sync: fsync each write)

Workloads: Produce of 100 records x 100 B; a read of 100 records that no
window holds (a round trip); followers of one space woken per transaction
and reading from the front's window (per follower read).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from common import ROOT, markdown_table, sample_process

from streams import codec
from streams.model import (
    MAX_OFFSET,
    Cut,
    ProduceResult,
    SegmentAck,
    SegmentAppend,
    Target,
    Transaction,
)
from streams.storage import registry
from streams.storage.backend import Setup
from streams.storage.batches import FramedBatch
from streams.storage.port import Store
from streams.workers.host import StoreHost
from streams.workers.remote import connect

RECORDS, PAYLOAD = 100, 100
SYNC = False  # --sync
CUT = Cut(1000, 1 << 20)


def _transaction(n: int) -> Transaction:
    """100 distinct bodies (pickle would send a repeated one once)."""
    bodies = tuple(b"\x0a" + bytes([PAYLOAD]) + os.urandom(PAYLOAD) for _ in range(RECORDS))
    return Transaction("bench", (SegmentAppend(f"s{n % 8}", bodies, None),), "", b"")


TRANSACTIONS = [_transaction(n) for n in range(64)]


class NullStore:
    """Answers at once, doing nothing: what is left of a call is its IPC."""

    write_error = None
    result = ProduceResult((SegmentAck("s0", 1, RECORDS),), 1, RECORDS, 1, False)
    framed = codec.consume_response([bytes(PAYLOAD + 40)] * RECORDS)

    async def produce(self, txn: Transaction) -> ProduceResult:
        return self.result

    async def read(
        self, target: Target, first: int, last: int, cut: Cut, segment_prefix: bytes = b""
    ) -> tuple[FramedBatch, int]:
        return FramedBatch(self.framed, RECORDS), first + RECORDS

    async def close(self) -> None:
        pass


async def open_store(engine: str, data: Path) -> Store:
    if engine == "null":
        return NullStore()  # type: ignore[return-value]
    return await registry.get(engine).open(Setup(data=data, sync=SYNC))


@dataclass
class Figures:
    wall_us: float  # per call, one at a time
    rate: float  # calls/s with --in-flight at once
    front_cpu_us: float  # per call, this process (one at a time)
    host_cpu_us: float  # per call, the host process (0 in-process)
    front_many_us: float = 0.0  # the same with --in-flight at once
    host_many_us: float = 0.0


class Side:
    """Where the calls go: the store in this process, or over a host."""

    def __init__(self, store: Store, host_pid: int | None) -> None:
        self.store = store
        self.host_pid = host_pid

    def cpu(self) -> tuple[float, float]:
        front = time.process_time()
        host = 0.0 if self.host_pid is None else sample_process(self.host_pid).cpu_s
        return front, host


async def measure(
    side: Side, call: Callable[[int], Awaitable[object]], calls: int, in_flight: int
) -> Figures:
    for n in range(min(200, calls)):
        await call(n)  # warm up
    front0, host0 = side.cpu()
    started = time.perf_counter()
    for n in range(calls):
        await call(n)
    wall = (time.perf_counter() - started) / calls
    front1, host1 = side.cpu()

    async def worker(k: int) -> None:
        for n in range(k, calls, in_flight):
            await call(n)

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(in_flight)))
    rate = calls / (time.perf_counter() - started)
    front2, host2 = side.cpu()
    return Figures(
        wall * 1e6,
        rate,
        (front1 - front0) / calls * 1e6,
        (host1 - host0) / calls * 1e6,
        (front2 - front1) / calls * 1e6,
        (host2 - host1) / calls * 1e6,
    )


async def follow(side: Side, followers: int, transactions: int) -> Figures:
    """``followers`` of one space read each transaction as it comes (from the
    window), the producer writing one transaction at a time."""
    store = side.store
    target = Target("follow")
    reads = 0
    done = asyncio.Event()
    last = (await store.last_offset(target)) + transactions * RECORDS

    async def follower(ready: asyncio.Event) -> None:
        nonlocal reads
        async with store.follow(target) as sub:
            first = await store.last_offset(target) + 1
            ready.set()
            while first <= last:
                await sub.wait(first)
                _, first = await store.read(target, first, MAX_OFFSET, CUT)
                reads += 1
        done.set()

    readies = [asyncio.Event() for _ in range(followers)]
    tasks = [asyncio.ensure_future(follower(ready)) for ready in readies]
    for ready in readies:
        await ready.wait()
    front0, host0 = side.cpu()
    started = time.perf_counter()
    body = b"\x0a" + bytes([PAYLOAD]) + bytes(PAYLOAD)
    for _ in range(transactions):
        await store.produce(
            Transaction("follow", (SegmentAppend("a", (body,) * RECORDS, None),), "", b"")
        )
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - started
    front1, host1 = side.cpu()
    return Figures(
        wall / reads * 1e6,
        reads / wall,
        (front1 - front0) / reads * 1e6,
        (host1 - host0) / reads * 1e6,
    )


@contextlib.asynccontextmanager
async def in_process(engine: str, folder: Path) -> AsyncIterator[Side]:
    store = await open_store(engine, folder / "direct")
    try:
        yield Side(store, None)
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def over_host(engine: str, folder: Path) -> AsyncIterator[Side]:
    path = folder / "host.sock"
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            str(path),
            "--engine",
            engine,
            "--data",
            str(folder / "host"),
            *(["--sync"] if SYNC else []),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        if child.stdout is None or child.stdout.readline().strip() != "ready":
            raise RuntimeError("the host process did not start")
        store = await connect(path, Setup(data=folder / "front"))
        try:
            yield Side(store, child.pid)
        finally:
            await store.close()
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(30)


async def serve(path: Path, engine: str, data: Path) -> None:
    store = await open_store(engine, data)
    host = StoreHost(store, path)
    await host.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await host.close()
    await store.close()


async def workloads(side: Side, args: argparse.Namespace) -> list[tuple[str, Figures]]:
    store = side.store
    target = Target("bench", "s0")

    async def produce(n: int) -> object:
        return await store.produce(TRANSACTIONS[n % len(TRANSACTIONS)])

    async def read(n: int) -> object:
        return await store.read(target, 1 + (n * 7) % 1000, MAX_OFFSET, Cut(RECORDS, 1 << 20))

    found = [
        ("Produce 100 x 100 B", await measure(side, produce, args.calls, args.in_flight)),
        ("read 100 records", await measure(side, read, args.calls, args.in_flight)),
    ]
    if args.engine != "null":
        followed = await follow(side, args.followers, args.transactions)
        found.append((f"follower read ({args.followers} followers)", followed))
    return found


async def run(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="ipc-bench-"))
    rows = []
    try:
        for name, opened in (("in-process", in_process), ("over the host", over_host)):
            async with opened(args.engine, folder) as side:
                for workload, figures in await workloads(side, args):
                    rows.append(
                        [
                            workload,
                            name,
                            f"{figures.wall_us:.1f}",
                            f"{figures.rate:,.0f}",
                            f"{figures.front_cpu_us:.1f} / {figures.front_many_us:.1f}",
                            f"{figures.host_cpu_us:.1f} / {figures.host_many_us:.1f}",
                        ]
                    )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows.sort(key=lambda row: row[0])
    sync = "on" if SYNC else "off"
    print(f"engine {args.engine} (sync {sync}), {args.calls} calls, {args.in_flight} in flight")
    print(f"cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    many = args.in_flight
    headers = ["workload", "store", "wall us/call", f"calls/s ({many} at once)"]
    headers += [f"front CPU us/call (1 / {many})", f"host CPU us/call (1 / {many})"]
    print(markdown_table(headers, rows))
    print("follower rows: per follower read, wall and CPU over the whole run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="null", choices=["null", "memory", "rocksdb"])
    parser.add_argument("--sync", action="store_true", help="fsync each write (durable acks)")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--followers", type=int, default=100)
    parser.add_argument("--transactions", type=int, default=500)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global SYNC
    SYNC = args.sync
    if args.serve is not None:
        asyncio.run(serve(args.serve, args.engine, args.data))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
