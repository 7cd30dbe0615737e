"""One consumer group's dispatch while it has live members.

The dispatcher reads the group's space in position order (one cursor, see
:mod:`streams.groups.window`), hands each record to a member, and settles
what members ack (or what is parked) through :meth:`Store.settle_group`:

- ``PER_SEGMENT``: a segment with a record delivered has one owner, and
  keeps it while it has records delivered or waiting; the owner gets the
  segment's next record only once the one before it is durably settled. A
  segment gets its owner when its head can be handed out, not when it is
  read: segments without an owner whose head may go wait in one FIFO, and
  members with room take from it, those owning the fewest segments first (so
  a reader far ahead does not give the whole backlog to the first member,
  and a member that joins late gets work at once). A segment with nothing
  waiting or delivered is forgotten (so state grows with work, not with
  segments).
- ``NONE``: records wait in one queue; members with room take from it.

Everything is batched: a read hands out many records, one settle write is in
flight at a time (acks arriving meanwhile go in the next one), and one timer
serves every deadline (acks are due in delivery order: an ordered dict;
retries: a heap). Per record the work is O(1).
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence

from streams.errors import NotFound, StreamsError
from streams.groups import parking
from streams.groups.window import (
    IN_FLIGHT,
    SETTLING,
    WAITING,
    WRITING,
    Bounds,
    Entry,
    Window,
    entries_of,
)
from streams.limits import Limits
from streams.memory import MemoryBudget
from streams.model import Cut, GroupProgress, GroupState, Ordering, Target
from streams.storage.port import Store

log = logging.getLogger(__name__)

# A read takes at most this much (the bounds of the window may cut it further).
READ_RECORDS = 1000
READ_BYTES = 1 << 20
# Retry back-off after a nack: FIRST * 2^(attempt-1) seconds, at most MOST.
RETRY_FIRST = 0.1
RETRY_MOST = 5.0
NANOS = 1e9

# Attempts (and the last nack's reason) of records delivered and not settled,
# by position: what a group's next dispatcher counts on from.
Attempts = dict[int, tuple[int, str]]


def _unsettled(attempts: Attempts, progress: GroupProgress) -> Attempts:
    """``attempts`` without the positions ``progress`` has durably settled."""
    ranges = progress.settled
    firsts = [first for first, _ in ranges]
    kept: Attempts = {}
    for position, found in attempts.items():
        if position <= progress.acked_through:
            continue
        at = bisect.bisect_right(firsts, position) - 1
        if at >= 0 and position <= ranges[at][1]:
            continue
        kept[position] = found
    return kept


def retry_delay(attempt: int) -> float:
    """Seconds before a record nacked (with retry) at its ``attempt``-th delivery goes again."""
    return min(RETRY_MOST, RETRY_FIRST * 2.0 ** min(attempt - 1, 16))


class Member:
    """A live member of a group: what the service's Subscribe stream talks to."""

    __slots__ = (
        "_dispatcher",
        "_ended",
        "_error",
        "_event",
        "dirty",
        "held",
        "hungry",
        "id",
        "live",
        "max_in_flight",
        "name",
        "outbox",
        "ready",
        "segments",
    )

    def __init__(self, dispatcher: Dispatcher, name: str, max_in_flight: int) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.name = name
        self.max_in_flight = max_in_flight
        # Delivered or being settled, by position: counts toward max_in_flight.
        self.held: dict[int, Entry] = {}
        self.segments: set[_Segment] = set()  # owned (PER_SEGMENT)
        self.ready: deque[_Segment] = deque()  # owned segments whose head may go
        self.outbox: deque[Entry] = deque()  # to send (those still queued, held by it)
        self.live = True
        self.dirty = False  # queued for a pump
        self.hungry = False  # among the members with room (queue or heap)
        self._dispatcher = dispatcher
        self._event = asyncio.Event()
        self._ended = False
        self._error: BaseException | None = None

    async def deliveries(self, max_bytes: int) -> list[tuple[bytes, int]]:
        """Waits for at least one delivery; returns (stored record bytes, attempt)
        pairs in delivery order, within ``max_bytes`` stored bytes (one always
        goes). Returns [] once the member ended without an error; raises the
        error that ended it (NotFound: group deleted; Unavailable: shutdown)."""
        while True:
            if self._error is not None:
                raise self._error
            if self._ended:
                return []
            out = self._take(max_bytes)
            if out:
                return out
            self._event.clear()
            await self._event.wait()

    def _take(self, max_bytes: int) -> list[tuple[bytes, int]]:
        taken: list[Entry] = []
        outbox = self.outbox
        size = 0
        while outbox:
            entry = outbox[0]
            # Moved or settled since it was queued: no longer to send.
            if entry.holder is not self or not entry.queued or entry.state is not IN_FLIGHT:
                outbox.popleft()
                continue
            size += entry.size
            if taken and size > max_bytes:
                break
            outbox.popleft()
            taken.append(entry)
        if not taken:
            return []
        self._dispatcher.sent(taken)
        return [(entry.stored, entry.attempt) for entry in taken]

    def ack(self, positions: Sequence[int]) -> None:
        """Settles the records at ``positions`` this member holds (others are ignored)."""
        self._dispatcher.ack(self, positions)

    def nack(self, positions: Sequence[int], park: bool, reason: str) -> None:
        """Gives back the records at ``positions`` this member holds: delivered
        again after a back-off, or parked (``park``, or attempts used up)."""
        self._dispatcher.nack(self, positions, park, reason)

    def end(self, error: BaseException | None) -> None:
        """Ends the member's deliveries (see :meth:`deliveries`); the first end counts."""
        if not self._ended:
            self._ended = True
            self._error = error
            self._event.set()

    def wake(self) -> None:
        self._event.set()


class _Segment:
    """A segment with an owner: records waiting, and the one delivered or being settled."""

    __slots__ = ("current", "key", "owner", "queue", "ready")

    def __init__(self, key: str) -> None:
        self.key = key
        self.owner: Member | None = None
        self.queue: deque[Entry] = deque()
        self.current: Entry | None = None  # in flight or being settled
        self.ready = False  # in its owner's ready deque, or (no owner) the unowned FIFO


class Dispatcher:
    """Dispatch for one group; the registry starts it with the first member
    and stops it when the last one leaves."""

    def __init__(
        self,
        store: Store,
        state: GroupState,
        limits: Limits,
        memory: MemoryBudget,
        clock: Callable[[], float],
        on_failed: Callable[[Dispatcher], None],
        attempts: Attempts | None = None,
    ) -> None:
        config = state.config
        self.config = config
        self._store = store
        self._limits = limits
        self._clock = clock
        self._on_failed = on_failed
        self._ack_timeout = config.ack_timeout_ns / NANOS
        self._per_segment = config.ordering is Ordering.PER_SEGMENT
        bounds = Bounds(
            limits.max_group_unsettled_records,
            limits.max_group_unsettled_bytes,
            limits.max_group_lead,
        )
        self.window = Window(state.progress, bounds, memory, f"group:{config.space}/{config.name}")
        # From the group's previous dispatcher: taken as their records are read again.
        self._carried = _unsettled(attempts or {}, state.progress)
        self.members: dict[str, Member] = {}
        # PER_SEGMENT: segments with records, and those of them without an
        # owner whose head may go (in the order they became ready).
        self._segments: dict[str, _Segment] = {}
        self._unowned: deque[_Segment] = deque()
        # PER_SEGMENT: members with room by owned segments then arrival (a
        # heap, checked when taken: a member may be in it more than once).
        self._roomy: list[tuple[int, int, Member]] = []
        self._order = itertools.count()
        # NONE: records waiting, and members with room (checked when taken).
        self._waiting: deque[Entry] = deque()
        self._hungry: deque[Member] = deque()
        self._dirty: list[Member] = []  # members to pump
        # Deadlines: deliveries in flight in delivery order (so by deadline), retries.
        self._deadlines: OrderedDict[Entry, None] = OrderedDict()
        self._retries: list[tuple[float, int, Entry]] = []
        self._retry_order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        # Settling: entries to write next; the write in flight.
        self._pending: list[Entry] = []
        self._parks_pending = 0  # of them
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        self.failed: BaseException | None = None
        # Counters since start (metrics).
        self.delivered = 0
        self.redelivered = 0
        self.acked = 0
        self.parked = 0

    @property
    def space(self) -> str:
        return self.config.space

    @property
    def name(self) -> str:
        return self.config.name

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name=f"group {self.name} reader")

    def halt(self) -> None:
        """Stops reading now (the rest of stopping is :meth:`stop`)."""
        if self._reader is not None:
            self._reader.cancel()

    async def stop(self) -> None:
        """Stops reading, writes what is being settled, and gives back the memory."""
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        self.window.release()

    def fail(self, error: BaseException) -> None:
        """Ends every member with ``error`` (the group is gone, the server stops,
        the space cannot be read); the registry then stops this dispatcher."""
        if self.failed is None:
            self.failed = error
            for member in self.members.values():
                member.end(error)
            self._on_failed(self)

    # -- members ---------------------------------------------------------------

    def join(self, name: str, max_in_flight: int) -> Member:
        member = Member(self, name, max_in_flight)
        self.members[member.id] = member
        if self.failed is not None:
            member.end(self.failed)
        self._has_room(member)
        self._flush()
        self._feed()
        return member

    def leave(self, member: Member) -> None:
        """The member's stream ended: what it held is delivered again at once,
        its segments go to others (one being settled once that settles)."""
        if not member.live:
            return
        member.live = False
        del self.members[member.id]
        moved = member.segments
        member.segments = set()
        member.ready.clear()
        member.outbox.clear()
        for segment in moved:
            segment.owner = None
            segment.ready = False
        for entry in member.held.values():
            entry.holder = None
            if entry.state is IN_FLIGHT:
                self._deadlines.pop(entry, None)
                # Once failed nothing is written any more (the dispatcher is stopping).
                if self.failed is None:
                    self._again(entry)
                else:
                    self._requeue(entry)
        member.held.clear()
        for segment in moved:
            self._offer(segment, first=True)
        self._flush()
        self._kick()

    def _free(self, segment: _Segment) -> None:
        del self._segments[segment.key]
        owner = segment.owner
        if owner is not None:
            owner.segments.discard(segment)
            segment.owner = None
            if owner.hungry:  # it owns fewer now: its place in the heap comes sooner
                self._roomy_push(owner)

    # -- reading -----------------------------------------------------------------

    async def _read(self) -> None:
        try:
            await self._follow()
        except asyncio.CancelledError:
            raise
        except StreamsError as exc:
            self.fail(exc)
        except Exception as exc:
            log.exception("group %r of space %r: reading failed", self.name, self.space)
            self.fail(exc)

    async def _follow(self) -> None:
        target = Target(self.space)
        window = self.window
        # Entered before the first read: nothing committed after it is missed.
        async with self._store.follow(target) as sub:
            needed = 1
            while True:
                await window.room_for(needed)
                span = window.next_read(READ_RECORDS, min(READ_BYTES, window.allowance()))
                if span is None:
                    self._room.clear()
                    await self._room.wait()
                    continue
                cut = Cut(span.records, span.bytes)
                batch, after = await self._store.read(target, span.first, span.last, cut)
                if batch.count:
                    framed = batch.to_wire()
                    if not window.fits(len(framed)):
                        # Larger than the budget lets this group take now: wait until it fits.
                        needed = len(framed)
                        continue
                    needed = 1
                    self._arrived(entries_of(framed), after)
                    # A store that answers without suspending must not hold the loop.
                    await asyncio.sleep(0)
                elif after > span.first:
                    window.add((), after)  # removed or settled positions: skipped
                else:
                    await sub.wait(span.first)

    def _arrived(self, entries: list[Entry], after: int) -> None:
        self.window.add(entries, after)
        if self._carried:
            self._count_on(entries)
        if self._per_segment:
            segments, offer, unowned = self._segments, self._offer, self._unowned
            for entry in entries:
                segment = segments.get(entry.segment)
                if segment is None:
                    # No owner, nothing in flight, no back-off: ready at once.
                    segment = segments[entry.segment] = _Segment(entry.segment)
                    segment.queue.append(entry)
                    segment.ready = True
                    unowned.append(segment)
                else:
                    segment.queue.append(entry)
                    if segment.current is None and not segment.ready:
                        offer(segment)
            self._flush()
        else:
            self._waiting.extend(entries)
            self._feed()

    def _count_on(self, entries: list[Entry]) -> None:
        """Records read again that an earlier dispatcher of the group delivered
        go on from its attempts (so a record that ends every member it reaches
        is still parked after max_attempts)."""
        carried = self._carried
        for entry in entries:
            found = carried.pop(entry.position, None)
            if found is not None:
                entry.attempt, entry.reason = found

    def attempts(self) -> Attempts:
        """The attempts of the records delivered and not settled (and those
        counted on from before, not read again yet), for the group's next
        dispatcher: at most the records the window holds, as positions the
        cursor passed without reading them are never delivered."""
        cursor = self.window.cursor
        kept = {position: found for position, found in self._carried.items() if position >= cursor}
        for entry in self.window.entries.values():
            if entry.attempt:
                kept[entry.position] = (entry.attempt, entry.reason)
        return kept

    # -- delivering ---------------------------------------------------------------

    def _offer(self, segment: _Segment, first: bool = False) -> None:
        """Puts ``segment`` in its owner's ready deque, or (no owner) the
        unowned FIFO (at its head if ``first``), if its head may go now."""
        if segment.ready or segment.current is not None or not segment.queue:
            return
        head = segment.queue[0]
        if head.not_before and head.not_before > self._clock():
            return  # the retry timer offers it
        segment.ready = True
        owner = segment.owner
        if owner is None:
            if first:
                self._unowned.appendleft(segment)
            else:
                self._unowned.append(segment)
            return
        owner.ready.append(segment)
        if not owner.dirty:
            owner.dirty = True
            self._dirty.append(owner)

    def _flush(self) -> None:
        """PER_SEGMENT: delivers to every member that has owned segments
        ready, then hands out unowned segments to members with room."""
        dirty = self._dirty
        while dirty:
            member = dirty.pop()
            member.dirty = False
            if member.live:
                self._pump(member)
        if self._unowned and self._roomy:
            self._share()

    def _has_room(self, member: Member) -> None:
        if self._per_segment:
            if member.ready and not member.dirty:
                member.dirty = True
                self._dirty.append(member)
            if not member.hungry:
                member.hungry = True
                self._roomy_push(member)
        elif not member.hungry:
            member.hungry = True
            self._hungry.append(member)

    def _roomy_push(self, member: Member) -> None:
        roomy = self._roomy
        if len(roomy) > 2 * len(self.members) + 64:
            # Mostly stale places (owned counts that changed): start again,
            # O(members) once per as many pushes.
            roomy[:] = [
                (len(m.segments), next(self._order), m) for m in self.members.values() if m.hungry
            ]
            heapq.heapify(roomy)
        if member.live:
            heapq.heappush(roomy, (len(member.segments), next(self._order), member))

    def _share(self) -> None:
        """PER_SEGMENT: members with room take unowned segments from the FIFO,
        one at a time, the member owning the fewest segments first (log of the
        members with room per segment handed out)."""
        if self.failed is not None:
            return
        roomy, unowned, order = self._roomy, self._unowned, self._order
        out: dict[Member, list[Entry]] = {}
        while roomy and unowned:
            owned, _, member = roomy[0]
            if not member.hungry or not member.live:
                heapq.heappop(roomy)
                continue
            if owned != len(member.segments):  # a stale place
                heapq.heapreplace(roomy, (len(member.segments), next(order), member))
                continue
            mine = out.get(member)
            if len(member.held) + (len(mine) if mine else 0) >= member.max_in_flight:
                heapq.heappop(roomy)
                member.hungry = False
                continue
            segment = unowned.popleft()
            segment.ready = False
            if segment.owner is not None or segment.current is not None or not segment.queue:
                continue  # taken, or given back since it was queued
            segment.owner = member
            member.segments.add(segment)
            entry = segment.current = segment.queue.popleft()
            if mine is None:
                out[member] = [entry]
            else:
                mine.append(entry)
            heapq.heapreplace(roomy, (owned + 1, next(order), member))
        for member, entries in out.items():
            self._deliver(member, entries)

    def _feed(self) -> None:
        """NONE: members with room take waiting records, in turn."""
        hungry, waiting = self._hungry, self._waiting
        while hungry and waiting and self.failed is None:
            member = hungry[0]
            if member.live:
                self._pump(member)
            if not member.live or len(member.held) >= member.max_in_flight:
                hungry.popleft()
                member.hungry = False

    def _pump(self, member: Member) -> None:
        room = member.max_in_flight - len(member.held)
        if room <= 0 or self.failed is not None:
            return
        out: list[Entry] = []
        if self._per_segment:
            ready = member.ready
            while room and ready:
                segment = ready.popleft()
                segment.ready = False
                if segment.owner is member and segment.current is None and segment.queue:
                    entry = segment.current = segment.queue.popleft()
                    out.append(entry)
                    room -= 1
        else:
            waiting = self._waiting
            while room and waiting:
                out.append(waiting.popleft())
                room -= 1
        if out:
            self._deliver(member, out)

    def _deliver(self, member: Member, entries: list[Entry]) -> None:
        """Hands ``entries`` to ``member``: held by it (they count toward its
        max_in_flight) and queued in its outbox. A delivery counts (its attempt,
        its ack timeout) once it is sent (:meth:`sent`): records waiting behind
        a slow stream are not delivered yet, so they neither time out nor use
        attempts up unseen."""
        held, outbox = member.held, member.outbox
        most = self.config.max_attempts
        parked = 0
        for entry in entries:
            if entry.attempt >= most:
                # Delivered max_attempts times already (its park write failed,
                # or an earlier dispatcher delivered it): never once more.
                self._park(entry)
                parked += 1
                continue
            entry.state = IN_FLIGHT
            entry.holder = member
            held[entry.position] = entry
            entry.queued = True
            outbox.append(entry)
        if parked:
            self._kick()
            if parked == len(entries):
                return
        member.wake()

    def sent(self, entries: list[Entry]) -> None:
        """``entries`` leave their member's outbox for its stream: each is
        delivered once more, and its ack timeout starts."""
        deadline = self._clock() + self._ack_timeout
        deadlines = self._deadlines
        again = 0
        for entry in entries:
            entry.queued = False
            entry.attempt += 1
            if entry.attempt > 1:
                again += 1
            entry.deadline = deadline
            deadlines[entry] = None
        self.delivered += len(entries)
        self.redelivered += again
        self._arm(deadline)

    def _requeue(self, entry: Entry) -> None:
        """Puts an entry no longer delivered back first in line (delivered again at once)."""
        entry.state = WAITING
        entry.holder = None
        if self._per_segment:
            segment = self._segments[entry.segment]
            segment.current = None
            segment.queue.appendleft(entry)
            self._offer(segment, first=True)
        else:
            self._waiting.appendleft(entry)
            self._feed()

    # -- acks, nacks, timeouts ------------------------------------------------------

    # An answer settles only a delivery already sent to its member (not
    # ``queued``): one still in the outbox cannot be what the member answers,
    # so the answer is a late one for an earlier delivery (say an ack sent
    # after the member nacked that one) and is ignored, as the contract
    # ignores answers for records the member does not hold.

    def ack(self, member: Member, positions: Iterable[int]) -> None:
        held, deadlines, pending = member.held, self._deadlines, self._pending
        before = len(pending)
        for position in positions:
            entry = held.get(position)
            if entry is not None and entry.state is IN_FLIGHT and not entry.queued:
                entry.state = SETTLING
                del deadlines[entry]
                pending.append(entry)
        if len(pending) > before:
            self._kick()

    def nack(self, member: Member, positions: Iterable[int], park: bool, reason: str) -> None:
        held = member.held
        now = self._clock()
        for position in positions:
            entry = held.get(position)
            if entry is None or entry.state is not IN_FLIGHT or entry.queued:
                continue
            del self._deadlines[entry]
            entry.reason = reason
            if park or entry.attempt >= self.config.max_attempts:
                self._park(entry)
            else:
                self._retry(entry, now)
        self._flush()
        self._feed()
        self._kick()

    def _park(self, entry: Entry) -> None:
        entry.state = SETTLING
        entry.park = True
        self._pending.append(entry)
        self._parks_pending += 1

    def _retry(self, entry: Entry, now: float) -> None:
        member = entry.holder
        if member is not None:
            del member.held[entry.position]
            self._has_room(member)
        entry.state = WAITING
        entry.holder = None
        entry.not_before = now + retry_delay(entry.attempt)
        heapq.heappush(self._retries, (entry.not_before, next(self._retry_order), entry))
        if self._per_segment:
            segment = self._segments[entry.segment]
            segment.current = None
            segment.queue.appendleft(entry)  # offered when due
        self._arm(entry.not_before)

    def _timed_out(self, entry: Entry) -> None:
        member = entry.holder
        if member is not None and entry.attempt < self.config.max_attempts:
            del member.held[entry.position]
            self._has_room(member)
        self._again(entry)

    def _again(self, entry: Entry) -> None:
        """A delivery ended unanswered (timed out, its member left): parked
        after its max_attempts-th, else delivered again at once."""
        if entry.attempt >= self.config.max_attempts:
            self._park(entry)
        else:
            self._requeue(entry)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        delay = max(0.0, when - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)
        self._timer_at = when

    def _on_timer(self) -> None:
        self._timer = None
        now = self._clock()
        deadlines = self._deadlines
        while deadlines:
            entry = next(iter(deadlines))
            if entry.deadline > now:
                break
            del deadlines[entry]
            self._timed_out(entry)
        retries = self._retries
        while retries and retries[0][0] <= now:
            entry = heapq.heappop(retries)[2]
            if entry.state is not WAITING or not entry.not_before:
                continue
            entry.not_before = 0.0
            if self._per_segment:
                self._offer(self._segments[entry.segment])
            else:
                self._waiting.appendleft(entry)
        self._flush()
        self._feed()
        self._kick()
        if deadlines:
            self._arm(next(iter(deadlines)).deadline)
        if retries:
            self._arm(retries[0][0])

    # -- settling -----------------------------------------------------------------

    def _kick(self) -> None:
        # Also once failed: what members acked is still worth writing.
        if self._writer is None and self._pending:
            self._writer = asyncio.create_task(self._write(), name=f"group {self.name} settle")

    async def _write(self) -> None:
        try:
            while self._pending:
                batch, parks = self._next_write()
                window = self.window
                for entry in batch:
                    entry.state = WRITING
                through = window.through_after_writing()
                settled = [entry.position for entry in batch if entry.position > through]
                settled.sort()
                parked = None
                if parks:
                    bodies = [parking.body(e.stored, e.attempt, e.reason) for e in parks]
                    config = self.config
                    parked = parking.transaction(
                        config.dead_letter_space, config.dead_letter_segment, bodies
                    )
                try:
                    await self._store.settle_group(self.space, self.name, through, settled, parked)
                except NotFound as exc:
                    self.fail(exc)
                    return
                except StreamsError as exc:
                    log.warning(
                        "group %r of space %r: settling %d records failed, delivering them "
                        "again (parking those at their last attempt): %s",
                        self.name,
                        self.space,
                        len(batch),
                        exc,
                    )
                    self._unsettle(batch)
                    # Not at once: a record at its last attempt comes back as a park
                    # straight away, and a failing store often fails without waiting.
                    await asyncio.sleep(RETRY_FIRST)
                    continue
                self._settled(batch)
        except Exception as exc:
            log.exception("group %r of space %r: settling failed", self.name, self.space)
            self.fail(exc)
        finally:
            self._writer = None

    def _next_write(self) -> tuple[list[Entry], list[Entry]]:
        """What the next settle write takes: every ack pending, and parks up
        to what one Produce may append."""
        pending = self._pending
        if not self._parks_pending:  # acks only (the usual case): all of them
            self._pending = []
            return pending, []
        most = self._limits.max_records_per_produce
        batch: list[Entry] = []
        parks: list[Entry] = []
        later: list[Entry] = []
        for entry in pending:
            if entry.park:
                if len(parks) == most:
                    later.append(entry)
                    continue
                parks.append(entry)
            batch.append(entry)
        self._pending = later
        self._parks_pending -= len(parks)
        return batch, parks

    def _settled(self, batch: list[Entry]) -> None:
        self.window.remove(batch)
        parked = 0
        members: set[Member] = set()
        per_segment, segments, dirty = self._per_segment, self._segments, self._dirty
        for entry in batch:
            parked += entry.park
            member = entry.holder
            if member is not None:
                del member.held[entry.position]
                members.add(member)
                entry.holder = None
            if not per_segment:
                continue
            segment = segments[entry.segment]
            segment.current = None
            if not segment.queue:
                self._free(segment)
                continue
            owner = segment.owner
            if segment.queue[0].not_before or owner is None or segment.ready:
                self._offer(segment)
                continue
            # The usual case inline (see _offer): the next record is ready now.
            segment.ready = True
            owner.ready.append(segment)
            if not owner.dirty:
                owner.dirty = True
                dirty.append(owner)
        for member in members:
            self._has_room(member)
        self.parked += parked
        self.acked += len(batch) - parked
        self._room.set()
        self._flush()
        self._feed()

    def _unsettle(self, batch: list[Entry]) -> None:
        """A settle write failed: its records are delivered again."""
        for entry in batch:
            entry.park = False
            member = entry.holder
            if member is not None:
                del member.held[entry.position]
                self._has_room(member)
            self._requeue(entry)
        self._flush()
        self._feed()

    # -- numbers ---------------------------------------------------------------------

    def in_flight(self) -> int:
        return sum(len(member.held) for member in self.members.values())
