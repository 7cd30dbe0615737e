"""The server's memory budget: what it buffers on behalf of clients, bounded as a whole.

Two things share one byte budget (``--memory-budget-bytes``):

- the tail's in-memory windows (:mod:`streams.storage.tail`): a cache, so
  they are evicted (least recently read first) whenever the budget runs short;
- responses handed to gRPC (Consume's and every unary call's), held from when
  a response is built until gRPC has taken it (a stream's next step, a unary
  call's end), so a client that stops reading holds one response.

Sharing is fair, so that clients that stop reading (or never open their
HTTP/2 window) cannot take the budget from the others before they are cut
off (:mod:`streams.slow_consumers`):

- a response may always take its fair share (the budget over
  ``max_concurrent_streams``) when that much is free;
- a larger one only while it leaves half the budget free, and only one at a
  time per connection (or when nothing else is held at all).

So stalled calls hold at most half the budget in large responses (a
connection at most one), and the other half goes in fair shares: other
readers keep getting responses (Consume cuts them to what they may take, at
least one record). A response that does not fit waits, holding nothing,
until memory is released.

Requests are bounded apart (:class:`InflightRequests`): a reader that stalls
must not be able to stop writers, nor writers evict readers' responses.

Example::

    budget = MemoryBudget(256 << 20, fair_share=128 << 10)
    cut = budget.allowance(peer)  # the most a response to ``peer`` may take now
    await budget.room_for(size, peer)  # waits while ``size`` does not fit
    budget.charge(size, peer)
    ...
    budget.refund(size, peer)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from streams.errors import ResourceExhausted

DEFAULT_BUDGET_BYTES = 256 * 1024 * 1024


class MemoryBudget:
    """Bytes held by tail windows and by buffered responses, under one capacity."""

    def __init__(self, capacity: int = DEFAULT_BUDGET_BYTES, fair_share: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"memory budget must be positive, got {capacity}")
        self.capacity = capacity
        self.fair_share = capacity if fair_share is None else max(1, min(fair_share, capacity))
        self.windows = 0  # bytes held by tail windows (maintained by the tail)
        self.responses = 0  # bytes held by responses gRPC has not taken yet
        self.waiting = 0  # calls waiting for memory right now
        self._released = asyncio.Event()
        # Connections (gRPC peers) holding a response larger than a fair share.
        self._large: dict[str, int] = {}
        # Frees at least the given number of window bytes if it can (the tail sets it).
        self.shrink_windows: Callable[[int], None] = lambda needed: None

    @property
    def used(self) -> int:
        return self.windows + self.responses

    def response_room(self) -> int:
        """Bytes not held by responses: windows give way to responses."""
        return self.capacity - self.responses

    def allowance(self, peer: str = "") -> int:
        """The most a new response to ``peer`` may take now: its fair share, or
        more while that leaves half the budget free; never more than is free."""
        room = self.response_room()
        if peer in self._large:
            return max(0, min(room, self.fair_share))
        return max(0, min(room, max(self.fair_share, room - self.capacity // 2)))

    def fits(self, size: int, peer: str = "") -> bool:
        """Whether a response of ``size`` bytes to ``peer`` may be charged now."""
        if not self.responses:
            return True  # alone: even a response larger than the budget goes
        room = self.response_room()
        if size > room:
            return False
        if size <= self.fair_share:
            return True
        return room - size >= self.capacity // 2 and peer not in self._large

    async def room_for(self, needed: int, peer: str = "") -> None:
        """Waits until a response of ``needed`` bytes to ``peer`` fits (see :meth:`fits`)."""
        while not self.fits(needed, peer):
            self.waiting += 1
            try:
                await self._released.wait()
            finally:
                self.waiting -= 1

    def charge(self, size: int, peer: str = "") -> None:
        """Takes ``size`` bytes for a response (evicting windows to make room)."""
        self.responses += size
        if size > self.fair_share:
            self._large[peer] = self._large.get(peer, 0) + 1
        over = self.used - self.capacity
        if over > 0:
            self.shrink_windows(over)

    def refund(self, size: int, peer: str = "") -> None:
        self.responses -= size
        if self.responses < 0:
            raise RuntimeError(f"memory budget: refunded more than charged ({self.responses})")
        if size > self.fair_share:
            left = self._large.pop(peer, 0) - 1
            if left > 0:
                self._large[peer] = left
            elif left < 0:
                raise RuntimeError(f"memory budget: {peer} refunded a large response not charged")
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
