"""One producer process: sequential ``produce`` calls against the pipeline
(``Client.pipeline`` / ``AsyncClient.pipeline``), same server, same run.

Each figure is records/s from this one process, and the client's own CPU per
transaction (user + system of this process, over the transactions sent), for
transactions of 100 records x 100 B and of 1 record. The server is
``server.py`` with its defaults (durable), started here.

``--transport`` also measures what the transport allows without Streams: a bare
gRPC server (in its own process, answering a pre-built ProduceResponse) called
with concurrent unary calls (what the pipeline does) and with one bidirectional
stream carrying the same requests (what a streaming Produce RPC would be).

    python bench/pipeline.py                 # about a minute
    python bench/pipeline.py --transport     # + the bare unary/bidi comparison
    python bench/pipeline.py --interleaved 5 --txns 500   # the ratio alone, turns taken
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from common import fmt, load_note, markdown_table, run_listening, run_server, sample_process

from streams import AsyncClient, Client
from streams.v1 import streams_pb2 as pb

BARE_UNARY = "/barepipe.Bare/Unary"
BARE_BIDI = "/barepipe.Bare/Bidi"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Figure:
    def __init__(
        self, name: str, txns: int, records: int, wall: float, cpu: float, server_cpu: float
    ) -> None:
        self.name = name
        self.rate = txns * records / wall
        self.txn_rate = txns / wall
        self.cpu_us = cpu / txns * 1e6
        self.server_cpu_us = server_cpu / txns * 1e6


@contextmanager
def measured(
    name: str, txns: int, records: int, out: list[Figure], server_pid: int
) -> Iterator[None]:
    server_cpu = sample_process(server_pid).cpu_s
    cpu, wall = cpu_seconds(), time.perf_counter()
    yield
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    server_cpu = sample_process(server_pid).cpu_s - server_cpu
    out.append(Figure(name, txns, records, wall, cpu, server_cpu))


def batch(records: int, size: int) -> list[bytes]:
    return [b"x" * size] * records


def sync_figures(
    address: str, pid: int, txns: int, records: int, windows: list[int]
) -> list[Figure]:
    out: list[Figure] = []
    payloads = batch(records, 100)
    with Client(address) as client:
        for _ in range(20):  # warm the channel and the server's space
            client.produce("bench", "seg", payloads)
        with measured("sync, sequential produce", txns, records, out, pid):
            for _ in range(txns):
                client.produce("bench", "seg", payloads)
        for window in windows:
            with (
                measured(f"sync pipeline, {window} in flight", txns, records, out, pid),
                client.pipeline(max_in_flight=window) as pipeline,
            ):
                for _ in range(txns):
                    pipeline.produce("bench", "seg", payloads)
    return out


async def async_figures(
    address: str, pid: int, txns: int, records: int, windows: list[int]
) -> list[Figure]:
    out: list[Figure] = []
    payloads = batch(records, 100)
    async with AsyncClient(address) as client:
        for _ in range(20):
            await client.produce("bench", "seg", payloads)
        with measured("async, sequential produce", txns, records, out, pid):
            for _ in range(txns):
                await client.produce("bench", "seg", payloads)
        for window in windows:
            with measured(f"async pipeline, {window} in flight", txns, records, out, pid):
                async with client.pipeline(max_in_flight=window) as pipeline:
                    for _ in range(txns):
                        await pipeline.produce("bench", "seg", payloads)
    return out


def interleaved(address: str, pid: int, txns: int, rounds: int, window: int) -> str:
    """Sequential and pipelined runs taking turns, ``rounds`` times each: the
    median records/s of each, so that a load that drifts meanwhile hits both."""
    payloads = batch(100, 100)
    seq: list[Figure] = []
    piped: list[Figure] = []
    with Client(address) as client:
        for _ in range(20):
            client.produce("bench", "seg", payloads)
        for _ in range(rounds):
            with measured("sequential", txns, 100, seq, pid):
                for _ in range(txns):
                    client.produce("bench", "seg", payloads)
            with (
                measured("pipeline", txns, 100, piped, pid),
                client.pipeline(max_in_flight=window) as pipeline,
            ):
                for _ in range(txns):
                    pipeline.produce("bench", "seg", payloads)
    a = statistics.median(f.rate for f in seq)
    b = statistics.median(f.rate for f in piped)
    return (
        f"interleaved x{rounds}, 100 x 100 B, sync client: sequential {fmt(a)} records/s, "
        f"pipeline ({window} in flight) {fmt(b)} records/s: {b / a:.2f}x"
    )


# -- the bare transport ----------------------------------------------------------------------


def _answer() -> bytes:
    ack = pb.SegmentAck(segment="seg", first_sequence=1_000_001, last_sequence=1_000_100)
    return pb.ProduceResponse(acks=[ack], first_position=1, last_position=100).SerializeToString()


async def serve_bare() -> None:
    answer = _answer()

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    async def bidi(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield answer

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("barepipe.Bare", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


async def bare_unary(address: str, request: bytes, txns: int, window: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(BARE_UNARY)
        room = asyncio.Semaphore(window)

        async def one() -> None:
            try:
                await call(request)
            finally:
                room.release()

        tasks = set()
        for _ in range(txns):
            await room.acquire()
            task = asyncio.ensure_future(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)


async def bare_bidi(address: str, request: bytes, txns: int, window: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(BARE_BIDI)()
        room = asyncio.Semaphore(window)

        async def read() -> None:
            for _ in range(txns):
                await call.read()
                room.release()

        reader = asyncio.ensure_future(read())
        for _ in range(txns):
            await room.acquire()
            await call.write(request)
        await call.done_writing()
        await reader


def transport_figures(txns: int, records: int, window: int) -> list[Figure]:
    request = pb.ProduceRequest(
        space="bench",
        transaction_id="f" * 32,
        writes=[
            pb.SegmentWrite(segment="seg", records=[pb.RecordInput(payload=b"x" * 100)] * records)
        ],
    ).SerializeToString()
    out: list[Figure] = []
    command = [sys.executable, str(Path(__file__)), "--bare-server"]
    with run_listening(command, Path("/tmp/bench-pipeline-bare.log")) as (process, address):
        runs: list[tuple[str, Callable[..., object]]] = [
            (f"bare unary, {window} in flight", bare_unary),
            (f"bare bidi stream, {window} in flight", bare_bidi),
        ]
        for name, run in runs:
            asyncio.run(run(address, request, 200, window))  # warm up
            with measured(name, txns, records, out, process.pid):
                asyncio.run(run(address, request, txns, window))  # type: ignore[arg-type]
    return out


def table(figures: list[Figure]) -> str:
    rows = [
        (f.name, fmt(f.rate), fmt(f.txn_rate), fmt(f.cpu_us), fmt(f.server_cpu_us)) for f in figures
    ]
    headers = ("client", "records/s", "transactions/s", "client CPU µs/txn", "server CPU µs/txn")
    return markdown_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--txns", type=int, default=3000, help="transactions per figure")
    parser.add_argument("--windows", default="8,32,128", help="max_in_flight values")
    parser.add_argument("--transport", action="store_true", help="bare unary vs bidi too")
    parser.add_argument(
        "--interleaved",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="only sequential vs pipelined (32 in flight) taking turns, ROUNDS times",
    )
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        asyncio.run(serve_bare())
        return
    windows = [int(w) for w in args.windows.split(",")]
    print(load_note())
    if args.interleaved:
        with run_server() as server:
            print(interleaved(server.address, server.process.pid, args.txns, args.interleaved, 32))
        return
    for records in (100, 1):
        with run_server() as server:
            pid = server.process.pid
            figures = sync_figures(server.address, pid, args.txns, records, windows)
            figures += asyncio.run(async_figures(server.address, pid, args.txns, records, windows))
        print(f"\n## {records} record(s) x 100 B per transaction, durable server, one process\n")
        print(table(figures))
    if args.transport:
        print("\n## the transport alone: bare gRPC server, 100 records x 100 B per request\n")
        print(table(transport_figures(args.txns * 3, 100, 32)))


if __name__ == "__main__":
    main()
