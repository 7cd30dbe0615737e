"""The service's one entry point to consumer groups: members join and leave,
the service reads live numbers, and DeleteGroup and shutdown end members.

A group has a :class:`~streams.groups.dispatcher.Dispatcher` while it has
live members: the first join starts it from the group's durable progress,
the last leave stops it (after its settle write in flight, so that a join
right after never loads progress older than what was acked). Delivery
attempts outlive the dispatcher: those of the records it delivered and did
not settle (at most the records its window held) are kept here and handed
to the group's next dispatcher, until the group is deleted; they are not
durable (after a restart, attempts count from 1 again).

Example (the Subscribe stream)::

    async with groups.join(space, group, member_name, max_in_flight) as member:
        send_joined(member.id)
        while batch := await member.deliveries(max_bytes):
            send(batch)          # and, as requests come in:
        member.ack([5, 6])       # member.nack([7], park=False, reason="busy")
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from streams.errors import NotFound, ResourceExhausted, Unavailable
from streams.groups.dispatcher import Attempts, Dispatcher, Member
from streams.limits import Limits
from streams.memory import MemoryBudget
from streams.storage import port
from streams.storage.port import Store

__all__ = ["GroupStats", "Groups", "LiveGroup", "Member"]


@dataclass(frozen=True, slots=True)
class LiveGroup:
    """A group's live numbers (GetGroup's info while it has members)."""

    acked_through: int
    in_flight: int
    # (id, name, owned segments, records in flight), in join order.
    members: list[tuple[str, str, int, int]]


@dataclass(frozen=True, slots=True)
class GroupStats:
    """One live group's numbers for the metrics; the counters count since its
    dispatcher started (the first member joined after none)."""

    space: str
    group: str
    acked_through: int
    in_flight: int
    members: int
    delivered: int
    redelivered: int
    acked: int
    parked: int


_Key = tuple[str, str]


class Groups:
    """Dispatchers of the groups that have live members, by (space, group)."""

    def __init__(
        self,
        store: Store,
        limits: Limits,
        memory: MemoryBudget,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._limits = limits
        self._memory = memory
        self._clock = clock
        self._dispatchers: dict[_Key, Dispatcher] = {}
        # A dispatcher being started (its progress loading), or stopped.
        self._starting: dict[_Key, asyncio.Event] = {}
        self._stopping: dict[_Key, asyncio.Task[None]] = {}
        # Groups deleted while their dispatcher was starting: the start fails.
        self._deleted: set[_Key] = set()
        # Groups with no dispatcher: the attempts its last one left.
        self._attempts: dict[_Key, Attempts] = {}
        self._closed = False

    @contextlib.asynccontextmanager
    async def join(
        self, space: str, group: str, member_name: str, max_in_flight: int
    ) -> AsyncIterator[Member]:
        """A new live member of the group while the context is open; leaving
        the context is the member leaving (what it holds is delivered again).

        Raises NotFound (no such group), ResourceExhausted (the group has
        ``max_group_members`` members), Unavailable (shutting down), and what
        the store raises (Unimplemented on a backend without groups)."""
        dispatcher = await self._dispatcher(space, group)
        most = self._limits.max_group_members
        if len(dispatcher.members) >= most:
            raise ResourceExhausted(
                f"group: {group!r} of space {space!r} already has {most} members, the most "
                "max_group_members allows"
            )
        member = dispatcher.join(member_name, max_in_flight)
        try:
            yield member
        finally:
            dispatcher.leave(member)
            if not dispatcher.members:
                self._retire(dispatcher)

    async def _dispatcher(self, space: str, group: str) -> Dispatcher:
        key = (space, group)
        while True:
            if self._closed:
                raise Unavailable("the server is shutting down; retry")
            found = self._dispatchers.get(key)
            if found is not None:
                return found
            starting = self._starting.get(key)
            if starting is not None:
                await starting.wait()
                continue
            stopping = self._stopping.get(key)
            if stopping is not None:
                # Its last settle write lands before the progress is loaded again.
                await asyncio.shield(stopping)
                continue
            started = self._starting[key] = asyncio.Event()
            try:
                state = await self._store.get_group(space, group)
                if state is None or key in self._deleted:
                    raise port.group_not_found(space, group)
                if self._closed:
                    raise Unavailable("the server is shutting down; retry")
                dispatcher = Dispatcher(
                    self._store,
                    state,
                    self._limits,
                    self._memory,
                    self._clock,
                    self._retire,
                    self._attempts.pop(key, None),
                )
                self._dispatchers[key] = dispatcher
                dispatcher.start()
                return dispatcher
            finally:
                del self._starting[key]
                self._deleted.discard(key)
                started.set()

    def _retire(self, dispatcher: Dispatcher) -> None:
        """Drops the dispatcher (no members left, or it failed) and stops it."""
        key = (dispatcher.space, dispatcher.name)
        if self._dispatchers.get(key) is not dispatcher:
            return
        del self._dispatchers[key]
        dispatcher.halt()
        if not isinstance(dispatcher.failed, NotFound):  # deleted: its attempts go too
            attempts = dispatcher.attempts()
            if attempts:
                self._attempts[key] = attempts
        self._stopping[key] = asyncio.create_task(
            self._stop(key, dispatcher), name=f"group {dispatcher.name} stop"
        )

    async def _stop(self, key: _Key, dispatcher: Dispatcher) -> None:
        try:
            await dispatcher.stop()
        finally:
            # Gone from _stopping before the task is done, not in a done callback:
            # awaiting a done task does not yield, so a join that found it done
            # with its callback not run yet would loop without end.
            if self._stopping.get(key) is asyncio.current_task():
                del self._stopping[key]

    def live(self, space: str, group: str) -> LiveGroup | None:
        """The group's live numbers; None when it has no live members."""
        dispatcher = self._dispatchers.get((space, group))
        if dispatcher is None or not dispatcher.members:
            return None
        return LiveGroup(
            dispatcher.window.acked_through(),
            dispatcher.in_flight(),
            [
                (member.id, member.name, len(member.segments), len(member.held))
                for member in dispatcher.members.values()
            ],
        )

    def deleted(self, space: str, group: str) -> None:
        """The group was deleted: ends its members with NotFound, drops its dispatcher."""
        key = (space, group)
        self._attempts.pop(key, None)
        if key in self._starting:
            self._deleted.add(key)
        dispatcher = self._dispatchers.get(key)
        if dispatcher is not None:
            dispatcher.fail(NotFound(f"group: {group!r} of space {space!r} was deleted"))

    def deleted_space(self, space: str) -> None:
        """The space was deleted, its groups with it: ends the members of each
        of its live groups with NotFound and forgets their kept attempts (as
        :meth:`deleted` does for one group)."""
        found = {*self._dispatchers, *self._starting, *self._attempts}
        for key in [key for key in found if key[0] == space]:
            self.deleted(*key)

    async def close(self) -> None:
        """Shutdown: ends every member with Unavailable; waits for the settle
        writes in flight."""
        self._closed = True
        for dispatcher in list(self._dispatchers.values()):
            dispatcher.fail(Unavailable("the server is shutting down; retry"))
        while self._stopping:
            await asyncio.gather(*self._stopping.values(), return_exceptions=True)

    def stats(self) -> list[GroupStats]:
        """One entry per group with live members."""
        return [
            GroupStats(
                dispatcher.space,
                dispatcher.name,
                dispatcher.window.acked_through(),
                dispatcher.in_flight(),
                len(dispatcher.members),
                dispatcher.delivered,
                dispatcher.redelivered,
                dispatcher.acked,
                dispatcher.parked,
            )
            for dispatcher in self._dispatchers.values()
        ]
