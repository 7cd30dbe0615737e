"""What clients were told, and a checker of the store against it.

- `Journal`: what producers and committers were told (acked) or not told (no
  answer), thread-safe, across server restarts and crashes.
- `Follower`: what one follow stream received, by offset.
- `check_store`: reads every space and segment back and reports each way the
  stored data differs from the journal and from what followers received: a
  lost acked transaction, a partial or duplicated one, holes in the numbers,
  timestamps going back, a committed offset nobody was told about.

Everything talks to the server through the generated sync stubs.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections import defaultdict
from collections.abc import Iterable

import grpc

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc
from tests.contract.helpers import ts_key

Stub = pb_grpc.StreamsServiceStub

# Statuses that only say "the outcome is unknown" (server gone, channel closed, timeout).
UNKNOWN_OUTCOME = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


def request_records(req: pb.ProduceRequest) -> list[tuple[str, pb.RecordInput]]:
    """(segment, input) in position order: writes, then records."""
    return [(w.segment, r) for w in req.writes for r in w.records]


@dataclasses.dataclass
class Txn:
    """One Produce with a transaction_id, as the producer knows it."""

    request: pb.ProduceRequest
    # The ack, once one was received (from the first attempt or from a retry).
    ack: pb.ProduceResponse | None = None
    # True while no attempt got an answer: it may or may not be stored.
    pending: bool = False

    @property
    def space(self) -> str:
        return self.request.space

    @property
    def txid(self) -> str:
        return self.request.transaction_id

    @property
    def size(self) -> int:
        return sum(len(w.records) for w in self.request.writes)


def commit_key(consumer: str, space: str, segment: str) -> tuple[str, str, str]:
    return (consumer, space, segment)


@dataclasses.dataclass
class CommitState:
    acked: int | None = None  # last acknowledged offset
    unanswered: list[int] = dataclasses.field(default_factory=list)  # later, unanswered tries


class Journal:
    """Thread-safe: what clients were told."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.txns: dict[tuple[str, str], Txn] = {}
        self.commits: dict[tuple[str, str, str], CommitState] = defaultdict(CommitState)
        # Highest acked offsets, per space (position) and per (space, segment) (sequence).
        self.acked_position: dict[str, int] = defaultdict(int)
        self.acked_sequence: dict[tuple[str, str], int] = defaultdict(int)

    def sent(self, req: pb.ProduceRequest) -> Txn:
        txn = Txn(req)
        with self.lock:
            key = (req.space, req.transaction_id)
            assert key not in self.txns, f"workload bug: transaction id {key} reused"
            self.txns[key] = txn
        return txn

    def acked(self, txn: Txn, resp: pb.ProduceResponse) -> None:
        with self.lock:
            txn.ack = resp
            txn.pending = False
            space = txn.space
            self.acked_position[space] = max(self.acked_position[space], resp.last_position)
            for ack in resp.acks:
                key = (space, ack.segment)
                self.acked_sequence[key] = max(self.acked_sequence[key], ack.last_sequence)

    def unanswered(self, txn: Txn) -> None:
        with self.lock:
            if txn.ack is None:
                txn.pending = True

    def commit_acked(self, key: tuple[str, str, str], offset: int) -> None:
        with self.lock:
            state = self.commits[key]
            state.acked = offset
            state.unanswered.clear()

    def commit_unanswered(self, key: tuple[str, str, str], offset: int) -> None:
        with self.lock:
            self.commits[key].unanswered.append(offset)

    def pending(self) -> list[Txn]:
        with self.lock:
            return [t for t in self.txns.values() if t.pending]


class Follower:
    """What one follower (Consume follow=True) received, by offset."""

    def __init__(self, space: str, segment: str) -> None:
        self.space = space
        self.segment = segment
        self.lock = threading.Lock()
        self.records: list[pb.Record] = []  # offsets 1..n, in order
        self.errors: list[str] = []
        self.reconnects = 0

    @property
    def next_offset(self) -> int:
        with self.lock:
            return len(self.records) + 1

    def offset_of(self, record: pb.Record) -> int:
        return record.sequence if self.segment else record.position

    def received(self, records: Iterable[pb.Record]) -> None:
        with self.lock:
            for r in records:
                want = len(self.records) + 1
                got = self.offset_of(r)
                if got != want:
                    self.errors.append(
                        f"follower {self.space}/{self.segment!r}: expected offset {want}, "
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


@dataclasses.dataclass
class SpaceView:
    records: list[pb.Record]  # by position
    segments: dict[str, list[pb.Record]]  # by sequence
    infos: dict[str, pb.SegmentInfo]


def read_all(stub: Stub, spaces: Iterable[str]) -> dict[str, SpaceView]:
    views: dict[str, SpaceView] = {}
    for space in spaces:
        records = read_target(stub, space)
        infos = {i.name: i for i in list_segments(stub, space)}
        segments = {name: read_target(stub, space, name) for name in infos}
        views[space] = SpaceView(records, segments, infos)
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
    # (space, txid) -> the stored records of each transaction without an ack ([] = absent).
    pending_stored: dict[tuple[str, str], list[pb.Record]] = dataclasses.field(default_factory=dict)
    # (consumer, space, segment) -> the offset read back (None: NOT_FOUND).
    offsets_read: dict[tuple[str, str, str], int | None] = dataclasses.field(default_factory=dict)

    def problem(self, text: str) -> None:
        if len(self.problems) < 200:
            self.problems.append(text)


def _check_dense(report: CheckReport, what: str, numbers: list[int]) -> None:
    if numbers != list(range(1, len(numbers) + 1)):
        gaps = [(i + 1, n) for i, n in enumerate(numbers) if n != i + 1][:5]
        report.problem(f"{what}: not dense from 1 ({len(numbers)} records; first bad {gaps})")


def check_store(
    stub: Stub,
    journal: Journal,
    spaces: Iterable[str],
    followers: Iterable[Follower] = (),
) -> tuple[CheckReport, dict[str, SpaceView]]:
    """Reads everything back and checks it against the journal and the followers.

    Call only while no worker is running (the gate is closed).
    """
    report = CheckReport()
    spaces = list(spaces)
    views = read_all(stub, spaces)
    with journal.lock:
        txns = dict(journal.txns)
        commits = {
            k: dataclasses.replace(v, unanswered=list(v.unanswered))
            for k, v in journal.commits.items()
        }

    for space, view in views.items():
        report.records += len(view.records)
        _check_dense(report, f"space {space} positions", [r.position for r in view.records])
        by_segment: dict[str, list[pb.Record]] = defaultdict(list)
        for r in view.records:
            if r.space != space:
                report.problem(f"space {space} read returned a record of space {r.space!r}")
            by_segment[r.segment].append(r)
        if set(by_segment) != set(view.segments):
            report.problem(
                f"space {space}: segments in the space read {sorted(by_segment)} != "
                f"ListSegments {sorted(view.segments)}"
            )
        for name, seg_records in view.segments.items():
            _check_dense(
                report, f"segment {space}/{name} sequences", [r.sequence for r in seg_records]
            )
            if seg_records != by_segment.get(name, []):
                report.problem(f"segment {space}/{name}: segment read differs from space read")
            info = view.infos[name]
            if seg_records and (
                info.last_sequence != seg_records[-1].sequence
                or info.last_position != seg_records[-1].position
                or ts_key(info.last_timestamp) != ts_key(seg_records[-1].timestamp)
            ):
                report.problem(
                    f"ListSegments {space}/{name}: {info.last_sequence}/{info.last_position} "
                    f"but its last record is {seg_records[-1].sequence}/"
                    f"{seg_records[-1].position}"
                )
        # Timestamps never decrease along positions.
        stamps = [ts_key(r.timestamp) for r in view.records]
        if any(a > b for a, b in itertools.pairwise(stamps)):
            report.problem(f"space {space}: timestamps decrease along positions")

        # Group by transaction id.
        groups: dict[str, list[pb.Record]] = defaultdict(list)
        for r in view.records:
            groups[r.transaction_id].append(r)
        for txid, recs in groups.items():
            txn = txns.get((space, txid))
            if txn is None:
                report.problem(
                    f"space {space}: {len(recs)} record(s) of transaction {txid!r} that no "
                    f"producer sent (positions {recs[0].position}..)"
                )
                continue
            _check_txn_records(report, txn, recs)

        for (sp, txid), txn in txns.items():
            if sp != space:
                continue
            present = txid in groups
            if txn.ack is not None:
                report.transactions_checked += 1
                if present:
                    report.acked_present += 1
                else:
                    report.problem(
                        f"LOST acked transaction {space}/{txid}: positions "
                        f"{txn.ack.first_position}..{txn.ack.last_position} are not there"
                    )
            elif txn.pending:
                report.transactions_checked += 1
                report.pending_stored[(space, txid)] = groups.get(txid, [])
                if present:
                    report.pending_present += 1
                else:
                    report.pending_absent += 1

    # Followers: everything they ever received is stored, identical.
    for f in followers:
        with f.lock:
            seen = list(f.records)
            report.problems.extend(f.errors)
        view = views.get(f.space)
        stored = (view.segments.get(f.segment, []) if f.segment else view.records) if view else []
        for r in seen:
            off = f.offset_of(r)
            if off > len(stored):
                report.problem(
                    f"follower {f.space}/{f.segment!r} received offset {off} "
                    f"(transaction {r.transaction_id!r}) but it is missing after restart "
                    f"(only {len(stored)} stored)"
                )
                break
            if stored[off - 1] != r:
                report.problem(
                    f"follower {f.space}/{f.segment!r} offset {off}: received "
                    f"{record_key(r)!r}, stored now {record_key(stored[off - 1])!r}"
                )
                break
            report.follower_records_checked += 1

    # Committed offsets.
    for key, state in commits.items():
        consumer, space, segment = key
        allowed = set(state.unanswered)
        if state.acked is not None:
            allowed.add(state.acked)
        if not allowed:
            continue
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
                f"{state.acked} (later unanswered tries: {state.unanswered})"
            )
    return report, views


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
