"""What clients were told, and a checker of the store against it.

- `Journal`: what producers, committers and removers (Trim, DeleteSegment,
  DeleteSpace) were told (acked) or not told (no answer), thread-safe, across
  server restarts and crashes. Every call is stamped on one logical clock when
  it is sent and when its answer arrives, so that the checker knows which
  writes a delete must have removed (acked before the delete was sent), which
  it may have removed (in flight together) and which it cannot have removed
  (sent after the delete was acked).
- `Follower`: what one follow stream received, by offset.
- `check_store`: reads every space and segment back (reads, peeks, lists,
  infos) and reports each way the stored data differs from the journal and
  from what followers received: a lost acked transaction, a partial or
  duplicated one, holes in the numbers, numbers used twice, timestamps going
  back, a record readable below an acknowledged trim point or after an
  acknowledged delete, infos that disagree with the records, a committed
  offset nobody was told about.

Everything talks to the server through the generated sync stubs.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
from collections import defaultdict
from collections.abc import Iterable

import grpc

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.contract.helpers import ts_key

Stub = pb_grpc.StreamsServiceStub
Ts = tuple[int, int]

# Statuses that only say "the outcome is unknown" (server gone, channel closed, timeout).
UNKNOWN_OUTCOME = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
NEVER = math.inf  # the answer time of a call that got no answer (yet)


def request_records(req: pb.ProduceRequest) -> list[tuple[str, pb.RecordInput]]:
    """(segment, input) in position order: writes, then records."""
    return [(w.segment, r) for w in req.writes for r in w.records]


def record_bytes(r: pb.RecordInput | pb.Record) -> int:
    """A record's size as SpaceInfo/SegmentInfo ``bytes`` count it: its body
    (payload and metadata) as the client serialized it."""
    body = pb.RecordInput(payload=r.payload, metadata=dict(r.metadata))
    return len(body.SerializeToString(deterministic=True))


@dataclasses.dataclass
class Txn:
    """One Produce with a transaction_id, as the producer knows it."""

    request: pb.ProduceRequest
    # The ack, once one was received (from the first attempt or from a retry).
    ack: pb.ProduceResponse | None = None
    # True while no attempt got an answer: it may or may not be stored.
    pending: bool = False
    sent_at: float = 0
    acked_at: float = NEVER

    @property
    def space(self) -> str:
        return self.request.space

    @property
    def txid(self) -> str:
        return self.request.transaction_id

    @property
    def size(self) -> int:
        return sum(len(w.records) for w in self.request.writes)

    @property
    def segments(self) -> set[str]:
        return {w.segment for w in self.request.writes}


@dataclasses.dataclass(frozen=True)
class Expected:
    """One record of a transaction at the numbers it was acked under."""

    segment: str
    sequence: int
    position: int
    ts: Ts
    payload: bytes
    metadata: dict[str, str]


def expected_records(req: pb.ProduceRequest, ack: pb.ProduceResponse) -> list[Expected]:
    """The records an ack says were stored, in position order."""
    first_seq = {a.segment: a.first_sequence for a in ack.acks}
    taken: dict[str, int] = defaultdict(int)
    out = []
    for i, (segment, inp) in enumerate(request_records(req)):
        out.append(
            Expected(
                segment,
                first_seq.get(segment, 0) + taken[segment],
                ack.first_position + i,
                ts_key(ack.timestamp),
                inp.payload,
                dict(inp.metadata),
            )
        )
        taken[segment] += 1
    return out


@dataclasses.dataclass
class Removal:
    """One Trim, DeleteSegment or DeleteSpace, as the remover knows it."""

    request: pb.TrimRequest | pb.DeleteSegmentRequest | pb.DeleteSpaceRequest
    sent_at: float
    acked_at: float = NEVER
    # Trim: the first retained offset the server answered (every offset below is gone).
    first_offset: int = 0
    # Trim answered NOT_FOUND: the target did not exist, nothing was removed.
    not_found: bool = False

    @property
    def space(self) -> str:
        return self.request.space

    @property
    def segment(self) -> str:
        """The segment it acts on; empty: the whole space."""
        return getattr(self.request, "segment", "")

    @property
    def is_trim(self) -> bool:
        return isinstance(self.request, pb.TrimRequest)

    def covers(self, space: str, segment: str) -> bool:
        return self.space == space and self.segment in ("", segment)

    def must_have_removed(self, e: Expected, txn: Txn | None) -> bool:
        """``e`` (of ``txn``) is gone for good once this removal was acknowledged."""
        if self.acked_at == NEVER or self.not_found or not self.covers(self.space, e.segment):
            return False
        if self.is_trim:
            return (e.sequence if self.segment else e.position) < self.first_offset
        # A write acked before the delete was sent was applied before it.
        return txn is not None and txn.acked_at < self.sent_at

    def may_have_removed(self, e: Expected, txn: Txn | None) -> bool:
        if self.not_found or not self.covers(self.space, e.segment):
            return False
        if self.is_trim:
            req: pb.TrimRequest = self.request  # type: ignore[assignment]
            offset = e.sequence if self.segment else e.position
            if offset < self.first_offset:
                return True
            if req.WhichOneof("before") == "before_offset":
                return offset < req.before_offset
            return e.ts < ts_key(req.before_timestamp)
        # Only a write sent after the delete was acked cannot have been removed by it.
        return txn is None or txn.sent_at <= self.acked_at


def commit_key(consumer: str, space: str, segment: str) -> tuple[str, str, str]:
    return (consumer, space, segment)


@dataclasses.dataclass
class CommitState:
    acked: int | None = None  # last acknowledged offset
    unanswered: list[int] = dataclasses.field(default_factory=list)  # later, unanswered tries
    # When the acknowledged commit was sent (0: unknown, as early as can be).
    acked_sent_at: float = 0


class Journal:
    """Thread-safe: what clients were told."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.txns: dict[tuple[str, str], Txn] = {}
        self.commits: dict[tuple[str, str, str], CommitState] = defaultdict(CommitState)
        self.removals: list[Removal] = []
        # Highest acked offsets, per space (position) and per (space, segment) (sequence).
        self.acked_position: dict[str, int] = defaultdict(int)
        self.acked_sequence: dict[tuple[str, str], int] = defaultdict(int)
        self._clock = itertools.count(1)

    def tick(self) -> int:
        """The logical clock: every send and every answer is one step later."""
        with self.lock:
            return next(self._clock)

    def sent(self, req: pb.ProduceRequest) -> Txn:
        txn = Txn(req)
        with self.lock:
            key = (req.space, req.transaction_id)
            assert key not in self.txns, f"workload bug: transaction id {key} reused"
            txn.sent_at = next(self._clock)
            self.txns[key] = txn
        return txn

    def acked(self, txn: Txn, resp: pb.ProduceResponse) -> None:
        with self.lock:
            txn.ack = resp
            txn.pending = False
            txn.acked_at = next(self._clock)
            space = txn.space
            self.acked_position[space] = max(self.acked_position[space], resp.last_position)
            for ack in resp.acks:
                key = (space, ack.segment)
                self.acked_sequence[key] = max(self.acked_sequence[key], ack.last_sequence)

    def unanswered(self, txn: Txn) -> None:
        with self.lock:
            if txn.ack is None:
                txn.pending = True

    def commit_acked(
        self, key: tuple[str, str, str], offset: int, sent_at: float | None = None
    ) -> None:
        """``sent_at``: the clock (`tick`) when the Commit was sent; None: unknown."""
        with self.lock:
            state = self.commits[key]
            state.acked = offset
            state.acked_sent_at = sent_at or 0
            state.unanswered.clear()

    def commit_unanswered(self, key: tuple[str, str, str], offset: int) -> None:
        with self.lock:
            self.commits[key].unanswered.append(offset)

    def pending(self) -> list[Txn]:
        with self.lock:
            return [t for t in self.txns.values() if t.pending]

    # ---- removals -------------------------------------------------------------------

    def removal_sent(
        self, req: pb.TrimRequest | pb.DeleteSegmentRequest | pb.DeleteSpaceRequest
    ) -> Removal:
        with self.lock:
            removal = Removal(req, next(self._clock))
            self.removals.append(removal)
        return removal

    def removal_acked(
        self, removal: Removal, first_offset: int = 0, not_found: bool = False
    ) -> None:
        with self.lock:
            removal.acked_at = next(self._clock)
            removal.first_offset = first_offset
            removal.not_found = not_found

    def removals_of(self, space: str) -> list[Removal]:
        with self.lock:
            return [r for r in self.removals if r.space == space]

    def unanswered_removals(self) -> list[Removal]:
        with self.lock:
            return [r for r in self.removals if r.acked_at == NEVER]

    def must_be_gone(self, e: Expected, txn: Txn | None) -> Removal | None:
        """The acknowledged removal that took ``e`` away for good, if any."""
        for r in self.removals_of(txn.space if txn else ""):
            if r.must_have_removed(e, txn):
                return r
        return None

    def may_be_gone(self, e: Expected, txn: Txn | None, space: str) -> bool:
        return any(r.may_have_removed(e, txn) for r in self.removals_of(space))

    def duplicate_problem(
        self, txn: Txn, resp: pb.ProduceResponse, stored: list[pb.Record]
    ) -> str | None:
        """What is wrong with a duplicate=true answer to a retry of ``txn``,
        given its records ``stored`` before the retry: each record the ack
        names is stored as named, or was removed since."""
        by_position = {r.position: r for r in stored}
        for e in expected_records(txn.request, resp):
            r = by_position.pop(e.position, None)
            if r is None:
                if not self.may_be_gone(e, txn, txn.space):
                    return (
                        f"duplicate ack names position {e.position} ({e.segment}/{e.sequence}), "
                        f"which was not stored, and no removal took it"
                    )
            elif as_expected(r) != e:
                return f"duplicate ack {e} differs from the stored record {record_key(r)}"
        if by_position:
            return f"stored at positions {sorted(by_position)} that the duplicate ack does not name"
        return None


class Follower:
    """What one follower (Consume follow=True) received, by offset.

    With ``gaps`` (the workload trims or deletes) offsets only have to ascend:
    a follower skips what was removed before it got there."""

    def __init__(self, space: str, segment: str, *, gaps: bool = False) -> None:
        self.space = space
        self.segment = segment
        self.gaps = gaps
        self.lock = threading.Lock()
        self.records: list[pb.Record] = []  # in offset order
        self.errors: list[str] = []
        self.reconnects = 0

    @property
    def next_offset(self) -> int:
        with self.lock:
            return self.offset_of(self.records[-1]) + 1 if self.records else 1

    def offset_of(self, record: pb.Record) -> int:
        return record.sequence if self.segment else record.position

    def received(self, records: Iterable[pb.Record]) -> None:
        with self.lock:
            for r in records:
                last = self.offset_of(self.records[-1]) if self.records else 0
                got = self.offset_of(r)
                if got != last + 1 and not (self.gaps and got > last):
                    self.errors.append(
                        f"follower {self.space}/{self.segment!r}: expected offset {last + 1}, "
                        f"got {got} (gap or duplicate)"
                    )
                    raise AssertionError(self.errors[-1])
                if r.space != self.space or (self.segment and r.segment != self.segment):
                    self.errors.append(f"follower {self.space}/{self.segment!r} got {r}")
                    raise AssertionError(self.errors[-1])
                self.records.append(r)


def read_target(
    stub: Stub, space: str, segment: str = "", timeout: float = 30.0
) -> list[pb.Record]:
    """Every stored record of a space or segment (one non-follow Consume)."""
    out: list[pb.Record] = []
    req = pb.ConsumeRequest(space=space, segment=segment, from_offset=1)
    for resp in stub.Consume(req, timeout=timeout):
        assert len(resp.records) >= 1, "a ConsumeResponse must carry at least one record"
        out.extend(resp.records)
    return out


def list_segments(stub: Stub, space: str, page_size: int = 1000) -> list[pb.SegmentInfo]:
    out: list[pb.SegmentInfo] = []
    token = ""
    while True:
        resp = stub.ListSegments(
            pb.ListSegmentsRequest(space=space, page_size=page_size, page_token=token), timeout=30
        )
        out.extend(resp.segments)
        token = resp.next_page_token
        if not token:
            return out


def _found(fn: object) -> object | None:
    """The answer of a Get/Peek call, or None on NOT_FOUND."""
    try:
        return fn()  # type: ignore[operator]
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None


@dataclasses.dataclass
class SpaceView:
    records: list[pb.Record]  # by position
    segments: dict[str, list[pb.Record]]  # by sequence
    infos: dict[str, pb.SegmentInfo]
    # With ``catalog``: GetSpace (None: NOT_FOUND), GetSegment of each listed
    # segment, and the Peek of the space and of each segment (None: NOT_FOUND).
    space_info: pb.SpaceInfo | None = None
    segment_infos: dict[str, pb.SegmentInfo | None] = dataclasses.field(default_factory=dict)
    peeks: dict[str, pb.Record | None] = dataclasses.field(default_factory=dict)


def read_all(stub: Stub, spaces: Iterable[str], *, catalog: bool = False) -> dict[str, SpaceView]:
    views: dict[str, SpaceView] = {}
    for space in spaces:
        records = read_target(stub, space)
        infos = {i.name: i for i in list_segments(stub, space)}
        segments = {name: read_target(stub, space, name) for name in infos}
        view = SpaceView(records, segments, infos)
        if catalog:
            got = _found(lambda s=space: stub.GetSpace(pb.GetSpaceRequest(space=s), timeout=30))
            view.space_info = None if got is None else got.space  # type: ignore[attr-defined]
            for name in ("", *infos):
                peek = _found(
                    lambda s=space, n=name: stub.Peek(
                        pb.PeekRequest(space=s, segment=n), timeout=30
                    )
                )
                view.peeks[name] = None if peek is None else peek.record  # type: ignore[attr-defined]
                if name:
                    got = _found(
                        lambda s=space, n=name: stub.GetSegment(
                            pb.GetSegmentRequest(space=s, segment=n), timeout=30
                        )
                    )
                    view.segment_infos[name] = None if got is None else got.segment  # type: ignore[attr-defined]
        views[space] = view
    return views


def record_key(r: pb.Record) -> tuple[object, ...]:
    """Everything a record carries, comparable (metadata as a dict)."""
    return (
        r.space,
        r.segment,
        r.sequence,
        r.position,
        ts_key(r.timestamp),
        r.payload,
        dict(r.metadata),
        r.transaction_id,
    )


def as_expected(r: pb.Record) -> Expected:
    return Expected(
        r.segment, r.sequence, r.position, ts_key(r.timestamp), r.payload, dict(r.metadata)
    )


@dataclasses.dataclass
class CheckReport:
    problems: list[str] = dataclasses.field(default_factory=list)
    transactions_checked: int = 0
    acked_present: int = 0
    pending_present: int = 0
    pending_absent: int = 0
    records: int = 0
    follower_records_checked: int = 0
    offsets_checked: int = 0
    # Acked records found removed (by a trim or a delete the journal allows).
    removed_records: int = 0
    # Records checked to be gone because an acknowledged removal took them.
    removal_checks: int = 0
    # (space, txid) -> the stored records of each transaction without an ack ([] = absent).
    pending_stored: dict[tuple[str, str], list[pb.Record]] = dataclasses.field(default_factory=dict)
    # (consumer, space, segment) -> the offset read back (None: NOT_FOUND).
    offsets_read: dict[tuple[str, str, str], int | None] = dataclasses.field(default_factory=dict)

    def problem(self, text: str) -> None:
        if len(self.problems) < 200:
            self.problems.append(text)


def _check_dense(report: CheckReport, what: str, numbers: list[int], first: int = 1) -> None:
    if numbers != list(range(first, first + len(numbers))):
        gaps = [(i + first, n) for i, n in enumerate(numbers) if n != i + first][:5]
        report.problem(f"{what}: not dense from {first} ({len(numbers)} records; first bad {gaps})")


def check_store(
    stub: Stub,
    journal: Journal,
    spaces: Iterable[str],
    followers: Iterable[Follower] = (),
    *,
    catalog: bool | None = None,
) -> tuple[CheckReport, dict[str, SpaceView]]:
    """Reads everything back and checks it against the journal and the followers.

    ``catalog`` (default: when the journal holds removals) also checks
    GetSpace, GetSegment and Peek against the records read. Call only while
    no worker is running (the gate is closed).
    """
    report = CheckReport()
    spaces = list(spaces)
    with journal.lock:
        txns = dict(journal.txns)
        commits = {
            k: dataclasses.replace(v, unanswered=list(v.unanswered))
            for k, v in journal.commits.items()
        }
        removals = list(journal.removals)
    if catalog is None:
        catalog = bool(removals)
    views = read_all(stub, spaces, catalog=catalog)
    _check_numbers_unique(report, txns.values())

    for space, view in views.items():
        removed = [r for r in removals if r.space == space]
        report.records += len(view.records)
        _check_space_read(report, space, view, removed)
        if catalog:
            _check_catalog(report, journal, space, view)
        _check_deleted_are_gone(report, space, view, txns, removed)

        # Group by transaction id.
        groups: dict[str, list[pb.Record]] = defaultdict(list)
        for r in view.records:
            groups[r.transaction_id].append(r)
        for txid, recs in groups.items():
            if (space, txid) not in txns:
                report.problem(
                    f"space {space}: {len(recs)} record(s) of transaction {txid!r} that no "
                    f"producer sent (positions {recs[0].position}..)"
                )
        for (sp, txid), txn in txns.items():
            if sp != space:
                continue
            recs = groups.get(txid, [])
            if txn.ack is not None:
                report.transactions_checked += 1
                _check_acked(report, journal, txn, recs)
            elif txn.pending:
                report.transactions_checked += 1
                report.pending_stored[(space, txid)] = recs
                if recs:
                    report.pending_present += 1
                    _check_pending(report, journal, txn, recs)
                else:
                    report.pending_absent += 1

    _check_followers(report, journal, views, txns, followers)
    _check_offsets(report, stub, commits, removals)
    return report, views


def _check_numbers_unique(report: CheckReport, txns: Iterable[Txn]) -> None:
    """No position of a space, no sequence of a segment, is ever acked twice
    (not even after a delete)."""
    positions: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    sequences: dict[tuple[str, str], list[tuple[int, int, str]]] = defaultdict(list)
    for txn in txns:
        if txn.ack is None:
            continue
        positions[txn.space].append((txn.ack.first_position, txn.ack.last_position, txn.txid))
        for a in txn.ack.acks:
            sequences[(txn.space, a.segment)].append((a.first_sequence, a.last_sequence, txn.txid))
    for what, table in (("positions of space", positions), ("sequences of", sequences)):
        for where, ranges in table.items():
            ranges.sort()
            for (_, last, a), (first, _, b) in itertools.pairwise(ranges):
                if first <= last:
                    report.problem(f"{what} {where}: {a} and {b} were both acked number {first}")


def _check_space_read(
    report: CheckReport, space: str, view: SpaceView, removed: list[Removal]
) -> None:
    """The space read is the segment reads merged by position; each segment
    dense from its first retained sequence; the lists agree."""
    positions = [r.position for r in view.records]
    if removed:
        if any(a >= b for a, b in itertools.pairwise(positions)):
            report.problem(f"space {space}: positions do not ascend: {positions[:20]}")
    else:
        _check_dense(report, f"space {space} positions", positions)
    for r in view.records:
        if r.space != space:
            report.problem(f"space {space} read returned a record of space {r.space!r}")
    merged = sorted((r for recs in view.segments.values() for r in recs), key=lambda r: r.position)
    if [record_key(r) for r in merged] != [record_key(r) for r in view.records]:
        in_space = {r.segment for r in view.records}
        report.problem(
            f"space {space}: the space read ({len(view.records)} records, segments "
            f"{sorted(in_space)}) differs from the segment reads ({len(merged)} records, "
            f"ListSegments {sorted(view.segments)})"
        )
    for name, seg_records in view.segments.items():
        info = view.infos[name]
        touched = any(r.segment in ("", name) for r in removed)
        first = seg_records[0].sequence if touched and seg_records else 1
        _check_dense(
            report, f"segment {space}/{name} sequences", [r.sequence for r in seg_records], first
        )
        if seg_records and (
            info.last_sequence != seg_records[-1].sequence
            or info.last_position != seg_records[-1].position
            or ts_key(info.last_timestamp) != ts_key(seg_records[-1].timestamp)
        ):
            # Trimmed to nothing at its end is impossible: trims remove prefixes.
            report.problem(
                f"ListSegments {space}/{name}: {info.last_sequence}/{info.last_position} "
                f"but its last record is {seg_records[-1].sequence}/"
                f"{seg_records[-1].position}"
            )
    # Timestamps never decrease along positions.
    stamps = [ts_key(r.timestamp) for r in view.records]
    if any(a > b for a, b in itertools.pairwise(stamps)):
        report.problem(f"space {space}: timestamps decrease along positions")


def _check_catalog(report: CheckReport, journal: Journal, space: str, view: SpaceView) -> None:
    """Infos and peeks agree with the records read: first offsets, counts, bytes, last."""
    for name, seg_records in view.segments.items():
        info = view.infos[name]
        first = seg_records[0].sequence if seg_records else info.last_sequence + 1
        size = sum(record_bytes(r) for r in seg_records)
        got = (info.first_sequence, info.record_count, info.bytes)
        if got != (first, len(seg_records), size):
            report.problem(
                f"ListSegments {space}/{name}: first_sequence/record_count/bytes {got}, "
                f"its records say {(first, len(seg_records), size)}"
            )
        if info.last_sequence < journal.acked_sequence[(space, name)]:
            report.problem(
                f"ListSegments {space}/{name}: last_sequence {info.last_sequence} below the "
                f"acked {journal.acked_sequence[(space, name)]} (numbers went back)"
            )
        single = view.segment_infos.get(name)
        if single != info:
            report.problem(f"GetSegment {space}/{name} {single} differs from ListSegments {info}")
    for name, recs in (("", view.records), *view.segments.items()):
        peek = view.peeks.get(name)
        got_key = None if peek is None else record_key(peek)
        want_key = record_key(recs[-1]) if recs else None
        if got_key != want_key:
            report.problem(f"Peek {space}/{name!r}: {got_key}, the last record read is {want_key}")
    info = view.space_info
    if info is None:
        if view.records or view.infos:
            report.problem(f"GetSpace {space}: NOT_FOUND, but it has segments or records")
        return
    first = view.records[0].position if view.records else info.last_position + 1
    size = sum(record_bytes(r) for r in view.records)
    got = (info.first_position, info.record_count, info.bytes)
    if got != (first, len(view.records), size):
        report.problem(
            f"GetSpace {space}: first_position/record_count/bytes {got}, its records say "
            f"{(first, len(view.records), size)}"
        )
    if info.last_position < journal.acked_position[space]:
        report.problem(
            f"GetSpace {space}: last_position {info.last_position} below the acked "
            f"{journal.acked_position[space]} (numbers went back)"
        )
    if view.records and (
        info.last_position < view.records[-1].position
        or ts_key(info.last_timestamp) < ts_key(view.records[-1].timestamp)
    ):
        report.problem(f"GetSpace {space}: last {info.last_position} before its last record")


def _check_deleted_are_gone(
    report: CheckReport,
    space: str,
    view: SpaceView,
    txns: dict[tuple[str, str], Txn],
    removed: list[Removal],
) -> None:
    """A segment (space) deleted after every write to it was acked, and not
    written since, is in no list and no info."""
    for d in removed:
        if d.is_trim or d.acked_at == NEVER:
            continue
        writes = [
            t
            for (sp, _), t in txns.items()
            if sp == space and (not d.segment or d.segment in t.segments)
        ]
        if any(t.acked_at > d.sent_at for t in writes):
            continue  # written again since (or maybe)
        names = [d.segment] if d.segment else sorted(view.infos)
        for name in names:
            if name in view.infos:
                report.problem(f"segment {space}/{name} is listed after its acknowledged delete")
            if view.segments.get(name):
                report.problem(f"segment {space}/{name} has records after its acknowledged delete")
        if not d.segment:
            if view.records:
                report.problem(f"space {space} has records after its acknowledged delete")
            if view.space_info is not None:
                report.problem(f"GetSpace {space} finds it after its acknowledged delete")


def _check_acked(report: CheckReport, journal: Journal, txn: Txn, recs: list[pb.Record]) -> None:
    """Every record of an acked transaction is stored as acked, unless a
    removal took it (and then it is never readable again)."""
    assert txn.ack is not None
    where = f"transaction {txn.space}/{txn.txid}"
    want = expected_records(txn.request, txn.ack)
    by_position = {r.position: r for r in recs}
    if len(by_position) != len(recs) or len(recs) > len(want):
        report.problem(
            f"{where}: {len(recs)} records stored for its {len(want)} (written more than once; "
            f"positions {[r.position for r in recs][:12]})"
        )
        return
    missing: list[Expected] = []
    for e in want:
        stored = by_position.pop(e.position, None)
        gone = journal.must_be_gone(e, txn)
        if stored is not None:
            if as_expected(stored) != e:
                report.problem(
                    f"{where}: position {e.position} holds {stored.segment}/{stored.sequence} "
                    f"{stored.payload[:40]!r} at {ts_key(stored.timestamp)}, acked "
                    f"{e.segment}/{e.sequence} {e.payload[:40]!r} at {e.ts}"
                )
                return
            if gone is not None:
                report.problem(
                    f"{where}: position {e.position} ({e.segment}/{e.sequence}) is readable "
                    f"after an acknowledged {_describe(gone)}"
                )
            continue
        if gone is not None:
            report.removal_checks += 1
        elif journal.may_be_gone(e, txn, txn.space):
            report.removed_records += 1
        else:
            missing.append(e)
    if by_position:
        report.problem(f"{where}: records at positions {sorted(by_position)} it was not acked at")
    if not missing:
        report.acked_present += 1
    elif len(missing) == len(want):
        report.problem(
            f"LOST acked transaction {txn.space}/{txn.txid}: positions "
            f"{txn.ack.first_position}..{txn.ack.last_position} are not there"
        )
    else:
        report.problem(
            f"{where}: {len(want) - len(missing)} of its {len(want)} records stored (partly "
            f"present; missing positions {[e.position for e in missing][:12]}, no removal "
            f"took them)"
        )


def _check_pending(report: CheckReport, journal: Journal, txn: Txn, recs: list[pb.Record]) -> None:
    """A transaction without an ack, found stored: whole (but for what removals
    took), contiguous, as sent, at numbers no acknowledged trim removed."""
    want = request_records(txn.request)
    where = f"transaction {txn.space}/{txn.txid}"
    if len(recs) == len(want) or len(recs) > len(want) or not journal.removals_of(txn.space):
        if len(recs) != len(want):
            report.problem(
                f"{where}: {len(recs)} of its {len(want)} records stored "
                f"({'partly present' if len(recs) < len(want) else 'written more than once'}; "
                f"positions {[r.position for r in recs][:12]})"
            )
            return
        _check_txn_records(report, txn, recs)
    # Its numbers, inferred from what is stored: positions are contiguous over
    # the transaction, sequences over each of its segments.
    place = {(seg, inp.payload): i for i, (seg, inp) in enumerate(want)}
    index_in_segment: list[int] = []
    counts: dict[str, int] = defaultdict(int)
    for seg, _ in want:
        index_in_segment.append(counts[seg])
        counts[seg] += 1
    i0 = place.get((recs[0].segment, recs[0].payload))
    if i0 is None:
        report.problem(f"{where}: stored record {recs[0].position} is not one it sent")
        return
    first_position = recs[0].position - i0
    first_sequence: dict[str, int] = {}
    for r in recs:
        i = place.get((r.segment, r.payload))
        if i is None or r.position != first_position + i:
            report.problem(f"{where}: stored record {r.position} is not one it sent, in place")
            return
        first_sequence[r.segment] = r.sequence - index_in_segment[i]
    stored = {r.position for r in recs}
    ts = ts_key(recs[0].timestamp)
    for i, (segment, inp) in enumerate(want):
        e = Expected(
            segment,
            first_sequence.get(segment, 0) + index_in_segment[i],
            first_position + i,
            ts,
            inp.payload,
            dict(inp.metadata),
        )
        gone = journal.must_be_gone(e, txn)
        if e.position in stored and gone is not None:
            report.problem(
                f"{where}: position {e.position} is readable after an acknowledged "
                f"{_describe(gone)}"
            )
        elif e.position not in stored and not journal.may_be_gone(e, txn, txn.space):
            report.problem(f"{where}: position {e.position} missing, and no removal took it")


def _describe(r: Removal) -> str:
    target = f"{r.space}/{r.segment}" if r.segment else r.space
    if r.is_trim:
        return f"trim of {target} (first offset {r.first_offset})"
    return f"delete of {target}"


def _check_followers(
    report: CheckReport,
    journal: Journal,
    views: dict[str, SpaceView],
    txns: dict[tuple[str, str], Txn],
    followers: Iterable[Follower],
) -> None:
    """Everything followers ever received is stored, identical, unless removed since."""
    for f in followers:
        with f.lock:
            seen = list(f.records)
            report.problems.extend(f.errors)
        view = views.get(f.space)
        stored = (view.segments.get(f.segment, []) if f.segment else view.records) if view else []
        by_offset = {f.offset_of(r): r for r in stored}
        for r in seen:
            off = f.offset_of(r)
            now = by_offset.get(off)
            if now is None:
                txn = txns.get((f.space, r.transaction_id))
                if journal.may_be_gone(as_expected(r), txn, f.space):
                    continue
                report.problem(
                    f"follower {f.space}/{f.segment!r} received offset {off} "
                    f"(transaction {r.transaction_id!r}) but it is missing after restart "
                    f"(only {len(stored)} stored)"
                )
                break
            if now != r:
                report.problem(
                    f"follower {f.space}/{f.segment!r} offset {off}: received "
                    f"{record_key(r)!r}, stored now {record_key(now)!r}"
                )
                break
            report.follower_records_checked += 1


def _check_offsets(
    report: CheckReport,
    stub: Stub,
    commits: dict[tuple[str, str, str], CommitState],
    removals: list[Removal],
) -> None:
    """The last acked Commit (or a later unanswered one) is stored, unless a
    delete of its target removed it since."""
    for key, state in commits.items():
        consumer, space, segment = key
        allowed: set[int | None] = set(state.unanswered)
        if state.acked is not None:
            allowed.add(state.acked)
        if not allowed:
            continue
        deletes = [
            d for d in removals if not d.is_trim and d.space == space and d.segment in ("", segment)
        ]
        if any(d.acked_at > state.acked_sent_at for d in deletes):
            allowed.add(None)  # a delete may have come after the commit
        report.offsets_checked += 1
        try:
            got: int | None = stub.GetOffset(
                pb.GetOffsetRequest(consumer=consumer, space=space, segment=segment), timeout=10
            ).offset
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
            got = None
        report.offsets_read[key] = got
        if got not in allowed and not (got is None and state.acked is None):
            report.problem(
                f"committed offset {key}: stored {got}, but the last acked Commit was "
                f"{state.acked} (later unanswered tries: {state.unanswered}"
                f"{', deletes of its target since' if deletes else ''})"
            )


def _check_txn_records(report: CheckReport, txn: Txn, recs: list[pb.Record]) -> None:
    """All of a transaction's records, contiguous positions, as sent (and as acked)."""
    want = request_records(txn.request)
    where = f"transaction {txn.space}/{txn.txid}"
    if len(recs) != len(want):
        report.problem(
            f"{where}: {len(recs)} of its {len(want)} records stored "
            f"({'partly present' if len(recs) < len(want) else 'written more than once'}; "
            f"positions {[r.position for r in recs][:12]})"
        )
        return
    first = recs[0].position
    if [r.position for r in recs] != list(range(first, first + len(recs))):
        report.problem(f"{where}: positions not contiguous {[r.position for r in recs][:12]}")
    if len({ts_key(r.timestamp) for r in recs}) != 1:
        report.problem(f"{where}: more than one timestamp in one transaction")
    for r, (segment, inp) in zip(recs, want, strict=True):
        if (
            r.segment != segment
            or r.payload != inp.payload
            or dict(r.metadata) != dict(inp.metadata)
        ):
            report.problem(
                f"{where}: position {r.position} holds {r.segment}/{r.payload[:40]!r}, "
                f"sent {segment}/{inp.payload[:40]!r}"
            )
            return
    # Sequences: contiguous per segment, in write order.
    per_segment: dict[str, list[int]] = defaultdict(list)
    for r in recs:
        per_segment[r.segment].append(r.sequence)
    for seg, nums in per_segment.items():
        if nums != list(range(nums[0], nums[0] + len(nums))):
            report.problem(f"{where}: sequences in {seg} not contiguous: {nums[:12]}")
    ack = txn.ack
    if ack is None:
        return
    if (ack.first_position, ack.last_position) != (first, recs[-1].position):
        report.problem(
            f"{where}: acked positions {ack.first_position}..{ack.last_position}, stored "
            f"{first}..{recs[-1].position}"
        )
    if ts_key(ack.timestamp) != ts_key(recs[0].timestamp):
        report.problem(f"{where}: acked timestamp differs from the stored one")
    acked = [(a.segment, a.first_sequence, a.last_sequence) for a in ack.acks]
    stored = [
        (w.segment, per_segment[w.segment][0], per_segment[w.segment][-1])
        for w in txn.request.writes
    ]
    if acked != stored:
        report.problem(f"{where}: acked sequences {acked}, stored {stored}")


def ack_numbers(resp: pb.ProduceResponse) -> tuple[object, ...]:
    """What an ack says: positions, per-segment sequences, timestamp."""
    return (
        resp.first_position,
        resp.last_position,
        [(a.segment, a.first_sequence, a.last_sequence) for a in resp.acks],
        ts_key(resp.timestamp),
    )


def stored_numbers(req: pb.ProduceRequest, recs: list[pb.Record]) -> tuple[object, ...]:
    """The same numbers, read off a transaction's stored records (in position order)."""
    seqs: dict[str, list[int]] = defaultdict(list)
    for r in recs:
        seqs[r.segment].append(r.sequence)
    return (
        recs[0].position,
        recs[-1].position,
        [(w.segment, seqs[w.segment][0], seqs[w.segment][-1]) for w in req.writes],
        ts_key(recs[0].timestamp),
    )


def assert_clean(report: CheckReport) -> None:
    """Fails with every problem ``check_store`` found."""
    assert not report.problems, "\n".join(report.problems)
