"""The tail's windows: only for followed targets, all within one memory budget."""

from __future__ import annotations

import asyncio

from streams.memory import MemoryBudget
from streams.model import Target
from streams.storage.tail import RECORD_OVERHEAD, Tail

RECORD = b"r" * 1000
COST = len(RECORD) + RECORD_OVERHEAD


def publish(tail: Tail, space: str, segment: str, first: int, count: int) -> None:
    records = [RECORD] * count
    tail.publish(space, first, records, [(segment, first, records)])


def never(_: Target) -> int:
    return 0


def run(body) -> None:
    async def main() -> None:
        body()

    asyncio.run(main())


def test_a_followed_space_keeps_one_window_not_one_per_segment() -> None:
    def body() -> None:
        tail = Tail(10_000, 1 << 30, memory=MemoryBudget(1 << 30))
        with tail.subscribe(Target("s"), never):
            for i in range(200):
                publish(tail, "s", f"seg{i}", i + 1, 1)
            assert tail.windows == 1
            assert tail.memory.windows == 200 * COST
        assert tail.windows == 0 and tail.memory.windows == 0

    run(body)


def test_windows_of_many_followed_targets_stay_within_the_budget() -> None:
    def body() -> None:
        budget = MemoryBudget(50 * COST)
        tail = Tail(10_000, 1 << 30, memory=budget)
        subs = [tail.subscribe(Target(f"s{i}"), never) for i in range(30)]
        for i in range(30):
            publish(tail, f"s{i}", "a", 1, 10)
            assert budget.windows <= budget.capacity
        # The latest survive: the windows read least recently went first.
        assert tail.read(Target("s29"), 1, 10, 100, 1 << 20) is not None
        assert tail.read(Target("s0"), 1, 10, 100, 1 << 20) is None
        for sub in subs:
            sub.close()
        assert budget.windows == 0

    run(body)


def test_a_read_window_outlives_unread_ones() -> None:
    def body() -> None:
        budget = MemoryBudget(25 * COST)
        tail = Tail(10_000, 1 << 30, memory=budget)
        for i in range(3):
            tail.subscribe(Target(f"s{i}"), never)
        publish(tail, "s0", "a", 1, 10)
        publish(tail, "s1", "a", 1, 10)
        assert tail.read(Target("s0"), 1, 10, 100, 1 << 20) is not None
        publish(tail, "s2", "a", 1, 10)  # over the budget: s1, unread, goes
        assert tail.read(Target("s1"), 1, 10, 100, 1 << 20) is None
        assert tail.read(Target("s0"), 1, 10, 100, 1 << 20) is not None

    run(body)


def test_responses_evict_windows() -> None:
    def body() -> None:
        budget = MemoryBudget(20 * COST)
        tail = Tail(10_000, 1 << 30, memory=budget)
        tail.subscribe(Target("s"), never)
        publish(tail, "s", "a", 1, 20)
        assert budget.windows == 20 * COST
        budget.charge(5 * COST)
        assert budget.used <= budget.capacity
        budget.refund(5 * COST)
        assert budget.responses == 0

    run(body)


def test_one_window_over_the_budget_keeps_its_newest_records() -> None:
    def body() -> None:
        budget = MemoryBudget(5 * COST)
        tail = Tail(10_000, 1 << 30, memory=budget)
        tail.subscribe(Target("s"), never)
        publish(tail, "s", "a", 1, 20)
        assert budget.windows == 5 * COST
        assert tail.read(Target("s"), 16, 20, 100, 1 << 20) is not None
        assert tail.read(Target("s"), 15, 20, 100, 1 << 20) is None

    run(body)
