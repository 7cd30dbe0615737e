"""What the dispatcher tests share: a real store (memory, or RocksDB in a temp
folder, opened through the registry as the server opens them), groups on it,
and a member driver that reads deliveries as records.

Nothing here sleeps to synchronise: a test waits for the deliveries it
expects (with a generous guard so that a bug fails instead of hanging), and
for durable progress by re-joining (a join waits for the previous
dispatcher's last settle write) or by closing the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from streams import codec
from streams.errors import Unavailable
from streams.groups import Groups, Member
from streams.limits import Limits
from streams.memory import MemoryBudget
from streams.model import (
    MAX_OFFSET,
    Cut,
    GroupConfig,
    GroupStart,
    Ordering,
    ProduceResult,
    Record,
    SegmentAppend,
    Target,
    Transaction,
)
from streams.storage import registry
from streams.storage.backend import Setup
from streams.storage.port import Store
from streams.v1 import streams_pb2 as pb

T = TypeVar("T")
SECOND = 1_000_000_000
# How long a test waits for something that should come at once (a bug fails, not hangs).
GUARD = 10.0
PARKED = "$parked"
ALL = Cut(100_000, 64 << 20)


def body(payload: bytes) -> bytes:
    """A RecordInput holding ``payload``."""
    return b"\x0a" + codec.varint(len(payload)) + payload


def payload_of(record: Record) -> bytes:
    return pb.RecordInput.FromString(record.body).payload


def metadata_of(record: Record) -> dict[str, str]:
    return dict(pb.RecordInput.FromString(record.body).metadata)


@dataclasses.dataclass(frozen=True)
class Got:
    """One delivery, parsed."""

    record: Record
    attempt: int

    @property
    def key(self) -> tuple[str, int]:
        return self.record.segment, self.record.sequence

    @property
    def position(self) -> int:
        return self.record.position


class Env:
    """One test's store and groups."""

    def __init__(self, kind: str, data: Path) -> None:
        self.kind = kind
        self.data = data
        self.store: Store
        self.groups: Groups
        self.memory = MemoryBudget(256 << 20, 128 << 10)
        self.settle_failures_left = 0  # see fail_settles

    async def open(self, limits: Limits | None = None) -> None:
        setup = Setup(data=self.data, memory=self.memory)
        self.store = await registry.get(self.kind).open(setup)
        self.groups = Groups(self.store, limits or Limits(), self.memory)

    async def restart(self, limits: Limits | None = None) -> None:
        """Closes the groups and (RocksDB) the store, and opens them again."""
        await self.groups.close()
        if self.kind == "memory":
            self.groups = Groups(self.store, limits or Limits(), self.memory)
            return
        await self.store.close()
        await self.open(limits)

    async def close(self) -> None:
        await self.groups.close()
        await self.store.close()

    async def produce(self, space: str, *writes: tuple[str, int], tag: str = "") -> None:
        """One transaction: ``count`` records in each named segment, payloads
        ``segment:index`` (plus ``tag``)."""
        appends = tuple(
            SegmentAppend(
                segment, tuple(body(f"{segment}:{i}{tag}".encode()) for i in range(count)), None
            )
            for segment, count in writes
        )
        await self.store.produce(Transaction(space, appends, "", b""))

    async def create(
        self,
        name: str = "g",
        space: str = "s",
        ordering: Ordering = Ordering.PER_SEGMENT,
        ack_timeout: float = 30.0,
        max_attempts: int = 5,
        acked_through: int = 0,
    ) -> GroupConfig:
        config = GroupConfig(
            space,
            name,
            ordering,
            GroupStart(),
            int(ack_timeout * SECOND),
            max_attempts,
            PARKED,
            f"{space}/{name}",
        )
        stored, _ = await self.store.create_group(config, acked_through, 1000)
        return stored

    async def parked(self, config: GroupConfig) -> list[Record]:
        target = Target(config.dead_letter_space, config.dead_letter_segment)
        batch, _ = await self.store.read(target, 1, MAX_OFFSET, ALL)
        return list(batch.records())

    async def acked_through(self, space: str = "s", name: str = "g") -> int:
        state = await self.store.get_group(space, name)
        assert state is not None
        return state.progress.acked_through

    def fail_settles(self, times: int) -> None:
        """The next ``times`` settle writes raise Unavailable (a failing disk);
        ``settle_failures_left`` counts them down."""
        settle = self.store.settle_group
        self.settle_failures_left = times

        async def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
            if self.settle_failures_left:
                self.settle_failures_left -= 1
                raise Unavailable("disk says no")
            return await settle(*args, **kwargs)

        self.store.settle_group = failing  # type: ignore[method-assign]


class DurableLog:
    """Wraps a real store's ``settle_group`` to know which positions are
    durably settled at each moment, and to wait for settle writes."""

    def __init__(self, store: Store) -> None:
        self.settled: set[int] = set()
        self.through = 0
        self.writes = 0
        self.twice: list[int] = []  # positions a write settled that were durable already
        self._changed = asyncio.Event()
        settle = store.settle_group

        async def settle_group(
            space: str,
            name: str,
            acked_through: int,
            settled: Sequence[int],
            parked: Transaction | None,
        ) -> ProduceResult | None:
            result = await settle(space, name, acked_through, settled, parked)
            self.twice += [position for position in settled if self.durable(position)]
            self.through = max(self.through, acked_through)
            self.settled.update(settled)
            self.writes += 1
            self._changed.set()
            self._changed = asyncio.Event()
            return result

        store.settle_group = settle_group  # type: ignore[method-assign]

    def durable(self, position: int) -> bool:
        return position <= self.through or position in self.settled

    async def until(self, done: Callable[[], bool]) -> None:
        """Waits (settle write by settle write) until ``done()``."""

        async def wait() -> None:
            while not done():
                await self._changed.wait()

        await asyncio.wait_for(wait(), GUARD)


async def take(member: Member, count: int, max_bytes: int = 1 << 20) -> list[Got]:
    """Exactly ``count`` deliveries (waiting for them), parsed; fails on more
    in the batches read."""
    got: list[Got] = []
    while len(got) < count:
        batch = await asyncio.wait_for(member.deliveries(max_bytes), GUARD)
        assert batch, "the member ended"
        got += [Got(codec.parse_stored(stored), attempt) for stored, attempt in batch]
    assert len(got) == count, f"expected {count} deliveries, got {[g.key for g in got]}"
    return got


async def some(member: Member, max_bytes: int = 1 << 20) -> list[Got]:
    """The next batch of deliveries, however many (waiting for one)."""
    batch = await asyncio.wait_for(member.deliveries(max_bytes), GUARD)
    assert batch, "the member ended"
    return [Got(codec.parse_stored(stored), attempt) for stored, attempt in batch]


@contextlib.asynccontextmanager
async def one_sent_one_unsent(env: Env) -> AsyncIterator[tuple[Member, Got, Member, int]]:
    """Members ``one`` and ``two`` (max_in_flight 1) of group g of space s and a
    record for each, handed out by one read: ``one``'s taken (sent), ``two``'s
    still in its outbox, unsent. Yields (one, its record, two, the unsent position)."""
    await env.produce("s", ("a", 1), ("b", 1))
    async with (
        env.groups.join("s", "g", "one", 1) as one,
        env.groups.join("s", "g", "two", 1) as two,
    ):
        (mine,) = await take(one, 1)
        yield one, mine, two, 3 - mine.position


def positions(got: Sequence[Got]) -> list[int]:
    return [g.position for g in got]


@pytest.fixture(params=["memory", "rocksdb"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    yield Env(request.param, tmp_path / "data")


def run(env: Env, scenario: Callable[[], Awaitable[T]], limits: Limits | None = None) -> T:
    """Runs ``scenario`` with ``env`` open, closing it after."""

    async def main() -> T:
        await env.open(limits)
        try:
            return await scenario()
        finally:
            await env.close()

    return asyncio.run(main())
