"""The server's memory budget: what it buffers on behalf of clients, bounded as a whole.

Two things share one byte budget (``--memory-budget-bytes``):

- the tail's in-memory windows (:mod:`streams.storage.tail`): a cache, so
  they are evicted (least recently read first) whenever the budget runs short;
- Consume responses handed to gRPC, held from when a response is built until
  gRPC has taken it (the stream's next step), so a follower that stops reading
  holds one response. When the budget runs short, responses are cut smaller
  (always at least one record); when not even one more record fits, the
  stream waits until memory is released, holding nothing meanwhile.

Requests are bounded apart (:class:`InflightRequests`): a reader that stalls
must not be able to stop writers, nor writers evict readers' responses.

Example::

    budget = MemoryBudget(256 << 20)
    room = await budget.room_for(record_size)  # waits while it does not fit
    budget.charge(response_size)
    ...
    budget.refund(response_size)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from streams.errors import ResourceExhausted

DEFAULT_BUDGET_BYTES = 256 * 1024 * 1024


class MemoryBudget:
    """Bytes held by tail windows and by buffered responses, under one capacity."""

    def __init__(self, capacity: int = DEFAULT_BUDGET_BYTES) -> None:
        if capacity < 1:
            raise ValueError(f"memory budget must be positive, got {capacity}")
        self.capacity = capacity
        self.windows = 0  # bytes held by tail windows (maintained by the tail)
        self.responses = 0  # bytes held by responses gRPC has not taken yet
        self.waiting = 0  # streams waiting for memory right now
        self._released = asyncio.Event()
        # Frees at least the given number of window bytes if it can (the tail sets it).
        self.shrink_windows: Callable[[int], None] = lambda needed: None

    @property
    def used(self) -> int:
        return self.windows + self.responses

    def response_room(self) -> int:
        """Bytes a new response may take: windows give way to responses."""
        return self.capacity - self.responses

    async def room_for(self, needed: int) -> int:
        """Waits until at least ``needed`` bytes are free for responses; returns the room."""
        while self.response_room() < needed:
            self.waiting += 1
            try:
                await self._released.wait()
            finally:
                self.waiting -= 1
        return self.response_room()

    def charge(self, size: int) -> None:
        """Takes ``size`` bytes for a response (evicting windows to make room)."""
        self.responses += size
        over = self.used - self.capacity
        if over > 0:
            self.shrink_windows(over)

    def refund(self, size: int) -> None:
        self.responses -= size
        if self.responses < 0:
            raise RuntimeError(f"memory budget: refunded more than charged ({self.responses})")
        if self.waiting:
            # Every waiter re-checks its own need; an Event per release wakes them all.
            self._released.set()
            self._released = asyncio.Event()


class InflightRequests:
    """Raw bytes of the requests being handled right now, capped.

    Counted from the raw message as gRPC hands it over, before it is parsed,
    so a request over the cap is refused before more copies of it are made.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"max_inflight_request_bytes must be positive, got {capacity}")
        self.capacity = capacity
        self.used = 0

    def take(self, size: int) -> None:
        """Counts ``size`` bytes in, or raises ResourceExhausted when they do not fit."""
        if self.used + size > self.capacity:
            raise ResourceExhausted(
                f"request: {size} bytes would take the requests in flight to "
                f"{self.used + size} bytes, over max_inflight_request_bytes "
                f"({self.capacity}); retry shortly"
            )
        self.used += size

    def give_back(self, size: int) -> None:
        self.used -= size
        if self.used < 0:
            raise RuntimeError(f"requests in flight: gave back more than taken ({self.used})")
