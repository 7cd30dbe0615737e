"""Catalog watches: coalesced by name, bounded, ended at shutdown."""

from __future__ import annotations

import asyncio

import pytest

from streams.errors import Unavailable
from streams.storage.watches import NAME_OVERHEAD, Watches


def test_changes_are_coalesced_by_name_and_scoped_to_the_space() -> None:
    async def scenario() -> None:
        watches = Watches()
        async with watches.watch("orders") as watch:
            for name in ("a", "b", "a", "a"):
                watches.changed("orders", [name])
            watches.changed("billing", ["c"])
            assert await watch.changes() == frozenset({"a", "b"})
            waiting = asyncio.create_task(watch.changes())
            await asyncio.sleep(0)  # let it start waiting: nothing changed since
            assert not waiting.done()
            watches.changed("orders", ["c"])
            assert await waiting == frozenset({"c"})
        assert watches.active == 0

    asyncio.run(scenario())


def test_a_watch_that_falls_far_behind_overflows_instead_of_growing() -> None:
    async def scenario() -> None:
        watches = Watches(max_change_bytes=3 * (NAME_OVERHEAD + 2))
        async with watches.watch("orders") as watch:
            watches.changed("orders", [f"s{i}" for i in range(3)])
            assert await watch.changes() == frozenset({"s0", "s1", "s2"})
            watches.changed("orders", [f"s{i}" for i in range(4)])
            assert await watch.changes() is None
            # After an overflow the watch starts afresh.
            watches.changed("orders", ["s9"])
            assert await watch.changes() == frozenset({"s9"})
            watches.changed("orders", None)
            assert await watch.changes() is None

    asyncio.run(scenario())


def test_close_ends_waiting_watches_and_refuses_new_ones() -> None:
    async def scenario() -> None:
        watches = Watches()
        async with watches.watch("orders") as watch:
            waiting = asyncio.create_task(watch.changes())
            await asyncio.sleep(0)
            watches.close()
            with pytest.raises(Unavailable):
                await waiting
        with pytest.raises(Unavailable):
            watches.watch("orders")

    asyncio.run(scenario())
