"""The port conformance suite's backends: every test of tests/storage/ that
takes ``backend`` runs against each one, opened through the registry as the
server opens it. A new backend (JetStream) joins by adding its :class:`Harness`
to :data:`HARNESSES`; it is accepted once it passes the suite.

One harness is not a backend: ``remote`` is the RocksDB engine as a front
process of ``--workers N`` sees it, a RemoteStore over a StoreHost (both in
the test's event loop), the writer running retention."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from streams import codec
from streams.limits import Limits
from streams.model import Removed, RetentionPolicy, SegmentAppend, Transaction
from streams.storage import registry
from streams.storage.backend import Setup
from streams.storage.port import Store
from streams.workers.host import StoreHost
from streams.workers.remote import RemoteStore, connect

T = TypeVar("T")
DAY_NS = 24 * 3600 * 1_000_000_000


class Clock:
    """A clock the test sets: the backends stamp transactions with it."""

    def __init__(self, now: int = 1_700_000_000_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class Gate:
    """Holds a backend's durability: writes are made but not yet durable until
    :meth:`open` (see :attr:`Harness.hold`)."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self._open = threading.Event()

    def pass_through(self) -> None:
        """Called where the backend makes writes durable: blocks until opened."""
        self.reached.set()
        if not self._open.wait(30):
            raise TimeoutError("the test never opened the gate")

    async def wait_reached(self) -> None:
        if not await asyncio.to_thread(self.reached.wait, 30):
            raise TimeoutError("no write reached the point where it becomes durable")

    def open(self) -> None:
        self._open.set()


def _hold_rocksdb(store: Any) -> Gate:
    """The RocksDB engine's writes become durable in its group commit's fsync."""
    gate = Gate()
    sync = store._group._sync
    assert sync is not None, "held durability needs sync on"

    def held() -> None:
        gate.pass_through()
        sync()

    store._group._sync = held
    return gate


@dataclass
class Harness:
    """One backend as the suite drives it."""

    name: str
    data: Path
    # Whatever it stores survives close() and a new open() on the same data.
    durable: bool
    # Makes the next writes wait before they become durable; None when a
    # backend's writes are durable as soon as they are made.
    hold: Callable[[Store], Gate] | None
    clock: Clock = field(default_factory=Clock)
    options: dict[str, Any] = field(default_factory=dict)
    gates: list[Gate] = field(default_factory=list)
    # The registry's backend it opens (its name when empty), and how the store
    # is then served to the test (the remote harness), with what closes after it.
    engine: str = ""
    serve: Callable[[Harness, Store], Awaitable[Store]] | None = None
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def max_records(self) -> int:
        """The most records one transaction may hold on this backend (what the
        server lets one Produce hold: JetStream's atomic batch is 1,000)."""
        return registry.get(self.engine or self.name).limits(Limits()).max_records_per_produce

    def held(self, store: Store) -> Gate:
        """Holds the durability of ``store``'s next writes (opened at the end of
        :meth:`run` at the latest, so that a failing test does not hang)."""
        if self.hold is None:
            pytest.skip(f"{self.name}: a write is durable as soon as it is made")
        gate = self.hold(store)
        self.gates.append(gate)
        return gate

    async def open(self, dedupe_window_ns: int = DAY_NS) -> Store:
        setup = Setup(
            data=self.data,
            clock=self.clock,
            dedupe_window_ns=dedupe_window_ns,
            options=self.options,
        )
        store = await registry.get(self.engine or self.name).open(setup)
        return store if self.serve is None else await self.serve(self, store)

    def run(self, scenario: Callable[[Store], Awaitable[T]], **open_args: Any) -> T:
        """Runs ``scenario`` on a freshly opened store, closing it after."""

        async def main() -> T:
            store = await self.open(**open_args)
            try:
                return await scenario(store)
            finally:
                for gate in self.gates:
                    gate.open()
                await store.close()
                while self.cleanups:
                    await self.cleanups.pop()()

        return asyncio.run(main())


def _hold_jetstream(store: Any) -> Gate:
    """A JetStream write becomes durable with its acknowledged publish (a
    batch's commit message, a KV put): held just before it."""
    gate = Gate()
    js = store._js
    acked = js._acked

    async def held(*args: Any) -> Any:
        await asyncio.to_thread(gate.pass_through)
        return await acked(*args)

    js._acked = held
    return gate


def _jetstream(tmp: Path, request: pytest.FixtureRequest) -> Harness:
    """R3 on the session's 3-node cluster (tests/support/nats.py), each test
    under its own --nats-prefix."""
    urls = tuple(request.getfixturevalue("nats_cluster").urls)
    options = {"nats_url": urls, "nats_prefix": f"t{uuid.uuid4().hex[:12]}", "nats_replicas": 3}
    return Harness("jetstream", tmp / "data", True, _hold_jetstream, options=options)


# The store under each RemoteStore the remote harness opened.
_UNDERNEATH: weakref.WeakKeyDictionary[Store, Store] = weakref.WeakKeyDictionary()


async def _serve_remote(harness: Harness, engine: Store) -> Store:
    """``engine`` served by a StoreHost to a RemoteStore, which the test gets;
    its retention pass is the writer's (on ``engine``), after which the
    RemoteStore has heard of what it removed, as a front does."""
    # A short path: a Unix socket's is at most 107 bytes.
    folder = Path(tempfile.mkdtemp(prefix="streams-host-"))
    host = StoreHost(engine, folder / "store.sock")
    await host.start()

    async def remove_folder() -> None:
        shutil.rmtree(folder, ignore_errors=True)

    harness.cleanups += [remove_folder, engine.close, host.close]
    remote = await connect(host.path, Setup(data=harness.data))

    async def writer_retention(defaults: RetentionPolicy) -> Removed:
        await RemoteStore.enforce_retention(remote, defaults)  # Unavailable once closed
        removed = await engine.enforce_retention(defaults)
        await remote.barrier()
        return removed

    remote.enforce_retention = writer_retention  # type: ignore[method-assign]
    _UNDERNEATH[remote] = engine
    return remote


def _remote(tmp: Path, _: pytest.FixtureRequest) -> Harness:
    return Harness(
        "remote",
        tmp / "data",
        durable=True,
        hold=lambda store: _hold_rocksdb(_UNDERNEATH[store]),
        engine="rocksdb",
        serve=_serve_remote,
    )


HARNESSES: dict[str, Callable[[Path, pytest.FixtureRequest], Harness]] = {
    "rocksdb": lambda tmp, _: Harness("rocksdb", tmp / "data", durable=True, hold=_hold_rocksdb),
    "memory": lambda tmp, _: Harness("memory", tmp / "data", durable=False, hold=None),
    "jetstream": _jetstream,
    "remote": _remote,
}
# Harnesses that are not a backend of the registry.
NOT_BACKENDS = frozenset({"remote"})


@pytest.fixture(params=sorted(HARNESSES))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    assert set(HARNESSES) - NOT_BACKENDS == set(registry.backends()), (
        "every backend must be in the suite"
    )
    yield HARNESSES[request.param](tmp_path, request)


def txn(
    space: str,
    *writes: tuple[str, int] | tuple[str, int, int | None],
    txid: str = "",
    tag: bytes = b"",
) -> Transaction:
    """A transaction of ``(segment, records[, expected_sequence])`` writes; each
    body is a ``RecordInput`` with a payload naming its write and index (and
    ``tag``), so that records are told apart when read back."""
    appends = []
    for write in writes:
        segment, count = write[0], write[1]
        expected = write[2] if len(write) > 2 else None
        bodies = tuple(body(f"{segment}:{i}".encode() + tag) for i in range(count))
        appends.append(SegmentAppend(segment, bodies, expected))
    fingerprint = (txid.encode() + tag).ljust(32, b".")[:32] if txid else b""
    return Transaction(space, tuple(appends), txid, fingerprint)


def body(payload: bytes) -> bytes:
    """A RecordInput holding ``payload`` (field 1, length-delimited)."""
    return b"\x0a" + codec.varint(len(payload)) + payload
