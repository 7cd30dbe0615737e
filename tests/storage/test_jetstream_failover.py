"""The JetStream backend when the leader of a space's stream is killed
(SIGKILL) while two gateways write to one segment: every acknowledged
transaction is kept once, numbers stay dense, and writes resume on the new
leader (clients retry with their transaction id, as the contract asks)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import pytest

from streams.errors import Unavailable
from streams.model import Cut, ProduceResult, Record, Target
from streams.storage.port import Store

from .conftest import HARNESSES, txn

ENOUGH = 30


async def read_everything(store: Store, target: Target) -> list[Record]:
    found: list[Record] = []
    first, last = 1, await store.last_offset(target)
    while first <= last:
        batch, first = await store.read(target, first, last, Cut(5000, 64 << 20))
        found += batch.records()
    return found


async def produce_retrying(store: Store, name: str, n: int) -> ProduceResult:
    """A client's produce: retried under the same transaction id until acknowledged."""
    request = txn("s", ("hot", 1 + n % 3), (name, 1), txid=f"{name}-{n}", tag=name.encode())
    while True:
        try:
            return await store.produce(request)
        except Unavailable:
            await asyncio.sleep(0.2)


def test_failover_a_killed_leader_loses_no_acknowledged_transaction(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    cluster = request.getfixturevalue("nats_cluster")
    harness = HARNESSES["jetstream"](tmp_path, request)
    acked: dict[str, ProduceResult] = {}

    async def producer(store: Store, name: str, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            acked[f"{name}-{n}"] = await produce_retrying(store, name, n)
            n += 1

    async def until(count: int) -> None:
        while len(acked) < count:
            await asyncio.sleep(0.05)

    async def main() -> None:
        a, b = await harness.open(), await harness.open()
        try:
            stop = asyncio.Event()
            names = [(a, "a0"), (a, "a1"), (b, "b0"), (b, "b1")]
            run = asyncio.gather(*(producer(store, name, stop) for store, name in names))
            await asyncio.wait_for(until(ENOUGH), 30)
            stream = a._names.stream("s")  # type: ignore[attr-defined]
            leader = await asyncio.to_thread(cluster.wait_leader_of, stream)
            await asyncio.to_thread(cluster.kill, leader)
            before = len(acked)
            await asyncio.wait_for(until(before + ENOUGH), 60)
            stop.set()
            await run
            await asyncio.to_thread(cluster.heal)
            space = await read_everything(b, Target("s"))
            assert [r.position for r in space] == list(range(1, len(space) + 1))
            by_txn: dict[str, list[Record]] = defaultdict(list)
            for record in space:
                by_txn[record.transaction_id].append(record)
            # Written once each, where their acks say.
            assert set(by_txn) == set(acked)
            for txid, result in acked.items():
                positions = [r.position for r in by_txn[txid]]
                assert positions == list(range(result.first_position, result.last_position + 1))
            for segment in ("hot", "a0", "a1", "b0", "b1"):
                records = await read_everything(a, Target("s", segment))
                assert [r.sequence for r in records] == list(range(1, len(records) + 1))
        finally:
            await asyncio.to_thread(cluster.heal)
            await a.close()
            await b.close()

    asyncio.run(main())
