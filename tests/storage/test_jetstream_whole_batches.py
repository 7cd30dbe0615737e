"""A read of a JetStream space never ends inside a transaction: a batch is
stored message by message on the stream leader (under a lock that direct and
leader gets wait for, but the stream's info does not), so the stream's last
sequence may name a message in the middle of a batch being stored. The last
offset a read is bounded by must be a transaction's end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streams.model import Cut, Target
from streams.storage.port import Store

from .conftest import HARNESSES, Harness, txn

# Transactions of the most records one may hold: the longer a batch takes to
# store, the likelier a read comes while it is half stored.
TRANSACTIONS = 40


@pytest.fixture
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    return HARNESSES["jetstream"](tmp_path, request)


def test_a_space_read_while_transactions_are_stored_sees_only_whole_ones(
    harness: Harness,
) -> None:
    size = harness.max_records
    target = Target("s")

    async def scenario(store: Store) -> None:
        written = asyncio.Event()

        async def writer() -> None:
            try:
                for i in range(TRANSACTIONS):
                    await store.produce(txn("s", ("a", size // 2), ("b", size - size // 2)))
                    if i == 0:
                        written.set()
            finally:
                written.set()

        task = asyncio.create_task(writer())
        await written.wait()
        lasts, counts = [], []
        while not task.done():
            last = await store.last_offset(target)
            lasts.append(last)
            batch, _ = await store.read(target, last, 2**64 - 1, Cut(size, 1 << 26))
            counts.append(batch.count)
        await task
        # A read from a transaction's last record returns that record alone,
        # or (a transaction stored since) as many records as the Cut lets it.
        assert [last for last in lasts if last % size] == []
        assert [count for count in counts if count not in (1, size)] == []
        assert await store.last_offset(target) == TRANSACTIONS * size

    harness.run(scenario)
