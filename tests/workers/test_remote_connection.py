"""RemoteStore and StoreHost: what the port conformance suite (its ``remote``
harness) does not cover about the connection: its loss (the host closed, the
writer process killed), which sets ``lost`` and fails every call, wait and
watch with Unavailable; a host that closes leaves the store to its owner."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from streams import codec
from streams.errors import Unavailable
from streams.model import Cut, SegmentAppend, Target, Transaction
from streams.storage.backend import Setup
from streams.storage.port import Store
from streams.storage.rocksdb.store import RocksStore
from streams.workers.host import StoreHost
from streams.workers.remote import RemoteStore, connect
from tests.storage.conftest import _hold_rocksdb

ROOT = Path(__file__).resolve().parents[2]
ALL = Cut(10_000, 1 << 20)


def txn(space: str, segment: str, count: int = 1, size: int = 10) -> Transaction:
    """``count`` records whose payloads are ``size`` bytes."""
    head = b"\x0a" + codec.varint(size)
    bodies = tuple(head + bytes([n % 256]) * size for n in range(count))
    return Transaction(space, (SegmentAppend(segment, bodies, None),), "", b"")


@contextlib.asynccontextmanager
async def served(
    tmp: Path, fronts: int = 1, engine: Store | None = None, **host_args: Any
) -> AsyncIterator[tuple[Store, StoreHost, list[RemoteStore]]]:
    """``engine`` (default: a RocksDB store under ``tmp``), a StoreHost over it,
    ``fronts`` RemoteStores."""
    engine = engine or RocksStore.open(tmp / "data")
    folder = Path(tempfile.mkdtemp(prefix="remote-"))  # a socket path is short
    host = StoreHost(engine, folder / "store.sock", **host_args)
    await host.start()
    stores: list[RemoteStore] = []
    try:
        for _ in range(fronts):
            stores.append(await connect(host.path, Setup(data=tmp), limits=host_args.get("limits")))
        yield engine, host, stores
    finally:
        for store in stores:
            await store.close()
        await host.close()
        await engine.close()
        shutil.rmtree(folder, ignore_errors=True)


async def expect_unavailable(store: RemoteStore) -> None:
    target = Target("s", "a")
    for call in (
        store.produce(txn("s", "a")),
        store.read(target, 1, 10, ALL),
        store.last_offset(target),
        store.get_space("s"),
    ):
        with pytest.raises(Unavailable):
            await call
    with pytest.raises(Unavailable):
        async with store.follow(target):
            pass
    assert store.write_error is not None


def test_host_close_fails_calls_in_flight_waits_and_watches(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as (engine, host, (store,)):
            await store.produce(txn("s", "a"))
            async with store.follow(Target("s", "a")) as sub, store.watch("s") as watch:
                waiting = asyncio.ensure_future(sub.wait(2))
                watching = asyncio.ensure_future(watch.changes())
                gate = _hold_rocksdb(engine)
                produce = asyncio.ensure_future(store.produce(txn("s", "a")))
                await gate.wait_reached()
                assert not store.lost.is_set()
                await host.close()
                await asyncio.wait_for(store.lost.wait(), 10)
                for pending in (produce, waiting, watching):
                    with pytest.raises(Unavailable):
                        await asyncio.wait_for(pending, 10)
                gate.open()
            await expect_unavailable(store)
            assert not host.path.exists()
            # The host leaves the store to its owner: the writer goes on with it
            # (the write in flight was made: its caller's outcome is unknown).
            assert (await engine.produce(txn("s", "a"))).last_position == 3

    asyncio.run(main())


def test_connect_to_no_host_is_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(Unavailable, match="store host"):
            await connect(tmp_path / "none.sock", Setup(data=tmp_path))

    asyncio.run(main())


def test_a_closed_remote_store_refuses_calls_and_leaves_the_host_serving(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path, fronts=2) as (_, host, (closing, other)):
            await closing.produce(txn("s", "a"))
            await closing.close()
            await expect_unavailable(closing)
            assert await other.last_offset(Target("s")) == 1
            assert len(host.fronts) == 1

    asyncio.run(main())


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from streams.storage.rocksdb.store import RocksStore
    from streams.workers.host import StoreHost

    async def main():
        store = RocksStore.open(Path(sys.argv[1]))
        host = StoreHost(store, Path(sys.argv[2]))
        await host.start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


def test_a_writer_killed_sets_lost_and_fails_everything(tmp_path: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="remote-"))
    socket_path = folder / "store.sock"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path / "data"), str(socket_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"

        async def main() -> None:
            store = await connect(socket_path, Setup(data=tmp_path))
            try:
                result = await store.produce(txn("s", "a", 3))
                assert result.last_position == 3
                async with store.follow(Target("s")) as sub:
                    waiting = asyncio.ensure_future(sub.wait(4))
                    await store.barrier()
                    assert not waiting.done()
                    writer.send_signal(signal.SIGKILL)
                    await asyncio.wait_for(store.lost.wait(), 10)
                    with pytest.raises(Unavailable):
                        await asyncio.wait_for(waiting, 10)
                await expect_unavailable(store)
            finally:
                await store.close()

        asyncio.run(main())
    finally:
        writer.kill()
        writer.wait()
        shutil.rmtree(folder, ignore_errors=True)


def test_the_stores_write_error_reaches_the_front(tmp_path: Path) -> None:
    """What the health check reads: the writer's store refusing writes shows in
    every front, at the next call or within a second without one."""

    async def main() -> None:
        async with served(tmp_path, fronts=2) as (engine, _, (caller, idle)):
            assert caller.write_error is None and idle.write_error is None
            await engine.close()  # refuses every write from now on, as a full disk does
            with pytest.raises(Unavailable, match="closed"):
                await caller.produce(txn("s", "a"))
            assert caller.write_error == engine.write_error is not None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while idle.write_error is None:
                assert loop.time() < deadline, "the idle front never heard of it"
                await asyncio.sleep(0.05)
            assert idle.write_error == engine.write_error

    asyncio.run(main())
