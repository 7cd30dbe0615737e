"""Client processes that drive a server: a pool spawned once, jobs sent to it.

Each worker is a ``spawn``-ed process (grpc and fork do not mix) with a sync
gRPC client. A job names an address and a method and carries request bytes
already serialized, so the Streams server and the bare gRPC limit are driven
by the very same client code, byte for byte. Every worker of a run gets its
job, connects and warms up, then all start together; every loop is bounded in
calls and in seconds.

Example::

    with ClientPool(4) as pool:
        rate = pool.unary([UnaryJob(address, PRODUCE, (request,), 10_000, 2.0)] * 4)
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as EventType
from types import TracebackType
from typing import Protocol

import grpc
from core import Rate

from streams.v1 import streams_pb2 as pb

PRODUCE = "/streams.v1.StreamsService/Produce"
PEEK = "/streams.v1.StreamsService/Peek"
CONSUME = "/streams.v1.StreamsService/Consume"
SETUP_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 60.0
_CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),  # a TCP connection per worker
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]


@dataclass(frozen=True)
class UnaryJob:
    """``calls`` unary calls one at a time, cycling through ``requests``, for at
    most ``max_seconds`` after ``warmup`` uncounted calls."""

    address: str
    method: str
    requests: tuple[bytes, ...]
    calls: int
    max_seconds: float
    warmup: int = 3


@dataclass(frozen=True)
class StreamJob:
    """One server-streaming call read to its end; responses are parsed as
    ``ConsumeResponse`` (as a user's stub would)."""

    address: str
    method: str
    request: bytes
    max_seconds: float = 300.0


class CustomJob(Protocol):
    """A job that runs its own client (e.g. nats-py, bench/scaleout.py): it
    calls ``ready()`` once set up, waits for ``go``, and bounds itself in
    ``max_seconds``. It must be picklable and importable by a spawned worker."""

    max_seconds: float

    def run(self, ready: Callable[[], None], go: EventType) -> JobResult: ...


Job = UnaryJob | StreamJob | CustomJob


@dataclass
class JobResult:
    start: float = 0.0  # time.monotonic() of the first counted call
    end: float = 0.0
    calls: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, per call
    errors: list[str] = field(default_factory=list)
    records: int = 0  # streams: records received
    messages: int = 0
    last_sequence: int = 0  # of the last record received
    last_position: int = 0
    sample: bytes = b""  # streams: the first record, serialized
    first_batch: int = 0  # records in the first response


def timed_calls(
    send: Callable[[int], object],
    failed: Callable[[Exception], str | None],
    ready: Callable[[], None],
    go: EventType,
    *,
    warmup: int,
    calls: int,
    max_seconds: float,
) -> JobResult:
    """``warmup`` uncounted ``send(i)``, then, once ``go`` is set, up to
    ``calls`` timed ones for at most ``max_seconds``: a job's call loop. A
    send that raises is timed and counted with ``failed(exc)``'s text (None:
    not a failure of the call, raised on)."""
    result = JobResult()
    for i in range(warmup):
        send(i)
    ready()
    go.wait(SETUP_TIMEOUT_S)
    result.start = time.monotonic()
    deadline = result.start + max_seconds
    for i in range(calls):
        before = time.perf_counter()
        try:
            send(i)
        except Exception as exc:
            text = failed(exc)
            if text is None:
                raise
            result.errors.append(text)
        result.latencies.append(time.perf_counter() - before)
        if time.monotonic() > deadline:
            break
    result.end = time.monotonic()
    result.calls = len(result.latencies)
    return result


def _rpc_failed(exc: Exception) -> str | None:
    return f"{exc.code()}: {exc.details()}" if isinstance(exc, grpc.RpcError) else None


def _run_unary(job: UnaryJob, ready: Callable[[], None], go: EventType) -> JobResult:
    with grpc.insecure_channel(job.address, options=_CHANNEL_OPTIONS) as channel:
        call: grpc.UnaryUnaryMultiCallable = channel.unary_unary(job.method)
        requests = job.requests
        return timed_calls(
            lambda i: call(requests[i % len(requests)], timeout=CALL_TIMEOUT_S),
            _rpc_failed, ready, go,
            warmup=job.warmup, calls=job.calls, max_seconds=job.max_seconds,
        )  # fmt: skip


def _run_stream(job: StreamJob, ready: Callable[[], None], go: EventType) -> JobResult:
    result = JobResult()
    with grpc.insecure_channel(job.address, options=_CHANNEL_OPTIONS) as channel:
        grpc.channel_ready_future(channel).result(timeout=SETUP_TIMEOUT_S)
        call: grpc.UnaryStreamMultiCallable = channel.unary_stream(
            job.method, response_deserializer=pb.ConsumeResponse.FromString
        )
        ready()
        go.wait(SETUP_TIMEOUT_S)
        result.start = time.monotonic()
        try:
            for response in call(job.request, timeout=job.max_seconds):
                if not result.messages:
                    result.first_batch = len(response.records)
                    result.sample = response.records[0].SerializeToString()
                result.messages += 1
                result.records += len(response.records)
                last = response.records[-1]
                result.last_sequence, result.last_position = last.sequence, last.position
        except grpc.RpcError as exc:
            result.errors.append(f"{exc.code()}: {exc.details()}")
        result.end = time.monotonic()
        result.calls = 1
        result.latencies.append(result.end - result.start)
    return result


def _worker(
    index: int,
    commands: mp.Queue,  # type: ignore[type-arg]
    results: mp.Queue,  # type: ignore[type-arg]
    go: EventType,
) -> None:
    while (job := commands.get()) is not None:
        said_ready = False

        def ready() -> None:
            nonlocal said_ready
            said_ready = True
            results.put(("ready", index, None))

        try:
            if isinstance(job, UnaryJob):
                result = _run_unary(job, ready, go)
            elif isinstance(job, StreamJob):
                result = _run_stream(job, ready, go)
            else:
                result = job.run(ready, go)
        except Exception as exc:  # reported to the coordinator, which prints it
            result = JobResult(errors=[f"{type(exc).__name__}: {exc}"])
        if not said_ready:
            ready()
        results.put(("done", index, result))


class ClientPool:
    """``size`` client processes, reused by every run of a benchmark."""

    def __init__(self, size: int) -> None:
        ctx = mp.get_context("spawn")
        self._go = ctx.Event()
        self._results: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
        self._commands: list[mp.Queue] = [ctx.Queue() for _ in range(size)]  # type: ignore[type-arg]
        self._processes = [
            ctx.Process(target=_worker, args=(i, q, self._results, self._go), daemon=True)
            for i, q in enumerate(self._commands)
        ]
        for process in self._processes:
            process.start()

    @property
    def size(self) -> int:
        return len(self._processes)

    def run(self, jobs: Sequence[Job]) -> list[JobResult]:
        """Runs ``jobs`` at once, one per worker; returns their results in order."""
        assert 0 < len(jobs) <= self.size, (len(jobs), self.size)
        self._go.clear()
        for command, job in zip(self._commands, jobs, strict=False):
            command.put(job)
        longest = max(j.max_seconds for j in jobs)
        done: dict[int, JobResult] = {}
        readies = 0
        deadline = time.monotonic() + SETUP_TIMEOUT_S
        while len(done) < len(jobs):
            try:
                kind, index, result = self._results.get(
                    timeout=max(deadline - time.monotonic(), 0.001)
                )
            except queue.Empty:
                raise RuntimeError(
                    f"client workers stalled: {readies} ready, {len(done)} of {len(jobs)} done"
                ) from None
            if kind == "ready":
                readies += 1
                if readies == len(jobs):
                    self._go.set()
                    deadline = time.monotonic() + longest + SETUP_TIMEOUT_S
            else:
                done[index] = result
        for result in done.values():
            for error in result.errors[:3]:
                print(f"client error: {error}", flush=True)
        return [done[i] for i in range(len(jobs))]

    def unary(self, jobs: Sequence[UnaryJob], records_per_call: int) -> Rate:
        """Runs ``jobs`` at once; the merged rate counts ``records_per_call``
        records per successful call, latencies of every call."""
        results = self.run(jobs)
        return merge(results, records_per_call)

    def close(self) -> None:
        for command in self._commands:
            command.put(None)
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def merge(results: Sequence[JobResult], records_per_call: int, sequential: bool = False) -> Rate:
    """One rate over the results of workers that ran at once (or, when
    ``sequential``, one after the other: their durations add up)."""
    started = [r for r in results if r.start] or list(results)
    if sequential:
        seconds = sum(r.end - r.start for r in started)
    else:
        seconds = max(r.end for r in started) - min(r.start for r in started)
    latencies = [latency for r in results for latency in r.latencies]
    errors = sum(len(r.errors) for r in results)
    calls = sum(r.calls for r in results)
    return Rate((calls - errors) * records_per_call, seconds, latencies, errors)
