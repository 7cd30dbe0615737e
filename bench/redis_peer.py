"""Redis Streams as a peer: pipelined XADD from the bench's client processes.

``run_redis()`` starts ``redis-server`` (when it is on PATH) bound to
127.0.0.1 on a free port, with its default durability for an append-only
log: AOF with ``appendfsync everysec`` (an acknowledged entry can be lost in
the last second before a power cut, where a durable Produce is fsynced before
its ack), in a temp dir, RDB snapshots off. ``XaddJob`` is a ``ClientPool``
job: one client (redis-py) sends ``per_call`` XADDs of the same 100-byte
payload to its own stream in one pipeline (no MULTI), one pipeline at a time,
the way a producer sends one Produce of ``per_call`` records at a time.

    with run_redis(tmp) as redis_address:   # None: redis-server is not installed
        rate = pool.unary([XaddJob(redis_address, "producer-0", 100, 100_000, 2.0)], 100)
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

from workers import JobResult, timed_calls

START_TIMEOUT_S = 30.0
FIELD = b"p"  # each entry: one field holding the payload


def missing() -> str:
    """Why Redis cannot run here ("" when it can): no server binary or no client."""
    if shutil.which("redis-server") is None:
        return "redis-server is not on PATH (Debian: apt-get install redis-server)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis client is not installed (pip install -e '.[bench]')"
    return ""


def _free_port() -> int:
    # redis-server has no "port 0": take one the kernel hands out, then free it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def run_redis(tmp: Path) -> Iterator[str | None]:
    """A redis-server on 127.0.0.1 (AOF everysec, data in a dir under ``tmp``)
    until the block ends; yields ``HOST:PORT``, or None when ``missing()``."""
    if missing():
        yield None
        return
    import redis

    folder = tmp / f"redis-{time.monotonic_ns()}"
    folder.mkdir()
    port = _free_port()
    command = [
        "redis-server",
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(folder),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "no",
        "--logfile", str(folder / "redis.log"),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not start (see {folder / 'redis.log'})"
                    ) from None
                time.sleep(0.05)
        client.close()
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def version() -> str:
    """``redis-server --version``'s version, for the report."""
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return "?"


@dataclass(frozen=True)
class XaddJob:
    """``calls`` pipelines of ``per_call`` XADDs to ``stream``, one at a time,
    for at most ``max_seconds`` after ``warmup`` uncounted pipelines."""

    address: str
    stream: str
    per_call: int
    calls: int
    max_seconds: float
    payload: bytes = bytes(range(100))
    warmup: int = 3

    def run(self, ready: Callable[[], None], go: EventType) -> JobResult:
        import redis

        def failed(exc: Exception) -> str | None:
            return f"{type(exc).__name__}: {exc}" if isinstance(exc, redis.RedisError) else None

        host, port = self.address.rsplit(":", 1)
        client = redis.Redis(host=host, port=int(port))
        try:
            return timed_calls(
                lambda _: self._send(client), failed, ready, go,
                warmup=self.warmup, calls=self.calls, max_seconds=self.max_seconds,
            )  # fmt: skip
        finally:
            client.close()

    def _send(self, client: object) -> None:
        pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
        for _ in range(self.per_call):
            pipe.xadd(self.stream, {FIELD: self.payload})
        pipe.execute()
