"""The client's public API is typed: mypy passes on the client and the CLI, and
code that uses the installed package gets its types (py.typed, an editable
install that type checkers can follow)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.process import REPO_ROOT

CACHE = REPO_ROOT / ".pytest_cache" / "mypy"  # ignored by git, kept between runs


def test_mypy_passes_on_the_client_and_cli() -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (it comes with the dev extra)")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(CACHE), "--disallow-untyped-defs",
         "--disallow-incomplete-defs", "--follow-imports=silent",
         "streams/client", "streams/cli.py", "streams/__init__.py"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


USES_THE_PUBLIC_API = """
from datetime import timedelta

from streams import (
    AsyncClient, AsyncProduceFuture, Client, Consumer, GroupInfo, GroupNotFound, Message,
    NewRecord, OnError, Ordering, PermissionDenied, ProduceFuture, ProduceResult, Record,
    RetryPolicy, StreamsError, Unauthenticated,
)

def bill(record: Record) -> None:
    print(record.position, record.text)

def park(record: Record, exc: Exception) -> None:
    print(record.segment, exc)

with Client("127.0.0.1:50051", retry=RetryPolicy(max_elapsed=10.0)) as client:
    ack = client.produce("orders", "eu", [b"x", NewRecord(b"y", {"k": "v"})])
    last: int = ack.last_position
    with client.pipeline(max_in_flight=8, max_bytes=2**20) as pipeline:
        handle: ProduceFuture = pipeline.produce("orders", "eu", [b"x"], expected_sequence=1)
        pipeline.transaction("orders").add("eu", b"y").add("us", b"z").commit()
    piped: ProduceResult = handle.result()
    with Consumer(client, "billing", "orders") as consumer:
        consumer.run(bill, on_error=OnError.SKIP)
        consumer.run(bill, on_error=park)
try:
    client.peek("orders")
except (Unauthenticated, PermissionDenied) as exc:
    error: StreamsError = exc

def work(message: Message) -> None:
    bill(message)  # a Message is a Record
    if message.attempt > 3:
        message.nack(park=True, reason="too many attempts")
    elif not message.ack():
        print("the stream it came on ended; it comes again")

client.create_group("orders", "billing", ordering=Ordering.NONE, ack_timeout=timedelta(seconds=5))
with client.subscribe("orders", "billing", max_in_flight=10) as subscription:
    for message in subscription:
        work(message)
try:
    info: GroupInfo = client.get_group("orders", "billing")
    lag: int = info.lag
except GroupNotFound as missing:
    print(missing.space, missing.group)

async def main() -> None:
    async with AsyncClient() as aclient:
        async for record in aclient.follow("orders", from_end=True):
            bill(record)
        async with aclient.subscribe("orders", "billing") as messages:
            async for message in messages:
                work(message)
        async with aclient.pipeline() as apipeline:
            ahandle: AsyncProduceFuture = await apipeline.produce("orders", "eu", b"x")
        aresult: ProduceResult = await ahandle
        print(aresult.transaction_id == ahandle.transaction_id)
"""

MISUSES_IT = """
from streams import Client, Unauthenticatd
text: str = Client().produce("orders", "eu", b"x").last_position
position: str = Client().pipeline().produce("orders", "eu", b"x").result().last_position
"""


def mypy_on(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """mypy on ``source`` from a folder outside the repo: it finds ``streams``
    only through the installed package (``pip install -e .``), as a user would."""
    (tmp_path / "app.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(CACHE), "--strict", "app.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def test_types_reach_mypy_from_the_installed_package(tmp_path: Path) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (it comes with the dev extra)")
    good = mypy_on(tmp_path, USES_THE_PUBLIC_API)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = mypy_on(tmp_path, MISUSES_IT)
    # Errors prove the types are real: an untyped or unfound package would be Any.
    assert 'Module "streams" has no attribute "Unauthenticatd"' in bad.stdout, bad.stdout
    assert 'expression has type "int", variable has type "str"' in bad.stdout, bad.stdout
    assert "app.py:4: error" in bad.stdout, "a pipeline handle's result must be typed"
