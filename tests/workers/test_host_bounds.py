"""What a front costs stays within bounds (review16 F4): the host starts a
read only while its answer fits beside what the front has not taken (so
running reads cannot pile answers past the buffer), and a front's latest-push
cache is charged to its memory budget, and gives way to responses."""

from __future__ import annotations

import asyncio
from pathlib import Path

from streams.memory import MemoryBudget
from streams.model import Cut, Target
from streams.storage.backend import Setup
from streams.workers.remote import connect

from .test_remote_backpressure import BareFront, eventually
from .test_remote_connection import served, txn

BUFFER = 1 << 20
CUT = Cut(10, 256 << 10)  # a read may answer up to 256 KiB


class _GatedReads:
    """The RocksDB store, but reads wait until ``open`` is set: answers pile."""

    def __init__(self, engine: object) -> None:
        self._engine = engine
        self.open = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)

    async def read(self, *args: object) -> object:
        await self.open.wait()
        return await self._engine.read(*args)  # type: ignore[attr-defined]


def test_reads_start_only_while_their_answers_fit_the_buffer(tmp_path: Path) -> None:
    calls = 100

    async def main() -> None:
        async with served(tmp_path, buffer_bytes=BUFFER) as (engine, host, _):
            gated = _GatedReads(engine)
            host.store = gated  # type: ignore[assignment]
            others = set(host.fronts)
            bare = BareFront(host)
            await bare.connect()
            await eventually(lambda: len(host.fronts) == 2, "the host to serve the bare front")
            (front,) = host.fronts - others
            for n in range(1, calls + 1):
                await bare.send((n, "read", (Target("s"), 1, 10, CUT, b"")))
            await eventually(lambda: not front.reading, "the host to stop starting reads")
            # Only the reads whose answers fit the buffer run (4 of 256 KiB).
            assert len(front._calls) == BUFFER // CUT.max_bytes
            gated.open.set()
            found: list[object] = []
            while len(found) < calls:
                found += await bare.receive()
            assert sorted(m[0] for m in found) == list(range(1, calls + 1))  # type: ignore[index]
            bare.sock.close()

    asyncio.run(main())


def test_the_latest_push_is_charged_to_the_memory_budget(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as (_, host, _stores):
            memory = MemoryBudget(64 << 20)
            store = await connect(host.path, Setup(data=tmp_path, memory=memory))
            try:
                async with store.follow(Target("s")) as sub:
                    await store.produce(txn("s", "a", 10, size=1000))
                    await asyncio.wait_for(sub.wait(10), 10)
                    recent = store._recent_bytes
                    assert recent > 10_000
                    window = memory.windows - recent
                    assert window > 10_000, "the window and the latest push are both charged"
                    # A response that needs room drops the latest push first.
                    response = memory.capacity - window - recent + 1
                    memory.charge(response)
                    assert store._recent_bytes == 0 and memory.windows == window
                    memory.refund(response)
                await store.barrier()
                assert store._recent_bytes == 0 and memory.windows == 0
            finally:
                await store.close()

    asyncio.run(main())
