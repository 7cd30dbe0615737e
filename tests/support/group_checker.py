"""The consumer-group contract checked from what members see on the wire.

``GroupChecker`` is fed every event of a run in the order the test observed
it (one event loop, so the order is total and causal: an ack is recorded
before it is sent, a delivery after it arrived), and says which rules of the
contract's "Consumer groups" section were broken:

- per segment (``ORDERING_PER_SEGMENT``): a segment's next record reaches a
  member only after the previous one was acked or parked: an ack or park nack
  sent by the member holding it, or its last allowed attempt (the server parks
  that one itself on a timeout or a retry nack). Checked at the end, when the
  dead-letter segment tells which records the server parked on its own;
- acks and parks are durable before they take effect: once a segment's next
  record was delivered, or GetGroup said ``acked_through`` covers a position,
  that record is never delivered again, not even after a restart;
- a segment never moves from a live member while its head record is in
  flight or waiting for a retry (it moves when its member leaves, or once free);
- ``attempt`` is 1 on the first delivery and counts up by one per delivery
  (a jump only where a member's stream ended, which may have eaten one), never
  past ``max_attempts``; a member never holds more than its ``max_in_flight``;
- at the end: every record of the space was delivered, and is parked (exactly
  once, with the origin metadata) if and only if a park nack or its last
  attempt settled it, and acked otherwise; GetGroup's numbers agree.

Members are named by a key of the test's (``m7``); the ids the server gives
are checked for uniqueness and against GetGroup's member list.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Sequence

from streams.v1 import streams_pb2 as pb

PARKED = "streams-parked-"
PARKED_KEYS = tuple(
    PARKED + k for k in ("space", "segment", "sequence", "position", "attempts", "reason")
)
ACK, PARK, RETRY = "ack", "park", "retry"
PER_SEGMENT, NONE = "per_segment", "none"


@dataclasses.dataclass
class Claim:
    """An ack or nack the holder of a record sent for it."""

    at: int
    member: str
    kind: str
    reason: str
    attempt: int
    life: int

    def settles(self, max_attempts: int) -> bool:
        """True when it settles the record if it takes effect."""
        return self.kind in (ACK, PARK) or self.attempt >= max_attempts


@dataclasses.dataclass
class Seen:
    """What members saw of one position."""

    record: pb.Record
    deliveries: list[tuple[int, str, int, int]] = dataclasses.field(default_factory=list)
    claims: list[Claim] = dataclasses.field(default_factory=list)
    holder: str | None = None
    # The last delivery that did not cross an answer (its event).
    last_at: int = 0
    crossed: bool = False
    attempt: int = 0
    attempt_epoch: int = -1
    ends_seen: int = 0


@dataclasses.dataclass
class MemberView:
    key: str
    member_id: str
    max_in_flight: int
    life: int
    alive: bool = True
    held: set[int] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class SegmentView:
    top: int = 0  # highest sequence delivered so far (any life)
    head: int = 0  # the position of that record
    owner: str | None = None


def same_record(a: pb.Record, b: pb.Record) -> bool:
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


class GroupChecker:
    def __init__(self, ordering: str, max_attempts: int, space: str) -> None:
        self.ordering = ordering
        self.max_attempts = max_attempts
        self.space = space
        self.violations: list[str] = []
        # Every event as text, for the report of a failed run.
        self.trace: list[str] = []
        self.event = 0
        self.life = 0
        self.ends = 0
        # Attempts are counted by the server's dispatcher of the group, which
        # lives while the group has members: a server restart or a moment
        # with no member starts a new epoch, where attempts start again at 1.
        self.epoch = 0
        self.epoch_start_ends = 0
        self.members: dict[str, MemberView] = {}
        self.ids: dict[str, str] = {}
        self.positions: dict[int, Seen] = {}
        self.segments: dict[str, SegmentView] = {}
        # (segment, sequence, event): that record had to be settled before the event.
        self.obligations: list[tuple[str, int, int, str]] = []
        # (event, acked_through) as GetGroup answered, in order.
        self.observations: list[tuple[int, int]] = []
        self.durable_through = 0
        self.parked_seen = 0
        self.listed_ids: set[str] = set()
        self.stats = dict.fromkeys(
            (
                "deliveries",
                "redeliveries",
                "acks",
                "nacks retry",
                "nacks park",
                "stray answers",
                "late deliveries",
                "members joined",
                "members ended",
                "observations",
                "obligations",
                "moves",
                "crossed",
                "durable at a kill",
                "unsettled at a kill",
            ),
            0,
        )

    # -- events ----------------------------------------------------------------

    def _tick(self, text: str = "") -> int:
        self.event += 1
        self.trace.append(f"{self.event} {text}")
        return self.event

    def violation(self, text: str) -> None:
        self.violations.append(f"[event {self.event}, life {self.life}] {text}")

    def joined(self, key: str, member_id: str, max_in_flight: int) -> None:
        self._tick(f"{key} joined as {member_id} max_in_flight {max_in_flight}")
        self.stats["members joined"] += 1
        if not member_id:
            self.violation(f"{key} joined with an empty member_id")
        if member_id in self.ids:
            self.violation(
                f"{key} joined with member_id {member_id!r}, already {self.ids[member_id]}'s"
            )
        self.ids[member_id] = key
        self.members[key] = MemberView(key, member_id, max_in_flight or 100, self.life)

    def ended(self, key: str) -> None:
        """The member's stream ends (recorded before the test cancels or
        half-closes it, or when the test sees it end)."""
        self._tick(f"{key} ended")
        m = self.members.get(key)
        if m is None or not m.alive:
            return
        self.stats["members ended"] += 1
        m.alive = False
        self.ends += 1
        for p in m.held:
            if self.positions[p].holder == key:
                self.positions[p].holder = None
        m.held.clear()
        if not any(v.alive for v in self.members.values()):
            self._new_epoch()

    def _new_epoch(self) -> None:
        self.epoch += 1
        self.epoch_start_ends = self.ends

    def new_life(self) -> None:
        """The server is about to be killed: every member's stream ends."""
        self._tick("kill -9")
        # Figures: what the kill finds durably settled (never to come again)
        # and what it finds delivered and unanswered (to come again).
        for p, seen in self.positions.items():
            seg = self.segments.get(seen.record.segment)
            if p <= self.durable_through or (seg and seg.top > seen.record.sequence):
                self.stats["durable at a kill"] += 1
            elif not any(c.life == self.life and c.settles(self.max_attempts) for c in seen.claims):
                self.stats["unsettled at a kill"] += 1
        for key, m in self.members.items():
            if m.alive:
                self.ended(key)
        self.life += 1
        self._new_epoch()

    def alive(self, key: str) -> bool:
        m = self.members.get(key)
        return m is not None and m.alive

    def delivered(self, key: str, record: pb.Record, attempt: int) -> None:
        e = self._tick(
            f"{key} got {record.segment}/{record.sequence} @{record.position} #{attempt}"
        )
        self.stats["deliveries"] += 1
        m = self.members[key]
        p = record.position
        where = f"{record.segment}/{record.sequence} (position {p}) attempt {attempt} to {key}"
        seen = self.positions.get(p)
        if seen is None:
            seen = self.positions[p] = Seen(record)
        else:
            self.stats["redeliveries"] += 1
            if not same_record(seen.record, record):
                self.violation(f"{where}: not the record delivered at that position before")
        if record.space != self.space:
            self.violation(f"{where}: a record of space {record.space!r}")
        # A redelivery after a timeout that crossed this member's answer to the
        # attempt before (the answer may have settled it meanwhile).
        crossed = (
            seen.attempt_epoch == self.epoch
            and seen.last_at > 0
            and any(
                c.member == key
                and c.at > seen.last_at
                and c.attempt == attempt - 1
                and c.kind in (ACK, PARK)
                for c in seen.claims
            )
        )
        # Attempts.
        if not 1 <= attempt <= self.max_attempts:
            self.violation(f"{where}: attempt outside 1..max_attempts {self.max_attempts}")
        if not m.alive:
            # Late: on the stream of a member that has ended (killed, or still
            # reading after its half-close), sent before the server saw the end.
            # Streams are ordered one by one, not with each other: the record's
            # redelivery to another member may have been read first, so this
            # one says nothing of who holds the record or where it stands.
            seen.deliveries.append((e, key, attempt, self.life))
            self.stats["late deliveries"] += 1
            return
        if seen.attempt_epoch == self.epoch:
            if attempt <= seen.attempt:
                self.violation(f"{where}: attempt after attempt {seen.attempt}")
            elif attempt > seen.attempt + 1 and self.ends == seen.ends_seen:
                self.violation(f"{where}: skipped from attempt {seen.attempt}, no stream ended")
        elif attempt != 1 and self.ends == self.epoch_start_ends:
            self.violation(f"{where}: the first delivery since the group's members came is not 1")
        seen.attempt, seen.attempt_epoch, seen.ends_seen = attempt, self.epoch, self.ends
        seen.deliveries.append((e, key, attempt, self.life))
        seen.crossed = crossed
        if crossed:
            self.stats["crossed"] += 1
            seg = self.segments.get(record.segment)
            if (
                self.ordering == PER_SEGMENT
                and seg
                and seg.top > record.sequence
                and seg.owner == key
            ):
                # One stream is ordered: what was sent before the
                # settlement arrives before the next record.
                self.violation(
                    f"{where}: delivered again after {record.segment}/{seg.top} on the same stream"
                )
            seen.holder = key
            if m.alive:
                m.held.add(p)
            return
        seen.last_at = e
        # Durable settlements are final.
        if p <= self.durable_through:
            self.violation(f"{where}: GetGroup said acked_through {self.durable_through} before")
        # The previous holder.
        prev = seen.holder
        if prev is not None and prev != key:
            if self.ordering == PER_SEGMENT and self.members[prev].alive:
                self.violation(f"{where}: still in flight at live member {prev}")
            self.members[prev].held.discard(p)
        seen.holder = key
        if m.alive:  # else it left: the server gives the record to another
            m.held.add(p)
        if self.ordering == PER_SEGMENT:
            self._per_segment(key, record, e, where)

    def _head_settle_claimed(self, head: Seen) -> bool:
        if head.attempt >= self.max_attempts and head.attempt_epoch == self.epoch:
            return True  # the server parks it itself once it times out
        return any(c.at > head.last_at and c.settles(self.max_attempts) for c in head.claims)

    def _per_segment(self, key: str, record: pb.Record, e: int, where: str) -> None:
        seg = self.segments.setdefault(record.segment, SegmentView())
        n = record.sequence
        if n < seg.top:
            self.violation(
                f"{where}: delivered again after {record.segment}/{seg.top} was delivered "
                f"(its settlement took effect, so it was durable)"
            )
        owner = seg.owner
        if owner is not None and owner != key and self.members[owner].alive:
            self.stats["moves"] += 1
            if not self._head_settle_claimed(self.positions[seg.head]):
                self.violation(
                    f"{where}: segment moved from live member {owner} while "
                    f"{record.segment}/{seg.top} was not acked or parked"
                )
        if n > seg.top:
            for k in range(max(seg.top, 1), n):
                self.obligations.append((record.segment, k, e, where))
                self.stats["obligations"] += 1
            seg.top, seg.head = n, record.position
        seg.owner = key

    def answered(self, key: str, positions: Iterable[int], kind: str, reason: str = "") -> None:
        """The member is about to send an ack (kind ACK) or nack (PARK, RETRY)."""
        positions = list(positions)
        e = self._tick(f"{key} {kind} {positions} {reason[:20]!r}")
        for p in positions:
            seen = self.positions.get(p)
            if seen is None or seen.holder != key:
                self.stats["stray answers"] += 1
                continue
            self.stats[{ACK: "acks", PARK: "nacks park", RETRY: "nacks retry"}[kind]] += 1
            seen.claims.append(Claim(e, key, kind, reason, seen.attempt, self.life))
            seen.holder = None
            self.members[key].held.discard(p)

    def observed(self, info: pb.GroupInfo) -> None:
        """A GetGroup answer, recorded when it arrived."""
        e = self._tick(
            f"GetGroup acked_through {info.acked_through} in_flight {info.in_flight} "
            f"members {[(m.id, m.segments, m.in_flight) for m in info.members]}"
        )
        self.stats["observations"] += 1
        if info.acked_through < self.durable_through:
            self.violation(
                f"GetGroup acked_through went back from {self.durable_through} to "
                f"{info.acked_through}"
            )
        if info.parked < self.parked_seen:
            self.violation(f"GetGroup parked went back from {self.parked_seen} to {info.parked}")
        if info.acked_through > info.last_position:
            self.violation(f"GetGroup acked_through {info.acked_through} > {info.last_position}")
        if info.in_flight != sum(m.in_flight for m in info.members):
            self.violation(f"GetGroup in_flight {info.in_flight} != the sum over its members")
        for gm in info.members:
            if gm.id not in self.ids:
                # Its joined message may still be on its way: checked at the end.
                self.listed_ids.add(gm.id)
            elif gm.in_flight > self.members[self.ids[gm.id]].max_in_flight:
                self.violation(f"GetGroup: member {gm.id} has {gm.in_flight} in flight")
        if self.ordering == PER_SEGMENT:
            # At most one record of a segment in flight: in flight <= owned segments.
            for gm in info.members:
                if gm.in_flight > gm.segments:
                    self.violation(
                        f"GetGroup: member {gm.id} has {gm.in_flight} in flight in "
                        f"{gm.segments} segments"
                    )
        self.durable_through = max(self.durable_through, info.acked_through)
        self.parked_seen = max(self.parked_seen, info.parked)
        if not self.observations or self.observations[-1][1] < info.acked_through:
            self.observations.append((e, info.acked_through))

    # -- the end ---------------------------------------------------------------

    def finish(
        self, space_records: Sequence[pb.Record], parked: Sequence[pb.Record], info: pb.GroupInfo
    ) -> list[str]:
        """Checks the end state: ``space_records`` the whole space (read once
        everything was settled and every member left), ``parked`` the group's
        dead-letter segment, ``info`` GetGroup's last answer. Returns all
        violations of the run."""
        for member_id in self.listed_ids - self.ids.keys():
            self.violation(f"GetGroup listed member {member_id!r}, which never joined")
        by_position = {r.position: r for r in space_records}
        by_sequence = {(r.segment, r.sequence): r.position for r in space_records}
        last = max(by_position, default=0)
        if sorted(by_position) != list(range(1, last + 1)):
            self.violation(f"the space's positions are not 1..{last}")
        if info.acked_through != last or info.last_position != last:
            self.violation(
                f"in the end GetGroup says acked_through {info.acked_through}, last_position "
                f"{info.last_position}; the space's last position is {last}"
            )
        if info.in_flight or info.members:
            self.violation(f"in the end, with no member, GetGroup says {info}")
        parked_at = self._check_parked(parked, by_position)
        if info.parked != len(parked):
            self.violation(f"GetGroup parked {info.parked}, the dead-letter segment {len(parked)}")
        exhausted = {p for p, a in parked_at.items() if a == self.max_attempts}
        for p, record in by_position.items():
            self._check_fate(p, record, parked_at)
        for segment, k, e, where in self.obligations:
            at = by_sequence.get((segment, k))
            if at is None:
                self.violation(f"{where}: {segment}/{k} is not in the space")
                continue
            p = at
            if p in exhausted:
                continue
            seen = self.positions.get(p)
            if seen is None or not any(
                c.at < e and c.settles(self.max_attempts) for c in seen.claims
            ):
                holder = seen and [(d[1], d[2]) for d in seen.deliveries]
                self.violation(
                    f"{where}: delivered before {segment}/{k} (position {p}) was acked or "
                    f"parked (its deliveries: {holder})"
                )
        self._check_observations(by_position, exhausted)
        return self.violations

    def _check_parked(
        self, parked: Sequence[pb.Record], by_position: dict[int, pb.Record]
    ) -> dict[int, int]:
        """Each parked record once, as it was, with its origin; returns position -> attempts."""
        out: dict[int, int] = {}
        for r in parked:
            meta = dict(r.metadata)
            missing = [k for k in PARKED_KEYS if k not in meta]
            if missing:
                self.violation(f"parked record {r.position} lacks {missing}: {meta}")
                continue
            try:
                p = int(meta[PARKED + "position"])
                attempts = int(meta[PARKED + "attempts"])
            except ValueError:
                self.violation(f"parked record {r.position}: numbers not decimal: {meta}")
                continue
            where = f"parked record of position {p}"
            if p in out:
                self.violation(f"{where}: parked twice")
            out[p] = attempts
            origin = by_position.get(p)
            if origin is None:
                self.violation(f"{where}: no such record in the space")
                continue
            want = {
                PARKED + "space": self.space,
                PARKED + "segment": origin.segment,
                PARKED + "sequence": str(origin.sequence),
                PARKED + "position": str(p),
            }
            got = {k: meta[k] for k in want}
            if got != want:
                self.violation(f"{where}: origin metadata {got}, want {want}")
            kept = {k: v for k, v in origin.metadata.items() if k not in PARKED_KEYS}
            if {k: v for k, v in meta.items() if k not in PARKED_KEYS} != kept:
                self.violation(
                    f"{where}: metadata {meta}, the record's was {dict(origin.metadata)}"
                )
            if r.payload != origin.payload:
                self.violation(f"{where}: payload differs from the record's")
            if not 1 <= attempts <= self.max_attempts:
                self.violation(f"{where}: attempts {attempts}")
            self._check_reason(p, attempts, meta[PARKED + "reason"])
        return out

    def _check_reason(self, p: int, attempts: int, reason: str) -> None:
        seen = self.positions.get(p)
        if seen is None:
            if reason:
                self.violation(f"parked record of position {p}: never delivered, reason {reason!r}")
            return
        nacks = [c for c in seen.claims if c.kind in (PARK, RETRY)]
        if reason and reason not in {c.reason for c in nacks}:
            self.violation(f"parked record of position {p}: reason {reason!r} was never sent")
        final = [c for c in seen.claims if c.at > seen.last_at]
        if final and final[-1].kind == PARK and attempts < self.max_attempts:
            if reason != final[-1].reason:
                self.violation(
                    f"parked record of position {p}: reason {reason!r}, its park nack said "
                    f"{final[-1].reason!r}"
                )
            if attempts < final[-1].attempt:
                self.violation(
                    f"parked record of position {p}: attempts {attempts}, parked at attempt "
                    f"{final[-1].attempt}"
                )

    def _check_fate(self, p: int, record: pb.Record, parked_at: dict[int, int]) -> None:
        seen = self.positions.get(p)
        where = f"{record.segment}/{record.sequence} (position {p})"
        if seen is None:
            if parked_at.get(p) != self.max_attempts:
                self.violation(f"{where}: never delivered to a member, yet settled")
            return
        if not same_record(seen.record, record):
            self.violation(f"{where}: delivered content differs from the stored record")
        last_life = seen.deliveries[-1][3]
        claims = [c for c in seen.claims if c.life == last_life]
        if p in parked_at:
            if parked_at[p] == self.max_attempts:
                return
            if not any(c.kind == PARK for c in claims):
                self.violation(f"{where}: parked after {parked_at[p]} attempts, no park nack")
        elif not any(c.kind == ACK for c in claims):
            kinds = [(c.kind, c.attempt) for c in seen.claims]
            self.violation(f"{where}: settled and not parked, but never acked (claims {kinds})")

    def _check_observations(self, by_position: dict[int, pb.Record], exhausted: set[int]) -> None:
        """Every position up to an acked_through GetGroup reported had an ack or
        park sent before that answer arrived."""
        if not self.observations:
            return
        marks = [a for _, a in self.observations]
        for p in by_position:
            i = bisect.bisect_left(marks, p)
            if i == len(marks) or p in exhausted:
                continue
            e = self.observations[i][0]
            seen = self.positions.get(p)
            if seen is None or not any(
                c.at < e and c.settles(self.max_attempts) for c in seen.claims
            ):
                self.violation(
                    f"GetGroup said acked_through {marks[i]} at event {e}; position {p} had "
                    f"no ack or park sent by then"
                )
