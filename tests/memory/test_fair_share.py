"""How responses share the memory budget (streams/memory.py): a fair share
always when free, larger ones only from the first half and one per connection."""

from __future__ import annotations

import asyncio

from streams.memory import MemoryBudget

KIB = 1024


def test_large_responses_take_only_the_first_half_one_per_connection() -> None:
    budget = MemoryBudget(100 * KIB, fair_share=KIB)
    assert budget.allowance("a") == 50 * KIB  # leaves half free
    budget.charge(30 * KIB, "a")
    assert not budget.fits(2 * KIB, "a"), "a second large response on connection a"
    assert budget.allowance("a") == KIB
    assert budget.fits(20 * KIB, "b")
    budget.charge(20 * KIB, "b")
    assert not budget.fits(2 * KIB, "c"), "past the first half"
    assert budget.allowance("c") == KIB
    # Fair shares go on until the budget is full.
    for _ in range(50):
        assert budget.fits(KIB, "c")
        budget.charge(KIB, "c")
    assert not budget.fits(KIB, "d")
    assert budget.allowance("d") == 0


def test_a_response_larger_than_half_the_budget_goes_alone() -> None:
    budget = MemoryBudget(100 * KIB, fair_share=KIB)
    assert budget.fits(80 * KIB, "a")
    budget.charge(KIB, "b")
    assert not budget.fits(80 * KIB, "a")
    budget.refund(KIB, "b")
    assert budget.fits(80 * KIB, "a")


def test_a_waiting_response_goes_once_memory_is_released() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(100 * KIB, fair_share=KIB)
        budget.charge(40 * KIB, "a")
        waiter = asyncio.create_task(budget.room_for(20 * KIB, "b"))
        while not budget.waiting:
            await asyncio.sleep(0)
        assert not waiter.done()
        budget.refund(40 * KIB, "a")
        await asyncio.wait_for(waiter, 5)
        assert budget.fits(20 * KIB, "a"), "a's large response is given back"

    asyncio.run(scenario())
